"""ONNX converters for kiln's matmul, norm, attention, rotary and quantized-linear ops.

Standard target (opset >= 17): linear -> MatMul(x, Transpose(W)) (+ Add bias, activation);
layer_norm -> LayerNormalization; rms_norm -> fp32 arithmetic (ReduceMean of x^2, Sqrt,
Reciprocal); attention -> MatMul/Softmax/MatMul with the mask applied by Where (boolean) or Add
(additive), kv heads repeated for GQA; rotary -> Slice/Concat arithmetic; linear_w8 ->
DequantizeLinear (per output channel; asymmetric: explicit (q - zero) * scale) + MatMul; linear_w4 -> unpack nibbles (BitwiseAnd,
BitShift), scale per group, MatMul; linear_w8a8 -> per-token Round/Clip quantization and an f32
MatMul over the integer values (exact below 2^24); linear_fp8 -> Cast through FLOAT8E4M3FN
(opset >= 19).

onnxruntime target (`ORT_CONVERTERS`, com.microsoft contrib ops, each validated against the
standard form in tests): add_rms_norm -> SkipSimplifiedLayerNormalization, add_layer_norm ->
SkipLayerNormalization, rotary -> RotaryEmbedding where cos/sin are cat(f, f) halves of a
position table (HF's form), attention whose mask is proven exactly causal (or causal=true) ->
MultiHeadAttention(unidirectional=1), linear_w4 -> MatMulNBits. Anything else falls back to
the standard converter.
"""

from __future__ import annotations

import math
from typing import Any

from ...ir.dtypes import DType, b8, f32
from ...ir.graph import Node, Value
from ...ir.ops import get_op
from .builder import MS_DOMAIN, OnnxBuilder, onnx_dtype
from .ops import Converter, converts, dtype_of, gelu, out_dtype, reduce

ORT_CONVERTERS: dict[Any, Converter] = {}


def ort_converts(*names: str):  # noqa: ANN201
    def wrap(fn: Converter) -> Converter:
        for n in names:
            ORT_CONVERTERS[get_op(n)] = fn
        return fn

    return wrap


# --- matmuls -------------------------------------------------------------------------------------


def activation(b: OnnxBuilder, y: str, act: str, dt: DType) -> str:
    if act == "none":
        return y
    if act == "relu":
        return b.op("Relu", y)
    if act == "silu":
        return b.op("Mul", y, b.op("Sigmoid", y))
    return gelu(b, y, dt, "tanh" if act == "gelu_tanh" else "none")


def matmul_t(b: OnnxBuilder, x: str, w: str) -> str:
    """x @ w.T for a 2-dim w [N, K]."""
    return b.op("MatMul", x, b.op("Transpose", w, perm=[1, 0]))


@converts("matmul")
def _matmul(b: OnnxBuilder, node: Node, ins: list) -> list:
    return [b.op("MatMul", ins[0], ins[1])]


def _epilogue(b: OnnxBuilder, node: Node, y: str, bias: str | None, residual: str | None) -> str:
    if bias is not None:
        y = b.op("Add", y, bias)
    y = activation(b, y, node.attrs["activation"], out_dtype(node))
    return y if residual is None else b.op("Add", y, residual)


@converts("linear")
def _linear(b: OnnxBuilder, node: Node, ins: list) -> list:
    return [_epilogue(b, node, matmul_t(b, ins[0], ins[1]), ins[2] if len(ins) > 2 else None, None)]


@converts("linear_add")
def _linear_add(b: OnnxBuilder, node: Node, ins: list) -> list:
    return [_epilogue(b, node, matmul_t(b, ins[0], ins[1]), ins[3] if len(ins) > 3 else None, ins[2])]


@converts("addmm")
def _addmm(b: OnnxBuilder, node: Node, ins: list) -> list:
    dt = out_dtype(node)
    beta, alpha = node.attrs["beta"], node.attrs["alpha"]
    prod = b.op("MatMul", ins[1], ins[2])
    if alpha != 1:
        prod = b.op("Mul", prod, b.const(alpha, dt))
    bias = ins[0] if beta == 1 else b.op("Mul", ins[0], b.const(beta, dt))
    return [b.op("Add", bias, prod)]


# --- norms ----------------------------------------------------------------------------------------


@converts("layer_norm")
def _layer_norm(b: OnnxBuilder, node: Node, ins: list) -> list:
    n = len(node.attrs["shape"])
    return [b.op("LayerNormalization", ins[0], ins[1], ins[2], axis=-n, epsilon=node.attrs["eps"])]


