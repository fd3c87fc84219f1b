"""Regenerate docs/passes.png: the HTML pass viewer of a tiny random Llama, at fuse_patterns.

Usage: .venv/bin/python scripts/passes_screenshot.py [out.png]   (needs Debian's `chromium`)
Nothing is downloaded: the model is built from a small config with random weights.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import torch
from transformers import LlamaConfig, LlamaForCausalLM

import kiln


def main() -> None:
    out = Path(sys.argv[1] if len(sys.argv) > 1 else "docs/passes.png").resolve()
    exe = shutil.which("chromium")
    if exe is None:
        sys.exit("chromium is not installed (apt-get install -y chromium)")
    torch.manual_seed(0)
    cfg = LlamaConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                      num_key_value_heads=2, vocab_size=500, use_cache=False)
    with tempfile.TemporaryDirectory() as tmp:
        kiln.compile(LlamaForCausalLM(cfg).eval(), {"input_ids": torch.randint(0, 500, (2, 8))}, dump_dir=f"{tmp}/dumps")
        page = Path(tmp, "dumps", "trace1_passes.html").as_uri() + "#fuse_patterns"
        flags = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--no-first-run", f"--user-data-dir={tmp}/chromium", "--virtual-time-budget=5000",
                 "--hide-scrollbars", "--run-all-compositor-stages-before-draw", "--window-size=1400,900"]
        subprocess.run([exe, *flags, f"--screenshot={out}", page], check=True, capture_output=True, timeout=120)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
