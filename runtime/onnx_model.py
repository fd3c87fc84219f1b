"""`kiln.import_onnx`: an ONNX model run through kiln's pipeline and plan.

The model is imported once up front (so unsupported ops fail at import, naming the op and node)
and planned on the first call, on that call's device and symbol values, like `kiln.compile`.
Inputs that decide shapes (a Reshape target fed as a graph input) specialise the graph on their
value: the plan for each distinct value is built once and kept.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np
import torch

from ..errors import InputError, OnnxImportError
from ..options import CompileOptions
from .plan import GuardMismatch, Plan


@dataclass
class _Entry:
    imported: Any  # frontend.onnx_import.ImportedOnnx (after the pipeline)
    plan: Plan


class OnnxModel:
    """A callable over an imported ONNX model: `model(*inputs)` returns a tuple of torch tensors
    (one per ONNX graph output); `model.run(None, {name: array})` mirrors onnxruntime's
    `InferenceSession.run` and returns numpy arrays."""

    def __init__(self, model: Any, options: CompileOptions | None = None, dump_dir: str | None = None):
        from ..frontend.onnx_import import NeedsInputValue, onnx_to_graph

        self.model = model
        self.options = options or CompileOptions()
        self.dump_dir = dump_dir
        inits = {t.name for t in model.graph.initializer}
        self.input_names = [vi.name for vi in model.graph.input if vi.name not in inits]
        self.output_names = [vi.name for vi in model.graph.output]
        self._bind: list[str] = []  # inputs the graph is specialised on, by value
        self._entries: dict[tuple, _Entry] = {}
        try:
            self.imported = onnx_to_graph(model)
        except NeedsInputValue as e:
            self.imported = None
            self._bind.append(e.input_name)

    @property
    def graph(self) -> Any:
        """The kiln graph of the latest plan (after the pipeline), else the imported graph."""
        if self._entries:
            return list(self._entries.values())[-1].imported.graph
        return self.imported.graph if self.imported is not None else None

    # --- calling ------------------------------------------------------------------------------
    def __call__(self, *args: Any, **kwargs: Any) -> tuple:
        if len(args) > len(self.input_names):
            raise InputError(f"the model takes {len(self.input_names)} inputs ({', '.join(self.input_names)}), got {len(args)}")
        feeds = dict(zip(self.input_names, args))
        for k, v in kwargs.items():
            if k not in self.input_names or k in feeds:
                raise InputError(f"unexpected or repeated input {k!r}; inputs are {self.input_names}")
            feeds[k] = v
        missing = [n for n in self.input_names if n not in feeds]
        if missing:
            raise InputError(f"missing input(s) {missing}")
        tensors = {n: to_tensor(n, v) for n, v in feeds.items()}
        entry = self._entry(tensors)
        ins = [tensors[n] for n in entry.imported.input_names]
        try:
            with torch.no_grad():
                return tuple(entry.plan.fn(*ins))
        except GuardMismatch as m:
            v = entry.imported.graph.inputs[m.index]
            got = ins[m.index]
            raise InputError(
                f"input {entry.imported.input_names[m.index]!r}: expected {v.type}, got {str(got.dtype).removeprefix('torch.')}"
                f"{list(got.shape)} ({m.kind} mismatch)"
            ) from None

    def run(self, output_names: Sequence[str] | None, feeds: dict[str, Any]) -> list[np.ndarray]:
        outs = self(**feeds)
        by_name = dict(zip(self.output_names, outs))
        return [to_numpy(by_name[n]) for n in (output_names or self.output_names)]

    # --- planning -----------------------------------------------------------------------------
    def _entry(self, tensors: dict[str, torch.Tensor]) -> _Entry:
        key = tuple((n, tensors[n].dtype, tuple(tensors[n].shape), tensors[n].cpu().numpy().tobytes()) for n in self._bind)
        entry = self._entries.get(key)
        if entry is None:
            entry = self._build(tensors)
            key = tuple((n, tensors[n].dtype, tuple(tensors[n].shape), tensors[n].cpu().numpy().tobytes()) for n in self._bind)
            self._entries[key] = entry
        return entry

    def _build(self, tensors: dict[str, torch.Tensor]) -> _Entry:
        from ..backends import kernel_hook
        from ..frontend.onnx_import import NeedsInputValue, onnx_to_graph
        from ..ir import verify
        from ..ir.interpret import bind_symbols
        from ..passes import PIPELINE, run_pipeline
        from .plan import build_plan

        imported = self.imported if not self._bind else None
        while imported is None:
            try:
                imported = onnx_to_graph(self.model, bind={n: tensors[n].cpu().numpy() for n in self._bind})
            except NeedsInputValue as e:
                if e.input_name in self._bind or e.input_name not in tensors:
                    raise
                self._bind.append(e.input_name)
        device = next((t.device for t in tensors.values()), None)
        g = imported.graph
        if device is not None and device.type != "cpu":
            g.constant_data.update({k: v.to(device) for k, v in g.constant_data.items() if v is not None})
        if self.options.verify:
            verify(g)
        example = [tensors[n] for n in imported.input_names]
        g, _ = run_pipeline(g, PIPELINE, self.options, self.dump_dir, prefix="onnx_", symbol_values=bind_symbols(g, example), device=device)
        imported = type(imported)(g, imported.input_names, imported.output_names, imported.opset, imported.bound)
        plan = build_plan(g, device, {}, kernel_for=kernel_hook(self.options.backend, device), arena=self.options.arena)
        return _Entry(imported, plan)


def to_tensor(name: str, v: Any) -> torch.Tensor:
    if isinstance(v, torch.Tensor):
        return v
    a = np.asarray(v)
    if a.dtype.name == "bfloat16":  # ml_dtypes' bfloat16: reinterpret the bits
        return torch.from_numpy(a.view(np.int16).copy()).view(torch.bfloat16)
    if a.dtype.kind not in "biuf" or a.dtype.name in ("uint16", "uint32", "uint64", "float128"):
        raise InputError(f"input {name!r}: kiln cannot hold numpy dtype {a.dtype}")
    return torch.from_numpy(a.copy() if not a.flags.writeable or not a.flags.c_contiguous else a)


def to_numpy(t: torch.Tensor) -> np.ndarray:
    t = t.detach().cpu()
    if t.dtype is torch.bfloat16:
        import ml_dtypes

        return t.view(torch.int16).numpy().view(ml_dtypes.bfloat16)
    return t.numpy()


def import_onnx(model_or_path: Any, options: CompileOptions | None = None, *, dump_dir: str | None = None) -> OnnxModel:
    """Import an ONNX model (a path or a loaded `onnx.ModelProto`) into kiln.

    From a path, external data is read only from inside the model's directory (a location
    escaping it is refused before anything is read). A ModelProto whose external data is not
    loaded is refused too: pass its path instead.
    """
    import onnx

    from ..frontend.onnx_import import load_model

    if isinstance(model_or_path, (str, os.PathLike)):
        model = load_model(model_or_path)
    elif isinstance(model_or_path, onnx.ModelProto):
        model = model_or_path
    else:
        raise TypeError(f"kiln.import_onnx takes a path or an onnx.ModelProto, got {type(model_or_path).__name__}")
    return OnnxModel(model, options, dump_dir)


__all__ = ["OnnxImportError", "OnnxModel", "import_onnx", "to_numpy", "to_tensor"]
