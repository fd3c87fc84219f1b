"""CompileOptions: the one frozen object that configures a compilation (passed down, never global)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .passes.prune import PruneScheme
    from .passes.quantize import QuantScheme


@dataclass(frozen=True)
class CompileOptions:
    backend: str = "auto"  # "auto" | "reference" | "triton" | "cuda" (auto: triton on CUDA when installed, else reference)
    dynamic: bool = True  # trace with symbolic dims so other batch sizes / lengths reuse the plan
    fullgraph: bool = False  # raise TraceError instead of falling back to torch.compile graph breaks
    decompose: bool = False  # also run PyTorch core decompositions on ops kiln does not convert
    verify: bool = True  # run the IR verifier after capture
    max_recompiles: int = 8  # beyond this many shape specialisations, new shapes run eagerly
    disable_passes: frozenset[str] = frozenset()  # pass names to skip (see kiln.passes.PIPELINE)
    dump_all_passes: bool = False  # with a dump dir: dump IR after every pass, not only after change
    cuda_graphs: bool = True  # replay plans as CUDA graphs for repeating shapes on CUDA inputs
    arena: bool = True  # generated kernels write into one preallocated arena (runtime.arena)
    print_ir: str = "never"  # "never" | "after_change" | "always": print IR to stderr after passes
    fold_max_elements: int = 1 << 16  # constant folding never creates constants larger than this
    # quantization (passes/quantize.py): None, "int8", "int4", "w8a8", "fp8" or a QuantScheme;
    # stored as a QuantScheme (or None)
    quantization: "str | QuantScheme | None" = None
    # magnitude pruning of linear weights (passes/prune.py): None, a sparsity, "2:4" or a PruneScheme
    pruning: "str | float | PruneScheme | None" = None
    # tensor parallelism (passes/tensor_parallel.py): (rank, world_size) compiles this rank's
    # share of the model; its collectives run on the default torch.distributed process group, or
    # on the group registered with ir.opset.collective.set_tensor_group
    tensor_parallel: tuple[int, int] | None = None
    # pipeline parallelism (passes/pipeline_parallel.py): (stage, num_stages) compiles this
    # stage's layers; stage k is rank k of the default process group (send/recv to neighbours),
    # or the rank registered with ir.opset.collective.set_stage_ranks. Both together (T x P ranks):
    # the graph is sharded with tensor_parallel=(t, T), then cut with pipeline_parallel=(s, P);
    # kiln.runtime.distributed.setup_parallel_groups maps rank r to stage r // T, tensor rank r % T
    pipeline_parallel: tuple[int, int] | None = None
    # how tensor-parallel all-reduces run on GPUs (runtime/comm.py): "nccl" (torch.distributed),
    # "symm_mem" (one-shot all-reduce over NVLink peers' symmetric memory for messages up to
    # 16 MiB, NCCL above; all_gathers too, as sums of zero-padded shards) or "auto" (symm_mem where every rank can use it, else nccl)
    all_reduce: str = "nccl"

    def __post_init__(self) -> None:
        object.__setattr__(self, "disable_passes", frozenset(self.disable_passes))
        if self.backend not in ("auto", "reference", "triton", "cuda"):
            raise ValueError(f"unknown backend {self.backend!r}; choose 'auto', 'reference', 'triton' or 'cuda'")
        if self.print_ir not in ("never", "after_change", "always"):
            raise ValueError(f"print_ir must be 'never', 'after_change' or 'always', got {self.print_ir!r}")
        if self.all_reduce not in ("nccl", "symm_mem", "auto"):
            raise ValueError(f"all_reduce must be 'nccl', 'symm_mem' or 'auto', got {self.all_reduce!r}")
        if self.max_recompiles < 0:
            raise ValueError("max_recompiles must be >= 0")
        if self.quantization is not None:
            from .passes.quantize import QuantScheme  # lazily: passes import this module

            object.__setattr__(self, "quantization", QuantScheme.parse(self.quantization))
        if self.pruning is not None:
            from .passes.prune import PruneScheme

            object.__setattr__(self, "pruning", PruneScheme.parse(self.pruning))
        if self.tensor_parallel is not None:
            rank, world = self.tensor_parallel
            if not (isinstance(rank, int) and isinstance(world, int) and world >= 1 and 0 <= rank < world):
                raise ValueError(f"tensor_parallel must be (rank, world_size) with 0 <= rank < world_size, got {self.tensor_parallel!r}")
            object.__setattr__(self, "tensor_parallel", (rank, world))
        if self.pipeline_parallel is not None:
            stage, stages = self.pipeline_parallel
            if not (isinstance(stage, int) and isinstance(stages, int) and stages >= 1 and 0 <= stage < stages):
                raise ValueError(f"pipeline_parallel must be (stage, num_stages) with 0 <= stage < num_stages, got {self.pipeline_parallel!r}")
            object.__setattr__(self, "pipeline_parallel", (stage, stages))
