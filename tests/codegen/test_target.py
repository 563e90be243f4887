"""Targets: names resolve to JSON-dict TVM targets, the host is detected, never ``native``."""

import dataclasses

import pytest
from lowbit.codegen import target as T
from lowbit.codegen.target import Target, host_x86_target, resolve_target
from lowbit.ir.errors import LoweringError


@pytest.mark.parametrize("name", T.VALID_NAMES)
def test_every_valid_name_builds_a_tvm_target(name):
    import tvm

    t = resolve_target(name)
    assert isinstance(t, Target) and t.popcount_bits in (32, 64)
    assert "native" not in str(t.tvm_dict())
    assert isinstance(t.tvm_target(), tvm.target.Target)
    assert t.tvm_target().kind.name == t.kind


def test_fixed_targets_are_exactly_the_documented_dicts():
    assert resolve_target("arm64").tvm_dict() == {
        "kind": "llvm", "mtriple": "aarch64-linux-gnu", "mattr": ["+neon"]}
    assert resolve_target("cuda").tvm_dict() == {"kind": "cuda", "arch": "sm_80"}
    assert resolve_target("cuda:sm_90").tvm_dict() == {"kind": "cuda", "arch": "sm_90"}
    assert resolve_target("cuda:sm_90").is_gpu and resolve_target("cuda").popcount_bits == 32
    assert resolve_target("x86-avx512").tvm_dict()["mcpu"] == "icelake-server"
    assert "avx512_vpopcntdq" in resolve_target("x86-avx512").features
    assert resolve_target("x86-avx2").tvm_dict()["mcpu"] == "haswell"


@pytest.mark.parametrize("name", ["x86-64", "native", "cuda:sm_70", "arm", ""])
def test_unknown_target_lists_the_valid_names(name):
    with pytest.raises(LoweringError, match="valid targets: x86, x86-avx2, x86-avx512, arm64"):
        resolve_target(name)


def test_host_target_names_a_cpu_llvm_knows():
    import tvm

    t = resolve_target("x86")
    flags = set(T.host_x86_flags())
    assert t.features == flags
    mcpu = t.tvm_dict()["mcpu"]
    assert mcpu != "native"
    assert tvm.get_global_func("target.llvm_is_valid_cpu")(mcpu, "x86_64-linux-gnu")
    assert t.runs_on_host()
    assert not resolve_target("arm64").runs_on_host() and not resolve_target("cuda").runs_on_host()


def test_host_target_without_an_llvm_cpu_name_lists_features():
    t = host_x86_target(flags=("popcnt", "avx2", "avx512f", "avx512_vpopcntdq"), cpu=None)
    assert t.tvm_dict() == {"kind": "llvm", "mcpu": "x86-64-v4",
                            "mattr": ["+popcnt", "+avx2", "+avx512f", "+avx512vpopcntdq"]}
    assert t.popcount_bits == 64
    old = host_x86_target(flags=(), cpu=None)
    assert old.tvm_dict() == {"kind": "llvm", "mcpu": "x86-64", "mattr": []}
    assert old.popcount_bits == 32  # no POPCNT: count 32-bit words
    assert host_x86_target(flags=("avx2",), cpu="znver4").tvm_dict() == {
        "kind": "llvm", "mcpu": "znver4"}


def test_cpuinfo_flags_are_parsed(tmp_path):
    info = tmp_path / "cpuinfo"
    info.write_text("processor : 0\nflags\t\t: fpu sse avx2 popcnt avx512f avx512_bitalg\n"
                    "flags : avx512_vnni\n")
    assert T.host_x86_flags.__wrapped__(str(info)) == (
        "popcnt", "avx2", "avx512f", "avx512_bitalg")
    assert T.host_x86_flags.__wrapped__(str(tmp_path / "missing")) == ()


def test_target_is_frozen_and_hashable():
    t = resolve_target("arm64")
    with pytest.raises(dataclasses.FrozenInstanceError):
        t.name = "x"
    assert hash(t) == hash(resolve_target("arm64")) and t == resolve_target("arm64")
    with pytest.raises(LoweringError, match="popcount_bits"):
        Target("bad", (("kind", "llvm"),), frozenset(), 16)


def test_amx_flags_add_mattr_to_a_named_cpu():
    """A hypervisor may report a CPU model LLVM names without AMX (this project's Xeon: a
    Rocket Lake model with amx_tile / amx_int8 flags): the features still reach LLVM."""
    flags = ("popcnt", "avx2", "avx512f", "amx_tile", "amx_int8")
    t = host_x86_target(flags=flags, cpu="rocketlake")
    assert t.tvm_dict() == {"kind": "llvm", "mcpu": "rocketlake",
                            "mattr": ["+amx-tile", "+amx-int8"]}
    assert {"amx_tile", "amx_int8"} <= t.features
    plain = host_x86_target(flags=("popcnt", "avx2"), cpu="haswell")
    assert "mattr" not in plain.tvm_dict()
