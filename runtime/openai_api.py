"""The OpenAI wire format: request JSON -> validated `Job`, engine outputs -> response JSON.

No I/O here (`server.py` does HTTP). Parsing checks every field it uses, bounds every size
(`ServerLimits`) and answers anything wrong with an `ApiError` naming the field; fields it does
not know are ignored, as OpenAI-compatible servers do. Sampling values are checked by
`SamplingParams` itself, whose message is passed on.

Choices are numbered prompt-major: prompt i's sample j is choice `i * n + j` (as OpenAI and vLLM).
"""

from __future__ import annotations

import json
import re
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from .engine import RequestOutput
from .sampling import SamplingParams, TokenLogprobs


class ApiError(Exception):
    """An error answered to the client: HTTP `status` and OpenAI's error object."""

    def __init__(self, status: int, message: str, param: str | None = None, code: str | None = None,
                 type: str | None = None):  # noqa: A002 (OpenAI's field name)
        super().__init__(message)
        self.status, self.message, self.param, self.code = status, message, param, code
        self.type = type or ("invalid_request_error" if status < 500 else "server_error")

    def body(self) -> dict:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}


@dataclass(frozen=True)
class ServerLimits:
    """Bounds on what one request may ask for; each is answered by a 4xx naming the field.

    `max_prompt_tokens=None` means the model's `max_model_len - 1` (the longest prompt that
    leaves room for one generated token). `max_pending` bounds requests inside the engine
    (503 beyond), `max_connections` open connections (503 beyond), `socket_timeout_s` how long
    a connection may stay silent (so a slow client cannot hold a thread forever).
    """

    max_body_bytes: int = 1 << 20
    max_tokens: int = 2048
    max_n: int = 8
    max_prompts: int = 16
    max_prompt_tokens: int | None = None
    max_stop: int = 16
    max_logprobs: int = 20
    max_pending: int = 64
    max_connections: int = 64
    socket_timeout_s: float = 30.0

    def __post_init__(self) -> None:
        for name, value in vars(self).items():
            if value is not None and not value > 0:
                raise ValueError(f"ServerLimits.{name} must be > 0, got {value!r}")


@dataclass(frozen=True)
class ModelInfo:
    """What parsing and formatting need of the served model (no engine access)."""

    name: str
    max_model_len: int
    vocab_size: int
    tokenize: Callable[[str], list[int]] | None  # None: the model takes token ids only
    encode_chat: Callable[[list[dict]], list[int]] | None  # None: the model has no chat template
    token_text: Callable[[int], str]


@dataclass
class Job:
    """One validated request: prompts as token ids (and text), the SamplingParams, how to answer."""

    chat: bool
    prompts: list[tuple[list[int], str | None]]
    params: SamplingParams
    stream: bool
    include_usage: bool
    logprobs: bool
    id: str
    created: int


_TYPE_NAMES = {str: "a string", int: "an integer", float: "a number", bool: "true or false", list: "a list", dict: "an object"}


def _get(body: dict, name: str, types: type | tuple[type, ...], default: Any = None) -> Any:
    """`body[name]` checked against `types` (a JSON boolean is never a number here); `default` when absent or null."""
    value = body.get(name)
    if value is None:
        return default
    types = types if isinstance(types, tuple) else (types,)
    if not isinstance(value, types) or (isinstance(value, bool) and bool not in types):
        expected = "a number" if float in types else " or ".join(_TYPE_NAMES[t] for t in types)
        raise ApiError(400, f"'{name}' must be {expected}, got {json.dumps(value)[:100]}", name)
    return value


def _is_ids(value: Any) -> bool:
    return isinstance(value, list) and bool(value) and all(isinstance(t, int) and not isinstance(t, bool) for t in value)


def _completion_prompts(body: dict, model: ModelInfo, limits: ServerLimits) -> list[tuple[list[int], str | None]]:
    prompt = body.get("prompt")
    if isinstance(prompt, str) or _is_ids(prompt):
        items = [prompt]
    elif isinstance(prompt, list) and prompt and all(isinstance(p, str) or _is_ids(p) for p in prompt):
        items = prompt
    else:
        raise ApiError(400, "'prompt' must be a string, a list of token ids, or a non-empty list of those", "prompt")
    if len(items) > limits.max_prompts:
        raise ApiError(400, f"{len(items)} prompts in one request; the limit is {limits.max_prompts}", "prompt")
    out = []
    for p in items:
        if isinstance(p, str):
            if model.tokenize is None:
                raise ApiError(400, f"model {model.name!r} has no tokenizer: give prompts as token ids", "prompt")
            out.append((model.tokenize(p), p))
        elif not all(0 <= t < model.vocab_size for t in p):
            raise ApiError(400, f"prompt token ids must be in [0, {model.vocab_size})", "prompt")
        else:
            out.append((list(p), None))
    return out


