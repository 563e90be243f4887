"""The .lbx container: round trip, atomic save, and every way a file can be wrong.

These tests need no TVM: the payload is opaque bytes to the container, and load_artifact must
reject bad files before anything touches native code (checked in a subprocess).
"""

import hashlib
import json
import os
import struct
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from lowbit.ir.errors import ArtifactError, LoweringError
from lowbit.runtime import artifact as art
from lowbit.runtime.artifact import (
    CHECKSUM_SIZE,
    FORMAT_VERSION,
    HEADER_SIZE,
    MAGIC,
    Artifact,
    PlanRow,
    TargetSpec,
    TensorSpec,
    check_host,
    compatible_version,
    host_cpu_features,
    load_artifact,
)
from onnx import TensorProto, helper

PAYLOAD = b"\x7fELF" + bytes(range(256)) * 3


def _artifact(**overrides) -> Artifact:
    fields = {
        "target": TargetSpec.from_tvm("x86", {"kind": "llvm"}, ()),
        "inputs": (TensorSpec("x", (3, 8), "float32"),),
        "outputs": (TensorSpec("y", (3, 4), "float32"), TensorSpec("h", (3, 16), "float32")),
        "payload": PAYLOAD,
        "plan": (PlanRow("fc1", "MatMul", "int8", (("bits", 8), ("tile_n", 16))),
                 PlanRow("fc2", "MatMul", "bitserial")),
    }
    fields.update(overrides)
    return Artifact(**fields)


@pytest.fixture
def saved(tmp_path) -> Path:
    return _artifact().save(tmp_path / "model.lbx")


