"""Passes: named pure functions Graph -> Graph, run by the pass manager.

Takes a verified kiln Graph and gives a verified kiln Graph (the same object when a pass changes
nothing). The pipeline is the list in `pipeline.py`; `CompileOptions(disable_passes={...})`
turns passes off by name.
"""

from .cse import eliminate_common_subexpressions
from .dce import eliminate_dead_nodes
from .fold import fold_constants
from .fuse_collectives import fuse_collectives
from .fuse_elementwise import fuse_elementwise
from .fuse_epilogues import fuse_epilogues
from .fuse_patterns import fuse_patterns
from .fuse_projections import fuse_projections
from .fuse_prologues import fuse_prologues
from .manager import Pass, PassContext, PassError, PassRecord, graph_pass, run_pipeline
from .memory import MemoryPlan, plan_memory
from .pad import pad_matmul_dims
from .pipeline import PIPELINE
from .prune import PruneScheme, prune_weights
from .quantize import QuantScheme, quantize_weights
from .simplify import simplify

__all__ = [
    "PIPELINE", "MemoryPlan", "Pass", "PassContext", "PassError", "PassRecord", "QuantScheme", "eliminate_common_subexpressions",
    "eliminate_dead_nodes", "fold_constants", "fuse_collectives", "fuse_elementwise", "fuse_epilogues", "fuse_patterns", "fuse_projections", "fuse_prologues", "graph_pass", "pad_matmul_dims", "plan_memory", "PruneScheme", "prune_weights", "quantize_weights", "run_pipeline", "simplify",
]
