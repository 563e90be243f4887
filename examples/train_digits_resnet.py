"""Train, export and measure lowbit's deeper example: a ResNet-18-shaped CNN on upsampled digits.

Run ``python examples/train_digits_resnet.py --out examples/``. It writes

- ``digits_resnet.onnx``        ResNet-18 shape (stem + 4 stages x 2 BasicBlocks, 16-32-64-128
                                channels), input ``input`` (N, 1, 32, 32), output ``logits``
                                (N, 10), BatchNormalization nodes kept (not fused)
- ``digits_resnet_calib.npz``   the first 256 training images, ``input`` (256, 1, 32, 32) float32
- ``digits_resnet_eval.npz``    the whole test split, ``input`` (540, 1, 32, 32) float32 and
                                ``labels`` (540,) int64, in ``train_digits.load_split()`` order
- the ``digits_resnet`` section at the end of ``README.md`` (replaced if present, else appended)

Data: ``train_digits.load_split()`` (the 8x8 sklearn digits, pixels / 16, the same stratified
70/30 split as the other examples), each image upsampled 4x to 32x32 with bilinear
interpolation *before* the model (:func:`upsample_bilinear`), so the data files hold 32x32.

Training, export and measurement reuse ``train_digits.py`` (``train``, ``export``,
``onnxruntime_accuracy``, ``results_table``); it is deterministic the same way (fixed seeds,
``torch.use_deterministic_algorithms(True)``, one thread).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
import train_digits  # examples/ is not a package: imported by path

NAME = "digits_resnet"
UPSAMPLE = 4  # 8x8 -> 32x32
STAGES = (16, 32, 64, 128)  # output channels of the four stages
STRIDES = (1, 2, 2, 2)  # stride of the first block of each stage
BLOCKS_PER_STAGE = 2
THRESHOLD = 0.97
CONFIG = train_digits.TrainConfig(epochs=15, batch_size=64, learning_rate=3e-3, weight_decay=1e-4)
SECTION_HEADING = f"## Deeper model: {NAME}"


def bilinear_matrix(size: int, factor: int) -> np.ndarray:
    """The (size * factor, size) matrix U with ``U @ v`` = bilinear upsampling of ``v``.

    Half-pixel centres (``align_corners=False``, like ``torch.nn.functional.interpolate``):
    output pixel ``o`` samples source coordinate ``s = (o + 0.5) / factor - 0.5``, clamped to
    ``[0, size - 1]``, and mixes pixels ``floor(s)`` and ``floor(s) + 1`` with weights
    ``1 - frac(s)`` and ``frac(s)``. Rows sum to 1, so values stay in [0, 1].
    """
    source = np.clip((np.arange(size * factor) + 0.5) / factor - 0.5, 0, size - 1)
    low = np.floor(source).astype(np.int64)
    high = np.minimum(low + 1, size - 1)
    frac = source - low
    matrix = np.zeros((size * factor, size))
    rows = np.arange(size * factor)
    np.add.at(matrix, (rows, low), 1.0 - frac)
    np.add.at(matrix, (rows, high), frac)
    return matrix


def upsample_bilinear(images: np.ndarray, factor: int = UPSAMPLE) -> np.ndarray:
    """(N, H, W) -> (N, 1, H * factor, W * factor) float32: ``U_h @ image @ U_w^T`` per image."""
    _, height, width = images.shape
    rows, cols = bilinear_matrix(height, factor), bilinear_matrix(width, factor)
    upsampled = np.einsum("ih,nhw,jw->nij", rows, images.astype(np.float64), cols)
    return upsampled.astype(np.float32)[:, None]


class BasicBlock(nn.Module):
    """ResNet BasicBlock: ``relu(bn2(conv2(relu(bn1(conv1(x))))) + shortcut(x))``.

    conv1 is 3x3 with ``stride``, conv2 3x3 stride 1; the shortcut is the identity, or a 1x1
    conv (with ``stride``) + BN where the shape changes.
    """

    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.relu = nn.ReLU()
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(
                nn.Conv2d(cin, cout, 1, stride=stride, bias=False), nn.BatchNorm2d(cout)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.relu(self.bn1(self.conv1(x)))
        return self.relu(self.bn2(self.conv2(h)) + self.shortcut(x))


class DigitsResNet(nn.Module):
    """ResNet-18 shape for 32x32: Conv3x3(1->16)-BN-ReLU (no max-pool), 4 stages of 2
    BasicBlocks (16, 32, 64, 128 channels; strides 1, 2, 2, 2), GlobalAveragePool, Linear(128->10).

    17 3x3 convs + 3 1x1 downsample convs + 1 FC = 21 quantizable layers.
    """

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Sequential(
            nn.Conv2d(1, STAGES[0], 3, padding=1, bias=False), nn.BatchNorm2d(STAGES[0]), nn.ReLU()
        )
        blocks: list[nn.Module] = []
        cin = STAGES[0]
        for cout, stride in zip(STAGES, STRIDES):
            for index in range(BLOCKS_PER_STAGE):
                blocks.append(BasicBlock(cin, cout, stride if index == 0 else 1))
                cin = cout
        self.stages = nn.Sequential(*blocks)
        self.pool = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.classifier = nn.Linear(STAGES[-1], 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.pool(self.stages(self.stem(x))))


def write_data(split: train_digits.DigitsSplit, out: Path) -> tuple[np.ndarray, np.ndarray]:
    """Write the calib (first 256 training images) and eval npz files at 32x32; each holds
    exactly the model's input name, so it works as ``--calib`` / ``--eval`` as is.
    Returns the upsampled (train, test) images."""
    train_x = upsample_bilinear(split.train_images)
    test_x = upsample_bilinear(split.test_images)
    np.savez_compressed(out / f"{NAME}_calib.npz", input=train_x[: train_digits.NUM_CALIB])
    np.savez_compressed(out / f"{NAME}_eval.npz", input=test_x, labels=split.test_labels)
    return train_x, test_x


README_SECTION = """{heading}

