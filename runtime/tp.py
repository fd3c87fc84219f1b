"""Tensor- and pipeline-parallel kiln.LLM: rank 0 drives (this process), ranks 1..N-1 are workers.

    llm = kiln.LLM("path/or/builtin", tensor_parallel_size=2)   # starts one worker process
    llm = kiln.LLM(..., tensor_parallel_size=4, distributed_executor_backend="ray")  # Ray actors
    llm = kiln.LLM(..., pipeline_parallel_size=2)   # rank r runs pipeline stage r

Every rank compiles the model with `CompileOptions(tensor_parallel=(rank, N))` (the Megatron
sharding pass: each rank holds 1/N of the heads, MLP columns and KV cache, and the graph carries
its all-reduce/all-gather ops) and owns a `PagedModelRunner` over its shard. torch.distributed
carries everything between ranks (gloo on CPU, NCCL on GPUs): the model's collectives, and each
step's inputs, which rank 0 sends before it runs the step itself (`runtime.step_channel`: through
shared memory to the workers it spawned on a GPU machine, else broadcast on a gloo group beside
NCCL; host to host either way, so no step message waits on a GPU stream).
The scheduler, the allocator and sampling live on rank 0 only: workers just execute steps, so
their block tables are the driver's and no rank ever decides anything on its own.

Pipeline mode (`mode="pipeline"`) uses the same group, launchers and step broadcast: rank r
compiles with `CompileOptions(pipeline_parallel=(r, N))` and holds stage r's layers and their KV
caches only; every stage needs each step's token ids and metadata, so every rank gets the
broadcast. The driver is stage 0 (the pass numbers stages by rank); the hidden states go forward
through the send/recv ops in the stage plans, and the last stage sends its logits rows
(float32 [rows, vocab], rows known to rank 0 from the step) back to rank 0 with `dist.send`.
Micro-batches in flight: rank 0 cuts each step's chunks into up to m contiguous groups balanced by
tokens (`split_chunks`; m = `pipeline_microbatches`, by default one per stage) and broadcasts them
in one message; every rank runs its stage plan once per group, in order, so stage s works on group
i while stage s + 1 works on group i - 1 (GPipe fill/drain within the step). The last stage sends
each group's logits as soon as it has them; rank 0 posts that group's `dist.irecv` right after its
own stage-0 work for the group (before the next group's), waits for all at the end and
concatenates them in chunk order, so the last stage never waits on rank 0 while rank 0 computes,
and on NCCL the receives sit in the same stream order as the last stage's sends (posting them all
before the first send would put a receive ahead of the send it depends on in the pair's stream).

Tensor x pipeline (`mode="hybrid"`, `tensor_size=T`, world = T * P): rank r is tensor rank r % T of
stage r // T and compiles with `CompileOptions(tensor_parallel=(r % T, T), pipeline_parallel=(r // T,
P))`. Every rank creates the P per-stage groups of T ranks (same order everywhere); its own stage's
is registered for the all-reduces / all-gathers, and stage k's send/recv peer is rank k * T + r % T
(`runtime.distributed.setup_parallel_groups`). The driver is stage 0's tensor rank 0; tensor rank 0
of the last stage (rank (P - 1) * T) sends the logits rows to it.

A `WorkerLauncher` only starts the workers and says whether they are alive: `LocalProcesses`
spawns them on this machine ("mp"), `tp_ray.RayActors` places one Ray actor per rank with a
placement group ("ray", several machines). Both run `serve_rank`, and the process group and the
step broadcasts are the same whichever launched them.

Failure handling (nothing hangs): the process group has a timeout, rank 0 asks the launcher
whether every worker is alive before each step, and a worker that raises reports its traceback
(through a queue, or through its Ray task) before it exits; the driver then raises
`TensorParallelError` (`PipelineParallelError` in pipeline mode, `TensorPipelineParallelError`,
a subclass of both, in hybrid mode) naming the rank.
"""

from __future__ import annotations

import dataclasses
import datetime
import inspect
import sys
import threading
import time
import traceback
import urllib.parse
from typing import Any, Callable, Protocol

import torch
import torch.distributed as dist

from .. import debug
from ..errors import KilnError, PipelineParallelError, TensorParallelError, TensorPipelineParallelError
from ..ir.opset import collective
from ..options import CompileOptions
from .comm import setup_all_reduce
from .distributed import free_port, parallel_layout, setup_parallel_groups
from .step_channel import GlooChannel, SharedMemoryChannel

