#!/usr/bin/env bash
# One call on a GPU machine (torch preinstalled, no registry): the whole suite under that
# machine's torch, the GPU-marked tests included, then the kernel benchmark (bench/gpu_kernels.py;
# KILN_GPU_BENCH=0 skips it). Usage: bash scripts/gpu_check.sh [pytest args]
set -uo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
site=$(mktemp -d)
ln -s "$root" "$site/kiln"          # the repository root is the kiln package
export PYTHONPATH="$site${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
python3 -c 'import torch, transformers, triton; print("torch", torch.__version__, "transformers", transformers.__version__, "triton", triton.__version__, "cuda", torch.cuda.is_available(), torch.cuda.get_device_name(0) if torch.cuda.is_available() else "")'
cd "$root/tests" && python3 -m pytest -q -p no:cacheprovider "$@"; status=$?
if [ "${KILN_GPU_BENCH:-1}" = 1 ]; then cd "$root" && python3 bench/gpu_kernels.py; fi
exit $status
