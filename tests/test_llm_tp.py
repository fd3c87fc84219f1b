"""kiln.LLM(tensor_parallel_size=N): rank 0 drives, spawned workers hold the other shards (gloo on
CPU). Greedy tokens equal one process's; a dead worker is a clear error, never a hang."""

from __future__ import annotations

import time

import pytest
import torch

import kiln
from kiln.errors import TensorParallelError

GREEDY = kiln.SamplingParams(max_tokens=12, temperature=0.0, ignore_eos=True)
PROMPTS = ["The fox and the crow", "Four score and seven years ago our fathers", "In the beginning"]

pytestmark = pytest.mark.skipif(not torch.distributed.is_available(), reason="needs torch.distributed")


@pytest.mark.parametrize("world", [2])
def test_tensor_parallel_llm_gives_the_single_process_greedy_tokens(world: int) -> None:
    want = [o.outputs[0].token_ids for o in kiln.LLM("tiny-llama").generate(PROMPTS, GREEDY)]
    with kiln.LLM("tiny-llama", tensor_parallel_size=world) as llm:
        assert llm.runner.num_blocks > 0
        got = [o.outputs[0].token_ids for o in llm.generate(PROMPTS, GREEDY)]
        # a second batch (prefix-cache hits, copy-on-write) on the same workers
        again = [o.outputs[0].token_ids for o in llm.generate(PROMPTS[:2], GREEDY)]
    assert got == want and again == want[:2]
    assert not torch.distributed.is_initialized()  # closed cleanly


def test_pipeline_micro_batches_in_flight_give_the_single_process_greedy_tokens(monkeypatch: pytest.MonkeyPatch) -> None:
    """pipeline_parallel_size=2 with each step cut into micro-batches (automatic: one per stage;
    2; 3, more groups than stages): the stages overlap and the tokens equal one process's. One
    group of processes serves every setting (the number of groups is rank 0's choice per step)."""
    from kiln.runtime import tp

    prompts = PROMPTS + ["Once upon a time there was"]
    want = [o.outputs[0].token_ids for o in kiln.LLM("tiny-llama").generate(prompts, GREEDY)]
    counts: list[int] = []  # groups per step
    split = tp.split_chunks
    monkeypatch.setattr(tp, "split_chunks", lambda chunks, m: counts.append(min(m, len(chunks))) or split(chunks, m))
    with kiln.LLM("tiny-llama", pipeline_parallel_size=2, pipeline_microbatches=3) as llm:
        assert llm.runner.microbatches == 3
        for m, most in ((3, 3), (None, 2), (2, 2)):
            llm.runner.microbatches, counts[:] = m, []
            got = [o.outputs[0].token_ids for o in llm.generate(prompts, GREEDY)]
            assert got == want, m
            assert max(counts) == most and min(counts) >= 1, (m, counts)
    assert not torch.distributed.is_initialized()


def test_a_dead_worker_is_a_clear_error_not_a_hang() -> None:
    llm = kiln.LLM("tiny-llama", tensor_parallel_size=2)
    try:
        worker = llm._tp.procs[0]
        worker.kill()
        worker.join(timeout=10)
        t0 = time.monotonic()
        with pytest.raises(TensorParallelError, match="rank"):
            llm.generate(PROMPTS[:1], GREEDY)
        assert time.monotonic() - t0 < 30
    finally:
        llm.close()
    assert not torch.distributed.is_initialized()


def test_a_worker_that_dies_while_starting_fails_the_driver_at_once(tmp_path) -> None:  # noqa: ANN001
    """A script without the `if __name__ == "__main__":` guard: each spawned worker re-runs it
    and dies while bootstrapping. The driver must say so within seconds, naming the rank, not
    wait out the group's rendezvous timeout (120 s) for a client that never comes."""
    import subprocess
    import sys

    script = tmp_path / "no_main_guard.py"
    script.write_text("import kiln\nkiln.LLM('tiny-llama', tensor_parallel_size=2)\n")
    t0 = time.monotonic()
    proc = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=110)
    took = time.monotonic() - t0
    assert proc.returncode != 0
    assert "TensorParallelError" in proc.stderr and "rank(s) 1" in proc.stderr and "before joining" in proc.stderr, proc.stderr[-2000:]
    assert took < 60, took


def test_tensor_parallel_size_is_checked() -> None:
    with pytest.raises(ValueError, match="tensor_parallel_size"):
        kiln.LLM("tiny-llama", tensor_parallel_size=0)


