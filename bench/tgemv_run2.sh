# tgemv_f8 small-N tilings (MMA v2 at 16 / 32 rows), GPU tests, then the 1.1B end-to-end quant section
site=$(mktemp -d); ln -s $PWD $site/kiln; export PYTHONPATH=$site
timeout 120 python3 -m pytest -q -rf -p no:cacheprovider tests/test_triton_quant_matmul.py -k "tgemv or fp8_candidates" 2>&1 | tail -3
cd bench
timeout 200 python3 gemv_sweep.py --m 1 --shapes 1b-qkv 1b-o 1b-gate_up 1b-down 7b-down --quant fp8 \
  --extra t16x256x1x4x32 t16x512x1x3x32 t32x256x2x4x32 t32x256x1x4x32 t16x1024x2x3x32 t32x128x2x6x32 t16x256x1x4x256 t32x512x2x3x512 2>&1 | grep "fp8\|<!--"
timeout 330 python3 llm.py --sections quant --schemes bf16 int8 int4 fp8 2>&1 | tail -6
