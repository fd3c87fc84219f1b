"""`kiln.LLM`: load (or take) a decoder, compile it into a paged-KV plan, generate.

    llm = kiln.LLM("tiny-llama")                    # a built-in, a local HF directory or an nn.Module
    outs = llm.generate(["Hello"], kiln.SamplingParams(max_tokens=32, temperature=0.0))
    for delta in llm.stream("Hello", kiln.SamplingParams(max_tokens=32)): print(delta, end="")

No per-architecture model code: the model is traced once and `insert_kv_cache` makes it paged.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING, Any

import torch

from ..errors import KilnError
from ..options import CompileOptions

if TYPE_CHECKING:
    from ..passes.quantize import QuantScheme
from .engine import Engine, RequestOutput
from .kv_cache import KVCacheConfig, size_kv_cache
from .model_runner import PagedModelRunner
from .sampling import SamplingParams

Prompt = str | Sequence[int]


class LLM:
    """A generation engine over one model (continuous batching, paged KV, prefix caching)."""

    def __init__(
        self, model: Any, *, dtype: torch.dtype | str | None = None, device: str | torch.device | None = None,
        max_model_len: int | None = None, kv_cache_memory: float | int | None = None, quantization: "str | QuantScheme | None" = None,
        tensor_parallel_size: int = 1, pipeline_parallel_size: int = 1, tokenizer: Any = None, block_size: int = 16, enable_prefix_caching: bool = True,
        max_num_batched_tokens: int = 2048, max_num_seqs: int = 64, allow_pickle: bool = False,
        options: CompileOptions | None = None, distributed_executor_backend: str | None = None,
        ray_address: str | None = None, ray_placement_strategy: str = "PACK", pipeline_microbatches: int | None = None,
    ):
        # quantize_weights: "int8", "int4", "w8a8", "fp8" or a QuantScheme, whose calibration
        # examples are token-id sequences or prompt strings (tokenized here), one prefill each
        if quantization is not None:
            import dataclasses

            options = dataclasses.replace(options or CompileOptions(), quantization=quantization)
        for name, size in (("tensor_parallel_size", tensor_parallel_size), ("pipeline_parallel_size", pipeline_parallel_size)):
            if not isinstance(size, int) or isinstance(size, bool) or size < 1:
                raise ValueError(f"{name} must be an int >= 1, got {size!r}")
        # pipeline modes: each step's chunks run as up to this many micro-batches in flight (None:
        # min(stages, sequences in the step); 1: the whole step at once, stages taking turns)
        from .tp import check_microbatches

        check_microbatches(pipeline_microbatches)
        if pipeline_microbatches not in (None, 1) and pipeline_parallel_size == 1:
            raise ValueError(f"pipeline_microbatches={pipeline_microbatches} needs pipeline_parallel_size > 1 "
                             "(micro-batches flow between pipeline stages)")
        # one group serves every layout: rank 0 drives; "tensor" ranks hold shards, "pipeline" ranks
        # stages, "hybrid" ranks shard r % T of stage r // T (T = tensor_parallel_size)
        world = tensor_parallel_size * pipeline_parallel_size
        mode = ("hybrid" if tensor_parallel_size > 1 else "pipeline") if pipeline_parallel_size > 1 else "tensor"
        self._tp = None
        # workers of a parallel run: local processes ("mp", the default) or one Ray actor per
        # rank ("ray": ray_address "auto" / "ip:port", else this process's or a private runtime)
        if distributed_executor_backend not in (None, "mp", "ray"):
            raise ValueError(f"distributed_executor_backend must be None, 'mp' or 'ray', got {distributed_executor_backend!r}")
        use_ray = distributed_executor_backend == "ray" and world > 1
        if use_ray:
            from .tp_ray import import_ray

            import_ray()  # a clear ImportError before the model is loaded
        dev = torch.device(device) if device is not None else torch.device("cuda" if torch.cuda.is_available() else "cpu")
        if dev.type == "cuda" and dev.index is None:  # plans guard the exact device inputs live on
            dev = torch.device("cuda", torch.cuda.current_device())
        self.device = dev
        if isinstance(model, torch.nn.Module):
            module = model.eval()
            if dtype is not None:
                module = module.to(getattr(torch, dtype) if isinstance(dtype, str) else dtype)
            module = module.to(dev)
            config, self.tokenizer, self.chat_template, self.name = getattr(module, "config", None), tokenizer, None, type(module).__name__
        else:
            from .loader import load_model

            loaded = load_model(model, dtype=dtype, device=dev, allow_pickle=allow_pickle)
            module, config, self.name = loaded.model, loaded.config, loaded.name
            self.tokenizer = tokenizer if tokenizer is not None else loaded.tokenizer
            self.chat_template = loaded.chat_template
            self._loaded = loaded
        limit = getattr(config, "max_position_embeddings", None) or getattr(config, "n_positions", None) or 2048
        # Sliding-window attention is not implemented: within the window it equals full causal
        # attention, so serve at most `window` tokens rather than be silently wrong beyond it.
        window = getattr(config, "sliding_window", None) if getattr(config, "use_sliding_window", True) else None
        if isinstance(window, int) and window < limit:
            if max_model_len is not None and max_model_len > window:
                raise KilnError(f"the model uses sliding-window attention ({window} tokens), which kiln does not implement yet; use max_model_len <= {window}")
            limit = window
        self.max_model_len = int(max_model_len or limit)
        if self.max_model_len > limit:
            raise ValueError(f"max_model_len={self.max_model_len} exceeds the model's {limit} positions")
        budget = kv_cache_memory

        def blocks(cfg: KVCacheConfig) -> int:
            mem = budget
            if mem is None and dev.type != "cuda":  # enough for max_num_seqs full-length sequences, at most 1 GiB
                mem = min(1 << 30, cfg.bytes_per_token * self.max_model_len * max(4, min(max_num_seqs, 16)))
            sizing = size_kv_cache(cfg, mem)
            self.kv_sizing = sizing
            # never more than every sequence at full length needs, twice over (the rest would
            # only feed the prefix cache): small models do not take a GPU's whole memory
            useful = 2 * max_num_seqs * -(-self.max_model_len // cfg.block_size)
            return min(sizing.num_blocks, max(useful, 1))

        options = self._tokenize_calibration(options)
        if world > 1:  # spawn the other ranks; rank 0 (this process) drives (and is stage 0)
            from .tp import TPGroup

            launcher = None
            if use_ray:
                from .tp_ray import RayActors

                launcher = RayActors(dev, address=ray_address, strategy=ray_placement_strategy, local_cpus=world)
            spec = module if isinstance(model, torch.nn.Module) else model
            self._tp = TPGroup(world, spec, device=dev, dtype=dtype, block_size=block_size,
                               max_model_len=self.max_model_len, options=options, allow_pickle=allow_pickle,
                               launcher=launcher, mode=mode, tensor_size=tensor_parallel_size)
            options, blocks = self._tp.options(options), self._tp.pool_size(blocks)
        try:
            with torch.no_grad():
                self.runner = PagedModelRunner(
                    module, block_size=block_size, device=dev, num_blocks=blocks, options=options, max_model_len=self.max_model_len,
                )
        except BaseException:
            self.close()
            raise
        if self._tp is not None:
            from .tp import TPRunner

            self.runner = TPRunner(self.runner, self._tp, microbatches=pipeline_microbatches)
        eos = getattr(config, "eos_token_id", None)
        if eos is None and self.tokenizer is not None:
            eos = self.tokenizer.eos_token_id
        eos_ids = tuple(eos) if isinstance(eos, (list, tuple)) else (() if eos is None else (int(eos),))
        self.engine = Engine(
            self.runner, tokenizer=self.tokenizer, eos_token_ids=eos_ids, max_model_len=self.max_model_len,
            enable_prefix_caching=enable_prefix_caching, max_num_batched_tokens=max_num_batched_tokens, max_num_seqs=max_num_seqs,
        )

    def _tokenize_calibration(self, options: CompileOptions | None) -> CompileOptions | None:
        """Options whose quantization scheme's string calibration examples are token ids."""
        scheme = options.quantization if options is not None else None
        if scheme is None or not any(isinstance(ex, str) for ex in scheme.calibration):
            return options
        import dataclasses

        examples = tuple(self.tokenize(ex) if isinstance(ex, str) else ex for ex in scheme.calibration)
        return dataclasses.replace(options, quantization=dataclasses.replace(scheme, calibration=examples))

    def close(self) -> None:
        """Stop tensor- or pipeline-parallel workers (if any). The engine is unusable afterwards."""
        if getattr(self, "_tp", None) is not None:
            runner = getattr(self, "runner", None)
            if runner is not None and not self._tp.closed:
                runner.release_graphs()  # a live graph holding NCCL calls blocks the group's teardown
            self._tp.close()

    def __enter__(self) -> "LLM":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    # ---- text <-> ids -----------------------------------------------------------------------
    def tokenize(self, text: str) -> list[int]:
        if self.tokenizer is None:
            raise KilnError(f"model {self.name!r} has no tokenizer; pass token id lists as prompts")
        return list(self.tokenizer.encode(text))

    def detokenize(self, ids: Sequence[int], skip_special_tokens: bool = True) -> str:
        if self.tokenizer is None:
            raise KilnError(f"model {self.name!r} has no tokenizer")
        return self.tokenizer.decode(list(ids), skip_special_tokens=skip_special_tokens)

    def _ids(self, prompt: Prompt) -> tuple[list[int], str | None]:
        if isinstance(prompt, str):
            return self.tokenize(prompt), prompt
        ids = list(prompt)
        if not all(isinstance(t, int) and not isinstance(t, bool) for t in ids):
            raise TypeError("a prompt is a string or a list of int token ids")
        return ids, None

    # ---- generation -------------------------------------------------------------------------
    def generate(self, prompts: Prompt | Sequence[Prompt], params: SamplingParams | Sequence[SamplingParams] | None = None) -> list[RequestOutput]:
        """Generate for every prompt (batched continuously); outputs in prompt order."""
        single = isinstance(prompts, str) or (isinstance(prompts, Sequence) and prompts and isinstance(prompts[0], int))
        plist = [prompts] if single else list(prompts)  # type: ignore[list-item]
        params = params if params is not None else SamplingParams()
        plist_params = list(params) if isinstance(params, Sequence) else [params] * len(plist)
        if len(plist_params) != len(plist):
            raise ValueError(f"{len(plist)} prompts but {len(plist_params)} SamplingParams")
        encoded = [self._ids(p) for p in plist]
        ids = []
        try:
            for (tok, text), sp in zip(encoded, plist_params):
                ids.append(self.engine.add_request(tok, sp, prompt=text))
            while not all(self.engine.is_finished(r) for r in ids):
                self.engine.step()
            return [self.engine.output(r) for r in ids]
        finally:
            for r in ids:
                self.engine.abort(r)
                self.engine.release(r)

    def stream(self, prompt: Prompt, params: SamplingParams | None = None) -> Iterator[str]:
        """Yield text deltas of one prompt's first sample as they are generated (other requests
        in the engine keep running alongside)."""
        params = params if params is not None else SamplingParams()
        tok, text = self._ids(prompt)
        rid = self.engine.add_request(tok, params, prompt=text)
        seq = self.engine.requests[rid].seqs[0]
        try:
            while True:
                done = self.engine.is_finished(rid)
                delta = self.engine.stream_delta(seq)
                if delta:
                    yield delta
                if done:
                    return
                self.engine.step()
        finally:
            self.engine.abort(rid)
            self.engine.release(rid)

    def chat(self, messages: list[dict[str, str]], params: SamplingParams | None = None) -> RequestOutput:
        """One chat turn rendered by the model's chat template."""
        if self.tokenizer is None or not getattr(self.tokenizer, "chat_template", None):
            raise KilnError(f"model {self.name!r} has no chat template; use generate() with plain prompts")
        ids = list(self.tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True, return_dict=False))
        return self.generate([ids], params)[0]

    def chat_session(self, messages: list[dict[str, str]] | None = None) -> ChatSession:
        """A multi-turn chat whose context stays in the KV cache between turns (see ChatSession)."""
        if self.tokenizer is None or not getattr(self.tokenizer, "chat_template", None):
            raise KilnError(f"model {self.name!r} has no chat template; use generate() with plain prompts")
        return ChatSession(self, list(messages or []))

    @property
    def stats(self) -> dict:
        a = self.engine.alloc
        return {
            "steps": self.engine.steps, "num_blocks": a.num_blocks, "block_size": a.block_size,
            "prefix_hit_rate": a.stats.prefix_hit_rate, "preemptions": a.stats.preemptions,
            "compile_seconds": self.runner.info.seconds,
            "cuda_graphs": getattr(self.runner.run, "captures", 0),
            "capture_seconds": round(getattr(self.runner.run, "capture_seconds", 0.0), 3),
            "capture_failure": getattr(self.runner.run, "failure", None),
        }


