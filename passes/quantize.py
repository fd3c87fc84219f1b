"""quantize_weights: int8 / int4 / fp8 quantization of constant linear weights, optionally with
int8 activations (W8A8: dynamic per token, or static per tensor from calibration) and
SmoothQuant-style smoothing.

The scheme object lives here too (`QuantScheme`), so the pass and its configuration are read
together; `CompileOptions(quantization=...)` holds one (or "int8" / "int4" / "w8a8" / "fp8",
which name the default schemes). Calibration data is part of the scheme and an input of the pass:
static activation scales and smoothing factors come from running the pass's own input graph on
the examples (passes/calibrate.py), so they are keyed by the weights this pass quantizes.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any

import torch

from ..errors import QuantizationError
from ..ir import Effect, Graph, Node, Value
from ..ir.opset.quant import (
    INT4_GROUP_SIZES,
    INT8_QMAX,
    quantize_int4_grouped,
    quantize_int4_minmax,
    quantize_int8_minmax,
    quantize_int8_per_channel,
)
from ..ir.opset.quant_fp8 import fp8_e4m3_dtype, quantize_fp8_per_channel
from ..ir.verifier import _types_equal
from .calibrate import OBSERVERS, ActivationStats, graph_feed, observe_activations
from .manager import PassContext, graph_pass
from .rewrite import Rebuilder, fresh_constant_name
from .smooth import smooth_linears

DEFAULT_SKIP = ("lm_head", "embed*")


@dataclass(frozen=True)
class QuantScheme:
    """How to quantize: weight format, group size (int4), symmetry, module-name skip patterns,
    activation quantization and calibration.

    `symmetric=False` selects asymmetric min-max quantization with zero points over the same
    blocks (int8: per output channel, int4: per group): unsigned codes in [0, 2^b - 1],
    scale = (max - min) / (2^b - 1) over the block's range widened to hold 0, zero point
    round(-min / scale), w ~= (q - zero) * scale (see kiln.ir.opset.quant).

    `skip` patterns are fnmatch patterns matched against a linear's source module path, its
    weight constant's name, and every dotted component of either (so "lm_head" matches
    "lm_head.weight" and "model.lm_head"; "embed*" matches "model.embed_tokens.weight").

    `weights="fp8"`: fp8 e4m3 weights per output channel and fp8 activations per token
    (`linear_fp8`; `activations` becomes "fp8").

    Calibration (`calibration`: a sequence of examples; kiln.compile: each as the model is called,
    a tuple of positional args, a dict of keyword args or one tensor; kiln.LLM: each a token-id
    sequence or a prompt string) feeds `static=True` (W8A8 with one per-tensor activation scale
    per linear: range / 127, the range from `observer` "minmax" or "percentile" at
    `percentile`) and `smoothing=alpha` (SmoothQuant factors, passes/smooth.py; W8A8 or fp8).
    The examples are not part of the scheme's equality or hash.

    `overrides` give layers their own format (mixed precision): a mapping (or sequence of pairs)
    from fnmatch pattern, matched like `skip`, to "int8" | "int4" | "fp8" | "w8a8" | "skip" or a
    QuantScheme. The first matching pattern wins, and an override beats `skip` (so
    `{"lm_head": "int8"}` quantizes an untied lm_head). A format name inherits this scheme's
    `group_size` and `symmetric` where they apply ("int8" is weight-only); an override needing
    calibration is refused (static scales and smoothing apply to the layers using this scheme).
    A fused weight (QKV, gate/up) is one layer, addressed by its first projection's module
    (`q_proj`, `gate_proj`) and its constant's name. Stored as a tuple of
    `(pattern, QuantScheme | None)` pairs, None meaning full precision.
    """

    weights: str = "int8"  # "int8" (per output channel) | "int4" (group-wise, packed two per byte) | "fp8" (e4m3)
    group_size: int = 128  # int4 only: 32 | 64 | 128
    symmetric: bool = True  # False: asymmetric min-max with zero points (unsigned codes)
    skip: tuple[str, ...] = DEFAULT_SKIP
    activations: str | None = None  # "int8": W8A8 (int8 symmetric weights); "fp8": with weights="fp8"
    static: bool = False  # W8A8: per-tensor activation scale from calibration instead of per token
    smoothing: float | None = None  # SmoothQuant alpha in (0, 1] (W8A8 or fp8); needs calibration
    calibration: tuple[Any, ...] = field(default=(), compare=False, repr=False)
    observer: str = "minmax"  # static range: "minmax" | "percentile"
    percentile: float = 99.99  # the percentile observer's percentile of |x|
    overrides: tuple[tuple[str, QuantScheme | None], ...] = ()  # per-layer formats, first match wins

    def __post_init__(self) -> None:
        if isinstance(self.skip, str):
            raise TypeError(f"QuantScheme.skip must be a sequence of patterns, got the string {self.skip!r}")
        object.__setattr__(self, "skip", tuple(self.skip))
        if self.weights not in ("int8", "int4", "fp8"):
            raise ValueError(f"QuantScheme.weights must be 'int8', 'int4' or 'fp8', got {self.weights!r}")
        if self.weights == "int4" and self.group_size not in INT4_GROUP_SIZES:
            raise ValueError(f"int4 group_size must be one of {INT4_GROUP_SIZES}, got {self.group_size!r}")
        if self.weights == "fp8":
            fp8_e4m3_dtype()  # QuantizationError on a PyTorch without float8_e4m3fn
            if self.activations not in (None, "fp8") or not self.symmetric:
                raise ValueError("weights='fp8' is symmetric with fp8 activations (leave activations unset or 'fp8')")
            object.__setattr__(self, "activations", "fp8")
        elif self.activations not in (None, "int8"):
            raise ValueError(f"QuantScheme.activations must be None or 'int8' (or 'fp8' with weights='fp8'), got {self.activations!r}")
        if self.activations == "int8" and (self.weights != "int8" or not self.symmetric):
            raise ValueError("activations='int8' (W8A8) needs symmetric int8 weights")
        if not all(isinstance(p, str) and p for p in self.skip):
            raise TypeError(f"QuantScheme.skip must hold non-empty strings, got {self.skip!r}")
        self._check_calibration()
        object.__setattr__(self, "overrides", _normalize_overrides(self, self.overrides))

    def _check_calibration(self) -> None:
        if isinstance(self.calibration, (str, torch.Tensor)):
            raise TypeError("QuantScheme.calibration is a sequence of examples; wrap a single one in a list")
        object.__setattr__(self, "calibration", tuple(self.calibration))
        if self.static and self.activations != "int8":
            raise ValueError("static=True is for W8A8: set activations='int8'")
        if self.smoothing is not None and (self.activations is None or not 0 < self.smoothing <= 1):
            raise ValueError(f"smoothing (SmoothQuant alpha) needs quantized activations and 0 < alpha <= 1, got {self.smoothing!r}")
        if self.observer not in OBSERVERS:
            raise ValueError(f"QuantScheme.observer must be one of {OBSERVERS}, got {self.observer!r}")
        if not 0 < self.percentile <= 100:
            raise ValueError(f"QuantScheme.percentile must be in (0, 100], got {self.percentile!r}")
        if self.needs_calibration and not self.calibration:
            raise ValueError("static=True and smoothing need calibration examples: QuantScheme(..., calibration=[example, ...])")

    @property
    def needs_calibration(self) -> bool:
        """Whether the pass must observe activations (static scales or smoothing)."""
        return self.static or self.smoothing is not None

    @classmethod
    def parse(cls, spec: "str | QuantScheme") -> "QuantScheme":
        """A scheme from itself or from a name: "int8", "int4" (group 128), "w8a8" (int8 weights and
        dynamic int8 activations) or "fp8" (e4m3 weights and activations)."""
        if isinstance(spec, QuantScheme):
            return spec
        if spec in ("int8", "int4", "fp8"):
            return cls(weights=spec)
        if spec == "w8a8":
            return cls(weights="int8", activations="int8")
        raise ValueError(f"unknown quantization {spec!r}; use 'int8', 'int4', 'w8a8', 'fp8' or a QuantScheme")

    def skips(self, *names: str) -> bool:
        """Whether any of these module / constant names matches a skip pattern."""
        return any(_matches(p, names) for p in self.skip)

    def scheme_for(self, *names: str) -> QuantScheme | None:
        """The scheme for the layer with these module / constant names: the first matching
        override's, else None when a skip pattern matches, else this scheme (without overrides)."""
        for pattern, scheme in self.overrides:
            if _matches(pattern, names):
                return scheme
        return None if self.skips(*names) else self.base

    @property
    def base(self) -> QuantScheme:
        """This scheme without its overrides (what layers no override names get)."""
        return replace(self, overrides=()) if self.overrides else self


