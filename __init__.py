"""kiln: a graph compiler for PyTorch inference, LLMs first.

Public API (stable): `kiln.compile`, `kiln.CompileOptions`, `torch.compile(model, backend="kiln")`,
`kiln.LLM(...).generate(prompts, kiln.SamplingParams(...))`.
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

__all__ = [
    "LLM", "CompileOptions", "CompileStats", "CompiledModule", "CompletionOutput", "ConversionError", "InputError",
    "KilnError", "RequestOutput", "SamplingParams", "TraceError", "UnsupportedOpsError", "compile", "distill",
]
__version__ = "0.1.0"
