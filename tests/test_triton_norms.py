"""Triton row kernels for norms and softmax vs the ops' reference implementations.

On CPU they run in Triton's interpreter (conftest sets TRITON_INTERPRET=1): small shapes only.
"""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

pytest.importorskip("triton")

import kiln  # noqa: E402
from kiln import ir  # noqa: E402
from kiln.backends.triton.norms import row_kernel  # noqa: E402
from kiln.ir.dtypes import from_torch  # noqa: E402

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
TOL = {torch.float32: 1e-5, torch.float16: 1e-2, torch.bfloat16: 1e-2}
SETTINGS = settings(max_examples=25, deadline=None, derandomize=True)


def _rand(shape: tuple, dtype: torch.dtype, seed: int) -> torch.Tensor:
    return (torch.randn(shape, generator=torch.Generator().manual_seed(seed)) + 0.1).to(dtype).to(DEVICE)


def _err(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.cpu().double(), b.cpu().double()
    return ((a - b).norm() / b.norm().clamp_min(1e-12)).item()


@SETTINGS
@given(
    op=st.sampled_from(["rms_norm", "add_rms_norm", "layer_norm", "add_layer_norm", "softmax", "log_softmax"]),
    dtype=st.sampled_from([torch.float32, torch.float16, torch.bfloat16]),
    rows=st.sampled_from([(1,), (3,), (2, 3)]),
    d=st.sampled_from([1, 7, 16, 40]),
)
def test_row_kernels_match_the_reference(op: str, dtype: torch.dtype, rows: tuple, d: int) -> None:
    g = ir.Graph()
    kd = from_torch(dtype)
    shape = rows + (d,)
    x = g.add_input("x", ir.TensorType(kd, shape))
    vals = [_rand(shape, dtype, 1)]
    ins = [x]
    if op.startswith("add_"):
        ins.append(g.add_input("r", ir.TensorType(kd, shape)))
        vals.append(_rand(shape, dtype, 2))
    for k, name in enumerate(["w", "b"][: 2 if "layer" in op else 1 if "rms" in op else 0]):
        ins.append(g.add_input(name, ir.TensorType(kd, (d,))))
        vals.append(_rand((d,), dtype, 3 + k))
    attrs = {"dim": len(shape) - 1} if "softmax" in op else {"eps": 1e-5}
    if "layer" in op:
        attrs["shape"] = (d,)
    node = g.add_node(op, ins, attrs)
    g.outputs = list(node.outputs)
    launcher = row_kernel(node)
    assert launcher is not None
    got = launcher(*vals)
    got = got if isinstance(got, tuple) else (got,)
    ref = ir.run_graph(g, [v.cpu() for v in vals])
    for a, b in zip(got, ref, strict=True):
        assert a.shape == b.shape and a.dtype == b.dtype
        assert _err(a, b) <= TOL[dtype], (op, _err(a, b))


def test_non_last_dim_softmax_and_multi_dim_layer_norm_stay_in_pytorch() -> None:
    g = ir.Graph()
    x = g.add_input("x", ir.TensorType(ir.by_name("f32"), (2, 3, 4)))
    assert row_kernel(g.add_node("softmax", [x], {"dim": 1})) is None
    w = g.add_input("w", ir.TensorType(ir.by_name("f32"), (3, 4)))
    assert row_kernel(g.add_node("layer_norm", [x, w, w], {"shape": (3, 4)})) is None


def test_a_llama_block_runs_its_norms_as_triton_kernels() -> None:
    from transformers import LlamaForCausalLM

    from conftest import tiny_config

    torch.manual_seed(0)
    model = LlamaForCausalLM(tiny_config("llama")).eval().to(DEVICE)
    x = torch.randint(1, 500, (2, 8), generator=torch.Generator().manual_seed(5)).to(DEVICE)
    fn = kiln.compile(model, {"input_ids": x}, options=kiln.CompileOptions(backend="triton"))
    # a norm before a linear is that linear's gemv prologue (passes/fuse_prologues.py): in its group
    nodes = fn.plan.graph.nodes
    norm_at = [i for i, n in enumerate(nodes) if (n.subgraph.nodes[0] if n.op.name == "fusion_group" else n).op.name
               in ("rms_norm", "add_rms_norm")]
    assert len(norm_at) == 5 and set(norm_at) <= fn.plan.launched  # every norm runs in a Triton launcher
    with torch.no_grad():
        ref = model(input_ids=x).logits
    assert _err(fn(input_ids=x).logits, ref) <= 1e-5


def test_a_transformer_block_compiles_to_seven_launches() -> None:
    """TinyGPT's first block: its 2 norms (the first reads the broadcasting embedding sum, so it is
    a plain layer_norm; the second carries the residual add), 4 matmuls (one with its GELU
    epilogue), 1 attention; views (reshape/permute/split) launch nothing."""
    from kiln.models import get_model

    model = get_model("tiny-gpt").to(DEVICE)
    x = torch.randint(0, 512, (2, 16), generator=torch.Generator().manual_seed(2)).to(DEVICE)
    fn = kiln.compile(model, (x,), options=kiln.CompileOptions(backend="triton"))
    per_block: dict[str, list[str]] = {}
    for n in fn.graph.nodes:
        module = n.source.module if n.source is not None else ""
        if module.startswith("blocks.0") and n.op.category != "view":
            per_block.setdefault("launches", []).append(n.op.name)
    launches = sorted(per_block["launches"])
    assert launches == sorted(["layer_norm", "add_layer_norm", "linear", "linear", "linear", "linear", "attention"]), launches
    # Every launch is a Triton kernel: 5 norms (1 plain, 3 with the residual add, the final one fused
    # too), 9 linears (4 per block + lm_head), 2 attentions; views launch nothing.
    assert fn.plan.kernels == 16
    assert _err(fn(x), model(x)) <= 1e-5


# --- rotary -------------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("heads, seq, dim", [(4, 3, 16), (3, 5, 64), (2, 40, 32)])
def test_rotary_kernel_matches_reference_on_strided_views(dtype: torch.dtype, heads: int, seq: int, dim: int) -> None:
    """q is a permuted view of a fused projection (as in every HF decoder); cos/sin broadcast over heads."""
    from kiln.backends.triton.rotary import RotaryLauncher
    from kiln.ir import REGISTRY

    torch.manual_seed(heads * seq)
    fused = torch.randn(1, seq, heads * dim + 8, dtype=dtype)
    x = fused[..., :heads * dim].reshape(1, seq, heads, dim).permute(0, 2, 1, 3)
    ang = torch.randn(1, 1, seq, dim // 2)
    cos = torch.cat([ang.cos(), ang.cos()], -1).to(dtype)
    sin = torch.cat([ang.sin(), ang.sin()], -1).to(dtype)
    got = RotaryLauncher()(x, cos, sin)
    want = REGISTRY["rotary"].impl(x.double(), cos.double(), sin.double())
    assert got.shape == x.shape and got.is_contiguous()
    tol = 1e-5 if dtype == torch.float32 else 1e-2
    assert ((got.double() - want).norm() / want.norm()).item() < tol


def test_rotary_is_one_launched_node_per_tensor_in_a_llama() -> None:
    """The pattern pass turns HF's rotate_half arithmetic into `rotary`, and Triton runs it."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    cfg = LlamaConfig(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                      intermediate_size=128, vocab_size=128, max_position_embeddings=64, use_cache=False)
    model = LlamaForCausalLM(cfg).eval()
    ids = torch.randint(0, 128, (1, 8))
    fn = kiln.compile(model, options=kiln.CompileOptions(backend="triton", cuda_graphs=False))
    got = fn(ids).logits
    with torch.no_grad():
        want = model(ids).logits
    assert ((got - want).norm() / want.norm()).item() < 1e-5
    nodes = fn.plan.graph.nodes
    names = [n.op.name for n in nodes]
    assert names.count("rotary") == 4 and "roll" not in names and "neg" not in names
    launched = {nodes[i].op.name for i in fn.plan.launched}
    assert "rotary" in launched
