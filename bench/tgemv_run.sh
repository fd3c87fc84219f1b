# tgemv_f8 (fp8 on tensor cores): GPU correctness, the fp8 sweep with extra tilings, the 1.1B fp8 step
site=$(mktemp -d); ln -s $PWD $site/kiln; export PYTHONPATH=$site
timeout 200 python3 -m pytest -q -rf -p no:cacheprovider tests/test_triton_quant_matmul.py tests/test_prologues.py -k "tgemv or f8 or fp8" 2>&1 | tail -6
cd bench
timeout 200 python3 gemv_sweep.py --m 1 --shapes 1b-qkv 1b-o 1b-gate_up 1b-down 7b-qkv 7b-gate_up 7b-down --quant fp8 \
  --extra t64x256x4x3x1073741824 t64x512x4x2x32 t128x128x8x4x32 t64x128x4x3x128 t64x256x4x4x256 16x2048x8 2>&1 | grep "fp8\|<!--"
timeout 150 python3 decode_profile.py --quant fp8 2>&1 | grep "replay\|kernels per step\|prologue groups\|tgemv\|gemv_f8"
