"""Shared fixtures: tiny random-weight transformers models saved and reloaded through a temp dir."""

from __future__ import annotations

import os
import tempfile
import warnings

import pytest
import torch

# Before kiln is imported (kiln.debug reads the environment once): on a CPU-only machine run
# Triton kernels in Triton's interpreter, and keep generated kernels in a private temp cache.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")
os.environ.setdefault("KILN_CACHE_DIR", tempfile.mkdtemp(prefix="kiln-test-kernels-"))

warnings.filterwarnings("ignore", message=".*bos_token_id.*|.*eos_token_id.*")


def tiny_config(kind: str):  # noqa: ANN201
    from transformers import BertConfig, GPT2Config, LlamaConfig

    if kind == "gpt2":
        return GPT2Config(n_embd=64, n_layer=2, n_head=4, vocab_size=500, n_positions=128, use_cache=False, bos_token_id=0, eos_token_id=0)
    if kind == "llama":
        return LlamaConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2, vocab_size=500, use_cache=False)
    if kind == "bert":
        return BertConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4, vocab_size=500)
    raise KeyError(kind)


@pytest.fixture(scope="session")
def saved_models(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """Each tiny model saved with save_pretrained (safetensors) and loaded back: nothing downloaded."""
    from transformers import AutoModel, AutoModelForCausalLM, BertModel, GPT2LMHeadModel, LlamaForCausalLM

    out = {}
    for kind, cls, auto in [("gpt2", GPT2LMHeadModel, AutoModelForCausalLM), ("llama", LlamaForCausalLM, AutoModelForCausalLM), ("bert", BertModel, AutoModel)]:
        torch.manual_seed(0)
        path = tmp_path_factory.mktemp(kind)
        cls(tiny_config(kind)).eval().save_pretrained(path, safe_serialization=True)
        out[kind] = auto.from_pretrained(path, use_safetensors=True).eval()
    return out


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a - b).abs().max() / b.abs().max().clamp_min(1e-12)).item()


@pytest.fixture(scope="session")
def trained_lm(tmp_path_factory: pytest.TempPathFactory):  # noqa: ANN201 (a kiln.models.trained_tiny.TrainedLM)
    """A tiny Llama trained once per session on tests/data/corpus.txt (~10 s of one CPU core).

    Saved with save_pretrained (safetensors) and reloaded; `.path` is the checkpoint directory.
    Shared by every test: deep-copy `.model` before changing its weights.
    """
    from pathlib import Path

    from kiln.models.trained_tiny import save_trained, train_tiny_lm

    text = (Path(__file__).parent / "data" / "corpus.txt").read_text(encoding="utf-8")
    return save_trained(train_tiny_lm(text, steps=200, seed=0), tmp_path_factory.mktemp("trained_lm"))


def rank_main(rank: int, results, body) -> None:  # noqa: ANN001 (a multiprocessing queue, a callable)
    """The whole life of a spawned rank: put (rank, "ok", body()) or (rank, "error", traceback) on
    `results`, then shut torch.distributed down and exit (flushing the queue first)."""
    import os
    import traceback

    from kiln.runtime.distributed import shutdown_distributed

    torch.set_num_threads(1)
    try:
        results.put((rank, "ok", body()))
    except BaseException:
        results.put((rank, "error", traceback.format_exc()))
    finally:
        shutdown_distributed()
        results.close()
        results.join_thread()
        os._exit(0)


def collect_ranks(procs: list, results, wait_s: float) -> dict:  # noqa: ANN001 (a multiprocessing queue)
    """The payloads of spawned ranks that each put one (rank, status, payload) on `results`, by
    rank. A rank that reports a failure, exits without reporting or is late past `wait_s` fails
    the test with its traceback or exit code (multi-process tests never hang)."""
    import queue
    import time

    got: dict = {}
    deadline = time.monotonic() + wait_s
    while len(got) < len(procs):
        try:
            rank, status, payload = results.get(timeout=1.0)
        except queue.Empty:
            dead = [r for r, p in enumerate(procs) if p.exitcode is not None and r not in got]
            assert not dead, f"rank {dead[0]} exited with code {procs[dead[0]].exitcode} without reporting"
            assert time.monotonic() < deadline, f"ranks {sorted(set(range(len(procs))) - set(got))} did not finish in {wait_s}s"
            continue
        assert status == "ok", f"rank {rank} failed:\n{payload}"
        got[rank] = payload
    return got


def stop_ranks(procs: list, grace_s: float) -> None:
    """Join spawned ranks, killing any still alive after `grace_s` (after a failure the others
    may sit in a collective until their timeout)."""
    for p in procs:
        p.join(timeout=grace_s)
        if p.is_alive():
            p.kill()
            p.join()
