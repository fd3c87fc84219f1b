"""Ray as the launcher of tensor-parallel workers: one actor per rank, placed by a placement group.

    kiln.LLM(model, tensor_parallel_size=4, distributed_executor_backend="ray", ray_address="auto")

Ray only places and starts the workers, as in vLLM's Ray executor: the placement group holds one
bundle per rank ({"GPU": 1} on GPUs, {"CPU": 1} on CPU; "PACK" fills one node first, "SPREAD"
spreads over nodes), rank 0 is this process on a bundle of this node, and ranks 1..N-1 are actors
that run `tp.serve_rank`. They join rank 0's torch.distributed group at this node's Ray IP, so the
collectives and the step broadcasts are those of local processes (gloo / NCCL), never Ray's.

Liveness: each actor's `run()` is one long task whose ObjectRef the driver keeps; the loop only
returns after "stop", so a ref that is ready earlier (`ray.wait(timeout=0)`, checked before every
step) means the actor failed or died, and `ray.get` on it gives the traceback or ActorDiedError.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from typing import Any

import torch

from ..errors import TensorParallelError
from .tp import serve_rank

STRATEGIES = ("PACK", "SPREAD", "STRICT_PACK", "STRICT_SPREAD")


def import_ray() -> Any:
    try:
        import ray
    except ImportError:
        raise ImportError("distributed_executor_backend='ray' needs Ray: pip install ray (or pip install 'kiln[ray]')") from None
    return ray


@contextlib.contextmanager
def _loopback_only(ray: Any) -> Iterator[None]:
    """Let a Ray runtime started now take 127.0.0.1 as its node address. Ray otherwise always binds
    a private runtime to the machine's outward IP (`_node_ip_address="127.0.0.1"` is rewritten);
    its one switch for loopback is this constant (read at import from an environment variable)."""
    try:
        import ray._private.ray_constants as constants
    except ImportError:  # a Ray without it: keep Ray's default address
        yield
        return
    before = getattr(constants, "ENABLE_RAY_CLUSTER", True)
    constants.ENABLE_RAY_CLUSTER = False
    try:
        yield
    finally:
        constants.ENABLE_RAY_CLUSTER = before


def start_local_ray(num_cpus: int, **kwargs: Any) -> None:
    """Start a private single-node Ray runtime on loopback in this process (no dashboard)."""
    ray = import_ray()
    with _loopback_only(ray):
        ray.init(address="local", num_cpus=num_cpus, include_dashboard=False, **kwargs)


class _RankActor:
    """One worker rank in a Ray actor. On GPUs Ray makes the actor's one GPU its cuda:0. Rank 0's
    bundle holds an idle one, which only reports the GPU Ray reserved for the driver."""

    def run(self, rank: int, world: int, init_method: str, device: str, spec: Any, kw: dict) -> None:
        dev = torch.device("cuda", 0) if torch.device(device).type == "cuda" else torch.device(device)
        serve_rank(rank, world, init_method, dev, spec, kw)

    def ready(self) -> bool:
        return True

    def gpu_ids(self) -> list:
        import ray

        return list(ray.get_gpu_ids())


class RayActors:
    """`WorkerLauncher` over Ray: connects to `address` ("auto", "ip:port"), reuses the runtime
    this process already started, or starts a private one on loopback; only a runtime it connected
    or started itself is shut down by `kill()`."""

    def __init__(self, device: torch.device, *, address: str | None = None, strategy: str = "PACK",
                 local_cpus: int = 1, placement_timeout: float = 120.0):
        if strategy not in STRATEGIES:
            raise ValueError(f"ray placement strategy must be one of {', '.join(STRATEGIES)}, got {strategy!r}")
        self.ray = import_ray()
        self.device, self.address, self.strategy, self.placement_timeout = device, address, strategy, placement_timeout
        self.local_cpus = local_cpus  # CPUs of a private runtime: at least one per rank, even on a smaller machine
        self.owns_ray = False
        self.pg: Any = None
        self.holder: Any = None  # the idle actor on rank 0's GPU bundle
        self.actors: list[Any] = []  # ranks 1..N-1
        self.loops: list[Any] = []  # ObjectRef of each actor's run(), same order
        self.ended: dict[int, tuple[str, str]] = {}  # rank -> (how it ended, details)

    def host(self) -> str:
        ray = self.ray
        if not ray.is_initialized():
            if self.address is None:
                start_local_ray(num_cpus=max(os.cpu_count() or 1, self.local_cpus))
            else:
                ray.init(address=self.address)
            self.owns_ray = True
        return ray.util.get_node_ip_address()

    def start(self, world: int, init_method: str, spec: Any, kw: dict) -> None:
        ray = self.ray
        from ray.util.placement_group import placement_group, placement_group_table
        from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

        gpu = self.device.type == "cuda"
        unit = "GPU" if gpu else "CPU"
        have = ray.cluster_resources().get(unit, 0)
        if have < world:
            raise TensorParallelError(f"tensor_parallel_size={world} needs {world} {unit}s in the Ray cluster, it has {have:g}")
        self.pg = placement_group([{unit: 1} for _ in range(world)], strategy=self.strategy)
        try:
            ray.get(self.pg.ready(), timeout=self.placement_timeout)
        except ray.exceptions.GetTimeoutError:
            raise TensorParallelError(f"Ray could not place {world} {{{unit!r}: 1}} bundles ({self.strategy}) in "
                                      f"{self.placement_timeout:g} s; available: {ray.available_resources()}") from None
        bundles = self._rank_bundles(placement_group_table(self.pg)["bundles_to_node_id"])
        remote = ray.remote(_RankActor)

        def on(bundle: int) -> Any:
            return remote.options(num_cpus=0 if gpu else 1, num_gpus=1 if gpu else 0,
                                  scheduling_strategy=PlacementGroupSchedulingStrategy(self.pg, placement_group_bundle_index=bundle))

        if gpu:
            self.holder = on(bundles[0]).remote()
            self._check_driver_gpu(ray.get(self.holder.gpu_ids.remote(), timeout=self.placement_timeout))
        spec_ref = ray.put(spec)  # a module is serialised once, not once per rank
        self.actors = [on(b).remote() for b in bundles[1:]]
        # an actor that cannot start (kiln not importable on its node, ...) fails here, not after
        # rank 0 has waited out the rendezvous timeout
        try:
            ray.get([a.ready.remote() for a in self.actors], timeout=self.placement_timeout)
        except Exception as e:  # noqa: BLE001 - ActorDiedError, RayActorError, GetTimeoutError
            raise TensorParallelError(f"the worker actors did not start: {e}") from e
        self.loops = [a.run.remote(r, world, init_method, str(self.device), spec_ref, kw)
                      for r, a in enumerate(self.actors, start=1)]

    def _rank_bundles(self, bundle_nodes: dict) -> list[int]:
        """Bundle index of each rank: rank 0 (this process) takes one on this node."""
        here = self.ray.get_runtime_context().get_node_id()
        order = sorted(int(b) for b in bundle_nodes)
        mine = [b for b in order if bundle_nodes.get(b, bundle_nodes.get(str(b))) == here]
        if not mine:
            raise TensorParallelError("Ray placed no bundle on the driver's node, but rank 0 runs in this process: "
                                      "run kiln.LLM on a node of the cluster that has a free CPU/GPU")
        return mine[:1] + [b for b in order if b != mine[0]]

    def _check_driver_gpu(self, ids: list) -> None:
        visible = os.environ.get("CUDA_VISIBLE_DEVICES")
        index = self.device.index or 0
        mine = visible.split(",")[index] if visible else str(index)
        if [str(i) for i in ids] != [mine]:
            raise TensorParallelError(f"Ray reserved GPU {ids} of this node for rank 0, but the model is on cuda:{index} "
                                      f"(GPU {mine}); pass device='cuda:N' for the GPU Ray reserved")

    def dead(self) -> list[tuple[int, str]]:
        ray = self.ray
        if self.loops:
            ready, _ = ray.wait(self.loops, num_returns=len(self.loops), timeout=0)
            for ref in ready:
                rank = self.loops.index(ref) + 1
                if rank not in self.ended:
                    self.ended[rank] = self._outcome(ref)
        return [(r, how) for r, (how, _) in sorted(self.ended.items())]

    def _outcome(self, ref: Any) -> tuple[str, str]:
        try:
            self.ray.get(ref, timeout=0)
        except Exception as e:  # noqa: BLE001 - RayTaskError (the worker's traceback), ActorDiedError, ...
            return type(e).__name__, str(e)
        return "its loop returned", ""

    def reports(self) -> list[tuple[int, str]]:
        self.dead()
        return [(r, detail) for r, (_, detail) in sorted(self.ended.items()) if detail]

    def join(self, timeout: float) -> None:
        if self.loops:
            self.ray.wait(self.loops, num_returns=len(self.loops), timeout=timeout)

    def kill(self) -> None:
        ray = self.ray
        if not ray.is_initialized():
            return
        for actor in self.actors + ([self.holder] if self.holder is not None else []):
            with contextlib.suppress(Exception):
                ray.kill(actor)
        self.actors, self.loops, self.holder = [], [], None
        if self.pg is not None:
            from ray.util.placement_group import remove_placement_group

            with contextlib.suppress(Exception):
                remove_placement_group(self.pg)
            self.pg = None
        if self.owns_ray:
            ray.shutdown()
            self.owns_ray = False
