"""Paged KV-cache bookkeeping: which block holds which tokens of which sequence. No tensors here.

The KV pool (`runtime/kv_cache.py`) is an array of fixed-size blocks of `block_size` token slots.
`BlockAllocator` hands blocks to sequences and tells the engine which block copies to perform;
it never touches tensors, so it can be tested exhaustively in pure Python.

Every block is in exactly one of three places:

* **free**      refcount 0, not in the prefix cache; on the free list (a stack: O(1) push/pop, and
                the most recently freed block is reused first).
* **in use**    refcount >= 1 = the number of sequence block tables that hold it.
* **evictable** refcount 0 but its content is still in the prefix cache; kept in an LRU
                (`OrderedDict`, O(1) touch/pop) and evicted, oldest first, only when the free
                list is empty.

Sharing. `fork` shares all of a sequence's blocks (refcount + 1). A full block is never written
again, so sharing it is free. A partially filled last block that is shared is copied before the
next append (copy-on-write): the allocator takes a fresh block and returns a `CopyOp(src, dst)`
that the engine performs on the tensors before its next forward.

Prefix caching. A full block is keyed by (hash of the previous block's key, its own token ids),
so equal prefixes give equal chains of keys and a block's key depends on everything before it.
The map is keyed by that tuple (not by the bare hash), so a lookup compares the block's tokens
exactly; only the 64-bit parent hash could collide. A new prompt walks its chain and reuses every
cached block until the first miss, always leaving at least one prompt token to compute (the model
needs that token's logits). A block is published in the cache when `append_tokens` fills it,
i.e. in the step whose forward writes its K/V; that is safe because the engine writes every
reserved slot in that forward before any attention reads it.

Sequences are freed tail first, so the deepest blocks of a chain become the least recently used
and a shared prefix's root, which every descendant's lookup goes through, is evicted last.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass, field

from ..errors import OutOfBlocksError, RequestTooLargeError

BlockKey = tuple[int, tuple[int, ...]]  # (parent block's hash, this block's token ids)
_ROOT_HASH = 0  # the "parent hash" of a sequence's first block


@dataclass(slots=True)
class Block:
    """One block of the pool. `key` is set iff the block is full and published in the prefix cache."""

    block_id: int
    ref_count: int = 0
    key: BlockKey | None = None


@dataclass(slots=True, frozen=True)
class CopyOp:
    """Copy block `src` to block `dst` (its first `num_tokens` slots matter) before the next forward."""

    src: int
    dst: int
    num_tokens: int


@dataclass(slots=True)
class SequenceBlocks:
    """A sequence's block table. Owned by the allocator: read it, never mutate it.

    Invariants: `len(block_ids) == ceil(num_tokens / block_size)`; `block_hashes` holds the chain
    hash of each full block (`num_tokens // block_size` of them); `tail` holds the token ids of
    the partially filled last block (`num_tokens % block_size` of them), which are needed to key
    that block once it fills. Token i lives in slot `block_ids[i // bs] * bs + i % bs`.
    """

    seq_id: int
    block_size: int
    block_ids: list[int] = field(default_factory=list)
    num_tokens: int = 0
    num_cached_tokens: int = 0  # prompt tokens found in the prefix cache when the sequence was added
    block_hashes: list[int] = field(default_factory=list)
    tail: list[int] = field(default_factory=list)

    def slot(self, position: int) -> int:
        """The flat slot index (block_id * block_size + offset) of token `position`."""
        return self.block_ids[position // self.block_size] * self.block_size + position % self.block_size

    def slot_mapping(self, start: int, stop: int) -> list[int]:
        """Flat slot indices of tokens [start, stop): where the engine writes their K/V."""
        return [self.slot(i) for i in range(start, stop)]


@dataclass(slots=True)
class AllocatorStats:
    """Counters for reports and tests; they never influence allocation."""

    prefix_query_tokens: int = 0  # prompt tokens looked up in the prefix cache
    prefix_hit_tokens: int = 0  # of those, tokens found cached
    evictions: int = 0
    cow_copies: int = 0
    preemptions: int = 0

    @property
    def prefix_hit_rate(self) -> float:
        return self.prefix_hit_tokens / self.prefix_query_tokens if self.prefix_query_tokens else 0.0


def block_key(parent_hash: int, tokens: Sequence[int]) -> BlockKey:
    """The prefix-cache key of a full block: its parent's chain hash and its own token ids."""
    return (parent_hash, tuple(tokens))


