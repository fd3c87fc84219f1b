"""Accuracy of a model variant against a full-precision reference, on real token ids.

Takes a reference model and a variant — any callable `input_ids (B, T) -> logits (B, T, V)`: an
`nn.Module`, a `kiln.compile`d module, a quantized or pruned plan — and held-out ids; gives an
`AccuracyReport`: max and mean absolute logit error, top-1 agreement, mean KL(ref || test) and
the perplexity of each. Quantization schemes, the per-layer sensitivity scan, pruning and
distillation all report through this one function, so their numbers are comparable.

Why `report/`: it measures one model against another, as `report/measure.py` measures latency
against eager, and it is a leaf both `passes/` (the sensitivity scan) and `bench/` can import.

Windows (teacher forcing): the ids are cut into consecutive windows of `window` inputs; window k
feeds ids[k*W : (k+1)*W] and scores ids[k*W + 1 : (k+1)*W + 1], so every id after the first is
predicted exactly once, each from at most W - 1 tokens of context (no sliding overlap: fast, and
the same positions for every variant). Full windows run `batch` at a time; a shorter final window
runs alone. The model's forward is called with `input_ids` only — no attention mask, no cache.

All statistics are accumulated in float32 (logits are upcast), streaming over batches, so the
full (N, V) logit matrix is never held.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F

LogitsFn = Callable[[torch.Tensor], torch.Tensor]


@dataclass(frozen=True, slots=True)
class AccuracyReport:
    """Variant vs reference over `positions` scored positions (all logits float32).

    Invariants: errors >= 0; 0 <= top1_agreement <= 1; a variant identical to the reference has
    max_abs_err == mean_abs_err == kl_div == 0, top1_agreement == 1 and ppl_test == ppl_ref.
    """

    max_abs_err: float  # max |test - ref| over every logit
    mean_abs_err: float  # mean |test - ref| over every logit
    top1_agreement: float  # fraction of positions whose argmax agrees
    kl_div: float  # mean over positions of KL(softmax(ref) || softmax(test)), nats
    ppl_ref: float  # perplexity of the reference on the scored ids
    ppl_test: float  # perplexity of the variant on the scored ids
    positions: int

    @property
    def ppl_increase(self) -> float:
        """Relative perplexity change of the variant: 0.02 means 2% worse than the reference."""
        return self.ppl_test / self.ppl_ref - 1.0

    def as_dict(self) -> dict[str, float]:
        """Plain dict (for JSON reports), with `ppl_increase` added."""
        return {**asdict(self), "ppl_increase": self.ppl_increase}

    def __str__(self) -> str:
        return (f"top1 {self.top1_agreement:.2%}  max|dlogit| {self.max_abs_err:.3g}  "
                f"mean|dlogit| {self.mean_abs_err:.3g}  KL {self.kl_div:.3g}  "
                f"ppl {self.ppl_ref:.3f} -> {self.ppl_test:.3f} ({self.ppl_increase:+.2%})  "
                f"over {self.positions} positions")


def as_logits_fn(model_or_fn: Callable) -> LogitsFn:
    """Wrap a model or function so it maps `input_ids (B, T)` to float32 logits `(B, T, V)`.

    Accepts outputs that are a tensor, have a `.logits` attribute (HF `ModelOutput`, also what a
    `kiln.compile`d HF model returns), are a dict with "logits", or a tuple whose first item is
    the logits.
    """

    def fn(input_ids: torch.Tensor) -> torch.Tensor:
        out = model_or_fn(input_ids)
        if isinstance(out, dict) and "logits" in out:
            out = out["logits"]
        elif hasattr(out, "logits"):
            out = out.logits
        elif isinstance(out, (tuple, list)):
            out = out[0]
        if not isinstance(out, torch.Tensor) or out.dim() != 3:
            raise TypeError(f"expected logits (B, T, V) from the model, got {type(out).__name__}")
        return out.float()

    return fn


def context_length(model: object) -> int | None:
    """The model's context length from its HF config (`max_position_embeddings`, `n_positions`)."""
    config = getattr(model, "config", None) or getattr(getattr(model, "target", None), "config", None)
    for name in ("max_position_embeddings", "n_positions"):
        if isinstance(getattr(config, name, None), int):
            return getattr(config, name)
    return None


def _device_of(model: object) -> torch.device:
    params = getattr(model, "parameters", None)
    first = next(iter(params()), None) if callable(params) else None
    return first.device if first is not None else torch.device("cpu")


