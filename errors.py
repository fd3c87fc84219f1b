"""kiln's typed errors: each names the input, op or node at fault and says what to do."""

from __future__ import annotations


class KilnError(Exception):
    """Base class of every error kiln raises on purpose."""


class UnsupportedOpsError(KilnError):
    """strict=True and the model uses ATen ops kiln has no declaration for."""

    def __init__(self, entries: list[tuple[str, str, str]]):
        self.entries = entries  # (aten op, node name, source)
        lines = [f"  {op}  (node {node}{', at ' + src if src else ''})" for op, node, src in entries]
        super().__init__(
            f"strict mode: {len(entries)} node(s) use ATen ops without a kiln declaration:\n"
            + "\n".join(lines)
            + "\nDeclare them in kiln/ir/opset and add converters in kiln/frontend/converters.py,"
            " or compile with strict=False to run them through PyTorch."
        )


class TraceError(KilnError):
    """The model could not be captured as a graph."""

    def __init__(self, reason: str, source: str = ""):
        self.reason, self.source = reason, source
        super().__init__(f"kiln could not trace the model: {reason}" + (f"\n  at {source}" if source else ""))


class InputError(KilnError, TypeError):
    """A call's inputs do not match what the compiled function was built for."""


class ConversionError(KilnError):
    """An FX node could not be converted into kiln IR (an internal limitation; names the node)."""


class CheckpointError(KilnError):
    """A model checkpoint could not be loaded: names the file or tensor at fault and what to do."""


class KVCacheError(KilnError):
    """The paged KV cache cannot hold what was asked of it; the message gives the numbers."""


class OutOfBlocksError(KVCacheError):
    """No free or evictable KV block is left. The scheduler checks `can_append` first and preempts instead."""


class RequestTooLargeError(KVCacheError):
    """A request's prompt + max_tokens can never fit the whole KV-cache pool: rejected at admission."""

    def __init__(self, tokens_needed: int, blocks_needed: int, num_blocks: int, block_size: int, detail: str = ""):
        self.tokens_needed, self.blocks_needed = tokens_needed, blocks_needed
        self.num_blocks, self.block_size = num_blocks, block_size
        super().__init__(
            f"request needs {tokens_needed} tokens of KV cache{' (' + detail + ')' if detail else ''} = {blocks_needed}"
            f" blocks of {block_size} tokens, but the whole pool has {num_blocks} blocks"
            f" ({num_blocks * block_size} tokens). Raise kv_cache_memory, or lower max_model_len / max_tokens."
        )


class QuantizationError(KilnError):
    """A quantization scheme cannot be applied: missing or unusable calibration data, or a format
    this PyTorch build lacks. Names the layer or example at fault and what to do."""


class OnnxImportError(KilnError):
    """An ONNX model cannot be imported: names the ONNX op type and node (or the file) at fault."""

    def __init__(self, message: str, op_type: str = "", node: str = ""):
        self.op_type, self.node = op_type, node
        where = f"{op_type} node {node!r}: " if op_type else ""
        super().__init__(where + message)


class UnsafeExternalDataError(OnnxImportError):
    """An ONNX model's external-data location points outside the model's directory: refused
    before any data is read."""


class TensorParallelError(KilnError):
    """Tensor parallelism failed: a graph that cannot be split across ranks (names the node at
    fault and why: heads not divisible by the rank count, ...), or a worker rank that died or
    could not join the group (names the rank, with its traceback when it sent one)."""

    def __init__(self, message: str, node: str = ""):
        self.node = node
        super().__init__((f"tensor parallel: node {node}: " if node else "tensor parallel: ") + message)


class PipelineParallelError(KilnError):
    """Pipeline parallelism failed: a graph that cannot be cut into the requested stages (fewer
    layers than stages, no layer structure in the module paths), bad stage options, or a stage
    rank of `kiln.LLM(pipeline_parallel_size=N)` that died or failed (names the rank)."""

    def __init__(self, message: str):
        super().__init__(f"pipeline parallel: {message}")


class TensorPipelineParallelError(TensorParallelError, PipelineParallelError):
    """A rank of `kiln.LLM(tensor_parallel_size=T, pipeline_parallel_size=P)` (both > 1) died or
    failed (names the rank); catchable as either TensorParallelError or PipelineParallelError."""

    def __init__(self, message: str):
        self.node = ""
        KilnError.__init__(self, f"tensor x pipeline parallel: {message}")


class ExportError(KilnError):
    """A kiln graph cannot be exported (to ONNX): names the op and the node, and why."""

    def __init__(self, op: str, node: str, reason: str = ""):
        self.op, self.node, self.reason = op, node, reason
        super().__init__(
            f"ONNX export: op {op!r} at {node} " + (f"cannot be exported: {reason}" if reason else "has no ONNX mapping")
            + ". Export after an earlier pass (after_pass=...), or disable the pass that introduced it."
        )
