"""Pipeline parallelism: the split pass on one process, and stage plans on gloo in 2 and 4
processes whose last stage gives the single-process logits for every micro-batch.

As in test_tensor_parallel: one group of processes per stage count runs every multi-process
check (`pp_runs`), every wait has a deadline, a stage that fails reports its traceback and the
others are killed.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import queue
import time
import traceback
from typing import Callable

import pytest
import torch

import kiln
from kiln.errors import PipelineParallelError
from kiln.ir import Graph, TensorType, run_graph
from kiln.ir.dtypes import f32
from kiln.ir.ops import get_op
from kiln.passes import PIPELINE, run_pipeline
from kiln.passes.pipeline_parallel import pipeline_stage_graph, plan_split

from conftest import rel_err

RANK_TIMEOUT_S = 30.0  # p2p timeout inside the stages
WAIT_S = 120.0  # the whole group's deadline (spawn + imports + compiles on 2 cores)
LAYERS = 4


def tiny_lm(kind: str) -> torch.nn.Module:
    from transformers import GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)  # every process builds the same weights
    if kind == "gpt2":
        return GPT2LMHeadModel(GPT2Config(n_embd=64, n_layer=LAYERS, n_head=4, vocab_size=128, n_positions=64, use_cache=False)).eval()
    return LlamaForCausalLM(LlamaConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=LAYERS, num_attention_heads=4,
                                        num_key_value_heads=2, vocab_size=128, use_cache=False)).eval()


def graph_before_split(model: torch.nn.Module) -> Graph:
    from kiln.frontend.export import trace_export

    traced = trace_export(model, (torch.randint(0, 128, (2, 7)),), {})
    upto = PIPELINE[: [p.name for p in PIPELINE].index("split_pipeline")]
    g, _ = run_pipeline(traced.graph, upto, kiln.CompileOptions())
    return g


@pytest.fixture(scope="module")
def llama_graph() -> Graph:
    return graph_before_split(tiny_lm("llama"))


@pytest.fixture
def channel(monkeypatch: pytest.MonkeyPatch) -> list:
    """send / recv over an in-process FIFO, for running the stages one after another."""
    fifo: list[torch.Tensor] = []
    monkeypatch.setattr(get_op("send"), "impl", lambda x, dst: fifo.append(x.clone()))
    monkeypatch.setattr(get_op("recv"), "impl", lambda src, shape, dtype, device: fifo.pop(0))
    return fifo


def _layer(module: str) -> int:
    return int(module.split(".")[2])  # model.layers.<k>...


# --- the split, in one process -----------------------------------------------------------------


@pytest.mark.parametrize("stages", [2, 4])
def test_split_balances_stage_costs(llama_graph: Graph, stages: int) -> None:
    split = plan_split(llama_graph, stages)
    assert len(split.cuts) == stages - 1 and split.layers == LAYERS
    mean = sum(split.stage_costs) / stages
    assert max(split.stage_costs) < 1.25 * mean, split.stage_costs  # layers split evenly; the lm_head rides on the last
    if stages == 4:  # one layer per stage
        assert [_layer(llama_graph.nodes[c].source.module) for c in split.cuts] == [1, 2, 3]


def test_every_cut_carries_only_the_residual_stream(llama_graph: Graph) -> None:
    split = plan_split(llama_graph, 4)
    for cut, values, nbytes in zip(split.cuts, split.crossing, split.cut_bytes_per_token):
        (h,) = values
        before, after = llama_graph.nodes[cut - 1], llama_graph.nodes[cut]
        assert h.node is before and before.op.name == "add"  # the layer's last residual add
        assert str(h.type) == "f32[B, S, 64]" and nbytes == 64 * 4
        assert _layer(after.source.module) == _layer(before.source.module) + 1


def test_stages_chained_in_one_process_give_the_model_outputs(llama_graph: Graph, channel: list) -> None:
    ids = torch.randint(0, 128, (3, 5))  # other sizes than traced: recv shapes are symbolic
    want = run_graph(llama_graph, [ids])[0]
    for stage in range(4):
        g = pipeline_stage_graph(llama_graph, stage, 4)
        counts = g.op_counts()
        assert counts.get("recv", 0) == (stage > 0) and counts.get("send", 0) == (stage < 3)
        assert {n.op.name for n in g.nodes if n.op.name in ("linear", "attention")} == {"linear", "attention"}
        outs = run_graph(g, [ids])
        assert len(outs) == (1 if stage == 3 else 0)
    assert not channel and torch.equal(outs[0], want)


def test_pipeline_records_communication_and_keeps_p2p_through_fusion() -> None:
    from kiln.frontend.export import trace_export

    traced = trace_export(tiny_lm("gpt2"), (torch.randint(0, 128, (2, 7)),), {})
    g, records = run_pipeline(traced.graph, PIPELINE, kiln.CompileOptions(pipeline_parallel=(1, 2)))
    stats = next(r for r in records if r.name == "split_pipeline").stats
    assert stats["cut0_bytes_per_token"] == stats["recv_bytes_per_token"] == 64 * 4 and stats["send_bytes_per_token"] == 0
    assert stats["stage0_cost"] > 0 and stats["stage1_cost"] > 0
    assert g.op_counts()["recv"] == 1 and g.nodes[0].op.name == "recv" and len(g.outputs) == 1
    assert [str(v.type) for v in g.inputs] == ["i64[B, S]"]  # the stage still takes the token ids


def test_more_stages_than_layers_raises(llama_graph: Graph) -> None:
    with pytest.raises(PipelineParallelError, match=r"5 stages need 4 cuts .* 4 layer\(s\) \(3 possible cut\(s\)\)"):
        plan_split(llama_graph, 5)


def test_pipeline_parallel_option_is_checked() -> None:
    with pytest.raises(ValueError, match="pipeline_parallel"):
        kiln.CompileOptions(pipeline_parallel=(2, 2))
    both = kiln.CompileOptions(pipeline_parallel=(1, 2), tensor_parallel=(0, 2))  # T x P: see test_hybrid_parallel
    assert both.pipeline_parallel == (1, 2) and both.tensor_parallel == (0, 2)


def test_send_and_recv_refuse_without_a_group() -> None:
    g = Graph()
    x = g.add_input("x", TensorType(f32, (3, 5)))
    g.add_node("send", [x], {"dst": 1})
    with pytest.raises(RuntimeError, match="needs an initialised process group"):
        run_graph(g, [torch.randn(3, 5)])


def test_microbatches_split_every_input_alike() -> None:
    from kiln.runtime.pipeline import microbatches

    ids, mask = torch.arange(10).reshape(5, 2), torch.ones(5, 2)
    mbs = microbatches(ids, mask, num=2)
    assert [tuple(a.shape) for a, _ in mbs] == [(3, 2), (2, 2)] and torch.equal(torch.cat([a for a, _ in mbs]), ids)
    with pytest.raises(ValueError, match="micro-batches"):
        microbatches(ids, num=6)


def test_engine_steps_split_into_token_balanced_contiguous_groups() -> None:
    """kiln.LLM's pipeline micro-batches: contiguous (the logits come back in chunk order), no
    chunk split, never empty, min(m, chunks) groups, the largest group as small as it can be."""
    from itertools import combinations

    from kiln.runtime.model_runner import SeqChunk
    from kiln.runtime.tp import split_chunks

    def sizes(groups: list) -> list[list[int]]:
        return [[len(c.tokens) for c in g] for g in groups]

    def best(ns: list[int], k: int) -> int:  # the least largest group over every k-way cut
        return min(max(sum(ns[a:b]) for a, b in zip((0, *cut), (*cut, len(ns))))
                   for cut in combinations(range(1, len(ns)), k - 1))

    for ns, m in [([1, 1, 1, 1], 2), ([500, 1, 1, 1], 2), ([500, 1, 1, 1], 3), ([1, 1, 1], 5), ([5] * 5, 2),
                  ([3, 9, 2, 2, 8], 3), ([7], 4), (list(range(1, 11)), 4), ([1, 40, 1, 1, 1, 1], 4)]:
        chunks = [SeqChunk([i] * n, 0, [0]) for i, n in enumerate(ns)]
        groups = split_chunks(chunks, m)
        assert [c for g in groups for c in g] == chunks  # order kept, nothing split or lost
        assert len(groups) == min(m, len(ns)) and all(groups), sizes(groups)
        assert max(map(sum, sizes(groups))) == best(ns, len(groups)), (ns, m, sizes(groups))
    assert sizes(split_chunks([SeqChunk([0] * n, 0, [0]) for n in (4, 4, 4, 4)], 2)) == [[4, 4], [4, 4]]
    assert split_chunks([], 2) == [] and len(split_chunks([SeqChunk([0], 0, [0])] * 3, 1)) == 1


def test_pipeline_microbatches_is_checked() -> None:
    for bad in (0, -1, 1.5, True, "2"):
        with pytest.raises(ValueError, match="pipeline_microbatches"):
            kiln.LLM("tiny-llama", pipeline_parallel_size=2, pipeline_microbatches=bad)
    with pytest.raises(ValueError, match="needs pipeline_parallel_size > 1"):
        kiln.LLM("tiny-llama", tensor_parallel_size=2, pipeline_microbatches=2)


# --- multi-process: gloo -----------------------------------------------------------------------


class Residual(torch.nn.Module):
    """A model without transformers: two residual layers, whose stage 0 is made to fail."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.layers = torch.nn.ModuleList(torch.nn.Linear(8, 8) for _ in range(2))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for layer in self.layers:
            x = x + layer(x).relu()
        return x


