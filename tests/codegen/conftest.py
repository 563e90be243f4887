"""Shared fixtures of the codegen tests."""

from dataclasses import replace
from pathlib import Path

import lowbit
import pytest
from lowbit.compiler.recipes import preset
from lowbit.ir import Graph

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


@pytest.fixture(scope="session")
def cnn():
    """``cnn(quant)``: digits_cnn quantized at preset ``quant`` (no reconstruction, batch 8),
    a fresh copy per call (each preset is quantized once per session)."""
    graphs: dict[str, Graph] = {}

    def make(quant: str) -> Graph:
        if quant not in graphs:
            recipe = preset(quant)
            recipe = replace(recipe, ptq=replace(recipe.ptq, reconstruct=False))
            graphs[quant] = lowbit.quantize(EXAMPLES / "digits_cnn.onnx", recipe=recipe,
                                            calib=str(EXAMPLES / "digits_calib.npz"),
                                            input_shapes={"input": (8, 1, 8, 8)})
        return graphs[quant].copy()

    return make


@pytest.fixture
def nvcc_ptx(tmp_path):
    """``nvcc_ptx(source, arch)``: ``nvcc --ptx`` of TVM's CUDA source (what the runtime
    JIT-compiles at load time) as text; the test skips when nvcc is not installed."""
    import shutil
    import subprocess

    if shutil.which("nvcc") is None:
        pytest.skip("nvcc is not installed")

    def compile_ptx(source: str, arch: str) -> str:
        cu, ptx = tmp_path / "kernel.cu", tmp_path / "kernel.ptx"
        cu.write_text(source)
        subprocess.run(["nvcc", "--ptx", f"-arch={arch}", "-o", str(ptx), str(cu)],
                       check=True, capture_output=True)
        return ptx.read_text()

    return compile_ptx
