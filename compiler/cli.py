"""The ``lowbit`` command line.

``lowbit inspect MODEL.onnx [--input-shape NAME=D0,D1,...]... [--passes default|none]
[--dump-ir DIR] [--format text|json] [-o FILE]`` imports a model, runs the passes and prints the
IR. With ``--quant PRESET`` and/or ``--recipe FILE`` (plus ``--calib FILE.npz`` and optionally
``--calibration minmax|percentile|mse|entropy``) it quantizes the model with
:func:`lowbit.quantize` and prints the quantized IR (per tensor QType, scales, zero points,
dyadic m/shift) followed by one ``weights: fp32 ... B -> packed ... B (Nx smaller ...)`` line
(text format only). ``lowbit inspect OUT.lbx`` prints a compiled artifact's checked manifest:
target, inputs / outputs, per-layer plan and stored weights (``--format json``: the manifest
itself). ``lowbit ops`` lists the supported ONNX ops and versions.

``lowbit compile MODEL.onnx --target x86 --quant PRESET [--recipe FILE] [--calib FILE.npz]
[--input-shape NAME=D0,...] [--threads N] [--dump-ir DIR] -o OUT.lbx`` runs
:func:`lowbit.compiler.driver.compile_model` with a progress display of the stages (rich on a
terminal, one plain line per stage otherwise; on stderr) and saves the artifact. ``--quant auto
--budget size=0.25[,latency=0.6x|2.5ms][,bits=3.0]`` (or ``--max-drop PTS --eval FILE.npz``)
plans every layer's format, bits and kernel (:mod:`lowbit.compiler.planner`), prints the plan
table with predicted and measured latency, and ``--save-plan plan.toml`` writes it as a recipe;
``inspect --quant auto`` prints the same table after the IR. ``lowbit tune MODEL.onnx --calib
FILE.npz [--eval FILE.npz] -o DIR`` sweeps budgets and writes the Pareto frontiers
(:mod:`lowbit.compiler.tune`).
``lowbit run OUT.lbx --inputs FILE.npz | --input NAME=FILE.npy ... [-o OUT.npz] [--repeat N]
[--print-time]`` runs it with :class:`lowbit.Session` (timing: mean / median / min / max / std
ms over N runs). ``lowbit bench`` (:mod:`lowbit.compiler.bench`) times a compiled model against
onnxruntime fp32 and static int8; ``lowbit demo`` (:mod:`lowbit.compiler.demo`) does it for the
shipped digits CNN in several presets, with test accuracy.

Every :class:`~lowbit.ir.errors.LowbitError` is printed as one line on stderr and the process
exits with code 2 (argparse usage errors also exit 2); no traceback for bad input. Output files
are written atomically (temp file + rename), so an interrupted run leaves nothing half-written.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import tempfile
from pathlib import Path

from ..ir.errors import InvalidModelError, LowbitError
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


def _emit(args, text: str) -> int:
    """An inspect result to ``-o FILE`` (atomically) or stdout."""
    if args.output:
        write_atomic(args.output, text)
    else:
        sys.stdout.write(text)
    return 0


def _is_artifact(path: str) -> bool:
    from ..runtime.artifact import MAGIC

    try:
        with open(path, "rb") as f:
            return f.read(len(MAGIC)) == MAGIC
    except OSError:
        return False


def _inspect_artifact(args) -> int:
    """``lowbit inspect OUT.lbx``: the checked manifest (text, or the JSON with
    ``--format json``); no TVM, and the host need not run the target."""
    import json

    from ..runtime.artifact import load_artifact

    for flag, value in (("--quant", args.quant), ("--recipe", args.recipe),
                        ("--calib", args.calib), ("--calibration", args.calibration),
                        ("--input-shape", args.input_shape), ("--dump-ir", args.dump_ir),
                        ("--passes", None if args.passes == "default" else args.passes),
                        ("--budget", args.budget), ("--max-drop", args.max_drop),
                        ("--eval", args.eval), ("--save-plan", args.save_plan)):
        if value is not None:
            raise _CliError(f"{flag} applies to ONNX models; {args.model!r} is a compiled .lbx "
                            f"artifact (inspect prints its manifest)")
    art = load_artifact(args.model, host_check=False)
    if args.format == "json":
        text = json.dumps(art.manifest(), indent=1, sort_keys=True) + "\n"
    else:
        text = f"{args.model}: {Path(args.model).stat().st_size:,} B\n" + art.describe()
    return _emit(args, text)


def _cmd_inspect(args) -> int:
    from ..ir import to_json
    from ..passes import default_pipeline
    from .onnx_import import import_onnx

    if _is_artifact(args.model):
        return _inspect_artifact(args)
    shapes = _parse_shapes(args.input_shape) or {}
    if args.quant is not None or args.recipe is not None:
        return _inspect_quantized(args, shapes)
    if args.calib is not None or args.calibration is not None:
        raise _CliError("--calib / --calibration need --quant PRESET or --recipe FILE")
    for flag, value in (("--budget", args.budget), ("--max-drop", args.max_drop),
                        ("--eval", args.eval), ("--save-plan", args.save_plan)):
        if value is not None:
            raise _CliError(f"{flag} applies to --quant auto; add --quant auto")
    graph = import_onnx(args.model, input_shapes=shapes or None)
    if args.passes == "default":
        graph = default_pipeline(dump_dir=args.dump_ir)(graph).graph
    elif args.dump_ir:
        Path(args.dump_ir).mkdir(parents=True, exist_ok=True)
        write_atomic(Path(args.dump_ir) / "00-input.txt", str(graph))
    text = to_json(graph) + "\n" if args.format == "json" else str(graph)
    return _emit(args, text)


def _inspect_quantized(args, shapes) -> int:
    from ..ir import to_json
    from .driver import check_auto
    from .quantize import quantize, weight_size

    if args.passes != "default":
        raise _CliError("--quant / --recipe run the default passes first; drop --passes none")
    max_drop = _max_drop(args.max_drop)
    check_auto(args.quant, args.calib, args.recipe, args.budget, max_drop, args.eval)
    save_plan = _plan_path(args.save_plan, args.quant)
    recipe, plan = args.recipe, None
    if args.quant == "auto":
        from .driver import _plan
        from .planner import format_plan

        plan = _plan(args.model, args.target, args.calib, shapes or None, args.budget,
                     max_drop, args.eval, jobs=args.jobs)
        recipe = plan.to_recipe()
    graph = quantize(args.model, quant=args.quant or "w4a8", calib=args.calib,
                     recipe=recipe, calibration=args.calibration or "minmax",
                     input_shapes=shapes or None, dump_ir=args.dump_ir)
    if save_plan is not None:
        plan.save(save_plan)
    if args.format == "json":
        text = to_json(graph) + "\n"
    else:
        text = str(graph)
        text += ("" if text.endswith("\n") else "\n") + f"{weight_size(graph)}\n"
        if plan is not None:
            text += "\nplan (--quant auto):\n" + format_plan(plan)
    return _emit(args, text)


def _cmd_ops(args) -> int:
    from .onnx_import.registry import supported_ops

    for op, versions in sorted(supported_ops().items()):
        print(f"{op:24s} {', '.join(str(v) for v in versions)}")
    return 0


def _parse_shapes(texts) -> dict[str, tuple[int, ...]] | None:
    shapes: dict[str, tuple[int, ...]] = {}
    for text in texts or []:
        name, shape = parse_input_shape(text)
        if name in shapes:
            raise _CliError(f"--input-shape given twice for input {name!r}")
        shapes[name] = shape
    return shapes or None


def _check_threads(threads: int | None) -> None:
    if threads is not None and threads < 1:
        raise _CliError(f"--threads {threads}: give a positive thread count")


def _cmd_compile(args) -> int:
    from .driver import check_request, compile_model, stage_log_for

    shapes = _parse_shapes(args.input_shape)
    _check_threads(args.threads)
    if not Path(args.model).is_file():
        raise InvalidModelError(f"model file {args.model!r} does not exist; check the path")
    out = Path(args.output)
    if out.is_dir():
        raise _CliError(f"-o {args.output!r} is a directory; give a file name such as "
                        f"model.lbx")
    if not (out.parent if str(out.parent) else Path(".")).is_dir():
        raise _CliError(f"-o {args.output!r}: folder {str(out.parent)!r} does not exist")
    max_drop = _max_drop(args.max_drop)
    check_request(args.quant, args.calib, args.recipe, args.target, budget=args.budget,
                  max_drop=max_drop, eval=args.eval)  # fail before any stage
    save_plan = _plan_path(args.save_plan, args.quant)
    log = stage_log_for(sys.stderr, quiet=args.quiet)
    try:
        result = compile_model(args.model, args.target, args.quant, args.calib, args.recipe,
                               shapes, threads=args.threads, dump_ir=args.dump_ir, log=log,
                               budget=args.budget, max_drop=max_drop, eval=args.eval,
                               jobs=args.jobs)
        with log.stage("save", str(out)):
            result.artifact.save(out)
            if save_plan is not None:
                result.plan.save(save_plan)
    finally:
        log.close()
    total = sum(s for _, s in log.times)
    if not args.quiet:
        art = result.artifact
        if result.plan is not None:
            sys.stderr.write(_plan_report(result.plan, art))
        stored = (f"; kernel weights {art.stored_weight_bytes:,} B on disk, "
                  f"{art.weight_memory_bytes:,} B in memory" if art.weights else "")
        print(f"lowbit: wrote {out} ({out.stat().st_size:,} bytes, target {art.target.name}, "
              f"{len(art.plan)} quantized layers{stored}) in {total:.2f} s"
              + (f"; plan saved to {save_plan}" if save_plan is not None else ""),
              file=sys.stderr)
    return 0


def _max_drop(text) -> float | None:
    if text is None:
        return None
    try:
        value = float(text)
    except ValueError:
        raise _CliError(f"--max-drop {text!r}: give accuracy points as a number, e.g. "
                        f"--max-drop 1.0") from None
    if not (math.isfinite(value) and value >= 0):
        raise _CliError(f"--max-drop {text!r}: give a finite number of points >= 0")
    return value


def _plan_path(text, quant) -> Path | None:
    """``--save-plan`` checked up front: needs --quant auto, a .toml / .json name and an
    existing folder."""
    if text is None:
        return None
    if quant != "auto":
        raise _CliError("--save-plan writes the plan of --quant auto; add --quant auto")
    path = Path(text)
    if path.suffix.lower() not in (".toml", ".json"):
        raise _CliError(f"--save-plan {text!r}: name a .toml or .json recipe file")
    if path.is_dir():
        raise _CliError(f"--save-plan {text!r} is a directory; give a file name")
    if not (path.parent if str(path.parent) else Path(".")).is_dir():
        raise _CliError(f"--save-plan {text!r}: folder {str(path.parent)!r} does not exist")
    return path


def _plan_report(plan, artifact) -> str:
    """The compile report's plan table, with the artifact's measured latency when it runs
    here."""
    from ..codegen.latency import artifact_ms
    from ..runtime.artifact import host_arch
    from .planner import format_plan

    measured = None
    if plan.predicted_ms is not None and artifact.target.arch == host_arch():
        measured = artifact_ms(artifact)
    return format_plan(plan, measured)


def _load_feeds(args, specs) -> dict:
    """``--inputs FILE.npz`` or ``--input NAME=FILE.npy ...`` checked against ``specs``."""
    import numpy as np

    feeds = {}
    where = ""
    if args.inputs is not None:
        where = f"--inputs {args.inputs!r}"
        try:
            data = np.load(args.inputs, allow_pickle=False)
        except (OSError, ValueError, EOFError) as exc:
            raise _CliError(f"{where}: cannot read ({exc}); pass an .npz written by "
                            f"numpy.savez") from None
        if not isinstance(data, np.lib.npyio.NpzFile):
            raise _CliError(f"{where}: cannot read (it holds one array, not an .npz archive "
                            f"of named arrays); pass an .npz written by numpy.savez")
        with data:
            feeds = {k: data[k] for k in data.files}
    for text in args.input or []:
        name, sep, file = text.partition("=")
        if not sep or not name or not file:
            raise _CliError(f"--input {text!r}: expected NAME=FILE.npy")
        if name in feeds:
            raise _CliError(f"input {name!r} given twice (--inputs / --input)")
        try:
            feeds[name] = np.load(file, allow_pickle=False)
        except (OSError, ValueError, EOFError) as exc:
            raise _CliError(f"--input {text!r}: cannot read {file!r} ({exc}); pass a .npy "
                            f"written by numpy.save") from None
        where = where or "--input"
    expected = [s.name for s in specs]
    listed = ", ".join(str(s) for s in specs)
    unknown = sorted(set(feeds) - set(expected))
    if unknown:
        raise _CliError(f"{where}: unknown input {unknown[0]!r}; the model's inputs are "
                        f"{listed}")
    missing = [n for n in expected if n not in feeds]
    if missing:
        raise _CliError(f"{where or 'no inputs given'}: missing input {missing[0]!r}; the "
                        f"model's inputs are {listed} (use --inputs FILE.npz or --input "
                        f"NAME=FILE.npy)")
    return feeds


def _cmd_run(args) -> int:
    import numpy as np

    from ..runtime.session import Session
    from .bench import measure

    _check_threads(args.threads)
    if args.repeat < 1:
        raise _CliError(f"--repeat {args.repeat}: give at least 1 run")
    if args.inputs is not None and args.input:
        raise _CliError("give either --inputs FILE.npz or --input NAME=FILE.npy, not both")
    session = Session(args.artifact, threads=args.threads)
    feeds = _load_feeds(args, session.get_inputs())
    outputs = session.run(None, feeds)
    names = [s.name for s in session.get_outputs()]
    if args.repeat > 1 or args.print_time:
        timing = measure(lambda: session.run(None, feeds), args.repeat, warmup=0)
    if args.output:
        out = Path(args.output)
        if out.suffix != ".npz":
            raise _CliError(f"-o {args.output!r}: the outputs are written as .npz; name the "
                            f"file OUT.npz")
        _write_npz_atomic(out, dict(zip(names, outputs)))
    else:
        with np.printoptions(threshold=50, edgeitems=3, precision=5):
            for name, value in zip(names, outputs):
                print(f"{name}: {value.dtype}[{','.join(map(str, value.shape))}]")
                print(value)
    if args.print_time:
        print(f"time: {timing}")
    return 0


def _write_npz_atomic(path: Path, arrays: dict) -> None:
    import numpy as np

    parent = path.parent if str(path.parent) else Path(".")
    if not parent.is_dir():
        raise _CliError(f"output folder {str(parent)!r} does not exist")
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=parent)
    try:
        with os.fdopen(fd, "wb") as f:
            np.savez(f, **arrays)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def _table_console():
    """stdout console; 120 columns when not a terminal (rich would wrap tables at 80)."""
    from rich.console import Console

    return Console(width=None if sys.stdout.isatty() else 120)


def _cmd_bench(args) -> int:
    from .bench import bench, render
    from .driver import check_request, stage_log_for

    shapes = _parse_shapes(args.input_shape)
    _check_threads(args.threads)
    if args.repeat < 1:
        raise _CliError(f"--repeat {args.repeat}: give at least 1 run")
    if not Path(args.model).is_file():
        raise InvalidModelError(f"model file {args.model!r} does not exist; check the path")
    check_request(args.quant, args.calib, args.recipe, args.target)
    log = stage_log_for(sys.stderr, quiet=args.quiet)
    try:
        report = bench(args.model, args.quant, args.calib, args.recipe, shapes, args.target,
                       args.threads, repeat=args.repeat, warmup=args.warmup, log=log)
    finally:
        log.close()
    _table_console().print(render(report))
    return 0


def _cmd_demo(args) -> int:
    from .demo import demo, render
    from .driver import stage_log_for

    _check_threads(args.threads)
    log = stage_log_for(sys.stderr, quiet=not args.verbose)
    if not args.verbose:
        print("lowbit demo: compiling the digits CNN in 4 presets and timing it against "
              f"onnxruntime (~{15 if args.fast else 35} s on 2 cores)", file=sys.stderr)
    try:
        report = demo(threads=args.threads, repeat=args.repeat, fast=args.fast, log=log)
    finally:
        log.close()
    _table_console().print(render(report))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="lowbit", description="lowbit: a quantizing tensor compiler (ONNX -> low-bit TVM).")
    parser.add_argument("--version", action="version", version=_version())
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("inspect", help="import a model, run passes, print the lowbit IR (or "
                                       "print a compiled .lbx artifact's manifest)")
    p.add_argument("model", help="path to an ONNX model, or a compiled .lbx artifact")
    p.add_argument("--input-shape", action="append", metavar="NAME=D0,D1,...",
                   help="bind a graph input's shape (repeatable), e.g. x=1,3,48,320")
    p.add_argument("--passes", choices=("default", "none"), default="default",
                   help="run the default pass pipeline (default) or none")
    p.add_argument("--dump-ir", metavar="DIR", help="write the IR after every pass into DIR")
    p.add_argument("--format", choices=("text", "json"), default="text")
    p.add_argument("-o", "--output", metavar="FILE", help="write the dump to FILE, not stdout")
    p.add_argument("--quant", metavar="PRESET", choices=(*PRESETS, "auto"),
                   help=f"quantize with a preset ({', '.join(PRESETS)}) or auto (per-layer "
                        f"plan under --budget; the plan table follows the IR)")
    p.add_argument("--calib", metavar="FILE.npz",
                   help="calibration samples: one array per model input, stacked on axis 0")
    p.add_argument("--recipe", metavar="FILE", help="quantization recipe (.toml or .json)")
    p.add_argument("--calibration", choices=CALIBRATION_METHODS,
                   help="activation range observer (default: the recipe's, minmax for presets)")
    p.add_argument("--target", default="x86",
                   help="target whose kernels --quant auto times (default x86)")
    _add_auto_options(p)
    p.set_defaults(func=_cmd_inspect)

    p = sub.add_parser("compile", help="quantize and compile a model into a .lbx artifact")
    p.add_argument("model", help="path to an ONNX model")
    p.add_argument("--target", default="x86",
                   help="x86 (this host), x86-avx2, x86-avx512, arm64, cuda[:sm_XX]")
    p.add_argument("--quant", metavar="PRESET", default="w4a8",
                   help=f"quantization preset (default w4a8): {', '.join(PRESETS)}; or auto: "
                        f"per-layer format, bits and kernel under --budget")
    p.add_argument("--recipe", metavar="FILE", help="quantization recipe (.toml or .json)")
    p.add_argument("--calib", metavar="FILE.npz",
                   help="calibration samples (needed unless --quant none)")
    p.add_argument("--input-shape", action="append", metavar="NAME=D0,D1,...",
                   help="bind a graph input's shape (repeatable), e.g. x=1,3,224,224")
    p.add_argument("--threads", type=int, metavar="N",
                   help="TVM thread pool size while compiling")
    p.add_argument("--dump-ir", metavar="DIR",
                   help="write the IR after every pass and the Relax module (relax.py) to DIR")
    _add_auto_options(p)
    p.add_argument("-o", "--output", required=True, metavar="OUT.lbx", help="artifact path")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress display")
    p.set_defaults(func=_cmd_compile)

    p = sub.add_parser("run", help="run a compiled .lbx artifact")
    p.add_argument("artifact", help="a .lbx file written by lowbit compile")
    p.add_argument("--inputs", metavar="FILE.npz", help="one array per model input name")
    p.add_argument("--input", action="append", metavar="NAME=FILE.npy",
                   help="one input from a .npy file (repeatable)")
    p.add_argument("-o", "--output", metavar="OUT.npz",
                   help="write the outputs here (default: print them)")
    p.add_argument("--repeat", type=int, default=1, metavar="N", help="timed runs (default 1)")
    p.add_argument("--print-time", action="store_true",
                   help="print mean / median / min / max / std ms over the --repeat runs")
    p.add_argument("--threads", type=int, metavar="N", help="TVM threads (default: TVM's)")
    p.set_defaults(func=_cmd_run)

    p = sub.add_parser("bench", help="compile and time against onnxruntime fp32 / int8")
    p.add_argument("model", help="path to an ONNX model")
    p.add_argument("--target", default="x86", help="compile target (must run on this host)")
    p.add_argument("--quant", metavar="PRESET", default="w4a8",
                   help=f"quantization preset (default w4a8): {', '.join(PRESETS)}")
    p.add_argument("--recipe", metavar="FILE", help="quantization recipe (.toml or .json)")
    p.add_argument("--calib", metavar="FILE.npz",
                   help="calibration samples (lowbit and ORT int8); the first batch is timed")
    p.add_argument("--input-shape", action="append", metavar="NAME=D0,D1,...",
                   help="bind a graph input's shape (repeatable)")
    p.add_argument("--threads", type=int, metavar="N",
                   help="threads for every runtime (default: all cores)")
    p.add_argument("--repeat", type=int, default=50, metavar="N",
                   help="timed rounds, each running every contender once (default 50)")
    p.add_argument("--warmup", type=int, default=5, metavar="N", help="untimed runs first")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress display")
    p.set_defaults(func=_cmd_bench)

    p = sub.add_parser("demo", help="the digits CNN in several presets vs onnxruntime")
    p.add_argument("--threads", type=int, metavar="N",
                   help="threads for every runtime (default: all cores)")
    p.add_argument("--repeat", type=int, default=50, metavar="N",
                   help="timed rounds (every row once per round; default 50)")
    p.add_argument("--fast", action="store_true",
                   help="skip ternary's layer-wise reconstruction (~2x faster, less accurate)")
    p.add_argument("-v", "--verbose", action="store_true", help="show the compile stages")
    p.set_defaults(func=_cmd_demo)

    p = sub.add_parser("tune", help="--quant auto plans over swept budgets: Pareto table "
                                    "and plots against the uniform presets")
    p.add_argument("model", help="path to an ONNX model")
    p.add_argument("--target", default="x86", help="compile target (must run on this host)")
    p.add_argument("--calib", metavar="FILE.npz", help="calibration samples (required)")
    p.add_argument("--eval", metavar="FILE.npz",
                   help="labelled eval data (inputs + 'labels'): accuracy is top-1; without "
                        "it, output SQNR vs float on the calibration data")
    p.add_argument("--input-shape", action="append", metavar="NAME=D0,D1,...",
                   help="bind a graph input's shape (repeatable)")
    p.add_argument("--points", type=int, default=8, metavar="N",
                   help="budgets per sweep (latency and size; default 8)")
    p.add_argument("--presets", metavar="P1,P2,...",
                   help="uniform presets to mark (default int8,w4a8,w2a8,ternary,pow2,"
                        "codebook4,w1a8)")
    p.add_argument("-o", "--output", required=True, metavar="DIR",
                   help="folder for pareto.md, pareto.json, pareto_latency.png, pareto_size.png")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress or table")
    _add_jobs_option(p)
    p.set_defaults(func=_cmd_tune)

    p = sub.add_parser("ops", help="list the supported ONNX ops and schema versions")
    p.set_defaults(func=_cmd_ops)
    return parser


def _add_auto_options(p) -> None:
    """The ``--quant auto`` options shared by compile and inspect."""
    p.add_argument("--budget", metavar="K=V[,K=V]",
                   help="--quant auto budgets: size=0.25 (of fp32) or size=120kB, "
                        "latency=0.6x (of the int8 plan) or latency=2.5ms, bits=3.0")
    p.add_argument("--max-drop", metavar="PTS",
                   help="--quant auto: fastest plan whose measured top-1 on --eval stays within "
                        "PTS points of float")
    p.add_argument("--eval", metavar="FILE.npz",
                   help="labelled eval data for --max-drop: the model inputs plus 'labels'")
    p.add_argument("--save-plan", metavar="PLAN.toml",
                   help="write the --quant auto plan as a recipe (reuse with --recipe)")
    _add_jobs_option(p)


def _add_jobs_option(p) -> None:
    p.add_argument("-j", "--jobs", type=_jobs, metavar="N",
                   help="worker processes for --quant auto planning (sensitivity, kernel "
                        "compiles; timings stay serial). Default: $LOWBIT_JOBS or one per CPU")


def _jobs(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text!r}: give a number of processes >= 1 "
                                         f"(1: no workers)")
    return value


def _cmd_tune(args) -> int:
    from .planner import Planner
    from .tune import render, tune, write_report

    shapes = _parse_shapes(args.input_shape)
    if not Path(args.model).is_file():
        raise InvalidModelError(f"model file {args.model!r} does not exist; check the path")
    if args.calib is None:
        raise _CliError("lowbit tune needs --calib FILE.npz (layer sensitivity is measured on "
                        "it)")
    out = Path(args.output)
    if out.exists() and not out.is_dir():
        raise _CliError(f"-o {args.output!r} is a file; give a folder for the Pareto report")
    presets = tuple(p for p in args.presets.split(",") if p) if args.presets else None
    planner = Planner(args.model, args.target, args.calib, input_shapes=shapes, jobs=args.jobs)
    log = None if args.quiet else _table_console().log
    report = tune(planner, args.eval, points=args.points,
                  **({} if presets is None else {"presets": presets}), log=log)
    paths = write_report(report, out)
    if not args.quiet:
        _table_console().print(render(report))
        print(f"lowbit: wrote {', '.join(str(p) for p in paths)}", file=sys.stderr)
    return 0


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
