"""shard_tensor_parallel: one rank's share of a transformer, in the Megatron pattern.

Runs right after `fuse_patterns`, where q/k/v and gate/up are still separate `linear`s, attention
is kiln's `attention` op with the head counts explicit in the reshapes around it, and nothing is
fused or quantized yet: the later passes (fuse_projections, quantize_weights, insert_kv_cache,
fusion) then work on the per-rank graph unchanged, so a rank's KV cache holds only its heads.

Blocks found from the graph's structure (no per-architecture code):

* attention: every `attention` node. q, k and v each come from a `linear` through head-local
  ops (reshape, permute, rotary, clone, cast); the output reaches a `linear` (o_proj) through
  permute/reshape. q/k/v become column-parallel (weight rows, bias split by heads), o_proj
  row-parallel (weight columns split, then `all_reduce`, then the bias once).
  Fused qkv (GPT-2's `c_attn`): q, k and v are the pieces of one `split` (last dim) of one
  linear; the rank keeps the union of its q-, k- and v-head rows, in split order, and the split
  takes the per-rank sizes. An o_proj left as `addmm` over flattened tokens (GPT-2's attention
  `c_proj`) becomes a row-parallel `linear` over a transposing view of the weight shard.
  GQA: with kv_heads divisible by the rank count the kv heads are split too; with fewer kv heads
  than ranks (ranks divisible by kv_heads) each rank keeps the one kv head its query heads use
  (replicated across tp / kv_heads ranks).
* MLP: a `linear` (down) whose input is an elementwise expression (silu * mul, gelu, ...) over
  linears (gate, up) of one shared input: gate/up column-parallel, down row-parallel.
* lm_head: a `linear` whose result is a graph output: vocab-parallel (weight rows split), then
  `all_gather` on the last dim, so every rank returns the full logits.

Weights may be constants or a transposing `permute` of one (fuse_patterns' view of a Conv1D
weight): the constant is sliced along the dim the permute maps to the split one. A constant read
elsewhere too (an lm_head tied to the embedding) is sliced into a copy; the original stays whole,
so a tied model holds the table plus 1/world of it per rank.

The embeddings (token and learned positions) stay replicated (a lookup costs no FLOPs;
vocab-parallel embedding would trade memory for one more all_reduce per step). Norms and residual
adds run replicated on every rank.

Per layer that is two all_reduces of [tokens, hidden]; the pass counts them and their payload
per token in its statistics (`all_reduce_bytes_per_token`, `all_gather_bytes_per_token`).

    %q = linear(%x, %wq) : f32[B, S, 64]              %q = linear(%x, %wq) : f32[B, S, 32]
    %h = reshape(%q) {shape=[B, S, 4, 16]}      ->    %h = reshape(%q) {shape=[B, S, 2, 16]}
    ...                                               ...
    %o = linear(%a, %wo) : f32[B, S, 64]              %p = linear(%a, %wo) : f32[B, S, 64]
                                                      %o = all_reduce(%p) {group_size=2}
"""

from __future__ import annotations

from dataclasses import dataclass, field
from fractions import Fraction

import sympy
import torch

from ..errors import TensorParallelError
from ..ir import Effect, Graph, Node, TensorType, Value
from ..ir.opset._infer import same_dim
from ..ir.verifier import _types_equal
from .manager import PassContext, graph_pass
from .rewrite import Rebuilder

_HEAD_LOCAL = {"reshape", "permute", "rotary", "clone", "cast"}  # carry input 0, per head
_PASS_THROUGH = {"reshape", "permute", "clone", "cast"}  # attention output -> o_proj


@dataclass
class _Layout:
    """What to do with each node: column / row / vocab-parallel linears and the nodes between."""

    columns: dict[Node, list[tuple[int, int]]] = field(default_factory=dict)  # weight row ranges kept
    rows: set[Node] = field(default_factory=set)
    splits: dict[Node, tuple[int, ...]] = field(default_factory=dict)  # fused qkv split -> per-rank sizes
    interior: set[Node] = field(default_factory=set)
    vocab: set[Node] = field(default_factory=set)

    def claimed(self, n: Node) -> bool:
        return n in self.columns or n in self.rows or n in self.interior or n in self.vocab


