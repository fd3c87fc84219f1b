"""Runtime: executes compiled plans.

Takes a kiln Graph lowered by a backend; gives `Plan`, one generated straight-line function with
input guards (dtype, device, rank, shape ranges) and per-node calls. The paged KV cache and the
LLM engine will live here too.
"""

from .plan import GuardMismatch, Plan, build_plan

__all__ = ["GuardMismatch", "Plan", "build_plan"]
