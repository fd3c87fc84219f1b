"""Tensor x pipeline parallelism (T x P ranks; rank r = tensor rank r % T of stage r // T).

In one process: the layout, the stage -> rank mapping and tensor-group registration of the
collectives, the options, the report. On gloo: 2 x 2 per-rank plans of a tiny Llama give the
single-process logits, and kiln.LLM(tensor_parallel_size=2, pipeline_parallel_size=2) the
single-process greedy tokens. As in test_pipeline_parallel, every wait has a deadline.
"""

from __future__ import annotations

import multiprocessing as mp
import time

import pytest
import torch

import kiln
from kiln.errors import PipelineParallelError, TensorParallelError, TensorPipelineParallelError
from kiln.ir.opset import collective
from kiln.runtime.distributed import parallel_layout, setup_parallel_groups

from conftest import collect_ranks, rank_main, rel_err, stop_ranks

RANK_TIMEOUT_S = 30.0
WAIT_S = 150.0  # 4 processes on 2 cores: spawn + imports + a compile each
T, P = 2, 2

pytestmark = pytest.mark.skipif(not torch.distributed.is_available(), reason="needs torch.distributed")


def tiny_lm() -> torch.nn.Module:
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)  # every process builds the same weights
    return LlamaForCausalLM(LlamaConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=4, num_attention_heads=4,
                                        num_key_value_heads=2, vocab_size=128, use_cache=False)).eval()


# --- in one process ------------------------------------------------------------------------------


def test_layout_puts_each_stages_tensor_ranks_side_by_side() -> None:
    assert [parallel_layout(r, 2, 3) for r in range(6)] == [
        ((0, 2), (0, 3)), ((1, 2), (0, 3)), ((0, 2), (1, 3)), ((1, 2), (1, 3)), ((0, 2), (2, 3)), ((1, 2), (2, 3))]
    with pytest.raises(ValueError, match="2 x 2"):
        parallel_layout(4, 2, 2)


@pytest.fixture
def fake_world(monkeypatch: pytest.MonkeyPatch) -> dict:
    """A pretend 4-rank default group (this is rank 1): records point-to-point peers and the
    group every all-reduce runs on; a registered group reports 2 ranks."""
    calls: dict = {"send": [], "recv": [], "all_reduce": []}
    d = collective.dist
    monkeypatch.setattr(d, "is_initialized", lambda: True)
    monkeypatch.setattr(d, "get_rank", lambda group=None: 1)
    monkeypatch.setattr(d, "get_world_size", lambda group=None: 4 if group is None else 2)
    monkeypatch.setattr(d, "send", lambda x, dst: calls["send"].append(dst))
    monkeypatch.setattr(d, "recv", lambda x, src: calls["recv"].append(src))
    monkeypatch.setattr(d, "all_reduce", lambda x, op=None, group=None: calls["all_reduce"].append(group))
    yield calls
    collective.reset_groups()


def test_stage_ranks_map_send_and_recv_peers(fake_world: dict) -> None:
    x = torch.ones(2, 3)
    collective._send(x, 2)  # no mapping: stage k is rank k (pipeline parallelism alone)
    collective.set_stage_ranks([1, 3])  # tensor rank 1 of a 2 x 2 layout: this rank 1 is stage 0
    collective._send(x, 1)
    with pytest.raises(RuntimeError, match=r"rank 1 \(stage 0\) is not another rank"):  # itself
        collective._recv(0, [2, 3], torch.float32, "cpu")
    with pytest.raises(RuntimeError, match="stage 2 has no rank"):
        collective._send(x, 2)
    collective.set_stage_ranks([0, 1])  # this rank 1 as stage 1: receives from stage 0 = rank 0
    collective._recv(0, [2, 3], torch.float32, "cpu")
    assert fake_world["send"] == [2, 3] and fake_world["recv"] == [0]
    with pytest.raises(ValueError, match="distinct"):
        collective.set_stage_ranks([0, 0])


def test_tensor_group_carries_all_reduce_and_its_size_is_checked(fake_world: dict) -> None:
    x = torch.ones(4)
    with pytest.raises(RuntimeError, match="expects 2 ranks but the process group has 4.*setup_parallel_groups"):
        collective.all_reduce(x, group_size=2)  # the default group has the whole T x P world
    group = object()
    collective.set_tensor_group(group)
    assert collective.tensor_group() is group
    collective.all_reduce(x, group_size=2)
    assert fake_world["all_reduce"] == [group]
    with pytest.raises(RuntimeError, match="expects 4 ranks but the registered tensor-parallel group has 2"):
        collective.all_reduce(x, group_size=4)
    collective.set_stage_ranks([1, 3])
    collective.set_all_reduce(lambda t: None)
    collective.reset_groups()  # what closing a group does
    assert collective.tensor_group() is None and collective.stage_rank(3) == 3 and collective._FAST_ALL_REDUCE is None


