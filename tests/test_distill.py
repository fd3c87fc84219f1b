"""kiln.distill: a pruned student recovers accuracy from its teacher and stays exactly as sparse."""

from __future__ import annotations

import copy

import pytest
import torch

import kiln
from kiln.models.distill import prune_module
from kiln.report.accuracy import compare_logits


def test_distillation_recovers_a_two_four_pruned_student(trained_lm) -> None:  # noqa: ANN001
    teacher = trained_lm.model.eval()
    student = copy.deepcopy(teacher)
    masks = prune_module(student, "2:4")
    assert masks and not any("lm_head" in name for name in masks)
    before = compare_logits(teacher, student, trained_lm.heldout_ids)
    report = kiln.distill(teacher, student, trained_lm.train_ids, steps=60, lr=2e-3, masks=masks)
    after = compare_logits(teacher, student, trained_lm.heldout_ids)
    assert report.last_loss < report.first_loss
    assert after.ppl_increase < before.ppl_increase / 2, (before, after)
    assert after.top1_agreement > before.top1_agreement
    params = dict(student.named_parameters())
    for name, keep in masks.items():
        assert torch.equal(params[name] != 0, keep), f"{name} lost its 2:4 pattern"


def test_distill_refuses_bad_arguments(trained_lm) -> None:  # noqa: ANN001
    m = trained_lm.model
    with pytest.raises(ValueError, match="1-D token stream"):
        kiln.distill(m, copy.deepcopy(m), trained_lm.train_ids[:10])
    with pytest.raises(ValueError, match="masks"):
        kiln.distill(m, copy.deepcopy(m), trained_lm.train_ids, steps=1, masks={"nope.weight": torch.ones(1)})
