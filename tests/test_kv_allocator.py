"""The paged KV-cache allocator and tensor pool: one property per unit test, then a hypothesis
state machine that runs >= 10^5 random operations against a shadow model of every sequence's
tokens, read back through a simulated pool that follows the allocator's instructions."""

from __future__ import annotations

import random

import pytest
import torch
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)

from kiln.errors import KilnError, KVCacheError, OutOfBlocksError, RequestTooLargeError
from kiln.runtime import BlockAllocator, CopyOp, KVCacheConfig, KVCachePool, blocks_for_request, size_kv_cache


def _checked(alloc: BlockAllocator) -> BlockAllocator:
    alloc.assert_invariants()
    return alloc


# ---- allocation, free, fork, copy-on-write -------------------------------------------------


def test_free_returns_every_block_to_the_pool() -> None:
    alloc = BlockAllocator(8, 4, enable_prefix_caching=False)
    seq = alloc.add_sequence(0, [1, 2, 3, 4, 5, 6])
    assert len(seq.block_ids) == 2 and alloc.num_free_blocks == 6
    alloc.free(0)
    _checked(alloc)
    assert alloc.num_free_blocks == 8 and alloc.num_used_blocks == 0


def test_slot_mapping_addresses_block_and_offset() -> None:
    alloc = BlockAllocator(8, 4)
    seq = alloc.add_sequence(0, [5, 6, 7, 8, 9])
    b0, b1 = seq.block_ids
    assert seq.slot_mapping(0, 5) == [b0 * 4, b0 * 4 + 1, b0 * 4 + 2, b0 * 4 + 3, b1 * 4]


def test_fork_shares_every_block_without_allocating() -> None:
    alloc = BlockAllocator(8, 4)
    parent = alloc.add_sequence(0, [1, 2, 3, 4, 5])
    free_before = alloc.num_available_blocks
    child = alloc.fork(0, 1)
    assert child.block_ids == parent.block_ids and alloc.num_available_blocks == free_before
    assert all(alloc.ref_count(b) == 2 for b in parent.block_ids)
    _checked(alloc)


def test_fork_then_append_copies_the_shared_last_block() -> None:
    alloc = BlockAllocator(8, 4)
    alloc.add_sequence(0, [1, 2, 3, 4, 5, 6])  # second block half full
    alloc.fork(0, 1)
    shared_tail = alloc.sequence(1).block_ids[-1]
    copies = alloc.append_tokens(1, [7])
    new_tail = alloc.sequence(1).block_ids[-1]
    assert copies == [CopyOp(src=shared_tail, dst=new_tail, num_tokens=2)] and new_tail != shared_tail
    assert alloc.sequence(0).block_ids[-1] == shared_tail and alloc.ref_count(shared_tail) == 1
    assert alloc.sequence(0).block_ids[0] == alloc.sequence(1).block_ids[0]  # full block still shared
    assert alloc.append_tokens(0, [8]) == []  # the parent now owns its tail alone: written in place
    _checked(alloc)


def test_append_after_a_full_shared_block_takes_a_new_block_without_copy() -> None:
    alloc = BlockAllocator(8, 4)
    alloc.add_sequence(0, [1, 2, 3, 4])
    alloc.fork(0, 1)
    assert alloc.blocks_needed(1, 1) == 1
    assert alloc.append_tokens(1, [5]) == []
    _checked(alloc)


def test_blocks_needed_counts_the_copy_on_write_block() -> None:
    alloc = BlockAllocator(16, 4)
    alloc.add_sequence(0, [1, 2, 3])
    assert alloc.blocks_needed(0, 1) == 0 and alloc.blocks_needed(0, 2) == 1 and alloc.blocks_needed(0, 6) == 2
    alloc.fork(0, 1)
    assert alloc.blocks_needed(0, 1) == 1 and alloc.blocks_needed(0, 2) == 2 and alloc.blocks_needed(0, 0) == 0


def test_chunked_prefill_reserves_only_the_first_chunk() -> None:
    alloc = BlockAllocator(8, 4)
    alloc.add_sequence(0, list(range(10)))
    seq = alloc.add_sequence(1, list(range(9)) + [42, 43, 44], num_tokens=2)
    assert (seq.num_cached_tokens, seq.num_tokens, len(seq.block_ids)) == (8, 8, 2)  # cache beats the chunk
    alloc.append_tokens(1, [8, 42])
    assert seq.num_tokens == 10 and seq.block_ids[:2] == alloc.sequence(0).block_ids[:2]
    _checked(alloc)