def test_setup_parallel_groups_wants_t_times_p_ranks(fake_world: dict) -> None:
    with pytest.raises(ValueError, match="tensor_parallel 2 x pipeline_parallel 3 needs 6 ranks, the process group has 4"):
        setup_parallel_groups(2, 3)
    assert setup_parallel_groups(4, 1) == ((1, 4), (0, 1)) and collective.tensor_group() is None  # TP alone: as before
    assert setup_parallel_groups(1, 4) == ((0, 1), (1, 4)) and collective.stage_rank(2) == 2  # PP alone: as before


def test_combined_options_are_accepted_and_still_checked() -> None:
    opts = kiln.CompileOptions(tensor_parallel=(1, 2), pipeline_parallel=(1, 2))
    assert (opts.tensor_parallel, opts.pipeline_parallel) == ((1, 2), (1, 2))
    with pytest.raises(ValueError, match="tensor_parallel must be"):
        kiln.CompileOptions(tensor_parallel=(2, 2), pipeline_parallel=(0, 2))
    with pytest.raises(ValueError, match="pipeline_parallel must be"):
        kiln.CompileOptions(tensor_parallel=(0, 2), pipeline_parallel=(2, 2))


def test_runtime_rank_options_and_logits_sender() -> None:
    from kiln.runtime.tp import TPGroup, _logits_rank, _rank_options

    opts = [_rank_options(None, r, 6, "hybrid", 2) for r in range(6)]
    assert [(o.tensor_parallel, o.pipeline_parallel) for o in opts] == [
        ((r % 2, 2), (r // 2, 3)) for r in range(6)]
    assert _logits_rank(6, "hybrid", 2) == 4 and _logits_rank(3, "pipeline") == 2
    assert _rank_options(None, 1, 2, "tensor").pipeline_parallel is None
    assert issubclass(TensorPipelineParallelError, TensorParallelError) and issubclass(TensorPipelineParallelError, PipelineParallelError)
    with pytest.raises(ValueError, match="tensor_size"):
        TPGroup(4, None, device=torch.device("cpu"), dtype=None, block_size=16, max_model_len=64, options=None,
                allow_pickle=False, mode="hybrid", tensor_size=3)


def test_parallel_report_shows_the_combined_plan() -> None:
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                                         intermediate_size=128, vocab_size=128, use_cache=False)).eval()
    rep = kiln.parallel_report(model, (torch.randint(0, 128, (1, 8)),), tensor_parallel=2, pipeline_parallel=2)
    assert rep["mode"] == "tensor_pipeline_parallel" and rep["world"] == 4
    assert [(r["stage"], r["tensor_rank"]) for r in rep["ranks"]] == [(0, 0), (0, 1), (1, 0), (1, 1)]
    for r in rep["ranks"][:2]:
        # the MLP's all-reduce ends the stage (its residual add goes out, the norm is the next stage's)
        assert r["collectives"] == {"all_reduce": 1, "all_reduce_add_rms_norm": 1, "send": 1}
    for r in rep["ranks"][2:]:
        assert r["collectives"] == {"all_reduce_add_rms_norm": 2, "all_gather": 1, "recv": 1}
    assert "| 3 (1.1) |" in rep["markdown"]


# --- 2 x 2 on gloo --------------------------------------------------------------------------------


def _rank_main(rank: int, world: int, port: int, mbs: list, results: mp.Queue) -> None:
    rank_main(rank, results, lambda: _rank_body(rank, world, port, mbs))


def _rank_body(rank: int, world: int, port: int, mbs: list) -> tuple:
    from kiln.runtime.distributed import init_distributed
    from kiln.runtime.pipeline import run_pipeline_stage

    init_distributed(rank, world, backend="gloo", master_port=port, timeout_s=RANK_TIMEOUT_S)
    tp, pp = setup_parallel_groups(T, P, timeout_s=RANK_TIMEOUT_S)
    mapping = ([collective.stage_rank(s) for s in range(P)], torch.distributed.get_world_size(collective.tensor_group()))
    fn = kiln.compile(tiny_lm(), options=kiln.CompileOptions(tensor_parallel=tp, pipeline_parallel=pp))
    got = run_pipeline_stage(fn, mbs)
    logits = [o.logits.numpy() for o in got] if got is not None else None
    return tp, pp, mapping, logits, fn.stats.graphs[-1].op_counts()


@pytest.fixture(scope="module")
def tp2_pp2() -> tuple[list, dict]:
    from kiln.runtime.distributed import free_port

    world = T * P
    mbs = [torch.randint(0, 128, shape) for shape in ((2, 9), (3, 6))]
    ctx = mp.get_context("spawn")
    results = ctx.Queue()
    port = free_port()
    procs = [ctx.Process(target=_rank_main, args=(r, world, port, mbs, results), daemon=True) for r in range(world)]
    for p in procs:
        p.start()
    try:
        with torch.no_grad():
            fn = kiln.compile(tiny_lm())
            ref = [fn(ids).logits for ids in mbs]
        return ref, collect_ranks(procs, results, WAIT_S)
    finally:
        stop_ranks(procs, 5)


def test_two_by_two_ranks_give_the_single_process_logits(tp2_pp2: tuple) -> None:
    ref, got = tp2_pp2
    for rank in range(T * P):
        tp, pp, (stage_ranks, group_size), logits, counts = got[rank]
        assert tp == (rank % T, T) and pp == (rank // T, P)
        assert stage_ranks == [rank % T, T + rank % T] and group_size == T  # stage k's peer: k * T + t
        # 2 layers of the 4 per stage, 2 all-reduces each (fused with the norm after them but at a stage's end)
        assert counts.get("all_reduce", 0) + counts.get("all_reduce_add_rms_norm", 0) == 4
        assert (counts.get("recv", 0), counts.get("send", 0), counts.get("all_gather", 0)) == (
            (0, 1, 0) if pp[0] == 0 else (1, 0, 1)), (rank, counts)
        if pp[0] < P - 1:
            assert logits is None
            continue
        for have, want in zip(logits, ref, strict=True):  # every tensor rank of the last stage gathers the logits
            assert have.shape == tuple(want.shape) and rel_err(torch.from_numpy(have), want) < 1e-5


def test_llm_tensor_times_pipeline_gives_the_single_process_greedy_tokens_and_a_dead_rank_is_an_error(
        monkeypatch: pytest.MonkeyPatch) -> None:
    from kiln.runtime import tp

    greedy = kiln.SamplingParams(max_tokens=8, temperature=0.0, ignore_eos=True)
    prompts = ["The fox and the crow", "Four score and seven years ago our fathers"]
    want = [o.outputs[0].token_ids for o in kiln.LLM("tiny-llama").generate(prompts, greedy)]
    counts: list[int] = []  # micro-batch groups per step (automatic: one per stage, at most one per sequence)
    split = tp.split_chunks
    monkeypatch.setattr(tp, "split_chunks", lambda chunks, m: counts.append(min(m, len(chunks))) or split(chunks, m))
    llm = kiln.LLM("tiny-llama", tensor_parallel_size=T, pipeline_parallel_size=P)
    try:
        assert llm._tp.mode == "hybrid" and llm._tp.world == 4 and llm._tp.logits_rank == 2
        assert llm.runner.options.tensor_parallel == (0, 2) and llm.runner.options.pipeline_parallel == (0, 2)
        assert len(llm.runner.kv_cache) == 1  # stage 0 holds one of the 2 layers' caches ...
        assert llm.runner.kv_cache[0][0].shape[2] == 1  # ... and one of the 2 kv heads
        got = [o.outputs[0].token_ids for o in llm.generate(prompts, greedy)]
        again = [o.outputs[0].token_ids for o in llm.generate(prompts[:1], greedy)]  # prefix-cache hits
        assert got == want and again == want[:1]
        assert max(counts) == P and min(counts) == 1  # two sequences: two groups in flight; one: one
        worker = llm._tp.procs[2]  # rank 3: the last stage's tensor rank 1
        worker.kill()
        worker.join(timeout=10)
        t0 = time.monotonic()
        with pytest.raises(TensorPipelineParallelError, match="rank"):
            llm.generate(prompts[:1], greedy)
        assert time.monotonic() - t0 < 30
    finally:
        llm.close()
    assert not torch.distributed.is_initialized()
