# after kgemv: GPU tests, decode-step replays and the 1.1B end-to-end quant section
site=$(mktemp -d); ln -s $PWD $site/kiln; export PYTHONPATH=$site
timeout 240 python3 -m pytest -q -rf -p no:cacheprovider tests/test_triton_quant_matmul.py tests/test_prologues.py -k "kgemv or igemv or gemv_i8_matches or rounding or pdl_gemvs" 2>&1 | tail -6
cd bench
for q in int4 int8; do timeout 100 python3 decode_profile.py --quant $q 2>&1 | grep "replay\|kernels per step\|prologue groups"; done
timeout 300 python3 llm.py --sections quant --schemes bf16 int8 int4 w8a8 2>&1 | tail -7
