"""The pipeline: the passes kiln runs, in order, in one place."""

from __future__ import annotations

from .cse import eliminate_common_subexpressions
from .dce import eliminate_dead_nodes
from .fold import fold_constants
from .fuse_collectives import fuse_collectives
from .fuse_elementwise import fuse_elementwise
from .fuse_epilogues import fuse_epilogues
from .fuse_patterns import fuse_patterns
from .fuse_projections import fuse_projections
from .fuse_prologues import fuse_prologues
from .manager import Pass
from .memory import plan_memory
from .pad import pad_matmul_dims
from .pipeline_parallel import split_pipeline
from .prune import prune_weights
from .quantize import quantize_weights
from .simplify import simplify
from .tensor_parallel import shard_tensor_parallel

PIPELINE: list[Pass] = [
    eliminate_dead_nodes,
    simplify,
    eliminate_common_subexpressions,
    fold_constants,
    fuse_patterns,
    shard_tensor_parallel,  # after fuse_patterns (separate q/k/v, attention op), before any fusion or quantization
    prune_weights,  # before fuse_projections: each projection gets its own magnitude threshold
    fuse_projections,
    quantize_weights,  # after fuse_projections: a fused QKV / gate-up weight is quantized once
    split_pipeline,  # before fusion: add_rms_norm would straddle layers; each stage fuses on its own
    fuse_epilogues,
    fuse_collectives,  # after fuse_epilogues: all_reduce + add_rms_norm -> one collective
    fuse_elementwise,
    pad_matmul_dims,
    fuse_prologues,  # after fuse_elementwise (the SiLU-mul group) and padding (it rewrites bare linears)
    plan_memory,
]