DEFAULT_TIMEOUT_S = 120.0


def _backend(device: torch.device) -> str:
    return "nccl" if device.type == "cuda" else "gloo"


def _join_group(device: torch.device, init_method: str, rank: int, world: int, timeout: float,
                dead: Callable[[], str | None] | None = None) -> None:
    """Join the default group: NCCL on GPUs, created eagerly for this rank's device (`device_id`),
    so no communicator is ever set up lazily inside a CUDA-graph capture; gloo on CPU.

    The rendezvous is a TCPStore at `init_method` (tcp://host:port) that rank 0 serves. Each
    worker marks itself joined in it before the group forms, and rank 0 polls those marks while
    asking `dead()` whether a worker has stopped: one that dies while starting (an import error,
    a main module without the `if __name__ == "__main__":` guard) fails rank 0 at once with the
    worker's report, instead of after the whole timeout waiting for a client that never comes."""
    url = urllib.parse.urlparse(init_method)
    if url.scheme != "tcp" or url.hostname is None or url.port is None:
        raise ValueError(f"init_method must be tcp://host:port, got {init_method!r}")
    wait = datetime.timedelta(seconds=timeout)
    store = dist.TCPStore(url.hostname, url.port, world, is_master=rank == 0, timeout=wait, wait_for_workers=False)
    if rank == 0:
        _wait_for_workers(store, world, timeout, dead)
    else:
        store.set(f"kiln/joined/{rank}", "1")
    kwargs: dict[str, Any] = {}
    if device.type == "cuda" and "device_id" in inspect.signature(dist.init_process_group).parameters:
        kwargs["device_id"] = device
    # the prefix init_process_group gives a store it made itself from a URL
    dist.init_process_group(_backend(device), store=dist.PrefixStore("default_pg", store), rank=rank,
                            world_size=world, timeout=wait, **kwargs)


def _wait_for_workers(store: Any, world: int, timeout: float, dead: Callable[[], str | None] | None) -> None:
    keys = [f"kiln/joined/{r}" for r in range(1, world)]
    deadline = time.monotonic() + timeout
    pause = 0.005
    while not store.check(keys):
        why = dead() if dead is not None else None
        if why:
            raise RuntimeError(f"{why} before joining the group")
        if time.monotonic() > deadline:
            late = [r for r, k in enumerate(keys, 1) if not store.check([k])]
            raise TimeoutError(f"worker rank(s) {', '.join(map(str, late))} did not join within {timeout:g} s")
        time.sleep(pause)
        pause = min(pause * 2, 0.1)


def _control_group(device: torch.device, timeout: float) -> Any:
    """The group step messages travel on: the default group on CPU (gloo); on GPUs a gloo group
    beside NCCL, so a step broadcast is host-to-host and never queues behind, or syncs with, the
    GPU streams the collectives of the model run on. Every rank calls this right after joining."""
    if device.type != "cuda":
        return None
    return dist.new_group(backend="gloo", timeout=datetime.timedelta(seconds=timeout))


def _destroy_group(timeout: float) -> None:
    """`destroy_process_group`, bounded: a teardown that waits on a peer that is gone is given up
    after `timeout` seconds (the group is then aborted where torch can, and left to process exit)."""
    done = threading.Event()

    def destroy() -> None:
        try:
            dist.destroy_process_group()
        except Exception:  # noqa: BLE001 - best effort
            pass
        done.set()

    threading.Thread(target=destroy, daemon=True, name="kiln-destroy-group").start()
    if not done.wait(timeout):
        abort = getattr(dist.distributed_c10d, "_abort_process_group", None)
        if abort is not None:
            try:
                abort()
            except Exception:  # noqa: BLE001
                pass


def _rank_device(device: torch.device, rank: int) -> torch.device:
    return torch.device("cuda", rank) if device.type == "cuda" else device


MODES = ("tensor", "pipeline", "hybrid")


def _sizes(world: int, mode: str, tensor_size: int | None) -> tuple[int, int]:
    """(T, P): tensor ranks per stage and stages of a `world`-rank group in `mode`."""
    if mode == "tensor":
        return world, 1
    if mode == "pipeline":
        return 1, world
    return int(tensor_size or 0), world // int(tensor_size or 1)


