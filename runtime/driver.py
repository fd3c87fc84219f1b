"""A thread-safe front for the (single-threaded) `Engine`: one background thread steps it.

    driver = EngineDriver(llm.engine)              # starts the driver thread
    handle = driver.submit(prompt_ids, params)     # from any thread
    for update in handle:                          # `Delta`s as tokens arrive
        print(update.text, end="")
    print(handle.output)                           # the final RequestOutput
    driver.shutdown()

Threading model: the `Engine` is touched by exactly one thread, the driver thread. Other threads
talk to it only through a command queue (`submit`, `abort`, `shutdown`) and read results from
each request's own event queue, so no lock ever guards engine internals. The driver thread
blocks on the command queue while the engine is idle and otherwise alternates "apply every
pending command" with one `engine.step()`, after which it publishes to each live request the
text and tokens that are new since its last publication.

An accepted request first gets `Started`. Every submitted request gets exactly one terminal
event, `Done` (its final `RequestOutput`) or `Failed` (the exception): an invalid request fails
at admission, an exception inside a step fails every request that was in the engine (the step
may have left them half-updated), and `shutdown` fails whatever is still pending. A waiter therefore never hangs, and if the driver
thread itself were to die, waiters notice (`DriverStopped`) within one poll interval.

The number of requests admitted and not yet finished is bounded (`max_pending`); `submit`
beyond it raises `QueueFullError` at once, which a server answers with 503.
"""

from __future__ import annotations

import itertools
import queue
import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

from ..errors import KilnError
from .engine import Engine, RequestOutput
from .sampling import SamplingParams
from .scheduler import Status

_POLL_S = 0.25  # how often a waiter re-checks that the driver thread is alive


class QueueFullError(KilnError):
    """`max_pending` requests are already in flight; try again later."""


class DriverStopped(KilnError):
    """The driver was shut down (or its thread died) before the request finished."""


@dataclass(frozen=True, slots=True)
class Started:
    """The engine accepted the request (it passed admission); deltas follow."""

    request: RequestHandle


@dataclass(frozen=True, slots=True)
class Delta:
    """New output of one sample (`index`) since the previous `Delta` of the same sample.

    `text` is safe to show (never characters a stop string may still claim); `token_ids` and
    `logprobs` are the tokens sampled since; `finish_reason` is set on the sample's last delta.
    """

    request: RequestHandle
    index: int
    text: str
    token_ids: tuple[int, ...]
    logprobs: tuple
    finish_reason: str | None = None


@dataclass(frozen=True, slots=True)
class Done:
    """The request finished (every sample); `output` is its final `RequestOutput`."""

    request: RequestHandle
    output: RequestOutput


@dataclass(frozen=True, slots=True)
class Failed:
    """The request failed: at admission (bad request), in a step, or at shutdown."""

    request: RequestHandle
    error: BaseException


Event = Started | Delta | Done | Failed


@dataclass(eq=False)
class RequestHandle:
    """One submitted request as its submitter sees it: iterate for `Delta`s, then read `output`.

    Several handles may share one `events` queue (pass `events=` to `submit`) so that one
    consumer can follow many requests; each event names its handle in `event.request`.
    """

    request_id: str
    prompt_token_ids: list[int]
    params: SamplingParams
    events: queue.Queue
    _driver: EngineDriver
    output: RequestOutput | None = None
    error: BaseException | None = None
    # driver-thread bookkeeping: tokens of each sample already published
    _sent: list[int] = field(default_factory=list)

    @property
    def finished(self) -> bool:
        return self.output is not None or self.error is not None

    def next_event(self, timeout: float | None = None) -> Event | None:
        """The next event of this handle's queue; None if `timeout` passes without one.

        Raises `DriverStopped` if the driver thread is gone and nothing more can come.
        """
        return self._driver.next_event(self.events, timeout)

    def __iter__(self) -> Iterator[Delta]:
        """Yield `Delta`s until the request ends; raise its error if it failed.

        Only for a handle with its own events queue (the default).
        """
        while True:
            event = self.next_event(_POLL_S)
            if isinstance(event, Delta):
                yield event
            elif isinstance(event, Done):
                return
            elif isinstance(event, Failed):
                raise event.error

    def result(self) -> RequestOutput:
        """Wait for the final output (discarding deltas); raise the request's error if it failed."""
        for _ in self:
            pass
        assert self.output is not None
        return self.output