@graph_pass("split attention heads, MLP and lm_head across tensor-parallel ranks (Megatron), with all_reduce / all_gather")
def shard_tensor_parallel(g: Graph, ctx: PassContext) -> Graph:
    """This rank's graph when `CompileOptions(tensor_parallel=(rank, world_size))` is set.

    Guarantees: run on every rank, the graphs have the same structure (the same collectives in
    the same order) and each returns exactly the single-process outputs (up to float summation
    order); raises TensorParallelError naming the node when the model does not fit the pattern.
    """
    if ctx.options.tensor_parallel is None:
        return g
    rank, world = ctx.options.tensor_parallel
    return tensor_parallel_graph(g, rank, world, ctx)


def tensor_parallel_graph(g: Graph, rank: int, world: int, ctx: PassContext | None = None) -> Graph:
    """The per-rank graph (the same object when world == 1); statistics go to `ctx` if given."""
    if not 0 <= rank < world:
        raise ValueError(f"rank {rank} out of range for world size {world}")
    if world == 1:
        return g
    layout = find_layout(g, rank, world)
    if not (layout.columns or layout.vocab):
        raise TensorParallelError("found no attention, MLP or lm_head linear to split; the model does not fit the Megatron pattern")
    return _Sharder(g, layout, rank, world, ctx).run()


# --- finding the blocks ----------------------------------------------------------------------


def _where(n: Node) -> str:
    src = f" ({n.source.module})" if n.source is not None and n.source.module else ""
    return f"{n.op.name}{src}"


def _weight_and_biases(n: Node) -> tuple[Value, list[Value]]:
    """A linear's weight ([out, in]) and bias, or an addmm's weight ([in, out]) and bias."""
    return (n.inputs[2], [n.inputs[0]]) if n.op.name == "addmm" else (n.inputs[1], list(n.inputs[2:]))


def _weight_const(n: Node, uses: dict) -> tuple[Value, tuple[int, int]] | None:
    """The constant behind n's weight and, per dim of the [out, in] weight, the constant's dim:
    the weight itself, a 2-dim transposing `permute` of it that only n reads, or an addmm's."""
    w, _ = _weight_and_biases(n)
    perm = (1, 0) if n.op.name == "addmm" else (0, 1)
    if w.kind == "node" and w.node.op.name == "permute" and n.op.name == "linear" and len(uses.get(w, [])) == 1:
        perm, w = tuple(w.node.attrs["dims"]), w.node.inputs[0]
    return (w, perm) if w.kind == "const" and w.type.rank == 2 else None


def _const_weight(g: Graph, n: Node, written: set[Value], uses: dict) -> bool:
    found = _weight_const(n, uses)
    if n.op.name == "addmm" and (n.attrs["beta"] != 1 or n.attrs["alpha"] != 1):
        return False
    _, biases = _weight_and_biases(n)
    return found is not None and found[0] not in written and g.constant_data.get(found[0].name) is not None and all(
        b.kind == "const" and b not in written for b in biases)


def find_layout(g: Graph, rank: int, world: int) -> _Layout:
    """Which linears are column / row / vocab-parallel and which nodes carry sharded values."""
    uses = g.uses()
    written = {v for n in g.nodes if n.op.effect is Effect.WRITE for v in n.inputs}
    layout = _Layout()
    for n in g.nodes:
        if n.op.name == "attention":
            _attention_block(g, n, uses, written, rank, world, layout)
    for n in g.nodes:
        if n.op.name == "linear" and not layout.claimed(n) and _const_weight(g, n, written, uses):
            _mlp_block(g, n, uses, written, rank, world, layout)
    outputs = set(g.outputs)
    for n in g.nodes:
        if n.op.name == "linear" and not layout.claimed(n) and n.output in outputs and _const_weight(g, n, written, uses):
            if isinstance(n.output.type.shape[-1], int) and n.output.type.shape[-1] % world == 0:
                layout.vocab.add(n)
    return layout


def _linear_behind(g: Graph, v: Value, written: set[Value], uses: dict, what: str, at: Node) -> tuple[Node, list[Node], int | None]:
    """The linear v comes from, the head-local ops between, and which piece of a last-dim
    `split` of that linear v is (None when there is no split: a separate projection)."""
    chain: list[Node] = []
    while v.kind == "node" and v.node.op.name in _HEAD_LOCAL:
        chain.append(v.node)
        v = v.node.inputs[0]
    piece = None
    if v.kind == "node" and v.node.op.name == "split" and v.node.attrs["dim"] in (-1, v.type.rank - 1):
        chain.append(v.node)
        piece, v = v.node.outputs.index(v), v.node.inputs[0]
    if v.kind != "node" or v.node.op.name != "linear" or not _const_weight(g, v.node, written, uses):
        got = v.node.op.name if v.kind == "node" else f"{v.kind} {v.name}"
        raise TensorParallelError(f"its {what} does not come from a linear with constant weights through head-local ops (found {got})", _where(at))
    return v.node, chain, piece