A deeper CNN for per-layer bit-width / kernel allocation (`--quant auto`): a ResNet-18-shaped
network on the same digits split, each 8x8 image upsampled 4x to 32x32 with bilinear
interpolation (half-pixel centres, `align_corners=False`) in numpy before the model.

{table}

- `{name}.onnx`: stem Conv(1->16, 3x3)-BN-ReLU (no max-pool at 32x32), four stages of two
  BasicBlocks (conv3x3-BN-ReLU, conv3x3-BN, + shortcut, ReLU) with 16, 32, 64, 128 channels and
  strides 1, 2, 2, 2 (1x1 conv + BN downsample shortcut where the shape changes),
  GlobalAveragePool, Linear(128->10). {convs3} 3x3 convs + {convs1} 1x1 convs + 1 FC = {layers}
  quantizable layers; convs have no bias, the {bns} BatchNormalization nodes are kept. Input
  `input` (N, 1, 32, 32) float32, output `logits` (N, 10), dynamic batch axis, ONNX opset
  {opset}, `ir_version` {ir_version}.
- `{name}_calib.npz`: the first {calib} training images, `input` ({calib}, 1, 32, 32).
- `{name}_eval.npz`: the whole test split in `digits_eval.npz` order, `input` ({test}, 1, 32,
  32) float32 and `labels` ({test},) int64.

Training: {epochs} epochs, AdamW (lr {lr}, weight decay {wd}, one-cycle), batch {batch}, CPU,
one torch thread, deterministic. Regenerate with

```
python examples/train_digits_resnet.py --out examples/
```

(`train_digits.py` rewrites this README from its template; run this script after it to put
this section back.)
"""


def update_readme(readme: Path, section: str) -> None:
    """Replace this model's section (its heading to the end of the file) or append it."""
    text = readme.read_text() if readme.exists() else ""
    start = text.find(SECTION_HEADING)
    head = text[:start] if start >= 0 else text
    readme.write_text(head.rstrip("\n") + "\n\n" + section)


def main(argv: list[str] | None = None) -> None:
    """Train the ResNet, write its ONNX file and npz pair, and its README section."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent)
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)

    torch.manual_seed(train_digits.SEED)
    np.random.seed(train_digits.SEED)
    torch.use_deterministic_algorithms(True)
    torch.set_num_threads(1)

    split = train_digits.load_split()
    train_x, test_x = write_data(split, args.out)
    torch.manual_seed(train_digits.SEED)
    model = DigitsResNet()
    seconds = train_digits.train(model, train_x, split.train_labels, CONFIG)
    path = args.out / f"{NAME}.onnx"
    train_digits.export(model, torch.from_numpy(test_x[:1]), path, keep_batchnorm=True)
    accuracy = train_digits.onnxruntime_accuracy(path, test_x, split.test_labels)
    params = sum(p.numel() for p in model.parameters())
    report = train_digits.ModelReport(NAME, params, path.stat().st_size, accuracy, seconds)
    table = train_digits.results_table([report], len(split.test_labels))
    print(table)

    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    convs3 = sum(m.kernel_size == (3, 3) for m in convs)
    section = README_SECTION.format(
        heading=SECTION_HEADING,
        table=table,
        name=NAME,
        convs3=convs3,
        convs1=len(convs) - convs3,
        layers=len(convs) + 1,
        bns=sum(isinstance(m, nn.BatchNorm2d) for m in model.modules()),
        opset=train_digits.OPSET,
        ir_version=train_digits.IR_VERSION,
        calib=train_digits.NUM_CALIB,
        test=len(split.test_labels),
        epochs=CONFIG.epochs,
        lr=CONFIG.learning_rate,
        wd=CONFIG.weight_decay,
        batch=CONFIG.batch_size,
    )
    update_readme(args.out / "README.md", section)
    if accuracy < THRESHOLD:
        raise SystemExit(
            f"{NAME}: test accuracy {accuracy:.4f} is below the target {THRESHOLD}; "
            "tune CONFIG in train_digits_resnet.py"
        )


if __name__ == "__main__":
    main()