def _matches(pattern: str, names: tuple[str, ...]) -> bool:
    """fnmatch `pattern` against each name and each dotted component of it."""
    return any(fnmatch.fnmatchcase(c, pattern) for name in names if name for c in (name, *name.split(".")))


def _normalize_overrides(base: QuantScheme, overrides: object) -> tuple[tuple[str, QuantScheme | None], ...]:
    if isinstance(overrides, str):
        raise TypeError(f"QuantScheme.overrides maps patterns to formats, got the string {overrides!r}")
    pairs = list(overrides.items()) if isinstance(overrides, Mapping) else list(overrides)
    out = []
    for pair in pairs:
        if not (isinstance(pair, (tuple, list)) and len(pair) == 2 and isinstance(pair[0], str) and pair[0]):
            raise TypeError(f"QuantScheme.overrides needs (pattern, format) pairs with non-empty patterns, got {pair!r}")
        out.append((pair[0], _override_scheme(base, pair[0], pair[1])))
    return tuple(out)


def _override_scheme(base: QuantScheme, pattern: str, value: object) -> QuantScheme | None:
    """An override's value as a scheme (None: full precision); ValueError naming the pattern."""
    if value is None or value == "skip":
        return None
    if isinstance(value, QuantScheme):
        scheme = value
    elif value in ("int8", "int4", "fp8", "w8a8"):
        scheme = QuantScheme.parse(value)
        if scheme.weights == "int4":
            scheme = replace(scheme, group_size=base.group_size, symmetric=base.symmetric)
        elif scheme.weights == "int8" and scheme.activations is None:
            scheme = replace(scheme, symmetric=base.symmetric)
    else:
        raise ValueError(f"QuantScheme.overrides[{pattern!r}] must be 'int8', 'int4', 'fp8', 'w8a8', 'skip' or a QuantScheme, got {value!r}")
    if scheme.overrides or scheme.needs_calibration:
        raise ValueError(f"QuantScheme.overrides[{pattern!r}]: an override's scheme cannot have overrides of its own or need calibration")
    return scheme


