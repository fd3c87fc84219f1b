"""Programmatic dependent launch (PDL, sm90+) for kiln's Triton kernels.

A kernel launched with PDL (`launch_pdl=True`) may start while the kernel before it on the stream
still runs, once every program of that kernel has executed `gdc_launch_dependents()` (a
"trigger") or exited; it must call `gdc_wait()` before it reads anything the earlier kernel
writes (the wait returns when that kernel has completed and its stores are visible). A decode
step is a chain of short kernels, so a chain where each kernel triggers at its start lets the
next one be resident, and a gemv load its constant weights, while the current one finishes: the
per-kernel ramp and launch gap overlap instead of adding up.

`with_pdl(source, trigger=..., wait=...)` rewrites a kernel module's text: the named kernels'
first statements become the wait and/or the trigger. Triggering is always safe (it only lets a
PDL-launched successor be scheduled; the successor's wait still orders every read); a kernel
given a wait must be launched with `launch_flags()` and reads nothing before its wait.
Where PDL cannot run (`available()` is False: no sm90 GPU, Triton's interpreter, an older
Triton, KILN_PDL=0) the source is returned unchanged and the flags are empty.
"""

from __future__ import annotations

import functools
import re
from typing import Any, Callable

import torch

from ... import debug
from .cache import load_module

_IMPORT = "from triton.language.extra.cuda import gdc_launch_dependents, gdc_wait\n"
_TL = "import triton.language as tl\n"


@functools.cache
def available() -> bool:
    """PDL can run here: a CUDA GPU of compute capability 9+ (Hopper) and a Triton with
    `gdc_wait`; never under the interpreter (it cannot run the gdc calls), nor with KILN_PDL=0."""
    if debug.TRITON_INTERPRET or not debug.PDL or not torch.cuda.is_available():
        return False
    try:
        from triton.language.extra.cuda import gdc_wait  # noqa: F401
    except ImportError:
        return False
    return torch.cuda.get_device_capability()[0] >= 9


def with_pdl(source: str, trigger: tuple[str, ...] = (), wait: tuple[str, ...] = (), enabled: bool | None = None) -> str:
    """`source` with the `wait` kernels waiting for the previous kernel and the `trigger` kernels
    letting the next one launch, as their first statements (wait first); unchanged where PDL is
    not `enabled` (default: `available()`). Raises ValueError for a name that is not a
    `@triton.jit` kernel of the source."""
    if not (available() if enabled is None else enabled):
        return source
    if _TL not in source:
        raise ValueError("with_pdl: the source does not import triton.language as tl")
    for name in dict.fromkeys(wait + trigger):
        m = re.search(rf"^@triton\.jit\ndef {name}\(.*?\):\n", source, flags=re.M | re.S)
        if m is None:
            raise ValueError(f"with_pdl: no @triton.jit kernel named {name!r} in the source")
        body = ("    gdc_wait()\n" if name in wait else "") + ("    gdc_launch_dependents()\n" if name in trigger else "")
        source = source[:m.end()] + body + source[m.end():]
    return source.replace(_TL, _TL + _IMPORT, 1)


def launch_flags(enabled: bool | None = None) -> dict[str, Any]:
    """The launch keywords of a kernel given a wait by `with_pdl` (empty where PDL cannot run:
    a Triton without PDL takes no `launch_pdl` keyword)."""
    return {"launch_pdl": True} if (available() if enabled is None else enabled) else {}


# The GPU's global timer (ns) as a Triton helper; `dep` (an int32) only orders the read after the
# value it is given. Shared by the lead kernel and the fused all-reduce norm's bounded spin.
NOW_NS = '''@triton.jit
def now_ns(dep):
    return tl.inline_asm_elementwise("mov.u64 $0, %globaltimer;", "=l,r", [dep], dtype=tl.int64, is_pure=False, pack=1)


'''

_LEAD = '''import triton
import triton.language as tl


''' + NOW_NS + '''@triton.jit
def lead(out, NS: tl.constexpr):
    # a latency-bound predecessor: let the next kernel launch, then spin NS nanoseconds
    t0 = now_ns(tl.program_id(0))
    t = t0
    while t - t0 < NS:
        t = now_ns(t.to(tl.int32))
    tl.store(out, t - t0)
'''

LEAD_NS = 3000  # about what a decode step's norm, all-reduce or batch-1 attention kernel takes


@functools.cache
def _lead_module() -> Any:
    return load_module(with_pdl(_LEAD, trigger=("lead",), enabled=True))


def lead_kernel(device: torch.device | None = None) -> Callable[[], object] | None:
    """A one-program kernel that triggers its dependents and then runs LEAD_NS ns: what a gemv
    follows in a decode step (autotune times candidates behind it, so a PDL candidate gets the
    overlap it gets in the model). None where PDL cannot run."""
    if not available():
        return None
    mod = _lead_module()
    out = torch.empty(1, dtype=torch.int64, device=device or "cuda")
    return lambda: mod.lead[(1,)](out, NS=LEAD_NS)
