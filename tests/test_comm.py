"""The all-reduce hook (ir/opset/collective.set_all_reduce) and its configuration. The
symmetric-memory hook itself needs 2 GPUs (tests/test_llm_tp.py, marked gpu)."""

from __future__ import annotations

import pytest
import torch

import kiln
from kiln.ir.opset import collective
from kiln.runtime.comm import setup_all_reduce


@pytest.fixture
def two_rank_group(monkeypatch: pytest.MonkeyPatch) -> list[torch.Tensor]:
    """A pretend 2-rank group whose torch.distributed all_reduce doubles its input in place."""
    calls: list[torch.Tensor] = []

    def fake_all_reduce(t: torch.Tensor, op: object = None) -> None:
        calls.append(t)
        t.mul_(2)

    monkeypatch.setattr(collective, "_check_group", lambda op, n: n > 1)
    monkeypatch.setattr(collective.dist, "all_reduce", fake_all_reduce)
    yield calls
    collective.set_all_reduce(None)


def test_a_hook_that_takes_the_call_replaces_torch_distributed(two_rank_group: list) -> None:
    x = torch.randn(3, 8)
    collective.set_all_reduce(lambda t: t * 3)
    out = collective.all_reduce(x, group_size=2)
    assert torch.equal(out, x * 3) and not two_rank_group


def test_a_declined_call_goes_to_torch_distributed_and_never_aliases_the_input(two_rank_group: list) -> None:
    x = torch.randn(3, 8)
    keep = x.clone()
    collective.set_all_reduce(lambda t: None)
    out = collective.all_reduce(x, group_size=2)
    assert torch.equal(out, keep * 2) and torch.equal(x, keep) and len(two_rank_group) == 1


def test_a_group_of_one_never_calls_the_hook(two_rank_group: list) -> None:
    x = torch.randn(4)
    collective.set_all_reduce(lambda t: pytest.fail("hook called for a group of one"))
    assert torch.equal(collective.all_reduce(x, group_size=1), x)


def test_cpu_ranks_keep_torch_distributed() -> None:
    assert setup_all_reduce("symm_mem", torch.device("cpu")) is None
    assert collective._FAST_ALL_REDUCE is None


def test_all_reduce_option_is_checked() -> None:
    assert kiln.CompileOptions(all_reduce="auto").all_reduce == "auto"
    with pytest.raises(ValueError, match="all_reduce"):
        kiln.CompileOptions(all_reduce="mpi")


@pytest.mark.parametrize("dim", [0, 1, -1])
def test_all_gather_through_the_hook_is_a_sum_of_zero_padded_shards(two_rank_group: list, monkeypatch: pytest.MonkeyPatch,
                                                                    dim: int) -> None:
    """Rank 1 of 2: the hook sees this rank's shard at offset 1 * size along dim, zeros elsewhere;
    adding rank 0's padded shard (what the real sum does) gives the concatenation in rank order."""
    mine, theirs = torch.randn(2, 3, 5), torch.randn(2, 3, 5)
    d = dim % 3
    monkeypatch.setattr(collective.dist, "get_rank", lambda group=None: 1)
    seen: list[torch.Tensor] = []

    def hook(padded: torch.Tensor) -> torch.Tensor:
        seen.append(padded.clone())
        other = torch.zeros_like(padded)
        other.narrow(d, 0, theirs.shape[d]).copy_(theirs)
        return padded + other

    collective.set_all_reduce(hook)
    out = collective._all_gather(mine, dim=dim, group_size=2)
    assert torch.equal(out, torch.cat([theirs, mine], d)) and not two_rank_group
    assert torch.count_nonzero(seen[0].narrow(d, 0, mine.shape[d])) == 0  # rank 0's slot was zeros


def test_a_declined_all_gather_goes_to_torch_distributed(two_rank_group: list, monkeypatch: pytest.MonkeyPatch) -> None:
    gathered: list = []

    def fake_all_gather(parts: list, x: torch.Tensor, **kw: object) -> None:
        gathered.append(x)
        for p in parts:
            p.copy_(x)

    monkeypatch.setattr(collective.dist, "all_gather", fake_all_gather)
    monkeypatch.setattr(collective.dist, "get_rank", lambda group=None: 0)
    collective.set_all_reduce(lambda t: None)
    x = torch.randn(2, 4)
    assert torch.equal(collective._all_gather(x, dim=1, group_size=2), torch.cat([x, x], 1)) and len(gathered) == 1


# --- symmetric-memory group names, 2 ranks on gloo ------------------------------------------------

def _symm_group_rank(rank: int, port: int, results: object) -> None:
    from conftest import rank_main

    rank_main(rank, results, lambda: _symm_groups(rank, port))


def _symm_groups(rank: int, port: int) -> tuple:
    import torch.distributed as dist

    from kiln.runtime.comm import rendezvous_counts_agree, symm_group
    from kiln.runtime.distributed import init_distributed

    init_distributed(rank, 2, backend="gloo", master_port=port, timeout_s=30)
    cpu = torch.device("cpu")
    world = dist.group.WORLD.group_name
    fresh = symm_group(cpu, set())  # no rank used the name: the tensor group itself
    # only rank 0 used the world's name (a long-lived driver; the worker is new): both move on
    moved = symm_group(cpu, {world} if rank == 0 else set())
    # rank 1 used the moved-to name too: both move again, to the same new group
    again = symm_group(cpu, {world} | ({moved.group_name} if rank == 1 else set()))
    x = torch.full((4,), float(rank + 1))
    dist.all_reduce(x, group=again)
    # rendezvous counters: equal histories agree; a driver that counted past a fresh worker does not
    same = rendezvous_counts_agree(cpu, 3)
    ahead = rendezvous_counts_agree(cpu, 5 if rank == 0 else 0)
    return world, fresh.group_name, moved.group_name, again.group_name, x.tolist(), same, ahead


@pytest.mark.skipif(not torch.distributed.is_available(), reason="needs torch.distributed")
def test_symmetric_memory_never_reuses_a_group_name_any_rank_used() -> None:
    """torch keeps a name's symmetric-memory store for the process's life, and a re-made process
    group reuses names: the hooks get a group whose name no rank used, the same group on every rank.
    Ranks whose processes made different numbers of rendezvous before are told apart at once."""
    import multiprocessing as mp

    from kiln.runtime.distributed import free_port

    from conftest import collect_ranks, stop_ranks

    ctx = mp.get_context("spawn")
    results = ctx.Queue()
    port = free_port()
    procs = [ctx.Process(target=_symm_group_rank, args=(r, port, results), daemon=True) for r in range(2)]
    for p in procs:
        p.start()
    try:
        got = collect_ranks(procs, results, 120)
    finally:
        stop_ranks(procs, 5)
    assert got[0] == got[1]  # every rank ends on the same groups
    world, fresh, moved, again, summed, same, ahead = got[0]
    assert same == (True, "")
    assert ahead[0] is False and "0 to 5" in ahead[1] and "own process" in ahead[1]
    assert fresh == world
    assert len({world, moved, again}) == 3
    assert summed == [3.0] * 4  # the new group is a working group of both ranks
