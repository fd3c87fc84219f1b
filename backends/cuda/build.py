"""Building and launching generated CUDA kernels.

A plan's kernels compile together into one PyTorch extension (one nvcc + one host compile per
plan, not per group: the host side includes torch/extension.h, which alone costs ~20 s of g++).
The hook hands out `Launcher`s that share a `KernelSet`; the set builds on the first launch,
when every group of the plan has been added. Identical groups (the same block in every layer)
share one kernel.

Two sources per extension: `kernels.cu`, the torch-free kernel part (prelude, kernels,
`extern "C" <prefix>_launch` stubs; compiles alone with `nvcc -c`), and `binding.cpp`, a small
pybind11 function taking torch::Tensors, which sets the device, takes PyTorch's current stream
(so CUDA-graph capture records the launches) and calls a stub by index. Built with
`torch.utils.cpp_extension.load` rather than `load_inline`, because `load_inline` prepends
`#include <torch/types.h>` to CUDA sources, which would put ATen in front of nvcc. The build
directory is `<kernel cache>/cuda/<name>`, private (0700), the name a hash of both sources, so
each distinct set builds once per machine.
"""

from __future__ import annotations

import hashlib
import math
import os
from typing import Any, Callable

import torch

from ... import debug
from ..triton.cache import cache_dir
from .codegen import THREADS, Kernel
from .prelude import PRELUDE

MAX_GRID = 1 << 16  # grid-stride loops cover the rest
_LOADED: dict[str, Any] = {}
_STUB = "(void* const*, const double*, const int64_t*, const int64_t*, int, void*)"
STRIDED64, STRIDED32, DENSE, VEC = 0, 1, 2, 3  # variant numbers the launch stubs dispatch on


def kernel_source(kernels: list[Kernel]) -> str:
    """The torch-free translation unit for `kernels` (distinct prefixes)."""
    return PRELUDE + "".join(k.source for k in kernels)


def binding_source(kernels: list[Kernel]) -> str:
    """The host part: `launch(idx, tensors, fs, is, meta, variant)` calling stub `idx`."""
    decls = "".join(f'extern "C" int {k.prefix}_launch{_STUB};\n' for k in kernels)
    table = ", ".join(f"{k.prefix}_launch" for k in kernels)
    return f"""#include <torch/extension.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <vector>

{decls}typedef int (*kiln_stub){_STUB};
static const kiln_stub kiln_stubs[] = {{{table}}};

void launch(int64_t idx, const std::vector<torch::Tensor>& ts, const std::vector<double>& fs,
            const std::vector<int64_t>& is, const std::vector<int64_t>& meta, int64_t variant) {{
  TORCH_CHECK(idx >= 0 && idx < {len(kernels)}, "kiln: no kernel ", idx);
  const c10::cuda::CUDAGuard guard(ts[0].device());
  std::vector<void*> ptrs;
  ptrs.reserve(ts.size());
  for (const auto& t : ts) ptrs.push_back(t.data_ptr());
  const int err = kiln_stubs[idx](ptrs.data(), fs.data(), is.data(), meta.data(), (int)variant,
                                  c10::cuda::getCurrentCUDAStream().stream());
  TORCH_CHECK(err == 0, "kiln cuda kernel launch failed: ", cudaGetErrorString((cudaError_t)err));
}}

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {{ m.def("launch", &launch, "launch generated kernel idx"); }}
"""


def _private_dir(*parts: str) -> str:
    path = cache_dir()
    for p in parts:
        path = os.path.join(path, p)
        os.makedirs(path, mode=0o700, exist_ok=True)
        os.chmod(path, 0o700)
    return path


def _write(path: str, text: str) -> None:
    if os.path.exists(path) and open(path).read() == text:
        return  # unchanged: ninja keeps the built objects
    tmp = f"{path}.{os.getpid()}.tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(text)
    os.replace(tmp, path)


def build(kernels: list[Kernel]) -> Any:
    """The compiled extension module for `kernels`, built once per content (cached on disk)."""
    cu, cpp = kernel_source(kernels), binding_source(kernels)
    key = hashlib.sha256((cu + "\0" + cpp).encode()).hexdigest()[:24]
    mod = _LOADED.get(key)
    if mod is not None:
        return mod
    from torch.utils.cpp_extension import load

    name = f"kiln_cuda_{key}"
    d = _private_dir("cuda", name)
    _write(os.path.join(d, "kernels.cu"), cu)
    _write(os.path.join(d, "binding.cpp"), cpp)
    debug.log.info("building CUDA extension %s (%d kernels)", name, len(kernels))
    mod = load(name, [os.path.join(d, "binding.cpp"), os.path.join(d, "kernels.cu")], build_directory=d,
               extra_cflags=["-O2"], extra_cuda_cflags=["-O3"], with_cuda=True, verbose=debug.DEBUG)
    _LOADED[key] = mod
    return mod