def test_out_of_blocks_leaves_state_unchanged_and_can_append_predicts_it() -> None:
    alloc = BlockAllocator(2, 2, enable_prefix_caching=False)
    alloc.add_sequence(0, [1, 2, 3])
    assert alloc.can_append(0, 1) and not alloc.can_append(0, 2)
    table = list(alloc.sequence(0).block_ids)
    with pytest.raises(OutOfBlocksError, match="preempt"):
        alloc.append_tokens(0, [4, 5])
    assert alloc.sequence(0).block_ids == table and alloc.sequence(0).num_tokens == 3
    assert not alloc.can_add_sequence([1]) and not alloc.can_allocate(1)
    with pytest.raises(OutOfBlocksError):
        alloc.add_sequence(1, [1])
    assert 1 not in alloc
    _checked(alloc)


def test_preempt_frees_everything_and_recompute_hits_the_prefix_cache() -> None:
    alloc = BlockAllocator(8, 2)
    alloc.add_sequence(0, [1, 2, 3, 4, 5])
    alloc.append_tokens(0, [6, 7])
    assert alloc.preempt(0) == 7 and alloc.num_used_blocks == 0 and alloc.stats.preemptions == 1
    seq = alloc.add_sequence(1, [1, 2, 3, 4, 5, 6, 7])
    assert seq.num_cached_tokens == 6
    _checked(alloc)


# ---- prefix caching and eviction -----------------------------------------------------------


def test_prefix_cache_reuses_full_blocks_only() -> None:
    alloc = BlockAllocator(16, 4)
    first = alloc.add_sequence(0, [1, 2, 3, 4, 5, 6, 7, 8, 9, 10])
    second = alloc.add_sequence(1, [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11])
    assert second.num_cached_tokens == 8  # two full blocks; the partial block [9, 10] is never shared
    assert second.block_ids[:2] == first.block_ids[:2] and second.block_ids[2] != first.block_ids[2]
    assert alloc.stats.prefix_hit_tokens == 8
    _checked(alloc)


def test_prefix_cache_leaves_the_last_prompt_token_to_compute() -> None:
    alloc = BlockAllocator(16, 4)
    alloc.add_sequence(0, [1, 2, 3, 4, 5, 6, 7, 8])
    assert alloc.match_prefix([1, 2, 3, 4, 5, 6, 7, 8]) == 4  # the model needs the last token's logits
    assert alloc.match_prefix([1, 2, 3, 4, 5, 6, 7, 8, 9]) == 8


def test_prefix_chain_depends_on_everything_before_the_block() -> None:
    alloc = BlockAllocator(16, 2)
    alloc.add_sequence(0, [1, 2, 3, 4, 0])
    assert alloc.match_prefix([9, 9, 3, 4, 0]) == 0  # block [3, 4] after another first block: no hit
    assert alloc.match_prefix([1, 2, 9, 9, 0]) == 2


def test_prefix_caching_disabled_never_shares() -> None:
    alloc = BlockAllocator(16, 2, enable_prefix_caching=False)
    a = alloc.add_sequence(0, [1, 2, 3, 4, 5])
    b = alloc.add_sequence(1, [1, 2, 3, 4, 5])
    assert b.num_cached_tokens == 0 and not set(a.block_ids) & set(b.block_ids)
    alloc.free(0)
    assert alloc.num_evictable_blocks == 0


def test_freed_cached_blocks_stay_evictable_and_revive_on_hit() -> None:
    alloc = BlockAllocator(8, 2)
    alloc.add_sequence(0, [1, 2, 3, 4, 5])
    alloc.free(0)
    assert alloc.num_evictable_blocks == 2 and alloc.num_free_blocks == 6
    seq = alloc.add_sequence(1, [1, 2, 3, 4, 9])
    assert seq.num_cached_tokens == 4 and alloc.num_evictable_blocks == 0
    _checked(alloc)


