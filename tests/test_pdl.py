"""Programmatic dependent launch (backends/triton/pdl.py): the source rewrite every PDL kernel
goes through, its guards, and (where Triton can compile for sm90 without a GPU) the PTX."""

from __future__ import annotations

import ast

import pytest

from kiln.backends.triton import allreduce_norm, matmul, norms, paged, pdl, quant_kernels, quant_matmul

SOURCES = {
    "rms": (norms._RMS, ("kernel",), ("kernel",)),
    "paged": (paged._SOURCE, ("write", "attend", "combine"), ("write", "attend", "combine")),
    "ar_norm": (allreduce_norm._SOURCE, allreduce_norm.KERNELS, allreduce_norm.KERNELS),
    "matmul": (matmul.kernel_source("none", False), ("gemm", "matvec", "finish", "gemv"), ()),
    "quant": (quant_kernels.kernel_source("none", False), quant_matmul._KERNELS, ()),
}


@pytest.mark.parametrize("name", list(SOURCES))
def test_each_named_kernel_starts_with_its_wait_then_its_trigger(name: str) -> None:
    src, trigger, wait = SOURCES[name]
    out = pdl.with_pdl(src, trigger=trigger, wait=wait, enabled=True)
    tree = ast.parse(out)
    kernels = {f.name: f for f in tree.body if isinstance(f, ast.FunctionDef)}
    for k in set(trigger) | set(wait):
        first = [ast.unparse(s) for s in kernels[k].body[:2]]
        want = (["gdc_wait()"] if k in wait else []) + (["gdc_launch_dependents()"] if k in trigger else [])
        assert first[:len(want)] == want, (k, first)
    # helpers (not named) are untouched, and the functions come from Triton's CUDA extras
    assert out.count("gdc_launch_dependents()") - src.count("gdc_launch_dependents()") == len(set(trigger))
    assert "from triton.language.extra.cuda import gdc_launch_dependents, gdc_wait" in out


def test_every_quantized_kernel_with_a_pdl_wait_lets_the_next_one_launch() -> None:
    """Each kernel of the quantized source that waits on the previous kernel (calls
    wait_for_input) is in the trigger list, so a chain's next kernel can start early after it too."""
    src = quant_kernels.kernel_source("none", False)
    kernels = {f.name for f in ast.parse(src).body if isinstance(f, ast.FunctionDef)
               and any(isinstance(c, ast.Call) and ast.unparse(c.func) == "wait_for_input" for c in ast.walk(f))}
    assert {"gemv_i8", "kgemv_i4", "kgemv_i8"} <= kernels
    assert kernels <= set(quant_matmul._KERNELS), kernels - set(quant_matmul._KERNELS)


def test_disabled_leaves_the_source_and_the_launch_alone(monkeypatch: pytest.MonkeyPatch) -> None:
    src = norms._RMS
    assert pdl.with_pdl(src, trigger=("kernel",), wait=("kernel",), enabled=False) == src
    assert pdl.launch_flags(enabled=False) == {}
    assert pdl.launch_flags(enabled=True) == {"launch_pdl": True}
    # KILN_PDL=0 (and the interpreter, and no sm90 GPU): nothing rewritten, no flags, no lead kernel
    pdl.available.cache_clear()
    monkeypatch.setattr(pdl.debug, "PDL", False)
    try:
        assert not pdl.available()
        assert pdl.with_pdl(src, trigger=("kernel",), wait=("kernel",)) == src
        assert pdl.launch_flags() == {} and pdl.lead_kernel() is None
    finally:
        pdl.available.cache_clear()


def test_unknown_kernel_names_are_refused() -> None:
    with pytest.raises(ValueError, match="no @triton.jit kernel named 'rotate2'"):
        pdl.with_pdl(paged._SOURCE, trigger=("rotate2",), enabled=True)
    with pytest.raises(ValueError, match="triton.language"):
        pdl.with_pdl("def kernel():\n    pass\n", trigger=("kernel",), enabled=True)


_COMPILE = """
import triton
from triton.backends.compiler import GPUTarget
from kiln.backends.triton import norms, pdl
from kiln.backends.triton.cache import load_module
fn = load_module(pdl.with_pdl(norms._RMS, trigger=("kernel",), wait=("kernel",), enabled=True)).kernel
order = list(fn.arg_names)
sig = {"a": "*bf16", "b": "*bf16", "w": "*bf16", "s_out": "*bf16", "y_out": "*bf16", "R": "i32", "eps": "fp32"}
src = triton.compiler.ASTSource(fn=fn, signature={a: sig.get(a, "constexpr") for a in order},
                                constexprs={(order.index("ADD"),): True, (order.index("BLOCK"),): 256})
ptx = triton.compile(src, target=GPUTarget("cuda", 90, 32), options={"num_warps": 4}).asm["ptx"]
print("\\n".join(ln.strip() for ln in ptx.splitlines() if "griddepcontrol" in ln or "ld.global" in ln))
"""


def test_the_rewritten_kernels_compile_to_griddepcontrol_for_sm90(tmp_path: object) -> None:
    """Compiled for Hopper without a GPU (in a process of its own: the interpreter this suite runs
    under patches triton.language): the wait, then the trigger, come before the first load."""
    import os
    import subprocess
    import sys

    try:
        from triton.language.extra.cuda import gdc_wait  # noqa: F401
    except ImportError:
        pytest.skip("this Triton has no PDL")
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["KILN_CACHE_DIR"] = str(tmp_path)
    run = subprocess.run([sys.executable, "-c", _COMPILE], env=env, capture_output=True, text=True, timeout=120)
    if run.returncode != 0:
        if "ptxas" in run.stderr or "cuda" in run.stderr.lower() and "not found" in run.stderr.lower():
            pytest.skip("no CUDA toolchain in this Triton build")
        raise AssertionError(run.stderr[-2000:])
    lines = run.stdout.split("\n")
    assert lines[0].startswith("griddepcontrol.wait") and lines[1].startswith("griddepcontrol.launch_dependents"), lines[:3]
    assert any("ld.global" in ln for ln in lines[2:])  # (predicated loads: "@%p1 ld.global...")
