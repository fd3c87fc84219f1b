# kgemv_i4 / kgemv_i8 (every thread along K): GPU correctness, then the sweeps with them among the candidates
site=$(mktemp -d); ln -s $PWD $site/kiln; export PYTHONPATH=$site
timeout 200 python3 -m pytest -q -p no:cacheprovider tests/test_triton_quant_matmul.py -k "kgemv or igemv_matches or gemv_i8_matches or rounding" 2>&1 | tail -3
cd bench
for q in int4 int8 w8a8; do
timeout 170 python3 gemv_sweep.py --m 1 --shapes 1b-qkv 1b-o 1b-gate_up 1b-down 7b-qkv 7b-gate_up 7b-down --quant $q 2>&1 | grep "$q\|<!--"
done
