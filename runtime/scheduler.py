"""The continuous-batching scheduler: which sequences run in the next step, and how many tokens.

Each step is one flat batch under a token budget (`max_num_batched_tokens`): first every running
sequence's next chunk (one token for a decode, more for a chunked prefill still in progress),
then waiting sequences, admitted first come first served while blocks and budget last, their
prompts possibly cut into chunks (chunked prefill). A running sequence that cannot get a block
preempts the most recently admitted running sequence (recomputation: its blocks are freed, it
goes back to the front of the waiting queue with prompt + output as its new prompt, and the
prefix cache usually finds most of its blocks again). Requests that could never fit are refused
at admission (`BlockAllocator.check_fits`), so the loop always makes progress: nothing hangs and
no request is lost.

Invariant at the start of every step: for each running sequence, the allocator holds exactly
`num_computed` tokens for it (the KV of everything before its next token is in the cache).
"""

from __future__ import annotations

import enum
from collections import deque
from dataclasses import dataclass, field
from typing import Any

from .blocks import BlockAllocator, CopyOp
from .model_runner import SeqChunk
from .sampling import SamplingParams


class Status(enum.Enum):
    WAITING = "waiting"
    RUNNING = "running"
    FINISHED = "finished"


@dataclass(slots=True)
class Sequence:
    """One sample of a request: prompt + generated tokens and where it stands."""

    seq_id: int
    request_id: str
    index: int  # which of the request's n samples
    prompt: list[int]
    params: SamplingParams
    generator: Any = None  # torch.Generator for seeded sampling, else None
    output: list[int] = field(default_factory=list)
    num_computed: int = 0  # tokens whose K/V the cache holds
    status: Status = Status.WAITING
    finish_reason: str | None = None  # "stop" | "length" | "abort"
    stop_reason: int | str | None = None  # the stop token id or string that ended it
    text: str = ""  # detokenized output (after stop-string trimming once finished)
    streamed: int = 0  # characters of `text` already handed to a stream
    logprobs: list = field(default_factory=list)
    preemptions: int = 0

    text_stale: bool = False  # `text` lags `output` (decoded lazily: see Engine._text)
    keep: bool = False  # at finish, keep the KV blocks pinned (a chat turn: see Scheduler.pins)
    resume: int | None = None  # a pin whose cached tokens this sequence's prompt extends
    reused: int = 0  # prompt tokens not computed at admission (a resumed pin or prefix-cache hits)

    @property
    def tokens(self) -> list[int]:
        return self.prompt + self.output

    @property
    def num_tokens(self) -> int:
        return len(self.prompt) + len(self.output)

    def token_slice(self, start: int, stop: int) -> list[int]:
        """tokens[start:stop] without building prompt + output (the per-step path)."""
        p = len(self.prompt)
        if start >= p:
            return self.output[start - p:stop - p]
        return self.prompt[start:stop] + self.output[:max(0, stop - p)]


@dataclass(slots=True)
class ScheduledChunk:
    seq: Sequence
    chunk: SeqChunk
    num_new: int


@dataclass
class StepPlan:
    """The next step: chunks in batch order, copy-on-write copies to perform first."""

    chunks: list[ScheduledChunk]
    copies: list[CopyOp]
    preempted: list[Sequence]