def rms_norm(b: OnnxBuilder, x: str, w: str, x_dt: DType, w_dt: DType, out: DType, eps: float) -> str:
    """w * (x32 / sqrt(mean(x32^2, -1) + eps)).to(x's dtype), in the promoted dtype (kiln's reference)."""
    xf = b.cast(x, x_dt, f32)
    ms = reduce(b, "ReduceMean", b.op("Mul", xf, xf), [-1], True)
    inv = b.op("Reciprocal", b.op("Sqrt", b.op("Add", ms, b.const(eps, f32))))
    y = b.cast(b.cast(b.op("Mul", xf, inv), f32, x_dt), x_dt, out)
    return b.op("Mul", b.cast(w, w_dt, out), y)


@converts("rms_norm")
def _rms_norm(b: OnnxBuilder, node: Node, ins: list) -> list:
    return [rms_norm(b, ins[0], ins[1], dtype_of(node, 0), dtype_of(node, 1), out_dtype(node), node.attrs["eps"])]


@converts("add_rms_norm")
def _add_rms_norm(b: OnnxBuilder, node: Node, ins: list) -> list:
    s = b.op("Add", ins[0], ins[1])
    return [s, rms_norm(b, s, ins[2], dtype_of(node, 0), dtype_of(node, 2), out_dtype(node, 1), node.attrs["eps"])]


@converts("add_layer_norm")
def _add_layer_norm(b: OnnxBuilder, node: Node, ins: list) -> list:
    s = b.op("Add", ins[0], ins[1])
    n = len(node.attrs["shape"])
    return [s, b.op("LayerNormalization", s, ins[2], ins[3], axis=-n, epsilon=node.attrs["eps"])]


@ort_converts("add_rms_norm")
def _ort_add_rms_norm(b: OnnxBuilder, node: Node, ins: list) -> list:
    if not (dtype_of(node, 0) is dtype_of(node, 2) is out_dtype(node, 1) is f32):
        return _add_rms_norm(b, node, ins)  # the contrib op normalises in the input dtype
    y, s = b.fresh("ssln"), b.fresh("ssln_sum")
    b.op_into("SkipSimplifiedLayerNormalization", [ins[0], ins[1], ins[2]], [y, "", "", s], domain=MS_DOMAIN,
              epsilon=node.attrs["eps"])
    return [s, y]


@ort_converts("add_layer_norm")
def _ort_add_layer_norm(b: OnnxBuilder, node: Node, ins: list) -> list:
    if len(node.attrs["shape"]) != 1:
        return _add_layer_norm(b, node, ins)
    y, s = b.fresh("sln"), b.fresh("sln_sum")
    b.op_into("SkipLayerNormalization", [ins[0], ins[1], ins[2], ins[3]], [y, "", "", s], domain=MS_DOMAIN,
              epsilon=node.attrs["eps"])
    return [s, y]


# --- rotary -------------------------------------------------------------------------------------


def rotate_half(b: OnnxBuilder, x: str, d: int) -> str:
    h = d // 2
    lo = b.op("Slice", x, b.ints([0]), b.ints([h]), b.ints([-1]))
    hi = b.op("Slice", x, b.ints([h]), b.ints([d]), b.ints([-1]))
    return b.op("Concat", b.op("Neg", hi), lo, axis=-1)


@converts("rotary")
def _rotary(b: OnnxBuilder, node: Node, ins: list) -> list:
    d = node.inputs[0].type.shape[-1]
    return [b.op("Add", b.op("Mul", ins[0], ins[1]), b.op("Mul", rotate_half(b, ins[0], d), ins[2]))]


def _is_doubled_table(v: Value) -> bool:
    """Whether `v` is f(cat(a, a, dim=-1)) through unsqueeze/cast/cos/sin/mul-by-scalar: its two
    halves along the last dim are equal, which RotaryEmbedding's half-size caches assume."""
    seen = 0
    while v.kind == "node" and seen < 8:
        n = v.node
        seen += 1
        if n.op.name == "cat" and len(n.inputs) == 2 and n.inputs[0] is n.inputs[1] and n.attrs["dim"] % v.type.rank == v.type.rank - 1:
            return True
        if n.op.name in ("unsqueeze", "cast", "cos", "sin", "clone") or (n.op.name == "mul" and n.attrs["rhs"] is not None):
            if n.op.name == "unsqueeze" and n.attrs["dim"] % (v.type.rank) == v.type.rank - 1:
                return False
            v = n.inputs[0]
            continue
        return False
    return False


