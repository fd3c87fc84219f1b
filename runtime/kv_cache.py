"""The paged KV-cache tensor pool and its sizing from a memory budget.

`KVCacheConfig` states the shape of one token's K/V; `size_kv_cache` turns a memory budget
(a fraction of free GPU memory, or bytes) into a number of blocks; `KVCachePool` preallocates
that many blocks once. Which sequence owns which block is `runtime/blocks.BlockAllocator`'s
business: the pool only writes, gathers and copies blocks by id.

Layout: one tensor `(num_layers, 2, num_blocks, block_size, kv_heads, head_dim)`, K at index 0
and V at 1 of the second axis, so each layer's K (and V) is a contiguous
`(num_blocks, block_size, kv_heads, head_dim)` view (vLLM's flash layout, FlashInfer's "NHD"):

* writing is one `index_copy_` of the step's `(T, kv_heads, head_dim)` K/V rows into the flat
  `(num_blocks * block_size, kv_heads, head_dim)` view at the slot mapping, in the layout the
  attention projections already produce;
* gathering a block table gives token-major `(T, kv_heads, head_dim)` rows directly, which is what
  the PyTorch reference attention wants;
* a Triton kernel loading one (token, head) row reads `head_dim` contiguous elements (128-256
  bytes for head_dim 64-128 in bf16: whole cache lines), and a block is one contiguous
  `block_size * kv_heads * head_dim` span, so GQA kernels that handle all heads of a KV head group
  read it in few transactions;
* a copy-on-write copy of a block in every layer, K and V, is one indexed assignment.

The pool is zero-filled once (not `torch.empty`) so that slots a kernel reads but masks out never
hold NaN garbage: masked probability 0 times NaN would still be NaN.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from ..errors import KVCacheError
from .blocks import CopyOp

DEFAULT_GPU_FRACTION = 0.9  # of the memory free after the model is loaded
DEFAULT_CPU_BYTES = 1 << 30


@dataclass(frozen=True, slots=True)
class KVCacheConfig:
    """The shape of the KV cache: what one token costs in every layer, and the block size."""

    num_layers: int
    num_kv_heads: int
    head_dim: int
    dtype: torch.dtype = torch.float32
    device: str | torch.device = "cpu"
    block_size: int = 16

    def __post_init__(self) -> None:
        for name in ("num_layers", "num_kv_heads", "head_dim", "block_size"):
            if not isinstance(getattr(self, name), int) or getattr(self, name) < 1:
                raise ValueError(f"KVCacheConfig.{name} must be a positive int, got {getattr(self, name)!r}")

    @property
    def torch_device(self) -> torch.device:
        return torch.device(self.device)

    @property
    def bytes_per_token(self) -> int:
        """K and V of one token in every layer."""
        return 2 * self.num_layers * self.num_kv_heads * self.head_dim * self.dtype.itemsize

    @property
    def bytes_per_block(self) -> int:
        return self.block_size * self.bytes_per_token


@dataclass(frozen=True, slots=True)
class KVCacheSizing:
    """How many blocks a budget buys, and where the budget came from (for logs and reports)."""

    config: KVCacheConfig
    num_blocks: int
    budget_bytes: int
    budget_source: str  # e.g. "0.90 of 70.3 GiB free on cuda:0" or "1.0 GiB on cpu"

    @property
    def num_tokens(self) -> int:
        return self.num_blocks * self.config.block_size

    @property
    def total_bytes(self) -> int:
        return self.num_blocks * self.config.bytes_per_block

    def describe(self) -> str:
        c = self.config
        return (
            f"KV cache: {self.num_blocks} blocks x {c.block_size} tokens = {self.num_tokens} tokens;"
            f" {_fmt_bytes(c.bytes_per_block)} per block ({c.num_layers} layers x K,V x {c.num_kv_heads} heads"
            f" x {c.head_dim} x {str(c.dtype).removeprefix('torch.')}); {_fmt_bytes(self.total_bytes)} of a"
            f" {_fmt_bytes(self.budget_bytes)} budget ({self.budget_source})"
        )


def _fmt_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(n) < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    raise AssertionError("unreachable")


def size_kv_cache(
    config: KVCacheConfig, memory: float | int | None = None, *, free_bytes: int | None = None
) -> KVCacheSizing:
    """Blocks for a budget: `memory` is a float in (0, 1] (that fraction of the device's free
    memory, CUDA only) or an int number of bytes. Default: 0.9 of free memory on CUDA, 1 GiB on
    CPU. `free_bytes` overrides `torch.cuda.mem_get_info` (for tests and for callers that measured
    it before loading something else). Raises `KVCacheError` if the budget buys no block."""
    device = config.torch_device
    if memory is None:
        memory = DEFAULT_GPU_FRACTION if device.type == "cuda" else DEFAULT_CPU_BYTES
    if isinstance(memory, bool) or not isinstance(memory, (int, float)):
        raise TypeError(f"kv_cache_memory must be a fraction (float) or bytes (int), got {memory!r}")
    if isinstance(memory, float):
        if not 0.0 < memory <= 1.0:
            raise ValueError(f"kv_cache_memory as a fraction must be in (0, 1], got {memory}; give bytes as an int")
        if device.type != "cuda":
            raise ValueError(f"kv_cache_memory as a fraction of free memory needs a CUDA device; give bytes on {device}")
        if free_bytes is None:
            free_bytes, _total = torch.cuda.mem_get_info(device)
        budget, source = int(memory * free_bytes), f"{memory:.2f} of {_fmt_bytes(free_bytes)} free on {device}"
    else:
        if memory <= 0:
            raise ValueError(f"kv_cache_memory in bytes must be positive, got {memory}")
        budget, source = memory, f"{_fmt_bytes(memory)} on {device}"
    num_blocks = budget // config.bytes_per_block
    if num_blocks < 1:
        raise KVCacheError(
            f"a KV-cache budget of {_fmt_bytes(budget)} ({source}) holds no block of {config.block_size} tokens"
            f" ({_fmt_bytes(config.bytes_per_block)} each); raise kv_cache_memory"
        )
    return KVCacheSizing(config, num_blocks, budget, source)


class KVCachePool:
    """Preallocated K/V storage for every layer, addressed by block id (see the module docstring).

    Allocated once, in `__init__`; nothing here allocates pool memory again.
    """

    def __init__(self, config: KVCacheConfig, num_blocks: int):
        self.config, self.num_blocks = config, num_blocks
        c = config
        # (L, K/V, N, bs, H, D)
        self.cache = torch.zeros(
            (c.num_layers, 2, num_blocks, c.block_size, c.num_kv_heads, c.head_dim), dtype=c.dtype, device=c.device
        )

    @classmethod
    def from_sizing(cls, sizing: KVCacheSizing) -> KVCachePool:
        return cls(sizing.config, sizing.num_blocks)

    @property
    def nbytes(self) -> int:
        return self.cache.numel() * self.cache.element_size()

    def key_cache(self, layer: int) -> torch.Tensor:
        """Layer `layer`'s K blocks, `(num_blocks, block_size, kv_heads, head_dim)`, a contiguous view."""
        return self.cache[layer, 0]

    def value_cache(self, layer: int) -> torch.Tensor:
        return self.cache[layer, 1]

    def write(self, layer: int, slots: torch.Tensor, key: torch.Tensor, value: torch.Tensor) -> None:
        """Store `key`/`value` `(T, kv_heads, head_dim)` at flat slots `(T,)` (block_id * bs + offset)."""
        c = self.config
        self.cache[layer, 0].view(-1, c.num_kv_heads, c.head_dim).index_copy_(0, slots, key)
        self.cache[layer, 1].view(-1, c.num_kv_heads, c.head_dim).index_copy_(0, slots, value)

    def gather(self, layer: int, block_ids: Sequence[int], num_tokens: int) -> tuple[torch.Tensor, torch.Tensor]:
        """A sequence's first `num_tokens` K and V rows, each `(num_tokens, kv_heads, head_dim)`."""
        c = self.config
        idx = torch.as_tensor(list(block_ids), dtype=torch.long, device=self.cache.device)
        k = self.cache[layer, 0, idx].reshape(-1, c.num_kv_heads, c.head_dim)[:num_tokens]
        v = self.cache[layer, 1, idx].reshape(-1, c.num_kv_heads, c.head_dim)[:num_tokens]
        return k, v

    def copy_blocks(self, copies: Sequence[CopyOp]) -> None:
        """Perform the allocator's copy-on-write copies in every layer, K and V, in order.

        Whole blocks are copied (slots past `num_tokens` are never read). When no copy reads a
        block another copy writes, all go in one indexed assignment; otherwise (a block copied
        and then forked and copied again in the same step) they run one by one, in order.
        """
        if not copies:
            return
        src = [op.src for op in copies]
        dst = [op.dst for op in copies]
        if set(src) & set(dst):
            for s, d in zip(src, dst):
                self.cache[:, :, d] = self.cache[:, :, s]
            return
        device = self.cache.device
        self.cache[:, :, torch.tensor(dst, device=device)] = self.cache[:, :, torch.tensor(src, device=device)]
