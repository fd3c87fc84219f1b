"""Built-in tiny language models: real `transformers` models with seeded random weights.

`"tiny-llama"` is a `LlamaForCausalLM` (hidden 64, 2 layers, 4 query heads over 2 KV heads) with
a byte-level BPE tokenizer built in code, so demos and tests need no download and no checkpoint
on disk. Everything is deterministic: the same weights and the same token ids on every run.

The tokenizer is the `tokenizers` library's byte-level BPE. Its vocabulary is the 256 bytes plus
merges learnt here from `_CORPUS` by the textbook BPE rule (merge the most frequent adjacent pair,
ties broken by the pair's text), computed in plain Python because the `tokenizers` trainer does
not promise identical merges across runs. Learning 120 merges from this text takes a few
milliseconds; the library does all encoding and decoding.

Why not reuse `models/tiny_gpt.py`: the engine and the KV-cache pass take any `transformers`
causal LM (HF config, `forward(input_ids) -> logits`, HF state-dict names), and a genuine Llama
exercises RMSNorm, rotary embeddings and grouped-query attention, which TinyGPT lacks.
"""

from __future__ import annotations

from collections import Counter
from functools import lru_cache
from pathlib import Path

import torch

from .loader import LoadedModel, resolve_dtype

BUILTIN_MODELS = ("tiny-llama",)

SPECIAL_TOKENS = ("<pad>", "<s>", "</s>", "<|system|>", "<|user|>", "<|assistant|>")
_N_MERGES = 120

_CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|' + message['role'] + '|>' + message['content'] + '</s>' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|assistant|>' }}{% endif %}"
)

# A short text the merges are learnt from: plain English with some code and numbers, so common
# words and spaces become single tokens while everything else stays byte-level.
_CORPUS = """\
The quick brown fox jumps over the lazy dog. Hello, world! Hello there, how are you today?
A compiler turns a program into another program that does the same thing, only faster.
The model reads the tokens of the prompt, then writes one new token at a time, and each new
token is appended to the text and read back in, until it reaches the end or a stop string.
def main():
    for i in range(10):
        print("hello", i)
    return 0
Once upon a time there was a little kiln that baked the bread of the village every morning.
The numbers are 0 1 2 3 4 5 6 7 8 9 10 100 1000, and the answer is 42.
"""


def is_builtin(name: str) -> bool:
    """Whether `name` names a built-in model (a name, never a path)."""
    return isinstance(name, str) and name in BUILTIN_MODELS


def _check_name(name: str) -> None:
    if not is_builtin(name):
        raise KeyError(f"unknown built-in model {name!r}; available: {', '.join(BUILTIN_MODELS)}")


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2's reversible byte -> printable character table, the one `ByteLevel` uses."""
    keep = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    table, extra = {}, 0
    for b in range(256):
        if b in keep:
            table[b] = chr(b)
        else:
            table[b] = chr(256 + extra)
            extra += 1
    return table


def _learn_merges(words: list[str], n_merges: int) -> list[tuple[str, str]]:
    """Textbook BPE: repeatedly merge the most frequent adjacent pair (ties: smallest pair)."""
    seqs = Counter(tuple(w) for w in words)  # word (as symbols) -> count
    merges: list[tuple[str, str]] = []
    for _ in range(n_merges):
        pairs: Counter[tuple[str, str]] = Counter()
        for seq, count in seqs.items():
            for pair in zip(seq, seq[1:]):
                pairs[pair] += count
        if not pairs:
            break
        best = min(pairs, key=lambda p: (-pairs[p], p))
        if pairs[best] < 2:
            break
        merges.append(best)
        merged: Counter[tuple[str, ...]] = Counter()
        for seq, count in seqs.items():
            out, i = [], 0
            while i < len(seq):
                if i + 1 < len(seq) and (seq[i], seq[i + 1]) == best:
                    out.append(seq[i] + seq[i + 1])
                    i += 2
                else:
                    out.append(seq[i])
                    i += 1
            merged[tuple(out)] += count
        seqs = merged
    return merges


