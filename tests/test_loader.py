"""Checkpoint loading: round trips through real checkpoint directories, and every error path.

Each hostile fixture is a copy of a good checkpoint with one thing broken; nothing is downloaded.
"""

from __future__ import annotations

import json
import pickle
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from kiln.errors import CheckpointError, KilnError
from kiln.runtime.builtin import BUILTIN_MODELS, builtin_tokenizer, load_builtin, save_builtin
from kiln.runtime.loader import LoadedModel, load_checkpoint, load_model

from conftest import tiny_config


def _tiny_model(kind: str) -> torch.nn.Module:
    from transformers import GPT2LMHeadModel, LlamaForCausalLM, Qwen2Config, Qwen2ForCausalLM

    torch.manual_seed(0)
    if kind == "gpt2":  # lm_head tied to the token embeddings (GPT-2's default)
        return GPT2LMHeadModel(tiny_config("gpt2")).eval()
    if kind == "llama":
        return LlamaForCausalLM(tiny_config("llama")).eval()
    if kind == "llama-tied":
        cfg = tiny_config("llama")
        cfg.tie_word_embeddings = True
        return LlamaForCausalLM(cfg).eval()
    if kind == "qwen2":
        return Qwen2ForCausalLM(Qwen2Config(hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                                            num_attention_heads=4, num_key_value_heads=2, vocab_size=500,
                                            use_cache=False)).eval()
    raise KeyError(kind)


def _logits(model: torch.nn.Module, ids: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model(input_ids=ids).logits


def _fresh_ids(vocab: int, seed: int) -> torch.Tensor:
    return torch.randint(0, vocab, (2, 11), generator=torch.Generator().manual_seed(seed))


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[torch.nn.Module, Path]]:
    """kind -> (original model, its checkpoint directory); `llama-sharded` is split in ~20 KB shards."""
    out = {}
    for kind in ("gpt2", "llama", "llama-tied", "qwen2"):
        model, path = _tiny_model(kind), tmp_path_factory.mktemp(kind)
        model.save_pretrained(path, safe_serialization=True)
        out[kind] = (model, path)
    model, path = out["llama"][0], tmp_path_factory.mktemp("llama-sharded")
    model.save_pretrained(path, safe_serialization=True, max_shard_size="20KB")
    out["llama-sharded"] = (model, path)
    return out


@pytest.fixture(scope="module")
def builtin_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_builtin("tiny-llama", tmp_path_factory.mktemp("tiny-llama"))


def _copy(src: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(src, tmp_path / "ckpt"))


@pytest.mark.parametrize("kind", ["gpt2", "llama", "llama-tied", "qwen2", "llama-sharded"])
def test_loaded_model_logits_equal_original(checkpoints: dict, kind: str) -> None:
    original, path = checkpoints[kind]
    loaded = load_checkpoint(path)
    assert isinstance(loaded, LoadedModel) and loaded.path == path and not loaded.model.training
    assert loaded.tokenizer is None and loaded.chat_template is None
    ids = _fresh_ids(500, seed=sum(map(ord, kind)))
    torch.testing.assert_close(_logits(loaded.model, ids), _logits(original, ids), rtol=0, atol=0)


def test_sharded_checkpoint_really_has_several_shards(checkpoints: dict) -> None:
    path = checkpoints["llama-sharded"][1]
    assert len(list(path.glob("model-*-of-*.safetensors"))) > 1
    assert (path / "model.safetensors.index.json").is_file()


@pytest.mark.parametrize("kind", ["gpt2", "llama-tied"])
def test_tied_lm_head_stays_tied_after_loading(checkpoints: dict, kind: str) -> None:
    model = load_checkpoint(checkpoints[kind][1]).model
    assert model.get_output_embeddings().weight is model.get_input_embeddings().weight


def test_dtype_and_device_are_applied(checkpoints: dict) -> None:
    loaded = load_checkpoint(checkpoints["llama"][1], dtype="bfloat16", device="cpu")
    assert {p.dtype for p in loaded.model.parameters()} == {torch.bfloat16}
    assert {p.device.type for p in loaded.model.parameters()} == {"cpu"}


def test_builtin_round_trips_through_a_checkpoint_directory(builtin_dir: Path) -> None:
    assert {"config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json"} <= {
        p.name for p in builtin_dir.iterdir()}
    built, loaded = load_builtin("tiny-llama"), load_checkpoint(builtin_dir)
    ids = _fresh_ids(built.config.vocab_size, seed=3)
    torch.testing.assert_close(_logits(loaded.model, ids), _logits(built.model, ids), rtol=0, atol=0)
    text = "Hello, world! naïve café ✓ 42"
    assert loaded.tokenizer(text)["input_ids"] == built.tokenizer(text)["input_ids"]
    assert loaded.chat_template == built.chat_template
    chat = [{"role": "user", "content": "Hi there"}]
    assert loaded.encode_chat(chat) == built.encode_chat(chat)