def test_lru_evicts_oldest_unreferenced_cached_block() -> None:
    alloc = BlockAllocator(3, 2)
    alloc.add_sequence(0, [1, 1])  # block A, cached
    alloc.add_sequence(1, [2, 2])  # block B, cached
    alloc.free(0)  # A released first: the older
    alloc.free(1)
    a, b = (alloc.match_prefix(p) for p in ([1, 1, 0], [2, 2, 0]))
    assert (a, b) == (2, 2) and alloc.num_free_blocks == 1
    alloc.add_sequence(2, [7, 7, 7, 7])  # needs 2 blocks: the free one, then evicts A
    assert alloc.match_prefix([1, 1, 0]) == 0 and alloc.match_prefix([2, 2, 0]) == 2
    assert alloc.stats.evictions == 1
    _checked(alloc)


def test_cached_blocks_are_evicted_only_when_the_free_list_is_empty() -> None:
    alloc = BlockAllocator(4, 2)
    alloc.add_sequence(0, [1, 2, 3])
    alloc.free(0)
    alloc.add_sequence(1, [5, 6, 7])  # 2 blocks from the 3 free ones
    assert alloc.stats.evictions == 0 and alloc.match_prefix([1, 2, 0]) == 2
    _checked(alloc)


def test_free_releases_tail_first_so_the_prefix_root_is_evicted_last() -> None:
    alloc = BlockAllocator(3, 2)
    alloc.add_sequence(0, [1, 2, 3, 4, 5, 6])
    alloc.free(0)  # all three cached and evictable
    alloc.add_sequence(1, [9])  # evicts one: must be the deepest block, [5, 6]
    assert alloc.match_prefix([1, 2, 3, 4, 0]) == 4 and alloc.match_prefix([1, 2, 3, 4, 5, 6, 0]) == 4
    _checked(alloc)


def test_reset_prefix_cache_frees_every_evictable_block() -> None:
    alloc = BlockAllocator(8, 2)
    alloc.add_sequence(0, [1, 2, 3, 4, 5])
    alloc.add_sequence(1, [3, 3, 3])
    alloc.free(0)
    alloc.reset_prefix_cache()
    assert alloc.num_evictable_blocks == 0 and alloc.match_prefix([1, 2, 3, 4, 5]) == 0
    alloc.free(1)
    _checked(alloc)
    assert alloc.num_free_blocks == 8


# ---- admission -----------------------------------------------------------------------------


def test_request_that_never_fits_is_rejected_with_the_numbers() -> None:
    alloc = BlockAllocator(10, 16)
    alloc.check_fits(100, 60)  # 160 tokens = 10 blocks: fits an empty pool exactly
    with pytest.raises(RequestTooLargeError) as info:
        alloc.check_fits(100, 61)
    err = info.value
    assert isinstance(err, KilnError) and (err.tokens_needed, err.blocks_needed) == (161, 11)
    for text in ("161 tokens", "11 blocks", "16 tokens", "10 blocks", "160 tokens", "kv_cache_memory", "max_model_len"):
        assert text in str(err), text


def test_samples_of_one_request_share_only_full_prompt_blocks() -> None:
    assert blocks_for_request(40, 10, 16, n=1) == 4
    assert blocks_for_request(40, 10, 16, n=3) == 2 + 3 * 2  # [32 shared] + 3 x ceil(50 / 16) - 2
    with pytest.raises(RequestTooLargeError, match="n=3"):
        BlockAllocator(7, 16).check_fits(40, 10, n=3)


# ---- sizing and the tensor pool ------------------------------------------------------------


def test_pool_size_from_memory_budget() -> None:
    cfg = KVCacheConfig(num_layers=2, num_kv_heads=4, head_dim=8, dtype=torch.float16, block_size=16)
    assert cfg.bytes_per_token == 2 * 2 * 4 * 8 * 2 and cfg.bytes_per_block == 16 * 256
    sizing = size_kv_cache(cfg, 10 * 4096 + 100)
    assert (sizing.num_blocks, sizing.num_tokens, sizing.total_bytes) == (10, 160, 40960)
    gpu = KVCacheConfig(2, 4, 8, torch.float16, device="cuda", block_size=16)
    assert size_kv_cache(gpu, 0.5, free_bytes=100 * 4096).num_blocks == 50
    assert size_kv_cache(gpu, free_bytes=100 * 4096).num_blocks == 90  # default: 0.9 of free memory


