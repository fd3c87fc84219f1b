"""Compiled vs eager on hypothesis-drawn shapes and dtypes; one plan serves every legal shape."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

import kiln

from conftest import rel_err

TOL = {torch.float32: 1e-5, torch.float64: 1e-12, torch.bfloat16: 1e-2}
SETTINGS = settings(max_examples=8, deadline=None, derandomize=True)


class Block(nn.Module):
    """A pre-norm transformer block with explicit-softmax attention and a chosen activation."""

    def __init__(self, dim: int, heads: int, act: str) -> None:
        super().__init__()
        self.heads, self.act = heads, act
        self.ln = nn.LayerNorm(dim)
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        self.up = nn.Linear(dim, 2 * dim)
        self.down = nn.Linear(2 * dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, c = x.shape
        q, k, v = self.qkv(self.ln(x)).chunk(3, dim=-1)
        q, k, v = (y.reshape(b, t, self.heads, -1).transpose(1, 2) for y in (q, k, v))  # (B, H, T, D)
        scores = q @ k.transpose(-1, -2) / (q.shape[-1] ** 0.5)
        causal = torch.ones(t, t, dtype=torch.bool, device=x.device).tril()
        att = scores.masked_fill(~causal, float("-inf")).softmax(-1) @ v
        x = x + self.proj(att.transpose(1, 2).reshape(b, t, c))
        h = self.up(x)
        h = {"gelu": F.gelu, "silu": F.silu, "relu": torch.relu}[self.act](h)
        return x + self.down(h)


def _randn(shape: tuple, dtype: torch.dtype, seed: int) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed)).to(dtype)


@SETTINGS
@given(
    heads=st.sampled_from([1, 2, 4]),
    head_dim=st.sampled_from([4, 8]),
    act=st.sampled_from(["gelu", "silu", "relu"]),
    dtype=st.sampled_from([torch.float32, torch.float64, torch.bfloat16]),
    shapes=st.lists(st.tuples(st.integers(2, 4), st.integers(2, 12)), min_size=2, max_size=3),
)
def test_block_matches_eager_and_reuses_one_plan(heads: int, head_dim: int, act: str, dtype: torch.dtype, shapes: list) -> None:
    torch.manual_seed(0)
    m = Block(heads * head_dim, heads, act).to(dtype).eval()
    fn = kiln.compile(m)
    for i, (b, t) in enumerate(shapes):
        x = _randn((b, t, heads * head_dim), dtype, seed=i + 1)
        with torch.no_grad():
            ref = m(x)
        assert rel_err(fn(x).double(), ref.double()) <= TOL[dtype]
    assert fn.stats.traces == 1  # every dim >= 2, so one symbolic plan serves them all


@SETTINGS
@given(
    rank=st.integers(1, 4),
    dims=st.lists(st.integers(1, 5), min_size=4, max_size=4),
    dtype=st.sampled_from([torch.float32, torch.float64]),
)
def test_reductions_and_views_match_eager_including_size_one_dims(rank: int, dims: list, dtype: torch.dtype) -> None:
    def fn(x: torch.Tensor) -> tuple:
        s = (x.softmax(-1) * x).sum(-1, keepdim=True) / x.shape[-1]
        flat = x.reshape(-1)
        return s + x.mean(0), flat.cumsum(0)[-1], x.amax(-1)

    shape = tuple(dims[:rank])
    compiled = kiln.compile(fn)
    x = _randn(shape, dtype, seed=5)
    out, ref = compiled(x), fn(x)
    for a, b in zip(out, ref, strict=True):
        assert rel_err(a, b) <= TOL[dtype]
