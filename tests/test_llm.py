"""kiln.LLM: greedy tokens equal transformers' generate; batching, preemption, prefix caching and
chunked prefill never change tokens; requests finish for the right reason; bad requests fail."""

from __future__ import annotations

import functools

import pytest
import torch

import kiln
from kiln.errors import RequestTooLargeError

from conftest import tiny_config

GREEDY = kiln.SamplingParams(max_tokens=12, temperature=0.0)


@functools.lru_cache(maxsize=None)
def _hf(kind: str) -> torch.nn.Module:
    from transformers import GPT2LMHeadModel, LlamaForCausalLM, Qwen2Config, Qwen2ForCausalLM

    torch.manual_seed(0)
    if kind == "qwen2":
        cfg = Qwen2Config(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2, vocab_size=500)
        model = Qwen2ForCausalLM(cfg)
    else:
        model = {"gpt2": GPT2LMHeadModel, "llama": LlamaForCausalLM}[kind](tiny_config(kind))
    gen = torch.Generator().manual_seed(1)
    for p in model.parameters():  # wider weights: peaked distributions, no greedy near-ties
        p.data.normal_(0, 0.2, generator=gen)
    model.generation_config.eos_token_id = None  # the reference generates exactly max_new_tokens
    return model.eval()


def _prompts(n: int, seed: int = 3) -> list[list[int]]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(1, 500, (int(torch.randint(2, 40, (1,), generator=g)),), generator=g).tolist() for _ in range(n)]


def _reference(model: torch.nn.Module, prompt: list[int], n: int) -> list[int]:
    with torch.no_grad():
        out = model.generate(torch.tensor([prompt], device=next(model.parameters()).device), max_new_tokens=n, do_sample=False, pad_token_id=0)
    return out[0, len(prompt):].tolist()


@functools.lru_cache(maxsize=None)
def _llm(kind: str) -> kiln.LLM:
    return kiln.LLM(kind if kind == "tiny-llama" else _hf(kind))


@pytest.mark.parametrize("kind", ["gpt2", "llama", "qwen2"])
def test_greedy_tokens_equal_transformers_generate(kind: str) -> None:
    llm = _llm(kind)
    prompts = _prompts(3)
    params = kiln.SamplingParams(max_tokens=12, temperature=0.0, ignore_eos=True)
    outs = llm.generate(prompts, params)
    for p, o in zip(prompts, outs):
        assert o.outputs[0].token_ids == _reference(_hf(kind), p, 12)
        assert o.outputs[0].finish_reason == "length" and o.finished
    if llm.device.type == "cuda":  # decode steps replayed as CUDA graphs (Triton paged attention)
        assert getattr(llm.runner.run, "captures", 0) > 0


def test_a_single_prompt_decodes_one_token_per_step_and_equals_transformers(monkeypatch: pytest.MonkeyPatch) -> None:
    """Batch-1 decode steps run the plan on exactly one token (not padded to two: every
    projection would read its weights for a second row), on CPU and in CUDA graphs alike."""
    llm = _llm("llama")
    steps: list[int] = []
    step_args = llm.runner._step_args
    monkeypatch.setattr(llm.runner, "_step_args", lambda *a, **k: (r := step_args(*a, **k), steps.append(r[0][0].shape[1]))[0])
    prompt = _prompts(1, seed=11)[0]
    out = llm.generate([prompt], kiln.SamplingParams(max_tokens=10, temperature=0.0, ignore_eos=True))
    assert out[0].outputs[0].token_ids == _reference(_hf("llama"), prompt, 10)
    assert steps.count(1) == 9, steps  # the prefill, then nine one-token steps


def test_a_batch_of_different_lengths_equals_each_prompt_alone() -> None:
    llm = _llm("llama")
    prompts = _prompts(5, seed=4)
    params = kiln.SamplingParams(max_tokens=10, temperature=0.0, ignore_eos=True)
    together = [o.outputs[0].token_ids for o in llm.generate(prompts, params)]
    alone = [llm.generate([p], params)[0].outputs[0].token_ids for p in prompts]
    assert together == alone


def test_forced_preemption_with_a_tiny_pool_gives_identical_tokens() -> None:
    prompts = _prompts(6, seed=5)
    params = kiln.SamplingParams(max_tokens=16, temperature=0.0, ignore_eos=True)
    roomy = [o.outputs[0].token_ids for o in _llm("llama").generate(prompts, params)]
    cfg = _llm("llama").runner.pool.config
    tight = kiln.LLM(_hf("llama"), kv_cache_memory=cfg.bytes_per_token * 64, block_size=8)  # 64 token slots for 6 sequences
    got = [o.outputs[0].token_ids for o in tight.generate(prompts, params)]
    assert got == roomy
    assert tight.stats["preemptions"] > 0, "the pool was meant to be too small for all sequences at once"


