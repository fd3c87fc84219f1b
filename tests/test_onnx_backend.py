"""The ONNX backend node tests that ship with `onnx`, run through kiln (backends/onnx/backend.py).

Every node test runs on CPU (~20 s for all of them). Tests listed in
data/onnx_backend_known_failures.txt (name, reason category, detail) are expected to fail: an
unlisted failure fails CI, a listed test that passes is reported as XPASS (run with -rX) so the
list can be pruned (`python scripts/onnx_backend_suite.py --write-known` regenerates it).
"""

from __future__ import annotations

import importlib.util
import os
import re
import warnings

import pytest

pytest.importorskip("onnx")

_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_spec = importlib.util.spec_from_file_location("onnx_backend_suite", os.path.join(_ROOT, "scripts", "onnx_backend_suite.py"))
suite = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(suite)

TESTS = suite.node_tests()
KNOWN = suite.read_known()


def _params() -> list:
    out = []
    for name in TESTS:
        marks = []
        if name in KNOWN:
            category, detail = KNOWN[name]
            marks.append(pytest.mark.xfail(strict=False, reason=f"{category}: {detail}"))
        out.append(pytest.param(name, marks=marks, id=name))
    return out


@pytest.mark.parametrize("name", _params())
def test_onnx_node(name: str) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        TESTS[name]()


def test_known_failures_name_real_node_tests_with_a_reason():
    categories = {"unsupported-op", "unsupported-dtype", "unsupported-form", "mismatch", "runtime-error"}
    assert set(KNOWN) <= set(TESTS), sorted(set(KNOWN) - set(TESTS))[:10]
    assert all(cat in categories for cat, _ in KNOWN.values())


def test_readme_states_the_node_suite_pass_rate(capsys):
    import onnx

    total = len(TESTS)
    passed = total - len(KNOWN)
    line = f"{passed}/{total}"
    with capsys.disabled():
        print(f"\nONNX backend suite: {passed}/{total} = {100 * passed / total:.1f}% of the onnx {onnx.__version__} node tests pass")
    with open(os.path.join(_ROOT, "README.md")) as f:
        readme = f.read()
    m = re.search(r"ONNX backend suite: ([\d.]+)% \((\d+/\d+)\) of the onnx ([\d.]+) node tests pass", readme)
    assert m, "README.md lacks the ONNX backend suite line"
    assert m.group(2) == line and m.group(3) == onnx.__version__ and float(m.group(1)) == round(100 * passed / total, 1)