def _rank_options(options: CompileOptions | None, rank: int, world: int, mode: str = "tensor",
                  tensor_size: int | None = None) -> CompileOptions:
    """Rank `rank`'s compile options: its shard (tensor), its stage (pipeline), or both (hybrid:
    stage rank // T, tensor rank rank % T)."""
    tp, pp = parallel_layout(rank, *_sizes(world, mode, tensor_size))
    fields = {"tensor": {"tensor_parallel": tp}, "pipeline": {"pipeline_parallel": pp}}.get(
        mode, {"tensor_parallel": tp, "pipeline_parallel": pp})
    return dataclasses.replace(options or CompileOptions(), **fields)


def _logits_rank(world: int, mode: str, tensor_size: int | None = None) -> int:
    """The rank that sends each step's logits rows to rank 0 (pipeline modes): tensor rank 0 of
    the last stage (rank (P - 1) * T)."""
    t, p = _sizes(world, mode, tensor_size)
    return (p - 1) * t


def _setup_groups(world: int, mode: str, tensor_size: int | None, device: torch.device, options: CompileOptions | None,
                  timeout: float) -> None:
    """After joining (and creating the control group), every rank alike: the per-stage tensor
    groups and stage ranks (hybrid), then the all-reduce hook (tensor and hybrid)."""
    if mode == "hybrid":
        setup_parallel_groups(*_sizes(world, mode, tensor_size), timeout_s=timeout)
    if mode != "pipeline":
        setup_all_reduce((options or CompileOptions()).all_reduce, device)


def _error(mode: str) -> type[KilnError]:
    return {"tensor": TensorParallelError, "pipeline": PipelineParallelError}.get(mode, TensorPipelineParallelError)


def serve_rank(rank: int, world: int, init_method: str, device: torch.device, spec: Any, kw: dict) -> None:
    """A worker's life: join the group, build the same runner as rank 0 over its shard (or
    pipeline stage), execute the steps rank 0 broadcasts until it says stop; the last pipeline
    stage sends each step's logits to rank 0. Raises on any failure (the launcher reports it)."""
    from .model_runner import PagedModelRunner

    debug.arm_hang_dump()
    if device.type == "cuda":
        torch.cuda.set_device(device)
    _join_group(device, init_method, rank, world, kw["timeout"])
    clean = False
    runner: Any = None
    try:
        control = _control_group(device, kw["timeout"])
        channel = _worker_channel(kw, control, world, rank)
        mode, tensor_size = kw.get("mode", "tensor"), kw.get("tensor_size")
        _setup_groups(world, mode, tensor_size, device, kw["options"], kw["timeout"])
        sends_logits = mode != "tensor" and rank == _logits_rank(world, mode, tensor_size)
        module = _load(spec, kw, device)

        def blocks(_cfg: Any) -> int:  # rank 0 sizes the pool; every rank takes its number
            msg = _next_message(channel)
            if msg[0] != "blocks":
                raise RuntimeError(f"expected rank 0's pool size, got a {msg[0]!r} message")
            return int(msg[1])

        with torch.no_grad():
            runner = PagedModelRunner(module, block_size=kw["block_size"], device=device, num_blocks=blocks,
                                      options=_rank_options(kw["options"], rank, world, mode, tensor_size),
                                      max_model_len=kw["max_model_len"])
        times: list[tuple[int, float, float]] = []  # (step tokens, waited, ran) per message (KILN_STEP_TIMES)
        while True:
            t0 = time.perf_counter()
            msg = _next_message(channel)
            t1 = time.perf_counter()
            if msg[0] == "stop":
                clean = True
                break
            if msg[0] == "copy":
                runner.copy_blocks(msg[1])
            elif msg[0] == "exec":  # tensor mode: the whole step
                runner.execute(msg[1])
            else:  # "groups" (pipeline modes): the step's micro-batches, in order
                for chunks in msg[1]:
                    logits = runner.execute(chunks)
                    if logits is not None and sends_logits and logits.shape[0]:
                        dist.send(logits.contiguous(), 0)  # this group's rows, for rank 0's sampler
            if debug.STEP_TIMES and msg[0] == "exec":
                times.append((sum(len(c.tokens) for c in msg[1]), t1 - t0, time.perf_counter() - t1))
        if times:
            _print_step_times(rank, times)
    finally:
        if runner is not None:
            runner.release_graphs()  # a live graph holding NCCL calls blocks the group's teardown
        # a clean stop destroys the group together with rank 0 (NCCL's teardown is collective);
        # after a failure the process ends (or its launcher kills it) without waiting for peers
        _destroy_group(timeout=30 if clean else 5)
        collective.reset_groups()


