"""The Triton paged-attention kernels vs `reference_paged_attention`: outputs AND cache contents.

On CPU the kernels run in Triton's interpreter (conftest sets TRITON_INTERPRET=1): small
shapes and forced small tiles (several tiles per sequence, several chunks per tile, split-K).
Caches start random (never zeros), block tables are scrambled, and the last rows of the flat
batch may be padding tokens (slot -1, output zero).
"""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

pytest.importorskip("triton")

import kiln  # noqa: E402
from kiln import ir  # noqa: E402
from kiln.backends.triton.paged import PagedAttentionLauncher, PagedConfig, choose_config, paged_attention_kernel  # noqa: E402
from kiln.ir.dtypes import from_torch  # noqa: E402
from kiln.ir.opset.paged import reference_paged_attention  # noqa: E402

from conftest import rel_err  # noqa: E402

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
TOL = {torch.float32: 1e-5, torch.float16: 1e-2, torch.bfloat16: 1e-2}
SMALL = [PagedConfig(16, 16, 1), PagedConfig(32, 16, 2), PagedConfig(16, 32, 3)]  # forced tiles and splits


def _batch(seqs: list[tuple[int, int]], pad: int, h: int, hkv: int, d: int, bs: int, dtype: torch.dtype,
           seed: int = 0, num_blocks: int | None = None, width: int | None = None) -> tuple:
    """Inputs for sequences given as (cached tokens, new tokens), then `pad` padding tokens.

    q is a transposed view of [1, T, H, D] (as HF hands it over); blocks are drawn from a
    shuffled pool, so tables are scrambled; caches hold random values everywhere."""
    g = torch.Generator().manual_seed(seed)
    t = sum(n for _, n in seqs) + pad
    blocks_needed = [-(-(p + n) // bs) for p, n in seqs]
    nb = num_blocks or sum(blocks_needed) + 3
    rnd = lambda *s: torch.randn(s, generator=g).to(dtype)  # noqa: E731
    q = rnd(1, t, h, d).transpose(1, 2)
    k, v = rnd(1, hkv, t, d), rnd(1, hkv, t, d)
    kc, vc = rnd(nb, bs, hkv, d), rnd(nb, bs, hkv, d)
    pool = torch.randperm(nb, generator=g).tolist()
    width = width or max(1, *blocks_needed)
    tables = torch.randint(0, nb, (len(seqs), width), generator=g, dtype=torch.int32)  # unused entries: junk
    slots: list[int] = []
    lens, starts = [], [0]
    for i, (past, new) in enumerate(seqs):
        own = [pool.pop() for _ in range(blocks_needed[i])]
        tables[i, : len(own)] = torch.tensor(own, dtype=torch.int32)
        slots += [own[p // bs] * bs + p % bs for p in range(past, past + new)]
        lens.append(past + new)
        starts.append(starts[-1] + new)
    slots += [-1] * pad
    meta = (torch.tensor(slots, dtype=torch.int64), tables, torch.tensor(lens, dtype=torch.int32),
            torch.tensor(starts, dtype=torch.int32))
    return tuple(x.to(DEVICE) for x in (q, k, v, kc, vc, *meta))


def _check(args: tuple, config: PagedConfig | None, scale: float | None = None) -> torch.Tensor:
    """Run kernel and reference on copies of the same caches; compare outputs and both caches."""
    q, k, v, kc, vc, *meta = args
    kc_ref, vc_ref = kc.clone(), vc.clone()
    want = reference_paged_attention(q, k, v, kc_ref, vc_ref, *meta, scale)
    got = PagedAttentionLauncher(scale, reference_paged_attention, config)(q, k, v, kc, vc, *meta)
    assert got.shape == want.shape and got.dtype == want.dtype
    assert torch.equal(kc, kc_ref) and torch.equal(vc, vc_ref), "cache contents differ from the reference's"
    assert rel_err(got.float(), want.float()) < TOL[q.dtype]
    return got


mixes = st.lists(st.tuples(st.integers(0, 13), st.integers(1, 6)), min_size=1, max_size=3)


@settings(max_examples=10, deadline=None, derandomize=True)
@given(seqs=mixes, pad=st.integers(0, 3), group=st.sampled_from([1, 2, 4]), hkv=st.sampled_from([1, 2]),
       d=st.sampled_from([16, 24, 32]), bs=st.sampled_from([4, 8]), dtype=st.sampled_from(list(TOL)),
       config=st.sampled_from(SMALL))
def test_paged_attention_matches_reference_on_random_mixes(seqs: list, pad: int, group: int, hkv: int, d: int, bs: int,
                                                           dtype: torch.dtype, config: PagedConfig) -> None:
    _check(_batch(seqs, pad, group * hkv, hkv, d, bs, dtype), config)


def _rope_tables(t: int, d: int, dtype: torch.dtype, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """cos/sin [1, 1, T, D] in the half-split layout HF builds (angles repeated over the halves)."""
    ang = torch.randn(1, 1, t, d // 2, generator=torch.Generator().manual_seed(seed)) * 3
    return (torch.cat([ang.cos()] * 2, -1).to(dtype).to(DEVICE), torch.cat([ang.sin()] * 2, -1).to(dtype).to(DEVICE))


@settings(max_examples=8, deadline=None, derandomize=True)
@given(seqs=mixes, pad=st.integers(0, 2), group=st.sampled_from([1, 4]), hkv=st.sampled_from([1, 2]),
       d=st.sampled_from([16, 32]), dtype=st.sampled_from(list(TOL)), config=st.sampled_from(SMALL))
def test_rotary_fused_paged_attention_equals_rotary_then_paged_attention(seqs: list, pad: int, group: int, hkv: int,
                                                                         d: int, dtype: torch.dtype, config: PagedConfig) -> None:
    """With cos/sin inputs the kernels rotate q (attend) and k (write) in registers: output and the
    written cache match applying `rotary` first; v is stored as it is."""
    q, k, v, kc, vc, *meta = _batch(seqs, pad, group * hkv, hkv, d, 4, dtype, seed=len(seqs) + pad)
    cos, sin = _rope_tables(q.shape[2], d, dtype, seed=d)
    impl = ir.REGISTRY["paged_attention"].impl
    kc_ref, vc_ref = kc.clone(), vc.clone()
    want = impl(q, k, v, kc_ref, vc_ref, *meta, cos, sin, None)
    got = PagedAttentionLauncher(None, impl, config)(q, k, v, kc, vc, *meta, cos, sin)
    assert rel_err(got.float(), want.float()) < TOL[dtype]
    assert rel_err(kc.float(), kc_ref.float()) < TOL[dtype] and torch.equal(vc, vc_ref)
    plain_k = kc.clone()
    impl(q, k, v, plain_k, vc.clone(), *meta, None)  # the same write without rotation
    assert rel_err(plain_k.float(), kc.float()) > 10 * TOL[dtype], "k was not rotated"


def test_rotary_fused_decode_differs_from_unrotated_and_matches_rotated() -> None:
    """Long contexts, so q's rotation shows in the output (a 1-key softmax would hide it)."""
    q, k, v, kc, vc, *meta = _batch([(37, 1), (20, 1), (9, 3)], 1, 8, 2, 32, 4, torch.float32, seed=5)
    cos, sin = _rope_tables(q.shape[2], 32, torch.float32, seed=1)
    impl = ir.REGISTRY["paged_attention"].impl
    want = impl(q, k, v, kc.clone(), vc.clone(), *meta, cos, sin, None)
    got = PagedAttentionLauncher(None, impl, PagedConfig(16, 16, 2))(q, k, v, kc.clone(), vc.clone(), *meta, cos, sin)
    plain = impl(q, k, v, kc.clone(), vc.clone(), *meta, None)
    assert rel_err(got, want) < 1e-5 and rel_err(got, plain) > 1e-2


def test_kv_cache_pass_hands_the_rotary_embedding_to_paged_attention() -> None:
    """A Llama's q/k rotary nodes disappear into its paged_attention nodes (11 inputs)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    from kiln.runtime.model_runner import PagedModelRunner

    torch.manual_seed(0)
    cfg = LlamaConfig(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                      intermediate_size=128, vocab_size=128, max_position_embeddings=64)
    runner = PagedModelRunner(LlamaForCausalLM(cfg).eval().to(DEVICE), block_size=4, device=torch.device(DEVICE), num_blocks=8,
                              options=kiln.CompileOptions(backend="reference"))
    ops = [n.op.name for n in runner.graph.nodes]
    assert "rotary" not in ops
    assert [len(n.inputs) for n in runner.graph.nodes if n.op.name == "paged_attention"] == [11, 11]


@pytest.mark.parametrize("dtype", list(TOL))
def test_decode_only_batch_with_split_k_matches_reference(dtype: torch.dtype) -> None:
    seqs = [(23, 1), (0, 1), (9, 1), (40, 1)]
    _check(_batch(seqs, 2, 8, 2, 32, 8, dtype, seed=1), PagedConfig(16, 16, 4))


def test_prefill_only_batch_with_several_tiles_per_sequence() -> None:
    _check(_batch([(0, 13), (0, 3), (0, 9)], 0, 4, 2, 16, 4, torch.float32, seed=2), PagedConfig(16, 16, 1))


def test_chunked_prefill_attends_to_its_cached_prefix() -> None:
    _check(_batch([(17, 5), (6, 7)], 1, 4, 4, 32, 4, torch.bfloat16, seed=3), PagedConfig(32, 16, 2))


def test_padding_rows_are_zero_and_padding_slots_never_written() -> None:
    q, k, v, kc, vc, *meta = _batch([(3, 2)], 3, 2, 1, 16, 4, torch.float16, seed=4)
    q = q.clone().fill_(float("nan"))  # garbage in padding rows must not leak either
    q[:, :, :2] = torch.randn(1, 2, 2, 16, dtype=torch.float16, device=DEVICE)
    before_k, before_v = kc.clone(), vc.clone()
    out = PagedAttentionLauncher(None, reference_paged_attention)(q, k, v, kc, vc, *meta)
    assert torch.equal(out[:, :, 2:], torch.zeros_like(out[:, :, 2:]))
    for cache, before in ((kc, before_k), (vc, before_v)):
        changed = (cache != before).any(-1).any(-1).flatten().nonzero().flatten().tolist()
        assert set(changed) <= set(meta[0][:2].tolist()), "only the two real tokens' slots may change"


def test_a_sequence_with_no_new_tokens_is_skipped() -> None:
    _check(_batch([(4, 2), (7, 0), (0, 3)], 1, 4, 2, 16, 4, torch.float32, seed=5), PagedConfig(16, 16, 2))


def test_explicit_scale_and_default_configs() -> None:
    _check(_batch([(5, 1), (0, 4)], 0, 4, 1, 64, 8, torch.float32, seed=6), None, scale=0.3)


def test_config_choice_depends_on_shapes_only() -> None:
    cpu = torch.device("cpu")
    cfg, splits = choose_config(t=64, n=64, m=512, block_size=16, hkv=4, group=8, device=cpu)
    assert cfg.block_m == 16 and splits == 1, "64 decode sequences already fill the device"
    cfg, splits = choose_config(t=2, n=1, m=512, block_size=16, hkv=4, group=8, device=cpu)
    assert cfg.block_m == 16 and splits == 4, "one long decode sequence is split over the keys"
    _, splits = choose_config(t=2, n=1, m=8, block_size=16, hkv=4, group=8, device=cpu)
    assert splits == 1, "128 keys are too few to split"
    cfg, _ = choose_config(t=2048, n=1, m=128, block_size=16, hkv=4, group=8, device=cpu)
    assert cfg.block_m == 64, "a long prefill takes the wide tile"


def _paged_node(args: tuple) -> ir.Node:
    g = ir.Graph()
    names = ["q", "k", "v", "k_cache", "v_cache", "slot_mapping", "block_tables", "seq_lens", "query_start"]
    vals = [g.add_input(n, ir.TensorType(from_torch(t.dtype), tuple(t.shape))) for n, t in zip(names, args)]
    node = g.add_node("paged_attention", vals, {"scale": None})
    g.outputs = list(node.outputs)
    return node


def test_triton_hook_launches_paged_attention_nodes() -> None:
    from kiln.backends.triton import kernel_for

    args = _batch([(2, 3)], 1, 2, 1, 16, 4, torch.float32)
    launcher = kernel_for(torch.device(DEVICE))(_paged_node(args))
    assert isinstance(launcher, PagedAttentionLauncher)
    big = _batch([(0, 2)], 0, 2, 1, 160, 4, torch.float32)
    assert paged_attention_kernel(_paged_node(big)) is None, "head dim 160 stays in PyTorch"


def test_llm_with_triton_backend_gives_the_default_backends_greedy_tokens() -> None:
    from transformers import LlamaForCausalLM

    from conftest import tiny_config

    torch.manual_seed(0)
    model = LlamaForCausalLM(tiny_config("llama")).eval()
    gen = torch.Generator().manual_seed(1)
    for p in model.parameters():  # peaked distributions: no greedy near-ties
        p.data.normal_(0, 0.2, generator=gen)
    prompts = [[5, 17, 300, 2, 41], [9, 8, 7]]
    params = kiln.SamplingParams(max_tokens=3, temperature=0.0, ignore_eos=True)
    want = [o.outputs[0].token_ids for o in kiln.LLM(model, options=kiln.CompileOptions(backend="reference")).generate(prompts, params)]
    llm = kiln.LLM(model, options=kiln.CompileOptions(backend="triton"))
    assert any(isinstance(f, PagedAttentionLauncher) for f in llm.runner.plan.fn.__globals__.values())
    assert [o.outputs[0].token_ids for o in llm.generate(prompts, params)] == want


gpu = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")


@pytest.mark.gpu
@gpu
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32])
def test_gpu_bigger_mixes_match_reference(dtype: torch.dtype) -> None:
    seqs = [(0, 300), (1000, 1), (37, 64), (4000, 1), (0, 1), (250, 17)]
    args = _batch(seqs, 5, 32, 4, 64, 16, dtype, seed=7)
    _check(args, None)
    _check(args, PagedConfig(16, 64, 8))
    _check(_batch(seqs, 5, 28, 4, 128, 16, dtype, seed=8), None)  # group 7 (padded to 8), D 128


@pytest.mark.gpu
@gpu
def test_gpu_launcher_replays_in_a_cuda_graph_with_new_metadata() -> None:
    dtype, bs = torch.bfloat16, 16
    first = _batch([(100, 1), (7, 1), (2000, 1)], 1, 32, 4, 64, bs, dtype, seed=9, num_blocks=400, width=128)
    launcher = PagedAttentionLauncher(None, reference_paged_attention)
    static = [x.clone() for x in first]
    launcher(*static)  # warm-up: compiles outside capture
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out = launcher(*static)
    second = _batch([(513, 1), (30, 1), (1500, 1)], 1, 32, 4, 64, bs, dtype, seed=10, num_blocks=400, width=128)
    for dst, src in zip(static, second):  # same shapes, new values: metadata included
        dst.copy_(src)
    q, k, v, kc, vc, *meta = second
    kc, vc = kc.clone(), vc.clone()
    want = reference_paged_attention(q, k, v, kc, vc, *meta, None)
    graph.replay()
    torch.cuda.synchronize()
    assert torch.equal(static[3], kc) and torch.equal(static[4], vc)
    assert rel_err(out.float(), want.float()) < TOL[dtype]
