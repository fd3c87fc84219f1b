# one device call: the persistent-step probes (bench/megastep_probe.py, bench/megastep_gluon.py)
site=$(mktemp -d); ln -s $PWD $site/kiln; export PYTHONPATH=$site
cd bench
timeout 250 python3 megastep_gluon.py --nbuf 5 --schemes bf16 int8 int4 --variants smemx full sync stream 2>&1 | tail -4
timeout 200 python3 megastep_gluon.py --nbuf 6 --schemes bf16 int8 --variants smemx 2>&1 | tail -2