def _next_message(channel: Any) -> tuple:
    """The next step message, past rank 0's keep-alive no-ops (`TPGroup._keepalive`: they may come
    at any time the driver is not in a step, the pool-size exchange at start-up included)."""
    while True:
        msg = channel.recv()
        if msg[0] != "noop":
            return msg


def _worker_channel(kw: dict, control: Any, world: int, rank: int) -> GlooChannel | SharedMemoryChannel:
    """The channel rank 0 chose (`TPGroup`): the shared buffer it handed over at spawn, else gloo."""
    gloo = GlooChannel(control)
    buffer = kw.get("step_buffer")
    return gloo if buffer is None else SharedMemoryChannel(buffer, world, rank, fallback=gloo)


def _print_step_times(rank: int, times: list[tuple[int, float, float]]) -> None:
    """KILN_STEP_TIMES: the median host time of this worker's steps, by step size, waiting for rank
    0's message (rank 0's previous step, sampling, scheduling, the broadcast) and running the step."""
    import statistics

    sizes = sorted({n for n, _, _ in times})
    for lo, hi in ((1, 8), (9, 1 << 30)):
        picked = [(w, r) for n, w, r in times if lo <= n <= hi]
        if picked:
            print(f"kiln rank {rank}: {len(picked)} steps of {lo}-{min(hi, sizes[-1])} tokens; median host time "
                  f"{statistics.median(w for w, _ in picked) * 1e6:.0f} us waiting for the step message, "
                  f"{statistics.median(r for _, r in picked) * 1e6:.0f} us running the step", file=sys.stderr, flush=True)


def _worker_main(rank: int, world: int, init_method: str, spec: Any, kw: dict, errors: Any) -> None:
    """A spawned worker process: `serve_rank`, with its traceback sent to the driver on failure."""
    try:
        serve_rank(rank, world, init_method, _rank_device(torch.device(kw["device"]), rank), spec, kw)
    except BaseException:  # report, then leave: the driver raises with this text
        errors.put((rank, traceback.format_exc()))
        raise


def _load(spec: Any, kw: dict, device: torch.device) -> torch.nn.Module:
    if isinstance(spec, torch.nn.Module):
        return spec.eval().to(device)
    from .loader import load_model

    return load_model(spec, dtype=kw["dtype"], device=device, allow_pickle=kw["allow_pickle"]).model


class WorkerLauncher(Protocol):
    """Starts ranks 1..N-1 (each runs `serve_rank`) and watches them. It never carries data: the
    process group does."""

    def host(self) -> str:
        """The address rank 0's rendezvous listens on, reachable by every worker."""

    def start(self, world: int, init_method: str, spec: Any, kw: dict) -> None: ...

    def dead(self) -> list[tuple[int, str]]:
        """(rank, how it ended) of every worker that is no longer running; cheap, called per step."""

    def reports(self) -> list[tuple[int, str]]:
        """(rank, traceback) of workers that failed, as far as they could tell."""

    def join(self, timeout: float) -> None:
        """Wait up to `timeout` seconds for the workers to leave after "stop"."""

    def kill(self) -> None:
        """End whatever is still running and release its resources; idempotent."""