def _rewrite(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


def _with_manifest(manifest, payload: bytes = PAYLOAD, version: int = FORMAT_VERSION):
    """A well-formed file (valid lengths and checksum) around an arbitrary manifest (a dict,
    or raw bytes)."""
    raw = manifest if isinstance(manifest, bytes) else json.dumps(manifest).encode()
    body = struct.pack("<8sIQQ", MAGIC, version, len(raw), len(payload)) + raw + payload
    return body + hashlib.sha256(body).digest()


def test_round_trip_keeps_every_field(saved):
    loaded = load_artifact(saved)
    assert loaded == _artifact()
    assert loaded.plan[0].details == (("bits", 8), ("tile_n", 16))
    assert loaded.target.arch == "x86_64"


def test_layout_is_header_manifest_payload_checksum(saved):
    data = saved.read_bytes()
    magic, version, m, p = struct.unpack_from("<8sIQQ", data)
    assert (magic, version, p) == (MAGIC, FORMAT_VERSION, len(PAYLOAD))
    assert len(data) == HEADER_SIZE + m + p + CHECKSUM_SIZE
    manifest = json.loads(data[HEADER_SIZE:HEADER_SIZE + m])
    assert manifest["payloads"] == [{"name": "library", "kind": art.PAYLOAD_KIND,
                                     "length": len(PAYLOAD)},
                                    {"name": "weights", "kind": art.WEIGHTS_KIND, "length": 0}]
    assert manifest["weights"] == []
    assert manifest["inputs"] == [{"name": "x", "shape": [3, 8], "dtype": "float32"}]
    assert manifest["entry"] == "main" and manifest["lowbit_version"]
    assert data[HEADER_SIZE + m:HEADER_SIZE + m + p] == PAYLOAD
    assert data[-CHECKSUM_SIZE:] == hashlib.sha256(data[:-CHECKSUM_SIZE]).digest()


def _weights():
    rng = np.random.default_rng(0)
    return (("w4", rng.integers(-8, 8, (64, 33)).astype(np.int8)),  # 4 bits each
            ("ternary", rng.integers(-1, 2, (16, 50)).astype(np.int8)),  # 2 bits each
            ("planes", rng.integers(0, 2**63, (2, 5), dtype=np.uint64)),  # raw
            ("offset", np.arange(-40, 40, dtype=np.int32)))  # raw


def test_stored_weights_round_trip_at_their_information_content(tmp_path):
    stored = _artifact(weights=_weights())
    assert stored.stored_weight_bytes == 64 * 33 // 2 + 16 * 50 // 4 + 80 + 320
    assert stored.weight_memory_bytes == 64 * 33 + 16 * 50 + 80 + 320
    path = stored.save(tmp_path / "w.lbx")
    data = path.read_bytes()
    _, _, m, p = struct.unpack_from("<8sIQQ", data)
    assert p == len(PAYLOAD) + stored.stored_weight_bytes
    manifest = json.loads(data[HEADER_SIZE:HEADER_SIZE + m])
    assert [(w["name"], w["encoding"], w.get("bits")) for w in manifest["weights"]] == [
        ("w4", "palette", 4), ("ternary", "palette", 2), ("planes", "raw", None),
        ("offset", "raw", None)]
    loaded = load_artifact(path)
    assert loaded.payload == PAYLOAD and loaded.to_bytes() == data  # re-saves byte for byte
    assert [name for name, _ in loaded.weights] == ["w4", "ternary", "planes", "offset"]
    for (_, want), (_, got) in zip(_weights(), loaded.weights):
        assert got.dtype == want.dtype
        np.testing.assert_array_equal(got, want)


def test_format_1_file_without_weights_still_loads(tmp_path):
    manifest = _artifact().manifest()
    manifest["payloads"] = manifest["payloads"][:1]
    del manifest["weights"]
    path = _rewrite(tmp_path / "v1.lbx", _with_manifest(manifest, version=1))
    loaded = load_artifact(path)
    assert loaded.weights == () and loaded.payload == PAYLOAD


def test_malformed_weight_entries(tmp_path):
    good = _artifact(weights=_weights())
    section = good.to_bytes()[HEADER_SIZE:][:-CHECKSUM_SIZE]
    section = section[-good.stored_weight_bytes:]
    path = tmp_path / "m.lbx"
    for change, message in [({"length": 1}, "do not match"), ({"bits": 9}, "9-bit indices"),
                            ({"encoding": "lz4"}, "bad dtype")]:
        manifest = good.manifest()
        manifest["weights"][0].update(change)
        _rewrite(path, _with_manifest(manifest, PAYLOAD + section))
        with pytest.raises(ArtifactError, match=f"malformed manifest.*{message}"):
            load_artifact(path)
    manifest = good.manifest()
    manifest["weights"][1]["name"] = "w4"
    _rewrite(path, _with_manifest(manifest, PAYLOAD + section))
    with pytest.raises(ArtifactError, match="malformed manifest.*names repeat"):
        load_artifact(path)
    manifest = good.manifest()  # the ternary palette shrunk to 2 values: index 2 is past it
    manifest["weights"][1]["values"] = [-1, 0]
    _rewrite(path, _with_manifest(manifest, PAYLOAD + section))
    with pytest.raises(ArtifactError,
                       match=r"m\.lbx.*stored weight 'ternary': index 2 past its 2-value"):
        load_artifact(path)
    manifest = good.manifest()
    manifest["payloads"] = manifest["payloads"][::-1]
    _rewrite(path, _with_manifest(manifest, PAYLOAD + section))
    with pytest.raises(ArtifactError, match="malformed manifest.*optionally followed"):
        load_artifact(path)


def test_save_is_atomic(tmp_path, monkeypatch):
    path = _artifact().save(tmp_path / "model.lbx")
    before = path.read_bytes()

    def failing_replace(src, dst):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "replace", failing_replace)
    with pytest.raises(ArtifactError, match="nothing was written"):
        _artifact(payload=b"other").save(path)
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.lbx"]  # no temp file left


def test_save_into_missing_folder(tmp_path):
    with pytest.raises(ArtifactError, match="folder exists"):
        _artifact().save(tmp_path / "no" / "such" / "model.lbx")


@pytest.mark.parametrize("cut", ["empty", 3, 8, 20, HEADER_SIZE, HEADER_SIZE + 10, "payload",
                                 "checksum", "last"])
def test_truncated_file(saved, cut):
    data = saved.read_bytes()
    m = struct.unpack_from("<8sIQQ", data)[2]
    offset = {"empty": 0, "payload": HEADER_SIZE + m + len(PAYLOAD) // 2,
              "checksum": len(data) - CHECKSUM_SIZE, "last": len(data) - 1}.get(cut, cut)
    _rewrite(saved, data[:offset])
    with pytest.raises(ArtifactError, match="truncated|empty file") as info:
        load_artifact(saved)
    assert str(saved) in str(info.value)


