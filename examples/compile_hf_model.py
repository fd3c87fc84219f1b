"""Compile a transformers checkpoint with kiln and look inside.

Builds a tiny random-weight Llama from a config, saves it as a checkpoint directory
(safetensors), loads it back and compiles it; then prints the captured IR, the compile stats and
a check against eager PyTorch at two sequence lengths. Nothing is downloaded.

    .venv/bin/python examples/compile_hf_model.py [checkpoint_dir]
"""

from __future__ import annotations

import sys
import tempfile

import torch
from transformers import AutoModelForCausalLM, LlamaConfig, LlamaForCausalLM

import kiln


def tiny_checkpoint(path: str) -> None:
    torch.manual_seed(0)
    cfg = LlamaConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                      num_key_value_heads=2, vocab_size=256, use_cache=False)
    LlamaForCausalLM(cfg).eval().save_pretrained(path, safe_serialization=True)


def main(path: str) -> None:
    model = AutoModelForCausalLM.from_pretrained(path, use_safetensors=True).eval()
    fn = kiln.compile(model, dump_dir=None)
    for seq in (12, 30):
        ids = torch.randint(0, model.config.vocab_size, (2, seq))
        out = fn(input_ids=ids)
        with torch.no_grad():
            ref = model(input_ids=ids)
        print(f"seq {seq}: max |kiln - eager| = {(out.logits - ref.logits).abs().max().item():.2e}")
    print(fn.graph)
    print(fn.stats)


if __name__ == "__main__":
    if len(sys.argv) > 1:
        main(sys.argv[1])
    else:
        with tempfile.TemporaryDirectory() as d:
            tiny_checkpoint(d)
            main(d)
