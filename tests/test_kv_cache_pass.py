"""insert_kv_cache: a traced decoder becomes a paged-KV model; prefill + decode equal full recompute.

Blocks are handed out by hand here (the engine's allocator is tested on its own): what is checked
is the pass and the paged-attention reference, on flat batches mixing sequences and padding.
"""

from __future__ import annotations

import pytest
import torch

from kiln import ir
from kiln.frontend.export import trace_export
from kiln.ir.dtypes import from_torch
from kiln.ir.opset.paged import reference_paged_attention
from kiln.options import CompileOptions
from kiln.passes import PIPELINE, run_pipeline
from kiln.passes.kv_cache import KVCacheInsertionError, find_attention_sites, kv_cache_pass
from kiln.runtime.plan import build_plan

from conftest import tiny_config

BS, NB = 4, 64


def _model(kind: str) -> torch.nn.Module:
    from transformers import GPT2LMHeadModel, LlamaForCausalLM, Qwen2Config, Qwen2ForCausalLM

    torch.manual_seed(0)
    if kind == "qwen2":
        cfg = Qwen2Config(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2, vocab_size=500, use_cache=False)
        return Qwen2ForCausalLM(cfg).eval()
    cls = {"gpt2": GPT2LMHeadModel, "llama": LlamaForCausalLM}[kind]
    return cls(tiny_config(kind)).eval()


class Paged:
    """A paged plan plus hand-managed block tables (block ids handed out in a scrambled order)."""

    def __init__(self, model: torch.nn.Module):
        ids = torch.randint(0, 500, (1, 8))
        tr = trace_export(model, (), {"input_ids": ids, "position_ids": torch.arange(8)[None]})
        head = [p for p in PIPELINE if p.name != "plan_memory"]
        k = next(i for i, p in enumerate(head) if p.name == "fuse_patterns") + 1
        g, _ = run_pipeline(tr.graph, head[:k], CompileOptions())
        sites = find_attention_sites(g)
        self.caches = [(torch.randn(NB, BS, s.kv_heads, s.head_dim), torch.randn(NB, BS, s.kv_heads, s.head_dim)) for s in sites]
        self.graph, _ = run_pipeline(g, [kv_cache_pass(self.caches)] + head[k:], CompileOptions())
        self.plan = build_plan(self.graph, torch.device("cpu"))
        self.free = list(torch.randperm(NB).tolist())
        self.tables: dict[int, list[int]] = {}

    def step(self, batch: list[tuple[int, list[int], int]], pad: int = 0) -> torch.Tensor:
        """batch: (seq id, new tokens, tokens already cached); returns last-token logits per seq."""
        ids, pos, slots, lens, starts, pick = [], [], [], [], [0], []
        for sid, new, start in batch:
            table = self.tables.setdefault(sid, [])
            total = start + len(new)
            while len(table) * BS < total:
                table.append(self.free.pop())
            ids += new
            pos += list(range(start, total))
            slots += [table[p // BS] * BS + p % BS for p in range(start, total)]
            lens.append(total)
            starts.append(starts[-1] + len(new))
            pick.append(starts[-1] - 1)
        ids += [0] * pad
        pos += [0] * pad
        slots += [-1] * pad
        width = max(len(self.tables[s]) for s, _, _ in batch)
        tables = [self.tables[s] + [0] * (width - len(self.tables[s])) for s, _, _ in batch]
        out = self.plan(
            torch.tensor([ids]), torch.tensor([pos]), torch.tensor(slots), torch.tensor(tables, dtype=torch.int32),
            torch.tensor(lens, dtype=torch.int32), torch.tensor(starts, dtype=torch.int32), torch.tensor(pick),
        )
        return out[0][0]


@pytest.mark.parametrize("kind", ["llama", "gpt2", "qwen2"])
def test_prefill_then_decode_equals_full_recompute(kind: str) -> None:
    model = _model(kind)
    paged = Paged(model)
    gen = torch.Generator().manual_seed(1)
    prompts = {0: torch.randint(0, 500, (7,), generator=gen).tolist(), 1: torch.randint(0, 500, (3,), generator=gen).tolist()}
    seqs = {s: list(p) for s, p in prompts.items()}
    logits = paged.step([(s, p, 0) for s, p in prompts.items()], pad=2)  # both prompts in one flat batch
    with torch.no_grad():
        for _ in range(4):
            for row, s in enumerate(seqs):
                ref = model(torch.tensor([seqs[s]])).logits[0, -1]
                torch.testing.assert_close(logits[row], ref, rtol=1e-5, atol=1e-5)
            nxt = {s: int(logits[row].argmax()) for row, s in enumerate(seqs)}
            batch = [(s, [nxt[s]], len(seqs[s])) for s in seqs]
            for s in seqs:
                seqs[s].append(nxt[s])
            logits = paged.step(batch, pad=1)  # decode: one token each (+ padding: S >= 2)


def test_a_chunked_prefill_equals_one_prefill() -> None:
    model = _model("llama")
    paged = Paged(model)
    prompt = torch.randint(0, 500, (11,), generator=torch.Generator().manual_seed(2)).tolist()
    paged.step([(0, prompt[:5], 0)])
    chunked = paged.step([(0, prompt[5:], 5)])
    with torch.no_grad():
        torch.testing.assert_close(chunked[0], model(torch.tensor([prompt])).logits[0, -1], rtol=1e-5, atol=1e-5)


def test_graph_inputs_and_caches_after_insertion() -> None:
    paged = Paged(_model("llama"))
    names = [v.name for v in paged.graph.inputs]
    assert names == ["input_ids", "position_ids", "slot_mapping", "block_tables", "seq_lens", "query_start", "logits_indices"]
    ops = paged.graph.op_counts()
    assert ops.get("paged_attention") == 2 and "attention" not in ops
    assert {"kv.0.k", "kv.0.v", "kv.1.k", "kv.1.v"} <= set(paged.graph.constants)
    assert not any(n.op.name in ("cumsum", "le") for n in paged.graph.nodes), "the model's own mask should be dead"


def test_a_non_causal_attention_is_refused_with_the_node_named() -> None:
    g = ir.Graph()
    f32 = from_torch(torch.float32)
    ir_pos = g.add_input("position_ids", ir.TensorType(from_torch(torch.int64), (1, 4)))
    q = g.add_input("q", ir.TensorType(f32, (1, 2, 4, 8)))
    out = g.add_node("attention", [q, q, q], {"causal": False}).outputs[0]
    g.outputs = [out, ir_pos]
    with pytest.raises(KVCacheInsertionError, match="attention node 0.*bidirectional"):
        find_attention_sites(g)


def test_reference_paged_attention_skips_padding_slots_and_zeroes_padding_rows() -> None:
    gen = torch.Generator().manual_seed(3)
    kc, vc = torch.randn(4, 2, 1, 8, generator=gen), torch.randn(4, 2, 1, 8, generator=gen)
    before = kc.clone()
    q, k, v = (torch.randn(1, 2, 3, 8, generator=gen) for _ in range(3))
    k1, v1 = k[:, :1], v[:, :1]
    out = reference_paged_attention(
        q, k1, v1, kc, vc, torch.tensor([5, -1, -1]), torch.tensor([[2, 0]], dtype=torch.int32),
        torch.tensor([2], dtype=torch.int32), torch.tensor([0, 1], dtype=torch.int32), None,
    )
    changed = (kc != before).any(-1).any(-1).nonzero().tolist()
    assert changed == [[2, 1]], "only slot 5 = block 2, offset 1 is written"
    assert out[:, :, 1:].abs().sum() == 0 and out[:, :, 0].abs().sum() > 0