def test_trailing_bytes(saved):
    _rewrite(saved, saved.read_bytes() + b"\0")
    with pytest.raises(ArtifactError, match="trailing bytes"):
        load_artifact(saved)


@pytest.mark.parametrize("where", ["manifest", "payload", "checksum"])
def test_flipped_byte_fails_checksum(saved, where):
    data = bytearray(saved.read_bytes())
    m = struct.unpack_from("<8sIQQ", data)[2]
    offset = {"manifest": HEADER_SIZE + m // 2, "payload": HEADER_SIZE + m + 100,
              "checksum": len(data) - 5}[where]
    data[offset] ^= 0x20
    _rewrite(saved, bytes(data))
    with pytest.raises(ArtifactError, match="checksum mismatch"):
        load_artifact(saved)


def test_wrong_magic(saved):
    _rewrite(saved, b"\x89LBY" + saved.read_bytes()[4:])
    with pytest.raises(ArtifactError, match="not a lowbit artifact"):
        load_artifact(saved)


@pytest.mark.parametrize("version, message", [(FORMAT_VERSION + 1, "newer.*upgrade lowbit"),
                                              (0, "unknown artifact format version 0")])
def test_other_format_version(saved, version, message):
    data = bytearray(saved.read_bytes())
    struct.pack_into("<I", data, 8, version)
    _rewrite(saved, bytes(data))
    with pytest.raises(ArtifactError, match=message):
        load_artifact(saved)


def _onnx_bytes() -> bytes:
    node = helper.make_node("Relu", ["x"], ["y"])
    graph = helper.make_graph([node], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2])])
    model = helper.make_model(graph)
    model.ir_version = 8
    return model.SerializeToString()


@pytest.mark.parametrize("kind, hint", [("onnx", "ONNX"), ("elf", "ELF"), ("text", ""),
                                        ("short", "")])
def test_foreign_files(tmp_path, kind, hint):
    content = {"onnx": _onnx_bytes(), "elf": Path(sys.executable).read_bytes()[:4096],
               "text": b"hello, this is not a model\n" * 10, "short": b"abc"}[kind]
    path = _rewrite(tmp_path / f"foreign.{kind}", content)
    with pytest.raises(ArtifactError, match=f"not a lowbit artifact.*{hint}"):
        load_artifact(path)


def test_missing_file(tmp_path):
    with pytest.raises(ArtifactError, match="cannot read"):
        load_artifact(tmp_path / "absent.lbx")
    with pytest.raises(ArtifactError, match="cannot read"):
        load_artifact(tmp_path)  # a folder


def test_malformed_manifest_with_valid_checksum(tmp_path):
    manifest = _artifact().manifest()
    del manifest["outputs"]
    path = _rewrite(tmp_path / "m.lbx", _with_manifest(manifest))
    with pytest.raises(ArtifactError, match="malformed manifest.*outputs"):
        load_artifact(path)
    manifest = _artifact().manifest()
    manifest["inputs"][0]["dtype"] = "float33"
    _rewrite(path, _with_manifest(manifest))
    with pytest.raises(ArtifactError, match="malformed manifest"):
        load_artifact(path)
    for raw in (b'{"no\xff": 1}', b"[1, 2]", b"{", json.dumps({"not": "ours"}).encode()):
        _rewrite(path, _with_manifest(raw))
        with pytest.raises(ArtifactError, match="malformed manifest"):
            load_artifact(path)


def test_manifest_payload_length_must_match_header(tmp_path):
    manifest = _artifact().manifest()
    manifest["payloads"][0]["length"] += 1
    path = _rewrite(tmp_path / "m.lbx", _with_manifest(manifest))
    with pytest.raises(ArtifactError, match="payload length"):
        load_artifact(path)


def test_incompatible_lowbit_version(tmp_path):
    path = _artifact(lowbit_version="7.0.0").save(tmp_path / "old.lbx")
    with pytest.raises(ArtifactError, match="lowbit 7.0.0.*not compatible"):
        load_artifact(path)