def _gpu_parallel_run(mode: str, ranks: int = 2) -> tuple:
    """One parallel LLM in a fresh driver process (see the test): its tokens, twice, and what ran."""
    from kiln.ir.opset import collective

    size = {"pipeline_parallel_size": ranks} if mode == "pipeline" else {"tensor_parallel_size": ranks}
    options = kiln.CompileOptions(all_reduce=mode.split("-")[1]) if mode != "pipeline" else None
    with kiln.LLM("tiny-llama", device="cuda", dtype="float32", options=options, **size) as llm:
        got = [o.outputs[0].token_ids for o in llm.generate(PROMPTS, GREEDY)]
        again = [o.outputs[0].token_ids for o in llm.generate(PROMPTS, GREEDY)]  # replays captured graphs
        graphs, failure = llm.stats["cuda_graphs"], llm.stats["capture_failure"]
        fused_calls = collective._FAST_AR_NORM.calls if collective._FAST_AR_NORM is not None else 0
        plain_calls = collective._FAST_ALL_REDUCE.calls if collective._FAST_ALL_REDUCE is not None else 0
    return got, again, graphs, str(failure), fused_calls, plain_calls, torch.distributed.is_initialized()


def _gpu_driver(mode: str, results: object, ranks: int = 2) -> None:
    from conftest import rank_main

    rank_main(0, results, lambda: _gpu_parallel_run(mode, ranks))


def _gpu_tokens(mode: str, ranks: int) -> tuple:
    """`_gpu_parallel_run` in a fresh, non-daemon driver process (it spawns the workers)."""
    import multiprocessing as mp

    from conftest import collect_ranks, stop_ranks

    ctx = mp.get_context("spawn")
    results = ctx.Queue()
    driver = ctx.Process(target=_gpu_driver, args=(mode, results, ranks))
    driver.start()
    try:
        return collect_ranks([driver], results, 240)[0]
    finally:
        stop_ranks([driver], 30)


@pytest.mark.gpu
@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs 2 GPUs")
@pytest.mark.parametrize("mode", ["tensor-nccl", "tensor-symm_mem", "tensor-symm_mem-fused", "pipeline"])
def test_two_gpus_give_the_single_gpu_greedy_tokens(mode: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """All-reduces (NCCL or symmetric memory, or fused with the add + RMSNorm after them:
    KILN_FUSED_AR_NORM=1) inside captured CUDA graphs (tensor mode), send/recv between stages
    (pipeline mode): fp32 greedy tokens equal one GPU's; the group closes cleanly. Each mode's
    driver is a fresh process: torch numbers symmetric-memory rendezvous per process, so a
    second symmetric-memory LLM in one process falls back to NCCL (runtime/comm.py)."""
    fused = mode.endswith("-fused")
    monkeypatch.setenv("KILN_FUSED_AR_NORM", "1" if fused else "0")  # the spawned driver and workers read it
    want = [o.outputs[0].token_ids for o in kiln.LLM("tiny-llama", device="cuda", dtype="float32").generate(PROMPTS, GREEDY)]
    got, again, graphs, failure, fused_calls, plain_calls, still_up = _gpu_tokens(mode, 2)
    if mode != "pipeline":
        assert graphs > 0, failure
    if "symm_mem" in mode:  # the symmetric-memory hooks ran (no fallback to NCCL)
        assert (fused_calls if fused else plain_calls) > 0
    assert got == want and again == want
    assert not still_up


@pytest.mark.gpu
@pytest.mark.skipif(torch.cuda.device_count() < 4, reason="needs 4 GPUs")
@pytest.mark.parametrize("fused", [True, False], ids=["fused", "apart"])
def test_four_gpus_give_the_single_gpu_greedy_tokens(fused: bool, monkeypatch: pytest.MonkeyPatch) -> None:
    """tensor_parallel_size=4 over symmetric memory (tiny-llama's 2 KV heads: fewer than the ranks),
    with the all-reduce + add + RMSNorm as one kernel for the group of four (ar_add_rms_norm_n,
    KILN_FUSED_AR_NORM=all) or apart (the default for groups above two): fp32 greedy tokens equal
    one GPU's, CUDA graphs replayed."""
    monkeypatch.setenv("KILN_FUSED_AR_NORM", "all" if fused else "1")  # "1": groups of two only
    want = [o.outputs[0].token_ids for o in kiln.LLM("tiny-llama", device="cuda", dtype="float32").generate(PROMPTS, GREEDY)]
    got, again, graphs, failure, fused_calls, plain_calls, still_up = _gpu_tokens("tensor-symm_mem", 4)
    assert graphs > 0, failure
    assert (fused_calls if fused else plain_calls) > 0 and (fused_calls == 0) != fused
    assert got == want and again == want
    assert not still_up
