"""The paged model runner: a traced decoder compiled once into a paged-KV plan, fed flat batches.

`PagedModelRunner` traces the model on a flat token batch (`input_ids [1, S]`,
`position_ids [1, S]`), runs kiln's passes with `insert_kv_cache` after pattern fusion, sizes and
allocates the cache from the attention sites the pass finds, and builds one plan that serves
prefill, chunked prefill and decode of any mix of sequences (`SeqChunk`s). No per-architecture
model code: whatever traces and has causal attention runs.

Host work per step: building six small int tensors from Python lists. The flat batch is padded
to at least two tokens (export specialises a dim of size 1) and, on CUDA, to a bucket size so
repeated decode shapes replay one CUDA graph.
"""

from __future__ import annotations

import dataclasses
import inspect
import time
from dataclasses import dataclass, field
from typing import Any, Callable

import torch

from ..errors import KVCacheError, QuantizationError
from ..options import CompileOptions
from ..passes.calibrate import CalibrationFeed
from ..passes.kv_cache import AttentionSite, find_attention_sites, kv_cache_pass
from .blocks import CopyOp
from .kv_cache import KVCacheConfig, KVCachePool


@dataclass(slots=True)
class SeqChunk:
    """One sequence's share of a step: its new tokens, how many of its tokens the cache already
    holds (the first new token's position), its block table (covering start + len(tokens)
    tokens) and whether its last new token's logits are wanted."""

    tokens: list[int]
    start: int
    block_table: list[int]
    want_logits: bool = True


@dataclass
class RunnerInfo:
    """What the runner built: attention sites, cache geometry and compile seconds."""

    sites: list[AttentionSite]
    block_size: int
    num_blocks: int
    bytes_per_block: int
    vocab_size: int
    seconds: dict[str, float] = field(default_factory=dict)


GRAPH_TOKENS = 256  # steps up to this many (padded) tokens replay CUDA graphs