@ort_converts("rotary")
def _ort_rotary(b: OnnxBuilder, node: Node, ins: list) -> list:
    x, cos, sin = (v.type for v in node.inputs)
    fits = (
        x.rank == 4 and x.dtype is f32 and cos.rank == 4 and sin.rank == 4
        and all(cos.shape[i] == 1 and sin.shape[i] == 1 for i in (0, 1))
        and _is_doubled_table(node.inputs[1]) and _is_doubled_table(node.inputs[2])
    )
    if not fits:
        return _rotary(b, node, ins)
    d = x.shape[-1]
    seq = x.shape[2]

    def cache(name: str) -> str:  # [1, 1, S, D] -> [S, D/2]
        flat = b.op("Reshape", name, b.shape([seq, d]))
        return b.op("Slice", flat, b.ints([0]), b.ints([d // 2]), b.ints([1]))

    y = b.fresh("rotary")
    b.op_into("RotaryEmbedding", [ins[0], b.ints([0]), cache(ins[1]), cache(ins[2])], [y], domain=MS_DOMAIN, interleaved=0)
    return [y]


# --- attention ----------------------------------------------------------------------------------


def repeat_kv(b: OnnxBuilder, x: str, t: Any, heads: Any) -> str:
    """[B, Hkv, S, D] -> [B, heads, S, D], each kv head repeated heads/Hkv times (GQA)."""
    bb, hkv, s, d = t.shape
    rep = heads // hkv
    e = b.op("Expand", b.op("Unsqueeze", x, b.ints([2])), b.shape([bb, hkv, rep, s, d]))
    return b.op("Reshape", e, b.shape([bb, heads, s, d]))


def _kv(b: OnnxBuilder, node: Node, ins: list) -> tuple[str, str]:
    q, k, v = (x.type for x in node.inputs[:3])
    kn, vn = ins[1], ins[2]
    if node.attrs["gqa"] and q.rank == 4 and k.shape[1] != q.shape[1]:
        kn, vn = repeat_kv(b, kn, k, q.shape[1]), repeat_kv(b, vn, v, q.shape[1])
    return kn, vn


def causal_mask(b: OnnxBuilder, lq: Any, lk: Any) -> str:
    """bool[Lq, Lk], true on and below the diagonal (top-left aligned, like SDPA's is_causal)."""
    rows = b.op("Unsqueeze", b.op("Range", b.dim_scalar(0), b.dim_scalar(lq), b.dim_scalar(1)), b.ints([1]))
    cols = b.op("Unsqueeze", b.op("Range", b.dim_scalar(0), b.dim_scalar(lk), b.dim_scalar(1)), b.ints([0]))
    return b.op("LessOrEqual", cols, rows)


@converts("attention")
def _attention(b: OnnxBuilder, node: Node, ins: list) -> list:
    q, k = node.inputs[0].type, node.inputs[1].type
    dt = out_dtype(node)
    scale = node.attrs["scale"] if node.attrs["scale"] is not None else 1 / math.sqrt(q.shape[-1])
    kn, vn = _kv(b, node, ins)
    perm = list(range(k.rank - 2)) + [k.rank - 1, k.rank - 2]
    scores = b.op("Mul", b.op("MatMul", ins[0], b.op("Transpose", kn, perm=perm)), b.const(scale, dt))
    neg = b.const(-math.inf, dt)
    if node.attrs["causal"]:
        scores = b.op("Where", causal_mask(b, q.shape[-2], k.shape[-2]), scores, neg)
    if len(ins) > 3:
        if dtype_of(node, 3) is b8:
            scores = b.op("Where", ins[3], scores, neg)
        else:
            scores = b.op("Add", scores, b.cast(ins[3], dtype_of(node, 3), dt))
    return [b.op("MatMul", b.op("Softmax", scores, axis=-1), vn)]


@ort_converts("attention")
def _ort_attention(b: OnnxBuilder, node: Node, ins: list) -> list:
    q, k, v = (x.type for x in node.inputs[:3])
    causal = node.attrs["causal"] and len(ins) == 3
    if len(ins) == 4 and not node.attrs["causal"]:
        causal = node.inputs[3] in b.causal_masks
    if not (causal and q.rank == 4 and q.dtype is f32 and isinstance(q.shape[1], int) and q.shape[-1] == v.shape[-1]):
        return _attention(b, node, ins)
    heads, d = q.shape[1], q.shape[-1]
    kn, vn = _kv(b, node, ins)
    bsz, lq, lk = q.shape[0], q.shape[2], k.shape[2]

    def bsh(name: str, seq: Any) -> str:  # [B, H, L, D] -> [B, L, H*D]
        return b.op("Reshape", b.op("Transpose", name, perm=[0, 2, 1, 3]), b.shape([bsz, seq, heads * d]))

    y = b.fresh("mha")
    scale = node.attrs["scale"] if node.attrs["scale"] is not None else 1 / math.sqrt(d)
    b.op_into("MultiHeadAttention", [bsh(ins[0], lq), bsh(kn, lk), bsh(vn, lk)], [y], domain=MS_DOMAIN,
              num_heads=heads, unidirectional=1, scale=float(scale))
    back = b.op("Reshape", y, b.shape([bsz, lq, heads, d]))
    return [b.op("Transpose", back, perm=[0, 2, 1, 3])]


# --- quantized linears ----------------------------------------------------------------------------


def _split_quant(node: Node, ins: list, asym: bool) -> tuple[str | None, str | None]:
    """(zeros, bias) ONNX names after x, weight, scale."""
    rest = ins[3:]
    zeros = rest.pop(0) if asym else None
    return zeros, (rest[0] if rest else None)


@converts("linear_w8")
def _linear_w8(b: OnnxBuilder, node: Node, ins: list) -> list:
    dt = out_dtype(node)
    asym = node.attrs["asymmetric"]
    zeros, bias = _split_quant(node, ins, asym)
    scale = b.cast(ins[2], dtype_of(node, 2), f32)
    if zeros is None:
        w = b.op("DequantizeLinear", ins[1], scale, axis=0)
    else:  # explicit arithmetic: onnxruntime 1.31's extended-level fusion of DequantizeLinear with a
        # per-axis u8 zero point followed by Transpose/MatMul computes wrong results (measured)
        col = b.ints([-1])
        shifted = b.op("Sub", b.cast(ins[1], _u8(), f32), b.op("Unsqueeze", b.cast(zeros, _u8(), f32), col))
        w = b.op("Mul", shifted, b.op("Unsqueeze", scale, col))
    return [_epilogue(b, node, matmul_t(b, ins[0], b.cast(w, f32, dt)), bias, None)]


def unpack_int4(b: OnnxBuilder, packed: str, n: Any, k: int) -> str:
    """u8[N, K/2] -> u8[N, K] codes 0..15 (column 2j low nibble, 2j+1 high)."""
    lo = b.op("BitwiseAnd", packed, b.const(15, _u8()))
    hi = b.op("BitShift", packed, b.const(4, _u8()), direction="RIGHT")
    both = b.op("Concat", b.op("Unsqueeze", lo, b.ints([-1])), b.op("Unsqueeze", hi, b.ints([-1])), axis=-1)
    return b.op("Reshape", both, b.shape([n, k]))


def _u8() -> DType:
    from ...ir.dtypes import u8

    return u8


@converts("linear_w4")
def _linear_w4(b: OnnxBuilder, node: Node, ins: list) -> list:
    dt = out_dtype(node)
    g = node.attrs["group_size"]
    n, half = node.inputs[1].type.shape
    k = 2 * half
    zeros, bias = _split_quant(node, ins, node.attrs["asymmetric"])
    codes = b.cast(unpack_int4(b, ins[1], n, k), _u8(), dt)
    grouped = b.op("Reshape", codes, b.shape([n, k // g, g]))
    zero = b.op("Unsqueeze", b.cast(zeros, _u8(), dt), b.ints([-1])) if zeros else b.const(8.0, dt)
    scales = b.op("Unsqueeze", ins[2], b.ints([-1]))
    w = b.op("Reshape", b.op("Mul", b.op("Sub", grouped, zero), scales), b.shape([n, k]))
    return [_epilogue(b, node, matmul_t(b, ins[0], w), bias, None)]


@ort_converts("linear_w4")
def _ort_linear_w4(b: OnnxBuilder, node: Node, ins: list) -> list:
    g = node.attrs["group_size"]
    n, half = node.inputs[1].type.shape
    k = 2 * half
    if out_dtype(node) is not f32 or g < 16 or g & (g - 1) or not isinstance(n, int):
        return _linear_w4(b, node, ins)
    zeros, bias = _split_quant(node, ins, node.attrs["asymmetric"])
    blocks = k // g
    packed_b = b.op("Reshape", ins[1], b.ints([n, blocks, g // 2]))
    inputs = [ins[0], packed_b, b.op("Reshape", ins[2], b.ints([n * blocks]))]
    if zeros:  # u8[N, G] codes -> nibbles, two blocks per byte, each row padded to whole bytes
        z = zeros
        if blocks % 2:
            z = b.op("Concat", z, b.op("ConstantOfShape", b.ints([n, 1]), value=_u8_zero()), axis=1)
        pairs = b.op("Reshape", z, b.ints([n, (blocks + 1) // 2, 2]))
        lo = b.op("Squeeze", b.op("Slice", pairs, b.ints([0]), b.ints([1]), b.ints([2])), b.ints([2]))
        hi = b.op("Squeeze", b.op("Slice", pairs, b.ints([1]), b.ints([2]), b.ints([2])), b.ints([2]))
        packed_z = b.op("BitwiseOr", lo, b.op("BitShift", hi, b.const(4, _u8()), direction="LEFT"))
        inputs.append(b.op("Reshape", packed_z, b.ints([-1])))
    y = b.fresh("matmulnbits")
    b.op_into("MatMulNBits", inputs, [y], domain=MS_DOMAIN, K=k, N=n, bits=4, block_size=g)
    return [_epilogue(b, node, y, bias, None)]


def _u8_zero() -> Any:
    from onnx import TensorProto, helper

    return helper.make_tensor("value", TensorProto.UINT8, [1], [0])


def _quantize_rows(b: OnnxBuilder, x: str, qmax: float, act_scale: float) -> tuple[str, str]:
    """(x_q as f32 integer values, s f32) with s per row (dynamic) or the calibrated act_scale."""
    if act_scale > 0:
        s = b.const(act_scale, f32)
        return b.op("Clip", b.op("Round", b.op("Div", x, s)), b.const(-qmax, f32), b.const(qmax, f32)), s
    s = b.op("Div", reduce(b, "ReduceMax", b.op("Abs", x), [-1], True), b.const(qmax, f32))
    safe = b.op("Where", b.op("Equal", s, b.const(0.0, f32)), b.const(1.0, f32), s)
    return b.op("Clip", b.op("Round", b.op("Div", x, safe)), b.const(-qmax, f32), b.const(qmax, f32)), s


@converts("linear_w8a8")
def _linear_w8a8(b: OnnxBuilder, node: Node, ins: list) -> list:
    dt = out_dtype(node)
    xf = b.cast(ins[0], dtype_of(node, 0), f32)
    xq, s = _quantize_rows(b, xf, 127.0, float(node.attrs["act_scale"]))
    acc = matmul_t(b, xq, b.cast(ins[1], dtype_of(node, 1), f32))
    y = b.op("Mul", b.op("Mul", acc, s), b.cast(ins[2], dtype_of(node, 2), f32))
    return [_epilogue(b, node, b.cast(y, f32, dt), ins[3] if len(ins) > 3 else None, None)]


@converts("linear_fp8")
def _linear_fp8(b: OnnxBuilder, node: Node, ins: list) -> list:
    from ...errors import ExportError

    if b.opset < 19:
        raise ExportError("linear_fp8", b.current, "float8 casts need opset >= 19; export with opset=19 or later")
    dt = out_dtype(node)
    fp8 = onnx_dtype(node.inputs[1].type.dtype)
    xf = b.cast(ins[0], dtype_of(node, 0), f32)
    s = b.op("Div", reduce(b, "ReduceMax", b.op("Abs", xf), [-1], True), b.const(448.0, f32))
    safe = b.op("Where", b.op("Equal", s, b.const(0.0, f32)), b.const(1.0, f32), s)
    clipped = b.op("Clip", b.op("Div", xf, safe), b.const(-448.0, f32), b.const(448.0, f32))
    xq = b.op("Cast", b.op("Cast", clipped, to=fp8), to=onnx_dtype(f32))
    w = b.op("Cast", ins[1], to=onnx_dtype(f32))
    y = b.op("Mul", b.op("Mul", matmul_t(b, xq, w), s), b.cast(ins[2], dtype_of(node, 2), f32))
    return [_epilogue(b, node, b.cast(y, f32, dt), ins[3] if len(ins) > 3 else None, None)]