class LocalProcesses:
    """Workers as processes on this machine (torch.multiprocessing, spawn), rank r on cuda:r."""

    def __init__(self, device: torch.device):
        self.device = device
        self.procs: list[Any] = []
        self.errors: Any = None

    def host(self) -> str:
        return "127.0.0.1"

    def start(self, world: int, init_method: str, spec: Any, kw: dict) -> None:
        if self.device.type == "cuda" and torch.cuda.device_count() < world:
            mode = kw.get("mode", "tensor")
            what = f"{mode}_parallel_size={world}" if mode != "hybrid" else f"tensor x pipeline parallel ({world} ranks)"
            raise _error(mode)(f"{what} needs {world} GPUs, this machine has {torch.cuda.device_count()}")
        ctx = torch.multiprocessing.get_context("spawn")
        self.errors = ctx.Queue()
        self.procs = [ctx.Process(target=_worker_main, args=(r, world, init_method, spec, kw, self.errors), daemon=True)
                      for r in range(1, world)]
        for p in self.procs:
            p.start()

    def dead(self) -> list[tuple[int, str]]:
        return [(i + 1, f"exit code {p.exitcode}") for i, p in enumerate(self.procs) if not p.is_alive()]

    def reports(self) -> list[tuple[int, str]]:
        out = []
        while self.errors is not None:
            try:
                out.append(self.errors.get(timeout=0.5))
            except Exception:  # noqa: BLE001 - queue empty
                break
        return out

    def join(self, timeout: float) -> None:
        for p in self.procs:
            p.join(timeout=timeout)

    def kill(self) -> None:
        for p in self.procs:
            if p.is_alive():
                p.kill()
                p.join(timeout=5)


def check_microbatches(value: Any) -> int | None:
    """`pipeline_microbatches`, checked: None (automatic) or an int >= 1."""
    if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value < 1):
        raise ValueError(f"pipeline_microbatches must be None (automatic) or an int >= 1, got {value!r}")
    return value


def split_chunks(chunks: list, groups: int) -> list[list]:
    """A pipeline step's micro-batches: `chunks` cut into min(`groups`, len(chunks)) contiguous,
    non-empty groups (a chunk is never split; concatenating the groups gives `chunks` back, so the
    logits rows come back in the step's order) whose largest token count is as small as it can be.

    The cap is the least "largest group" that a greedy left-to-right packing fits into `groups`
    groups (binary search); when the packing needs fewer groups, the largest splittable group is
    cut at its most even point until there are `groups`: every stage then has that many pieces to
    overlap, and splitting never raises the largest group."""
    n = len(chunks)
    k = min(groups, n)
    if k <= 1:
        return [list(chunks)] if chunks else []
    sizes = [max(1, len(c.tokens)) for c in chunks]
    prefix = [0]
    for size in sizes:
        prefix.append(prefix[-1] + size)

    def tokens(a: int, b: int) -> int:  # tokens of chunks[a:b], O(1): this runs every pipeline step
        return prefix[b] - prefix[a]

    def pack(cap: int) -> list[tuple[int, int]]:  # [lo, hi) index ranges, greedy left to right
        out, lo, total = [], 0, 0
        for i, size in enumerate(sizes):
            if i > lo and total + size > cap:
                out.append((lo, i))
                lo, total = i, 0
            total += size
        return out + [(lo, n)]

    lo, hi = max(sizes), prefix[-1]
    while lo < hi:
        mid = (lo + hi) // 2
        if len(pack(mid)) <= k:
            hi = mid
        else:
            lo = mid + 1
    ranges = pack(lo)
    while len(ranges) < k:
        j = max((j for j, (a, b) in enumerate(ranges) if b - a > 1), key=lambda j: tokens(*ranges[j]))
        a, b = ranges[j]
        cut = min(range(a + 1, b), key=lambda c: max(tokens(a, c), tokens(c, b)))
        ranges[j:j + 1] = [(a, cut), (cut, b)]
    return [list(chunks[a:b]) for a, b in ranges]


