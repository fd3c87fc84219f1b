# the device run behind bench/RESULTS.md "2026-11-22 (session 4)": both persistent-step probes
site=$(mktemp -d); ln -s $PWD $site/kiln; export PYTHONPATH=$site
cd bench
timeout 250 python3 megastep_gluon.py --nbuf 5 2>&1 | tail -5
timeout 250 python3 megastep_probe.py 2>&1 | tail -5
