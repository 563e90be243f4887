"""lowbit.passes.analysis: analyses that measure a graph and never rewrite it.

Their results (sensitivity tables, ...) feed the rewrites and the planner
(:mod:`lowbit.compiler.allocate`); analyses and rewrites stay separate.
"""

from .sensitivity import (
    DEFAULT_CANDIDATES,
    Candidate,
    LayerInfo,
    SensitivityTable,
    layer_sensitivity,
    quantizable_layers,
    reduced_range,
)

__all__ = ["DEFAULT_CANDIDATES", "Candidate", "LayerInfo", "SensitivityTable",
           "layer_sensitivity", "quantizable_layers", "reduced_range"]
