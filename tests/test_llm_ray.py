"""kiln.LLM(tensor_parallel_size=2, distributed_executor_backend="ray") on a private Ray runtime
started on loopback by this module: greedy tokens equal one process's; a killed actor is a clear
error, never a hang. Ray only places the workers; torch.distributed (gloo) carries the steps."""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest
import torch

import kiln
from kiln.errors import TensorParallelError

ray = pytest.importorskip("ray", reason="needs ray (pip install 'kiln[ray]')")

GREEDY = kiln.SamplingParams(max_tokens=12, temperature=0.0, ignore_eos=True)
PROMPTS = ["The fox and the crow", "Four score and seven years ago our fathers", "In the beginning"]

pytestmark = pytest.mark.skipif(not torch.distributed.is_available(), reason="needs torch.distributed")


@pytest.fixture(scope="module")
def ray_cluster() -> Iterator[None]:
    """One loopback Ray runtime for the module (starting Ray takes seconds)."""
    from kiln.runtime.tp_ray import start_local_ray

    if ray.is_initialized():
        pytest.skip("a Ray runtime is already running in this process")
    start_local_ray(num_cpus=4)  # one CPU per rank of the 2 x 2 test
    try:
        yield
    finally:
        ray.shutdown()


@pytest.fixture(scope="module")
def single_process_tokens() -> list[list[int]]:
    return [o.outputs[0].token_ids for o in kiln.LLM("tiny-llama").generate(PROMPTS, GREEDY)]


def test_ray_runtime_is_bound_to_loopback(ray_cluster: None) -> None:
    assert ray.util.get_node_ip_address() == "127.0.0.1"


def test_ray_actors_give_the_single_process_greedy_tokens(ray_cluster: None, single_process_tokens: list) -> None:
    with kiln.LLM("tiny-llama", tensor_parallel_size=2, distributed_executor_backend="ray") as llm:
        assert len(llm._tp.launcher.actors) == 1
        got = [o.outputs[0].token_ids for o in llm.generate(PROMPTS, GREEDY)]
        again = [o.outputs[0].token_ids for o in llm.generate(PROMPTS[:2], GREEDY)]  # prefix hits, copy-on-write
    assert got == single_process_tokens and again == single_process_tokens[:2]
    assert not torch.distributed.is_initialized()  # closed cleanly
    assert ray.is_initialized()  # the test's runtime is not the LLM's to shut down
    assert all(pg["state"] == "REMOVED" for pg in ray.util.placement_group_table().values())  # bundles released


def test_ray_places_a_tensor_by_pipeline_group(ray_cluster: None, single_process_tokens: list) -> None:
    """Both sizes through Ray: 4 ranks (2 stages of 2 shards), three actors beside the driver."""
    with kiln.LLM("tiny-llama", tensor_parallel_size=2, pipeline_parallel_size=2, distributed_executor_backend="ray") as llm:
        assert len(llm._tp.launcher.actors) == 3 and llm._tp.mode == "hybrid"
        got = [o.outputs[0].token_ids for o in llm.generate(PROMPTS, GREEDY)]
    assert got == single_process_tokens
    assert not torch.distributed.is_initialized()
    assert all(pg["state"] == "REMOVED" for pg in ray.util.placement_group_table().values())


def test_a_killed_actor_is_a_clear_error_not_a_hang(ray_cluster: None) -> None:
    llm = kiln.LLM("tiny-llama", tensor_parallel_size=2, distributed_executor_backend="ray")
    try:
        launcher = llm._tp.launcher
        ray.kill(launcher.actors[0])
        ray.wait(launcher.loops, timeout=30)  # the kill has landed
        t0 = time.monotonic()
        with pytest.raises(TensorParallelError, match="rank.* 1 .*ActorDiedError"):
            llm.generate(PROMPTS[:1], GREEDY)
        assert time.monotonic() - t0 < 30
    finally:
        llm.close()
    assert not torch.distributed.is_initialized()


def test_unknown_backend_is_rejected() -> None:
    with pytest.raises(ValueError, match="distributed_executor_backend"):
        kiln.LLM("tiny-llama", tensor_parallel_size=2, distributed_executor_backend="slurm")
