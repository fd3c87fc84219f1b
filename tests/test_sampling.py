"""SamplingParams validation, the batched sampler and the stop-string checker."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from kiln.runtime.sampling import (
    SamplingParams,
    apply_repetition_penalty,
    find_stop,
    safe_text_len,
    sample,
)


def _logits(batch: int, vocab: int, seed: int, scale: float = 2.0) -> torch.Tensor:
    return torch.randn(batch, vocab, generator=torch.Generator().manual_seed(seed)) * scale


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


# ---------------------------------------------------------------------------------------------
# SamplingParams


@pytest.mark.parametrize("field,value", [
    ("n", 0), ("n", 1.0), ("max_tokens", 0), ("max_tokens", True), ("temperature", -0.1),
    ("temperature", math.inf), ("temperature", math.nan), ("top_k", -2), ("top_k", 2.5), ("top_p", 0.0),
    ("top_p", 1.01), ("min_p", -0.01), ("min_p", 1.5), ("repetition_penalty", 0.0),
    ("repetition_penalty", -1.0), ("seed", -1), ("seed", 2**64), ("seed", "7"), ("logprobs", -1),
    ("stop", ""), ("stop", ["ok", ""]), ("stop", [3]), ("stop_token_ids", [-1]), ("stop_token_ids", "12"),
    ("stop_token_ids", [1.5]), ("ignore_eos", 1), ("skip_special_tokens", None),
])
def test_invalid_value_is_rejected_naming_field_and_value(field: str, value: object) -> None:
    with pytest.raises(ValueError, match=rf"SamplingParams\.{field} = .* is invalid: must be"):
        SamplingParams(**{field: value})


def test_valid_values_are_normalised_and_hashable() -> None:
    p = SamplingParams(temperature=0, top_k=-1, stop="END", stop_token_ids=[2, 7], logprobs=0, seed=2**64 - 1)
    assert p.greedy and p.stop == ("END",) and p.stop_token_ids == (2, 7)
    assert hash(p) == hash(SamplingParams(temperature=0, top_k=-1, stop=["END"], stop_token_ids=(2, 7),
                                          logprobs=0, seed=2**64 - 1))
    with pytest.raises(AttributeError):
        p.temperature = 1.0  # type: ignore[misc]
    assert SamplingParams(top_k=0).top_k == 0 and not SamplingParams().greedy


def test_make_generator_is_seeded_or_none() -> None:
    assert SamplingParams().make_generator() is None
    a, b = SamplingParams(seed=5).make_generator(), SamplingParams(seed=5).make_generator()
    assert torch.equal(torch.rand(4, generator=a), torch.rand(4, generator=b))


# ---------------------------------------------------------------------------------------------
# Sampler


def test_greedy_equals_argmax_with_lowest_index_on_ties() -> None:
    logits = _logits(6, 50, seed=1)
    logits[5, [3, 17, 40]] = 100.0  # a three-way tie
    out = sample(logits, [SamplingParams(temperature=0)] * 6)
    assert out.token_ids.tolist() == logits.argmax(dim=-1).tolist()
    assert out.token_ids[5] == 3 and out.token_ids.dtype == torch.int64


def test_top_k_one_equals_greedy() -> None:
    logits = _logits(8, 64, seed=2)
    gens = [_gen(i) for i in range(8)]
    out = sample(logits, [SamplingParams(top_k=1, temperature=1.5)] * 8, gens)
    assert torch.equal(out.token_ids, logits.argmax(dim=-1))


def test_tiny_top_p_keeps_only_the_most_likely_token() -> None:
    logits = _logits(8, 64, seed=3, scale=0.1)  # nearly flat: top_p=1e-6 still keeps one token
    out = sample(logits, [SamplingParams(top_p=1e-6)] * 8, [_gen(i) for i in range(8)])
    assert torch.equal(out.token_ids, logits.argmax(dim=-1))


def test_min_p_drops_tokens_below_fraction_of_max() -> None:
    probs = torch.tensor([0.05, 0.5, 0.15, 0.3])  # min_p 0.4 keeps p >= 0.2: tokens 1 and 3
    logits = probs.log().expand(4000, 4)
    out = sample(logits, [SamplingParams(min_p=0.4)] * 4000, [None] * 4000)
    seen = torch.bincount(out.token_ids, minlength=4)
    assert seen[0] == seen[2] == 0 and seen[1] > 0 and seen[3] > 0
    assert abs(seen[1].item() / 4000 - 0.5 / 0.8) < 0.04  # renormalised over the kept tokens


def test_repetition_penalty_follows_the_ctrl_rule() -> None:
    row = torch.tensor([[2.0, -1.0, 0.5, -0.5, 3.0, 0.0]])
    out = apply_repetition_penalty(row, [SamplingParams(repetition_penalty=2.0)], [[0, 1, 1, 3, 5]])
    # seen tokens 0, 1, 3, 5: positive / 2, negative * 2, zero unchanged; 2 and 4 untouched
    assert out.tolist() == [[1.0, -2.0, 0.5, -1.0, 3.0, 0.0]]
    assert row.tolist() == [[2.0, -1.0, 0.5, -0.5, 3.0, 0.0]]  # input not modified


def test_repetition_penalty_changes_greedy_choice_only_for_its_row() -> None:
    logits = torch.tensor([[3.0, 2.9], [3.0, 2.9]])
    params = [SamplingParams(temperature=0, repetition_penalty=1.1), SamplingParams(temperature=0)]
    out = sample(logits, params, prev_tokens=[[0], [0]])
    assert out.token_ids.tolist() == [1, 0]


def test_seeded_row_is_reproducible_whatever_the_batch() -> None:
    row = _logits(1, 100, seed=4)[0]
    params = SamplingParams(seed=1234, top_p=0.9)

    def run(batch: int, position: int, steps: int = 12) -> list[int]:
        gen, others = params.make_generator(), [_gen(1000 + i) for i in range(batch)]
        tokens = []
        for step in range(steps):
            logits = _logits(batch, 100, seed=50 + step)
            logits[position] = row
            ps = [SamplingParams(temperature=0.7 + 0.1 * i) for i in range(batch)]
            ps[position] = params
            gens: list[torch.Generator | None] = [others[i] if i % 2 else None for i in range(batch)]
            gens[position] = gen
            tokens.append(int(sample(logits, ps, gens).token_ids[position]))
        return tokens

    alone = run(1, 0)
    assert len(set(alone)) > 1  # it really samples
    assert run(5, 3) == alone and run(9, 0) == alone and run(9, 8) == alone


@pytest.mark.parametrize("temperature,top_k", [(1.0, 0), (0.5, 0), (1.3, 3)])
def test_sampled_frequencies_match_the_distribution(temperature: float, top_k: int) -> None:
    logits = torch.tensor([1.0, 0.2, -0.5, 2.0, 0.0, -1.0])
    draws = 30_000
    torch.manual_seed(0)
    out = sample(logits.expand(draws, 6), [SamplingParams(temperature=temperature, top_k=top_k)] * draws)
    counts = torch.bincount(out.token_ids, minlength=6).double()
    scaled = logits.double() / temperature
    if top_k:
        scaled[scaled < scaled.topk(top_k).values[-1]] = -math.inf
    expected = scaled.softmax(-1) * draws
    kept = expected > 0
    assert counts[~kept].sum() == 0
    chi2 = ((counts[kept] - expected[kept]) ** 2 / expected[kept]).sum().item()
    assert chi2 < 25.0, (counts, expected)  # df <= 5: p < 1e-4 for a correct sampler


def test_logprobs_are_raw_model_logprobs_with_rank_and_top() -> None:
    logits = _logits(3, 40, seed=6)
    params = [SamplingParams(temperature=0, logprobs=3), SamplingParams(logprobs=0, temperature=2.0),
              SamplingParams(temperature=0.5, repetition_penalty=1.5)]
    out = sample(logits, params, [None, _gen(1), _gen(2)], prev_tokens=[[1, 2], [3], [4]])
    raw = logits.log_softmax(-1)
    first, second = out.logprobs[0], out.logprobs[1]
    assert out.logprobs[2] is None
    assert first.token_id == out.token_ids[0] and first.rank == 1
    assert first.logprob == pytest.approx(raw[0].max().item(), abs=1e-6)
    top_ids = raw[0].topk(3).indices.tolist()
    assert [t for t, _ in first.top] == top_ids
    assert [lp for _, lp in first.top] == pytest.approx(raw[0, top_ids].tolist(), abs=1e-6)
    assert second.top == () and second.token_id == out.token_ids[1]
    assert second.logprob == pytest.approx(raw[1, second.token_id].item(), abs=1e-6)
    assert second.rank == int((raw[1] > raw[1, second.token_id]).sum()) + 1


def _kept_set(row: torch.Tensor, p: SamplingParams, slack: float = 1e-4) -> set[int]:
    """Independent reference in float64: tokens a correct sampler may return (boundaries loosened)."""
    probs = (row.double() / p.temperature).softmax(-1)
    order = sorted(range(len(row)), key=lambda i: -probs[i].item())
    keep = order[: p.top_k] if p.top_k > 0 else order
    mass = sum(probs[i].item() for i in keep)
    nucleus, before = [], 0.0
    for i in keep:
        if before >= p.top_p + slack and nucleus:
            break
        nucleus.append(i)
        before += probs[i].item() / mass
    pmax = probs.max().item()
    return {i for i in nucleus if probs[i].item() >= p.min_p * pmax * (1 - slack)}


@settings(max_examples=60, deadline=None)
@given(
    seed=st.integers(0, 2**32 - 1),
    vocab=st.integers(2, 40),
    temperature=st.floats(0.05, 3.0),
    top_k=st.sampled_from([0, -1, 1, 2, 5, 20]),
    top_p=st.floats(0.01, 1.0),
    min_p=st.sampled_from([0.0, 0.05, 0.3, 0.9]),
)
def test_sampled_token_lies_in_kept_set(seed: int, vocab: int, temperature: float, top_k: int, top_p: float,
                                        min_p: float) -> None:
    params = SamplingParams(temperature=temperature, top_k=top_k, top_p=top_p, min_p=min_p, seed=seed)
    logits = _logits(4, vocab, seed=seed % 10_000, scale=3.0)
    out = sample(logits, [params] * 4, [params.make_generator() for _ in range(4)])
    for r in range(4):
        assert out.token_ids[r].item() in _kept_set(logits[r], params)


def test_batch_size_mismatch_is_an_error() -> None:
    with pytest.raises(ValueError, match="2 logits rows but 1 SamplingParams"):
        sample(torch.zeros(2, 5), [SamplingParams()])


# ---------------------------------------------------------------------------------------------
# Stop strings


def test_stop_string_spanning_decode_steps_is_found_and_excluded() -> None:
    pieces, stops = ["The an", "swer is 4", "2.\nEN", "D more"], ["\nEND"]
    text, checked, match = "", 0, None
    for piece in pieces:
        text += piece
        match = find_stop(text, stops, checked)
        if match:
            break
        checked = len(text)
    assert match is not None and text[: match.cut] == "The answer is 42." and match.stop == "\nEND"
    assert piece == "D more"  # found at the step that completed it


def test_earliest_stop_wins_then_longest() -> None:
    assert find_stop("abc STOP x END", ["END", "STOP"]).cut == 4
    match = find_stop("xx ab", ["a", "ab"])
    assert (match.cut, match.stop) == (3, "ab")
    assert find_stop("nothing here", ["END"]) is None and find_stop("END", []) is None


def test_already_checked_text_is_not_searched_again() -> None:
    # "END" lies wholly in the checked part: the engine would have stopped there already.
    assert find_stop("END and more", ["END"], checked=8) is None
    assert find_stop("xxEN" + "D", ["END"], checked=4).cut == 2


def test_safe_text_len_holds_back_a_possible_stop_prefix() -> None:
    assert safe_text_len("Hello wor", ["world"]) == len("Hello ")
    assert safe_text_len("Hello", ["world", "lo!"]) == len("Hel")
    assert safe_text_len("Hello", ["xyz"]) == 5 and safe_text_len("", ["ab"]) == 0


def test_presence_and_frequency_penalties_subtract_per_generated_token_counts() -> None:
    from kiln.runtime.sampling import apply_presence_frequency_penalties

    logits = torch.tensor([[1.0, 2.0, 3.0, 4.0]])
    params = [SamplingParams(presence_penalty=0.5, frequency_penalty=0.25)]
    out = apply_presence_frequency_penalties(logits, params, [[3, 3, 1]])
    # token 3 seen twice: 4 - 0.25*2 - 0.5 = 3.0; token 1 once: 2 - 0.25 - 0.5 = 1.25
    assert out.tolist() == [[1.0, 1.25, 3.0, 3.0]]
    assert logits.tolist() == [[1.0, 2.0, 3.0, 4.0]], "the input is not modified"
    assert apply_presence_frequency_penalties(logits, [SamplingParams()], [[3]]) is logits


@pytest.mark.parametrize("name", ["presence_penalty", "frequency_penalty"])
def test_presence_and_frequency_penalties_are_bounded(name: str) -> None:
    with pytest.raises(ValueError, match=name):
        SamplingParams(**{name: 2.5})
