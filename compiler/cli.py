"""The ``lowbit`` command line.

``lowbit inspect MODEL.onnx [--input-shape NAME=D0,D1,...]... [--passes default|none]
[--dump-ir DIR] [--format text|json] [-o FILE]`` imports a model, runs the passes and prints the
IR. With ``--quant PRESET`` and/or ``--recipe FILE`` (plus ``--calib FILE.npz`` and optionally
``--calibration minmax|percentile|mse|entropy``) it quantizes the model with
:func:`lowbit.quantize` and prints the quantized IR (per tensor QType, scales, zero points,
dyadic m/shift) followed by one ``weights: fp32 ... B -> packed ... B (Nx smaller ...)`` line
(text format only). ``lowbit ops`` lists the supported ONNX ops and versions.

Every :class:`~lowbit.ir.errors.LowbitError` is printed as one line on stderr and the process
exits with code 2 (argparse usage errors also exit 2); no traceback for bad input. Output files
are written atomically (temp file + rename), so an interrupted run leaves nothing half-written.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

from ..ir.errors import LowbitError
from .recipes import CALIBRATION_METHODS, PRESETS

EXIT_USAGE = 2


class _CliError(LowbitError):
    label = "usage"


def parse_input_shape(text: str) -> tuple[str, tuple[int, ...]]:
    """``"x=1,3,48,320"`` -> ``("x", (1, 3, 48, 320))``."""
    name, sep, dims = text.rpartition("=")
    if not sep or not name or not dims:
        raise _CliError(f"--input-shape {text!r}: expected NAME=D0,D1,... e.g. x=1,3,224,224")
    try:
        shape = tuple(int(d) for d in dims.split(","))
    except ValueError:
        raise _CliError(
            f"--input-shape {text!r}: dims must be integers, e.g. x=1,3,224,224") from None
    if any(d <= 0 for d in shape):
        raise _CliError(f"--input-shape {text!r}: dims must be positive")
    return name, shape


def write_atomic(path: str | os.PathLike, text: str) -> None:
    """Write ``text`` to ``path`` via a temp file in the same folder and an atomic rename."""
    path = Path(path)
    if path.exists() and path.is_dir():
        raise _CliError(f"output path {str(path)!r} is a directory; give a file name")
    parent = path.parent if str(path.parent) else Path(".")
    if not parent.is_dir():
        raise _CliError(f"output folder {str(parent)!r} does not exist")
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def _cmd_inspect(args) -> int:
    from ..ir import to_json
    from ..passes import default_pipeline
    from .onnx_import import import_onnx

    shapes: dict[str, tuple[int, ...]] = {}
    for text in args.input_shape or []:
        name, shape = parse_input_shape(text)
        if name in shapes:
            raise _CliError(f"--input-shape given twice for input {name!r}")
        shapes[name] = shape
    if args.quant is not None or args.recipe is not None:
        return _inspect_quantized(args, shapes)
    if args.calib is not None or args.calibration is not None:
        raise _CliError("--calib / --calibration need --quant PRESET or --recipe FILE")
    graph = import_onnx(args.model, input_shapes=shapes or None)
    if args.passes == "default":
        graph = default_pipeline(dump_dir=args.dump_ir)(graph).graph
    elif args.dump_ir:
        Path(args.dump_ir).mkdir(parents=True, exist_ok=True)
        write_atomic(Path(args.dump_ir) / "00-input.txt", str(graph))
    text = to_json(graph) + "\n" if args.format == "json" else str(graph)
    if args.output:
        write_atomic(args.output, text)
    else:
        sys.stdout.write(text)
    return 0


def _inspect_quantized(args, shapes) -> int:
    from ..ir import to_json
    from .quantize import quantize, weight_size

    if args.passes != "default":
        raise _CliError("--quant / --recipe run the default passes first; drop --passes none")
    graph = quantize(args.model, quant=args.quant or "w4a8", calib=args.calib,
                     recipe=args.recipe, calibration=args.calibration or "minmax",
                     input_shapes=shapes or None, dump_ir=args.dump_ir)
    if args.format == "json":
        text = to_json(graph) + "\n"
    else:
        text = str(graph)
        text += ("" if text.endswith("\n") else "\n") + f"{weight_size(graph)}\n"
    if args.output:
        write_atomic(args.output, text)
    else:
        sys.stdout.write(text)
    return 0


def _cmd_ops(args) -> int:
    from .onnx_import.registry import supported_ops

    for op, versions in sorted(supported_ops().items()):
        print(f"{op:24s} {', '.join(str(v) for v in versions)}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="lowbit", description="lowbit: a quantizing tensor compiler (ONNX -> low-bit TVM).")
    parser.add_argument("--version", action="version", version=_version())
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("inspect", help="import a model, run passes, print the lowbit IR")
    p.add_argument("model", help="path to an ONNX model")
    p.add_argument("--input-shape", action="append", metavar="NAME=D0,D1,...",
                   help="bind a graph input's shape (repeatable), e.g. x=1,3,48,320")
    p.add_argument("--passes", choices=("default", "none"), default="default",
                   help="run the default pass pipeline (default) or none")
    p.add_argument("--dump-ir", metavar="DIR", help="write the IR after every pass into DIR")
    p.add_argument("--format", choices=("text", "json"), default="text")
    p.add_argument("-o", "--output", metavar="FILE", help="write the dump to FILE, not stdout")
    p.add_argument("--quant", metavar="PRESET", choices=PRESETS,
                   help=f"quantize with a preset: {', '.join(PRESETS)}")
    p.add_argument("--calib", metavar="FILE.npz",
                   help="calibration samples: one array per model input, stacked on axis 0")
    p.add_argument("--recipe", metavar="FILE", help="quantization recipe (.toml or .json)")
    p.add_argument("--calibration", choices=CALIBRATION_METHODS,
                   help="activation range observer (default: the recipe's, minmax for presets)")
    p.set_defaults(func=_cmd_inspect)

    p = sub.add_parser("ops", help="list the supported ONNX ops and schema versions")
    p.set_defaults(func=_cmd_ops)
    return parser


def _version() -> str:
    from .. import __version__

    return f"lowbit {__version__}"


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``lowbit`` console script; returns the exit code."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except LowbitError as e:
        print(f"lowbit: {e.label}: {e}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print("lowbit: interrupted", file=sys.stderr)
        return 130


def console_main() -> None:  # pragma: no cover - thin wrapper for the console script
    sys.exit(main())


if __name__ == "__main__":  # pragma: no cover
    console_main()
