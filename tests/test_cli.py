"""The `kiln` command line: demo and compile run and say what they did."""

from __future__ import annotations

import pytest
import torch

from kiln.cli import main


def test_demo_compiles_checks_and_reports(capsys: pytest.CaptureFixture) -> None:
    assert main(["demo", "--iters", "3", "--seq", "12"]) == 0
    out = capsys.readouterr().out
    assert "captured via torch.export" in out and "0 recompiles" in out
    assert "max rel. error vs eager" in out and "x eager" in out


def test_compile_prints_ir_of_a_checkpoint_directory(tmp_path: object, capsys: pytest.CaptureFixture) -> None:
    from transformers import LlamaForCausalLM

    from conftest import tiny_config

    torch.manual_seed(0)
    LlamaForCausalLM(tiny_config("llama")).eval().save_pretrained(tmp_path, safe_serialization=True)
    assert main(["compile", str(tmp_path), "--print-ir", "--strict"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("graph(%input_ids: i64[B, S])")
    assert "attention(" in out