def _stage_main(rank: int, world: int, port: int, batches: dict, results: mp.Queue) -> None:
    """One stage: per model, compile it for this stage and run every micro-batch; report the last
    stage's outputs and the plan's op counts, or the traceback (and stop: the group is broken).
    Stage 0 of the "residual" model fails on its second micro-batch (a wrong input dtype)."""
    from kiln.runtime.distributed import init_distributed, shutdown_distributed
    from kiln.runtime.pipeline import compile_pipeline_stage, run_pipeline_stage

    torch.set_num_threads(1)
    try:
        init_distributed(rank, world, backend="gloo", master_port=port, timeout_s=RANK_TIMEOUT_S)
        for kind, mbs in batches.items():
            try:
                fn = compile_pipeline_stage(Residual() if kind == "residual" else tiny_lm(kind))
                if kind == "residual" and rank == 0:
                    mbs = [mbs[0], mbs[1].double(), mbs[2]]
                got = run_pipeline_stage(fn, mbs)
                logits = [(o.logits if hasattr(o, "logits") else o).numpy() for o in got] if got is not None else None
                results.put((rank, kind, "ok", (logits, fn.stats.graphs[-1].op_counts())))
            except BaseException:
                results.put((rank, kind, "error", traceback.format_exc()))
                break
    except BaseException:
        results.put((rank, "", "error", traceback.format_exc()))
    finally:
        shutdown_distributed()
        results.close()
        results.join_thread()  # the results are in the pipe: skip interpreter teardown
        os._exit(0)