def test_sizing_states_its_numbers() -> None:
    sizing = size_kv_cache(KVCacheConfig(2, 4, 8, torch.float16), 1 << 20)
    text = sizing.describe()
    for part in ("256 blocks", "16 tokens", "4096 tokens", "4.0 KiB per block", "1.0 MiB", "float16"):
        assert part in text, (part, text)


def test_budget_errors_are_typed_and_say_what_to_do() -> None:
    cfg = KVCacheConfig(2, 4, 8)
    with pytest.raises(KVCacheError, match="raise kv_cache_memory"):
        size_kv_cache(cfg, 100)
    with pytest.raises(ValueError, match="CUDA"):
        size_kv_cache(cfg, 0.5)
    with pytest.raises(ValueError, match=r"\(0, 1\]"):
        size_kv_cache(KVCacheConfig(2, 4, 8, device="cuda"), 1.5, free_bytes=1 << 30)
    with pytest.raises(ValueError, match="num_kv_heads"):
        KVCacheConfig(2, 0, 8)


def test_pool_write_gather_and_copy_on_write_roundtrip() -> None:
    torch.manual_seed(0)
    cfg = KVCacheConfig(num_layers=2, num_kv_heads=2, head_dim=4, block_size=4)
    pool, alloc = KVCachePool(cfg, 8), BlockAllocator(8, 4)
    assert pool.key_cache(1).shape == (8, 4, 2, 4) and pool.key_cache(1).is_contiguous()
    seq = alloc.add_sequence(0, list(range(6)))
    kv = {layer: (torch.randn(6, 2, 4), torch.randn(6, 2, 4)) for layer in range(2)}  # (T, H, D)
    for layer, (k, v) in kv.items():
        pool.write(layer, torch.tensor(seq.slot_mapping(0, 6)), k, v)
    alloc.fork(0, 1)
    copies = alloc.append_tokens(1, [6])
    pool.copy_blocks(copies)
    child = alloc.sequence(1)
    extra = {layer: (torch.randn(1, 2, 4), torch.randn(1, 2, 4)) for layer in range(2)}
    for layer, (k, v) in extra.items():
        pool.write(layer, torch.tensor(child.slot_mapping(6, 7)), k, v)
    for layer in range(2):
        k0, v0 = pool.gather(layer, alloc.sequence(0).block_ids, 6)
        torch.testing.assert_close((k0, v0), kv[layer])  # the parent is untouched by the child's write
        k1, v1 = pool.gather(layer, child.block_ids, 7)
        torch.testing.assert_close(k1, torch.cat([kv[layer][0], extra[layer][0]]))
        torch.testing.assert_close(v1, torch.cat([kv[layer][1], extra[layer][1]]))


def test_copy_blocks_runs_chained_copies_in_order() -> None:
    pool = KVCachePool(KVCacheConfig(1, 1, 2, block_size=2), 3)
    pool.cache[:, :, 0] = torch.randn(1, 2, 2, 1, 2)
    pool.copy_blocks([CopyOp(0, 1, 2), CopyOp(1, 2, 2)])  # 1 is written, then read
    torch.testing.assert_close(pool.cache[:, :, 2], pool.cache[:, :, 0])


# ---- random operations against a shadow model ---------------------------------------------



def token_lists(min_size: int = 0, max_size: int = 14) -> st.SearchStrategy[list[int]]:
    """Token ids from a vocabulary of 3, so prefixes (and whole blocks) repeat often. Drawn as
    bytes: one hypothesis draw per list instead of one per token keeps 10^5 steps affordable."""
    return st.binary(min_size=min_size, max_size=max_size).map(lambda raw: [b % 3 for b in raw])

MAX_SEQS = 10
MIN_OPERATIONS = 100_000
operations = 0  # allocator operations the state machine ran in this process, checked by its test
reached = {"evictions": 0, "cow_copies": 0, "prefix_hit_tokens": 0, "preemptions": 0}  # paths exercised


