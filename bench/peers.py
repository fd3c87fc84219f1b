"""Peer baselines for LLM decode benchmarks: what kiln is compared against, re-measured in the same run.

* `hf_eager_generate`: HF `generate`, greedy, EOS ignored, eager dynamic cache, batched with left padding.
* `hf_static_compiled_generate`: HF `generate` with `cache_implementation="static"` and the decode forward
  under `torch.compile(mode="reduce-overhead")` (the recipe HF documents), batch 1.
* `StaticKVLoop`: the "gpt-fast recipe" written from scratch: a minimal functional Llama decoder built from an
  HF `LlamaForCausalLM` (Mistral / Qwen2 layouts too), preallocated static KV cache, fused qkv and gate|up
  weights, a decode step with greedy argmax inside `torch.compile(mode="reduce-overhead", fullgraph=True)`,
  optional int8 weight-only quantization with the dequantization left to PyTorch.

All timings synchronize CUDA around `time.perf_counter()` and exclude warm-up unless named `first_call`.
"""

from __future__ import annotations

import copy
import time

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["hf_eager_generate", "hf_static_compiled_generate", "StaticKVLoop"]


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _greedy_config(model: nn.Module, max_new: int, **extra):  # noqa: ANN202 (a transformers.GenerationConfig)
    """The model's generation config made greedy, fixed-length (EOS ignored: `eos_token_id=None`)."""
    gc = copy.deepcopy(model.generation_config)
    pad = gc.pad_token_id if gc.pad_token_id is not None else getattr(model.config, "pad_token_id", None)
    gc.pad_token_id = 0 if pad is None else pad
    gc.eos_token_id = None
    gc.do_sample, gc.num_beams, gc.max_new_tokens, gc.min_new_tokens, gc.max_length = False, 1, max_new, None, None
    for k, v in extra.items():
        setattr(gc, k, v)
    return gc


# ---------------------------------------------------------------------------------------------------------------
# HF generate, eager
# ---------------------------------------------------------------------------------------------------------------

