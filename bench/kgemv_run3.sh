# after kgemv: the fp8 rounding test compiled, the int4 decode-step replay, the 7B end-to-end quant section
site=$(mktemp -d); ln -s $PWD $site/kiln; export PYTHONPATH=$site
timeout 100 python3 -m pytest -q -rf -p no:cacheprovider tests/test_triton_quant_matmul.py -k "fp8_rounding" 2>&1 | tail -2
cd bench
timeout 170 python3 decode_profile.py --quant int4 2>&1 | grep "replay\|kernels per step\|prologue groups"
timeout 300 python3 llm.py --sections quant --shape 7b --schemes bf16 int8 int4 2>&1 | tail -6
