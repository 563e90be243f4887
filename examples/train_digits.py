"""Train, export and measure lowbit's two example models on scikit-learn's digits dataset.

Run ``python examples/train_digits.py --out examples/``. It writes

- ``digits_cnn.onnx``          Conv-BN-ReLU CNN, input ``input`` (N, 1, 8, 8), output ``logits``
- ``digits_transformer.onnx``  2-layer pre-LN encoder over the 8 image rows as 8 tokens,
                               input ``input`` (N, 8, 8), output ``logits`` (N, 10)
- ``digits_calib.npz``         256 training images for the CNN: ``input`` (256, 1, 8, 8) float32
- ``digits_eval.npz``          the whole test split for the CNN: ``input`` (N, 1, 8, 8) float32
                               and ``labels`` (N,) int64
- ``digits_transformer_calib.npz`` / ``digits_transformer_eval.npz``  the same images in the
                               transformer's layout: ``input`` (N, 8, 8) (+ ``labels``)
- ``README.md``                the results table (accuracy measured with onnxruntime on the
                               exported files)

Data: the 1,797 real 8x8 digits that ship inside scikit-learn, pixels 0..16 scaled to [0, 1] by
dividing by 16; stratified ``train_test_split(test_size=0.3, random_state=0)``.

Everything is deterministic (fixed seeds, ``torch.use_deterministic_algorithms(True)``, one
thread), so re-running reproduces the same weights and the same accuracy; only the training time
column changes.
"""

from __future__ import annotations

import argparse
import io
import math
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import torch
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split
from torch import nn

SEED = 0
OPSET = 17
IR_VERSION = 10
NUM_CALIB = 256
THRESHOLDS = {"digits_cnn": 0.97, "digits_transformer": 0.95}


@dataclass(frozen=True)
class DigitsSplit:
    """The digits train/test split, images in [0, 1] with shape (N, 8, 8) float32."""

    train_images: np.ndarray
    train_labels: np.ndarray
    test_images: np.ndarray
    test_labels: np.ndarray


@dataclass(frozen=True)
class TrainConfig:
    """Optimiser settings for one model: AdamW with a one-cycle learning-rate schedule."""

    epochs: int
    batch_size: int
    learning_rate: float
    weight_decay: float


@dataclass(frozen=True)
class ModelReport:
    """One row of the README table."""

    name: str
    params: int
    file_bytes: int
    accuracy: float
    train_seconds: float


def load_split() -> DigitsSplit:
    """Load sklearn digits, scale pixels by 1/16 and split 70/30 stratified with seed 0."""
    digits = load_digits()
    images = (digits.images / 16.0).astype(np.float32)
    labels = digits.target.astype(np.int64)
    x_train, x_test, y_train, y_test = train_test_split(
        images, labels, test_size=0.3, random_state=0, stratify=labels
    )
    return DigitsSplit(x_train, y_train, x_test, y_test)


class DigitsCNN(nn.Module):
    """Conv(1->16)-BN-ReLU, Conv(16->32)-BN-ReLU, MaxPool2, Conv(32->64)-BN-ReLU, GAP, Linear."""

    def __init__(self) -> None:
        super().__init__()

        def block(cin: int, cout: int) -> list[nn.Module]:
            return [nn.Conv2d(cin, cout, 3, padding=1), nn.BatchNorm2d(cout), nn.ReLU()]

        self.features = nn.Sequential(
            *block(1, 16),
            *block(16, 32),
            nn.MaxPool2d(2),
            *block(32, 64),
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(),
        )
        self.classifier = nn.Linear(64, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))