def _ceil_div(a: int, b: int) -> int:
    return -(-a // b)


def blocks_for_request(num_prompt_tokens: int, max_tokens: int, block_size: int, n: int = 1) -> int:
    """Blocks a request needs at its longest: full prompt blocks are shared by its `n` samples,
    everything from the prompt's partial block on is per sample."""
    shared = num_prompt_tokens // block_size
    return shared + n * (_ceil_div(num_prompt_tokens + max_tokens, block_size) - shared)


class BlockAllocator:
    """Reference-counted block allocator with copy-on-write and a content-hashed prefix cache.

    All operations are O(1) per block touched (plus O(block_size) hashing per full block), and
    every operation that can run out of blocks checks first and raises `OutOfBlocksError` without
    changing any state; the scheduler avoids that path with `can_append` / `can_add_sequence`
    and preempts instead. See the module docstring for the states a block can be in.
    """

    def __init__(self, num_blocks: int, block_size: int = 16, *, enable_prefix_caching: bool = True):
        if num_blocks < 1 or block_size < 1:
            raise ValueError(f"need num_blocks >= 1 and block_size >= 1, got {num_blocks} and {block_size}")
        self.num_blocks, self.block_size = num_blocks, block_size
        self.enable_prefix_caching = enable_prefix_caching
        self._blocks = [Block(i) for i in range(num_blocks)]
        self._free = list(range(num_blocks - 1, -1, -1))  # stack; block 0 is handed out first
        self._evictable: OrderedDict[int, None] = OrderedDict()  # oldest first
        self._cached: dict[BlockKey, int] = {}  # prefix cache: key -> block id
        self._seqs: dict[int, SequenceBlocks] = {}
        self.stats = AllocatorStats()

    # ---- queries ----------------------------------------------------------------------------

    @property
    def num_free_blocks(self) -> int:
        return len(self._free)

    @property
    def num_evictable_blocks(self) -> int:
        return len(self._evictable)

    @property
    def num_available_blocks(self) -> int:
        """Blocks an allocation may take: free ones, then evictable cached ones."""
        return len(self._free) + len(self._evictable)

    @property
    def num_used_blocks(self) -> int:
        return self.num_blocks - self.num_available_blocks

    @property
    def usage(self) -> float:
        """Fraction of the pool held by live sequences."""
        return self.num_used_blocks / self.num_blocks

    def ref_count(self, block_id: int) -> int:
        return self._blocks[block_id].ref_count

    def sequence(self, seq_id: int) -> SequenceBlocks:
        return self._seqs[seq_id]

    def __contains__(self, seq_id: int) -> bool:
        return seq_id in self._seqs

    @property
    def seq_ids(self) -> list[int]:
        return list(self._seqs)

    def can_allocate(self, num_blocks: int) -> bool:
        return num_blocks <= self.num_available_blocks

    def check_fits(self, num_prompt_tokens: int, max_tokens: int, *, n: int = 1) -> None:
        """Admission: raise `RequestTooLargeError` if the request could not fit even the empty pool."""
        need = blocks_for_request(num_prompt_tokens, max_tokens, self.block_size, n)
        if need > self.num_blocks:
            detail = f"{num_prompt_tokens} prompt + {max_tokens} max_tokens" + (f", n={n}" if n > 1 else "")
            raise RequestTooLargeError(num_prompt_tokens + max_tokens, need, self.num_blocks, self.block_size, detail)

    def match_prefix(self, prompt: Sequence[int]) -> int:
        """Number of leading prompt tokens whose K/V is in the prefix cache (a query; changes nothing)."""
        return len(self._match(prompt)) * self.block_size

    def blocks_needed(self, seq_id: int, num_tokens: int) -> int:
        """New blocks `append_tokens(seq_id, <num_tokens tokens>)` would take, counting a COW copy."""
        if num_tokens <= 0:
            return 0
        seq = self._seqs[seq_id]
        offset = seq.num_tokens % self.block_size
        if offset == 0:
            return _ceil_div(num_tokens, self.block_size)
        cow = 1 if self._blocks[seq.block_ids[-1]].ref_count > 1 else 0
        return cow + _ceil_div(max(0, num_tokens - (self.block_size - offset)), self.block_size)

    def can_append(self, seq_id: int, num_tokens: int = 1) -> bool:
        return self.blocks_needed(seq_id, num_tokens) <= self.num_available_blocks

    def blocks_needed_for_prompt(self, prompt: Sequence[int], num_tokens: int | None = None) -> int:
        """Blocks `add_sequence` would take from the available ones (free + evictable), cache hits
        included when they are evictable (reviving them takes them out of the evictable LRU)."""
        hits = self._match(prompt)
        reserve = max(len(prompt) if num_tokens is None else num_tokens, len(hits) * self.block_size)
        revived = sum(1 for b in hits if self._blocks[b].ref_count == 0)
        return _ceil_div(reserve, self.block_size) - len(hits) + revived

    def can_add_sequence(self, prompt: Sequence[int], num_tokens: int | None = None) -> bool:
        return self.blocks_needed_for_prompt(prompt, num_tokens) <= self.num_available_blocks

    # ---- operations -------------------------------------------------------------------------

    def add_sequence(self, seq_id: int, prompt: Sequence[int], *, num_tokens: int | None = None) -> SequenceBlocks:
        """Start a sequence: reuse the cached prefix of `prompt`, reserve slots for the rest.

        Reserves the first `num_tokens` prompt tokens (default: all; a chunked prefill appends the
        rest later with `append_tokens`), or the cached prefix if that is longer. The engine
        computes tokens `[seq.num_cached_tokens, seq.num_tokens)`.
        """
        if seq_id in self._seqs:
            raise ValueError(f"sequence {seq_id} already has a block table")
        if not prompt:
            raise ValueError("a sequence needs at least one prompt token")
        if num_tokens is not None and not 0 <= num_tokens <= len(prompt):
            raise ValueError(f"num_tokens must be in [0, {len(prompt)}] (the prompt's length), got {num_tokens}")
        needed = self.blocks_needed_for_prompt(prompt, num_tokens)
        if needed > self.num_available_blocks:
            raise self._out_of_blocks(needed, f"to start sequence {seq_id} ({len(prompt)} prompt tokens)")
        hits = self._match(prompt)
        if self.enable_prefix_caching:
            self.stats.prefix_query_tokens += len(prompt)
            self.stats.prefix_hit_tokens += len(hits) * self.block_size
        seq = SequenceBlocks(seq_id, self.block_size)
        for block_id in hits:
            block = self._blocks[block_id]
            if block.ref_count == 0:
                del self._evictable[block_id]
            block.ref_count += 1
            seq.block_ids.append(block_id)
            seq.block_hashes.append(hash(block.key))
        seq.num_tokens = seq.num_cached_tokens = len(hits) * self.block_size
        reserve = len(prompt) if num_tokens is None else num_tokens
        self._append(seq, prompt[seq.num_tokens : max(reserve, seq.num_tokens)])
        self._seqs[seq_id] = seq
        return seq

    def append_tokens(self, seq_id: int, tokens: Sequence[int]) -> list[CopyOp]:
        """Reserve slots for `tokens`, whose K/V the engine writes in its next forward.

        Returns the copy-on-write copies the engine must perform first (at most one: a shared,
        partially filled last block). Raises `OutOfBlocksError`, changing nothing, if the pool
        cannot supply `blocks_needed` blocks; check `can_append` and preempt instead.
        """
        seq = self._seqs[seq_id]
        needed = self.blocks_needed(seq_id, len(tokens))
        if needed > self.num_available_blocks:
            raise self._out_of_blocks(needed, f"to append {len(tokens)} tokens to sequence {seq_id}")
        return self._append(seq, tokens)

    def fork(self, parent_id: int, child_id: int) -> SequenceBlocks:
        """Give `child_id` the parent's blocks, shared (refcount + 1 each). Takes no new block."""
        if child_id in self._seqs:
            raise ValueError(f"sequence {child_id} already has a block table")
        parent = self._seqs[parent_id]
        for block_id in parent.block_ids:
            self._blocks[block_id].ref_count += 1
        child = SequenceBlocks(
            child_id, self.block_size, list(parent.block_ids), parent.num_tokens, parent.num_cached_tokens,
            list(parent.block_hashes), list(parent.tail),
        )
        self._seqs[child_id] = child
        return child

    def rename(self, seq_id: int, new_id: int) -> SequenceBlocks:
        """Hand a block table over to another sequence id (a pinned chat turn resumed); no
        reference count changes."""
        if new_id in self._seqs:
            raise ValueError(f"sequence {new_id} already has a block table")
        seq = self._seqs.pop(seq_id)
        seq.seq_id = new_id
        self._seqs[new_id] = seq
        return seq

    def free(self, seq_id: int) -> None:
        """Drop a sequence's block table. Its cached full blocks stay evictable; the rest are free."""
        seq = self._seqs.pop(seq_id)
        for block_id in reversed(seq.block_ids):  # tail first: see the module docstring
            self._release(block_id)

    def preempt(self, seq_id: int) -> int:
        """Free a sequence to make room, for recomputation later; returns the tokens it held.

        Its full blocks stay in the prefix cache until evicted, so the recomputation often finds
        most of them again.
        """
        num_tokens = self._seqs[seq_id].num_tokens
        self.free(seq_id)
        self.stats.preemptions += 1
        return num_tokens

    def reset_prefix_cache(self) -> None:
        """Forget every cached block: evictable ones become free, in-use ones stay but unkeyed."""
        for block_id in self._cached.values():
            self._blocks[block_id].key = None
        self._cached.clear()
        self._free.extend(reversed(self._evictable))
        self._evictable.clear()

    # ---- internals --------------------------------------------------------------------------

    def _match(self, prompt: Sequence[int]) -> list[int]:
        """Cached block ids for the longest cached prefix of `prompt`, leaving >= 1 token to compute."""
        if not self.enable_prefix_caching:
            return []
        bs, parent, hits = self.block_size, _ROOT_HASH, []
        for start in range(0, (len(prompt) - 1) // bs * bs, bs):
            key = block_key(parent, prompt[start : start + bs])
            block_id = self._cached.get(key)
            if block_id is None:
                break
            hits.append(block_id)
            parent = hash(key)
        return hits

    def _append(self, seq: SequenceBlocks, tokens: Sequence[int]) -> list[CopyOp]:
        """Append without a capacity check (callers check `blocks_needed` first)."""
        bs, copies, i = self.block_size, [], 0
        while i < len(tokens):
            offset = seq.num_tokens % bs
            if offset == 0:
                seq.block_ids.append(self._take_block())
            elif self._blocks[seq.block_ids[-1]].ref_count > 1:  # shared partial block: copy on write
                src, dst = seq.block_ids[-1], self._take_block()
                copies.append(CopyOp(src, dst, offset))
                self._release(src)
                seq.block_ids[-1] = dst
                self.stats.cow_copies += 1
            take = min(bs - offset, len(tokens) - i)
            seq.tail.extend(tokens[i : i + take])
            seq.num_tokens += take
            i += take
            if len(seq.tail) == bs:
                self._seal(seq)
        return copies

    def _seal(self, seq: SequenceBlocks) -> None:
        """The last block just filled: record its chain hash and publish it in the prefix cache."""
        key = block_key(seq.block_hashes[-1] if seq.block_hashes else _ROOT_HASH, seq.tail)
        seq.block_hashes.append(hash(key))
        seq.tail.clear()
        # An equal block may already be cached (computed by another sequence): keep that one.
        if self.enable_prefix_caching and key not in self._cached:
            block_id = seq.block_ids[-1]
            self._blocks[block_id].key = key
            self._cached[key] = block_id

    def _take_block(self) -> int:
        if self._free:
            block_id = self._free.pop()
        elif self._evictable:
            block_id, _ = self._evictable.popitem(last=False)
            del self._cached[self._blocks[block_id].key]
            self._blocks[block_id].key = None
            self.stats.evictions += 1
        else:  # unreachable when callers check capacity first
            raise self._out_of_blocks(1, "for one block")
        self._blocks[block_id].ref_count = 1
        return block_id

    def _release(self, block_id: int) -> None:
        block = self._blocks[block_id]
        block.ref_count -= 1
        if block.ref_count == 0:
            if block.key is not None:
                self._evictable[block_id] = None  # newest end of the LRU
            else:
                self._free.append(block_id)

    def _out_of_blocks(self, needed: int, what: str) -> OutOfBlocksError:
        return OutOfBlocksError(
            f"KV cache out of blocks: need {needed} block(s) {what}, but only {self.num_free_blocks} free +"
            f" {self.num_evictable_blocks} evictable of {self.num_blocks} remain; the scheduler should check"
            " can_append / can_add_sequence and preempt a sequence instead"
        )

    # ---- checking ---------------------------------------------------------------------------

    def assert_invariants(self) -> None:
        """Check every structural invariant; O(blocks + block-table entries), cheap enough per op.

        free + in use + evictable = total, no block in two places; refcount = number of tables
        holding the block (so >= 1 for every block in a table, and 0 everywhere once all
        sequences are freed); free blocks are unkeyed, evictable ones keyed; the prefix-cache map
        and the blocks' keys agree; every table is consistent with its token count and each
        cached block it holds carries the key its chain hash predicts.
        """
        holders = [0] * self.num_blocks
        for seq in self._seqs.values():
            self._assert_table(seq)
            for block_id in seq.block_ids:
                holders[block_id] += 1
        free, evictable = set(self._free), set(self._evictable)
        assert len(free) == len(self._free), "a block is on the free list twice"
        assert not free & evictable, f"blocks both free and evictable: {sorted(free & evictable)}"
        in_use = {b.block_id for b in self._blocks if b.ref_count > 0}
        assert not in_use & (free | evictable), f"in-use blocks also free/evictable: {sorted(in_use & (free | evictable))}"
        assert len(free) + len(evictable) + len(in_use) == self.num_blocks, "a block is in no state"
        for block in self._blocks:
            assert block.ref_count >= 0, f"block {block.block_id} has refcount {block.ref_count}"
            assert block.ref_count == holders[block.block_id], (
                f"block {block.block_id}: refcount {block.ref_count} but {holders[block.block_id]} tables hold it"
            )
            if block.block_id in free:
                assert block.key is None, f"free block {block.block_id} is still in the prefix cache"
            if block.block_id in evictable:
                assert block.key is not None, f"evictable block {block.block_id} is not cached"
            if block.key is not None:
                assert self._cached.get(block.key) == block.block_id, f"block {block.block_id} key not in the map"
        assert len(self._cached) == sum(b.key is not None for b in self._blocks), "map has stale entries"
        if not self._seqs:
            assert not in_use, "no sequence is live but blocks are in use"

    def _assert_table(self, seq: SequenceBlocks) -> None:
        bs = self.block_size
        assert len(seq.block_ids) == _ceil_div(seq.num_tokens, bs), f"seq {seq.seq_id}: table length"
        assert len(seq.block_hashes) == seq.num_tokens // bs, f"seq {seq.seq_id}: hash chain length"
        assert len(seq.tail) == seq.num_tokens % bs, f"seq {seq.seq_id}: tail length"
        for i, block_id in enumerate(seq.block_ids):
            key = self._blocks[block_id].key
            if key is None:
                continue
            assert i < len(seq.block_hashes), f"seq {seq.seq_id}: partial block {block_id} is cached"
            assert hash(key) == seq.block_hashes[i], f"seq {seq.seq_id}: block {block_id} holds other content"
            parent = seq.block_hashes[i - 1] if i else _ROOT_HASH
            assert key[0] == parent, f"seq {seq.seq_id}: block {block_id} has another parent"
