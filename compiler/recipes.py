"""Quantization recipes: which number format every layer gets (``--quant``, ``--recipe``).

A :class:`Recipe` is pure configuration; the quantization passes (insert_fake_quant, calibrate,
fold_scales) read it and never the other way round. It holds

* ``default``          the :class:`LayerSpec` of every layer nothing else speaks about,
* ``ops`` / ``nodes``  partial overrides (:class:`LayerOverride`) keyed by IR op type
                       (``"Conv"``, ``"MatMul"``, the :class:`~lowbit.ir.ops.Op` values) or by
                       node name,
* ``first_last_int8``  keep the first and the last layer at int8 (:data:`INT8_WEIGHTS`,
                       :data:`INT8_ACTIVATIONS`), the usual accuracy-preserving exception,
* ``calibration``      the observer that picks activation ranges (:data:`CALIBRATION_METHODS`),
* ``ptq``              post-training refinements (:class:`PTQSpec`),
* ``reduce_range``     uniform 8-bit weights become 7-bit (onnxruntime's ``reduce_range``):
                       ``True`` / ``False``, or ``None`` ("auto" in files) to let the compile
                       target decide (:func:`lowbit.codegen.kernels.int8.reduces_range`;
                       ``lowbit.quantize``, which has no target, reads None as False).

Resolution (:meth:`Recipe.spec_for`), highest precedence first::

    nodes[name]  >  ops[op_type]  >  first/last int8 rule  >  default

and then, with ``reduce_range`` true, a resolved uniform 8-bit weight spec takes 7 bits --
except the first/last int8 layers of a recipe whose default is not 8-bit (they are kept for
accuracy) when no op or node override names them.

Each override is merged field by field onto the level below it; a field the override leaves
unset keeps the lower level's value, except that when an override changes a ``format`` the
inherited fields that the new format cannot take are replaced by the format's canonical value
(binary -> 1 bit, ternary -> 2, pow2 -> 4, codebook -> 4, uniform -> 8; binary/ternary/pow2 ->
symmetric; non-pow2 -> not zero_free; binary activations -> signed), and when an override
changes ``granularity`` away from per_group the inherited ``group_size`` is dropped. A layer
whose resolved spec has ``exclude = true`` stays float (``spec_for`` returns None).

Legal formats (weights): uniform 2..8 bits (symmetric or not), binary 1 bit, ternary 2 bits,
pow2 3..5 bits (sign + exponent, may be ``zero_free``), codebook 2..4 bits; per_group needs
``group_size >= 2``. Activations: 1, 2, 4 or 8 bits; 1 bit only with format binary (sign
activations, x -> ±1) and binary only with 1 bit. ``signed = None`` ("auto" in files) lets the
calibration decide: unsigned after ReLU-like producers, signed otherwise. ``kernel = None``
("auto" in files) lets the kernel selector choose.

Files (:func:`load_recipe`, :func:`save_recipe`) are TOML or JSON with the schema of
:meth:`Recipe.to_dict`::

    preset = "w4a8"                 # optional base; the rest overrides it
    calibration = "minmax"
    first_last_int8 = true
    reduce_range = "auto"           # or true / false
    [default.weights]               # without a preset: format and bits are required here,
    bits = 4                        # and [default.activations] bits
    [ptq]
    reconstruct = true
    [ops.MatMul.weights]
    bits = 8
    [nodes."conv_3"]
    exclude = true

Unknown keys are errors (with a difflib suggestion); every error is one
:class:`~lowbit.ir.errors.QuantizationError` line naming the key path, the bad value and the
legal values.

Presets (:data:`PRESETS`): weights per-channel symmetric (codebook4: ``symmetric = false``, its
16 levels are fitted freely), activations 8 bits with ``signed = auto`` unless the name says
otherwise (w1a1: binary weights and binary sign activations, XNOR), first/last layer int8,
calibration minmax, ``ptq.reconstruct`` on for ternary, pow2, codebook4, w2a8, w1a8 and
w2a2.
``preset("none")`` returns a Recipe that quantizes nothing: its default (int8 specs) is excluded
and ``first_last_int8`` is off, so a recipe file based on ``preset = "none"`` can switch single
ops or nodes on with ``exclude = false``.
"""

from __future__ import annotations

