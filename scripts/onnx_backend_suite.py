"""Run the ONNX backend node tests (the `onnx` package's own suite) through kiln, in process.

    python scripts/onnx_backend_suite.py                  # pass rate and failure categories
    python scripts/onnx_backend_suite.py --write-known    # regenerate tests/data/onnx_backend_known_failures.txt

The known-failures file lists one test per line: name, reason category, detail. CI
(tests/test_onnx_backend.py) runs every node test and expects exactly those to fail.
"""

from __future__ import annotations

import argparse
import os
import re
import sys
import time
import unittest
import warnings

HERE = os.path.dirname(os.path.abspath(__file__))
KNOWN = os.path.join(HERE, "..", "tests", "data", "onnx_backend_known_failures.txt")


def node_tests() -> dict:
    """name -> zero-argument callable running that node test on CPU."""
    import onnx.backend.test

    from kiln.backends.onnx.backend import KilnBackend

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        bt = onnx.backend.test.BackendTest(KilnBackend, __name__)
    bt.include(r"^test_.*_cpu$")
    cls = bt.test_cases["OnnxBackendNodeModelTest"]
    return {name: getattr(cls(name), name) for name in sorted(dir(cls)) if name.startswith("test_") and name.endswith("_cpu")}


def categorise(e: BaseException) -> tuple[str, str]:
    """(reason category, one-line detail) of a failure."""
    from kiln.errors import OnnxImportError

    msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
    if isinstance(e, OnnxImportError):
        m = re.search(r"ONNX op (\w+)", msg) or re.search(r"domain '([^']*)'", msg)
        if "is not supported by kiln's importer" in msg or "is unsupported" in msg or "domain" in msg:
            return "unsupported-op", (m.group(1) if m else msg)[:120]
        if "has no kiln dtype" in msg:
            return "unsupported-dtype", re.sub(r".*element type (\w+).*", r"\1", msg)
        return "unsupported-form", msg[:120]
    if isinstance(e, AssertionError):
        return "mismatch", " ".join(msg.split())[:120]
    return "runtime-error", f"{type(e).__name__}: {msg}"[:120]


def run_all(tests: dict) -> dict:
    """name -> ("pass" | "skip" | category, detail)."""
    out = {}
    for name, fn in tests.items():
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                fn()
            out[name] = ("pass", "")
        except unittest.SkipTest as e:
            out[name] = ("skip", str(e))
        except Exception as e:  # noqa: BLE001 - every failure is categorised
            out[name] = categorise(e)
    return out


def read_known(path: str = KNOWN) -> dict:
    known = {}
    with open(path) as f:
        for line in f:
            line = line.strip()
            if line and not line.startswith("#"):
                name, category, *detail = line.split(None, 2)
                known[name] = (category, detail[0] if detail else "")
    return known


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--write-known", action="store_true")
    ap.add_argument("-k", default="", help="only tests whose name contains this")
    args = ap.parse_args()
    import onnx

    tests = {n: f for n, f in node_tests().items() if args.k in n}
    t0 = time.perf_counter()
    results = run_all(tests)
    dt = time.perf_counter() - t0
    passed = sum(r[0] == "pass" for r in results.values())
    failed = {n: r for n, r in results.items() if r[0] not in ("pass", "skip")}
    from collections import Counter

    for cat, n in Counter(r[0] for r in failed.values()).most_common():
        print(f"{cat:18s} {n}")
    print(f"ONNX backend suite: {passed}/{len(results)} = {100 * passed / len(results):.1f}% of the onnx {onnx.__version__} node tests pass ({dt:.0f} s)")
    if args.write_known:
        with open(KNOWN, "w") as f:
            f.write(f"# ONNX backend node tests (onnx {onnx.__version__}) kiln fails, with the reason category.\n"
                    "# Regenerate: python scripts/onnx_backend_suite.py --write-known\n")
            for name, (cat, detail) in sorted(failed.items()):
                f.write(f"{name} {cat} {detail}\n")


if __name__ == "__main__":
    sys.path.insert(0, os.path.dirname(os.path.dirname(HERE)))
    main()
