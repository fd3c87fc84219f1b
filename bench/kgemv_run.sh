# kgemv_i4 (every thread along K): GPU correctness, then the int4 sweep with it among the candidates
site=$(mktemp -d); ln -s $PWD $site/kiln; export PYTHONPATH=$site
timeout 200 python3 -m pytest -q -p no:cacheprovider tests/test_triton_quant_matmul.py -k "igemv_matches_the_int4" 2>&1 | tail -3
cd bench
timeout 330 python3 gemv_sweep.py --m 1 --shapes 1b-qkv 1b-o 1b-gate_up 1b-down 7b-qkv 7b-gate_up 7b-down --quant int4 2>&1 | grep "int4\|<!--"