class Scheduler:
    """Waiting and running queues over one BlockAllocator."""

    def __init__(self, allocator: BlockAllocator, *, max_num_batched_tokens: int = 2048, max_num_seqs: int = 64):
        if max_num_batched_tokens < 1 or max_num_seqs < 1:
            raise ValueError("max_num_batched_tokens and max_num_seqs must be >= 1")
        self.alloc = allocator
        self.max_tokens = max_num_batched_tokens
        self.max_seqs = max_num_seqs
        self.waiting: deque[Sequence] = deque()
        self.running: list[Sequence] = []
        # Pinned KV: a finished sequence with `keep` leaves its block table in the allocator under
        # its seq_id (the pin id) with the tokens the cache holds; a later sequence with `resume`
        # takes the table over and computes only what follows (no recomputation, not even of a
        # partly filled last block). Pins are released oldest first whenever blocks run short,
        # so they never block progress (their full blocks stay in the prefix cache).
        self.pins: dict[int, list[int]] = {}

    def add(self, seq: Sequence) -> None:
        self.waiting.append(seq)

    def has_work(self) -> bool:
        return bool(self.waiting or self.running)

    def finish(self, seq: Sequence, reason: str) -> None:
        """Take a sequence out of the queues and free its blocks."""
        seq.status, seq.finish_reason = Status.FINISHED, reason
        if seq in self.running:
            self.running.remove(seq)
            if seq.keep and reason != "abort":
                self.pins[seq.seq_id] = seq.token_slice(0, seq.num_computed)
            else:
                self.alloc.free(seq.seq_id)
        elif seq in self.waiting:
            self.waiting.remove(seq)
        if seq.resume is not None and seq.resume in self.pins:  # never taken over: let it go
            self.unpin(seq.resume)

    def unpin(self, pin: int) -> None:
        """Release a pinned block table (its full blocks stay in the prefix cache)."""
        if self.pins.pop(pin, None) is not None:
            self.alloc.free(pin)

    def _release_a_pin(self, keep: int | None = None) -> bool:
        """Free the oldest pin other than `keep`; False if there is none."""
        for pin in self.pins:
            if pin != keep:
                self.unpin(pin)
                return True
        return False

    def schedule(self) -> StepPlan:
        budget = self.max_tokens
        chunks: list[ScheduledChunk] = []
        copies: list[CopyOp] = []
        preempted: list[Sequence] = []
        i = 0
        while i < len(self.running) and budget > 0:
            seq = self.running[i]
            n = min(seq.num_tokens - seq.num_computed, budget)
            if n <= 0:  # nothing to compute (cannot happen for a live sequence); keep it honest
                i += 1
                continue
            while not self.alloc.can_append(seq.seq_id, n):
                if self._release_a_pin():
                    continue
                victim = self.running[-1]
                self._preempt(victim)
                preempted.append(victim)
                if victim is seq:
                    break
            if seq.status is not Status.RUNNING:
                break  # it preempted itself: the pool is full of earlier sequences
            copies += self.alloc.append_tokens(seq.seq_id, seq.token_slice(seq.num_computed, seq.num_computed + n))
            chunks.append(self._chunk(seq, n))
            budget -= n
            i += 1
        while self.waiting and budget > 0 and len(self.running) < self.max_seqs and not preempted:
            seq = self.waiting[0]
            tokens = seq.tokens
            if seq.resume in self.pins:
                held = len(self.pins[seq.resume])
                n = min(len(tokens) - held, budget)
                if not self.alloc.can_append(seq.resume, n):
                    if self._release_a_pin(keep=seq.resume):
                        continue
                    self.unpin(seq.resume)  # the pool is needed: recompute through the prefix cache
                    continue
                del self.pins[seq.resume]
                self.alloc.rename(seq.resume, seq.seq_id)
                copies += self.alloc.append_tokens(seq.seq_id, tokens[held:held + n])
                self.waiting.popleft()
                seq.status, seq.num_computed, seq.reused = Status.RUNNING, held, held
                self.running.append(seq)
                chunks.append(self._chunk(seq, n))
                budget -= n
                continue
            cached = min(self.alloc.match_prefix(tokens), len(tokens) - 1)
            reserve = min(len(tokens), cached + budget)
            if not self.alloc.can_add_sequence(tokens, reserve):
                if self._release_a_pin():
                    continue
                break
            blocks = self.alloc.add_sequence(seq.seq_id, tokens, num_tokens=reserve)
            self.waiting.popleft()
            seq.status = Status.RUNNING
            seq.num_computed = seq.reused = blocks.num_cached_tokens
            self.running.append(seq)
            n = blocks.num_tokens - seq.num_computed
            chunks.append(self._chunk(seq, n))
            budget -= n
        return StepPlan(chunks, copies, preempted)

    def _chunk(self, seq: Sequence, n: int) -> ScheduledChunk:
        start = seq.num_computed
        table = list(self.alloc.sequence(seq.seq_id).block_ids)
        want = start + n == seq.num_tokens
        return ScheduledChunk(seq, SeqChunk(seq.token_slice(start, start + n), start, table, want), n)

    def _preempt(self, seq: Sequence) -> None:
        """Recomputation: free its blocks, back to the front of the waiting queue."""
        self.running.remove(seq)
        self.alloc.preempt(seq.seq_id)
        seq.status = Status.WAITING
        seq.num_computed = 0
        seq.preemptions += 1
        self.waiting.appendleft(seq)