class TPRunner:
    """Rank 0's runner for the engine: broadcasts each step (and copy-on-write copies) to the
    workers, then runs it on its own shard (or stage 0 once per micro-batch group, receiving each
    group's logits from the last stage). Same interface as `PagedModelRunner`."""

    def __init__(self, local: Any, group: "TPGroup", microbatches: int | None = None):
        """`microbatches` (pipeline modes): the most groups a step is split into (None: one per
        stage; 1: the whole step at once, stages taking turns)."""
        self.local, self.group = local, group
        self.microbatches = check_microbatches(microbatches)

    def __getattr__(self, name: str) -> Any:  # info, num_blocks, block_size, device, run, pool ...
        return getattr(self.local, name)

    def execute(self, chunks: list) -> torch.Tensor:
        with self.group.busy:  # no keep-alive message while a step's collectives are in flight
            return self._execute(chunks)

    def _execute(self, chunks: list) -> torch.Tensor:
        if self.group.mode == "tensor":
            self.group.send(("exec", chunks))
            return self.local.execute(chunks)
        groups = split_chunks(chunks, self.microbatches or self.group.stages)
        self.group.send(("groups", groups))
        vocab = self.local.info.vocab_size
        pending: list[tuple[torch.Tensor, Any]] = []
        try:
            for group in groups:
                self.local.execute(group)  # stage 0: sends this group's hidden states on, returns nothing
                rows = sum(c.want_logits for c in group)
                if rows:  # posted now, before stage 0 runs the next group: the last stage never waits on us
                    buf = torch.empty((rows, vocab), dtype=torch.float32, device=self.local.device)
                    pending.append((buf, dist.irecv(buf, self.group.logits_rank)))  # the last stage's tensor rank 0
            for _, work in pending:
                work.wait()
        except RuntimeError as e:  # torch.distributed's errors: a stage died or timed out
            raise self.group._failure(f"pipeline step failed: {e}") from e
        if len(pending) == 1:
            return pending[0][0]
        if not pending:
            return torch.empty((0, vocab), dtype=torch.float32, device=self.local.device)
        return torch.cat([buf for buf, _ in pending])  # groups are contiguous: the step's chunk order

    def copy_blocks(self, copies: list) -> None:
        with self.group.busy:
            if copies:
                self.group.send(("copy", copies))
            self.local.copy_blocks(copies)


