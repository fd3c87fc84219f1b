"""Runtime: executes compiled plans.

Takes a kiln Graph lowered by a backend; gives `Plan`, one generated straight-line function with
input guards (dtype, device, rank, shape ranges) and per-node calls; the paged KV cache
(`blocks.BlockAllocator` bookkeeping, `kv_cache.KVCachePool` tensors). The LLM engine will live here too.
"""

from .blocks import AllocatorStats, Block, BlockAllocator, CopyOp, SequenceBlocks, blocks_for_request
from .kv_cache import KVCacheConfig, KVCachePool, KVCacheSizing, size_kv_cache
from .plan import GuardMismatch, Plan, build_plan

__all__ = [
    "AllocatorStats", "Block", "BlockAllocator", "CopyOp", "GuardMismatch", "KVCacheConfig", "KVCachePool",
    "KVCacheSizing", "Plan", "SequenceBlocks", "blocks_for_request", "build_plan", "size_kv_cache",
]
