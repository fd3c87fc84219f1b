# one device call: the persistent-step probes (bench/megastep_probe.py, bench/megastep_gluon.py)
site=$(mktemp -d); ln -s $PWD $site/kiln; export PYTHONPATH=$site
cd bench
timeout 300 python3 megastep_gluon.py 2>&1 | tail -5
timeout 200 python3 megastep_gluon.py --nbuf 4 --variants full 2>&1 | tail -4
timeout 200 python3 megastep_gluon.py --nbuf 12 --tile-rows 4 --variants full 2>&1 | tail -4
timeout 200 python3 megastep_gluon.py --nbuf 3 --tile-rows 16 --variants full 2>&1 | tail -4