def test_isa_the_host_lacks(tmp_path):
    host = host_cpu_features()
    lacking = next(f for f in ("amx_tile", "avx512_fp16", "sve2", "lowbit_imaginary_isa")
                   if f not in host)
    target = TargetSpec.from_tvm("x86-future", {"kind": "llvm"}, ("popcnt", lacking))
    path = _artifact(target=target).save(tmp_path / "isa.lbx")
    with pytest.raises(ArtifactError, match=f"needs CPU features {lacking} that this host lacks"):
        load_artifact(path)


def test_other_architecture(tmp_path):
    target = TargetSpec.from_tvm("arm64", {"kind": "llvm", "mtriple": "aarch64-linux-gnu"},
                                 ("neon",))
    assert target.arch == "aarch64"
    if art.host_arch() == "aarch64":
        pytest.skip("host is aarch64")
    path = _artifact(target=target).save(tmp_path / "arm.lbx")
    with pytest.raises(ArtifactError, match="built for aarch64.*this host is"):
        load_artifact(path)


def test_check_host_rules():
    arm = TargetSpec("arm64", "aarch64", ("neon",))
    check_host(arm, "t", arch="aarch64", features=frozenset({"fp", "asimd"}))  # neon == asimd
    with pytest.raises(ArtifactError, match="needs CPU features neon"):
        check_host(arm, "t", arch="aarch64", features=frozenset({"fp"}))
    with pytest.raises(ArtifactError, match="CUDA"):
        check_host(TargetSpec("cuda:sm_90", "cuda", ("sm_90",)), "t")
    avx512 = TargetSpec("x86-avx512", "x86_64", ("avx512f", "avx512_vnni"))
    check_host(avx512, "t", arch="x86_64", features=frozenset({"avx512f", "avx512_vnni", "sse"}))
    with pytest.raises(ArtifactError, match="avx512_vnni"):
        check_host(avx512, "t", arch="x86_64", features=frozenset({"avx512f"}))


def test_cpuinfo_parsing(tmp_path):
    x86 = tmp_path / "x86"
    x86.write_text("processor\t: 0\nflags\t\t: fpu sse avx2 avx512_vnni\n\nflags\t: other\n")
    assert host_cpu_features(str(x86)) == {"fpu", "sse", "avx2", "avx512_vnni"}
    arm = tmp_path / "arm"
    arm.write_text("processor\t: 0\nFeatures\t: fp asimd evtstrm\n")
    assert host_cpu_features(str(arm)) == {"fp", "asimd", "evtstrm"}
    assert host_cpu_features(str(tmp_path / "absent")) == frozenset()


@pytest.mark.parametrize("theirs, ours, ok", [("0.1.0", "0.1.5", True), ("0.1.9", "0.1.0", True),
                                              ("0.2.0", "0.1.0", False),
                                              ("1.2.0", "1.0.0", True), ("2.0.0", "1.9.0", False),
                                              ("garbage", "0.1.0", False), ("1", "1.0", False)])
def test_compatible_version(theirs, ours, ok):
    assert compatible_version(theirs, ours) is ok