@torch.no_grad()
def hf_eager_generate(model: nn.Module, prompts: list[list[int]], max_new: int | list[int], batch_size: int = 32,
                      warmup: bool = True) -> tuple[list[list[int]], float]:
    """Greedy HF `generate` (eager, dynamic cache) over many requests; returns (new tokens per request, seconds).

    Batching, as a sensible HF user does it: `generate` cannot retire a row early when EOS is ignored, so
    every row of a batch decodes for the batch's largest `max_new`. Requests are therefore sorted by
    (max_new, prompt length), descending, and run `batch_size` at a time: neighbours have similar output
    lengths (few wasted decode steps) and similar prompt lengths (little left padding). Each batch is
    left-padded with an attention mask and generates `max(max_new of its rows)` tokens; each row is then
    truncated to its own `max_new`. Outputs come back in request order. Seconds cover all batches (the
    optional warm-up, a 2-token generate of the first batch, is not timed). Tokens generated past a row's
    `max_new` are wasted work and count against HF, as they would for a real user.
    """
    news = [max_new] * len(prompts) if isinstance(max_new, int) else list(max_new)
    assert len(news) == len(prompts)
    device = model.device
    order = sorted(range(len(prompts)), key=lambda i: (news[i], len(prompts[i])), reverse=True)
    batches = [order[i:i + batch_size] for i in range(0, len(order), batch_size)]
    pad = _greedy_config(model, 1).pad_token_id

    def encode(rows: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
        width = max(len(prompts[i]) for i in rows)
        ids = torch.full((len(rows), width), pad, dtype=torch.long)
        mask = torch.zeros((len(rows), width), dtype=torch.long)
        for r, i in enumerate(rows):
            n = len(prompts[i])
            ids[r, width - n:] = torch.tensor(prompts[i], dtype=torch.long)
            mask[r, width - n:] = 1
        return ids.to(device), mask.to(device)

    encoded = [encode(rows) for rows in batches]  # host-side padding is not part of the timed region
    if warmup and batches:
        ids, mask = encoded[0]
        model.generate(input_ids=ids, attention_mask=mask, generation_config=_greedy_config(model, 2))
    outs: list[list[int]] = [[] for _ in prompts]
    _sync(device)
    t0 = time.perf_counter()
    results = []
    for rows, (ids, mask) in zip(batches, encoded):
        n = max(news[i] for i in rows)
        seq = model.generate(input_ids=ids, attention_mask=mask, generation_config=_greedy_config(model, n))
        results.append((rows, seq[:, ids.shape[1]:]))
    _sync(device)
    seconds = time.perf_counter() - t0
    for rows, new in results:
        new = new.tolist()
        for r, i in enumerate(rows):
            outs[i] = new[r][:news[i]]
    return outs, seconds


# ---------------------------------------------------------------------------------------------------------------
# HF generate, static cache + torch.compile
# ---------------------------------------------------------------------------------------------------------------

@torch.no_grad()
def hf_static_compiled_generate(model: nn.Module, prompt_ids: list[int], max_new: int,
                                fullgraph: bool = True) -> tuple[list[int], float, float]:
    """HF's documented recipe at batch 1: `generate(cache_implementation="static")` with the decode forward
    compiled by `torch.compile(mode="reduce-overhead")`. Returns (new tokens, warm seconds, first-call seconds).

    Recent transformers (4.48+, all of 5.x) compile the decode step themselves once the cache is static; we hand
    them an explicit `CompileConfig(mode="reduce-overhead", fullgraph=...)`. Older versions get the manual
    recipe (`model.forward = torch.compile(model.forward, mode="reduce-overhead", fullgraph=True)`). HF only
    auto-compiles on accelerators: on CPU this runs the static cache eagerly (the tests use that). The first call
    (compilation + CUDA-graph recording) is timed separately; a second untimed call finishes warming up, the
    third is the one reported.
    """
    device = model.device
    ids = torch.tensor([prompt_ids], dtype=torch.long, device=device)
    mask = torch.ones_like(ids)
    extra: dict = {"cache_implementation": "static"}
    if hasattr(model, "_valid_auto_compile_criteria"):
        from transformers import CompileConfig

        extra["compile_config"] = CompileConfig(mode="reduce-overhead", fullgraph=fullgraph)
    elif not hasattr(model, "_kiln_peer_compiled"):
        model.forward = torch.compile(model.forward, mode="reduce-overhead", fullgraph=fullgraph)
        model._kiln_peer_compiled = True
    gc = _greedy_config(model, max_new, **extra)

    def run() -> tuple[torch.Tensor, float]:
        _sync(device)
        t0 = time.perf_counter()
        out = model.generate(input_ids=ids, attention_mask=mask, generation_config=gc)
        _sync(device)
        return out, time.perf_counter() - t0

    _, first = run()
    run()
    out, seconds = run()
    return out[0, ids.shape[1]:].tolist(), seconds, first


# ---------------------------------------------------------------------------------------------------------------
# gpt-fast recipe: static-KV decode loop
# ---------------------------------------------------------------------------------------------------------------

class _Linear(nn.Module):
    """y = x W^T (+ b); with int8, W is int8 per output channel and dequantized by PyTorch: F.linear(x, W.to(dtype)) * s."""

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None = None, int8: bool = False) -> None:
        super().__init__()
        weight = weight.detach()
        if int8:
            w = weight.float()
            scale = w.abs().amax(dim=1).clamp_min(1e-8) / 127.0
            self.register_buffer("weight", (w / scale[:, None]).round().clamp(-128, 127).to(torch.int8))
            self.register_buffer("scale", scale.to(weight.dtype))
        else:
            self.weight = nn.Parameter(weight, requires_grad=False)
            self.scale = None
        self.bias = None if bias is None else nn.Parameter(bias.detach(), requires_grad=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.scale is None:
            y = F.linear(x, self.weight)
        else:
            y = F.linear(x, self.weight.to(dtype=x.dtype)) * self.scale
        return y if self.bias is None else y + self.bias


def _rms_norm(x: torch.Tensor, w: torch.Tensor, eps: float) -> torch.Tensor:
    """HF LlamaRMSNorm exactly: normalize in fp32, cast back, then scale."""
    h = x.float()
    h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + eps)
    return w * h.to(x.dtype)


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


