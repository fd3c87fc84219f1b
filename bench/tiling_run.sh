# igemv tiling sweep: tilings whose threads all lie along K (no x work repeated across warps)
site=$(mktemp -d); ln -s $PWD $site/kiln; export PYTHONPATH=$site
cd bench
S="1b-qkv 1b-gate_up 1b-down 7b-gate_up 7b-down"
timeout 270 python3 gemv_sweep.py --m 1 --shapes $S --quant int4 --extra i8x1024x1 i16x1024x1 i32x1024x1 i16x2048x2 i32x2048x2 i16x4096x4 i8x4096x4 i16x1024x2 2>&1 | grep "int4\|<!--"
timeout 270 python3 gemv_sweep.py --m 1 --shapes $S --quant int8 --extra i8x512x1 i16x512x1 i32x512x1 i16x1024x2 i32x1024x2 i16x2048x4 i8x2048x4 i32x2048x4 2>&1 | grep "int8\|<!--"