def run_stages(world: int, batches: dict, reference: Callable[[], dict]) -> tuple[dict, dict]:
    """Start `world` stages, compute `reference()` meanwhile, and collect every stage's
    {kind: (status, payload)} until it finished every model or reported an error. Fails when a
    stage dies without reporting or the deadline passes; stages still running then are killed."""
    from kiln.runtime.distributed import free_port

    ctx = mp.get_context("spawn")
    results = ctx.Queue()
    port = free_port()
    procs = [ctx.Process(target=_stage_main, args=(r, world, port, batches, results), daemon=True) for r in range(world)]
    for p in procs:
        p.start()
    try:
        ref = reference()
        got: dict = {r: {} for r in range(world)}
        finished: set[int] = set()
        deadline = time.monotonic() + WAIT_S
        while len(finished) < world:
            try:
                rank, kind, status, payload = results.get(timeout=1.0)
            except queue.Empty:
                dead = [r for r, p in enumerate(procs) if p.exitcode is not None and r not in finished]
                assert not dead, f"stage {dead[0]} exited with code {procs[dead[0]].exitcode} without reporting"
                assert time.monotonic() < deadline, f"stages {sorted(set(range(world)) - finished)} did not finish in {WAIT_S}s"
                continue
            got[rank][kind] = (status, payload)
            if status == "error" or len(got[rank]) == len(batches):
                finished.add(rank)
        return ref, got
    finally:  # a stage may sit in a recv until its timeout after a failure: kill it
        for p in procs:
            p.join(timeout=5)
            if p.is_alive():
                p.kill()
                p.join()