def _cat(*ts: torch.Tensor | None) -> torch.Tensor | None:
    return None if ts[0] is None else torch.cat([t.detach() for t in ts], dim=0)


class _Block(nn.Module):
    """One decoder layer: fused qkv projection, RoPE, static-KV GQA attention, fused gate|up SwiGLU MLP."""

    def __init__(self, hf_layer: nn.Module, cfg, n_heads: int, n_kv: int, head_dim: int, batch: int,  # noqa: ANN001
                 max_len: int, int8: bool) -> None:
        super().__init__()
        at, mlp = hf_layer.self_attn, hf_layer.mlp
        if hasattr(at, "q_norm") or hasattr(at, "k_norm"):
            raise NotImplementedError("q/k norms (Qwen3-style attention) are not supported")
        self.n_heads, self.n_kv, self.head_dim = n_heads, n_kv, head_dim
        self.scaling = float(getattr(at, "scaling", head_dim ** -0.5))
        self.eps = float(cfg.rms_norm_eps)
        self.act = mlp.act_fn
        self.attn_norm = nn.Parameter(hf_layer.input_layernorm.weight.detach(), requires_grad=False)
        self.mlp_norm = nn.Parameter(hf_layer.post_attention_layernorm.weight.detach(), requires_grad=False)
        self.wqkv = _Linear(_cat(at.q_proj.weight, at.k_proj.weight, at.v_proj.weight),
                            _cat(at.q_proj.bias, at.k_proj.bias, at.v_proj.bias), int8)
        self.wo = _Linear(at.o_proj.weight, at.o_proj.bias, int8)
        self.w13 = _Linear(_cat(mlp.gate_proj.weight, mlp.up_proj.weight), None, int8)
        self.w2 = _Linear(mlp.down_proj.weight, None, int8)
        w = self.attn_norm
        self.register_buffer("k_cache", torch.zeros(batch, n_kv, max_len, head_dim, dtype=w.dtype, device=w.device))
        self.register_buffer("v_cache", torch.zeros(batch, n_kv, max_len, head_dim, dtype=w.dtype, device=w.device))

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, mask: torch.Tensor,
                pos: torch.Tensor) -> torch.Tensor:
        B, T, _ = x.shape
        H, KV, D = self.n_heads, self.n_kv, self.head_dim
        q, k, v = self.wqkv(_rms_norm(x, self.attn_norm, self.eps)).split([H * D, KV * D, KV * D], dim=-1)
        q = q.view(B, T, H, D).transpose(1, 2)
        k = k.view(B, T, KV, D).transpose(1, 2)
        v = v.view(B, T, KV, D).transpose(1, 2)
        q = q * cos + _rotate_half(q) * sin  # HF convention: cat(freqs, freqs), rotate_half
        k = k * cos + _rotate_half(k) * sin
        self.k_cache[:, :, pos] = k  # in-place into the static cache (index_put_)
        self.v_cache[:, :, pos] = v
        # GQA without copying K/V: query head h uses KV head h // rep, so fold the `rep` query heads of each KV
        # head into the query-length axis and repeat the mask rows to match.
        rep = H // KV
        qg = q.reshape(B, KV, rep * T, D)
        m = mask.repeat(rep, 1)[None, None]  # [1, 1, rep*T, max_len], True = attend
        o = F.scaled_dot_product_attention(qg, self.k_cache, self.v_cache, attn_mask=m, scale=self.scaling)
        h = x + self.wo(o.reshape(B, H, T, D).transpose(1, 2).reshape(B, T, H * D))
        gate, up = self.w13(_rms_norm(h, self.mlp_norm, self.eps)).chunk(2, dim=-1)
        return h + self.w2(self.act(gate) * up)


