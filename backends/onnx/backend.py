"""kiln as an ONNX backend (`onnx.backend.base.Backend`): models are imported into kiln IR
(`frontend/onnx_import.py`), run through kiln's pass pipeline and executed by the reference plan.

    rep = KilnBackend.prepare(model)          # or kiln.backends.onnx.backend.prepare(model)
    outputs = rep.run([x, y])                 # numpy arrays in, a tuple of numpy arrays out
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np
import onnx
from onnx.backend.base import Backend, BackendRep, namedtupledict

from ...options import CompileOptions
from ...runtime.onnx_model import OnnxModel, to_numpy, to_tensor


class KilnBackendRep(BackendRep):
    """A prepared model: `run` takes inputs in graph-input order (or a name -> array dict)."""

    def __init__(self, model: OnnxModel, device: str = "CPU"):
        self.model = model
        self.device = "cuda" if device.upper().startswith("CUDA") else "cpu"

    def run(self, inputs: Any, **kwargs: Any) -> tuple:
        if isinstance(inputs, dict):
            outs = self.model(**{k: self._tensor(k, v) for k, v in inputs.items()})
        else:
            xs = inputs if isinstance(inputs, (list, tuple)) else [inputs]
            outs = self.model(*(self._tensor(n, x) for n, x in zip(self.model.input_names, xs)))
        return namedtupledict("Outputs", _field_names(self.model.output_names))(*(to_numpy(o) for o in outs))


    def _tensor(self, name: str, x: Any) -> Any:
        return to_tensor(name, x).to(self.device)


def _field_names(names: Sequence[str]) -> list[str]:
    # namedtuple fields must be identifiers; ONNX names need not be (onnx's own runners do the same)
    return [n if n.isidentifier() and not n.startswith("_") else f"output_{i}" for i, n in enumerate(names)]


class KilnBackend(Backend):
    @classmethod
    def is_compatible(cls, model: onnx.ModelProto, device: str = "CPU", **kwargs: Any) -> bool:
        return cls.supports_device(device)

    @classmethod
    def prepare(cls, model: onnx.ModelProto, device: str = "CPU", **kwargs: Any) -> KilnBackendRep:
        super().prepare(model, device, **kwargs)
        options = kwargs.get("options") or CompileOptions()
        return KilnBackendRep(OnnxModel(model, options), device)

    @classmethod
    def run_model(cls, model: onnx.ModelProto, inputs: Any, device: str = "CPU", **kwargs: Any) -> tuple:
        return cls.prepare(model, device, **kwargs).run(inputs)

    @classmethod
    def run_node(cls, node: onnx.NodeProto, inputs: Any, device: str = "CPU", outputs_info: Any = None, **kwargs: Any) -> tuple:
        """Run one node: it becomes a one-node model whose inputs are typed by the given arrays."""
        from onnx import helper

        super().run_node(node, inputs, device=device, outputs_info=outputs_info)
        arrays = [np.asarray(x) for x in (inputs.values() if isinstance(inputs, dict) else inputs)]
        names = [n for n in node.input if n]
        graph_inputs = [
            helper.make_tensor_value_info(n, helper.np_dtype_to_tensor_dtype(a.dtype), list(a.shape))
            for n, a in zip(names, arrays)
        ]
        graph_outputs = [helper.make_empty_tensor_value_info(n) for n in node.output if n]
        graph = helper.make_graph([node], "kiln_run_node", graph_inputs, graph_outputs)
        opset = kwargs.get("opset_version", onnx.defs.onnx_opset_version())
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
        return cls.prepare(model, device).run(arrays)

    @classmethod
    def supports_device(cls, device: str) -> bool:
        import torch

        d = device.upper()
        return d == "CPU" or (d == "CUDA" and torch.cuda.is_available())


prepare = KilnBackend.prepare
run_model = KilnBackend.run_model
run_node = KilnBackend.run_node
supports_device = KilnBackend.supports_device

__all__ = ["KilnBackend", "KilnBackendRep", "prepare", "run_model", "run_node", "supports_device"]
