"""kiln: a graph compiler for PyTorch inference, LLMs first.

Public API (stable): `kiln.compile`, `kiln.CompileOptions`, `torch.compile(model, backend="kiln")`,
`kiln.LLM(...).generate(prompts, kiln.SamplingParams(...))`.
Compression analysis (loaded on first use, report/): `kiln.sensitivity_scan`, `kiln.propose_plan`,
`kiln.compression_report`; `kiln.parallel_report` (per-rank graphs and communication of a
tensor- or pipeline-parallel compile).
ONNX export (loaded on first use, backends/onnx/): `kiln.export_onnx`.
"""

from .api import CompiledModule, CompileStats, compile
from .errors import ConversionError, InputError, KilnError, TraceError, UnsupportedOpsError
from .models.distill import distill
from .options import CompileOptions
from .runtime.engine import CompletionOutput, RequestOutput
from .runtime.llm import LLM
from .runtime.sampling import SamplingParams


def _register_dynamo_backend() -> None:
    from .frontend.dynamo import register

    register()


_register_dynamo_backend()

# Loaded on first use: kiln.report pulls in matplotlib, which `import kiln` should not pay for.
_LAZY = {"sensitivity_scan": "sensitivity", "propose_plan": "sensitivity", "compression_report": "compression",
         "parallel_report": "parallel"}


def __getattr__(name: str) -> object:
    if name in ("import_onnx", "OnnxModel"):  # ONNX import, loaded on first use (runtime/onnx_model.py)
        from .runtime import onnx_model

        return getattr(onnx_model, name)
    if name == "export_onnx":  # loaded on first use: it imports onnx
        from .backends.onnx.export import export_onnx

        return export_onnx
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(f".report.{_LAZY[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

__all__ = [
    "LLM", "CompileOptions", "CompileStats", "CompiledModule", "CompletionOutput", "ConversionError", "InputError",
    "KilnError", "RequestOutput", "SamplingParams", "TraceError", "UnsupportedOpsError", "compile", "compression_report", "distill", "export_onnx", "import_onnx",
    "parallel_report", "propose_plan", "sensitivity_scan",
]
__version__ = "0.1.0"
