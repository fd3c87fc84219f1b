"""bench/peers.py: the peer baselines decode the same greedy tokens as HF `generate` (CPU, tiny random Llama)."""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))

import peers  # noqa: E402


@pytest.fixture(scope="module")
def llama():  # noqa: ANN201
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    cfg = LlamaConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                      num_key_value_heads=2, vocab_size=128, max_position_embeddings=256)
    model = LlamaForCausalLM(cfg).eval()
    with torch.no_grad():  # larger weights than the 0.02-std init: spread-out logits, no near-ties in argmax
        for p in model.parameters():
            if p.ndim == 2:
                p.normal_(0, 0.3)
    return model


PROMPTS = [[3, 17, 99, 5, 64, 2, 8], [11, 42, 7, 120, 33, 1, 90, 77, 15, 6, 54, 23, 9]]


def hf_greedy(model, prompt: list[int], new: int) -> list[int]:  # noqa: ANN001
    ids = torch.tensor([prompt])
    out = model.generate(ids, attention_mask=torch.ones_like(ids), generation_config=peers._greedy_config(model, new))
    return out[0, len(prompt):].tolist()


def test_static_kv_loop_matches_hf_generate(llama) -> None:  # noqa: ANN001
    loop = peers.StaticKVLoop(llama, max_len=64, compile=False)
    assert loop.max_len == 64
    for prompt in PROMPTS:  # reuse of the cache across prompts of different lengths (stale slots masked off)
        want = hf_greedy(llama, prompt, 12)
        got, seconds = loop.generate(prompt, 12)
        assert got == want
        assert seconds > 0 and loop.first_call_s is not None
    ids = torch.tensor([PROMPTS[1]])
    ref = llama(ids).logits[0, -1]
    assert torch.allclose(loop.logits(PROMPTS[1]), ref, atol=1e-4, rtol=1e-4)


def test_static_kv_loop_batched(llama) -> None:  # noqa: ANN001
    loop = peers.StaticKVLoop(llama, max_len=40, compile=False, batch=2)
    prompts = [PROMPTS[0], PROMPTS[1][:7]]
    got, _ = loop.generate(prompts, 6)
    assert got == [hf_greedy(llama, p, 6) for p in prompts]


def test_static_kv_loop_int8(llama) -> None:  # noqa: ANN001
    loop = peers.StaticKVLoop(llama, max_len=64, compile=False, int8=True)
    blk = loop.model.layers[0]
    assert blk.wqkv.weight.dtype == torch.int8 and blk.w13.weight.shape == (256, 64)
    assert loop.model.lm_head.weight.dtype == torch.int8
    toks, _ = loop.generate(PROMPTS[0], 12)
    assert len(toks) == 12 and all(0 <= t < 128 for t in toks)
    ref = llama(torch.tensor([PROMPTS[0]])).logits[0, -1]
    q = loop.logits(PROMPTS[0])
    assert (q - ref).abs().max() < 0.05 * ref.abs().max()
    assert q.argmax() == ref.argmax()


def test_hf_eager_generate_batched_equals_single(llama) -> None:  # noqa: ANN001
    prompts = [PROMPTS[0], PROMPTS[1], [5, 6, 7]]
    news = [5, 9, 7]
    got, seconds = peers.hf_eager_generate(llama, prompts, news, batch_size=2)
    assert seconds > 0
    assert got == [hf_greedy(llama, p, n) for p, n in zip(prompts, news)]
    same, _ = peers.hf_eager_generate(llama, prompts, 4, batch_size=8, warmup=False)
    assert same == [g[:4] for g in got]


def test_hf_static_generate_cpu(llama) -> None:  # noqa: ANN001
    toks, warm, first = peers.hf_static_compiled_generate(llama, PROMPTS[0], 8)  # CPU: static cache, not compiled
    assert toks == hf_greedy(llama, PROMPTS[0], 8)
    assert warm > 0 and first > 0


def _check_compiled(llama, backend: str) -> None:  # noqa: ANN001
    torch._dynamo.reset()
    loop = peers.StaticKVLoop(llama, max_len=64, compile=True, backend=backend)
    want = hf_greedy(llama, PROMPTS[1], 12)
    got, _ = loop.generate(PROMPTS[1], 12)
    assert got == want
    first = loop.first_call_s
    got, _ = loop.generate(PROMPTS[0], 12)  # another prompt length: dynamic prefill graph, same decode graph
    assert got == hf_greedy(llama, PROMPTS[0], 12)
    assert loop.first_call_s == first


def test_static_kv_loop_compiled_fullgraph(llama) -> None:  # noqa: ANN001
    """Dynamo traces prefill and decode (cache writes included) as single graphs: fullgraph=True, aot_eager."""
    _check_compiled(llama, "aot_eager")


@pytest.mark.slow
@pytest.mark.skipif(not os.environ.get("KILN_TEST_INDUCTOR"), reason="inductor CPU compile takes 30-40 s on a fresh "
                    "cache; set KILN_TEST_INDUCTOR=1")
@pytest.mark.skipif(shutil.which("cc") is None and shutil.which("gcc") is None, reason="inductor CPU needs a C compiler")
def test_static_kv_loop_compiled_inductor(llama) -> None:  # noqa: ANN001
    """The real recipe: inductor, decode with mode="reduce-overhead" (no CUDA graphs on CPU)."""
    _check_compiled(llama, "inductor")
