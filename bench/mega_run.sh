# one device call: the persistent-step probes (bench/megastep_probe.py, bench/megastep_gluon.py)
site=$(mktemp -d); ln -s $PWD $site/kiln; export PYTHONPATH=$site
cd bench
timeout 300 python3 megastep_gluon.py --schemes int8 int4 bf16 --variants full constx nox sync 2>&1 | tail -5
