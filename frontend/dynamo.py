"""The torch.compile backend: `torch.compile(model, backend="kiln")`.

Dynamo captures each graph-break-free region, AOTAutograd lowers it to functional ATen with
PyTorch's core decompositions (input mutations kept as copy_ nodes), and kiln converts and plans
it. Graph breaks stay in Python exactly as with any torch.compile backend. Registered both on
`import kiln` and through the `torch_dynamo_backends` entry point.
"""

from __future__ import annotations

import re
import warnings
from collections import Counter
from typing import Any

import torch

from ..options import CompileOptions


def make_backend(options: CompileOptions | None = None, strict: bool = False, stats: Any = None) -> Any:
    """A torch.compile backend compiling every captured region with kiln."""
    from torch._decomp import core_aten_decompositions
    from torch._dynamo.backends.common import aot_autograd

    opts = options or CompileOptions()

    def backend(gm: torch.fx.GraphModule, example_inputs: list, **kwargs: Any) -> Any:
        consts = _module_state(gm, example_inputs)

        def fw_compiler(fw_gm: torch.fx.GraphModule, fw_inputs: list) -> Any:
            return _compile_region(fw_gm, fw_inputs, opts, strict, stats, consts)

        lowered = aot_autograd(fw_compiler=fw_compiler, decompositions=core_aten_decompositions(), keep_inference_input_mutations=True)
        return lowered(gm, example_inputs, **kwargs)

    return backend


_STATE_KEY = re.compile(r"_(?:modules|parameters|buffers)\['([^']+)'\]")


def _module_state(gm: torch.fx.GraphModule, example_inputs: list) -> list[tuple[str, torch.Tensor] | None]:
    """Per Dynamo graph input: (fully qualified name, tensor) for parameters and buffers, else None.

    Dynamo passes module state as graph inputs; kiln makes them named constants (the same
    tensors, so in-place updates stay visible) so passes can fold, quantize and shard them.
    """
    out: list[tuple[str, torch.Tensor] | None] = []
    phs = [n for n in gm.graph.nodes if n.op == "placeholder"]
    for ph, ex in zip(phs, example_inputs):
        source = getattr(ph.meta.get("grapharg"), "source", None)
        name = source.name if source is not None else ""
        name = name() if callable(name) else name
        keys = _STATE_KEY.findall(name)
        if isinstance(ex, torch.Tensor) and keys and ("_parameters[" in name or "_buffers[" in name):
            out.append((".".join(keys), ex))
        else:
            out.append(None)
    return out


def _compile_region(gm: torch.fx.GraphModule, example_inputs: list, opts: CompileOptions, strict: bool, stats: Any, consts: list | None = None) -> Any:
    from torch._functorch.aot_autograd import make_boxed_func

    from ..errors import ConversionError, UnsupportedOpsError
    from ..ir import verify
    from ..runtime.plan import build_plan
    from .fx_import import InputSpec, OutputSpec, import_fx

    phs = [n for n in gm.graph.nodes if n.op == "placeholder"]
    if consts is None or len(consts) != len(phs):  # e.g. a backward graph: no state mapping
        consts = [None] * len(phs)
    inputs = [
        InputSpec("const", c[0], c[1]) if c is not None
        else InputSpec("sym" if isinstance(n.meta.get("val"), torch.SymInt) else "input", f"arg{i}")
        for i, (n, c) in enumerate(zip(phs, consts))
    ]
    keep = [i for i, c in enumerate(consts) if c is None]
    out_node = next(n for n in gm.graph.nodes if n.op == "output")
    results = out_node.args[0]
    n_out = len(results) if isinstance(results, (tuple, list)) else 1
    try:
        imported = import_fx(gm, inputs, [OutputSpec("output")] * n_out)
    except ConversionError as e:
        if strict:
            raise
        warnings.warn(f"kiln: a captured region runs eagerly in PyTorch: {e}", stacklevel=2)
        return make_boxed_func(gm.forward)
    counts = Counter(op for op, _, _ in imported.opaque)
    if counts and strict:
        raise UnsupportedOpsError(imported.opaque)
    if counts:
        listing = ", ".join(f"{op} x{n}" for op, n in counts.most_common())
        warnings.warn(f"kiln: {sum(counts.values())} node(s) run through PyTorch without kiln support: {listing}", stacklevel=2)
    if opts.verify:
        verify(imported.graph)
    device = next((x.device for x in example_inputs if isinstance(x, torch.Tensor)), None)
    plan = build_plan(imported.graph, device)
    if stats is not None:
        stats.traces += 1
        stats.graphs.append(imported.graph)
        for op, n in counts.items():
            stats.opaque_ops[op] = stats.opaque_ops.get(op, 0) + n
    fn = plan.fn
    if len(keep) == len(phs):

        def run(args: list) -> Any:
            return fn(*args)
    else:

        def run(args: list) -> Any:
            return fn(*[args[i] for i in keep])

    run._boxed_call = True  # type: ignore[attr-defined]  # AOTAutograd passes one list
    return run


def kiln_backend(gm: torch.fx.GraphModule, example_inputs: list, **kwargs: Any) -> Any:
    """The backend registered as "kiln" (default options)."""
    return make_backend()(gm, example_inputs, **kwargs)


def register() -> None:
    from torch._dynamo import list_backends, register_backend

    if "kiln" not in list_backends(exclude_tags=()):
        register_backend(name="kiln")(kiln_backend)
