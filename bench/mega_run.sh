# one device call: the persistent-step probes (bench/megastep_probe.py, bench/megastep_gluon.py)
site=$(mktemp -d); ln -s $PWD $site/kiln; export PYTHONPATH=$site
cd bench
timeout 200 python3 megastep_gluon.py --schemes int8 int4 bf16 --variants full nox --warps 16 2>&1 | tail -4
timeout 200 python3 megastep_gluon.py --schemes int8 int4 bf16 --variants full nox --tile-rows 4 --nbuf 12 2>&1 | tail -4
timeout 200 python3 megastep_gluon.py --schemes int8 int4 bf16 --variants full nox --tile-rows 2 --nbuf 24 --warps 4 2>&1 | tail -4
