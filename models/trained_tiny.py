"""A tiny Llama trained for a few seconds on CPU: a model with real structure to measure accuracy on.

Random-weight logits are near-uniform, so top-1 agreement and perplexity say little about a
quantization scheme on them: any small error flips near-ties, and every scheme "keeps" a
perplexity equal to the vocabulary size. `train_tiny_lm` trains a real `transformers`
`LlamaForCausalLM` (RMSNorm, rotary embeddings, grouped-query attention) on a small text until its
next-token distributions are peaked and its held-out perplexity is far below the unigram baseline.

Tokenizer: the built-in byte-level BPE of `runtime/builtin.py` (256 bytes + 120 merges + 6
specials), so the trained checkpoint loads in `kiln.LLM` with a real tokenizer and any text
encodes without unknown tokens. The text is encoded once; the first `train_fraction` of the ids is
trained on and the rest held out (a split on ids, not characters, so no token straddles it).

Determinism: weights and batches come from a forked RNG seeded with `seed` (no dropout); the
thread count is fixed for the run and deterministic algorithms are on; the global RNG, thread
count and determinism flag are restored afterwards. The same `seed`, `steps` and `threads` give
bit-identical weights on one machine. One thread by default: on a shared 2-core box two OpenMP
threads competing with other processes made 200 steps take 124 s instead of 10 s.

Cost (one CPU core, defaults, tests/data/corpus.txt: 24.8k tokens): 200 steps of 16 x 64 tokens
in ~6-10 s; held-out perplexity ~14.9 against an add-one unigram baseline of ~56 (training-text
perplexity ~9.7). Greedy samples still loop ("shall shall ..."): the point is peaked, structured
next-token distributions, not fluent text.
"""

from __future__ import annotations

import math
import time
from collections import Counter
from dataclasses import dataclass, replace
from pathlib import Path

import torch

from ..runtime.builtin import builtin_config, builtin_tokenizer


@dataclass(frozen=True)
class TinyLMConfig:
    """Shape and optimiser settings of the trained tiny Llama (defaults fit ~10 s of 2-core CPU)."""

    hidden: int = 128
    intermediate: int = 256
    layers: int = 2
    heads: int = 4
    kv_heads: int = 2
    context: int = 64  # training window = max_position_embeddings: the context length
    batch: int = 16
    lr: float = 3e-3
    warmup: int = 20
    weight_decay: float = 0.01


@dataclass(frozen=True)
class TrainedLM:
    """What `train_tiny_lm` gives back (iterable as `model, tokenizer, train_ids, heldout_ids`).

    `train_ids`, `heldout_ids`: 1-D int64 tensors; `context`: the window the model was trained on
    (use it as the perplexity window); `final_loss`: mean training loss over the last 10 steps;
    `path`: the checkpoint directory once saved (`save_trained`), else None.
    """

    model: torch.nn.Module
    tokenizer: object
    train_ids: torch.Tensor
    heldout_ids: torch.Tensor
    context: int
    final_loss: float
    train_seconds: float
    path: Path | None = None

    def __iter__(self):  # noqa: ANN204 (tuple-style unpacking)
        return iter((self.model, self.tokenizer, self.train_ids, self.heldout_ids))


def encode_split(text: str, tokenizer: object, train_fraction: float = 0.9) -> tuple[torch.Tensor, torch.Tensor]:
    """Encode `text` (no special tokens) and split the ids: first `train_fraction`, then the rest."""
    ids = torch.tensor(tokenizer(text, add_special_tokens=False)["input_ids"], dtype=torch.long)
    cut = int(len(ids) * train_fraction)
    return ids[:cut], ids[cut:]


def unigram_perplexity(train_ids: torch.Tensor, heldout_ids: torch.Tensor, vocab_size: int) -> float:
    """Perplexity on `heldout_ids` of add-one-smoothed token frequencies counted on `train_ids`.

    The baseline a model must beat to show it learnt more than which tokens are common.
    """
    counts = Counter(train_ids.tolist())
    total = len(train_ids) + vocab_size
    nll = -sum(math.log((counts[t] + 1) / total) for t in heldout_ids.tolist()) / len(heldout_ids)
    return math.exp(nll)


