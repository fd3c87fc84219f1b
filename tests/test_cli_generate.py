"""`kiln generate` streams the same text `kiln.LLM.generate` returns; `kiln serve --help` works."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

import kiln
from kiln.cli import main


def test_generate_prints_the_greedy_text_of_llm_generate() -> None:
    env = {**os.environ, "PYTHONIOENCODING": "utf-8"}
    cmd = [sys.executable, "-m", "kiln.cli", "generate", "--prompt", "Hello there", "--max-tokens", "5"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
    try:  # build the reference while the subprocess starts up
        expected = kiln.LLM("tiny-llama").generate(["Hello there"], kiln.SamplingParams(max_tokens=5, temperature=0.0))[0]
        out, err = proc.communicate(timeout=120)
    finally:
        proc.kill()
    assert proc.returncode == 0, err.decode()
    assert len(expected.outputs[0].token_ids) == 5
    assert out.decode("utf-8") == expected.outputs[0].text + "\n"


def test_generate_rejects_bad_sampling_values(capsys: pytest.CaptureFixture) -> None:
    assert main(["generate", "--prompt", "x", "--temperature", "-1"]) == 2
    assert "temperature" in capsys.readouterr().err


@pytest.mark.parametrize("cmd", ["serve", "generate"])
def test_help_describes_the_options(cmd: str, capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main([cmd, "--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    assert "--model" in out and "tiny-llama" in out
    assert all(flag in out for flag in (["--host", "--port", "--max-tokens-limit", "--max-body-bytes"] if cmd == "serve" else ["--prompt", "--max-tokens", "--temperature", "--stop"]))
