"""A decoder step with its KV cache as graph inputs/outputs, for runtimes that drive generation.

`export_decoder(model, path)` traces a transformers causal LM wrapped as one step over a cache
held in a single tensor (so the past length is one symbol `P` for every layer):

    inputs:  input_ids i64[1, S], past f32[2 * layers, 1, kv_heads, P, head_dim]
             (rows 2i and 2i + 1 are layer i's keys and values; P may be 0 for the prompt)
    outputs: output_0 f32[1, vocab] (logits of the last position),
             output_1 f32[2 * layers, 1, kv_heads, P + S, head_dim] (the cache to pass next)

and exports it through kiln.export_onnx; `greedy_generate` drives such a file with onnxruntime.
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np
import torch


class CachedStep(torch.nn.Module):
    """One decoder step of an HF causal LM over a cache given as one stacked tensor."""

    def __init__(self, model: torch.nn.Module):
        super().__init__()
        self.model = model
        self.layers = model.config.num_hidden_layers

    def forward(self, input_ids: torch.Tensor, past: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        from transformers import DynamicCache

        cache = DynamicCache(config=self.model.config)
        for i in range(self.layers):
            cache.update(past[2 * i], past[2 * i + 1], i)  # (1, KVH, P, D) each
        out = self.model(input_ids=input_ids, past_key_values=cache, use_cache=True)
        present = []
        for layer in out.past_key_values.layers[: self.layers]:
            present += [layer.keys, layer.values]
        return out.logits[:, -1, :], torch.stack(present)  # (1, V), (2L, 1, KVH, P + S, D)


def cache_shape(config: Any, past_len: int) -> tuple[int, ...]:
    heads = config.num_attention_heads
    kv = getattr(config, "num_key_value_heads", None) or heads
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // heads
    return (2 * config.num_hidden_layers, 1, kv, past_len, head_dim)


def export_decoder(model: torch.nn.Module, path: str | os.PathLike, *, target: str = "standard", opset: int = 18) -> Any:
    """Export `model` (a transformers causal LM, fp32) as a KV-cache decoder step (see module doc)."""
    from ...options import CompileOptions
    from .export import export_onnx

    cfg = model.config
    ids = torch.randint(1, cfg.vocab_size, (1, 4))
    past = torch.zeros(cache_shape(cfg, 3), dtype=next(model.parameters()).dtype)  # P = 3: not 0/1 specialised
    return export_onnx(CachedStep(model.eval()), (ids, past), path, target=target, opset=opset,
                       options=CompileOptions(fullgraph=True))


def greedy_generate(session: Any, config: Any, prompt: list[int], max_tokens: int) -> list[int]:
    """Greedy tokens from an exported decoder step run by an onnxruntime InferenceSession."""
    past = np.zeros(cache_shape(config, 0), np.float32)
    cur = np.asarray([prompt], dtype=np.int64)
    out: list[int] = []
    for _ in range(max_tokens):
        logits, past = session.run(None, {"input_ids": cur, "past": past})
        out.append(int(logits[0].argmax()))
        cur = np.asarray([[out[-1]]], dtype=np.int64)
    return out
