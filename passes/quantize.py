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
from dataclasses import dataclass, field
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
from .rewrite import Rebuilder
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
        cands = {c for name in names if name for c in (name, *name.split("."))}
        return any(fnmatch.fnmatchcase(c, p) for c in cands for p in self.skip)


def _written(g: Graph) -> set[Value]:
    return {v for n in g.nodes if n.op.effect is Effect.WRITE for v in (n.inputs[:1] if n.op.name == "copy_to" else n.inputs)}


def _candidates(g: Graph, scheme: QuantScheme, ctx: PassContext) -> dict[Value, list[Node]]:
    """Weight constants to quantize -> the linears reading them (every reader of each is one).

    A weight qualifies when it is a float 2-dim constant with data, no node writes it, it is
    not a graph output, and all its readers are linears reading it as their weight, none of
    them on the skip list (a weight also read elsewhere, e.g. a tied embedding, would have to
    stay in full precision anyway, so quantizing it would only add bytes).
    """
    written = _written(g)
    readers: dict[Value, list[tuple[Node, int]]] = {}
    for n in g.nodes:
        for k, v in enumerate(n.inputs):
            if v.kind == "const":
                readers.setdefault(v, []).append((n, k))
    outputs = set(g.outputs)
    out: dict[Value, list[Node]] = {}
    for n in g.nodes:
        if n.op.name != "linear" or n.inputs[1].kind != "const":
            continue
        w = n.inputs[1]
        if w in out:
            continue
        module = n.source.module if n.source is not None else ""
        if w in written or g.constant_data.get(w.name) is None or not w.type.dtype.is_float or w.type.dtype.bits < 16:
            ctx.count("linears_kept_not_constant_float")
        elif scheme.skips(module, w.name):
            ctx.count("linears_skipped")
        elif w in outputs or any(m.op.name != "linear" or k != 1 or scheme.skips(m.source.module if m.source else "") for m, k in readers[w]):
            ctx.count("linears_kept_shared_weight")
        elif scheme.weights == "int4" and w.type.shape[1] % scheme.group_size:
            ctx.count("linears_kept_group_mismatch")
        else:
            out[w] = [m for m, _ in readers[w]]
    return out


def _fresh(g: Graph, name: str) -> str:
    k, cand = 0, name
    while cand in g.constants:
        k += 1
        cand = f"{name}{k}"
    return cand


def _quantized_params(rb: Rebuilder, w: Value, data: torch.Tensor, scheme: QuantScheme) -> list[Value]:
    if scheme.weights == "fp8":
        parts = quantize_fp8_per_channel(data)
    elif scheme.symmetric:
        parts = quantize_int8_per_channel(data) if scheme.weights == "int8" else quantize_int4_grouped(data, scheme.group_size)
    else:
        parts = quantize_int8_minmax(data) if scheme.weights == "int8" else quantize_int4_minmax(data, scheme.group_size)
    return [rb.out.add_constant(_fresh(rb.out, f"{w.name}.{suffix}"), t) for suffix, t in zip(("q", "scale", "zero"), parts)]


def _op_and_attrs(scheme: QuantScheme) -> tuple[str, dict]:
    if scheme.weights == "fp8":
        return "linear_fp8", {}
    if scheme.activations == "int8":
        return "linear_w8a8", {}
    extra: dict = {} if scheme.weights == "int8" else {"group_size": scheme.group_size}
    if not scheme.symmetric:
        extra["asymmetric"] = True
    return ("linear_w8" if scheme.weights == "int8" else "linear_w4"), extra


def _calibrate(g: Graph, todo: dict[Value, list[Node]], scheme: QuantScheme, ctx: PassContext) -> tuple[Graph, dict[Value, list[Node]], dict[str, float]]:
    """Smoothing and static activation scales from the calibration examples: the (possibly
    smoothed) graph, its quantization candidates and `act_scale` per weight name (static only)."""
    feed = ctx.calibration if ctx.calibration is not None else graph_feed(g, scheme.calibration)
    stats = observe_activations(g, feed, scheme.percentile)
    ctx.count("calibration_examples", len(feed.batches))
    if scheme.smoothing is not None:
        smoothed = smooth_linears(g, todo, stats, scheme.smoothing, ctx)
        if smoothed is not g:
            g, todo = smoothed, _candidates(smoothed, scheme, PassContext(ctx.options))
            if scheme.static:  # the ranges of x / s: observe the smoothed graph
                stats = observe_activations(g, feed, scheme.percentile)
    if not scheme.static:
        return g, todo, {}
    return g, todo, {w.name: _static_scale(stats.get(w.name), ns[0], scheme, ctx) for w, ns in todo.items()}


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
    linears read, and whose module / weight name is not on the scheme's skip list becomes
    `linear_w8` (int8 per output channel) or `linear_w4` (int4 groups, two per byte) with the
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
    params = {w: _quantized_params(rb, w, g.constant_data[w.name], scheme) for w in todo}
    quantized = {id(n): w for w, ns in todo.items() for n in ns}
    op, extra = _op_and_attrs(scheme)
    for n in g.nodes:
        w = quantized.get(id(n))
        if w is None:
            rb.copy(n)
            continue
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
