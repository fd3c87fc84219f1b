# the device run behind bench/RESULTS.md "2026-11-22 (session 5)": int8 decode in integer arithmetic (gemv_i8)
site=$(mktemp -d); ln -s $PWD $site/kiln; export PYTHONPATH=$site
timeout 240 python3 -m pytest -q -m gpu -p no:cacheprovider tests/test_triton_quant_matmul.py tests/test_prologues.py -k "i8 or a8 or igemv" 2>&1 | tail -4
cd bench
timeout 150 python3 gemv_sweep.py --m 1 --shapes 1b-qkv 1b-o 1b-gate_up 1b-down 7b-gate_up 7b-down --quant int8 w8a8 2>&1 | grep "int8\|w8a8"
for q in int8 w8a8; do timeout 100 python3 decode_profile.py --quant $q 2>&1 | grep "replay\|kernels per step\|prologue groups"; done
timeout 300 python3 llm.py --sections quant --schemes bf16 int8 int4 w8a8 fp8 2>&1 | tail -8
