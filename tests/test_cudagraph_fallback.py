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
