"""kiln.parallel_report: per-rank graphs and communication volume, built in one process."""

from __future__ import annotations

import pytest
import torch

import kiln


def _llama():  # noqa: ANN202
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    cfg = LlamaConfig(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                      intermediate_size=128, vocab_size=128, max_position_embeddings=64, use_cache=False)
    return LlamaForCausalLM(cfg).eval(), torch.randint(0, 128, (1, 8))


def test_tensor_parallel_report_shows_each_ranks_share_and_its_traffic() -> None:
    model, ids = _llama()
    rep = kiln.parallel_report(model, (ids,), tensor_parallel=2)
    assert rep["world"] == 2 and len(rep["ranks"]) == 2
    for r in rep["ranks"]:
        # 2 layers: one all-reduce after attention and one after the MLP each (each fused with the
        # residual add + RMSNorm after it); the lm_head gathers
        assert r["collectives"] == {"all_reduce_add_rms_norm": 4, "all_gather": 1}
        # fp32: 64 hidden floats per all-reduce and 128 vocab floats gathered, per token
        assert r["comm_bytes_per_token"] == 4 * 64 * 4 + 128 * 4
        assert 0.4 < r["weight_bytes"] / rep["single_weight_bytes"] < 0.75  # sharded; embedding replicated
        assert "all_reduce" in r["graph"]
    assert "| rank |" in rep["markdown"] and rep["markdown"].count("\n") == 3


def test_pipeline_report_shows_stages_and_their_cuts() -> None:
    model, ids = _llama()
    rep = kiln.parallel_report(model, (ids,), pipeline_parallel=2)
    first, last = rep["ranks"]
    assert first["collectives"] == {"send": 1} and last["collectives"] == {"recv": 1}
    assert first["comm_bytes_per_token"] == 64 * 4  # the residual stream, fp32
    assert first["weight_bytes"] + last["weight_bytes"] >= rep["single_weight_bytes"]


def test_parallel_report_wants_one_mode() -> None:
    model, ids = _llama()
    with pytest.raises(ValueError, match="tensor_parallel=N, pipeline_parallel=N or both"):
        kiln.parallel_report(model, (ids,))
