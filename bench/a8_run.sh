# the device run behind bench/RESULTS.md "2026-11-22 (session 5)": W8A8 batch-1 decode in one gemv (gemv_a8)
site=$(mktemp -d); ln -s $PWD $site/kiln; export PYTHONPATH=$site
timeout 200 python3 -m pytest -q -m gpu -p no:cacheprovider tests/test_triton_quant_matmul.py tests/test_prologues.py -k "a8 or w8a8" 2>&1 | tail -4
cd bench
timeout 150 python3 gemv_sweep.py --m 1 --shapes 1b-qkv 1b-o 1b-gate_up 1b-down 7b-gate_up --quant int8 w8a8 --extra 16x4096x8 32x2048x8 2>&1 | tail -16
for q in w8a8 int8; do timeout 120 python3 decode_profile.py --quant $q 2>&1 | tail -4; done
timeout 300 python3 llm.py --sections quant --schemes bf16 int8 w8a8 2>&1 | tail -8