def test_prefix_caching_on_and_off_give_identical_tokens() -> None:
    shared = _prompts(1, seed=6)[0] * 3  # > 2 blocks of 16
    prompts = [shared + [7, 8], shared + [9], shared + [10, 11, 12]]
    params = kiln.SamplingParams(max_tokens=8, temperature=0.0, ignore_eos=True)
    on = kiln.LLM(_hf("gpt2"), enable_prefix_caching=True)
    off = kiln.LLM(_hf("gpt2"), enable_prefix_caching=False)
    a = [o.outputs[0].token_ids for o in on.generate(prompts, params)]
    b = [o.outputs[0].token_ids for o in off.generate(prompts, params)]
    assert a == b
    assert on.stats["prefix_hit_rate"] > 0 and off.stats["prefix_hit_rate"] == 0


def test_chunked_prefill_gives_identical_tokens() -> None:
    prompts = _prompts(3, seed=7)
    params = kiln.SamplingParams(max_tokens=6, temperature=0.0, ignore_eos=True)
    whole = [o.outputs[0].token_ids for o in _llm("qwen2").generate(prompts, params)]
    chunked = kiln.LLM(_hf("qwen2"), max_num_batched_tokens=5)
    assert [o.outputs[0].token_ids for o in chunked.generate(prompts, params)] == whole


def test_builtin_model_streams_the_same_text_generate_returns() -> None:
    llm = _llm("tiny-llama")
    params = kiln.SamplingParams(max_tokens=16, temperature=0.0)
    text = llm.generate(["Once upon a time"], params)[0].outputs[0].text
    assert "".join(llm.stream("Once upon a time", params)) == text


def test_stop_token_ids_and_stop_strings_finish_with_reason_stop() -> None:
    llm = _llm("tiny-llama")
    base = llm.generate(["Hello"], kiln.SamplingParams(max_tokens=12, temperature=0.0, ignore_eos=True))[0].outputs[0]
    stop_tok = base.token_ids[3]
    first = base.token_ids.index(stop_tok)
    out = llm.generate(["Hello"], kiln.SamplingParams(max_tokens=12, temperature=0.0, ignore_eos=True, stop_token_ids=[stop_tok]))[0].outputs[0]
    assert out.finish_reason == "stop" and out.stop_reason == stop_tok and out.token_ids == base.token_ids[: first + 1]
    stop_str = base.text[2:4]
    assert stop_str
    out = llm.generate(["Hello"], kiln.SamplingParams(max_tokens=12, temperature=0.0, ignore_eos=True, stop=[stop_str]))[0].outputs[0]
    assert out.finish_reason == "stop" and stop_str not in out.text and base.text.startswith(out.text)


def test_seeded_samples_are_reproducible_and_n_gives_n_outputs() -> None:
    llm = _llm("llama")
    params = kiln.SamplingParams(max_tokens=8, temperature=1.0, top_p=0.9, seed=123, n=3, ignore_eos=True)
    a = llm.generate([[5, 6, 7]], params)[0]
    b = llm.generate([[5, 6, 7], [9, 9]], [params, kiln.SamplingParams(max_tokens=4, seed=1)])[0]
    assert len(a.outputs) == 3 and [o.token_ids for o in a.outputs] == [o.token_ids for o in b.outputs]
    assert len({tuple(o.token_ids) for o in a.outputs}) > 1, "n samples with different seeds should differ"


def test_requests_that_cannot_fit_are_refused_with_the_numbers() -> None:
    cfg = _llm("llama").runner.pool.config
    small = kiln.LLM(_hf("llama"), kv_cache_memory=cfg.bytes_per_token * 8, block_size=4)  # 2 blocks of 4 tokens
    with pytest.raises(RequestTooLargeError, match="blocks"):
        small.generate([[1, 2, 3, 4, 5]], kiln.SamplingParams(max_tokens=20))
    assert small.generate([[1, 2]], kiln.SamplingParams(max_tokens=3, temperature=0))[0].finished  # still serves
    with pytest.raises(ValueError, match="max_model_len"):
        _llm("gpt2").generate([[1] * 200], GREEDY)
    with pytest.raises(ValueError, match="token ids"):
        _llm("gpt2").generate([[1, 10**6]], GREEDY)