class ChatSession:
    """Turns of one conversation. The session keeps the exact token ids the cache holds (every
    prompt and every generated token, not a re-tokenisation of the reply) and appends only the
    template's text for each new turn, so the next turn's prompt extends the previous one token
    for token. Between turns the conversation's KV blocks stay pinned in the engine (a pin is
    released only under memory pressure, oldest first, or by `close()`), so a turn computes only
    its new tokens; after a released pin the prefix cache still serves every full block.
    `last_cached_tokens` is how many prompt tokens the last turn did not compute.
    """

    def __init__(self, llm: LLM, messages: list[dict[str, str]]):
        self.llm = llm
        self.messages = messages
        self.history: list[int] = []  # token ids of everything said so far, as the cache saw them
        self.last_cached_tokens = 0
        self._pin: int | None = None  # the engine pin holding this conversation's KV cache

    def close(self) -> None:
        """Release the conversation's pinned KV cache (also released under memory pressure)."""
        if self._pin is not None:
            self.llm.engine.unpin(self._pin)
            self._pin = None

    def send(self, content: str, params: SamplingParams | None = None) -> str:
        """Add a user turn, generate the assistant's reply, return its text."""
        tok = self.llm.tokenizer
        before = self.messages
        self.messages = before + [{"role": "user", "content": content}]
        full = tok.apply_chat_template(self.messages, add_generation_prompt=True, tokenize=False)
        if not self.history:
            ids = list(tok.apply_chat_template(self.messages, add_generation_prompt=True, tokenize=True, return_dict=False))
        else:
            said = tok.apply_chat_template(before, add_generation_prompt=False, tokenize=False)
            if not full.startswith(said):  # a template that rewrites earlier turns: start over
                ids = list(tok.apply_chat_template(self.messages, add_generation_prompt=True, tokenize=True, return_dict=False))
            else:
                ids = self.history + list(tok.encode(full[len(said):], add_special_tokens=False))
        eng = self.llm.engine
        rid = eng.add_request(ids, params if params is not None else SamplingParams(), keep=True, resume=self._pin)
        self._pin = None
        try:
            while not eng.is_finished(rid):
                eng.step()
            res = eng.output(rid)
            out = res.outputs[0]
            self.last_cached_tokens = eng.requests[rid].seqs[0].reused
            self._pin = eng.pinned(rid)
        finally:
            eng.abort(rid)
            eng.release(rid)
        reply = out.token_ids
        eos = self.llm.engine.eos
        if not reply or reply[-1] not in eos:  # close the turn as the template would
            reply = reply + list(tok.encode(tok.eos_token, add_special_tokens=False)) if tok.eos_token else reply
        self.history = ids + reply
        self.messages = self.messages + [{"role": "assistant", "content": out.text}]
        return out.text
