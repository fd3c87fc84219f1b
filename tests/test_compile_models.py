"""kiln.compile on real transformers architectures vs eager, on fresh random inputs."""

from __future__ import annotations

import pytest
import torch

import kiln

from conftest import rel_err


def _ids(batch: int, seq: int, seed: int) -> torch.Tensor:
    return torch.randint(1, 500, (batch, seq), generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("kind", ["gpt2", "llama", "bert"])
def test_compiled_model_matches_eager_at_two_lengths_without_recompiling(saved_models: dict, kind: str) -> None:
    model = saved_models[kind]
    fn = kiln.compile(model)
    for seq, seed in [(16, 1), (27, 2)]:
        x = _ids(2, seq, seed)
        mask = torch.ones_like(x)
        out = fn(input_ids=x, attention_mask=mask)
        with torch.no_grad():
            ref = model(input_ids=x, attention_mask=mask)
        assert type(out) is type(ref)
        key = "logits" if "logits" in ref else "last_hidden_state"
        assert rel_err(out[key], ref[key]) <= 1e-5
    assert fn.stats.traces == 1 and fn.stats.recompiles == 0
    assert fn.stats.path == "export"
    assert fn.stats.opaque_ops == {}  # every ATen op these models use has a kiln declaration


def test_other_batch_size_reuses_the_plan(saved_models: dict) -> None:
    model = saved_models["llama"]
    fn = kiln.compile(model, {"input_ids": _ids(2, 8, 3)})
    out = fn(input_ids=_ids(5, 11, 4))
    with torch.no_grad():
        ref = model(input_ids=_ids(5, 11, 4))
    assert rel_err(out.logits, ref.logits) <= 1e-5
    assert fn.stats.traces == 1


def test_padding_mask_changes_output_like_eager(saved_models: dict) -> None:
    model = saved_models["gpt2"]
    fn = kiln.compile(model)
    x = _ids(2, 12, 5)
    mask = torch.ones_like(x)
    mask[0, :4] = 0
    out = fn(input_ids=x, attention_mask=mask)
    with torch.no_grad():
        ref = model(input_ids=x, attention_mask=mask)
    assert rel_err(out.logits[1], ref.logits[1]) <= 1e-5
    assert rel_err(out.logits[0, 4:], ref.logits[0, 4:]) <= 1e-5


def test_parameters_become_named_constants(saved_models: dict) -> None:
    model = saved_models["gpt2"]
    fn = kiln.compile(model, {"input_ids": _ids(1, 8, 6)})
    names = set(fn.graph.constants)
    assert "transformer.h.0.attn.c_attn.weight" in names
    assert [v.name for v in fn.graph.inputs] == ["input_ids"]
    assert all(fn.graph.constant_data[n] is not None for n in names)


def test_torch_compile_backend_string_runs_kiln(saved_models: dict) -> None:
    model = saved_models["gpt2"]
    torch._dynamo.reset()
    compiled = torch.compile(model, backend="kiln")
    x = _ids(2, 10, 7)
    with torch.no_grad():
        out = compiled(input_ids=x)
        ref = model(input_ids=x)
    assert rel_err(out.logits, ref.logits) <= 1e-5


def test_torch_compile_backend_makes_parameters_named_constants() -> None:
    from kiln.frontend.dynamo import make_backend

    class M(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.lin = torch.nn.Linear(4, 3)
            self.register_buffer("shift", torch.randn(3))

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.lin(x) + self.shift

    stats = kiln.CompileStats()
    torch._dynamo.reset()
    m = M().eval()
    compiled = torch.compile(m, backend=make_backend(stats=stats))
    x = torch.randn(2, 4)
    with torch.no_grad():
        out = compiled(x)
    assert rel_err(out, m(x)) <= 1e-5
    assert stats.traces == 1
    assert set(stats.graphs[0].constants) == {"lin.weight", "lin.bias", "shift"}
    assert stats.graphs[0].constant_data["lin.weight"] is m.lin.weight


@pytest.mark.parametrize("kind", ["gpt2", "llama", "bert"])
def test_written_out_eager_attention_fuses_into_attention_ops(kind: str) -> None:
    from transformers import BertModel, GPT2LMHeadModel, LlamaForCausalLM

    from conftest import tiny_config

    cls = {"gpt2": GPT2LMHeadModel, "llama": LlamaForCausalLM, "bert": BertModel}[kind]
    torch.manual_seed(0)
    cfg = tiny_config(kind)
    cfg._attn_implementation = "eager"  # softmax(q k^T * scale + mask) v, repeat_kv for GQA
    model = cls(cfg).eval()
    x = _ids(2, 12, 9)
    fn = kiln.compile(model, {"input_ids": x})
    counts = fn.graph.op_counts()
    # (older transformers compute rotary angles with a matmul outside attention: not counted)
    assert counts.get("attention") == 2 and "softmax" not in counts
    assert fn.stats.opaque_ops == {}
    if kind == "llama":
        assert all(n.attrs["gqa"] for n in fn.graph.nodes if n.op.name == "attention")
    out = fn(input_ids=x)
    with torch.no_grad():
        ref = model(input_ids=x)
    key = "logits" if "logits" in ref else "last_hidden_state"
    assert rel_err(out[key], ref[key]) <= 1e-5
