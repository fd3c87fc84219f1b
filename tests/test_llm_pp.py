"""kiln.LLM(pipeline_parallel_size=N): rank 0 drives and runs stage 0, a spawned worker runs the
last stage and sends the logits back (gloo on CPU). Greedy tokens equal one process's, each
stage holds only its layers' KV caches, and a dead stage is a clear error, never a hang."""

from __future__ import annotations

import time

import pytest
import torch

import kiln
from kiln.errors import PipelineParallelError

GREEDY = kiln.SamplingParams(max_tokens=12, temperature=0.0, ignore_eos=True)
PROMPTS = ["The fox and the crow", "Four score and seven years ago our fathers", "In the beginning"]

pytestmark = pytest.mark.skipif(not torch.distributed.is_available(), reason="needs torch.distributed")


def test_pipeline_parallel_llm_gives_the_single_process_greedy_tokens() -> None:
    one = kiln.LLM("tiny-llama")
    want = [o.outputs[0].token_ids for o in one.generate(PROMPTS, GREEDY)]
    layers = len(one.runner.info.sites)
    with kiln.LLM("tiny-llama", pipeline_parallel_size=2) as llm:
        # stage 0 allocated only its own layers' caches, with the driver's block count
        assert 0 < llm.runner.pool.config.num_layers < layers
        assert len(llm.runner.info.sites) == llm.runner.pool.config.num_layers
        got = [o.outputs[0].token_ids for o in llm.generate(PROMPTS, GREEDY)]
        # a second batch (prefix-cache hits, copy-on-write) on the same stages
        again = [o.outputs[0].token_ids for o in llm.generate(PROMPTS[:2], GREEDY)]
    assert got == want and again == want[:2]
    assert not torch.distributed.is_initialized()  # closed cleanly


def test_a_dead_stage_is_a_clear_error_not_a_hang() -> None:
    llm = kiln.LLM("tiny-llama", pipeline_parallel_size=2)
    try:
        worker = llm._tp.procs[0]
        worker.kill()
        worker.join(timeout=10)
        t0 = time.monotonic()
        with pytest.raises(PipelineParallelError, match=r"rank\(s\) 1 \(exit code"):
            llm.generate(PROMPTS[:1], GREEDY)  # the check before the step sees it
        # a stage that dies after that check: the step's own communication fails, it does not wait
        alive = llm._tp.launcher.dead
        llm._tp.launcher.dead = lambda: []
        with pytest.raises(PipelineParallelError, match="failed"):
            llm.generate(PROMPTS[:1], GREEDY)
        llm._tp.launcher.dead = alive
        assert time.monotonic() - t0 < 30
    finally:
        llm.close()
    assert not torch.distributed.is_initialized()


def test_parallel_sizes_are_checked() -> None:
    # (tensor x pipeline together is supported: tests/test_hybrid_parallel.py)
    with pytest.raises(ValueError, match="pipeline_parallel_size"):
        kiln.LLM("tiny-llama", pipeline_parallel_size=0)
