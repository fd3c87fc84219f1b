"""kiln: a graph compiler for PyTorch inference, LLMs first.

Public API (stable): `kiln.compile`, `kiln.CompileOptions`, `torch.compile(model, backend="kiln")`.
"""

from .api import CompiledModule, CompileStats, compile
from .errors import ConversionError, InputError, KilnError, TraceError, UnsupportedOpsError
from .options import CompileOptions


def _register_dynamo_backend() -> None:
    from .frontend.dynamo import register

    register()


_register_dynamo_backend()

__all__ = [
    "CompileOptions", "CompileStats", "CompiledModule", "ConversionError", "InputError", "KilnError",
    "TraceError", "UnsupportedOpsError", "compile",
]
__version__ = "0.1.0"
