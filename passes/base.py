"""Pass infrastructure: declared-contract passes, a verifying/dumping Pipeline, FixedPoint.

A :class:`Pass` states its rule in its docstring, a snake_case ``name`` and whether it is
``in_place`` (mutates and returns the graph it was given) or not (returns a new graph and leaves
its input untouched). ``run(graph)`` returns a :class:`PassResult` whose ``changed`` is honest:
False means the graph is exactly as it was, which fixed-point loops rely on.

Calling a pass (``pass_(graph, check=True)``) checks the declaration: an in-place pass must
return the very graph object it got; a not-in-place pass must leave its input's text dump
(``str(graph)``) unchanged. The text comparison costs a dump per pass, so it only runs with
``check=True`` (the Pipeline's ``verify`` mode).
"""

from __future__ import annotations

import re
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from ..ir import Graph, LowbitError, PassError, verify

_SNAKE = re.compile(r"^[a-z][a-z0-9_]*$")


@dataclass(frozen=True, slots=True)
class PassResult:
    """The graph after a pass and whether the pass changed anything."""

    graph: Graph
    changed: bool


class Pass(ABC):
    """Base class: subclasses set ``name``, ``in_place``, a docstring stating the rule, and
    implement :meth:`run`."""

    #: snake_case identifier used in the registry, dumps and error messages
    name: str = ""
    #: True: mutates and returns its input graph; False: returns a new graph, input untouched
    in_place: bool = True

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        if not _SNAKE.match(cls.name or ""):
            raise PassError(f"pass class {cls.__name__} needs a snake_case `name`, "
                            f"got {cls.name!r}")
        if not (cls.__doc__ or "").strip():
            raise PassError(f"pass class {cls.__name__} needs a docstring stating its rule")

    @abstractmethod
    def run(self, graph: Graph) -> PassResult:
        """Apply the pass to ``graph``."""

    def __call__(self, graph: Graph, *, check: bool = False) -> PassResult:
        """Run the pass and check its ``in_place`` declaration (the input-untouched check of a
        not-in-place pass only when ``check``)."""
        before = str(graph) if check and not self.in_place else None
        result = self._execute(graph, check)
        if not isinstance(result, PassResult):
            raise PassError(f"pass '{self.name}' returned {type(result).__name__}, not a "
                            "PassResult")
        if self.in_place and result.graph is not graph:
            raise PassError(f"pass '{self.name}' is declared in_place but returned a new graph; "
                            "return the input graph or declare in_place = False")
        if before is not None and str(graph) != before:
            raise PassError(f"pass '{self.name}' is declared not in_place but mutated its input "
                            "graph; work on graph.copy() or declare in_place = True")
        return result

    def _execute(self, graph: Graph, check: bool) -> PassResult:
        """Hook for composites, which forward ``check`` to their parts."""
        return self.run(graph)

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


def _run_sequence(passes: Sequence[Pass], graph: Graph, check: bool) -> PassResult:
    changed = False
    for p in passes:
        result = p(graph, check=check)
        graph, changed = result.graph, changed or result.changed
    return PassResult(graph, changed)


class _Composite(Pass):
    """A sequence of passes run as one (shared by :class:`Pipeline` and :class:`FixedPoint`).

    It is in place when every part is; otherwise it runs on ``graph.copy()`` so that its own
    declaration (input untouched) holds whatever the mix of parts."""

    name = "composite"

    def __init__(self, passes: Sequence[Pass]):
        self.passes = list(passes)
        for p in self.passes:
            if not isinstance(p, Pass):
                raise PassError(f"{type(self).__name__} got {p!r}, which is not a Pass instance")
        self.in_place = all(p.in_place for p in self.passes)

    def _start(self, graph: Graph) -> Graph:
        return graph if self.in_place else graph.copy()


class Pipeline(_Composite):
    """Run passes in order. With ``verify`` (default) the input graph and the graph after every
    pass go through :func:`lowbit.ir.verify` and each pass's in_place declaration is checked.
    With ``dump_dir`` the text form ``str(graph)`` is written to ``00-input.txt``,
    ``01-<pass name>.txt``, ``02-...``. Any exception becomes a :class:`PassError` naming the
    failing pass and the passes that ran before it."""

    name = "pipeline"

    def __init__(self, passes: Sequence[Pass], verify: bool = True,
                 dump_dir: str | Path | None = None):
        super().__init__(passes)
        self.verify = verify
        self.dump_dir = None if dump_dir is None else Path(dump_dir)

    @property
    def names(self) -> list[str]:
        """Pass names in run order."""
        return [p.name for p in self.passes]

    def _dump(self, index: int, label: str, graph: Graph) -> None:
        if self.dump_dir is not None:
            self.dump_dir.mkdir(parents=True, exist_ok=True)
            (self.dump_dir / f"{index:02d}-{label}.txt").write_text(str(graph))

    def run(self, graph: Graph) -> PassResult:
        graph = self._start(graph)
        if self.verify:
            try:
                verify(graph)
            except Exception as err:
                raise PassError(f"input graph fails verification before any pass ran: "
                                f"{_describe(err)}") from err
        self._dump(0, "input", graph)
        done: list[str] = []
        changed = False
        for index, p in enumerate(self.passes, start=1):
            try:
                result = p(graph, check=self.verify)
                if self.verify:
                    verify(result.graph)
            except Exception as err:
                raise PassError(f"pass '{p.name}' failed after [{', '.join(done)}]: "
                                f"{_describe(err)}") from err
            graph, changed = result.graph, changed or result.changed
            done.append(p.name)
            self._dump(index, p.name, graph)
        return PassResult(graph, changed)

    def __repr__(self) -> str:
        return f"Pipeline({self.names})"


class FixedPoint(_Composite):
    """Repeat the sequence ``passes`` until one whole round reports no change. Not converging
    within ``max_iters`` rounds is a :class:`PassError` (a pass whose ``changed`` is dishonest,
    or two passes undoing each other), never a silent stop."""

    name = "fixed_point"

    def __init__(self, passes: Sequence[Pass], max_iters: int = 10):
        super().__init__(passes)
        if max_iters < 1:
            raise PassError(f"FixedPoint max_iters must be >= 1, got {max_iters}")
        self.max_iters = max_iters
        self.iterations = 0

    def run(self, graph: Graph) -> PassResult:
        return self._execute(graph, check=False)

    def _execute(self, graph: Graph, check: bool) -> PassResult:
        graph = self._start(graph)
        changed = False
        for iteration in range(1, self.max_iters + 1):
            self.iterations = iteration
            result = _run_sequence(self.passes, graph, check)
            graph = result.graph
            if not result.changed:
                return PassResult(graph, changed)
            changed = True
        raise PassError(f"fixed point of [{', '.join(p.name for p in self.passes)}] did not "
                        f"converge in {self.max_iters} rounds; a pass reports changed every "
                        "round (check its `changed`) or raise max_iters")

    def __repr__(self) -> str:
        return f"FixedPoint({[p.name for p in self.passes]}, max_iters={self.max_iters})"


def _describe(err: Exception) -> str:
    """The original message; non-lowbit exceptions are prefixed with their type."""
    text = str(err)
    return text if isinstance(err, LowbitError) else f"{type(err).__name__}: {text}"
