# tgemv_f8 with split K: GPU tests, the fp8 sweep over the 1.1B and 7B projections, fp8 decode per step
site=$(mktemp -d); ln -s $PWD $site/kiln; export PYTHONPATH=$site
timeout 200 python3 -m pytest -q -rf -p no:cacheprovider tests/test_triton_quant_matmul.py tests/test_prologues.py tests/test_pdl.py -k "tgemv or f8 or fp8 or pdl_wait" 2>&1 | tail -4
cd bench
timeout 240 python3 gemv_sweep.py --m 1 --shapes 1b-qkv 1b-o 1b-gate_up 1b-down 7b-qkv 7b-o 7b-gate_up 7b-down --quant fp8 \
  --extra t64x256x4x4x256x8 t64x512x4x3x256x4 t128x256x8x4x256x4 2>&1 | grep "fp8\|<!--"
timeout 150 python3 step_walls.py --schemes bf16 fp8 2>&1 | grep round
