"""runtime/cudagraph.GraphRunner when a capture fails (on CPU: CUDA's graph API replaced by one
that raises, as an uncapturable op would): it says so once, records why, and from then on runs
the plan uncaptured with the right results."""

from __future__ import annotations

import contextlib
import warnings

import pytest
import torch

from kiln.runtime import cudagraph


@pytest.fixture
def failing_capture(monkeypatch: pytest.MonkeyPatch) -> None:
    @contextlib.contextmanager
    def graph(*args: object, **kwargs: object):  # noqa: ANN202
        assert kwargs.get("capture_error_mode") == "thread_local"  # other threads may not break it
        raise RuntimeError("operation not permitted when stream is capturing\nmore detail")
        yield  # pragma: no cover

    monkeypatch.setattr(torch.cuda, "synchronize", lambda *a: None)
    monkeypatch.setattr(torch.cuda, "CUDAGraph", lambda: object())
    monkeypatch.setattr(torch.cuda, "graph_pool_handle", lambda: None)
    monkeypatch.setattr(torch.cuda, "graph", graph)


def test_a_failed_capture_warns_once_records_why_and_runs_uncaptured(failing_capture: None) -> None:
    calls = []

    def plan(x: torch.Tensor) -> tuple:
        calls.append(x)
        return (x * 2 + 1,)

    runner = cudagraph.GraphRunner(plan, capture_after=2)
    x = torch.randn(4, 3)
    assert torch.equal(runner(x)[0], x * 2 + 1)  # first call of the signature: uncaptured
    with pytest.warns(RuntimeWarning, match="CUDA-graph capture failed.*not permitted when stream is capturing"):
        assert torch.equal(runner(x)[0], x * 2 + 1)  # the capture fails: the plan runs as it is
    assert runner.disabled and runner.failure.startswith("RuntimeError: operation not permitted")
    assert "\n" not in runner.failure and runner.captures == 0
    y = torch.randn(2, 2)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no second warning
        assert torch.equal(runner(y)[0], y * 2 + 1) and torch.equal(runner(x)[0], x * 2 + 1)
    assert len(calls) == 4  # each of the 4 calls ran the plan once (the failed capture ran nothing)


class _FakeGraph:
    """Stands in for torch.cuda.CUDAGraph on CPU: the capture runs the function once (its outputs
    stay), a replay does nothing (every call here repeats its signature's inputs)."""

    live: list["_FakeGraph"] = []

    def __init__(self) -> None:
        self.reset_calls = 0
        _FakeGraph.live.append(self)

    def replay(self) -> None:
        pass

    def reset(self) -> None:
        self.reset_calls += 1


def test_release_destroys_every_graph_and_later_calls_run_uncaptured(monkeypatch: pytest.MonkeyPatch) -> None:
    """Before a tensor-parallel group is torn down its captured graphs go (a live graph holding NCCL
    calls blocks the communicator's destroy): release resets each one and stops capturing."""
    captured: list = []

    @contextlib.contextmanager
    def graph(g: _FakeGraph, **kwargs: object):  # noqa: ANN202
        captured.append(g)
        yield

    _FakeGraph.live = []
    monkeypatch.setattr(torch.cuda, "synchronize", lambda *a: None)
    monkeypatch.setattr(torch.cuda, "CUDAGraph", _FakeGraph)
    monkeypatch.setattr(torch.cuda, "graph_pool_handle", lambda: None)
    monkeypatch.setattr(torch.cuda, "graph", graph)
    calls = []

    def plan(x: torch.Tensor) -> tuple:
        calls.append(x.shape)
        return (x * 2 + 1,)

    runner = cudagraph.GraphRunner(plan, capture_after=2)
    a, b = torch.randn(4, 3), torch.randn(2, 5)
    for x in (a, a, b, b):
        assert torch.equal(runner(x)[0], x * 2 + 1)
    assert runner.captures == 2 and len(runner.graphs) == 2
    runner.release()
    assert runner.disabled and not runner.graphs
    assert [g.reset_calls for g in _FakeGraph.live] == [1, 1]
    n = len(calls)
    assert torch.equal(runner(a)[0], a * 2 + 1) and len(calls) == n + 1  # the plan itself, no replay
    runner.release()  # idempotent
    assert [g.reset_calls for g in _FakeGraph.live] == [1, 1]
