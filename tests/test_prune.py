"""prune_weights: magnitude pruning (unstructured, 2:4) as a pass; sizes, patterns and accuracy."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import kiln
from kiln.passes import PruneScheme
from kiln.passes.prune import prune_tensor
from kiln.report.accuracy import compare_logits


@settings(max_examples=40, deadline=None, derandomize=True)
@given(n=st.integers(1, 9), k4=st.integers(1, 6), sparsity=st.sampled_from([0.1, 0.5, 0.9]), seed=st.integers(0, 99))
def test_unstructured_pruning_zeroes_exactly_the_smallest_fraction(n: int, k4: int, sparsity: float, seed: int) -> None:
    w = torch.randn(n, 4 * k4, generator=torch.Generator().manual_seed(seed))
    out = prune_tensor(w, PruneScheme(sparsity=sparsity))
    zeros = out == 0
    assert int(zeros.sum()) == round(sparsity * w.numel())
    if zeros.any() and (~zeros).any():
        assert w.abs()[zeros].max() <= w.abs()[~zeros].min(), "a pruned weight outweighs a kept one"
    assert torch.equal(out[~zeros], w[~zeros]), "kept weights are unchanged"


@settings(max_examples=40, deadline=None, derandomize=True)
@given(n=st.integers(1, 9), k4=st.integers(1, 6), seed=st.integers(0, 99))
def test_two_four_pruning_keeps_the_two_largest_of_every_four(n: int, k4: int, seed: int) -> None:
    w = torch.randn(n, 4 * k4, generator=torch.Generator().manual_seed(seed))
    out = prune_tensor(w, PruneScheme(pattern="2:4")).reshape(n, k4, 4)
    groups = w.reshape(n, k4, 4)
    assert ((out != 0).sum(-1) == 2).all()
    kept = groups.abs().topk(2, dim=-1).indices.sort(dim=-1).values
    assert torch.equal((out != 0).nonzero()[:, -1].reshape(n, k4, 2), kept)


@pytest.mark.parametrize("bad", [{"sparsity": 0.0}, {"sparsity": 1.0}, {"pattern": "1:4"}, {"pattern": "2:4", "sparsity": 0.7}])
def test_bad_schemes_are_refused(bad: dict) -> None:
    with pytest.raises(ValueError, match="PruneScheme|2:4"):
        PruneScheme(**bad)
    with pytest.raises(ValueError, match="pruning"):
        kiln.CompileOptions(pruning="50%")


def test_pruned_model_keeps_lm_head_dense_and_its_accuracy_moves_the_right_way(trained_lm) -> None:  # noqa: ANN001
    model = trained_lm.model.eval()
    ids = trained_lm.heldout_ids
    reports = {}
    for spec in (0.2, "2:4"):
        fn = kiln.compile(model, options=kiln.CompileOptions(pruning=spec))
        reports[spec] = compare_logits(model, lambda x, fn=fn: fn(input_ids=x).logits, ids)
        pruned = {name: t for name, t in fn.graph.constant_data.items() if ".pruned" in name}
        assert pruned and not any("lm_head" in name for name in pruned)
        assert "lm_head.weight" in fn.graph.constants
        zeros = sum(int((t == 0).sum()) for t in pruned.values()) / sum(t.numel() for t in pruned.values())
        assert zeros == pytest.approx(0.2 if spec == 0.2 else 0.5, abs=0.01)
    assert reports[0.2].ppl_increase < reports["2:4"].ppl_increase
    assert reports[0.2].top1_agreement > reports["2:4"].top1_agreement