def _attention_block(g: Graph, a: Node, uses: dict, written: set[Value], rank: int, world: int, layout: _Layout) -> None:
    q, k = a.inputs[0].type, a.inputs[1].type
    if q.rank < 3:
        raise TensorParallelError(f"needs q as (..., heads, seq, dim), got {q}", _where(a))
    heads, kv_heads, head_dim = q.shape[-3], k.shape[-3], q.shape[-1]
    if not all(isinstance(d, int) for d in (heads, kv_heads, head_dim)):
        raise TensorParallelError(f"head counts must be static, got q {q}, k {k}", _where(a))
    if heads % world:
        raise TensorParallelError(f"{heads} attention heads are not divisible by {world} ranks", _where(a))
    local = heads // world
    if kv_heads % world == 0:
        kv0, kv_local = rank * (kv_heads // world), kv_heads // world
    elif world % kv_heads == 0:  # fewer kv heads than ranks: keep the one our query heads share
        kv0, kv_local = rank * local // (heads // kv_heads), 1
    else:
        raise TensorParallelError(f"{kv_heads} kv heads neither divide nor are divisible by {world} ranks", _where(a))
    lin_q, chain_q, piece_q = _linear_behind(g, a.inputs[0], written, uses, "q", a)
    lin_k, chain_k, piece_k = _linear_behind(g, a.inputs[1], written, uses, "k", a)
    lin_v, chain_v, piece_v = _linear_behind(g, a.inputs[2], written, uses, "v", a)
    v_dim = a.inputs[2].type.shape[-1]
    keep = {  # rows of each projection's output this rank keeps, and their count
        "q": (rank * local * head_dim, (rank + 1) * local * head_dim, heads * head_dim),
        "k": (kv0 * head_dim, (kv0 + kv_local) * head_dim, kv_heads * head_dim),
        "v": (kv0 * v_dim, (kv0 + kv_local) * v_dim, kv_heads * v_dim),
    }
    u, tail = _output_projection(g, a, uses, written)
    for lin in (lin_q, lin_k, lin_v, u):
        if layout.claimed(lin):
            raise TensorParallelError("a projection feeds two attention blocks", _where(lin))
    pieces = {"q": piece_q, "k": piece_k, "v": piece_v}
    if len({lin_q, lin_k, lin_v}) == 3 and set(pieces.values()) == {None}:
        for lin, name in ((lin_q, "q"), (lin_k, "k"), (lin_v, "v")):
            layout.columns[lin] = [keep[name][:2]]
    elif len({lin_q, lin_k, lin_v}) == 1 and None not in pieces.values() and chain_q[-1] is chain_k[-1] is chain_v[-1]:
        split = chain_q[-1]
        layout.columns[lin_q], layout.splits[split] = _fused_qkv(split, pieces, keep, a)
    else:
        raise TensorParallelError("q, k and v must come from three linears or from one split of one linear", _where(a))
    layout.rows.add(u)
    layout.interior.update([*chain_q, *chain_k, *chain_v, a, *tail])
    _check_contained(g, [lin_q, lin_k, lin_v, *chain_q, *chain_k, *chain_v, a, *tail], u, uses)


def _projected_input(n: Node) -> Value:
    return n.inputs[1] if n.op.name == "addmm" else n.inputs[0]  # addmm(bias, x, W)


def _output_projection(g: Graph, a: Node, uses: dict, written: set[Value]) -> tuple[Node, list[Node]]:
    """The o_proj (a linear, or an addmm over flattened tokens) a's output reaches, and the
    reshapes / permutes on the way."""
    tail, v = [], a.output
    while True:
        users = uses.get(v, [])
        if len(users) != 1 or v in g.outputs:
            raise TensorParallelError("its output must reach one output projection (linear) through reshape/permute only", _where(a))
        (u,) = users
        if u.op.name in ("linear", "addmm") and _projected_input(u) is v and _const_weight(g, u, written, uses):
            return u, tail
        if u.op.name not in _PASS_THROUGH:
            raise TensorParallelError(f"its output reaches {_where(u)} before an output projection", _where(a))
        tail.append(u)
        v = u.output


def _fused_qkv(split: Node, pieces: dict[str, int], keep: dict, a: Node) -> tuple[list[tuple[int, int]], tuple[int, ...]]:
    """The row ranges of a fused qkv linear this rank keeps, and the split's per-rank sizes. The
    kept rows are the union of the rank's q, k and v rows, in split order, so the per-rank split
    cuts them into the same pieces."""
    sizes = split.attrs["sizes"]
    if len(sizes) != 3 or sorted(pieces.values()) != [0, 1, 2]:
        raise TensorParallelError(f"q, k and v must be the three pieces of one split, got {len(sizes)} pieces", _where(a))
    order = sorted(pieces, key=pieces.get)
    ranges, new_sizes, offset = [], [], 0
    for name, size in zip(order, sizes):
        start, stop, full = keep[name]
        if not same_dim(size, full):
            raise TensorParallelError(f"split piece {name} has {size} features, not the {full} its heads need", _where(a))
        ranges.append((offset + start, offset + stop))
        new_sizes.append(stop - start)
        offset += full
    return ranges, tuple(new_sizes)


def _mlp_block(g: Graph, down: Node, uses: dict, written: set[Value], rank: int, world: int, layout: _Layout) -> None:
    """Claim down and the gate/up linears behind it when they form an MLP; otherwise leave them."""
    inner, leaves, stack, seen = [], [], [down.inputs[0]], set()
    while stack:
        v = stack.pop()
        if v in seen:
            continue
        seen.add(v)
        n = v.node if v.kind == "node" else None
        if n is not None and n.op.name == "linear" and not layout.claimed(n) and _const_weight(g, n, written, uses):
            leaves.append(n)
        elif n is not None and n.op.category == "elementwise" and n.op.effect is Effect.PURE and len(n.outputs) == 1:
            inner.append(n)
            stack.extend(x for x in n.inputs if x.type.rank == v.type.rank and not same_dim(x.type.shape[-1], 1))
        else:
            return  # not an MLP: down stays replicated
    if not inner or not leaves or len({lin.inputs[0] for lin in leaves}) != 1:
        return
    features = down.inputs[0].type.shape[-1]
    if not isinstance(features, int) or features % world:
        raise TensorParallelError(f"MLP width {features} is not divisible by {world} ranks", _where(down))
    if not _contained(g, [*leaves, *inner], down, uses):
        return
    width = features // world
    for lin in leaves:
        layout.columns[lin] = [(rank * width, (rank + 1) * width)]
    layout.rows.add(down)
    layout.interior.update(inner)


def _contained(g: Graph, nodes: list[Node], end: Node, uses: dict) -> bool:
    inside = set(nodes) | {end}
    outs = set(g.outputs)
    return all(o not in outs and all(u in inside for u in uses.get(o, [])) for n in nodes for o in n.outputs)


def _check_contained(g: Graph, nodes: list[Node], end: Node, uses: dict) -> None:
    if not _contained(g, nodes, end, uses):
        raise TensorParallelError("a value between the projections is used outside the block", _where(end))


# --- rewriting -------------------------------------------------------------------------------


class _Sharder:
    """Rebuilds the graph: sliced weights, rewritten head shapes, collectives after the blocks."""

    def __init__(self, g: Graph, layout: _Layout, rank: int, world: int, ctx: PassContext | None):
        self.g, self.layout, self.rank, self.world, self.ctx = g, layout, rank, world, ctx
        self.uses = g.uses()
        sharded = [*layout.columns, *layout.rows, *layout.vocab]
        self.weights = {n: _weight_const(n, self.uses) for n in sharded}  # -> (constant, its dim per weight dim)
        self.views = {w.node for w in (_weight_and_biases(n)[0] for n in sharded) if w.kind == "node"}  # rebuilt over the shards
        split = {self.weights[n][0].name for n in sharded} | {b.name for n in (*layout.columns, *layout.vocab) for b in _weight_and_biases(n)[1]}
        self.exclusive = {name for name in split if len(self.uses.get(g.constants[name], [])) == 1 and g.constants[name] not in g.outputs}
        self.rb = Rebuilder(g, keep_constants=[name for name in g.constants if name not in self.exclusive])
        self.dims: dict[Value, int] = {}  # old value -> its split dim (values carrying a shard)

    def count(self, key: str, n: int = 1) -> None:
        if self.ctx is not None:
            self.ctx.count(key, n)

    def run(self) -> Graph:
        for n in self.g.nodes:
            if n in self.views:
                continue
            if n in self.layout.columns:
                self._column(n, self.layout.columns[n])
            elif n in self.layout.rows:
                self._row(n)
            elif n in self.layout.vocab:
                self._vocab(n)
            elif n in self.layout.interior:
                self._interior(n)
            else:
                self.rb.copy(n)
        return self.rb.finish()

    def _slice_const(self, v: Value, dim: int, ranges: list[tuple[int, int]]) -> Value:
        full = self.g.constant_data[v.name]
        data = torch.cat([full.narrow(dim, start, stop - start) for start, stop in ranges], dim).contiguous()
        if v.name in self.exclusive:  # only this node reads it: the shard takes its name
            return self.rb.out.add_constant(v.name, data)
        return self.rb.constant(f"{v.name}.tp{self.rank}_", data)  # shared (a tied lm_head): a copy

    def _slice_weight(self, n: Node, dim: int, ranges: list[tuple[int, int]]) -> Value:
        """n's weight as a linear's [out, in] weight, `ranges` of `dim` kept: the constant sliced
        along the dim that maps there, under the same transposing view when there was one."""
        const, perm = self.weights[n]
        w = self._slice_const(const, perm[dim], ranges)
        if perm != (0, 1):
            w = self.rb.out.add_node("permute", [w], {"dims": perm}, source=n.source).output
        return w

    def _emit(self, n: Node, inputs: list[Value], attrs: dict | None = None) -> Node:
        return self.rb.out.add_node(n.op, inputs, dict(n.attrs if attrs is None else attrs), source=n.source)

    def _column(self, n: Node, ranges: list[tuple[int, int]]) -> None:
        x = self.rb.get(n.inputs[0])
        w = self._slice_weight(n, 0, ranges)
        bias = [self._slice_const(b, 0, ranges) for b in n.inputs[2:]]
        new = self._emit(n, [x, w, *bias])
        self.rb.map[n.output] = new.output
        self.dims[n.output] = n.output.type.rank - 1
        self.count("column_parallel_linears")

    def _row(self, n: Node) -> None:
        """x @ W[:, mine].T, all_reduce, + bias. An addmm (bias, x, W) becomes the same linear."""
        x_old = _projected_input(n)
        if self.dims.get(x_old) != x_old.type.rank - 1:
            raise TensorParallelError("its input is not split along its features", _where(n))
        if n.attrs.get("activation", "none") != "none":
            raise TensorParallelError("a row-parallel linear cannot apply an activation before its all_reduce", _where(n))
        x = self.rb.get(x_old)
        width, full = x.type.shape[-1], x_old.type.shape[-1]
        if width * self.world != full:
            raise TensorParallelError(f"its input holds {width} of {full} features, not 1/{self.world}", _where(n))
        w = self._slice_weight(n, 1, [(self.rank * width, (self.rank + 1) * width)])
        attrs = {} if n.op.name == "addmm" else dict(n.attrs)
        part = self.rb.out.add_node("linear", [x, w], attrs, source=n.source).output
        out = self.rb.out.call("all_reduce", part, group_size=self.world, source=n.source)
        for b in _weight_and_biases(n)[1]:  # the bias once, after the sum
            out = self.rb.out.call("add", out, self.rb.get(b), source=n.source)
        self._expect(n, out.type, n.output.type)
        self.rb.map[n.output] = out
        t = n.output.type
        self.count("row_parallel_linears")
        self.count("all_reduce")
        self.count("all_reduce_bytes_per_token", int(t.shape[-1]) * t.dtype.bits // 8)

    def _vocab(self, n: Node) -> None:
        vocab = n.output.type.shape[-1]
        part = vocab // self.world
        x = self.rb.get(n.inputs[0])
        mine = [(self.rank * part, (self.rank + 1) * part)]
        w = self._slice_weight(n, 0, mine)
        bias = [self._slice_const(b, 0, mine) for b in n.inputs[2:]]
        local = self._emit(n, [x, w, *bias]).output
        out = self.rb.out.call("all_gather", local, dim=local.type.rank - 1, group_size=self.world, source=n.source)
        self._expect(n, out.type, n.output.type)
        self.rb.map[n.output] = out
        self.count("vocab_parallel_linears")
        self.count("all_gather")
        self.count("all_gather_bytes_per_token", int(vocab) * n.output.type.dtype.bits // 8)

    def _interior(self, n: Node) -> None:
        inputs = [self.rb.get(v) for v in n.inputs]
        dims = [self.dims.get(v) for v in n.inputs]
        attrs = dict(n.attrs)
        if n.op.name == "split":  # a fused qkv: each piece keeps the rank's heads, along the same dim
            new = self._emit(n, inputs, {**attrs, "sizes": self.layout.splits[n]})
            for old, out in zip(n.outputs, new.outputs):
                self.rb.map[old] = out
                self.dims[old] = dims[0]
            return
        out_t = n.output.type
        if n.op.name == "reshape":
            d = self._reshape_dim(n, inputs[0].type)
            new_shape = list(out_t.shape)
            new_shape[d] = self._scaled(n, out_t.shape[d], inputs[0].type, n.inputs[0].type, dims[0])
            attrs["shape"] = tuple(new_shape)
        elif n.op.name == "permute":
            d = list(n.attrs["dims"]).index(dims[0])
        elif n.op.name == "attention":
            d = self._attention(n, dims, inputs, attrs)
        else:  # rotary, clone, cast, elementwise: same layout, side inputs must broadcast over the shard
            d = self._pointwise(n, dims)
        new = self._emit(n, inputs, attrs)
        self.rb.map[n.output] = new.output
        self.dims[n.output] = d

    def _scaled(self, n: Node, size: object, new_in: TensorType, old_in: TensorType, d: int) -> int:
        ratio = Fraction(int(new_in.shape[d]), int(old_in.shape[d]))
        if not isinstance(size, int) or (size * ratio).denominator != 1:
            raise TensorParallelError(f"cannot split dim {size} of {n.output.type} by {ratio}", _where(n))
        return int(size * ratio)

    def _reshape_dim(self, n: Node, new_in: TensorType) -> int:
        """The output dim that starts the group holding the input's split dim (outermost in it)."""
        d = self.dims[n.inputs[0]]
        old_in, old_out = n.inputs[0].type.shape, n.output.type.shape
        before = sympy.Mul(*old_in[:d])
        for j in range(len(old_out)):
            if old_out[j] != 1 and same_dim(sympy.Mul(*old_out[:j]), before) and isinstance(old_out[j], int):
                return j
        raise TensorParallelError(f"cannot follow the split dim {d} of {n.inputs[0].type} through this reshape", _where(n))

    def _attention(self, n: Node, dims: list, inputs: list[Value], attrs: dict) -> int:
        rank = n.inputs[0].type.rank
        if dims[:3] != [rank - 3] * 3:
            raise TensorParallelError("q, k and v must all be split along heads", _where(n))
        if len(n.inputs) > 3:
            self._side_ok(n, n.inputs[3], rank, rank - 3)
        attrs["gqa"] = inputs[0].type.shape[-3] != inputs[1].type.shape[-3]
        return rank - 3

    def _pointwise(self, n: Node, dims: list) -> int:
        out_rank = n.output.type.rank
        carried = {d + out_rank - v.type.rank for v, d in zip(n.inputs, dims) if d is not None}
        if len(carried) != 1:
            raise TensorParallelError("its inputs are split along different dims", _where(n))
        d = carried.pop()
        for v, dv in zip(n.inputs, dims):
            if dv is None:
                self._side_ok(n, v, out_rank, d)
        return d

    def _side_ok(self, n: Node, v: Value, out_rank: int, d: int) -> None:
        j = d - (out_rank - v.type.rank)
        if j >= 0 and v.type.shape[j] != 1:
            raise TensorParallelError(f"its unsplit input {v.type} does not broadcast over the split dim {d}", _where(n))

    def _expect(self, n: Node, got: TensorType, want: TensorType) -> None:
        if not _types_equal(got, want):
            raise TensorParallelError(f"the rewritten block gives {got}, not {want}", _where(n))


__all__ = ["find_layout", "shard_tensor_parallel", "tensor_parallel_graph"]