class EngineDriver:
    """Owns an `Engine` on a background thread; `submit`/`abort` are safe from any thread."""

    def __init__(self, engine: Engine, *, max_pending: int = 64, name: str = "kiln-engine"):
        if max_pending < 1:
            raise ValueError(f"max_pending must be >= 1, got {max_pending}")
        self.engine = engine
        self.max_pending = max_pending
        self._commands: queue.SimpleQueue = queue.SimpleQueue()
        self._ids = itertools.count()
        self._pending = 0  # submitted, not yet terminal (guarded by _lock; engine state is not)
        self._lock = threading.Lock()
        self._stopping = False
        self._live: dict[str, RequestHandle] = {}  # driver thread only
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    # ---- any thread -------------------------------------------------------------------------
    def submit(self, prompt_ids: Sequence[int], params: SamplingParams, *, prompt: str | None = None,
               events: queue.Queue | None = None) -> RequestHandle:
        """Queue a request; its events arrive on `events` (a new queue by default).

        Raises `QueueFullError` when `max_pending` requests are in flight and `DriverStopped`
        after shutdown; anything wrong with the request itself arrives as its `Failed` event.
        """
        with self._lock:
            if self._stopping or not self._thread.is_alive():
                raise DriverStopped("the engine driver is shut down")
            if self._pending >= self.max_pending:
                raise QueueFullError(f"{self._pending} requests are in flight (max_pending={self.max_pending}); retry later")
            self._pending += 1
            handle = RequestHandle(f"drv-{next(self._ids)}", list(prompt_ids), params,
                                   events if events is not None else queue.Queue(), self)
            # under the lock: an "add" is never queued behind the "stop" of shutdown()
            self._commands.put(("add", handle, prompt))
        return handle

    def abort(self, handle: RequestHandle) -> None:
        """Stop generating for `handle` (e.g. its client went away); it still gets a `Done`."""
        self._commands.put(("abort", handle, None))

    def generate(self, prompt_ids: Sequence[int], params: SamplingParams, *, prompt: str | None = None) -> RequestOutput:
        """Submit and wait for the final output."""
        return self.submit(prompt_ids, params, prompt=prompt).result()

    @property
    def num_pending(self) -> int:
        with self._lock:
            return self._pending

    @property
    def alive(self) -> bool:
        return self._thread.is_alive()

    def next_event(self, events: queue.Queue, timeout: float | None = None) -> Event | None:
        """Take one event from `events` (a queue given to `submit`), waiting at most `timeout`."""
        waited = 0.0
        while True:
            step = _POLL_S if timeout is None else min(_POLL_S, max(timeout - waited, 0.0))
            try:
                return events.get(timeout=step) if step > 0 else events.get_nowait()
            except queue.Empty:
                pass
            if not self._thread.is_alive():  # the thread publishes before it exits: drain first
                try:
                    return events.get_nowait()
                except queue.Empty:
                    raise DriverStopped("the engine driver thread has stopped") from None
            waited += step
            if timeout is not None and waited >= timeout:
                return None

    def shutdown(self, timeout: float | None = 30.0) -> None:
        """Fail every unfinished request with `DriverStopped` and join the driver thread."""
        with self._lock:
            self._stopping = True
        self._commands.put(("stop", None, None))
        self._thread.join(timeout)

    # ---- driver thread ----------------------------------------------------------------------
    def _run(self) -> None:
        try:
            while True:
                # Idle: block until a command comes. Busy: take what is there and step.
                if not self._apply(self._commands.get()):
                    return
                while True:
                    while True:
                        try:
                            cmd = self._commands.get_nowait()
                        except queue.Empty:
                            break
                        if not self._apply(cmd):
                            return
                    if not self._live:
                        break
                    self._step()
        finally:
            stopped = DriverStopped("the engine driver was shut down")
            self._fail_live(stopped)
            self._fail_queued(stopped)

    def _apply(self, cmd: tuple) -> bool:
        """Apply one command; False means stop."""
        kind, handle, prompt = cmd
        if kind == "stop":
            return False
        if kind == "add":
            try:
                self.engine.add_request(handle.prompt_token_ids, handle.params, prompt=prompt, request_id=handle.request_id)
            except Exception as exc:  # invalid or too large: only this request fails
                self._finish(handle, Failed(handle, exc))
                return True
            handle._sent = [0] * handle.params.n
            self._live[handle.request_id] = handle
            handle.events.put(Started(handle))
        elif kind == "abort" and handle.request_id in self._live:
            self.engine.abort(handle.request_id)
            self._publish(handle)
        return True

    def _step(self) -> None:
        try:
            self.engine.step()
        except Exception as exc:  # the step may have half-updated any request: fail them all
            self._fail_live(exc)
            return
        for handle in list(self._live.values()):
            self._publish(handle)

    def _publish(self, handle: RequestHandle) -> None:
        """Send `handle` its new deltas; when every sample is done, its `Done`."""
        req = self.engine.requests[handle.request_id]
        for seq in req.seqs:
            sent = handle._sent[seq.index]
            if sent < 0:  # finished, and its last delta went out
                continue
            text = self.engine.stream_delta(seq)
            done = seq.status is Status.FINISHED
            if text or len(seq.output) > sent or done:
                lps = tuple(seq.logprobs[sent:]) if seq.params.logprobs is not None else ()
                handle.events.put(Delta(handle, seq.index, text, tuple(seq.output[sent:]), lps,
                                        seq.finish_reason if done else None))
                handle._sent[seq.index] = -1 if done else len(seq.output)
        if all(s.status is Status.FINISHED for s in req.seqs):
            output = self.engine.output(handle.request_id)
            self.engine.release(handle.request_id)
            del self._live[handle.request_id]
            self._finish(handle, Done(handle, output))

    def _finish(self, handle: RequestHandle, event: Done | Failed) -> None:
        if isinstance(event, Done):
            handle.output = event.output
        else:
            handle.error = event.error
        with self._lock:
            self._pending -= 1
        handle.events.put(event)

    def _fail_live(self, error: BaseException) -> None:
        """Fail every request in the engine (after a failed step, or at shutdown)."""
        for rid, handle in list(self._live.items()):
            try:
                self.engine.abort(rid)
                self.engine.release(rid)
            except Exception:  # the engine may be broken; the handle must still hear about it
                pass
            del self._live[rid]
            self._finish(handle, Failed(handle, error))

    def _fail_queued(self, error: BaseException) -> None:
        """Fail requests submitted but never applied (at shutdown)."""
        while True:
            try:
                kind, handle, _ = self._commands.get_nowait()
            except queue.Empty:
                return
            if kind == "add":
                self._finish(handle, Failed(handle, error))