def test_a_chat_session_keeps_its_kv_cache_pinned_between_turns() -> None:
    llm = _llm("tiny-llama")
    chat = llm.chat_session()
    params = kiln.SamplingParams(max_tokens=21, temperature=0.0)
    first = chat.send("Tell me a story about a fox and a crow in the forest.", params)
    pinned = list(llm.engine.scheduler.pins[chat._pin])
    assert chat.history[:len(pinned)] == pinned and len(pinned) == len(chat.history) - 2  # all but the last reply token (+ EOS)
    second = chat.send("And then?", params)
    assert isinstance(first, str) and isinstance(second, str)
    # nothing before the new turn was recomputed, the partly filled last block included
    assert chat.last_cached_tokens == len(pinned) and len(pinned) % llm.runner.block_size != 0
    # the same conversation recomputed from scratch (no pins, no prefix cache) gives the same reply
    fresh_llm = kiln.LLM("tiny-llama", enable_prefix_caching=False)
    fresh = fresh_llm.chat_session()
    fresh.send("Tell me a story about a fox and a crow in the forest.", params)
    fresh.close()
    assert not fresh_llm.engine.scheduler.pins
    assert fresh.send("And then?", params) == second and fresh.last_cached_tokens == 0
    fresh.close()
    fresh_llm.engine.alloc.assert_invariants()
    assert fresh_llm.engine.alloc.num_used_blocks == 0


def test_pins_give_way_under_memory_pressure_and_the_chat_goes_on() -> None:
    """Pinned conversations never block other requests: the oldest pin is released when blocks
    run short, and that conversation's next turn recomputes (through the prefix cache)."""
    probe = kiln.LLM("tiny-llama")
    per_block = probe.runner.info.bytes_per_block
    llm = kiln.LLM("tiny-llama", kv_cache_memory=12 * per_block, max_model_len=192)
    assert llm.runner.num_blocks == 12
    params = kiln.SamplingParams(max_tokens=8, temperature=0.0)
    chat = llm.chat_session()
    chat.send("Once upon a time there was a fox.", params)
    assert chat._pin in llm.engine.scheduler.pins
    held = llm.engine.alloc.num_used_blocks
    assert held > 0
    big = [[7] * 180]  # needs all 12 blocks: the pin must go
    out = llm.generate(big, kiln.SamplingParams(max_tokens=8, temperature=0.0, ignore_eos=True))
    assert len(out[0].outputs[0].token_ids) == 8 and not llm.engine.scheduler.pins
    assert isinstance(chat.send("And then?", params), str)
    llm.engine.alloc.assert_invariants()


def test_mistral_greedy_tokens_equal_transformers_generate_and_its_window_caps_the_length() -> None:
    from transformers import MistralConfig, MistralForCausalLM

    torch.manual_seed(0)
    cfg = MistralConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                        num_key_value_heads=2, vocab_size=500, sliding_window=64, max_position_embeddings=256)
    model = MistralForCausalLM(cfg).eval()
    gen = torch.Generator().manual_seed(1)
    for p in model.parameters():
        p.data.normal_(0, 0.2, generator=gen)
    model.generation_config.eos_token_id = None
    llm = kiln.LLM(model)
    assert llm.max_model_len == 64, "served lengths stay inside the sliding window"
    prompt = _prompts(1, seed=9)[0]
    out = llm.generate([prompt], kiln.SamplingParams(max_tokens=8, temperature=0.0, ignore_eos=True))[0]
    assert out.outputs[0].token_ids == _reference(model, prompt, 8)
    with pytest.raises(kiln.KilnError, match="sliding-window"):
        kiln.LLM(model, max_model_len=128)


def test_a_frequency_penalty_breaks_greedy_repetition() -> None:
    llm = _llm("tiny-llama")
    base = llm.generate(["Hello there"], kiln.SamplingParams(max_tokens=20, temperature=0.0, ignore_eos=True))[0].outputs[0].token_ids
    most = max(base.count(t) for t in base)
    assert most >= 3, "the premise: this greedy output repeats itself"
    pen = llm.generate(["Hello there"], kiln.SamplingParams(max_tokens=20, temperature=0.0, ignore_eos=True, frequency_penalty=2.0))[0].outputs[0].token_ids
    assert max(pen.count(t) for t in pen) < most


def test_llm_quantization_int8_runs_quantized_linears_and_keeps_greedy_tokens(trained_lm) -> None:  # noqa: ANN001
    params = kiln.SamplingParams(max_tokens=8, temperature=0.0, ignore_eos=True)
    prompt = trained_lm.heldout_ids[:20].tolist()
    full = kiln.LLM(trained_lm.path).generate([prompt], params)[0].outputs[0].token_ids
    llm = kiln.LLM(trained_lm.path, quantization="int8")
    assert any(n.op.name == "linear_w8" for n in llm.runner.graph.nodes)
    assert llm.generate([prompt], params)[0].outputs[0].token_ids == full
    with pytest.raises(ValueError, match="quantization"):
        kiln.LLM(trained_lm.path, quantization="int3")