def _message_text(content: Any, i: int) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list) and all(isinstance(c, dict) and c.get("type") == "text" and isinstance(c.get("text"), str) for c in content):
        return "".join(c["text"] for c in content)
    raise ApiError(400, f"messages[{i}].content must be a string or a list of text parts", "messages")


def _chat_prompt(body: dict, model: ModelInfo) -> list[tuple[list[int], str | None]]:
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise ApiError(400, "'messages' must be a non-empty list of {role, content} objects", "messages")
    clean = []
    for i, m in enumerate(messages):
        if not isinstance(m, dict) or not isinstance(m.get("role"), str):
            raise ApiError(400, f"messages[{i}] must be an object with a string 'role'", "messages")
        clean.append({"role": m["role"], "content": _message_text(m.get("content", ""), i)})
    if model.encode_chat is None:
        raise ApiError(400, f"model {model.name!r} has no chat template; use /v1/completions", "messages", "no_chat_template")
    try:
        ids = model.encode_chat(clean)
    except Exception as exc:  # a template may raise on roles it does not accept (jinja's raise_exception)
        raise ApiError(400, f"the chat template could not render these messages: {exc}"[:500], "messages") from None
    return [(ids, None)]


_PARAM_IN_MESSAGE = re.compile(r"SamplingParams\.(\w+)")


def _sampling(body: dict, *, chat: bool, max_tokens: int, limits: ServerLimits) -> SamplingParams:
    n = _get(body, "n", int, 1)
    if n > limits.max_n:
        raise ApiError(400, f"n={n} is over this server's limit of {limits.max_n}", "n")
    if max_tokens > limits.max_tokens:
        raise ApiError(400, f"max_tokens={max_tokens} is over this server's limit of {limits.max_tokens}", "max_tokens")
    stop = _get(body, "stop", (str, list), ())
    if isinstance(stop, list) and len(stop) > limits.max_stop:
        raise ApiError(400, f"{len(stop)} stop strings; the limit is {limits.max_stop}", "stop")
    if chat:
        logprobs = _get(body, "top_logprobs", int, 0) if _get(body, "logprobs", bool, False) else None
    else:
        logprobs = _get(body, "logprobs", int, None)
    if logprobs is not None and logprobs > limits.max_logprobs:
        raise ApiError(400, f"logprobs={logprobs} is over this server's limit of {limits.max_logprobs}", "top_logprobs" if chat else "logprobs")
    try:
        return SamplingParams(
            n=n, max_tokens=max_tokens, temperature=_get(body, "temperature", (int, float), 1.0),
            top_p=_get(body, "top_p", (int, float), 1.0), top_k=_get(body, "top_k", int, 0),
            min_p=_get(body, "min_p", (int, float), 0.0),
            repetition_penalty=_get(body, "repetition_penalty", (int, float), 1.0),
            presence_penalty=_get(body, "presence_penalty", (int, float), 0.0),
            frequency_penalty=_get(body, "frequency_penalty", (int, float), 0.0),
            seed=_get(body, "seed", int, None), stop=stop, stop_token_ids=_get(body, "stop_token_ids", list, ()),
            ignore_eos=_get(body, "ignore_eos", bool, False), logprobs=logprobs,
            skip_special_tokens=_get(body, "skip_special_tokens", bool, True),
        )
    except ValueError as exc:
        match = _PARAM_IN_MESSAGE.search(str(exc))
        raise ApiError(400, str(exc), match.group(1) if match else None) from None


def parse_request(body: Any, *, chat: bool, model: ModelInfo, limits: ServerLimits) -> Job:
    """Validate a `/v1/completions` (chat=False) or `/v1/chat/completions` body into a Job."""
    if not isinstance(body, dict):
        raise ApiError(400, "the request body must be a JSON object")
    name = _get(body, "model", str, None)
    if name is not None and name != model.name:
        raise ApiError(404, f"the model {name!r} does not exist; this server serves {model.name!r}", "model", "model_not_found")
    if _get(body, "echo", bool, False):
        raise ApiError(400, "'echo' is not supported by kiln", "echo")
    prompts = _chat_prompt(body, model) if chat else _completion_prompts(body, model, limits)
    cap = min(limits.max_prompt_tokens or model.max_model_len, model.max_model_len - 1)
    longest = max(len(ids) for ids, _ in prompts)
    if longest > cap:
        raise ApiError(400, f"the prompt has {longest} tokens; the limit is {cap} (max_model_len {model.max_model_len})",
                       "messages" if chat else "prompt", "context_length_exceeded")
    max_tokens = _get(body, "max_completion_tokens", int, None) if chat else None
    if max_tokens is None:
        room = model.max_model_len - longest  # chat: the rest of the context, as vLLM; completions: OpenAI's 16
        default = max(1, min(limits.max_tokens, room if chat else 16))
        max_tokens = _get(body, "max_tokens", int, default)
    params = _sampling(body, chat=chat, max_tokens=max_tokens, limits=limits)
    stream = _get(body, "stream", bool, False)
    options = _get(body, "stream_options", dict, {})
    return Job(chat, prompts, params, stream, bool(options.get("include_usage")) and stream,
               params.logprobs is not None, f"{'chatcmpl' if chat else 'cmpl'}-{uuid.uuid4().hex}", int(time.time()))