def test_builtin_is_deterministic_and_leaves_global_rng_alone() -> None:
    state = torch.random.get_rng_state()
    a, b = load_builtin("tiny-llama"), load_builtin("tiny-llama")
    assert torch.equal(torch.random.get_rng_state(), state)
    for (name, pa), pb in zip(a.model.named_parameters(), b.model.parameters()):
        assert torch.equal(pa, pb), name
    assert load_builtin("tiny-llama", seed=1).model.lm_head.weight.ne(a.model.lm_head.weight).any()


def test_builtin_tokenizer_round_trips_text_and_matches_model_vocab() -> None:
    tok, cfg = builtin_tokenizer(), load_builtin().config
    assert len(tok) == cfg.vocab_size
    text = "The quick brown fox 🦊 says «bonjour»\n\tdef f(): return 42"
    ids = tok(text)["input_ids"]
    assert ids[0] == tok.bos_token_id == cfg.bos_token_id
    assert tok.decode(ids, skip_special_tokens=True) == text
    assert len(ids) < len(text.encode())  # merges learnt: common words are single tokens
    assert tok.eos_token_id == cfg.eos_token_id


def test_load_model_resolves_builtin_names_and_directories(checkpoints: dict) -> None:
    assert "tiny-llama" in BUILTIN_MODELS
    assert load_model("tiny-llama").name == "tiny-llama"
    assert load_model(checkpoints["gpt2"][1]).path == checkpoints["gpt2"][1]


def test_tokenizer_is_loaded_when_present(checkpoints: dict, tmp_path: Path) -> None:
    path = _copy(checkpoints["llama"][1], tmp_path)
    builtin_tokenizer().save_pretrained(path)
    loaded = load_checkpoint(path)
    assert loaded.tokenizer is not None and loaded.chat_template
    assert loaded.tokenizer.decode(loaded.tokenizer("abc")["input_ids"], skip_special_tokens=True) == "abc"


def test_checkpoint_saved_without_base_prefix_loads(checkpoints: dict, tmp_path: Path) -> None:
    """Like the original GPT-2 files: `h.0.attn...` instead of `transformer.h.0.attn...`, plus old masks."""
    original, src = checkpoints["gpt2"]
    path = _copy(src, tmp_path)
    state = {k.removeprefix("transformer."): v for k, v in load_file(path / "model.safetensors").items()}
    state["h.0.attn.bias"] = torch.ones(1, 1, 128, 128)  # a legacy causal-mask buffer HF ignores too
    save_file(state, path / "model.safetensors")
    ids = _fresh_ids(500, seed=8)
    torch.testing.assert_close(_logits(load_checkpoint(path).model, ids), _logits(original, ids), rtol=0, atol=0)


# ---------------------------------------------------------------------------------------------
# Error paths


def test_nonexistent_path_says_local_only_and_nothing_downloaded(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match="local directories only.*never downloads") as info:
        load_checkpoint("meta-llama/Llama-3-8B")
    assert "meta-llama/Llama-3-8B" in str(info.value) and isinstance(info.value, KilnError)


def test_file_instead_of_directory_is_refused(checkpoints: dict) -> None:
    with pytest.raises(CheckpointError, match="is a file"):
        load_checkpoint(checkpoints["llama"][1] / "config.json")


def test_missing_config_names_file_and_directory(checkpoints: dict, tmp_path: Path) -> None:
    path = _copy(checkpoints["llama"][1], tmp_path)
    (path / "config.json").unlink()
    with pytest.raises(CheckpointError, match=f"config.json is missing from checkpoint directory {path}"):
        load_checkpoint(path)


def test_missing_weights_lists_directory_contents(checkpoints: dict, tmp_path: Path) -> None:
    path = _copy(checkpoints["llama"][1], tmp_path)
    (path / "model.safetensors").unlink()
    with pytest.raises(CheckpointError, match=r"no weights in .*model\.safetensors.*holds: config\.json"):
        load_checkpoint(path)


def test_truncated_safetensors_is_named_and_called_truncated(checkpoints: dict, tmp_path: Path) -> None:
    path = _copy(checkpoints["llama"][1], tmp_path)
    file = path / "model.safetensors"
    data = file.read_bytes()
    file.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match=r"model\.safetensors .*truncated") as info:
        load_checkpoint(path)
    assert str(path) in str(info.value)


def test_truncated_shard_is_named(checkpoints: dict, tmp_path: Path) -> None:
    path = _copy(checkpoints["llama-sharded"][1], tmp_path)
    shard = sorted(path.glob("model-*.safetensors"))[-1]
    shard.write_bytes(shard.read_bytes()[:7])
    with pytest.raises(CheckpointError, match=f"{shard.name} .*truncated"):
        load_checkpoint(path)


def test_index_naming_a_missing_shard_names_both(checkpoints: dict, tmp_path: Path) -> None:
    path = _copy(checkpoints["llama-sharded"][1], tmp_path)
    shard = sorted(path.glob("model-*.safetensors"))[1]
    shard.unlink()
    with pytest.raises(CheckpointError, match=f"model.safetensors.index.json names shard {shard.name}, which is missing"):
        load_checkpoint(path)


