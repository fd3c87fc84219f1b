# the device run behind bench/RESULTS.md "2026-11-22 (session 5)": int8 / int4 decode in integer arithmetic (gemv_i8, gemv_i4)
site=$(mktemp -d); ln -s $PWD $site/kiln; export PYTHONPATH=$site
timeout 240 python3 -m pytest -q -m gpu -p no:cacheprovider tests/test_triton_quant_matmul.py tests/test_prologues.py -k "i8 or a8 or igemv or i4" 2>&1 | tail -3
cd bench
timeout 150 python3 gemv_sweep.py --m 1 --shapes 1b-qkv 1b-o 1b-gate_up 1b-down 7b-gate_up 7b-down --quant int4 2>&1 | grep "int4"
for q in int4 int8; do timeout 100 python3 decode_profile.py --quant $q 2>&1 | grep "replay\|kernels per step\|prologue groups"; done
timeout 300 python3 llm.py --sections quant --schemes bf16 int8 int4 w8a8 2>&1 | tail -7