import difflib
import json
import os
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib

from ..ir.errors import QuantizationError
from ..ir.ops import Op

WEIGHT_FORMATS = ("uniform", "binary", "ternary", "pow2", "codebook")
GRANULARITIES = ("per_tensor", "per_channel", "per_group")
ACTIVATION_FORMATS = ("uniform", "binary")
ACTIVATION_BITS = (1, 2, 4, 8)
#: observer names; must match ``lowbit.passes.calibration.OBSERVERS`` (a test checks it)
CALIBRATION_METHODS = ("minmax", "percentile", "mse", "entropy")
PRESETS = ("int8", "w4a8", "w2a8", "w1a8", "w2a2", "w1a1", "ternary", "pow2", "codebook4", "none")
#: file spelling of ``None`` for ``kernel`` (auto-select) and ``activations.signed`` (from data)
AUTO = "auto"

_OP_TYPES = tuple(op.value for op in Op)


@dataclass(frozen=True, slots=True)
class _FormatRule:
    """What one weight format accepts; ``canonical_bits`` is used when a format change leaves
    the inherited bit width illegal."""

    bits: tuple[int, ...]
    canonical_bits: int
    symmetric_only: bool
    zero_free_ok: bool
    text: str


_WEIGHT_RULES = {
    "uniform": _FormatRule(tuple(range(2, 9)), 8, False, False, "2..8 bits"),
    "binary": _FormatRule((1,), 1, True, False, "exactly 1 bit"),
    "ternary": _FormatRule((2,), 2, True, False, "exactly 2 bits"),
    "pow2": _FormatRule((3, 4, 5), 4, True, True, "3..5 bits (sign + exponent)"),
    "codebook": _FormatRule((2, 3, 4), 4, False, False, "2..4 bits"),
}