def test_rejects_before_any_native_code(saved):
    """A bad file is rejected without TVM ever being imported."""
    data = bytearray(saved.read_bytes())
    data[-1] ^= 1
    _rewrite(saved, bytes(data))
    code = ("import sys\nfrom lowbit.runtime.artifact import load_artifact\n"
            "from lowbit.ir.errors import ArtifactError\n"
            f"try:\n    load_artifact({str(saved)!r})\nexcept ArtifactError as e:\n"
            "    print('rejected', e)\n"
            "assert 'tvm' not in sys.modules, 'tvm was imported'\n")
    done = subprocess.run([sys.executable, "-c", code], check=False, capture_output=True,
                          text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert "rejected" in done.stdout and "checksum" in done.stdout


def test_artifact_module_has_no_pickle():
    source = Path(art.__file__).read_text()
    assert "import pickle" not in source and "marshal" not in source


@pytest.mark.parametrize("bad, message", [
    (lambda: TensorSpec("x", [3, 8], "float32"), "shape a tuple"),
    (lambda: TensorSpec("x", (3, -1), "float32"), "non-negative ints"),
    (lambda: TensorSpec("x", (3,), "float33"), "numpy dtype name"),
    (lambda: TensorSpec("x", (3,), "f4"), "numpy dtype name"),
    (lambda: TargetSpec("riscv", "riscv64"), "arch must be one of"),
    (lambda: PlanRow("fc1", "MatMul", "int8", (("tiles", (4, 4)),)), "details must be"),
    (lambda: _artifact(inputs=(TensorSpec("x", (1,), "float32"),) * 2), "repeat a name"),
    (lambda: _artifact(payload=b""), "non-empty bytes"),
    (lambda: _artifact(weights=(("w", np.zeros(3, np.float32)),)), "integer ndarray"),
    (lambda: _artifact(weights=[("w", np.zeros(3, np.int8))]), "integer ndarray"),
])
def test_writer_side_validation(bad, message):
    """Bad fields fail when the Artifact is built, not when someone later loads the file."""
    with pytest.raises(ArtifactError, match=message):
        bad()


def test_build_host_target_requires_every_host_extension(tmp_path):
    spec = TargetSpec.for_build_host("x86", {"kind": "llvm", "mcpu": "znver4"}, ("popcnt",))
    host = host_cpu_features()
    assert set(spec.features) <= host | {"popcnt"}
    if "avx2" in host:
        assert {"avx2", "sse4_2"} <= set(spec.features)
    assert "fpu" not in spec.features and "ht" not in spec.features  # not ISA extensions
    assert load_artifact(_artifact(target=spec).save(tmp_path / "host.lbx")).target == spec


ARM = TargetSpec("arm64", "aarch64", ("neon",))


class _Executable:
    """Stands in for a TVM VM executable: records the link keywords, writes fake bytes."""

    def __init__(self):
        self.kwargs = None

    def export_library(self, path, **kwargs):
        self.kwargs = kwargs
        Path(path).write_bytes(PAYLOAD)


def _on_x86(monkeypatch, installed):
    """Pretend to be an x86_64 host where only the programs in ``installed`` are on PATH."""
    monkeypatch.setattr(art, "host_arch", lambda: "x86_64")
    monkeypatch.setattr(art.shutil, "which",
                        lambda name: f"/usr/bin/{name}" if name in installed else None)


def test_cross_linker_rules(monkeypatch):
    _on_x86(monkeypatch, {"aarch64-linux-gnu-g++", "aarch64-linux-gnu-gcc"})
    assert art.cross_linker(ARM) == "/usr/bin/aarch64-linux-gnu-g++"
    assert art.cross_linker(TargetSpec("x86", "x86_64")) is None  # native: TVM's default g++
    assert art.cross_linker(TargetSpec("cuda:sm_90", "cuda", ("sm_90",))) is None  # host code
    _on_x86(monkeypatch, {"aarch64-linux-gnu-gcc"})  # the C cross compiler alone is enough
    assert art.cross_linker(ARM) == "/usr/bin/aarch64-linux-gnu-gcc"


def test_missing_cross_linker_says_what_where_and_how(monkeypatch):
    _on_x86(monkeypatch, set())
    with pytest.raises(LoweringError) as info:
        art.cross_linker(ARM)
    message = str(info.value)
    assert message.startswith("no cross linker for aarch64 (looked for aarch64-linux-gnu-g++")
    assert "target 'arm64' on this x86_64 host" in message
    assert "apt-get install g++-aarch64-linux-gnu" in message
    assert message.endswith("or compile on an aarch64 host") and "\n" not in message


def test_export_payload_links_with_the_cross_linker(monkeypatch):
    _on_x86(monkeypatch, {"aarch64-linux-gnu-g++"})
    native, cross = _Executable(), _Executable()
    assert art.export_payload(native) == PAYLOAD and native.kwargs == {}
    assert art.export_payload(native, TargetSpec("x86", "x86_64")) == PAYLOAD
    assert native.kwargs == {}
    assert art.export_payload(cross, ARM) == PAYLOAD
    assert cross.kwargs == {"cc": "/usr/bin/aarch64-linux-gnu-g++"}
    _on_x86(monkeypatch, set())
    with pytest.raises(LoweringError, match="no cross linker for aarch64"):
        art.export_payload(_Executable(), ARM)