class SelfAttention(nn.Module):
    """Multi-head self-attention written out as MatMul/Softmax so it exports op by op.

    out = concat_h(softmax(Q_h K_h^T / sqrt(d)) V_h) W_o, with Q, K, V = x W_q, x W_k, x W_v.
    """

    def __init__(self, dim: int, heads: int, tokens: int) -> None:
        super().__init__()
        self.heads, self.head_dim, self.tokens = heads, dim // heads, tokens
        self.query, self.key, self.value = (nn.Linear(dim, dim) for _ in range(3))
        self.proj = nn.Linear(dim, dim)

    def _split_heads(self, x: torch.Tensor) -> torch.Tensor:
        # -1 for the batch keeps the exported Reshape shape a constant (no Shape/Gather chain).
        return x.reshape(-1, self.tokens, self.heads, self.head_dim).transpose(1, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        q, k, v = (self._split_heads(f(x)) for f in (self.query, self.key, self.value))
        scores = torch.matmul(q, k.transpose(-2, -1)) * (1.0 / math.sqrt(self.head_dim))
        mixed = torch.matmul(torch.softmax(scores, dim=-1), v)
        return self.proj(mixed.transpose(1, 2).reshape(-1, self.tokens, self.heads * self.head_dim))


class EncoderLayer(nn.Module):
    """Pre-LN encoder layer: x += Attn(LN(x)); x += W2 GELU(W1 LN(x))."""

    def __init__(self, dim: int, heads: int, hidden: int, tokens: int) -> None:
        super().__init__()
        self.norm1, self.norm2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.attention = SelfAttention(dim, heads, tokens)
        self.mlp = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attention(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class DigitsTransformer(nn.Module):
    """Rows as tokens: Linear(8->32) + learned positions, 2 encoder layers, LN, mean, Linear."""

    def __init__(self, dim: int = 32, heads: int = 4, hidden: int = 64, layers: int = 2) -> None:
        super().__init__()
        self.embed = nn.Linear(8, dim)
        self.position = nn.Parameter(torch.randn(1, 8, dim) * 0.02)
        self.layers = nn.Sequential(*(EncoderLayer(dim, heads, hidden, 8) for _ in range(layers)))
        self.norm = nn.LayerNorm(dim)
        self.classifier = nn.Linear(dim, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.layers(self.embed(x) + self.position)
        return self.classifier(self.norm(x).mean(dim=1))


def train(model: nn.Module, images: np.ndarray, labels: np.ndarray, cfg: TrainConfig) -> float:
    """Train ``model`` in place; returns wall-clock seconds.

    AdamW, cross-entropy, shuffled mini-batches from a seeded generator, and ``OneCycleLR``
    (linear warm-up to ``learning_rate`` over the first 30% of steps, then cosine decay).
    """
    start = time.perf_counter()
    x, y = torch.from_numpy(images), torch.from_numpy(labels)
    generator = torch.Generator().manual_seed(SEED)
    steps_per_epoch = math.ceil(len(x) / cfg.batch_size)
    optimizer = torch.optim.AdamW(
        model.parameters(), lr=cfg.learning_rate, weight_decay=cfg.weight_decay
    )
    schedule = torch.optim.lr_scheduler.OneCycleLR(
        optimizer, max_lr=cfg.learning_rate, total_steps=cfg.epochs * steps_per_epoch
    )
    loss_fn = nn.CrossEntropyLoss()
    model.train()
    for _ in range(cfg.epochs):
        order = torch.randperm(len(x), generator=generator)
        for batch in order.split(cfg.batch_size):
            optimizer.zero_grad()
            loss_fn(model(x[batch]), y[batch]).backward()
            optimizer.step()
            schedule.step()
    model.eval()
    return time.perf_counter() - start


def _inline_identity_initializers(model: onnx.ModelProto) -> None:
    """Replace ``Identity(initializer)`` nodes by a copy of the initializer under the output name.

    The TorchScript exporter deduplicates equal initializers (e.g. BN mean == bias) and re-creates
    the second one with an Identity node; lowbit's examples should be plain weights.
    """
    graph = model.graph
    initializers = {init.name: init for init in graph.initializer}
    for node in list(graph.node):
        if node.op_type == "Identity" and node.input[0] in initializers:
            copy = onnx.TensorProto()
            copy.CopyFrom(initializers[node.input[0]])
            copy.name = node.output[0]
            graph.initializer.append(copy)
            graph.node.remove(node)


def export(model: nn.Module, example: torch.Tensor, path: Path, keep_batchnorm: bool) -> None:
    """Export with the TorchScript exporter at opset 17, dynamic batch, ir_version 10.

    With constant folding on, the eval-mode exporter fuses Conv+BN and turns ``Linear``'s weight
    transposes into plain initializers. ``keep_batchnorm`` turns folding off so the
    BatchNormalization nodes stay in the file (lowbit's BN-folding pass is tested on them).
    """
    buffer = io.BytesIO()
    with warnings.catch_warnings():
        # dynamo=False is deliberate (the brief pins the TorchScript exporter); silence only
        # its deprecation notice.
        warnings.filterwarnings(
            "ignore", message=".*legacy TorchScript", category=DeprecationWarning
        )
        torch.onnx.export(
            model,
            (example,),
            buffer,
            dynamo=False,
            opset_version=OPSET,
            input_names=["input"],
            output_names=["logits"],
            dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}},
            training=torch.onnx.TrainingMode.EVAL,
            do_constant_folding=not keep_batchnorm,
        )
    proto = onnx.load_from_string(buffer.getvalue())
    _inline_identity_initializers(proto)
    proto.ir_version = IR_VERSION
    proto.producer_name = "lowbit examples/train_digits.py"
    onnx.checker.check_model(proto, full_check=True)
    onnx.save(proto, str(path))


def onnxruntime_accuracy(path: Path, images: np.ndarray, labels: np.ndarray) -> float:
    """Top-1 accuracy of the exported file run by onnxruntime (CPU, one thread)."""
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    (logits,) = session.run(["logits"], {"input": images})
    return float((logits.argmax(axis=1) == labels).mean())


def build_and_measure(
    name: str,
    model: nn.Module,
    cfg: TrainConfig,
    split: DigitsSplit,
    layout: tuple[int, ...],
    out: Path,
    keep_batchnorm: bool,
) -> ModelReport:
    """Train ``model`` on the split reshaped to ``layout`` (per-sample), export and measure."""
    train_x = split.train_images.reshape(-1, *layout)
    test_x = split.test_images.reshape(-1, *layout)
    seconds = train(model, train_x, split.train_labels, cfg)
    path = out / f"{name}.onnx"
    export(model, torch.from_numpy(test_x[:1]), path, keep_batchnorm)
    accuracy = onnxruntime_accuracy(path, test_x, split.test_labels)
    params = sum(p.numel() for p in model.parameters())
    return ModelReport(name, params, path.stat().st_size, accuracy, seconds)


def write_data(split: DigitsSplit, out: Path) -> None:
    """Write the calibration (first 256 training images) and evaluation npz files, one pair per
    model: each holds exactly the model's input name (``input``), so it can be passed to
    ``--calib`` / ``--eval`` as is; the eval files add ``labels``."""
    calib = split.train_images[:NUM_CALIB]
    test = split.test_images
    np.savez_compressed(out / "digits_calib.npz", input=calib[:, None])
    np.savez_compressed(out / "digits_eval.npz", input=test[:, None], labels=split.test_labels)
    np.savez_compressed(out / "digits_transformer_calib.npz", input=calib)
    np.savez_compressed(
        out / "digits_transformer_eval.npz", input=test, labels=split.test_labels
    )


def results_table(reports: list[ModelReport], test_count: int) -> str:
    """Markdown table; tests/examples/test_examples.py parses the accuracy column."""
    header = f"fp32 test accuracy (onnxruntime, {test_count} images)"
    lines = [
        f"| model | params | file size | {header} | training time |",
        "|---|---:|---:|---:|---:|",
    ]
    for r in reports:
        lines.append(
            f"| {r.name} | {r.params:,} | {r.file_bytes / 1024:.1f} KiB "
            f"| {100 * r.accuracy:.2f}% | {r.train_seconds:.1f} s |"
        )
    return "\n".join(lines)


README_TEMPLATE = """# lowbit example models

Two small models trained on scikit-learn's **digits** dataset (1,797 real 8x8 grayscale
handwritten digits, labels 0-9; it ships inside scikit-learn, nothing is downloaded).
They are what `lowbit inspect` / `lowbit demo`, the held-in tests and the quantization accuracy
tables run on.

## Results

{table}

Accuracy is measured with onnxruntime on the exported `.onnx` files over the whole test split
(`digits_eval.npz`). Training time is wall clock on CPU with one torch thread; it is the only
column that changes when the script is re-run.

## Files

- `digits_cnn.onnx`: Conv(1->16, 3x3)-BN-ReLU, Conv(16->32)-BN-ReLU, MaxPool 2x2,
  Conv(32->64)-BN-ReLU, GlobalAveragePool, Linear(64->10). Input `input` (N, 1, 8, 8) float32,
  output `logits` (N, 10). The BatchNormalization nodes are kept (not fused into the Convs) so
  lowbit's BN-folding pass has work to do.
- `digits_transformer.onnx`: the 8 image rows as 8 tokens of 8 pixels: Linear(8->32) + learned
  positional embedding, 2 pre-LN encoder layers (4-head self-attention written as
  MatMul/Softmax, LayerNormalization, GELU (Erf form) MLP 32->64->32, residuals), final
  LayerNorm, mean over tokens, Linear(32->10). Input `input` (N, 8, 8) float32, output `logits`
  (N, 10).
- `digits_calib.npz` / `digits_eval.npz`: for the CNN, {calib} training images (`input` (N, 1, 8,
  8)) and the whole test split ({test} images: `input` (N, 1, 8, 8), `labels` (N,) int64), float32
  in [0, 1]. Each file holds exactly the model's input name, so it works as `--calib` as is.
- `digits_transformer_calib.npz` / `digits_transformer_eval.npz`: the same images in the
  transformer's layout, `input` (N, 8, 8) (+ `labels`).

Both models: ONNX opset {opset}, `ir_version` {ir_version}, dynamic batch axis, exported with
torch's TorchScript exporter (`dynamo=False`) and checked with `onnx.checker`.

## Data and reproduction

Pixels (0..16) are divided by 16. Split: `train_test_split(test_size=0.3, random_state=0,
stratify=labels)` ({train} train / {test} test). Training is deterministic (fixed seeds,
`torch.use_deterministic_algorithms(True)`, `torch.set_num_threads(1)`); regenerate everything
with

```
python examples/train_digits.py --out examples/
```

`tests/examples/test_examples.py` checks the shipped files: `onnx.checker`, the accuracies in
the table above (and >= 97% CNN / >= 95% transformer), and, once the importer and the reference
executor exist, that `lowbit.run_reference` matches onnxruntime.
"""


def main(argv: list[str] | None = None) -> None:
    """Train both models, write the four data/model files and README.md into ``--out``."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent)
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)

    torch.manual_seed(SEED)
    np.random.seed(SEED)
    torch.use_deterministic_algorithms(True)
    torch.set_num_threads(1)

    split = load_split()
    write_data(split, args.out)
    torch.manual_seed(SEED)
    cnn = build_and_measure(
        "digits_cnn",
        DigitsCNN(),
        TrainConfig(epochs=30, batch_size=32, learning_rate=3e-3, weight_decay=1e-4),
        split,
        (1, 8, 8),
        args.out,
        keep_batchnorm=True,
    )
    torch.manual_seed(SEED)
    transformer = build_and_measure(
        "digits_transformer",
        DigitsTransformer(),
        TrainConfig(epochs=60, batch_size=32, learning_rate=3e-3, weight_decay=1e-2),
        split,
        (8, 8),
        args.out,
        keep_batchnorm=False,
    )
    reports = [cnn, transformer]
    table = results_table(reports, len(split.test_labels))
    print(table)
    readme = README_TEMPLATE.format(
        table=table,
        calib=NUM_CALIB,
        test=len(split.test_labels),
        train=len(split.train_labels),
        opset=OPSET,
        ir_version=IR_VERSION,
    )
    (args.out / "README.md").write_text(readme)
    for r in reports:
        if r.accuracy < THRESHOLDS[r.name]:
            raise SystemExit(
                f"{r.name}: test accuracy {r.accuracy:.4f} is below the target "
                f"{THRESHOLDS[r.name]}; tune its TrainConfig in train_digits.py"
            )


if __name__ == "__main__":
    main()