def test_unreadable_index_is_reported(checkpoints: dict, tmp_path: Path) -> None:
    path = _copy(checkpoints["llama-sharded"][1], tmp_path)
    (path / "model.safetensors.index.json").write_text("{not json")
    with pytest.raises(CheckpointError, match="cannot read shard index"):
        load_checkpoint(path)


def test_renamed_tensor_is_listed_as_missing_and_unexpected(checkpoints: dict, tmp_path: Path) -> None:
    path = _copy(checkpoints["llama"][1], tmp_path)
    state = load_file(path / "model.safetensors")
    state["model.layers.1.mlp.gate_projection.weight"] = state.pop("model.layers.1.mlp.gate_proj.weight")
    save_file(state, path / "model.safetensors")
    with pytest.raises(CheckpointError) as info:
        load_checkpoint(path)
    message = str(info.value)
    assert "1 tensor(s) missing from the checkpoint: model.layers.1.mlp.gate_proj.weight" in message
    assert "1 unexpected tensor(s) the model does not have: model.layers.1.mlp.gate_projection.weight" in message
    assert info.value.missing == ["model.layers.1.mlp.gate_proj.weight"]


def test_untied_lm_head_missing_is_reported(checkpoints: dict, tmp_path: Path) -> None:
    path = _copy(checkpoints["llama"][1], tmp_path)
    state = load_file(path / "model.safetensors")
    del state["lm_head.weight"]
    save_file(state, path / "model.safetensors")
    with pytest.raises(CheckpointError, match="missing from the checkpoint: lm_head.weight"):
        load_checkpoint(path)


def test_many_missing_tensors_are_listed_up_to_ten(checkpoints: dict, tmp_path: Path) -> None:
    path = _copy(checkpoints["llama"][1], tmp_path)
    state = load_file(path / "model.safetensors")
    save_file({"lm_head.weight": state["lm_head.weight"]}, path / "model.safetensors")
    with pytest.raises(CheckpointError, match=r"(?s)20 tensor\(s\) missing.*and 10 more"):
        load_checkpoint(path)


def test_wrong_shape_names_tensor_expected_and_got(checkpoints: dict, tmp_path: Path) -> None:
    path = _copy(checkpoints["llama"][1], tmp_path)
    state = load_file(path / "model.safetensors")
    state["model.layers.0.self_attn.k_proj.weight"] = torch.randn(64, 64)  # GQA: (2 heads * 16, 64) expected
    save_file(state, path / "model.safetensors")
    with pytest.raises(CheckpointError, match=r"model\.layers\.0\.self_attn\.k_proj\.weight: model expects \(32, 64\), "
                                              r"checkpoint has \(64, 64\)"):
        load_checkpoint(path)


def test_config_of_another_size_reports_shape_mismatches(checkpoints: dict, tmp_path: Path) -> None:
    path = _copy(checkpoints["llama"][1], tmp_path)
    config = json.loads((path / "config.json").read_text())
    config["intermediate_size"] = 96
    (path / "config.json").write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match=r"6 shape mismatch\(es\)"):
        load_checkpoint(path)


def _pickle_checkpoint(checkpoints: dict, tmp_path: Path) -> Path:
    model, src = checkpoints["llama"]
    path = tmp_path / "pickled"
    path.mkdir()
    shutil.copy(src / "config.json", path)
    torch.save(model.state_dict(), path / "pytorch_model.bin")
    return path


def test_pickle_checkpoint_is_refused_by_default(checkpoints: dict, tmp_path: Path) -> None:
    path = _pickle_checkpoint(checkpoints, tmp_path)
    with pytest.raises(CheckpointError, match="pickle checkpoint.*allow_pickle=True"):
        load_checkpoint(path)


def test_pickle_checkpoint_loads_when_allowed(checkpoints: dict, tmp_path: Path) -> None:
    path = _pickle_checkpoint(checkpoints, tmp_path)
    loaded = load_checkpoint(path, allow_pickle=True)
    ids = _fresh_ids(500, seed=5)
    torch.testing.assert_close(_logits(loaded.model, ids), _logits(checkpoints["llama"][0], ids), rtol=0, atol=0)


_EXPLOITED: list[str] = []


class _Exploit:
    """Unpickling this would call a function: what weights_only=True must refuse."""

    def __reduce__(self) -> tuple:
        return (_EXPLOITED.append, ("ran",))


def test_allowed_pickle_still_refuses_code_execution(checkpoints: dict, tmp_path: Path) -> None:
    path = _pickle_checkpoint(checkpoints, tmp_path)
    with open(path / "pytorch_model.bin", "wb") as f:
        pickle.dump({"lm_head.weight": _Exploit()}, f, protocol=2)
    with pytest.raises(CheckpointError, match="weights_only=True"):
        load_checkpoint(path, allow_pickle=True)
    assert _EXPLOITED == []


def test_corrupt_config_is_named(checkpoints: dict, tmp_path: Path) -> None:
    path = _copy(checkpoints["llama"][1], tmp_path)
    (path / "config.json").write_text('{"model_type": "no-such-model"}')
    with pytest.raises(CheckpointError, match=r"cannot read .*config\.json"):
        load_checkpoint(path)
