#!/usr/bin/env bash
# One call on a single-GPU machine for issue 6's open GPU questions: the quantized Triton kernels on
# ragged shapes (the misaligned-address fault; tests/test_triton_*matmul*.py, every test, not only
# the gpu-marked ones; their no_torch_fallback fixture lifts the aligned-only CUDA gate, so the
# ragged GEMMs run as kernels), the decode kernel sweep (bench/quant_sweep.py: dmv against the new
# gemv kernels, plain and with PDL), where an int8 decode step goes
# (bench/decode_profile.py --quant int8), then the quantized decode table (bench/llm.py quant).
# Usage: bash scripts/gpu_quant.sh   (QUANT_SECTIONS=0 skips the last, slowest part)
set -uo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
site=$(mktemp -d)
ln -s "$root" "$site/kiln"          # the repository root is the kiln package
export PYTHONPATH="$site${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
cd "$root/tests" && timeout 300 python3 -m pytest -q -p no:cacheprovider -x test_triton_quant_matmul.py test_triton_matmul.py; status=$?
cd "$root" && timeout 200 python3 bench/quant_sweep.py
timeout 180 python3 bench/decode_profile.py --quant int8 --steps 32
if [ "${QUANT_SECTIONS:-1}" = 1 ]; then timeout 420 python3 bench/llm.py --sections quant; fi
exit $status