def _fresh_microbatches() -> list[torch.Tensor]:
    # 3 micro-batches of fresh ids, with different batch sizes and lengths (symbolic recv shapes)
    return [torch.randint(0, 128, shape) for shape in ((2, 9), (3, 6), (2, 11))]


def _run_lms(world: int, kinds: tuple[str, ...], extra: dict) -> tuple[int, dict, dict]:
    mbs = _fresh_microbatches()

    def reference() -> dict:
        with torch.no_grad():
            out = {}
            for kind in kinds:
                fn = kiln.compile(tiny_lm(kind))
                out[kind] = [fn(ids).logits for ids in mbs]
            return out

    ref, got = run_stages(world, {**{kind: mbs for kind in kinds}, **extra}, reference)
    return world, ref, got


@pytest.fixture(scope="module")
def pp2() -> tuple[int, dict, dict]:
    # the failing model runs last in the same group: one spawn (the costly part) serves both
    return _run_lms(2, ("llama", "gpt2"), {"residual": [torch.randn(2, 8) for _ in range(3)]})


@pytest.fixture(scope="module")
def pp4() -> tuple[int, dict, dict]:
    return _run_lms(4, ("llama",), {})  # Llama only: each model costs every stage an export on 2 cores


@pytest.fixture(params=["pp2", "pp4"])
def pp_runs(request: pytest.FixtureRequest) -> tuple[int, dict, dict]:
    return request.getfixturevalue(request.param)


def _ok(got: dict, stage: int, kind: str) -> tuple:
    status, payload = got[stage][kind]
    assert status == "ok", f"stage {stage} failed on {kind}:\n{payload}"
    return payload


def test_last_stage_logits_equal_single_process(pp_runs: tuple) -> None:
    world, ref, got = pp_runs
    for kind, wants in ref.items():
        logits = _ok(got, world - 1, kind)[0]
        assert len(logits) == len(wants) == 3
        for i, (have, want) in enumerate(zip(logits, wants)):
            assert have.shape == tuple(want.shape) and rel_err(torch.from_numpy(have), want) < 1e-5, f"{kind}, micro-batch {i}"
        assert all(_ok(got, s, kind)[0] is None for s in range(world - 1))  # earlier stages return nothing


def test_stage_plans_hold_one_send_and_recv_per_cut(pp_runs: tuple) -> None:
    world, ref, got = pp_runs
    for stage in range(world):
        for kind in ref:
            counts = _ok(got, stage, kind)[1]
            assert (counts.get("recv", 0), counts.get("send", 0)) == (int(stage > 0), int(stage < world - 1)), (stage, kind, counts)


def test_a_failing_stage_is_an_error_on_every_stage_instead_of_a_hang(pp2: tuple) -> None:
    _, _, got = pp2
    status0, err0 = got[0]["residual"]
    assert status0 == "error" and "InputError" in err0 and "expected f32" in err0
    status1, err1 = got[1]["residual"]  # blocked in recv for micro-batch 2 when stage 0 exited
    assert status1 == "error" and "recv" in err1, err1
