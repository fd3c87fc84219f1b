"""Tensor parallelism: the sharding pass on one process, and per-rank plans on gloo in 2 and 4
processes giving the single-process outputs.

Spawning is the expensive part (each process imports torch and transformers), so one group of
processes per world size runs every multi-process check (`tp_runs`), and every wait has a
deadline: a rank that fails reports its traceback, one that hangs is killed.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import time
import traceback
from typing import Callable

import pytest
import torch

import kiln
from kiln.errors import TensorParallelError
from kiln.ir import Graph, TensorType, run_graph
from kiln.ir.dtypes import f32
from kiln.passes import PIPELINE, PassContext, run_pipeline
from kiln.passes.tensor_parallel import tensor_parallel_graph

from conftest import collect_ranks, rel_err, stop_ranks

KINDS = ("llama", "qwen2")
RANK_TIMEOUT_S = 30.0  # collectives' timeout inside the ranks
WAIT_S = 120.0  # the whole group's deadline (spawn + imports + two compiles per rank on 2 cores)


def tiny_lm(kind: str) -> torch.nn.Module:
    from transformers import GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM, Qwen2Config, Qwen2ForCausalLM

    torch.manual_seed(0)  # every process builds the same weights
    if kind == "gpt2":  # fused c_attn + split, Conv1D weights, learned positions, lm_head tied to wte
        config = GPT2Config(n_embd=64, n_head=4, n_layer=2, vocab_size=128, n_positions=64, use_cache=False,
                            bos_token_id=0, eos_token_id=0)
        return GPT2LMHeadModel(config).eval()
    shape = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                 num_key_value_heads=2, vocab_size=128, use_cache=False)
    if kind == "llama_3_heads":  # does not split over 2 ranks
        shape.update(hidden_size=48, num_attention_heads=3, num_key_value_heads=3)
    if kind == "qwen2":  # q/k/v with biases
        return Qwen2ForCausalLM(Qwen2Config(**shape)).eval()
    return LlamaForCausalLM(LlamaConfig(**shape)).eval()


def graph_after_fuse_patterns(model: torch.nn.Module) -> Graph:
    from kiln.frontend.export import trace_export

    traced = trace_export(model, (torch.randint(0, 128, (2, 7)),), {})
    upto = [p for p in PIPELINE[: [p.name for p in PIPELINE].index("fuse_patterns") + 1]]
    g, _ = run_pipeline(traced.graph, upto, kiln.CompileOptions())
    return g


def weight(g: Graph, name: str) -> torch.Tensor:
    return g.constant_data[name]


# --- the pass, in one process --------------------------------------------------------------


@pytest.fixture(scope="module")
def llama_graph() -> Graph:
    return graph_after_fuse_patterns(tiny_lm("llama"))


def test_shard_splits_heads_mlp_and_vocab_at_tp2(llama_graph: Graph) -> None:
    ctx = PassContext(kiln.CompileOptions())
    g = tensor_parallel_graph(llama_graph, 1, 2, ctx)
    counts = g.op_counts()
    assert counts["all_reduce"] == 4 and counts["all_gather"] == 1  # 2 per layer; the logits once
    layer = "model.layers.0."
    full_q = weight(llama_graph, layer + "self_attn.q_proj.weight")
    assert torch.equal(weight(g, layer + "self_attn.q_proj.weight"), full_q[32:])  # rank 1: heads 2, 3
    assert weight(g, layer + "self_attn.k_proj.weight").shape == (16, 64)  # 1 of 2 kv heads
    assert torch.equal(weight(g, layer + "self_attn.o_proj.weight"), weight(llama_graph, layer + "self_attn.o_proj.weight")[:, 32:])
    assert weight(g, layer + "mlp.gate_proj.weight").shape == (64, 64)
    assert weight(g, layer + "mlp.down_proj.weight").shape == (64, 64)
    assert weight(g, "lm_head.weight").shape == (64, 64)
    assert {tuple(n.attrs["shape"])[2:] for n in g.nodes if n.op.name == "reshape" and len(n.attrs["shape"]) == 4} == {(2, 16), (1, 16)}
    assert ctx.stats["all_reduce_bytes_per_token"] == 4 * 64 * 4  # 4 all_reduces of 64 fp32
    assert ctx.stats["all_gather_bytes_per_token"] == 128 * 4


@pytest.fixture(scope="module")
def gpt2_graph() -> Graph:
    return graph_after_fuse_patterns(tiny_lm("gpt2"))


def test_shard_splits_gpt2_fused_qkv_per_head_and_conv1d_weights(gpt2_graph: Graph) -> None:
    g = tensor_parallel_graph(gpt2_graph, 1, 2)
    counts = g.op_counts()
    assert counts["all_reduce"] == 4 and counts["all_gather"] == 1  # 2 per layer; the logits once
    assert [n.attrs["sizes"] for n in g.nodes if n.op.name == "split"] == [(32, 32, 32)] * 2
    layer = "transformer.h.0."
    full_qkv = weight(gpt2_graph, layer + "attn.c_attn.weight")  # Conv1D: [in, q | k | v]
    mine = torch.cat([full_qkv[:, 32:64], full_qkv[:, 96:128], full_qkv[:, 160:192]], dim=1)  # heads 2, 3 of each
    assert torch.equal(weight(g, layer + "attn.c_attn.weight"), mine)
    assert torch.equal(weight(g, layer + "attn.c_attn.bias"), weight(gpt2_graph, layer + "attn.c_attn.bias").view(3, 64)[:, 32:].reshape(-1))
    assert torch.equal(weight(g, layer + "attn.c_proj.weight"), weight(gpt2_graph, layer + "attn.c_proj.weight")[32:])  # [in, out]: rows
    assert weight(g, layer + "mlp.c_fc.weight").shape == (64, 128) and weight(g, layer + "mlp.c_proj.weight").shape == (128, 64)
    assert weight(g, "transformer.wpe.weight").shape == (64, 64)  # learned positions replicated


def test_shard_keeps_a_tied_embedding_whole_and_slices_a_copy_for_the_lm_head(gpt2_graph: Graph) -> None:
    g = tensor_parallel_graph(gpt2_graph, 1, 2)
    (token_lookup, _) = [n for n in g.nodes if n.op.name == "embedding"]
    assert token_lookup.inputs[0].name == "lm_head.weight" and token_lookup.inputs[0].type.shape == (128, 64)
    head = next(n for n in g.nodes if n.op.name == "all_gather").inputs[0].node
    assert torch.equal(weight(g, head.inputs[1].name), weight(gpt2_graph, "lm_head.weight")[64:])


def test_shard_gpt2_split_sizes_follow_the_rank_count(gpt2_graph: Graph) -> None:
    g = tensor_parallel_graph(gpt2_graph, 3, 4)
    assert [n.attrs["sizes"] for n in g.nodes if n.op.name == "split"] == [(16, 16, 16)] * 2
    full_qkv = weight(gpt2_graph, "transformer.h.1.attn.c_attn.weight")
    mine = torch.cat([full_qkv[:, 48:64], full_qkv[:, 112:128], full_qkv[:, 176:192]], dim=1)  # head 3 of q, k, v
    assert torch.equal(weight(g, "transformer.h.1.attn.c_attn.weight"), mine)


def test_shard_replicates_kv_heads_when_fewer_than_ranks(llama_graph: Graph) -> None:
    full_k = weight(llama_graph, "model.layers.1.self_attn.k_proj.weight")
    for rank in range(4):
        g = tensor_parallel_graph(llama_graph, rank, 4)
        kv_head = rank // 2  # query head `rank` belongs to kv group rank // 2
        assert torch.equal(weight(g, "model.layers.1.self_attn.k_proj.weight"), full_k[16 * kv_head: 16 * (kv_head + 1)])
        att = [n for n in g.nodes if n.op.name == "attention"]
        assert all(n.inputs[0].type.shape[1] == 1 and n.inputs[1].type.shape[1] == 1 and not n.attrs["gqa"] for n in att)


def test_shard_raises_naming_attention_when_heads_do_not_divide(llama_graph: Graph) -> None:
    with pytest.raises(TensorParallelError, match=r"attention \(model\.layers\.0\.self_attn\).*4 attention heads are not divisible by 3"):
        tensor_parallel_graph(llama_graph, 0, 3)


def test_pipeline_shards_before_fusion_and_keeps_collectives() -> None:
    from kiln.frontend.export import trace_export

    traced = trace_export(tiny_lm("llama"), (torch.randint(0, 128, (2, 7)),), {})
    options = kiln.CompileOptions(tensor_parallel=(0, 2))
    g, records = run_pipeline(traced.graph, PIPELINE, options)
    counts = g.op_counts()
    # survive DCE, CSE, fusion; each all-reduce fused with the residual add + RMSNorm reading it
    assert counts["all_reduce_add_rms_norm"] == 4 and "all_reduce" not in counts and counts["all_gather"] == 1
    weights = [tuple(n.inputs[1].type.shape) for n in g.nodes if n.op.name == "linear"]
    # per layer: fused sharded q/k/v (32 + 16 + 16 rows), o_proj columns, fused gate/up (64 + 64), down columns
    assert weights == [(64, 64), (64, 32), (128, 64), (64, 64)] * 2 + [(64, 64)]  # + the lm_head shard
    assert next(r for r in records if r.name == "shard_tensor_parallel").changed


def test_quantization_applies_to_the_rank_graph(llama_graph: Graph) -> None:
    from kiln.passes import quantize_weights

    options = kiln.CompileOptions(tensor_parallel=(1, 2), quantization="int8")
    rest = PIPELINE[[p.name for p in PIPELINE].index("shard_tensor_parallel"):]
    g, _ = run_pipeline(llama_graph, rest, options)
    quantized = [n for n in g.nodes if n.op.name == "linear_w8"]
    assert quantize_weights in rest and len(quantized) == 8  # fused qkv, o, gate/up, down per layer; lm_head skipped
    assert sorted({tuple(n.output.type.shape[-1:]) for n in quantized}) == [(64,), (128,)]
    assert g.op_counts()["all_reduce_add_rms_norm"] == 4


def test_collectives_of_one_rank_are_identities_and_refuse_without_a_group() -> None:
    g = Graph()
    x = g.add_input("x", TensorType(f32, (3, 5)))
    g.outputs = [g.call("all_reduce", x, group_size=1), g.call("all_gather", x, dim=1, group_size=1)]
    t = torch.randn(3, 5)
    assert all(torch.equal(o, t) for o in run_graph(g, [t]))
    wide = Graph()
    y = wide.add_input("x", TensorType(f32, (3, 5)))
    out = wide.call("all_gather", y, dim=0, group_size=2)
    assert out.type.shape == (6, 5)
    wide.outputs = [out]
    with pytest.raises(RuntimeError, match="needs an initialised process group"):
        run_graph(wide, [t])


def test_fused_all_reduce_norm_of_one_rank_equals_add_rms_norm_and_a_fast_path_may_take_it(monkeypatch: pytest.MonkeyPatch) -> None:
    from kiln.ir.opset import collective

    g = Graph()
    x, r = (g.add_input(n, TensorType(f32, (3, 8))) for n in ("x", "r"))
    w = g.add_input("w", TensorType(f32, (8,)))
    g.outputs = list(g.add_node("all_reduce_add_rms_norm", [x, r, w], {"group_size": 1, "eps": 1e-5}).outputs)
    ref = Graph()
    xr, rr = (ref.add_input(n, TensorType(f32, (3, 8))) for n in ("x", "r"))
    wr = ref.add_input("w", TensorType(f32, (8,)))
    ref.outputs = list(ref.add_node("add_rms_norm", [ref.call("all_reduce", xr, group_size=1), rr, wr], {"eps": 1e-5}).outputs)
    vals = [torch.randn(3, 8), torch.randn(3, 8), torch.rand(8) + 0.5]
    assert all(torch.equal(a, b) for a, b in zip(run_graph(g, vals), run_graph(ref, vals)))
    # a runtime's fused kernel: never asked by a group of one; in a group, asked first, and it may
    # decline (None: the reference runs) or answer
    seen: list = []
    monkeypatch.setattr(collective, "_FAST_AR_NORM", lambda *a: seen.append(a) or None)
    assert all(torch.equal(a, b) for a, b in zip(run_graph(g, vals), run_graph(ref, vals))) and not seen
    monkeypatch.setattr(collective, "_check_group", lambda op, n: True)
    monkeypatch.setattr(collective, "_FAST_ALL_REDUCE", lambda t: t.clone())  # stands in for a group's sum
    assert all(torch.equal(a, b) for a, b in zip(run_graph(g, vals), run_graph(ref, vals)))
    assert len(seen) == 1 and seen[0][3] == 1e-5
    monkeypatch.setattr(collective, "_FAST_AR_NORM", lambda x, r, w, eps: (x, r))
    assert [torch.equal(a, b) for a, b in zip(run_graph(g, vals), vals[:2])] == [True, True]


def test_resetting_the_groups_drops_a_fused_all_reduce_norm_kernel() -> None:
    from kiln.ir.opset import collective

    collective.set_all_reduce_add_rms_norm(lambda *a: None)
    collective.reset_groups()
    assert collective._FAST_AR_NORM is None


def test_the_triton_backend_runs_the_fused_all_reduce_norm_as_the_all_reduce_and_its_row_kernel() -> None:
    """Without a fused kernel installed, the Triton backend keeps the kernels the graph ran before
    fuse_collectives: the all-reduce, then the add + RMSNorm row kernel (Triton's interpreter on CPU)."""
    pytest.importorskip("triton")
    from kiln.backends.triton.norms import AllReduceNormLauncher, row_kernel

    g = Graph()
    x, r = (g.add_input(n, TensorType(f32, (3, 40))) for n in ("x", "r"))
    w = g.add_input("w", TensorType(f32, (40,)))
    node = g.add_node("all_reduce_add_rms_norm", [x, r, w], {"group_size": 1, "eps": 1e-5})
    g.outputs = list(node.outputs)
    launcher = row_kernel(node)
    assert isinstance(launcher, AllReduceNormLauncher)
    vals = [torch.randn(3, 40), torch.randn(3, 40), torch.rand(40) + 0.5]
    for got, want in zip(launcher(*vals), run_graph(g, vals)):
        assert rel_err(got, want) < 1e-5


def test_fuse_collectives_takes_an_all_reduce_read_only_by_the_norm_after_it() -> None:
    from kiln.passes import PassContext
    from kiln.passes.fuse_collectives import fuse_collectives

    def graph(extra_reader: bool, collective_between: bool) -> Graph:
        g = Graph()
        p, h = (g.add_input(n, TensorType(f32, (2, 8))) for n in ("p", "h"))
        w = g.add_input("w", TensorType(f32, (8,)))
        s = g.call("all_reduce", p, group_size=1)
        other = g.call("all_reduce", h, group_size=1) if collective_between else h
        outs = list(g.add_node("add_rms_norm", [other, s, w], {"eps": 1e-6}).outputs)  # the sum as the second operand
        g.outputs = outs + ([g.call("relu", s)] if extra_reader else [])
        return g

    ctx = PassContext(kiln.CompileOptions())
    fused = fuse_collectives(graph(False, False), ctx)
    assert fused.op_counts() == {"all_reduce_add_rms_norm": 1}
    node = fused.nodes[0]
    assert [v.name for v in node.inputs] == ["p", "h", "w"] and node.attrs["eps"] == 1e-6
    assert "all_reduce" in fuse_collectives(graph(True, False), ctx).op_counts()  # the sum is read elsewhere too
    # never reorder collectives: with another all-reduce between, the norm takes that (later) one
    # and the earlier one stays where it is
    kept = fuse_collectives(graph(False, True), ctx)
    assert [n.op.name for n in kept.nodes] == ["all_reduce", "all_reduce_add_rms_norm"]
    assert [v.name for v in kept.nodes[1].inputs][0] == "h"
    vals = [torch.randn(2, 8), torch.randn(2, 8), torch.rand(8) + 0.5]
    assert all(torch.equal(a, b) for a, b in zip(run_graph(fused, vals), run_graph(graph(False, False), vals)))


def test_tensor_parallel_option_is_checked() -> None:
    with pytest.raises(ValueError, match="tensor_parallel"):
        kiln.CompileOptions(tensor_parallel=(2, 2))


# --- multi-process: gloo ---------------------------------------------------------------------


def _rank_main(rank: int, world: int, port: int, kinds: tuple[str, ...], ids: torch.Tensor, results: mp.Queue) -> None:
    """One rank: compile each tiny model for this rank and send back its logits and op counts."""
    from kiln.runtime.distributed import compile_tensor_parallel, init_distributed, shutdown_distributed

    torch.set_num_threads(1)
    code = 1
    try:
        init_distributed(rank, world, backend="gloo", master_port=port, timeout_s=RANK_TIMEOUT_S)
        out = {}
        for kind in kinds:
            fn = compile_tensor_parallel(tiny_lm(kind))
            with torch.no_grad():
                logits = fn(ids).logits
            out[kind] = (logits.numpy(), fn.stats.graphs[-1].op_counts())
        results.put((rank, "ok", out))
        code = 0
    except BaseException:
        results.put((rank, "error", traceback.format_exc()))
    finally:
        shutdown_distributed()
        results.close()
        results.join_thread()  # the result is in the pipe: skip interpreter teardown (seconds on 2 busy cores)
        os._exit(code)


def run_ranks(world: int, kinds: tuple[str, ...], ids: torch.Tensor, reference: Callable[[], dict]) -> tuple[dict, dict]:
    """Start `world` ranks, compute `reference()` meanwhile, collect every rank's result.
    Fails with the first rank's traceback, or when a rank dies or the deadline passes."""
    from kiln.runtime.distributed import free_port

    ctx = mp.get_context("spawn")
    results = ctx.Queue()
    port = free_port()
    procs = [ctx.Process(target=_rank_main, args=(r, world, port, kinds, ids, results), daemon=True) for r in range(world)]
    for p in procs:
        p.start()
    done = False
    try:
        ref = reference()
        got = collect_ranks(procs, results, WAIT_S)
        done = True
        return ref, got
    finally:
        stop_ranks(procs, 10 if done else 1)


# tp4 runs only Llama (4 heads, 2 kv heads: the kv-replication case); each extra model costs every
# rank one torch.export, ~8 s with 4 ranks on 2 cores. GPT-2 (fused qkv, Conv1D, tied lm_head) at tp2.
KINDS_AT = {2: (*KINDS, "gpt2"), 4: ("llama",)}


@pytest.fixture(scope="module", params=[2, 4], ids=["tp2", "tp4"])
def tp_runs(request: pytest.FixtureRequest) -> tuple[int, dict, dict]:
    world = request.param
    kinds = KINDS_AT[world]
    ids = torch.randint(0, 128, (2, 9))  # fresh ids: the ranks trace on these

    def reference() -> dict:
        with torch.no_grad():
            return {kind: kiln.compile(tiny_lm(kind))(ids).logits for kind in kinds}

    ref, got = run_ranks(world, kinds, ids, reference)
    return world, ref, got


def test_tensor_parallel_logits_equal_single_process(tp_runs: tuple) -> None:
    world, ref, got = tp_runs
    for kind, want in ref.items():
        for rank in range(world):
            logits = torch.from_numpy(got[rank][kind][0])
            assert logits.shape == want.shape
            assert rel_err(logits, want) < 1e-5, f"{kind}, rank {rank} of {world}"


def test_tensor_parallel_rank_plans_hold_the_collectives(tp_runs: tuple) -> None:
    world, _, got = tp_runs
    for rank in range(world):
        for kind in KINDS_AT[world]:
            counts = got[rank][kind][1]
            reduces = counts.get("all_reduce", 0) + counts.get("all_reduce_add_rms_norm", 0)  # fused where the norm was
            assert reduces == 4 and counts["all_gather"] == 1, (rank, kind, counts)


def test_a_failing_rank_surfaces_its_error_instead_of_hanging() -> None:
    t0 = time.monotonic()
    with pytest.raises(AssertionError, match=r"rank \d failed:(.|\n)*3 attention heads are not divisible by 2"):
        run_ranks(2, ("llama_3_heads",), torch.randint(0, 128, (1, 5)), dict)
    assert time.monotonic() - t0 < WAIT_S
