"""The generation engine: requests in, tokens out, one scheduled flat batch per step.

`Engine.step()` asks the scheduler for the next batch, performs the allocator's copy-on-write
copies, runs the paged plan once, samples one token for every sequence whose last new token's
logits came back, and finishes sequences on EOS, stop tokens, stop strings, `max_tokens` or the
model's length limit. Detokenization is incremental per sequence; stop strings are trimmed from
the text (as vLLM does) and a stream never shows characters a stop string may still claim.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from typing import Any

import torch

from ..errors import KilnError
from .blocks import BlockAllocator
from .model_runner import PagedModelRunner
from .sampling import SamplingParams, find_stop, safe_text_len, sample
from .scheduler import Scheduler, Sequence, Status


@dataclass
class CompletionOutput:
    """One sample of a request (vLLM's field names)."""

    index: int
    text: str
    token_ids: list[int]
    finish_reason: str | None  # "stop" | "length" | "abort" | None while running
    stop_reason: int | str | None = None
    logprobs: list | None = None


@dataclass
class RequestOutput:
    request_id: str
    prompt: str | None
    prompt_token_ids: list[int]
    outputs: list[CompletionOutput]
    finished: bool
    metrics: dict = field(default_factory=dict)


@dataclass
class _Request:
    request_id: str
    prompt: str | None
    prompt_ids: list[int]
    params: SamplingParams
    seqs: list[Sequence]


class Engine:
    """Owns the runner, the allocator and the scheduler; `add_request` then `step` until done."""

    def __init__(
        self, runner: PagedModelRunner, *, tokenizer: Any = None, eos_token_ids: tuple[int, ...] = (),
        max_model_len: int, enable_prefix_caching: bool = True, max_num_batched_tokens: int = 2048, max_num_seqs: int = 64,
    ):
        self.runner = runner
        self.tokenizer = tokenizer
        self.eos = tuple(eos_token_ids)
        self.max_model_len = max_model_len
        self.alloc = BlockAllocator(runner.num_blocks, runner.block_size, enable_prefix_caching=enable_prefix_caching)
        self.scheduler = Scheduler(self.alloc, max_num_batched_tokens=max_num_batched_tokens, max_num_seqs=max_num_seqs)
        self.requests: dict[str, _Request] = {}
        self._seq_ids = itertools.count()
        self._req_ids = itertools.count()
        self.steps = 0

    # ---- requests ---------------------------------------------------------------------------
    def add_request(self, prompt_ids: list[int], params: SamplingParams, *, prompt: str | None = None, request_id: str | None = None,
                    keep: bool = False, resume: int | None = None) -> str:
        """Queue a request; raises (changing nothing) if it is invalid or could never fit.

        `keep` (n = 1 only): when the request finishes, its KV blocks stay pinned; `pinned(id)`
        gives the pin. `resume`: a pin whose cached tokens `prompt_ids` extends; the request then
        computes only the tokens after them (a chat's next turn). A pin that does not match, or
        that memory pressure released meanwhile, is ignored (the prefix cache still helps)."""
        if not isinstance(params, SamplingParams):
            raise TypeError(f"params must be kiln.SamplingParams, got {type(params).__name__}")
        if not prompt_ids:
            raise ValueError("the prompt is empty: give at least one token")
        vocab = self.runner.info.vocab_size
        bad = [t for t in prompt_ids if not isinstance(t, int) or not 0 <= t < vocab]
        if bad:
            raise ValueError(f"prompt token ids must be ints in [0, {vocab}); got {bad[:5]}")
        if len(prompt_ids) >= self.max_model_len:
            raise ValueError(f"the prompt has {len(prompt_ids)} tokens but max_model_len is {self.max_model_len}; shorten it or raise max_model_len")
        max_new = min(params.max_tokens, self.max_model_len - len(prompt_ids))
        # each sample is its own sequence and must fit alone (the pool need not hold all n at
        # once: the scheduler admits them as blocks free up)
        self.alloc.check_fits(len(prompt_ids), max_new)
        rid = request_id if request_id is not None else f"req-{next(self._req_ids)}"
        if rid in self.requests:
            raise ValueError(f"request id {rid!r} is already in use")
        if keep and params.n != 1:
            raise ValueError("keep=True (pinning a request's KV cache) needs n=1")
        pins = self.scheduler.pins
        if resume is not None and resume in pins:
            held = pins[resume]
            if not (len(held) < len(prompt_ids) and prompt_ids[:len(held)] == held):
                self.scheduler.unpin(resume)  # the prompt does not extend it: of no use any more
                resume = None
        seqs = []
        for i in range(params.n):
            gen = None
            if params.seed is not None:
                gen = torch.Generator(device=self.runner.device).manual_seed(params.seed + i)
            seqs.append(Sequence(next(self._seq_ids), rid, i, list(prompt_ids), params, gen, keep=keep,
                                 resume=resume if resume in pins else None))
        self.requests[rid] = _Request(rid, prompt, list(prompt_ids), params, seqs)
        for s in seqs:
            self.scheduler.add(s)
        return rid

    def abort(self, request_id: str) -> None:
        req = self.requests.get(request_id)
        if req is None:
            return
        for s in req.seqs:
            if s.status is not Status.FINISHED:
                self.scheduler.finish(s, "abort")

    def has_unfinished(self) -> bool:
        return self.scheduler.has_work()

    # ---- the step ---------------------------------------------------------------------------
    def step(self) -> set[str]:
        """Run one batch; returns the ids of the requests that got a token (outputs are built
        only when asked for, with `output`)."""
        plan = self.scheduler.schedule()
        if not plan.chunks:
            if self.scheduler.has_work():
                raise KilnError("the scheduler found nothing to run with requests pending (no free KV blocks?)")
            return set()
        self.runner.copy_blocks(plan.copies)
        logits = self.runner.execute([c.chunk for c in plan.chunks])
        self.steps += 1
        wanting = [c for c in plan.chunks if c.chunk.want_logits]
        for c in plan.chunks:
            c.seq.num_computed += c.num_new
        if wanting:
            seqs = [c.seq for c in wanting]
            out = sample(logits, [s.params for s in seqs], [s.generator for s in seqs],
                         [s.tokens for s in seqs] if any(s.params.repetition_penalty != 1.0 for s in seqs) else None,
                         [s.output for s in seqs] if any(s.params.presence_penalty or s.params.frequency_penalty for s in seqs) else None)
            for s, tok, lp in zip(seqs, out.token_ids.tolist(), out.logprobs):
                self._append(s, tok, lp)
        return {c.seq.request_id for c in wanting}

    def _append(self, s: Sequence, tok: int, lp: Any) -> None:
        s.output.append(tok)
        if s.params.logprobs is not None:
            s.logprobs.append(lp)
        p = s.params
        reason: str | None = None
        if tok in p.stop_token_ids:
            reason, s.stop_reason = "stop", tok
        elif not p.ignore_eos and tok in self.eos:
            reason, s.stop_reason = "stop", tok
        at_length = len(s.output) >= p.max_tokens or s.num_tokens >= self.max_model_len
        # Text is decoded now only when stop strings need it or the sequence ends; otherwise
        # lazily by `output` / `stream_delta` (no O(length) decode per generated token).
        if self.tokenizer is not None and (p.stop or reason is not None or at_length):
            keep = s.output if reason is None or s.stop_reason not in self.eos else s.output[:-1]
            text = self.tokenizer.decode(keep, skip_special_tokens=p.skip_special_tokens)
            match = find_stop(text, p.stop, len(s.text)) if p.stop else None
            if match is not None:
                text, reason, s.stop_reason = text[:match.cut], "stop", match.stop
            s.text, s.text_stale = text, False
        else:
            s.text_stale = self.tokenizer is not None
        if reason is None and at_length:
            reason = "length"
        if reason is not None:
            self.scheduler.finish(s, reason)

    def _text(self, s: Sequence) -> str:
        """`s.text`, decoded now if generation ran ahead of it (never for a finished sequence:
        its text was fixed, stop strings and EOS trimmed, when it finished)."""
        if s.text_stale:
            s.text = self.tokenizer.decode(s.output, skip_special_tokens=s.params.skip_special_tokens)
            s.text_stale = False
        return s.text

    def is_finished(self, request_id: str) -> bool:
        """Whether every sample of the request is done (cheap: no output is built)."""
        return all(s.status is Status.FINISHED for s in self.requests[request_id].seqs)

    # ---- outputs ----------------------------------------------------------------------------
    def output(self, request_id: str) -> RequestOutput:
        req = self.requests[request_id]
        outs = [
            CompletionOutput(s.index, self._text(s), list(s.output), s.finish_reason, s.stop_reason, list(s.logprobs) if s.params.logprobs is not None else None)
            for s in req.seqs
        ]
        done = all(s.status is Status.FINISHED for s in req.seqs)
        return RequestOutput(req.request_id, req.prompt, req.prompt_ids, outs, done)

    def stream_delta(self, s: Sequence) -> str:
        """New text of `s` safe to show now (held back while a stop string may be forming)."""
        text = self._text(s)
        upto = len(text)
        if s.status is not Status.FINISHED:
            # A trailing U+FFFD may be an incomplete UTF-8 sequence that the next byte token
            # turns into a different character: hold it back until the text after it settles.
            upto = min(safe_text_len(text, s.params.stop), len(text.rstrip("\ufffd")))
        delta = text[s.streamed:upto] if upto > s.streamed else ""
        s.streamed = max(s.streamed, upto)
        return delta

    def pinned(self, request_id: str) -> int | None:
        """The pin holding a finished `keep` request's KV cache, if it is still pinned."""
        req = self.requests.get(request_id)
        sid = req.seqs[0].seq_id if req is not None else None
        return sid if sid in self.scheduler.pins else None

    def unpin(self, pin: int) -> None:
        """Release a pin (its full blocks stay in the prefix cache until evicted)."""
        self.scheduler.unpin(pin)

    def release(self, request_id: str) -> None:
        """Forget a finished request (its outputs were handed out)."""
        self.requests.pop(request_id, None)
