"""Sampling: `SamplingParams`, the batched sampler and the stop-string checker the engine uses.

The sampler turns one row of next-token logits per running sequence into one token per row.
Per row, in this order (the order of `transformers`' logits processors):

1. repetition penalty over the row's previous tokens (the CTRL rule HF uses: a seen token's
   logit is divided by the penalty when positive and multiplied by it when negative);
2. greedy rows (temperature 0) take the argmax here (ties: lowest index, like `torch.argmax`);
3. temperature, then top-k, then top-p (nucleus over the top-k-renormalised distribution,
   always keeping the most likely token), then min-p (keep tokens whose probability is at least
   `min_p` times the largest; the ratio does not change under truncation, so its place in the
   order does not matter);
4. one draw from the kept tokens by the exponential race: token = argmax(p / E) with E ~ Exp(1)
   i.i.d. per token, which is an exact categorical draw. A seeded row draws E from its own
   `torch.Generator` in vocabulary order, so its tokens do not depend on the other rows in the
   batch or on their order; unseeded rows share the default generator.

Logprobs are those of the raw model distribution (log-softmax of the logits as given, before
penalty, temperature and truncation), as vLLM returns by default: they are comparable across
requests with different sampling settings, and a greedy token's logprob is what the model said.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_num(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


@dataclass(frozen=True)
class SamplingParams:
    """How to pick each next token of one request (field names as in vLLM).

    `temperature=0` is greedy; `top_k` 0 or -1 disables top-k; `stop` strings are cut from the
    output (the stop string itself is not returned); `logprobs=k` returns the sampled token's
    logprob and the k most likely alternatives (0: the sampled token's only); `seed` makes the
    request's tokens reproducible whatever else is in the batch.
    """

    n: int = 1
    max_tokens: int = 16
    temperature: float = 1.0
    top_k: int = 0
    top_p: float = 1.0
    min_p: float = 0.0
    repetition_penalty: float = 1.0
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    seed: int | None = None
    stop: str | Sequence[str] = ()
    stop_token_ids: Sequence[int] = ()
    ignore_eos: bool = False
    logprobs: int | None = None
    skip_special_tokens: bool = True

    def __post_init__(self) -> None:
        def bad(name: str, legal: str) -> ValueError:
            return ValueError(f"SamplingParams.{name} = {getattr(self, name)!r} is invalid: must be {legal}")

        if not _is_int(self.n) or self.n < 1:
            raise bad("n", "an int >= 1")
        if not _is_int(self.max_tokens) or self.max_tokens < 1:
            raise bad("max_tokens", "an int >= 1")
        if not _is_num(self.temperature) or self.temperature < 0:
            raise bad("temperature", "a finite number >= 0 (0 means greedy)")
        if not _is_int(self.top_k) or (self.top_k < 1 and self.top_k not in (0, -1)):
            raise bad("top_k", "an int >= 1, or 0 / -1 to disable top-k")
        if not _is_num(self.top_p) or not 0 < self.top_p <= 1:
            raise bad("top_p", "a number in (0, 1]")
        if not _is_num(self.min_p) or not 0 <= self.min_p <= 1:
            raise bad("min_p", "a number in [0, 1]")
        if not _is_num(self.repetition_penalty) or self.repetition_penalty <= 0:
            raise bad("repetition_penalty", "a finite number > 0 (1 means no penalty)")
        for name in ("presence_penalty", "frequency_penalty"):
            if not _is_num(getattr(self, name)) or not -2 <= getattr(self, name) <= 2:
                raise bad(name, "a number in [-2, 2] (0 means no penalty)")
        if self.seed is not None and (not _is_int(self.seed) or not 0 <= self.seed < 2**64):
            raise bad("seed", "None or an int in [0, 2**64)")
        if self.logprobs is not None and (not _is_int(self.logprobs) or self.logprobs < 0):
            raise bad("logprobs", "None or an int >= 0")
        stop = (self.stop,) if isinstance(self.stop, str) else self.stop
        if not isinstance(stop, Sequence) or not all(isinstance(s, str) and s for s in stop):
            raise bad("stop", "a non-empty string or a list of non-empty strings")
        ids = self.stop_token_ids
        if not isinstance(ids, Sequence) or isinstance(ids, str) or not all(_is_int(t) and t >= 0 for t in ids):
            raise bad("stop_token_ids", "a list of ints >= 0")
        for name in ("ignore_eos", "skip_special_tokens"):
            if not isinstance(getattr(self, name), bool):
                raise bad(name, "True or False")
        # Frozen: normalise the sequences to tuples so params stay hashable and immutable.
        object.__setattr__(self, "stop", tuple(stop))
        object.__setattr__(self, "stop_token_ids", tuple(ids))

    @property
    def greedy(self) -> bool:
        """Whether tokens are chosen by argmax (temperature 0)."""
        return self.temperature == 0

    def make_generator(self, device: torch.device | str = "cpu") -> torch.Generator | None:
        """A fresh generator seeded with `seed` for one sequence of this request, or None if unseeded."""
        if self.seed is None:
            return None
        return torch.Generator(device=device).manual_seed(self.seed)


@dataclass(frozen=True, slots=True)
class TokenLogprobs:
    """Logprobs of one sampled token under the raw model distribution.

    `rank` is 1 + the number of tokens strictly more likely than the sampled one; `top` holds the
    `SamplingParams.logprobs` most likely (token id, logprob) pairs, most likely first.
    """

    token_id: int
    logprob: float
    rank: int
    top: tuple[tuple[int, float], ...]


@dataclass(frozen=True, slots=True)
class SamplerOutput:
    """One step's tokens: `token_ids` (B,) int64, and per row its logprobs or None if not asked."""

    token_ids: torch.Tensor
    logprobs: list[TokenLogprobs | None]


def sample(
    logits: torch.Tensor,
    params: Sequence[SamplingParams],
    generators: Sequence[torch.Generator | None] | None = None,
    prev_tokens: Sequence[Sequence[int] | torch.Tensor] | None = None,
    output_tokens: Sequence[Sequence[int]] | None = None,
) -> SamplerOutput:
    """Pick one next token per row of `logits` (B, V).

    `params[i]` governs row i; `generators[i]` is row i's own seeded generator (on the logits'
    device) or None to use the default one; `prev_tokens[i]` are the tokens the repetition
    penalty applies to (the prompt and the tokens generated so far, as in HF and vLLM).
    """
    batch, _ = logits.shape
    if len(params) != batch:
        raise ValueError(f"sample: {batch} logits rows but {len(params)} SamplingParams")
    generators = generators if generators is not None else [None] * batch
    raw = logits.float()
    scores = apply_repetition_penalty(raw, params, prev_tokens)
    scores = apply_presence_frequency_penalties(scores, params, output_tokens)

    token_ids = scores.argmax(dim=-1)  # (B,) greedy rows keep this
    rows = [i for i, p in enumerate(params) if not p.greedy]
    if rows:
        index = torch.tensor(rows, device=logits.device)
        kept = _truncate(scores[index], [params[i] for i in rows])  # (R, V), -inf where dropped
        token_ids[index] = _draw(kept, [generators[i] for i in rows])
    return SamplerOutput(token_ids=token_ids, logprobs=_logprobs(raw, token_ids, params))


def apply_repetition_penalty(
    logits: torch.Tensor, params: Sequence[SamplingParams], prev_tokens: Sequence[Sequence[int] | torch.Tensor] | None
) -> torch.Tensor:
    """`logits` (B, V) with each row's previously seen tokens penalised (HF's CTRL rule).

    Returns `logits` itself when no row has a penalty, else a copy; `prev_tokens[i]` may repeat
    tokens (each seen token is penalised once).
    """
    rows = [i for i, p in enumerate(params) if p.repetition_penalty != 1.0 and prev_tokens is not None]
    rows = [i for i in rows if len(prev_tokens[i]) > 0]
    if not rows:
        return logits
    logits = logits.clone()
    for i in rows:
        seen = torch.as_tensor(prev_tokens[i], device=logits.device, dtype=torch.long).unique()
        penalty = params[i].repetition_penalty
        values = logits[i, seen]
        logits[i, seen] = torch.where(values > 0, values / penalty, values * penalty)
    return logits


def apply_presence_frequency_penalties(
    logits: torch.Tensor, params: Sequence[SamplingParams], output_tokens: Sequence[Sequence[int]] | None
) -> torch.Tensor:
    """OpenAI's additive penalties over each row's generated tokens (not the prompt, as in the
    OpenAI API and vLLM): `logit -= frequency_penalty * count + presence_penalty * (count > 0)`.
    Returns `logits` itself when no row has a penalty, else a copy."""
    rows = [i for i, p in enumerate(params) if (p.presence_penalty or p.frequency_penalty) and output_tokens is not None]
    rows = [i for i in rows if len(output_tokens[i]) > 0]
    if not rows:
        return logits
    logits = logits.clone()
    for i in rows:
        toks = torch.as_tensor(list(output_tokens[i]), device=logits.device, dtype=torch.long)
        counts = torch.bincount(toks, minlength=logits.shape[1]).to(logits.dtype)
        p = params[i]
        logits[i] -= p.frequency_penalty * counts + p.presence_penalty * (counts > 0).to(logits.dtype)
    return logits


def _truncate(scores: torch.Tensor, params: Sequence[SamplingParams]) -> torch.Tensor:
    """Temperature-scaled scores (R, V) with -inf outside each row's top-k/top-p/min-p set.

    The row maximum is subtracted before dividing by the temperature, so a tiny temperature
    sharpens the distribution without overflowing; the most likely token is always kept.
    """
    device, vocab = scores.device, scores.shape[-1]
    temp = torch.tensor([p.temperature for p in params], device=device).unsqueeze(1)  # (R, 1)
    scores = (scores - scores.amax(dim=-1, keepdim=True)) / temp  # max is 0 in every row
    drop = torch.zeros_like(scores, dtype=torch.bool)
    if any(p.min_p > 0 for p in params):
        # p / p_max = exp(score - 0) >= min_p
        log_min_p = torch.tensor([math.log(p.min_p) if p.min_p > 0 else -math.inf for p in params], device=device)
        drop |= scores < log_min_p.unsqueeze(1)
    if any(0 < p.top_k < vocab or p.top_p < 1 for p in params):
        top_k = torch.tensor([p.top_k if 0 < p.top_k < vocab else vocab for p in params], device=device)
        # top_p = 1 keeps everything (cumsum rounding can exceed 1 before the last tokens)
        top_p = torch.tensor([p.top_p if p.top_p < 1 else math.inf for p in params], device=device).unsqueeze(1)
        ordered, order = scores.sort(dim=-1, descending=True, stable=True)  # (R, V)
        rank = torch.arange(vocab, device=device)
        sorted_drop = rank.unsqueeze(0) >= top_k.unsqueeze(1)
        probs = ordered.masked_fill(sorted_drop, -math.inf).softmax(dim=-1)
        before = probs.cumsum(dim=-1) - probs  # probability mass of the more likely tokens
        sorted_drop |= before >= top_p
        sorted_drop[:, 0] = False
        drop |= torch.zeros_like(drop).scatter(1, order, sorted_drop)
    return scores.masked_fill(drop, -math.inf)


def _draw(scores: torch.Tensor, generators: Sequence[torch.Generator | None]) -> torch.Tensor:
    """One token per row from softmax(scores) by the exponential race (exact categorical draw)."""
    probs = scores.softmax(dim=-1)  # (R, V)
    noise = torch.empty_like(probs)
    shared = [i for i, g in enumerate(generators) if g is None]
    if shared:
        noise[shared] = torch.empty((len(shared), probs.shape[1]), device=probs.device).exponential_()
    for i, gen in enumerate(generators):
        if gen is not None:
            noise[i].exponential_(generator=gen)
    # E can be 0 with probability ~2^-24; clamping keeps the ratio finite and the argmax exact.
    return (probs / noise.clamp_min(torch.finfo(noise.dtype).tiny)).argmax(dim=-1)


def _logprobs(raw: torch.Tensor, token_ids: torch.Tensor, params: Sequence[SamplingParams]) -> list[TokenLogprobs | None]:
    out: list[TokenLogprobs | None] = [None] * len(params)
    rows = [i for i, p in enumerate(params) if p.logprobs is not None]
    if not rows:
        return out
    logp = raw[rows].log_softmax(dim=-1)  # (R, V)
    chosen = token_ids[rows].unsqueeze(1)
    chosen_logp = logp.gather(1, chosen)  # (R, 1)
    ranks = (logp > chosen_logp).sum(dim=-1) + 1
    k = min(max(params[i].logprobs for i in rows), logp.shape[-1])
    top_logp, top_ids = logp.topk(k, dim=-1) if k else (logp[:, :0], chosen[:, :0])
    for r, i in enumerate(rows):
        n = params[i].logprobs
        top = tuple(zip(top_ids[r, :n].tolist(), top_logp[r, :n].tolist()))
        out[i] = TokenLogprobs(int(chosen[r, 0]), float(chosen_logp[r, 0]), int(ranks[r]), top)
    return out


# ---------------------------------------------------------------------------------------------
# Stop strings


@dataclass(frozen=True, slots=True)
class StopMatch:
    """A stop string found in the text: the output is `text[:cut]`; `stop` is the string found."""

    cut: int
    stop: str


def find_stop(text: str, stops: Sequence[str], checked: int = 0) -> StopMatch | None:
    """The earliest stop string in `text` that ends after position `checked`, or None.

    `checked` is the text length at the previous check: the engine passes it so each step only
    searches the new characters plus the `len(stop) - 1` before them, which finds a stop string
    that spans two (or more) decode steps. On a match the output is `text[:match.cut]` (the stop
    string is not included, as in vLLM); among matches the earliest start wins, then the longest.
    """
    best: StopMatch | None = None
    for stop in stops:
        pos = text.find(stop, max(0, checked - len(stop) + 1))
        if pos >= 0 and (best is None or pos < best.cut or (pos == best.cut and len(stop) > len(best.stop))):
            best = StopMatch(pos, stop)
    return best


def safe_text_len(text: str, stops: Sequence[str]) -> int:
    """How much of `text` can be streamed now: all but a tail that may begin a stop string.

    If `text` ends with a proper prefix of some stop string ("...Hel" with stop "Hello"), those
    characters are held back until the next step shows whether the stop string completes.
    """
    hold = 0
    for stop in stops:
        for n in range(min(len(stop) - 1, len(text)), hold, -1):
            if text.endswith(stop[:n]):
                hold = n
                break
    return len(text) - hold
