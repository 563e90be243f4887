"""Pass contracts, Pipeline (verify, dumps, error naming), FixedPoint, registry."""

import dataclasses

import numpy as np
import pytest
from lowbit.ir import FLOAT32, Graph, Op, PassError
from lowbit.passes import (
    DEFAULT_PASSES,
    PASSES,
    FixedPoint,
    Pass,
    PassResult,
    Pipeline,
    default_pipeline,
)


def _graph():
    g = Graph("t")
    x = g.add_input("x", FLOAT32, (2, 3))
    y = g.make(Op.RELU, x, name="relu")
    g.outputs = [y]
    return g


class Noop(Pass):
    """Does nothing."""

    name = "noop"

    def run(self, graph):
        return PassResult(graph, False)


class Boom(Pass):
    """Always fails."""

    name = "boom"

    def run(self, graph):
        raise ValueError("kaboom")


class BreakUseLists(Pass):
    """Corrupts the graph (a node input that is not registered) without raising."""

    name = "break_use_lists"

    def run(self, graph):
        stray = Graph("other").add_input("stray", FLOAT32, (2, 3))
        graph.nodes[0].set_input(0, stray)
        return PassResult(graph, True)


class CopyingButDeclaredInPlace(Pass):
    """Returns a copy although it claims to work in place."""

    name = "copying"

    def run(self, graph):
        return PassResult(graph.copy(), False)


class MutatingButDeclaredPure(Pass):
    """Mutates its input although it claims not to."""

    name = "mutating"
    in_place = False

    def run(self, graph):
        graph.nodes[0].outputs[0].shape = (7, 7)
        return PassResult(graph.copy(), True)


class AddRelu(Pass):
    """Appends a Relu while the graph has fewer than ``limit`` nodes."""

    name = "add_relu"

    def __init__(self, limit):
        self.limit = limit

    def run(self, graph):
        if len(graph.nodes) >= self.limit:
            return PassResult(graph, False)
        graph.outputs = [graph.make(Op.RELU, graph.outputs[0])]
        return PassResult(graph, True)


class CopyRelu(Pass):
    """Not in place: appends a Relu to a copy."""

    name = "copy_relu"
    in_place = False

    def run(self, graph):
        graph = graph.copy()
        graph.outputs = [graph.make(Op.RELU, graph.outputs[0])]
        return PassResult(graph, True)


def test_pass_result_is_frozen():
    r = PassResult(_graph(), False)
    with pytest.raises(dataclasses.FrozenInstanceError):
        r.changed = True


def test_subclass_needs_snake_case_name_and_docstring():
    with pytest.raises(PassError, match="snake_case"):
        class BadName(Pass):
            """doc"""
            name = "BadName"
    with pytest.raises(PassError, match="docstring"):
        class NoDoc(Pass):
            name = "no_doc"


def test_in_place_declaration_is_checked():
    with pytest.raises(PassError, match="'copying' is declared in_place but returned a new"):
        CopyingButDeclaredInPlace()(_graph())


def test_not_in_place_mutation_is_caught_in_check_mode():
    MutatingButDeclaredPure()(_graph())  # not checked without check=True (cheap path)
    with pytest.raises(PassError, match="'mutating' is declared not in_place but mutated"):
        MutatingButDeclaredPure()(_graph(), check=True)


def test_pipeline_error_names_failing_pass_and_predecessors():
    pipe = Pipeline([Noop(), PASSES["dead_code"](), Boom(), Noop()])
    with pytest.raises(PassError, match=r"^pass 'boom' failed after \[noop, dead_code\]: "
                                        r"ValueError: kaboom$"):
        pipe(_graph())


def test_pipeline_verifies_after_each_pass():
    with pytest.raises(PassError, match=r"pass 'break_use_lists' failed after \[noop\]: .*"
                                        r"%stray is not registered"):
        Pipeline([Noop(), BreakUseLists()])(_graph())
    Pipeline([Noop(), BreakUseLists()], verify=False)(_graph())  # no verify: not caught


def test_pipeline_rejects_invalid_input_graph():
    g = _graph()
    g.outputs[0].shape = (9,)
    with pytest.raises(PassError, match="input graph fails verification"):
        Pipeline([Noop()])(g)


def test_pipeline_dumps_numbered_files(tmp_path):
    g = _graph()
    result = default_pipeline(dump_dir=tmp_path / "ir")(g)
    names = sorted(p.name for p in (tmp_path / "ir").iterdir())
    assert names == ["00-input.txt", "01-infer_shapes.txt", "02-constant_fold.txt",
                     "03-canonicalize.txt", "04-fold_batchnorm.txt", "05-constant_fold.txt",
                     "06-dead_code.txt"]
    assert (tmp_path / "ir" / "06-dead_code.txt").read_text() == str(result.graph)
    assert "Relu(%x)" in (tmp_path / "ir" / "00-input.txt").read_text()


def test_pipeline_changed_is_or_of_passes():
    assert Pipeline([Noop(), Noop()])(_graph()).changed is False
    g = _graph()
    result = Pipeline([Noop(), AddRelu(limit=2)])(g)
    assert result.changed is True and result.graph is g and len(g.nodes) == 2


def test_pipeline_with_not_in_place_part_leaves_input_untouched():
    g = _graph()
    text = str(g)
    pipe = Pipeline([AddRelu(limit=5), CopyRelu(), AddRelu(limit=5)])
    assert pipe.in_place is False
    result = pipe(g, check=True)
    assert str(g) == text and result.graph is not g
    assert len(result.graph.nodes) == 4  # relu + one per pass


def test_fixed_point_repeats_until_unchanged():
    g = _graph()
    fp = FixedPoint([AddRelu(limit=4), Noop()], max_iters=10)
    result = fp(g)
    assert result.changed is True and len(g.nodes) == 4 and fp.iterations == 4
    assert fp(g).changed is False and fp.iterations == 1


def test_fixed_point_reports_non_convergence():
    with pytest.raises(PassError, match=r"fixed point of \[add_relu\] did not converge in 3"):
        FixedPoint([AddRelu(limit=100)], max_iters=3)(_graph())


def test_fixed_point_inside_pipeline_is_named():
    pipe = Pipeline([Noop(), FixedPoint([Boom()])])
    with pytest.raises(PassError, match=r"pass 'fixed_point' failed after \[noop\]: .*kaboom"):
        pipe(_graph())


def test_registry_and_default_order():
    assert set(PASSES) >= {"infer_shapes", "constant_fold", "canonicalize", "fold_batchnorm",
                           "dead_code"}
    for name, cls in PASSES.items():
        assert cls.name == name and cls.__doc__.strip()
    assert default_pipeline().names == list(DEFAULT_PASSES) == [
        "infer_shapes", "constant_fold", "canonicalize", "fold_batchnorm", "constant_fold",
        "dead_code"]


def test_default_pipeline_on_clean_graph_reports_no_change():
    g = _graph()
    g.add_const(np.ones(3, np.float32), "unused")
    assert default_pipeline()(g).changed is True  # the unused constant is dropped
    assert default_pipeline()(g).changed is False


def test_quantization_passes_are_registered_by_name():
    from lowbit.passes import QUANT_PASSES, get_pass

    for name in QUANT_PASSES:
        assert get_pass(name).name == name
    with pytest.raises(KeyError, match="unknown pass"):
        get_pass("fold_everything")