def _written(g: Graph) -> set[Value]:
    return {v for n in g.nodes if n.op.effect is Effect.WRITE for v in (n.inputs[:1] if n.op.name == "copy_to" else n.inputs)}


def _candidates(g: Graph, scheme: QuantScheme, ctx: PassContext) -> dict[Value, tuple[QuantScheme, list[Node]]]:
    """Weight constants to quantize -> (their scheme, the linears reading them: every reader).

    A weight qualifies when it is a float 2-dim constant with data, no node writes it, it is
    not a graph output, and all its readers are linears reading it as their weight whose module
    and weight names resolve (`QuantScheme.scheme_for`: overrides, then skip) to one scheme
    (a weight also read elsewhere, e.g. a tied embedding, would have to stay in full precision
    anyway, so quantizing it would only add bytes).
    """
    written = _written(g)
    readers: dict[Value, list[tuple[Node, int]]] = {}
    for n in g.nodes:
        for k, v in enumerate(n.inputs):
            if v.kind == "const":
                readers.setdefault(v, []).append((n, k))
    outputs = set(g.outputs)
    out: dict[Value, tuple[QuantScheme, list[Node]]] = {}
    for n in g.nodes:
        if n.op.name != "linear" or n.inputs[1].kind != "const" or n.inputs[1] in out:
            continue
        w = n.inputs[1]
        chosen = scheme.scheme_for(_module(n), w.name)
        if w in written or g.constant_data.get(w.name) is None or not w.type.dtype.is_float or w.type.dtype.bits < 16:
            ctx.count("linears_kept_not_constant_float")
        elif chosen is None:
            ctx.count("linears_skipped")
        elif w in outputs or any(m.op.name != "linear" or k != 1 or scheme.scheme_for(_module(m), w.name) != chosen for m, k in readers[w]):
            ctx.count("linears_kept_shared_weight")
        elif chosen.weights == "int4" and w.type.shape[1] % chosen.group_size:
            ctx.count("linears_kept_group_mismatch")
        else:
            out[w] = (chosen, [m for m, _ in readers[w]])
    return out


