#!/usr/bin/env bash
# One call on a device machine for the decode-kernel work: bench/gemv_sweep.py (kiln's decode
# matvecs vs cuBLAS per 7B / 1.1B shape, timed as autotune times them), the GPU kernel tests of
# the dense and quantized linears (KERNEL_TESTS=1), then on two GPUs bench/tp.py (7B and 1.1B,
# TP 1 and 2) and the multi-GPU tests (their stacks dumped if they overrun).
# SWEEP=0 skips the sweep; TP_BENCH=0 skips bench/tp.py; TP_TEST_K picks multi-GPU tests (pytest -k); UNFUSED=1 / NO_PDL=1 add A/B runs
# of 7B with KILN_FUSED_AR_NORM=0 / KILN_PDL=0; TP_SIZES="1 2 4" for a 4-GPU machine.
# Writes everything to $OUT (or ./gpu-out). Usage: bash scripts/gpu_decode.sh
set -uo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
out=${OUT:-$root/gpu-out}; mkdir -p "$out"
site=$(mktemp -d)
ln -s "$root" "$site/kiln"          # the repository root is the kiln package
export PYTHONPATH="$site${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
export NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1 KILN_STEP_TIMES=1
cd "$root"
if [ "${SWEEP:-1}" = 1 ]; then
  timeout "${SWEEP_S:-150}" python3 bench/gemv_sweep.py --m ${SWEEP_M:-1} --shapes ${SWEEP_SHAPES:-7b/2-o 7b/2-down 7b-o 7b-qkv 1b-o 1b-gate_up} > "$out/gemv_sweep.log" 2>&1
  echo "sweep rc=$?"; grep "^|" "$out/gemv_sweep.log"
fi
if [ "${KERNEL_TESTS:-0}" = 1 ]; then
  (cd tests && timeout -s ABRT "${KERNEL_TEST_S:-200}" python3 -X faulthandler -m pytest -p no:cacheprovider -q -m gpu \
      test_triton_matmul.py test_triton_quant_matmul.py test_triton_paged.py test_triton_norms.py test_triton_elementwise.py > "$out/kernel_tests.log" 2>&1)
  echo "kernel tests rc=$?"; tail -3 "$out/kernel_tests.log"
fi
if [ "$(nvidia-smi -L | wc -l)" -ge 2 ]; then
  if [ "${TP_BENCH:-1}" = 1 ]; then
  timeout "${TP_BENCH_S:-300}" python3 bench/tp.py --shapes ${TP_SHAPES:-7b 1b} --tp ${TP_SIZES:-1 2} --all-reduce ${TP_AR:-symm_mem} \
      --step-channel shm --breakdown --timeout 120 > "$out/tp.log" 2>&1
  echo "tp rc=$?"; grep "^|\|rank 1\|BREAKDOWN GPU" "$out/tp.log" | cut -c1-600
  fi
  if [ "${UNFUSED:-0}" = 1 ]; then  # A/B: 7B TP=2 with the all-reduce and the add + RMSNorm apart
    KILN_FUSED_AR_NORM=0 timeout "${AB_S:-150}" python3 bench/tp.py --shapes 7b --tp 2 --all-reduce symm_mem \
        --step-channel shm --breakdown --timeout 120 > "$out/tp_unfused.log" 2>&1
    echo "tp unfused rc=$?"; grep "^| 7b\|BREAKDOWN GPU" "$out/tp_unfused.log" | cut -c1-600
  fi
  if [ "${NO_PDL:-0}" = 1 ]; then  # A/B: 7B TP=1 and 2 without programmatic dependent launch
    KILN_PDL=0 timeout "${AB_S:-150}" python3 bench/tp.py --shapes 7b --tp 1 2 --all-reduce symm_mem \
        --step-channel shm --breakdown --timeout 120 > "$out/tp_nopdl.log" 2>&1
    echo "tp no-PDL rc=$?"; grep "^| 7b\|BREAKDOWN GPU" "$out/tp_nopdl.log" | cut -c1-600
  fi
  cd "$root/tests"
  timeout -s ABRT "${TP_TEST_S:-200}" python3 -X faulthandler -m pytest -p no:cacheprovider -m gpu test_llm_tp.py ${TP_TEST_K:+-k "$TP_TEST_K"} -rs --durations=5 \
      > "$out/tp_tests.log" 2>&1
  echo "tp tests rc=$?"; grep -v "^Extension" "$out/tp_tests.log" | tail -15
fi