def _check_ids(ids: torch.Tensor | list[int]) -> torch.Tensor:
    ids = torch.as_tensor(ids, dtype=torch.long)
    if ids.dim() != 1 or len(ids) < 2:
        raise ValueError(f"need a 1-D sequence of at least 2 token ids, got shape {tuple(ids.shape)}")
    return ids


def windows(ids: torch.Tensor, window: int, batch: int = 8) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Yield `(inputs, targets)`, both `(b, T)`, covering ids[1:] once (see the module docstring)."""
    if window < 1:
        raise ValueError(f"window must be >= 1, got {window}")
    n_full = (len(ids) - 1) // window
    inputs = ids[: n_full * window].view(n_full, window)  # (n_full, W)
    targets = ids[1 : n_full * window + 1].view(n_full, window)
    for i in range(0, n_full, batch):
        yield inputs[i : i + batch], targets[i : i + batch]
    rest = len(ids) - 1 - n_full * window
    if rest:
        yield ids[n_full * window : -1][None], ids[n_full * window + 1 :][None]  # (1, rest)


def _resolve_window(window: int | None, *models: object) -> int:
    if window is not None:
        return window
    for m in models:
        if (n := context_length(m)) is not None:
            return n
    raise ValueError("pass window=: the model has no config with a context length")


@torch.no_grad()
def perplexity(model_or_fn: Callable, ids: torch.Tensor | list[int], window: int | None = None,
               *, batch: int = 8) -> float:
    """Teacher-forced perplexity of `model_or_fn` on `ids` over consecutive `window`-token windows.

    `window` defaults to the model's context length (`config.max_position_embeddings`).
    """
    ids, fn = _check_ids(ids), as_logits_fn(model_or_fn)
    window, device = _resolve_window(window, model_or_fn), _device_of(model_or_fn)
    nll, count = 0.0, 0
    for inputs, targets in windows(ids, window, batch):
        logits = fn(inputs.to(device))  # (b, T, V)
        nll += F.cross_entropy(logits.flatten(0, 1), targets.to(device).flatten(), reduction="sum").item()
        count += targets.numel()
    return math.exp(nll / count)


@torch.no_grad()
def compare_logits(ref_model: Callable, test_model_or_fn: Callable, ids: torch.Tensor | list[int],
                   window: int | None = None, *, batch: int = 8) -> AccuracyReport:
    """Run reference and variant on the same windows of `ids` and compare their logits.

    `window` defaults to the reference's context length. Both see identical inputs on the
    reference's device; the variant's logits are moved there before comparing.
    """
    ids = _check_ids(ids)
    window = _resolve_window(window, ref_model, test_model_or_fn)
    ref_fn, test_fn, device = as_logits_fn(ref_model), as_logits_fn(test_model_or_fn), _device_of(ref_model)
    max_err, sum_err, agree, kl, nll_ref, nll_test, positions, n_logits = 0.0, 0.0, 0, 0.0, 0.0, 0.0, 0, 0
    for inputs, targets in windows(ids, window, batch):
        inputs, targets = inputs.to(device), targets.to(device).flatten()
        ref = ref_fn(inputs).flatten(0, 1)  # (b*T, V)
        test = test_fn(inputs).to(device).flatten(0, 1)
        if test.shape != ref.shape:
            raise ValueError(f"logit shapes differ: reference {tuple(ref.shape)}, variant {tuple(test.shape)}")
        err = (test - ref).abs()
        max_err, sum_err = max(max_err, err.max().item()), sum_err + err.sum().item()
        agree += (test.argmax(-1) == ref.argmax(-1)).sum().item()
        ref_logp, test_logp = ref.log_softmax(-1), test.log_softmax(-1)
        kl += F.kl_div(test_logp, ref_logp, log_target=True, reduction="sum").item()
        nll_ref -= ref_logp.gather(-1, targets[:, None]).sum().item()
        nll_test -= test_logp.gather(-1, targets[:, None]).sum().item()
        positions, n_logits = positions + ref.shape[0], n_logits + ref.numel()
    return AccuracyReport(
        max_abs_err=max_err, mean_abs_err=sum_err / n_logits, top1_agreement=agree / positions,
        kl_div=max(0.0, kl / positions), ppl_ref=math.exp(nll_ref / positions),
        ppl_test=math.exp(nll_test / positions), positions=positions,
    )
