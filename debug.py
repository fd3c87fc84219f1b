"""Debug knobs: the only place kiln reads environment variables.

KILN_DEBUG=1       log what kiln does (capture path, timings, opaque ops) to stderr
KILN_DUMP_DIR=dir  dump IR text, DOT and an HTML pass viewer for every compilation into dir (like dump_dir=...)
KILN_CACHE_DIR=dir where generated kernels are cached (a private 0700 directory)
KILN_PAGED_ROPE=0  keep rotary-embedding nodes separate instead of folding them into paged attention
KILN_HANG_DUMP_S=s every parallel rank (and the driver) prints all Python stacks to stderr after s
                   seconds and again every s seconds: where a multi-process run waits, when it hangs
KILN_STEP_CHANNEL=auto|shm|gloo  how rank 0's step messages reach same-host parallel workers: shared
                   memory or the gloo group (auto: shared memory on GPUs; workers on other machines: gloo)
KILN_FUSED_AR_NORM=0|1|all  the all-reduce + add + RMSNorm after a row-parallel projection as one kernel:
                   never, for tensor groups of two (default), for groups of up to eight too
KILN_STEP_TIMES=1  every parallel worker prints, when it stops, where its steps' host time went
                   (waiting for rank 0's step message against running the step)
"""

from __future__ import annotations

import logging
import os

DEBUG = os.environ.get("KILN_DEBUG", "") not in ("", "0")
DUMP_DIR = os.environ.get("KILN_DUMP_DIR") or None
CACHE_DIR = os.environ.get("KILN_CACHE_DIR") or None
PAGED_ROPE = os.environ.get("KILN_PAGED_ROPE", "1") not in ("", "0")  # 0: keep rotary nodes out of paged attention
STEP_CHANNEL = os.environ.get("KILN_STEP_CHANNEL", "auto")
STEP_TIMES = os.environ.get("KILN_STEP_TIMES", "") not in ("", "0")
HANG_DUMP_S = float(os.environ.get("KILN_HANG_DUMP_S") or 0)
PDL = os.environ.get("KILN_PDL", "1") not in ("", "0")  # 0: no programmatic dependent launch (A/B, debugging)
# tensor groups of two run all_reduce_add_rms_norm as one kernel (symm_mem all-reduce); 0: the all-reduce and the norm
# apart; all: groups of up to eight too (correct on 4 x H200 but no faster there than apart: 429 vs 437 tok/s, 7B TP=4)
_FUSED_AR_NORM = os.environ.get("KILN_FUSED_AR_NORM", "1")
FUSED_AR_NORM = _FUSED_AR_NORM not in ("", "0")
FUSED_AR_NORM_ALL = _FUSED_AR_NORM == "all"
TRITON_INTERPRET = os.environ.get("TRITON_INTERPRET", "") not in ("", "0")  # Triton's own knob, read here once  # generated-kernel cache (default ~/.cache/kiln/kernels)

log = logging.getLogger("kiln")
if DEBUG:
    logging.basicConfig(level=logging.INFO, format="kiln: %(message)s")
    log.setLevel(logging.DEBUG)


def arm_hang_dump() -> None:
    """With KILN_HANG_DUMP_S set: dump every thread's stack every that many seconds (faulthandler)."""
    if HANG_DUMP_S > 0:
        import faulthandler

        faulthandler.dump_traceback_later(HANG_DUMP_S, repeat=True)