class _Decoder(nn.Module):
    """Minimal functional Llama: forward(ids [B, T], pos [T]) -> last-position logits [B, vocab]."""

    def __init__(self, hf_model: nn.Module, batch: int, max_len: int, int8: bool) -> None:
        super().__init__()
        cfg, inner = hf_model.config, hf_model.model
        n_heads, n_kv = cfg.num_attention_heads, getattr(cfg, "num_key_value_heads", None) or cfg.num_attention_heads
        head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // n_heads
        self.eps = float(cfg.rms_norm_eps)
        self.embed = nn.Parameter(inner.embed_tokens.weight.detach(), requires_grad=False)
        self.norm = nn.Parameter(inner.norm.weight.detach(), requires_grad=False)
        self.lm_head = _Linear(hf_model.lm_head.weight, getattr(hf_model.lm_head, "bias", None), int8)
        self.layers = nn.ModuleList(_Block(layer, cfg, n_heads, n_kv, head_dim, batch, max_len, int8)
                                    for layer in inner.layers)
        dev, dtype = self.embed.device, self.embed.dtype
        inv_freq, scaling = _rope(hf_model, head_dim)
        freqs = torch.arange(max_len, dtype=torch.long, device=dev)[:, None].float() * inv_freq.to(dev).float()
        emb = torch.cat((freqs, freqs), dim=-1)
        self.register_buffer("cos", (emb.cos() * scaling).to(dtype))
        self.register_buffer("sin", (emb.sin() * scaling).to(dtype))
        self.register_buffer("causal", torch.tril(torch.ones(max_len, max_len, dtype=torch.bool, device=dev)))

    def forward(self, ids: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
        x = F.embedding(ids, self.embed)
        cos, sin, mask = self.cos[pos], self.sin[pos], self.causal[pos]
        for layer in self.layers:
            x = layer(x, cos, sin, mask, pos)
        return self.lm_head(_rms_norm(x[:, -1], self.norm, self.eps))


def _rope(hf_model: nn.Module, head_dim: int) -> tuple[torch.Tensor, float]:
    """RoPE inverse frequencies: HF's own rotary buffer when present (exactly what HF multiplies by, including
    rope scaling and its dtype), else recomputed from the config's rope_theta."""
    rot = getattr(hf_model.model, "rotary_emb", None)
    if rot is not None and hasattr(rot, "inv_freq"):
        return rot.inv_freq.detach(), float(getattr(rot, "attention_scaling", 1.0))
    cfg = hf_model.config
    theta = (getattr(cfg, "rope_parameters", None) or {}).get("rope_theta") or getattr(cfg, "rope_theta", None) or 10000.0
    return 1.0 / (theta ** (torch.arange(0, head_dim, 2, dtype=torch.float) / head_dim)), 1.0


def _prefill_step(model: _Decoder, ids: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
    return model(ids, pos).argmax(dim=-1, keepdim=True)


def _decode_step(model: _Decoder, tok: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
    return model(tok, pos).argmax(dim=-1, keepdim=True)


class StaticKVLoop:
    """The gpt-fast decode recipe on the weights of an HF Llama-family causal LM (Llama, Mistral, Qwen2).

    Weights are extracted once (q|k|v and gate|up concatenated; embedding reused; with `int8=True` every
    linear, lm_head included, becomes int8 per output channel, dequantized in PyTorch). The KV cache is
    preallocated per layer as [batch, kv_heads, max_len, head_dim] (together [layers, batch, kv_heads, max_len,
    head_dim]); attention always runs over all `max_len` slots with a causal mask row per position, so the
    decode shapes never change. `decode_one` (greedy argmax included) is compiled with
    `torch.compile(mode="reduce-overhead", fullgraph=True)`; `prefill` with `dynamic=True, fullgraph=True`
    (no CUDA graphs, any prompt length). `math_sdpa_decode=True` traces decode with the math SDPA backend,
    as gpt-fast does, letting inductor fuse attention itself. `backend` other than "inductor" (e.g. "aot_eager",
    for quick tracing checks) drops the mode.

        loop = StaticKVLoop(model, max_len=512)
        tokens, seconds = loop.generate(prompt_ids, max_new=128)  # first call compiles: see loop.first_call_s
        tokens, seconds = loop.generate(prompt_ids, max_new=128)  # warm
    """

    def __init__(self, model: nn.Module, max_len: int = 2048, compile: bool = True, int8: bool = False,
                 batch: int = 1, math_sdpa_decode: bool = False, backend: str = "inductor") -> None:
        self.max_len = -(-max_len // 64) * 64  # aligned mask rows for the fused SDPA kernels
        self.batch, self.int8, self.compiled = batch, int8, compile
        self.math_sdpa_decode = math_sdpa_decode
        with torch.no_grad():
            self.model = _Decoder(model, batch, self.max_len, int8).eval()
        self.device = self.model.embed.device
        for layer in self.model.layers:  # tell CUDA graphs the cache lives at a fixed address
            torch._dynamo.mark_static_address(layer.k_cache)
            torch._dynamo.mark_static_address(layer.v_cache)
        self.first_call_s: float | None = None
        if compile:
            mode = {"mode": "reduce-overhead"} if backend == "inductor" else {}
            self._prefill = torch.compile(_prefill_step, backend=backend, dynamic=True, fullgraph=True)
            self._decode = torch.compile(_decode_step, backend=backend, fullgraph=True, **mode)
        else:
            self._prefill, self._decode = _prefill_step, _decode_step

    @torch.no_grad()
    def prefill(self, ids: torch.Tensor) -> torch.Tensor:
        """Fill the cache for prompt ids [batch, T] (positions 0..T-1); returns the next greedy token [batch, 1]."""
        pos = torch.arange(ids.shape[1], device=self.device)
        return self._prefill(self.model, ids.contiguous(), pos).clone()

    @torch.no_grad()
    def decode_one(self, token: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
        """One decode step: token [batch, 1] at position pos ([1] long tensor); returns the next token [batch, 1]."""
        if self.compiled and self.device.type == "cuda":
            torch.compiler.cudagraph_mark_step_begin()
        if self.math_sdpa_decode and self.device.type == "cuda":
            from torch.nn.attention import SDPBackend, sdpa_kernel

            with sdpa_kernel([SDPBackend.MATH]):
                return self._decode(self.model, token, pos).clone()
        return self._decode(self.model, token, pos).clone()  # clone: CUDA-graph outputs are reused

    @torch.no_grad()
    def logits(self, prompt_ids: list[int]) -> torch.Tensor:
        """Last-position logits [vocab] (fp32) of one prompt, uncompiled (for accuracy checks)."""
        ids = torch.tensor([prompt_ids] * self.batch, dtype=torch.long, device=self.device)
        return self.model(ids, torch.arange(ids.shape[1], device=self.device))[0].float()

    @torch.no_grad()
    def generate(self, prompt_ids: list[int] | list[list[int]], max_new: int) -> tuple[list, float]:
        """Greedy-decode `max_new` tokens; returns (new tokens, seconds incl. prefill). A flat list is one prompt
        (batch must be 1); a list of `batch` equal-length prompts returns a list of token lists. The first call
        ever (compilation, CUDA-graph capture) is also stored in `first_call_s`."""
        single = isinstance(prompt_ids[0], int)
        rows = [prompt_ids] if single else prompt_ids
        if len(rows) != self.batch or len({len(r) for r in rows}) != 1:
            raise ValueError(f"need {self.batch} prompt(s) of equal length")
        n = len(rows[0])
        if n + max_new > self.max_len:
            raise ValueError(f"prompt {n} + {max_new} new tokens exceed max_len {self.max_len}")
        ids = torch.tensor(rows, dtype=torch.long, device=self.device)
        _sync(self.device)
        t0 = time.perf_counter()
        tok = self.prefill(ids)
        out = [tok]
        pos = torch.tensor([n], dtype=torch.long, device=self.device)
        for _ in range(max_new - 1):
            tok = self.decode_one(tok, pos)
            out.append(tok)
            pos += 1
        new = torch.cat(out, dim=1).tolist()
        _sync(self.device)
        seconds = time.perf_counter() - t0
        if self.first_call_s is None:
            self.first_call_s = seconds
        return (new[0] if single else new), seconds