def _module(n: Node) -> str:
    return n.source.module if n.source is not None else ""


def _quantized_params(rb: Rebuilder, w: Value, data: torch.Tensor, scheme: QuantScheme) -> list[Value]:
    if scheme.weights == "fp8":
        parts = quantize_fp8_per_channel(data)
    elif scheme.symmetric:
        parts = quantize_int8_per_channel(data) if scheme.weights == "int8" else quantize_int4_grouped(data, scheme.group_size)
    else:
        parts = quantize_int8_minmax(data) if scheme.weights == "int8" else quantize_int4_minmax(data, scheme.group_size)
    return [rb.out.add_constant(fresh_constant_name(rb.out, f"{w.name}.{suffix}"), t) for suffix, t in zip(("q", "scale", "zero"), parts)]


def _op_and_attrs(scheme: QuantScheme) -> tuple[str, dict]:
    if scheme.weights == "fp8":
        return "linear_fp8", {}
    if scheme.activations == "int8":
        return "linear_w8a8", {}
    extra: dict = {} if scheme.weights == "int8" else {"group_size": scheme.group_size}
    if not scheme.symmetric:
        extra["asymmetric"] = True
    return ("linear_w8" if scheme.weights == "int8" else "linear_w4"), extra


def _calibrate(g: Graph, todo: dict[Value, tuple[QuantScheme, list[Node]]], scheme: QuantScheme, ctx: PassContext) -> tuple[Graph, dict[Value, tuple[QuantScheme, list[Node]]], dict[str, float]]:
    """Smoothing and static activation scales from the calibration examples, for the weights that
    use the base scheme (overrides never need calibration): the (possibly smoothed) graph, its
    quantization candidates and `act_scale` per weight name (static only)."""
    base = scheme.base
    feed = ctx.calibration if ctx.calibration is not None else graph_feed(g, scheme.calibration)
    stats = observe_activations(g, feed, scheme.percentile)
    ctx.count("calibration_examples", len(feed.batches))
    if scheme.smoothing is not None:
        mine = {w: ns for w, (s, ns) in todo.items() if s == base}
        smoothed = smooth_linears(g, mine, stats, scheme.smoothing, ctx) if mine else g
        if smoothed is not g:
            g, todo = smoothed, _candidates(smoothed, scheme, PassContext(ctx.options))
            if scheme.static:  # the ranges of x / s: observe the smoothed graph
                stats = observe_activations(g, feed, scheme.percentile)
    if not scheme.static:
        return g, todo, {}
    return g, todo, {w.name: _static_scale(stats.get(w.name), ns[0], scheme, ctx) for w, (s, ns) in todo.items() if s == base}


def _static_scale(st: ActivationStats | None, n: Node, scheme: QuantScheme, ctx: PassContext) -> float:
    if st is None:
        where = f" ({n.source.module})" if n.source is not None and n.source.module else ""
        raise QuantizationError(f"no calibration statistics for the linear over {n.inputs[1].name}{where}; the calibration runs never reached it")
    amax = st.absmax(scheme.observer)
    if amax <= 0:  # x was all zero on every example: keep the dynamic per-token scale
        ctx.count("linears_static_scale_unobserved")
        return 0.0
    return float(torch.tensor(amax / INT8_QMAX, dtype=torch.float32))  # f32-representable