class TPGroup:
    """The workers (started by a `WorkerLauncher`, local processes by default) and rank 0's
    membership of the process group; `mode` "tensor" (every rank a shard), "pipeline" (rank r
    runs stage r) or "hybrid" (`tensor_size` T ranks per stage: rank r holds tensor shard r % T
    of stage r // T; world = T * P)."""

    def __init__(self, world: int, spec: Any, *, device: torch.device, dtype: Any, block_size: int, max_model_len: int,
                 options: CompileOptions | None, allow_pickle: bool, timeout: float | None = None,
                 launcher: WorkerLauncher | None = None, mode: str = "tensor", tensor_size: int | None = None):
        self.launcher = launcher if launcher is not None else LocalProcesses(device)
        self.closed = True  # until the group is formed
        timeout = DEFAULT_TIMEOUT_S if timeout is None else timeout
        if mode not in MODES:
            self.launcher.kill()
            raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
        self.mode, self.error = mode, _error(mode)
        if world < 2:
            self.launcher.kill()
            raise ValueError(f"a {mode}-parallel group needs at least 2 ranks, got {world}")
        if mode == "hybrid" and not (isinstance(tensor_size, int) and 1 < tensor_size < world and world % tensor_size == 0):
            self.launcher.kill()
            raise ValueError(f"a hybrid group needs tensor_size T > 1 dividing world into P > 1 stages, got T={tensor_size}, world={world}")
        if dist.is_initialized():
            self.launcher.kill()
            raise self.error("torch.distributed is already initialised in this process; kiln.LLM starts its own "
                             f"{mode}-parallel group (use {'tensor_parallel_size=1 and pipeline_parallel_size=1' if mode == 'hybrid' else mode + '_parallel_size=1'} inside torchrun jobs for now)")
        self.world, self.tensor_size = world, tensor_size if mode == "hybrid" else None
        self.logits_rank = _logits_rank(world, mode, self.tensor_size)
        self.stages = _sizes(world, mode, self.tensor_size)[1]
        self.device = _rank_device(device, 0)
        kw = {"device": str(device), "dtype": dtype, "block_size": block_size, "max_model_len": max_model_len,
              "options": options, "allow_pickle": allow_pickle, "timeout": timeout, "mode": mode,
              "tensor_size": self.tensor_size}
        # same-host workers this process spawns get the step messages through shared memory (a
        # decode step's latency on GPUs); others, and CPU groups unless asked, through gloo
        choice = debug.STEP_CHANNEL
        if choice not in ("auto", "shm", "gloo"):
            self.launcher.kill()
            raise ValueError(f"KILN_STEP_CHANNEL must be auto, shm or gloo, got {choice!r}")
        local = isinstance(self.launcher, LocalProcesses)
        shm = local and (choice == "shm" or (choice == "auto" and device.type == "cuda"))
        buffer = SharedMemoryChannel.create(world) if shm else None
        if buffer is not None:
            kw["step_buffer"] = buffer
        try:
            host = self.launcher.host()
            init_method = f"tcp://{f'[{host}]' if ':' in host else host}:{free_port(host)}"
            self.launcher.start(world, init_method, spec, kw)
            _join_group(self.device, init_method, 0, world, timeout, dead=self._dead_workers)
            self.control = _control_group(device, timeout)
            gloo = GlooChannel(self.control)
            self.channel: GlooChannel | SharedMemoryChannel = gloo if buffer is None else SharedMemoryChannel(
                buffer, world, 0, fallback=gloo, alive=self._dead_workers, timeout=timeout)
            _setup_groups(world, mode, self.tensor_size, self.device, options, timeout)
        except Exception as e:
            failure = e if isinstance(e, self.error) else self._failure(f"could not form the {mode}-parallel group: {e}")
            self.launcher.kill()
            collective.reset_groups()
            if failure is e:
                raise
            raise failure from e
        self.closed = False
        # A worker waiting on the gloo group for the next step gives up after the group's timeout:
        # an idle engine (a server between requests) sends a no-op message every timeout / 4.
        # Between steps only (`busy`): on CPU the step messages share the group with the model's
        # collectives, which must run in the same order on every rank.
        self.busy = threading.RLock()
        self._last_send = time.monotonic()
        self._stop_keepalive = threading.Event()
        if isinstance(self.channel, GlooChannel):
            threading.Thread(target=self._keepalive, args=(max(timeout / 4, 0.5),), daemon=True,
                             name="kiln-parallel-keepalive").start()

    def _keepalive(self, period: float) -> None:
        while not self._stop_keepalive.wait(period / 4):
            if not self.busy.acquire(blocking=False):
                continue  # a step is running: it is the workers' message
            try:
                if self.closed:
                    return
                if time.monotonic() - self._last_send >= period and not self.launcher.dead():
                    self.channel.send(("noop",))
                    self._last_send = time.monotonic()
            except Exception:  # noqa: BLE001 - the engine's next step reports the failure
                return
            finally:
                self.busy.release()

    @property
    def procs(self) -> list[Any]:
        """The worker processes of a local launch (rank r is `procs[r - 1]`)."""
        return getattr(self.launcher, "procs", [])

    def options(self, options: CompileOptions | None) -> CompileOptions:
        return _rank_options(options, 0, self.world, self.mode, self.tensor_size)

    def pool_size(self, blocks: Callable[[Any], int]) -> Callable[[Any], int]:
        """Rank 0's pool sizing, shared with the workers (every shard holds the same blocks)."""
        def shared(cfg: Any) -> int:
            n = int(blocks(cfg))
            self.send(("blocks", n), check=False)
            return n

        return shared

    def send(self, msg: Any, check: bool = True) -> None:
        if self.closed:
            raise self.error(f"the {self.mode}-parallel group was closed")
        if check:
            self.check()
        try:
            with self.busy:
                self.channel.send(msg)
                self._last_send = time.monotonic()
        except Exception as e:
            raise self._failure(f"sending the step to the workers failed: {e}") from e

    def _dead_workers(self) -> str | None:
        dead = self.launcher.dead()
        return f"worker rank(s) {', '.join(f'{r} ({how})' for r, how in dead)} stopped" if dead else None

    def check(self) -> None:
        dead = self._dead_workers()
        if dead:
            raise self._failure(dead)

    def _failure(self, what: str) -> KilnError:
        details = [f"rank {rank}:\n{tb}" for rank, tb in self.launcher.reports()]
        return self.error(what + ("\n" + "\n".join(details) if details else ""))

    def close(self) -> None:
        if getattr(self, "closed", True):
            return
        self.closed = True
        self._stop_keepalive.set()
        try:
            with self.busy:  # after a keep-alive message in flight, if any
                stopped = not self.launcher.dead()
                if stopped:
                    self.channel.send(("stop",))
        except Exception:  # noqa: BLE001 - closing anyway
            stopped = False
        if stopped and dist.is_initialized():
            # NCCL's teardown is collective: the workers destroy their group on "stop", so rank 0
            # destroys its own now, not after waiting for them to exit (that order deadlocks)
            _destroy_group(timeout=30)
        self.launcher.join(timeout=10)
        self.launcher.kill()
        if dist.is_initialized():
            _destroy_group(timeout=10)
        collective.reset_groups()