# ---- responses --------------------------------------------------------------------------------


def _logprobs(job: Job, lps: Sequence[TokenLogprobs | None], model: ModelInfo, offset: int = 0) -> dict | None:
    """OpenAI's logprobs object for these tokens: chat's `content` list or completions' arrays."""
    if not job.logprobs:
        return None
    lps = [lp for lp in lps if lp is not None]
    if job.chat:
        def entry(tid: int, lp: float) -> dict:
            text = model.token_text(tid)
            return {"token": text, "logprob": lp, "bytes": list(text.encode())}
        return {"content": [{**entry(lp.token_id, lp.logprob), "top_logprobs": [entry(t, v) for t, v in lp.top]} for lp in lps]}
    tokens = [model.token_text(lp.token_id) for lp in lps]
    offsets = []
    for t in tokens:
        offsets.append(offset)
        offset += len(t)
    return {"tokens": tokens, "token_logprobs": [lp.logprob for lp in lps], "text_offset": offsets,
            "top_logprobs": [{model.token_text(t): v for t, v in lp.top} for lp in lps]}


def _envelope(job: Job, model: ModelInfo, chunk: bool) -> dict:
    kind = ("chat.completion.chunk" if chunk else "chat.completion") if job.chat else "text_completion"
    return {"id": job.id, "object": kind, "created": job.created, "model": model.name}


def usage(prompt_tokens: int, completion_tokens: int) -> dict:
    return {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens, "total_tokens": prompt_tokens + completion_tokens}


def response(job: Job, outputs: Sequence[RequestOutput], model: ModelInfo) -> dict:
    """The non-streamed response for the outputs of `job`'s prompts (in prompt order)."""
    choices = []
    for i, out in enumerate(outputs):
        for c in out.outputs:
            index = i * job.params.n + c.index
            lps = _logprobs(job, c.logprobs or [], model)
            if job.chat:
                choices.append({"index": index, "message": {"role": "assistant", "content": c.text},
                                "logprobs": lps, "finish_reason": c.finish_reason})
            else:
                choices.append({"index": index, "text": c.text, "logprobs": lps, "finish_reason": c.finish_reason})
    prompt_tokens = sum(len(o.prompt_token_ids) for o in outputs)
    completion_tokens = sum(len(c.token_ids) for o in outputs for c in o.outputs)
    return {**_envelope(job, model, False), "choices": choices, "usage": usage(prompt_tokens, completion_tokens)}


def role_chunk(job: Job, model: ModelInfo, index: int) -> dict:
    """A chat stream's first chunk of a choice: the assistant role, no content yet."""
    return {**_envelope(job, model, True),
            "choices": [{"index": index, "delta": {"role": "assistant", "content": ""}, "logprobs": None, "finish_reason": None}]}


def delta_chunk(job: Job, model: ModelInfo, index: int, text: str, lps: Sequence[TokenLogprobs | None],
                reason: str | None, offset: int = 0) -> dict:
    """One streamed chunk of choice `index`: new text (and logprobs), the finish reason on the last."""
    choice: dict[str, Any] = {"index": index}
    if job.chat:
        choice["delta"] = {"content": text} if text else {}
    else:
        choice["text"] = text
    choice["logprobs"] = _logprobs(job, lps, model, offset)
    choice["finish_reason"] = reason
    return {**_envelope(job, model, True), "choices": [choice]}


def usage_chunk(job: Job, model: ModelInfo, prompt_tokens: int, completion_tokens: int) -> dict:
    """The last chunk of a stream with `stream_options.include_usage`: no choices, the usage."""
    return {**_envelope(job, model, True), "choices": [], "usage": usage(prompt_tokens, completion_tokens)}


def models_list(model: ModelInfo, created: int) -> dict:
    return {"object": "list", "data": [{"id": model.name, "object": "model", "created": created, "owned_by": "kiln",
                                        "max_model_len": model.max_model_len}]}