@lru_cache(maxsize=None)
def _tokenizer_json(name: str) -> str:
    """The serialized `tokenizers.Tokenizer` of a built-in model (cached: built once per process)."""
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, processors

    _check_name(name)
    byte_chars = _bytes_to_unicode()
    pre = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    words = [w for w, _ in pre.pre_tokenize_str(_CORPUS)]
    merges = _learn_merges(words, _N_MERGES)
    vocab: dict[str, int] = {tok: i for i, tok in enumerate(SPECIAL_TOKENS)}
    for b in range(256):
        vocab[byte_chars[b]] = len(vocab)
    for a, b in merges:
        vocab.setdefault(a + b, len(vocab))
    tok = Tokenizer(models.BPE(vocab=vocab, merges=merges))
    tok.pre_tokenizer = pre
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in SPECIAL_TOKENS])
    bos = SPECIAL_TOKENS[1]
    tok.post_processor = processors.TemplateProcessing(
        single=f"{bos} $A", pair=f"{bos} $A {bos} $B", special_tokens=[(bos, vocab[bos])]
    )
    return tok.to_str()


def builtin_tokenizer(name: str = "tiny-llama"):  # noqa: ANN201 (a transformers PreTrainedTokenizerFast)
    """A fresh `PreTrainedTokenizerFast` for the built-in model `name` (adds `<s>` in front)."""
    from tokenizers import Tokenizer
    from transformers import PreTrainedTokenizerFast

    tok = PreTrainedTokenizerFast(
        tokenizer_object=Tokenizer.from_str(_tokenizer_json(name)),
        pad_token="<pad>", bos_token="<s>", eos_token="</s>",
        additional_special_tokens=list(SPECIAL_TOKENS[3:]),
    )
    tok.chat_template = _CHAT_TEMPLATE
    return tok


def builtin_config(name: str = "tiny-llama"):  # noqa: ANN201 (a transformers LlamaConfig)
    """The `transformers` config of the built-in model `name`."""
    from tokenizers import Tokenizer
    from transformers import LlamaConfig

    _check_name(name)
    vocab_size = Tokenizer.from_str(_tokenizer_json(name)).get_vocab_size(with_added_tokens=True)
    return LlamaConfig(
        vocab_size=vocab_size, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
        # Wider than HF's 0.02 so the random model's next-token distributions are peaked enough
        # that greedy decoding has no near-ties between eager PyTorch and compiled plans.
        initializer_range=0.1,
        pad_token_id=0, bos_token_id=1, eos_token_id=2, tie_word_embeddings=False,
    )


def load_builtin(name: str = "tiny-llama", *, dtype: torch.dtype | str | None = None,
                 device: torch.device | str | None = None, seed: int = 0) -> LoadedModel:
    """Build the built-in model `name` in memory: seeded random weights, eval mode.

    The global RNG is left as it was (weights come from a forked RNG seeded with `seed`).
    """
    from transformers import LlamaForCausalLM

    config = builtin_config(name)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = LlamaForCausalLM(config)
    model = model.to(device=torch.device(device or "cpu"), dtype=resolve_dtype(dtype, config))
    tokenizer = builtin_tokenizer(name)
    return LoadedModel(model=model.eval(), config=config, tokenizer=tokenizer,
                       chat_template=tokenizer.chat_template, path=None, name=name)


def save_builtin(name: str, directory: str | Path, *, seed: int = 0) -> Path:
    """Write the built-in model as a real checkpoint directory and return its path.

    Files: config.json, model.safetensors, tokenizer.json, tokenizer_config.json (plus whatever
    else `save_pretrained` writes, e.g. the chat template), loadable by `load_checkpoint`.
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    loaded = load_builtin(name, seed=seed)
    loaded.model.save_pretrained(directory, safe_serialization=True)
    loaded.tokenizer.save_pretrained(directory)
    return directory