def tiny_llama_config(vocab_size: int, cfg: TinyLMConfig):  # noqa: ANN201 (a transformers LlamaConfig)
    """The `LlamaConfig` of the trained model: the built-in special ids, untied embeddings.

    `use_cache=False`: the model scores whole windows, and a plain forward then returns logits
    only (no HF `DynamicCache`), which `torch.export`, hence `kiln.compile`, captures whole; the
    engine brings its own KV cache and passes `use_cache=False` anyway.
    """
    base = builtin_config()
    base_ids = {k: getattr(base, k) for k in ("pad_token_id", "bos_token_id", "eos_token_id")}
    from transformers import LlamaConfig

    return LlamaConfig(
        vocab_size=vocab_size, hidden_size=cfg.hidden, intermediate_size=cfg.intermediate,
        num_hidden_layers=cfg.layers, num_attention_heads=cfg.heads, num_key_value_heads=cfg.kv_heads,
        max_position_embeddings=cfg.context, tie_word_embeddings=False, use_cache=False, **base_ids,
    )


def _lr_at(step: int, steps: int, cfg: TinyLMConfig) -> float:
    """Linear warmup then cosine decay to 10% of the peak."""
    if step < cfg.warmup:
        return cfg.lr * (step + 1) / cfg.warmup
    frac = (step - cfg.warmup) / max(1, steps - cfg.warmup)
    return cfg.lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * frac)))


def _fit(model: torch.nn.Module, train_ids: torch.Tensor, steps: int, cfg: TinyLMConfig,
         gen: torch.Generator) -> float:
    """AdamW on random windows of `train_ids`; returns the mean loss of the last 10 steps."""
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay, betas=(0.9, 0.98))
    offsets = torch.arange(cfg.context + 1)
    last: list[float] = []
    model.train()
    for step in range(steps):
        starts = torch.randint(0, len(train_ids) - cfg.context - 1, (cfg.batch,), generator=gen)
        window = train_ids[starts[:, None] + offsets]  # (B, T + 1)
        for group in opt.param_groups:
            group["lr"] = _lr_at(step, steps, cfg)
        logits = model(input_ids=window[:, :-1], use_cache=False).logits  # (B, T, V)
        loss = torch.nn.functional.cross_entropy(logits.flatten(0, 1), window[:, 1:].flatten())
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        last = (last + [loss.item()])[-10:]
    return sum(last) / len(last)


def train_tiny_lm(text: str, *, steps: int = 200, seed: int = 0, threads: int = 1,
                  train_fraction: float = 0.9, config: TinyLMConfig | None = None) -> TrainedLM:
    """Train a tiny `LlamaForCausalLM` on the first `train_fraction` of `text`; eval mode on return.

    `steps` AdamW steps on random `config.context`-token windows of the training ids; see the
    module docstring for the determinism contract.
    """
    from transformers import LlamaForCausalLM

    cfg = config or TinyLMConfig()
    tokenizer = builtin_tokenizer()
    train_ids, heldout_ids = encode_split(text, tokenizer, train_fraction)
    if len(train_ids) <= cfg.context + 1:
        raise ValueError(f"text too short: {len(train_ids)} training tokens for a {cfg.context}-token window")
    old_threads, old_det = torch.get_num_threads(), torch.are_deterministic_algorithms_enabled()
    start = time.perf_counter()
    try:
        torch.set_num_threads(threads)
        torch.use_deterministic_algorithms(True)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            model = LlamaForCausalLM(tiny_llama_config(len(tokenizer), cfg))
            gen = torch.Generator().manual_seed(seed)
            final_loss = _fit(model, train_ids, steps, cfg, gen)
    finally:
        torch.set_num_threads(old_threads)
        torch.use_deterministic_algorithms(old_det)
    return TrainedLM(model.eval(), tokenizer, train_ids, heldout_ids, cfg.context, final_loss,
                     time.perf_counter() - start)


def save_trained(trained: TrainedLM, directory: str | Path) -> TrainedLM:
    """Write model (safetensors) and tokenizer with `save_pretrained` into `directory`.

    Returns `trained` with `path` set and the model reloaded from the checkpoint (eval mode), so
    callers measure exactly what `kiln.LLM(path)` or `load_checkpoint(path)` would load.
    """
    from transformers import LlamaForCausalLM

    directory = Path(directory)
    trained.model.save_pretrained(directory, safe_serialization=True)
    trained.tokenizer.save_pretrained(directory)
    model = LlamaForCausalLM.from_pretrained(directory, use_safetensors=True).eval()
    return replace(trained, model=model, path=directory)
