"""The accuracy harness: a tiny Llama trained on tests/data/corpus.txt, and `compare_logits` on it.

The `trained_lm` fixture (conftest.py) trains once per session: 200 AdamW steps, ~6-10 s of one
CPU core, held-out perplexity ~15 against an add-one unigram baseline of ~56 (341-token vocab).
"""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch

import kiln
from kiln.models.trained_tiny import train_tiny_lm, unigram_perplexity
from kiln.report.accuracy import compare_logits, perplexity, windows


def _noisy_copy(model: torch.nn.Module, scale: float, seed: int) -> torch.nn.Module:
    """A copy with Gaussian noise of `scale` x each tensor's std added to every weight."""
    noisy = copy.deepcopy(model)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in noisy.parameters():
            p.add_(torch.randn(p.shape, generator=gen) * p.std() * scale)
    return noisy


def test_trained_lm_heldout_perplexity_below_half_the_unigram_baseline(trained_lm):
    baseline = unigram_perplexity(trained_lm.train_ids, trained_lm.heldout_ids, len(trained_lm.tokenizer))
    ppl = perplexity(trained_lm.model, trained_lm.heldout_ids)
    assert ppl < 0.5 * baseline, (ppl, baseline)


def test_trained_lm_checkpoint_is_a_safetensors_save(trained_lm):
    assert (Path(trained_lm.path) / "model.safetensors").is_file()
    assert (Path(trained_lm.path) / "tokenizer.json").is_file()


def test_heldout_is_the_tail_of_the_text(trained_lm):
    n_train, n_held = len(trained_lm.train_ids), len(trained_lm.heldout_ids)
    assert 0.08 < n_held / (n_train + n_held) < 0.12
    text = trained_lm.tokenizer.decode(trained_lm.heldout_ids.tolist())
    assert text.rstrip().endswith("and not as the scribes.")


def test_training_is_deterministic_for_a_seed():
    text = (Path(__file__).parent / "data" / "corpus.txt").read_text(encoding="utf-8")[:4000]
    a, b = (train_tiny_lm(text, steps=3, seed=7).model.state_dict() for _ in range(2))
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_windows_score_every_id_after_the_first_once():
    ids = torch.arange(1, 24)  # 23 ids: 22 targets = 2 full windows of 8 + a window of 6
    got = list(windows(ids, window=8, batch=1))
    assert [tuple(x.shape) for x, _ in got] == [(1, 8), (1, 8), (1, 6)]
    assert torch.equal(torch.cat([t.flatten() for _, t in got]), ids[1:])
    assert all(torch.equal(t, x + 1) for x, t in got)  # each target is the id after its input


def test_perplexity_matches_transformers_loss_on_one_window(trained_lm):
    ids = trained_lm.heldout_ids[: trained_lm.context]
    with torch.no_grad():
        loss = trained_lm.model(input_ids=ids[None], labels=ids[None]).loss
    assert perplexity(trained_lm.model, ids, window=len(ids) - 1) == pytest.approx(loss.exp().item(), rel=1e-5)


def test_compare_logits_of_model_with_itself_is_exact(trained_lm):
    rep = compare_logits(trained_lm.model, trained_lm.model, trained_lm.heldout_ids)
    assert rep.max_abs_err == 0 and rep.mean_abs_err == 0 and rep.kl_div == 0
    assert rep.top1_agreement == 1.0
    assert rep.ppl_test == rep.ppl_ref
    assert rep.positions == len(trained_lm.heldout_ids) - 1


def test_compare_logits_errors_grow_with_weight_noise(trained_lm):
    model, ids = trained_lm.model, trained_lm.heldout_ids
    small = compare_logits(model, _noisy_copy(model, 0.01, seed=1), ids)
    large = compare_logits(model, _noisy_copy(model, 0.2, seed=1), ids)
    assert 0 < small.mean_abs_err < small.max_abs_err < 1.0
    assert small.top1_agreement < 1.0 or small.ppl_test != small.ppl_ref
    assert large.max_abs_err > small.max_abs_err and large.mean_abs_err > small.mean_abs_err
    assert large.kl_div > small.kl_div > 0
    assert large.top1_agreement < small.top1_agreement
    assert large.ppl_increase > small.ppl_increase and large.ppl_increase > 0  # noise hurts the model


def test_compare_logits_accepts_a_plain_function(trained_lm):
    model = trained_lm.model
    rep = compare_logits(model, lambda ids: model(ids).logits * 1.5, trained_lm.heldout_ids[:200])
    assert rep.top1_agreement == 1.0 and rep.max_abs_err > 0  # scaling keeps every argmax


def test_kiln_compiled_trained_lm_matches_eager(trained_lm):
    compiled = kiln.compile(trained_lm.model)
    rep = compare_logits(trained_lm.model, compiled, trained_lm.heldout_ids)
    assert rep.top1_agreement == 1.0
    assert rep.max_abs_err < 1e-4, str(rep)
    assert rep.ppl_test == pytest.approx(rep.ppl_ref, rel=1e-5)