# -- small checkers: each raises one QuantizationError line naming the key path ----------------
def _show(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return repr(value)


def _want_bool(value: Any, path: str) -> None:
    if not isinstance(value, bool):
        raise QuantizationError(f"{path} = {_show(value)}: expected true or false")


def _want_int(value: Any, path: str) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise QuantizationError(f"{path} = {_show(value)}: expected an integer")


def _want_choice(value: Any, choices: tuple, path: str, what: str) -> None:
    if not isinstance(value, str) or value not in choices:
        raise QuantizationError(f"{path} = {_show(value)}: {what} are {', '.join(choices)}")


def _want_table(value: Any, path: str) -> dict:
    if not isinstance(value, dict):
        raise QuantizationError(f"{path} = {_show(value)}: expected a table of keys")
    return value


def _check_keys(table: Mapping, allowed: tuple[str, ...], where: str) -> None:
    """Unknown keys are errors: a typo must not silently fall back to the default."""
    for key in table:
        if key in allowed:
            continue
        close = difflib.get_close_matches(str(key), allowed, n=1)
        hint = f"did you mean {close[0]!r}?" if close else f"valid keys: {', '.join(allowed)}"
        raise QuantizationError(f"unknown key {key!r} in {where}; {hint}")


def _node_key(name: str) -> str:
    """A node name as a TOML key in messages and files: always quoted."""
    return _toml_string(name)


# -- field checks (each present key alone) and combination checks (a whole spec) ----------------
def _check_weight_fields(values: Mapping[str, Any], path: str) -> None:
    if "format" in values:
        _want_choice(values["format"], WEIGHT_FORMATS, f"{path}.format", "weight formats")
    if "bits" in values:
        _want_int(values["bits"], f"{path}.bits")  # the range depends on the format: below
    if "granularity" in values:
        _want_choice(values["granularity"], GRANULARITIES, f"{path}.granularity",
                     "granularities")
    if values.get("group_size") is not None:
        _want_int(values["group_size"], f"{path}.group_size")
        if values["group_size"] < 2:
            raise QuantizationError(
                f"{path}.group_size = {values['group_size']}: per_group needs group_size >= 2")
    for key in ("symmetric", "zero_free"):
        if key in values:
            _want_bool(values[key], f"{path}.{key}")


def _check_weight_combination(spec: WeightSpec, path: str) -> None:
    rule = _WEIGHT_RULES[spec.format]
    if spec.bits not in rule.bits:
        raise QuantizationError(
            f"{path}.bits = {spec.bits}: {spec.format} weights take {rule.text}")
    if spec.granularity == "per_group" and spec.group_size is None:
        raise QuantizationError(
            f"{path}.granularity = 'per_group' needs a group size; set {path}.group_size >= 2")
    if spec.granularity != "per_group" and spec.group_size is not None:
        raise QuantizationError(
            f"{path}.group_size = {spec.group_size}: group_size only applies with granularity "
            f"'per_group', not {spec.granularity!r}; remove it")
    if rule.symmetric_only and not spec.symmetric:
        raise QuantizationError(
            f"{path}.symmetric = false: {spec.format} weights are always symmetric; "
            f"set it to true")
    if spec.zero_free and not rule.zero_free_ok:
        raise QuantizationError(
            f"{path}.zero_free = true: only pow2 weights can drop the zero code "
            f"(format is {spec.format!r}); set it to false")


def _check_activation_fields(values: Mapping[str, Any], path: str) -> None:
    if "bits" in values:
        _want_int(values["bits"], f"{path}.bits")
        if values["bits"] not in ACTIVATION_BITS:
            raise QuantizationError(
                f"{path}.bits = {values['bits']}: activations take 1, 2, 4 or 8 bits")
    if values.get("signed") is not None:
        _want_bool(values["signed"], f"{path}.signed")
    if "format" in values:
        _want_choice(values["format"], ACTIVATION_FORMATS, f"{path}.format",
                     "activation formats")


def _check_activation_combination(spec: ActSpec, path: str) -> None:
    if spec.format == "binary" and spec.bits != 1:
        raise QuantizationError(
            f"{path}.bits = {spec.bits}: binary (sign) activations take exactly 1 bit")
    if spec.format == "uniform" and spec.bits == 1:
        raise QuantizationError(
            f"{path}.bits = 1: 1-bit activations need format 'binary' (sign activations); "
            f"uniform activations take 2, 4 or 8 bits")
    if spec.format == "binary" and spec.signed is False:
        raise QuantizationError(
            f"{path}.signed = false: binary activations are bipolar (±1); set it to true")


def _check_layer_fields(values: Mapping[str, Any], path: str) -> None:
    kernel = values.get("kernel")
    if kernel is not None and (not isinstance(kernel, str) or not kernel or kernel == AUTO):
        raise QuantizationError(
            f"{path}.kernel = {_show(kernel)}: expected a kernel name (or 'auto' in a file)")
    if "exclude" in values:
        _want_bool(values["exclude"], f"{path}.exclude")


def _check_ptq_fields(values: Mapping[str, Any], path: str) -> None:
    for key in ("bias_correction", "reconstruct"):
        if key in values:
            _want_bool(values[key], f"{path}.{key}")
    for key in ("iters", "seed"):
        if key in values:
            _want_int(values[key], f"{path}.{key}")
            if values[key] < 0:
                raise QuantizationError(f"{path}.{key} = {values[key]}: must be >= 0")


def _present(obj) -> dict[str, Any]:
    """The fields of a spec or override that are set (overrides use UNSET for "inherit")."""
    return {f.name: getattr(obj, f.name) for f in fields(obj)
            if getattr(obj, f.name) is not UNSET}


class _Unset:
    """Marks an override field as "inherit from the level below" (None is a real value for
    ``group_size``, ``signed`` and ``kernel``)."""

    _instance = None

    def __new__(cls):
        if cls._instance is None:
            cls._instance = super().__new__(cls)
        return cls._instance

    def __repr__(self) -> str:
        return "UNSET"

    def __reduce__(self):
        return (_Unset, ())


UNSET: Any = _Unset()


# -- the specs ---------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class WeightSpec:
    """Weight number format: ``format`` at ``bits`` with one scale per tensor, per output
    channel or per group of ``group_size`` input elements; ``symmetric`` means zero point 0;
    ``zero_free`` (pow2 only) drops the zero code so every weight is ±2^e (DenseShift)."""

    format: str
    bits: int
    granularity: str = "per_channel"
    group_size: int | None = None
    symmetric: bool = True
    zero_free: bool = False

    def __post_init__(self):
        _check_weight_fields(_present(self), "WeightSpec")
        _check_weight_combination(self, "WeightSpec")


@dataclass(frozen=True, slots=True)
class ActSpec:
    """Activation number format: ``bits`` in 1, 2, 4, 8; ``signed`` None = decide from the
    calibration data (unsigned after ReLU); ``format`` binary = sign activations (1 bit)."""

    bits: int = 8
    signed: bool | None = None
    format: str = "uniform"

    def __post_init__(self):
        _check_activation_fields(_present(self), "ActSpec")
        _check_activation_combination(self, "ActSpec")


@dataclass(frozen=True, slots=True)
class LayerSpec:
    """Everything about one layer: its weight and activation formats, a kernel to force
    (None = let the selector choose) and ``exclude`` (True = the layer stays float)."""

    weights: WeightSpec
    activations: ActSpec = ActSpec()
    kernel: str | None = None
    exclude: bool = False

    def __post_init__(self):
        _check_layer_fields(_present(self), "LayerSpec")


@dataclass(frozen=True, slots=True)
class PTQSpec:
    """Post-training refinements: ``bias_correction`` (shift each bias by the expected
    quantization error of its layer's output), ``reconstruct`` (AdaRound/BRECQ-style rounding
    optimisation for ``iters`` steps, seeded by ``seed``)."""

    bias_correction: bool = False
    reconstruct: bool = False
    iters: int = 1000
    seed: int = 0

    def __post_init__(self):
        _check_ptq_fields(_present(self), "PTQSpec")


@dataclass(frozen=True, slots=True)
class WeightOverride:
    """Some fields of a :class:`WeightSpec`; UNSET fields inherit."""

    format: str = UNSET
    bits: int = UNSET
    granularity: str = UNSET
    group_size: int | None = UNSET
    symmetric: bool = UNSET
    zero_free: bool = UNSET

    def __post_init__(self):
        _check_weight_fields(_present(self), "WeightOverride")


@dataclass(frozen=True, slots=True)
class ActOverride:
    """Some fields of an :class:`ActSpec`; UNSET fields inherit."""

    bits: int = UNSET
    signed: bool | None = UNSET
    format: str = UNSET

    def __post_init__(self):
        _check_activation_fields(_present(self), "ActOverride")


@dataclass(frozen=True, slots=True)
class LayerOverride:
    """Some fields of a :class:`LayerSpec`; UNSET fields inherit."""

    weights: WeightOverride = WeightOverride()
    activations: ActOverride = ActOverride()
    kernel: str | None = UNSET
    exclude: bool = UNSET

    def __post_init__(self):
        _check_layer_fields(_present(self), "LayerOverride")

    def apply(self, base: LayerSpec, path: str = "LayerOverride") -> LayerSpec:
        """``base`` with this override's set fields on top (rules in the module docstring);
        the result is checked and errors name ``path``."""
        return LayerSpec(
            weights=_merge_weights(base.weights, self.weights, f"{path}.weights"),
            activations=_merge_activations(base.activations, self.activations,
                                           f"{path}.activations"),
            kernel=base.kernel if self.kernel is UNSET else self.kernel,
            exclude=base.exclude if self.exclude is UNSET else self.exclude,
        )


def _merge_weights(base: WeightSpec, override: WeightOverride, path: str) -> WeightSpec:
    given = _present(override)
    values = _present(base) | given
    if "format" in given:
        rule = _WEIGHT_RULES[values["format"]]
        if "bits" not in given and values["bits"] not in rule.bits:
            values["bits"] = rule.canonical_bits
        if "symmetric" not in given and rule.symmetric_only:
            values["symmetric"] = True
        if "zero_free" not in given and not rule.zero_free_ok:
            values["zero_free"] = False
    if "granularity" in given and values["granularity"] != "per_group" \
            and "group_size" not in given:
        values["group_size"] = None
    return _build(WeightSpec, values, path)


def _merge_activations(base: ActSpec, override: ActOverride, path: str) -> ActSpec:
    given = _present(override)
    values = _present(base) | given
    if "format" in given and "bits" not in given:
        if values["format"] == "binary":
            values["bits"] = 1
        elif values["bits"] == 1:
            values["bits"] = 8
    if "format" in given and "signed" not in given and values["format"] == "binary":
        values["signed"] = True
    return _build(ActSpec, values, path)


def _build(cls, values: dict[str, Any], path: str):
    """Construct a Weight/ActSpec, reporting problems under ``path`` (not the class name)."""
    if cls is WeightSpec:
        _check_weight_fields(values, path)
        _check_weight_combination(_Namespace(values), path)
    else:
        _check_activation_fields(values, path)
        _check_activation_combination(_Namespace(values), path)
    return cls(**values)


class _Namespace:
    """Attribute view of a dict, so the combination checks run before construction."""

    def __init__(self, values: dict[str, Any]):
        self.__dict__.update(values)


# -- presets -----------------------------------------------------------------------------------
INT8_WEIGHTS = WeightSpec("uniform", 8, "per_channel", None, True, False)
INT8_ACTIVATIONS = ActSpec(8, None, "uniform")
_A8 = INT8_ACTIVATIONS


def _first_last_spec(default: LayerSpec) -> LayerSpec:
    """The first/last-layer rule: int8 weights and activations, kernel auto, ``exclude`` as the
    default says (a recipe that quantizes nothing keeps those layers float too)."""
    return LayerSpec(INT8_WEIGHTS, INT8_ACTIVATIONS, None, default.exclude)


def _preset_layers() -> dict[str, tuple[WeightSpec, ActSpec, bool]]:
    """name -> (weights, activations, ptq.reconstruct)."""
    return {
        "int8": (INT8_WEIGHTS, _A8, False),
        "w4a8": (WeightSpec("uniform", 4), _A8, False),
        "w2a8": (WeightSpec("uniform", 2), _A8, True),
        "w1a8": (WeightSpec("binary", 1), _A8, True),
        "w2a2": (WeightSpec("uniform", 2), ActSpec(2, None, "uniform"), True),
        "w1a1": (WeightSpec("binary", 1), ActSpec(1, True, "binary"), False),
        "ternary": (WeightSpec("ternary", 2), _A8, True),
        "pow2": (WeightSpec("pow2", 4), _A8, True),
        "codebook4": (WeightSpec("codebook", 4, symmetric=False), _A8, True),
        "none": (INT8_WEIGHTS, _A8, False),
    }


def preset(name: str) -> Recipe:
    """The built-in recipe ``name`` (one of :data:`PRESETS`; see the module docstring)."""
    layers = _preset_layers()
    if name not in layers:
        raise QuantizationError(
            f"unknown --quant preset {name!r}; valid: {', '.join(PRESETS)}")
    weights, activations, reconstruct = layers[name]
    nothing = name == "none"
    return Recipe(
        default=LayerSpec(weights, activations, None, exclude=nothing),
        calibration="minmax",
        first_last_int8=not nothing,
        ptq=PTQSpec(reconstruct=reconstruct),
        preset=name,
    )


# -- the recipe --------------------------------------------------------------------------------
_TOP_KEYS = ("preset", "calibration", "first_last_int8", "reduce_range", "default", "ptq",
             "ops", "nodes")
_LAYER_KEYS = ("weights", "activations", "kernel", "exclude")
_WEIGHT_KEYS = tuple(f.name for f in fields(WeightSpec))
_ACT_KEYS = tuple(f.name for f in fields(ActSpec))
_PTQ_KEYS = tuple(f.name for f in fields(PTQSpec))


@dataclass(frozen=True, slots=True)
class Recipe:
    """A whole quantization plan (see the module docstring). ``ops`` and ``nodes`` are copied
    on construction; treat them as read-only. ``preset`` names the base preset, if any."""

    default: LayerSpec
    ops: dict[str, LayerOverride] = field(default_factory=dict)
    nodes: dict[str, LayerOverride] = field(default_factory=dict)
    calibration: str = "minmax"
    first_last_int8: bool = True
    ptq: PTQSpec = PTQSpec()
    preset: str | None = None
    reduce_range: bool | None = None

    def __post_init__(self):
        object.__setattr__(self, "ops", {_op_name(k): v for k, v in dict(self.ops).items()})
        object.__setattr__(self, "nodes", dict(self.nodes))
        _want_choice(self.calibration, CALIBRATION_METHODS, "recipe calibration",
                     "calibration methods")
        _want_bool(self.first_last_int8, "recipe first_last_int8")
        if self.reduce_range is not None:
            _want_bool(self.reduce_range, "recipe reduce_range")
        if self.preset is not None:
            _want_choice(self.preset, PRESETS, "recipe preset", "presets")
        for op_type in self.ops:
            _want_choice(op_type, _OP_TYPES, f"recipe ops.{op_type}", "op types")
        for name in self.nodes:
            if not isinstance(name, str) or not name:
                raise QuantizationError(f"recipe nodes key {name!r}: expected a node name")
        # Check every override against the levels it can land on now, so a bad file fails at
        # load time and not halfway through quantization. A node override on top of an op
        # override is checked when spec_for resolves it.
        bases = [self.default]
        if self.first_last_int8:
            bases.append(_first_last_spec(self.default))
        for path, override in self._overrides():
            if not isinstance(override, LayerOverride):
                raise QuantizationError(f"{path} = {override!r}: expected a LayerOverride")
            for base in bases:
                override.apply(base, path)

    def _overrides(self):
        for op_type, override in self.ops.items():
            yield f"recipe ops.{op_type}", override
        for name, override in self.nodes.items():
            yield f"recipe nodes.{_node_key(name)}", override

    def spec_for(self, node_name: str, op_type: str | Op, is_first: bool = False,
                 is_last: bool = False) -> LayerSpec | None:
        """The resolved spec of one node, or None when it stays float. Precedence: node-name
        override > op-type override > first/last int8 rule > default, each merged onto the
        one below."""
        op_type = _op_name(op_type)
        spec = self.default
        # the first/last int8 exception of a low-bit recipe keeps its 8 bits (it is there for
        # accuracy) unless an override speaks about the layer
        kept = False
        if self.first_last_int8 and (is_first or is_last):
            spec = _first_last_spec(self.default)
            kept = not _eight_bit(self.default.weights)
        if op_type in self.ops:
            spec = self.ops[op_type].apply(spec, f"recipe ops.{op_type}")
            kept = False
        if node_name in self.nodes:
            spec = self.nodes[node_name].apply(spec, f"recipe nodes.{_node_key(node_name)}")
            kept = False
        if self.reduce_range and _eight_bit(spec.weights) and not kept:
            spec = replace(spec, weights=replace(spec.weights, bits=7))
        return None if spec.exclude else spec

    @property
    def quantizes_nothing(self) -> bool:
        """True when no node can resolve to a quantized spec (e.g. ``preset("none")``)."""
        if not self.default.exclude:
            return False
        return all(o.exclude is not False for _, o in self._overrides())

    # -- serialization ------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        """The file schema as plain dicts (str, int, bool only; None spelled 'auto', an unset
        group_size left out). ``Recipe.from_dict(r.to_dict()) == r``."""
        out: dict[str, Any] = {}
        if self.preset is not None:
            out["preset"] = self.preset
        out["calibration"] = self.calibration
        out["first_last_int8"] = self.first_last_int8
        out["reduce_range"] = AUTO if self.reduce_range is None else self.reduce_range
        out["default"] = _layer_to_dict(self.default)
        out["ptq"] = _present(self.ptq)
        out["ops"] = {k: _layer_to_dict(v) for k, v in self.ops.items()}
        out["nodes"] = {k: _layer_to_dict(v) for k, v in self.nodes.items()}
        return out

    @staticmethod
    def from_dict(data: Mapping[str, Any], base: str | None = None) -> Recipe:
        """Parse the file schema (see the module docstring); the inverse of :meth:`to_dict`.
        ``base`` names the preset to build on when ``data`` names none (``--quant`` given
        beside ``--recipe``); a ``preset`` key in ``data`` wins over it."""
        return _recipe_from_dict(data, base)


def _eight_bit(weights: WeightSpec) -> bool:
    return weights.format == "uniform" and weights.bits == 8


def _op_name(op_type: str | Op) -> str:
    # Op is a str enum whose hash is the member name's, so dict lookups need the plain value.
    return op_type.value if isinstance(op_type, Op) else op_type


def _layer_to_dict(layer: LayerSpec | LayerOverride) -> dict[str, Any]:
    values = _present(layer)
    out: dict[str, Any] = {}
    if "kernel" in values:
        out["kernel"] = AUTO if values["kernel"] is None else values["kernel"]
    if "exclude" in values:
        out["exclude"] = values["exclude"]
    weights = _present(layer.weights)
    if weights.get("group_size", UNSET) is None:
        del weights["group_size"]
    activations = _present(layer.activations)
    if "signed" in activations and activations["signed"] is None:
        activations["signed"] = AUTO
    if weights or isinstance(layer, LayerSpec):
        out["weights"] = weights
    if activations or isinstance(layer, LayerSpec):
        out["activations"] = activations
    return out


# -- parsing -----------------------------------------------------------------------------------
def _parse_override(table: Any, path: str) -> LayerOverride:
    table = _want_table(table, path)
    _check_keys(table, _LAYER_KEYS, path)
    weights = _want_table(table.get("weights", {}), f"{path}.weights")
    _check_keys(weights, _WEIGHT_KEYS, f"{path}.weights")
    if weights.get("group_size", UNSET) is None:
        raise QuantizationError(
            f"{path}.weights.group_size = null: expected an integer >= 2 (leave it out instead)")
    _check_weight_fields(weights, f"{path}.weights")
    activations = dict(_want_table(table.get("activations", {}), f"{path}.activations"))
    _check_keys(activations, _ACT_KEYS, f"{path}.activations")
    if activations.get("signed", UNSET) in (AUTO, None):
        activations["signed"] = None
    _check_activation_fields(activations, f"{path}.activations")
    layer = {k: table[k] for k in ("kernel", "exclude") if k in table}
    if layer.get("kernel", UNSET) in (AUTO, None):
        layer["kernel"] = None
    _check_layer_fields(layer, path)
    return LayerOverride(WeightOverride(**weights), ActOverride(**activations), **layer)


_REQUIRED_WITHOUT_PRESET = (("weights", "format"), ("weights", "bits"), ("activations", "bits"))


def _recipe_from_dict(data: Mapping[str, Any], base_name: str | None = None) -> Recipe:
    data = _want_table(data, "recipe")
    _check_keys(data, _TOP_KEYS, "recipe (top level)")
    name = data.get("preset", base_name)
    if name is not None:
        _want_choice(name, PRESETS, "recipe preset", "presets")
        base = preset(name)
    else:
        base = None
    default_override = _parse_override(data.get("default", {}), "recipe default")
    if base is None:
        for part, key in _REQUIRED_WITHOUT_PRESET:
            if getattr(getattr(default_override, part), key) is UNSET:
                raise QuantizationError(
                    f"recipe default.{part}.{key} is missing: set it, or name a base preset "
                    f"(preset = \"int8\", one of {', '.join(PRESETS)})")
        # Without a preset the base is the dataclass defaults; format and bits are given.
        skeleton = LayerSpec(INT8_WEIGHTS, INT8_ACTIVATIONS, None, False)
        default = default_override.apply(skeleton, "recipe default")
        ptq_base, calibration, first_last = PTQSpec(), "minmax", True
    else:
        default = default_override.apply(base.default, "recipe default")
        ptq_base, calibration = base.ptq, base.calibration
        first_last = base.first_last_int8
    reduce_range = data.get("reduce_range", None if base is None else base.reduce_range)
    if reduce_range == AUTO:
        reduce_range = None
    elif reduce_range is not None and not isinstance(reduce_range, bool):
        raise QuantizationError(f"recipe reduce_range = {_show(reduce_range)}: expected true, "
                                f"false or \"auto\"")
    ptq = _want_table(data.get("ptq", {}), "recipe ptq")
    _check_keys(ptq, _PTQ_KEYS, "recipe ptq")
    _check_ptq_fields(ptq, "recipe ptq")
    ops = _want_table(data.get("ops", {}), "recipe ops")
    for op_type in ops:
        if op_type not in _OP_TYPES:
            close = difflib.get_close_matches(op_type, _OP_TYPES, n=1)
            hint = f"did you mean {close[0]!r}?" if close else "keys are IR op types like 'Conv'"
            raise QuantizationError(f"recipe ops.{op_type}: unknown op type {op_type!r}; {hint}")
    nodes = _want_table(data.get("nodes", {}), "recipe nodes")
    return Recipe(
        default=default,
        ops={k: _parse_override(v, f"recipe ops.{k}") for k, v in ops.items()},
        nodes={k: _parse_override(v, f"recipe nodes.{_node_key(k)}") for k, v in nodes.items()},
        calibration=data.get("calibration", calibration),
        first_last_int8=data.get("first_last_int8", first_last),
        ptq=replace(ptq_base, **ptq),
        preset=name,
        reduce_range=reduce_range,
    )


# -- files -------------------------------------------------------------------------------------
def load_recipe(path: str | os.PathLike, base: str | None = None) -> Recipe:
    """Read a ``.toml`` or ``.json`` recipe file (schema: module docstring); ``base`` is the
    preset to build on when the file names none (see :meth:`Recipe.from_dict`)."""
    path = Path(path)
    kind = _file_kind(path)
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise QuantizationError(f"recipe file {str(path)!r} does not exist") from None
    except OSError as exc:
        raise QuantizationError(f"cannot read recipe file {str(path)!r}: {exc.strerror}") from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise QuantizationError(
            f"recipe file {str(path)!r} is not UTF-8 text (byte {exc.start})") from None
    try:
        data = tomllib.loads(text) if kind == "toml" else json.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise QuantizationError(f"recipe file {str(path)!r} is not valid TOML: {exc}") from None
    except json.JSONDecodeError as exc:
        raise QuantizationError(
            f"recipe file {str(path)!r} is not valid JSON: {exc.msg} "
            f"(at line {exc.lineno}, column {exc.colno})") from None
    try:
        return _recipe_from_dict(data, base)
    except QuantizationError as exc:
        raise QuantizationError(f"{exc} (in {path})") from None


def save_recipe(recipe: Recipe, path: str | os.PathLike) -> Path:
    """Write ``recipe`` as TOML or JSON (by suffix) atomically: a temp file in the same folder,
    then a rename, so readers never see half a file. Returns the path."""
    path = Path(path)
    kind = _file_kind(path)
    data = recipe.to_dict()
    text = dump_toml(data) if kind == "toml" else json.dumps(data, indent=2) + "\n"
    folder = path.parent if str(path.parent) else Path(".")
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=folder)
    except OSError as exc:
        raise QuantizationError(
            f"cannot write recipe file {str(path)!r}: {exc.strerror}; check that the folder "
            f"exists and is writable") from None
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return path


def _file_kind(path: Path) -> str:
    suffix = path.suffix.lower()
    if suffix not in (".toml", ".json"):
        raise QuantizationError(
            f"recipe file {str(path)!r}: unknown suffix {suffix or '(none)'!r}; "
            f"use .toml or .json")
    return suffix[1:]


# -- a TOML emitter for this schema (nested tables of str / int / bool) ------------------------
_BARE = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_-")
_ESCAPES = {'"': '\\"', "\\": "\\\\", "\b": "\\b", "\t": "\\t", "\n": "\\n", "\f": "\\f",
            "\r": "\\r"}


def _toml_string(text: str) -> str:
    """A TOML basic string: quote, backslash and control characters escaped."""
    out = []
    for char in text:
        if char in _ESCAPES:
            out.append(_ESCAPES[char])
        elif ord(char) < 0x20 or ord(char) == 0x7F:
            out.append(f"\\u{ord(char):04X}")
        else:
            out.append(char)
    return '"' + "".join(out) + '"'


def _toml_key(key: str) -> str:
    return key if key and set(key) <= _BARE else _toml_string(key)


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, str):
        return _toml_string(value)
    raise AssertionError(f"the recipe schema has no {type(value).__name__} values")


def dump_toml(data: Mapping[str, Any]) -> str:
    """TOML text for nested dicts of str/int/bool: scalars first, then one ``[a.b]`` header per
    table that has scalars or is empty (tables with only sub-tables are implied)."""
    lines: list[str] = []

    def emit(table: Mapping[str, Any], keys: list[str]) -> None:
        scalars = [(k, v) for k, v in table.items() if not isinstance(v, Mapping)]
        tables = [(k, v) for k, v in table.items() if isinstance(v, Mapping)]
        if keys and (scalars or not tables):
            if lines:
                lines.append("")
            lines.append("[" + ".".join(_toml_key(k) for k in keys) + "]")
        lines.extend(f"{_toml_key(k)} = {_toml_value(v)}" for k, v in scalars)
        for key, sub in tables:
            emit(sub, keys + [key])

    emit(data, [])
    return "\n".join(lines) + "\n"