class AllocatorMachine(RuleBasedStateMachine):
    """Random operations on a tiny pool. `self.tokens` is the shadow model (each sequence's
    tokens); `self.pool` simulates the KV tensors (block id -> token per slot): the test writes
    each reserved token into its slot and performs every copy the allocator asks for, so reading
    a sequence back through its block table proves copy-on-write and prefix sharing correct."""

    @initialize(num_blocks=st.integers(8, 32), block_size=st.integers(2, 4), caching=st.booleans())
    def setup(self, num_blocks: int, block_size: int, caching: bool) -> None:
        self.alloc = BlockAllocator(num_blocks, block_size, enable_prefix_caching=caching)
        self.bs = block_size
        self.pool: dict[int, list[int | None]] = {b: [None] * block_size for b in range(num_blocks)}
        self.tokens: dict[int, list[int]] = {}
        self.next_id = 0

    def _count(self) -> None:
        global operations
        operations += 1

    def _pick(self, pick: int) -> int:
        ids = sorted(self.tokens)
        return ids[pick % len(ids)]

    def _write(self, seq_id: int, start: int) -> None:
        """The engine's forward: write tokens [start, num_tokens) into their (exclusive) slots."""
        seq = self.alloc.sequence(seq_id)
        for i in range(start, seq.num_tokens):
            block_id = seq.block_ids[i // self.bs]
            assert self.alloc.ref_count(block_id) == 1, f"writing into shared block {block_id}"
            self.pool[block_id][i % self.bs] = self.tokens[seq_id][i]

    def _start(self, prompt: list[int], num_tokens: int | None = None) -> None:
        if self.alloc.num_blocks < blocks_for_request(len(prompt), 0, self.bs):
            with pytest.raises(RequestTooLargeError):
                self.alloc.check_fits(len(prompt), 0)
            return
        self.alloc.check_fits(len(prompt), 0)
        seq_id, self.next_id = self.next_id, self.next_id + 1
        cached = self.alloc.match_prefix(prompt)
        if not self.alloc.can_add_sequence(prompt, num_tokens):
            available = self.alloc.num_available_blocks
            with pytest.raises(OutOfBlocksError):
                self.alloc.add_sequence(seq_id, prompt, num_tokens=num_tokens)
            assert seq_id not in self.alloc and self.alloc.num_available_blocks == available
            return
        expected_taken = self.alloc.blocks_needed_for_prompt(prompt, num_tokens)
        available = self.alloc.num_available_blocks
        seq = self.alloc.add_sequence(seq_id, prompt, num_tokens=num_tokens)
        assert available - self.alloc.num_available_blocks == expected_taken
        assert seq.num_cached_tokens == cached and cached < len(prompt)
        self.tokens[seq_id] = list(prompt[: seq.num_tokens])
        self._write(seq_id, cached)

    @precondition(lambda self: len(self.tokens) < MAX_SEQS)
    @rule(prompt=token_lists(1, 14), chunk=st.none() | st.integers(0, 14))
    def new_sequence(self, prompt: list[int], chunk: int | None) -> None:
        self._count()
        self._start(prompt, None if chunk is None else min(chunk, len(prompt)))

    @precondition(lambda self: 0 < len(self.tokens) < MAX_SEQS)
    @rule(pick=st.integers(0, 99), cut=st.integers(0, 40), suffix=token_lists(0, 5))
    def share_prefix(self, pick: int, cut: int, suffix: list[int]) -> None:
        self._count()
        self._start((self.tokens[self._pick(pick)][:cut] + suffix) or [0])

    def _append(self, seq_id: int, new: list[int]) -> bool:
        """Append through the allocator as the engine would; False (and nothing changed) if out of blocks."""
        seq = self.alloc.sequence(seq_id)
        needed, available, before = self.alloc.blocks_needed(seq_id, len(new)), self.alloc.num_available_blocks, list(seq.block_ids)
        if not self.alloc.can_append(seq_id, len(new)):
            with pytest.raises(OutOfBlocksError):
                self.alloc.append_tokens(seq_id, new)
            assert seq.block_ids == before and seq.num_tokens == len(self.tokens[seq_id])
            return False
        copies = self.alloc.append_tokens(seq_id, new)
        assert available - self.alloc.num_available_blocks == needed and len(copies) <= 1
        for op in copies:
            self.pool[op.dst] = list(self.pool[op.src])
        start = len(self.tokens[seq_id])
        self.tokens[seq_id] += new
        self._write(seq_id, start)
        return True

    @precondition(lambda self: self.tokens)
    @rule(pick=st.integers(0, 99), new=token_lists(1, 6))
    def append(self, pick: int, new: list[int]) -> None:
        self._count()
        self._append(self._pick(pick), new)

    @precondition(lambda self: self.tokens)
    @rule(raw=st.binary(min_size=MAX_SEQS, max_size=4 * MAX_SEQS))
    def decode_steps(self, raw: bytes) -> None:
        """Engine decode steps: each gives every sequence one token (from `raw`), oldest first;
        when the pool runs out the newest sequence is preempted, as a scheduler would, and the
        step goes on. Each append or preemption is one operation, checked on its own."""
        tokens = iter(raw)
        for token in tokens:
            for seq_id in sorted(self.tokens):
                while seq_id in self.tokens:
                    self._count()
                    if self._append(seq_id, [token % 3]):
                        self.check()
                        break
                    victim = max(self.tokens)
                    assert self.alloc.preempt(victim) == len(self.tokens.pop(victim))
                    self.check()
                token = next(tokens, token)

    @precondition(lambda self: 0 < len(self.tokens) < MAX_SEQS)
    @rule(pick=st.integers(0, 99))
    def fork(self, pick: int) -> None:
        self._count()
        parent, child = self._pick(pick), self.next_id
        self.next_id += 1
        available = self.alloc.num_available_blocks
        self.alloc.fork(parent, child)
        assert self.alloc.num_available_blocks == available
        self.tokens[child] = list(self.tokens[parent])

    @precondition(lambda self: self.tokens)
    @rule(pick=st.integers(0, 99))
    def free(self, pick: int) -> None:
        self._count()
        seq_id = self._pick(pick)
        self.alloc.free(seq_id)
        del self.tokens[seq_id]

    @precondition(lambda self: self.tokens)
    @rule(pick=st.integers(0, 99))
    def preempt_and_recompute(self, pick: int) -> None:
        self._count()
        seq_id = self._pick(pick)
        tokens = self.tokens.pop(seq_id)
        assert self.alloc.preempt(seq_id) == len(tokens)
        if tokens:  # a chunked prefill preempted before its first chunk holds none
            self._start(tokens)

    @precondition(lambda self: len(self.tokens) < MAX_SEQS)
    @rule(seed=st.integers(0, 2**16))
    def evict_pressure(self, seed: int) -> None:
        """A prompt as long as everything available: forces eviction of every evictable block."""
        self._count()
        rng = random.Random(seed)
        length = max(1, self.alloc.num_available_blocks * self.bs - rng.randrange(self.bs))
        self._start([rng.randrange(3) for _ in range(length)])

    @rule()
    def reset_prefix_cache(self) -> None:
        self._count()
        self.alloc.reset_prefix_cache()

    @invariant()
    def check(self) -> None:
        """Allocator invariants, and every sequence reads its own tokens back through its table."""
        self.alloc.assert_invariants()
        assert sorted(self.alloc.seq_ids) == sorted(self.tokens)
        for seq_id, tokens in self.tokens.items():
            seq = self.alloc.sequence(seq_id)
            assert seq.num_tokens == len(tokens)
            read = [self.pool[seq.block_ids[i // self.bs]][i % self.bs] for i in range(len(tokens))]
            assert read == tokens, f"sequence {seq_id} reads back {read}, expected {tokens}"

    def teardown(self) -> None:
        """Drain: after every sequence is freed nothing is in use."""
        if not hasattr(self, "alloc"):
            return
        for name in reached:
            reached[name] += getattr(self.alloc.stats, name)
        for seq_id in list(self.tokens):
            self.alloc.free(seq_id)
        self.alloc.assert_invariants()
        assert self.alloc.num_used_blocks == 0 and self.alloc.num_available_blocks == self.alloc.num_blocks
        self.alloc.reset_prefix_cache()
        assert self.alloc.num_free_blocks == self.alloc.num_blocks


def test_random_operations_keep_invariants_and_contents() -> None:
    start = operations
    run_state_machine_as_test(
        AllocatorMachine,
        settings=settings(
            max_examples=500, stateful_step_count=200, deadline=None, suppress_health_check=list(HealthCheck)
        ),
    )
    print(f"{operations - start} random allocator operations; reached {reached}")
    assert operations - start >= MIN_OPERATIONS, f"only {operations - start} random operations ran"
    assert all(reached.values()), f"some allocator paths were never exercised: {reached}"
