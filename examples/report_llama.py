"""A tiny random-weight Llama for `kiln report` (nothing downloaded):

    .venv/bin/kiln report examples/report_llama.py:tiny_llama --out reports/llama
"""

from __future__ import annotations

import torch
from transformers import LlamaConfig, LlamaForCausalLM


def tiny_llama() -> tuple[torch.nn.Module, dict[str, torch.Tensor]]:
    torch.manual_seed(0)
    cfg = LlamaConfig(hidden_size=128, intermediate_size=256, num_hidden_layers=2, num_attention_heads=4,
                      num_key_value_heads=2, vocab_size=1000, use_cache=False)
    ids = torch.randint(1, 1000, (2, 32), generator=torch.Generator().manual_seed(1))
    return LlamaForCausalLM(cfg).eval(), {"input_ids": ids}
