"""How big is the .lbx a preset writes? File, library, stored weights on disk and in memory.

For each shipped model (the digits CNN, the digits transformer, the ResNet-18-shaped digits CNN)
and each preset, compile with ``lowbit.compile`` for the host and report:

* ``format B``: the plan's weight bytes (each quantized weight at its format's bits plus scales /
  codebooks, float weights at 4 bytes; :func:`lowbit.compiler.quantize.weight_size`);
* ``stored B``: the artifact's weight section (:mod:`lowbit.runtime.weights`: the kernels'
  integer weight arrays at their information content);
* ``memory B``: the same arrays unpacked in memory (the kernels' layouts, e.g. a byte per
  weight for the int8 family);
* ``library B`` and ``file B``: the compiled library (code, float constants, small per-channel
  arrays) and the whole file.

No timing: kernel selection runs as in ``lowbit compile``, so the chosen families (and hence the
in-memory layouts) can differ from run to run on a loaded machine; the stored bytes follow the
format bits either way.

Run: ``python bench/bench_artifact_size.py [--models cnn transformer resnet] [--presets ...]``.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "examples"
MODELS = {  # name: (onnx, calib npz, bound input shape, calibration samples)
    "cnn": ("digits_cnn.onnx", "digits_calib.npz", (1, 1, 8, 8), 240),
    "transformer": ("digits_transformer.onnx", "digits_transformer_calib.npz", (1, 8, 8), 240),
    "resnet": ("digits_resnet.onnx", "digits_resnet_calib.npz", (1, 1, 32, 32), 60),
}
PRESETS = ("none", "int8", "w4a8", "w2a8", "ternary", "pow2", "codebook4", "w1a8")


def measure(model: str, preset: str) -> dict:
    from lowbit.compiler.driver import compile_model
    from lowbit.compiler.quantize import weight_size

    onnx_file, calib_file, shape, samples = MODELS[model]
    with np.load(EXAMPLES / calib_file) as data:
        calib = None if preset == "none" else {"input": data["input"][:samples]}
    result = compile_model(str(EXAMPLES / onnx_file), "x86", preset, calib, None,
                           {"input": shape})
    art = result.artifact
    kernels = sorted({row.kernel for row in art.plan})
    return {"model": model, "preset": preset, "format": weight_size(result.graph).packed,
            "stored": art.stored_weight_bytes, "memory": art.weight_memory_bytes,
            "library": len(art.payload), "file": len(art.to_bytes()),
            "kernels": "/".join(kernels) or "-"}


def markdown(rows) -> str:
    lines = ["| model | preset | format B | stored B | memory B | library B | file B | "
             "file vs int8 | kernels |", "|---|---|---:|---:|---:|---:|---:|---:|---|"]
    int8 = {r["model"]: r["file"] for r in rows if r["preset"] == "int8"}
    for r in rows:
        ratio = f"{r['file'] / int8[r['model']]:.2f}" if r["model"] in int8 else "-"
        lines.append(f"| {r['model']} | {r['preset']} | {r['format']:,} | {r['stored']:,} | "
                     f"{r['memory']:,} | {r['library']:,} | {r['file']:,} | {ratio} | "
                     f"{r['kernels']} |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    parser.add_argument("--presets", nargs="+", default=list(PRESETS))
    args = parser.parse_args(argv)
    print(f"load average {os.getloadavg()}", file=sys.stderr)
    rows = []
    for model in args.models:
        for preset in args.presets:
            rows.append(measure(model, preset))
            r = rows[-1]
            print(f"[{model}] {preset}: format {r['format']:,} B, stored {r['stored']:,} B, "
                  f"file {r['file']:,} B", file=sys.stderr, flush=True)
    print(markdown(rows))


if __name__ == "__main__":
    main()