class KernelSet:
    """The kernels of one plan, compiled together on first use. Kernels are deduplicated by source
    (generated with a placeholder prefix), then regenerated with their index as prefix. Indices
    never change, so launchers holding an earlier build's function stay correct."""

    __slots__ = ("kernels", "index", "module")

    def __init__(self) -> None:
        self.kernels: list[Kernel] = []
        self.index: dict[str, int] = {}
        self.module: Any = None

    def add(self, make: Callable[[str], Kernel]) -> tuple[int, Kernel]:
        """Kernel index and kernel for `make(prefix)` (raises what `make` raises)."""
        key = make("kdedup").source
        idx = self.index.get(key)
        if idx is None:
            idx = self.index[key] = len(self.kernels)
            self.kernels.append(make(f"k{idx}"))
            self.module = None  # a late addition rebuilds a superset: earlier indices stay valid
        return idx, self.kernels[idx]

    def launch_fn(self) -> Callable[..., Any]:
        if self.module is None:
            self.module = build(self.kernels)
        return self.module.launch


def _aligned(ts: list[torch.Tensor], vec: int) -> bool:
    return all(t.data_ptr() % (vec * t.element_size()) == 0 for t in ts)


def _fits_i32(n: int, shape: torch.Size, strides: list[int], n_in: int) -> bool:
    """Every flat index and element offset of the strided variant fits an int32 (with a grid's
    worth of headroom for the grid-stride increment)."""
    lim = (1 << 31) - (MAX_GRID * 1024)
    if n >= lim:
        return False
    rank = len(shape)
    return all(sum((s - 1) * st for s, st in zip(shape, strides[i * rank:(i + 1) * rank])) < lim for i in range(n_in))


class Launcher:
    """Calls one generated kernel: allocates outputs (contiguous) at the inputs' broadcast shape and
    picks a variant: vec/dense when every input is contiguous and of that shape, else strided
    (int32 index math when it fits). The plan guarantees the inputs' dtypes and device."""

    __slots__ = ("kset", "idx", "fn", "fs", "is_", "out_dtypes", "n_out", "n_in", "reduces", "keepdim", "vec")

    def __init__(self, kset: KernelSet, idx: int, k: Kernel):
        self.kset, self.idx, self.fn = kset, idx, None
        self.fs = [float(s) for s in k.scalars if isinstance(s, float)]
        self.is_ = [int(s) for s in k.scalars if not isinstance(s, float)]
        self.out_dtypes = [t.dtype.torch for t in k.out_types]
        self.n_out, self.n_in, self.reduces, self.keepdim, self.vec = k.n_out, k.n_in, k.reduces, k.keepdim, k.vec

    def _call(self, ts: list[torch.Tensor], meta: list[int], variant: int) -> None:
        if self.fn is None:
            self.fn = self.kset.launch_fn()
        self.fn(self.idx, ts, self.fs, self.is_, meta, variant)

    def __call__(self, *ins: torch.Tensor) -> Any:
        shape = torch.broadcast_shapes(*(x.shape for x in ins))
        outs = [torch.empty(shape, dtype=d, device=ins[0].device) for d in self.out_dtypes[: self.n_out - self.reduces]]
        if self.reduces:
            rows_shape = shape[:-1] + ((1,) if self.keepdim else ())
            outs.append(torch.empty(rows_shape, dtype=self.out_dtypes[-1], device=ins[0].device))
            self._reduce(ins, outs, shape)
        elif outs[0].numel():
            self._elementwise(ins, outs, shape)
        return outs[0] if self.n_out == 1 else tuple(outs)

    def _elementwise(self, ins: tuple, outs: list, shape: torch.Size) -> None:
        n = outs[0].numel()
        ts = [*ins, *outs]
        if all(x.shape == shape and x.is_contiguous() for x in ins):
            variant = VEC if n % self.vec == 0 and _aligned(ts, self.vec) else DENSE
            work = n // self.vec if variant == VEC else n
            self._call(ts, [n, 0, min(MAX_GRID, -(-work // THREADS)), THREADS], variant)
            return
        strides = [s for x in ins for s in x.expand(shape).stride()]
        variant = STRIDED32 if _fits_i32(n, shape, strides, len(ins)) else STRIDED64
        self._call(ts, [n, 0, min(MAX_GRID, -(-n // THREADS)), THREADS, *shape, *strides], variant)

    def _reduce(self, ins: tuple, outs: list, shape: torch.Size) -> None:
        """One block per row of the last dim (grid-stride over rows); threads ~ a quarter row."""
        r, rows = shape[-1], math.prod(shape[:-1])
        if not rows:
            return
        threads = min(1024, max(32, (1 << max(r - 1, 0).bit_length()) // 4))
        meta = [r, rows, min(rows, MAX_GRID), threads]
        if all(x.shape == shape and x.is_contiguous() for x in ins):
            self._call([*ins, *outs], meta, DENSE)
            return
        strides = [s for x in ins for s in x.expand(shape).stride()]
        variant = STRIDED32 if _fits_i32(rows * r + rows, shape, strides, len(ins)) else STRIDED64
        self._call([*ins, *outs], meta + [*shape, *strides], variant)