@graph_pass("replace linears over constant float weights by int8 / int4 / fp8 quantized linears")
def quantize_weights(g: Graph, ctx: PassContext) -> Graph:
    """Weight quantization (a no-op unless `ctx.options.quantization` is set).

    Guarantees: every `linear` whose weight is a float constant that no node writes, that only
    linears read, and whose module / weight name is not on the scheme's skip list (or is given a
    format by one of its `overrides`: each weight gets the format of the first matching pattern)
    becomes `linear_w8` (int8 per output channel) or `linear_w4` (int4 groups, two per byte) with the
    same inputs, bias, activation and exact result type; the new constants are
    `<weight>.q` and `<weight>.scale` (and `<weight>.zero`, the zero points, passed before the
    bias, with `asymmetric=true`, when the scheme is not symmetric), and the float weight
    leaves the graph. With `activations="int8"` (W8A8, symmetric int8 weights) the op is
    `linear_w8a8` over the same `.q` / `.scale` constants; it quantizes x per token at run time,
    or, with `static=True`, by the calibrated per-tensor scale in its `act_scale` attribute.
    `weights="fp8"` gives `linear_fp8` (f8e4m3 `.q`, `.scale` per output channel).
    With `smoothing=alpha` the weights are first smoothed (passes/smooth.py: columns * s, the
    norm before them or an inserted mul divides x by s). Calibration statistics come from running
    this pass's input graph on `ctx.calibration` (prepared by kiln.compile / kiln.LLM) or, without
    one, on the scheme's examples taken as the graph's own inputs. int4 weights whose K is not a
    multiple of the group size stay in full precision (counted). `linear_add` is left alone (the
    pipeline runs this pass before fuse_epilogues makes any).

        const %wq : f32[64, 64]                        const %wq.q : i8[64, 64]
                                                  ->   const %wq.scale : f32[64]
        %0 = linear(%x, %wq, %b) : f32[B, S, 64]        %0 = linear_w8(%x, %wq.q, %wq.scale, %b) : f32[B, S, 64]
    """
    if ctx.options.quantization is None:
        return g
    scheme = QuantScheme.parse(ctx.options.quantization)
    todo = _candidates(g, scheme, ctx)
    if not todo:
        return g
    act_scales: dict[str, float] = {}
    if scheme.needs_calibration:
        g, todo, act_scales = _calibrate(g, todo, scheme, ctx)
    rb = Rebuilder(g, keep_constants=[name for name, v in g.constants.items() if v not in todo])
    params = {w: _quantized_params(rb, w, g.constant_data[w.name], s) for w, (s, _) in todo.items()}
    quantized = {id(n): w for w, (_, ns) in todo.items() for n in ns}
    for n in g.nodes:
        w = quantized.get(id(n))
        if w is None:
            rb.copy(n)
            continue
        op, extra = _op_and_attrs(todo[w][0])
        ins = [rb.get(n.inputs[0]), *params[w], *(rb.get(v) for v in n.inputs[2:])]
        attrs = {**extra, "activation": n.attrs["activation"]}
        if act_scales.get(w.name):
            attrs["act_scale"] = act_scales[w.name]
        new = rb.out.add_node(op, ins, attrs, source=n.source)
        if not _types_equal(new.output.type, n.output.type):  # the declared ops mirror linear's inference
            raise RuntimeError(f"{op} changed a result type: {n.output.type} -> {new.output.type}")
        rb.map[n.outputs[0]] = new.output
        ctx.count("linears_quantized")
    ctx.count("weights_quantized", len(todo))
    ctx.count("weight_bytes_before", sum(g.constant_data[w.name].nbytes for w in todo))
    ctx.count("weight_bytes_after", sum(rb.out.constant_data[p.name].nbytes for ps in params.values() for p in ps))
    return rb.finish()
