"""Knowledge distillation: recover a compressed student's accuracy from its teacher.

`kiln.distill(teacher, student, data, ...)` trains `student` (an `nn.Module` returning logits
like the teacher: a pruned or smaller copy) to match the teacher's next-token distributions:
loss = T^2 * KL(softmax(teacher / T) || softmax(student / T)), plus optionally the mean squared
error between the last hidden states (when both expose `output_hidden_states` of equal width).
Pruning masks (`prune_module`) are re-applied after every step, so a pruned student stays exactly
as sparse as it started. Deterministic for a seed on CPU.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F

from ..passes.prune import PruneScheme, prune_tensor


def prune_module(model: torch.nn.Module, scheme: PruneScheme | str | float) -> dict[str, torch.Tensor]:
    """Prune every `nn.Linear` weight of `model` in place (skip patterns as in the pass) and
    return the keep-masks by parameter name (what `distill` re-applies)."""
    scheme = PruneScheme.parse(scheme)
    masks: dict[str, torch.Tensor] = {}
    with torch.no_grad():
        for name, mod in model.named_modules():
            if not isinstance(mod, torch.nn.Linear) or scheme.skips(name, f"{name}.weight"):
                continue
            if scheme.pattern == "2:4" and mod.weight.shape[1] % 4:
                continue
            mod.weight.copy_(prune_tensor(mod.weight, scheme))
            masks[f"{name}.weight"] = mod.weight != 0
    return masks


@dataclass
class DistillReport:
    """Loss before/after and wall time; `losses` holds every step's loss."""

    steps: int
    first_loss: float
    last_loss: float
    seconds: float
    losses: list[float] = field(default_factory=list)


def _logits(out: Any) -> torch.Tensor:
    return out.logits if hasattr(out, "logits") else out


def distill(
    teacher: torch.nn.Module, student: torch.nn.Module, data: torch.Tensor, *, steps: int = 100, lr: float = 1e-3,
    temperature: float = 2.0, hidden_weight: float = 0.0, batch_size: int = 8, seq_len: int = 64, seed: int = 0,
    masks: dict[str, torch.Tensor] | None = None,
) -> DistillReport:
    """Train `student` towards `teacher` on random windows of the token stream `data` (1-D ids)."""
    if data.dim() != 1 or data.numel() <= seq_len:
        raise ValueError(f"data must be a 1-D token stream longer than seq_len={seq_len}, got shape {tuple(data.shape)}")
    if steps < 1 or temperature <= 0 or lr <= 0 or hidden_weight < 0:
        raise ValueError("distill needs steps >= 1, temperature > 0, lr > 0 and hidden_weight >= 0")
    gen = torch.Generator().manual_seed(seed)
    params = dict(student.named_parameters())
    unknown = set(masks or {}) - set(params)
    if unknown:
        raise ValueError(f"masks name parameters the student does not have: {sorted(unknown)[:5]}")
    teacher.eval()
    student.train()
    opt = torch.optim.AdamW([p for p in params.values() if p.requires_grad], lr=lr, weight_decay=0.0)
    losses: list[float] = []
    t0 = time.perf_counter()
    for _ in range(steps):
        starts = torch.randint(0, data.numel() - seq_len, (batch_size,), generator=gen)
        ids = torch.stack([data[s:s + seq_len] for s in starts.tolist()])
        with torch.no_grad():
            t_out = teacher(input_ids=ids, output_hidden_states=hidden_weight > 0)
        s_out = student(input_ids=ids, output_hidden_states=hidden_weight > 0)
        t_log, s_log = _logits(t_out) / temperature, _logits(s_out) / temperature
        loss = F.kl_div(F.log_softmax(s_log, -1), F.log_softmax(t_log, -1), log_target=True, reduction="batchmean") * temperature**2
        loss = loss / seq_len  # batchmean divides by the batch only: per-token KL
        if hidden_weight > 0:
            loss = loss + hidden_weight * F.mse_loss(s_out.hidden_states[-1], t_out.hidden_states[-1])
        opt.zero_grad()
        loss.backward()
        opt.step()
        if masks:
            with torch.no_grad():
                for name, keep in masks.items():
                    params[name].mul_(keep)
        losses.append(float(loss.detach()))
    student.eval()
    return DistillReport(steps, losses[0], losses[-1], time.perf_counter() - t0, losses)
