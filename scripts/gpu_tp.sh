#!/usr/bin/env bash
# One call on a multi-GPU machine (nvidia-h200-x2 / -x4): the multi-GPU tests (tests/test_llm_tp.py,
# marked gpu), then the tensor-parallel bench (bench/tp.py) with both all-reduce implementations, then
# bench/ar_norm_probe.py (what an all-reduce costs in a decode graph, and fusing it with add + RMSNorm).
# NVLink multicast stays off (the device machines require it). Usage: bash scripts/gpu_tp.sh [bench/tp.py args]
set -uo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
site=$(mktemp -d)
ln -s "$root" "$site/kiln"          # the repository root is the kiln package
export PYTHONPATH="$site${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
export NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1
export KILN_HANG_DUMP_S="${KILN_HANG_DUMP_S:-60}" KILN_STEP_TIMES=1
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader
(cd "$root/tests" && timeout "${TP_TEST_S:-150}" python3 -m pytest -p no:cacheprovider -m gpu test_llm_tp.py -rs); status=$?
cd "$root" && timeout "${TP_BENCH_S:-420}" python3 bench/tp.py --shapes 7b 1b --all-reduce nccl symm_mem --step-channel shm --breakdown --timeout 120 "$@" \
    2>&1 | grep -v "non_strict_utils\|Writing model"
timeout 150 python3 bench/ar_norm_probe.py 2>&1 | tail -12   # all-reduce + add + RMSNorm: nccl, symm_mem, one fused kernel
exit $status