def _bucket(n: int) -> int:
    """Flat-batch sizes on CUDA: powers of two up to 64, then multiples of 64 (few shapes)."""
    if n <= 64:
        return 1 << (n - 1).bit_length()
    return -(-n // 64) * 64


class _StepBuffers:
    """Pinned host staging and device tensors for one padded step shape (P tokens, N sequences,
    table width W, R logits rows): int64 ids/positions/slots/rows, int32 tables/lengths/starts.

    Invariant: the host buffer is rewritten only after the previous copy out of it completed
    (`done` is recorded after the copies and waited on before the next fill)."""

    __slots__ = ("p", "n", "w", "r", "host64", "host32", "np64", "np32", "dev64", "dev32", "args", "done")

    def __init__(self, p: int, n: int, w: int, r: int, device: torch.device):
        self.p, self.n, self.w, self.r = p, n, w, r
        self.host64 = torch.empty(3 * p + r, dtype=torch.int64, pin_memory=True)
        self.host32 = torch.empty(n * w + 2 * n + 1, dtype=torch.int32, pin_memory=True)
        self.np64, self.np32 = self.host64.numpy(), self.host32.numpy()
        self.dev64 = torch.empty_like(self.host64, device=device)
        self.dev32 = torch.empty_like(self.host32, device=device)
        d64, d32, nw = self.dev64, self.dev32, n * w
        self.args = (
            d64[:p].view(1, p), d64[p:2 * p].view(1, p), d64[2 * p:3 * p], d32[:nw].view(n, w),
            d32[nw:nw + n], d32[nw + n:], d64[3 * p:],
        )
        self.done = torch.cuda.Event()

    def fill(self, ids: list[int], pos: list[int], slots: list[int], tables: list[list[int]],
             lens: list[int], starts: list[int], pick: list[int]) -> None:
        self.done.synchronize()
        p, w, nw = self.p, self.w, self.n * self.w
        a, b = self.np64, self.np32
        a[:p], a[p:2 * p], a[2 * p:3 * p], a[3 * p:] = ids, pos, slots, pick
        b[:nw] = 0
        for i, t in enumerate(tables):
            if t:
                b[i * w:i * w + len(t)] = t
        b[nw:nw + self.n], b[nw + self.n:] = lens, starts
        self.dev64.copy_(self.host64, non_blocking=True)
        self.dev32.copy_(self.host32, non_blocking=True)
        self.done.record()


class PagedModelRunner:
    """Compiles `model` for paged execution; `execute(chunks)` runs one step."""

    def __init__(
        self, model: torch.nn.Module, *, block_size: int, device: torch.device,
        num_blocks: int | Callable[[KVCacheConfig], int], options: CompileOptions | None = None,
        max_model_len: int = 2048,
    ):
        """`num_blocks`: a count, or a function of the cache geometry (the engine sizes the pool
        from its memory budget once the traced model's attention sites are known).
        `max_model_len` bounds the block-table width (on CUDA bucketed to powers of two, min 8
        blocks: stable shapes for graph replay, and short contexts need no split-K attention)."""
        from ..backends import kernel_hook
        from ..frontend.export import trace_export
        from ..passes import PIPELINE, run_pipeline
        from .plan import build_plan

        self.device = device
        self.block_size = block_size
        self._pin = device.type == "cuda"
        self._buffers: dict[tuple, _StepBuffers] = {}  # padded step shape -> staging buffers (CUDA)
        self.options = options or CompileOptions()
        t0 = time.perf_counter()
        example = torch.randint(0, 2, (1, 8), device=device)
        kwargs: dict[str, Any] = {"input_ids": example, "position_ids": torch.arange(8, device=device)[None]}
        if "use_cache" in inspect.signature(model.forward).parameters or hasattr(getattr(model, "config", None), "use_cache"):
            kwargs["use_cache"] = False  # the cache is kiln's: trace the model without its own
        traced = trace_export(model, (), kwargs)
        passes = [p for p in PIPELINE if p.name not in self.options.disable_passes]
        # the KV cache goes in after fuse_patterns and after tensor-parallel sharding (sized by this rank's heads)
        split = max(i for i, p in enumerate(passes) if p.name in ("fuse_patterns", "shard_tensor_parallel")) + 1
        g, _ = run_pipeline(traced.graph, passes[:split], self.options, device=device)
        sites = find_attention_sites(g)
        geometry = {(s.kv_heads, s.head_dim, s.dtype) for s in sites}
        if len(geometry) != 1:
            raise KVCacheError(f"layers differ in kv heads / head dim / dtype ({sorted(map(str, geometry))}); one cache pool needs them equal")
        heads, dim, dtype = geometry.pop()
        stages = self.options.pipeline_parallel[1] if self.options.pipeline_parallel else 1
        # a pipeline stage holds only its layers' caches: size the pool for the largest stage
        layers = len(sites) if stages == 1 else _largest_stage_layers(g, sites, stages)
        config = KVCacheConfig(layers, heads, dim, dtype, device, block_size)
        n = num_blocks(config) if callable(num_blocks) else int(num_blocks)
        feed = self._calibration_feed(n)
        if stages == 1 or feed is not None:  # calibration runs the uncut graph: it writes every layer's cache
            self.pool = KVCachePool(dataclasses.replace(config, num_layers=len(sites)), n)
            caches = [(self.pool.key_cache(i), self.pool.value_cache(i)) for i in range(len(sites))]
        else:  # stand-ins of the right shape that own no memory; split_pipeline keeps this stage's
            stand_in = torch.zeros((1, block_size, heads, dim), dtype=dtype, device=device).expand(n, -1, -1, -1)
            caches = [(stand_in, stand_in)] * len(sites)
        g, _ = run_pipeline(g, [kv_cache_pass(caches)] + passes[split:], self.options, device=device, calibration=feed)
        if stages > 1:
            sites, self.pool = _bind_stage_caches(g, sites, config, n)
        self.kv_cache = [(self.pool.key_cache(i), self.pool.value_cache(i)) for i in range(len(sites))]
        per_block = self.pool.config.bytes_per_block
        t1 = time.perf_counter()
        self.graph = g
        hook = kernel_hook(self.options.backend, device)
        # export assumes dynamic dims are >= 2 (it specialises 0 and 1), but nothing in a traced
        # decoder depends on the token count being above one; a batch-1 decode step is one token,
        # and padding it to two would make every projection read its weights for two rows
        ranges = {sym: (min(lo, 1), hi) for sym, (lo, hi) in traced.symbol_ranges.items()}
        self.plan = build_plan(g, device, ranges, kernel_for=hook, arena=self.options.arena)
        # CUDA graphs only when paged attention runs as kernels: the reference reads the block
        # tables on the host, and a capture that fails mid-way leaves CUDA's RNG unusable.
        capturable = all(i in self.plan.launched for i, n in enumerate(g.nodes) if n.op.name == "paged_attention")
        capturable = capturable and stages == 1  # send/recv inside captured graphs: not yet
        vocab = (g if g.outputs else traced.graph).outputs[0].type.shape[-1]  # only the last stage has outputs
        self.info = RunnerInfo(sites, block_size, n, per_block, int(vocab), {"compile": t1 - t0, "plan": time.perf_counter() - t1})
        self.max_blocks = -(-max_model_len // block_size)
        self.run: Callable[..., tuple] = self._step
        if self._pin and self.options.cuda_graphs and capturable:
            from .cudagraph import GraphRunner

            # decode steps repeat a few bucketed shapes: replay them as CUDA graphs (the logits
            # are read before the next step, so the graph's own output is handed out, not a copy)
            self.run = GraphRunner(self._step, max_graphs=64, retained=self.plan.retained, stable_inputs=True,
                                   clone_outputs=False)

    def _step(self, *args: torch.Tensor) -> tuple:
        """The plan, then its logits rows in float32: one function, so a CUDA graph captures the
        conversion too (no kernel launched from the host after the replay)."""
        out = self.plan.fn(*args)
        return (out[0][0].float(),) if out else ()

    def release_graphs(self) -> None:
        """Destroy the captured CUDA graphs (before a parallel group is torn down); later steps run uncaptured."""
        release = getattr(self.run, "release", None)
        if release is not None:
            release()

    @property
    def num_blocks(self) -> int:
        return self.info.num_blocks

    def execute(self, chunks: list[SeqChunk]) -> torch.Tensor | None:
        """Run one step; returns float32 logits [number of chunks wanting logits, vocab] (None on
        a pipeline stage other than the last, whose plan returns nothing), valid until the next
        call (a replayed CUDA graph writes the next step's logits into the same memory)."""
        args, wanted = self._step_args(chunks, bucket=self._pin)
        # CUDA graphs for steps of at most GRAPH_TOKENS (padded) tokens: decode batches and short
        # prefills, whose shapes repeat and whose time is mostly launch overhead; larger steps
        # run the plan directly (their work amortises the launches, and capturing every large
        # mixed shape would cost more than it saves).
        run = self.run if args[0].shape[1] <= GRAPH_TOKENS else self._step
        with torch.no_grad():
            out = run(*args)
        return out[0][:wanted] if out else None

    def _step_args(self, chunks: list[SeqChunk], bucket: bool) -> tuple[tuple[torch.Tensor, ...], int]:
        """The plan's inputs for one step and the number of logit rows wanted; `bucket` pads the
        flat batch, sequence count and table width to CUDA-graph buckets."""
        bs = self.block_size
        ids: list[int] = []
        pos: list[int] = []
        slots: list[int] = []
        lens: list[int] = []
        starts = [0]
        pick: list[int] = []
        for c in chunks:
            end = c.start + len(c.tokens)
            if len(c.block_table) * bs < end:
                raise ValueError(f"block table of {len(c.block_table)} blocks cannot hold {end} tokens")
            ids += c.tokens
            pos += range(c.start, end)
            table = c.block_table
            slots += [table[p // bs] * bs + p % bs for p in range(c.start, end)]
            lens.append(end)
            starts.append(starts[-1] + len(c.tokens))
            if c.want_logits:
                pick.append(starts[-1] - 1)
        total = len(ids)
        wanted = len(pick)
        padded = _bucket(total) if bucket else total
        ids += [0] * (padded - total)
        pos += [0] * (padded - total)
        slots += [-1] * (padded - total)
        width = max(len(c.block_table) for c in chunks)
        tables = [c.block_table for c in chunks]
        if bucket:  # stable shapes on CUDA: bucketed sequence count and table width
            width = min(self.max_blocks, max(8, 1 << (width - 1).bit_length()))  # few widths; short contexts stay short
            extra = _bucket(len(chunks)) - len(chunks)
            tables += [[]] * extra
            lens += [0] * extra
            starts += [starts[-1]] * extra
            pick += [0] * (_bucket(max(wanted, 1)) - wanted)
        elif not pick:
            pick = [0]  # the plan needs one row; the caller asked for none
        if self._pin:
            args = self._staged(ids, pos, slots, tables, width, lens, starts, pick)
        else:
            tables = [t + [0] * (width - len(t)) for t in tables]
            args = (
                torch.tensor([ids]), torch.tensor([pos]), torch.tensor(slots), torch.tensor(tables, dtype=torch.int32),
                torch.tensor(lens, dtype=torch.int32), torch.tensor(starts, dtype=torch.int32), torch.tensor(pick),
            )
        return args, wanted

    def _staged(self, ids: list[int], pos: list[int], slots: list[int], tables: list[list[int]], width: int,
                lens: list[int], starts: list[int], pick: list[int]) -> tuple[torch.Tensor, ...]:
        """The step's inputs on the device through one pinned staging buffer per padded shape:
        two host-to-device copies per step, and the same device tensors every time the shape
        repeats (a CUDA graph replay then copies nothing)."""
        key = (len(ids), len(tables), width, len(pick))
        buf = self._buffers.get(key)
        if buf is None:
            if len(self._buffers) >= 64:
                del self._buffers[next(iter(self._buffers))]
            buf = self._buffers[key] = _StepBuffers(*key, self.device)
        buf.fill(ids, pos, slots, tables, lens, starts, pick)
        return buf.args

    def _calibration_feed(self, num_blocks: int) -> CalibrationFeed | None:
        """The quantization scheme's calibration examples (token-id sequences) as one prefill step
        each over blocks 0.. of the pool (scratch until serving starts), or None when the scheme
        needs no calibration."""
        scheme = self.options.quantization
        if scheme is None or not scheme.needs_calibration:
            return None
        batches = []
        for i, ex in enumerate(scheme.calibration):
            tokens = ex.tolist() if isinstance(ex, torch.Tensor) else list(ex) if isinstance(ex, (list, tuple)) else None
            if not tokens or not all(isinstance(t, int) and not isinstance(t, bool) for t in tokens):
                raise QuantizationError(
                    f"calibration example {i} must be a non-empty sequence of token ids (or a prompt string given to kiln.LLM), got {ex!r:.60}"
                )
            blocks = -(-len(tokens) // self.block_size)
            if blocks > num_blocks:
                raise QuantizationError(
                    f"calibration example {i} has {len(tokens)} tokens, more than the KV pool's {num_blocks} blocks of "
                    f"{self.block_size} hold; use shorter calibration sequences"
                )
            args, _ = self._step_args([SeqChunk(tokens, 0, list(range(blocks)))], bucket=False)
            batches.append(tuple(a.clone() for a in args))  # staged device buffers are reused per shape
        return CalibrationFeed(tuple(batches), state_is_scratch=True)

    def copy_blocks(self, copies: list[CopyOp]) -> None:
        """Perform the allocator's copy-on-write copies (every layer, K and V)."""
        with torch.no_grad():
            self.pool.copy_blocks(copies)


def _largest_stage_layers(g: Any, sites: list[AttentionSite], num_stages: int) -> int:
    """The most attention layers one pipeline stage holds, with the cuts `plan_split` makes on this
    graph (before the KV cache; the final cut is made later and may differ, so this only sizes
    the pool: every rank takes rank 0's block count, which fits each stage's memory when stages
    hold about equal numbers of layers)."""
    from ..passes.pipeline_parallel import plan_split

    at = {id(node): i for i, node in enumerate(g.nodes)}
    bounds = [0, *plan_split(g, num_stages).cuts, len(g.nodes)]
    return max(max(sum(lo <= at[id(s.node)] < hi for s in sites) for lo, hi in zip(bounds, bounds[1:])), 1)


def _bind_stage_caches(g: Any, sites: list[AttentionSite], config: KVCacheConfig, num_blocks: int) -> tuple[list[AttentionSite], KVCachePool]:
    """A pipeline stage's pool: the layers whose caches (`kv.<layer>.k` / `.v`) survived the cut,
    allocated now and bound in place of the stand-ins; layer j of the pool is the j-th kept site.
    Caches of other stages' layers are never allocated (or, after calibration, dropped)."""
    kept = [s for s in sites if f"kv.{s.layer}.k" in g.constants]
    if not kept:
        raise KVCacheError("this pipeline stage runs no attention layer; use fewer stages")
    pool = KVCachePool(dataclasses.replace(config, num_layers=len(kept)), num_blocks)
    for j, s in enumerate(kept):
        for name, cache in ((f"kv.{s.layer}.k", pool.key_cache(j)), (f"kv.{s.layer}.v", pool.value_cache(j))):
            if g.constants[name].type.shape != tuple(cache.shape):
                raise KVCacheError(f"internal: cache {name} was rewritten to {g.constants[name].type}")
            g.constant_data[name] = cache
    return kept, pool
