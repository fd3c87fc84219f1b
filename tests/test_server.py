"""`kiln serve` over real loopback HTTP: OpenAI-shaped answers equal to `kiln.LLM.generate`,
SSE streams that add up to the plain answer, concurrent clients, every limit's 4xx, and a
server that survives clients that leave, engine errors and a full queue."""

from __future__ import annotations

import http.client
import json
import socket
import threading
import time
from collections.abc import Iterator
from types import SimpleNamespace
from typing import Any

import pytest

import kiln
from kiln.runtime.driver import Delta, DriverStopped, EngineDriver, QueueFullError, Started
from kiln.runtime.scheduler import Status
from kiln.runtime.server import OpenAIServer, ServerLimits

PROMPTS = ["Hello", "The quick brown fox", "def main():", "Once upon a time there was"]
CHAT = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hello there"}]
MAX_TOKENS = 12
LIMITS = ServerLimits(max_body_bytes=64 << 10, max_tokens=500, max_n=4, max_prompts=8, max_prompt_tokens=100,
                      max_connections=8, socket_timeout_s=2.0)


class Server:
    """The module's server and the answers `kiln.LLM.generate` gave before it started."""

    def __init__(self, app: OpenAIServer, greedy: dict[str, str], chat: str):
        self.app, self.greedy, self.chat = app, greedy, chat

    def request(self, method: str, path: str, body: Any = None, raw: bytes | None = None) -> tuple[int, Any]:
        conn = http.client.HTTPConnection("127.0.0.1", self.app.port, timeout=30)
        data = raw if raw is not None else (json.dumps(body).encode() if body is not None else None)
        try:
            conn.request(method, path, body=data, headers={"Content-Type": "application/json"})
            resp = conn.getresponse()
            text = resp.read().decode()
            ctype = resp.getheader("Content-Type", "")
            return resp.status, json.loads(text) if ctype == "application/json" else text
        finally:
            conn.close()

    def post(self, path: str, body: Any) -> tuple[int, Any]:
        return self.request("POST", path, body)


@pytest.fixture(scope="module")
def server() -> Iterator[Server]:
    llm = kiln.LLM("tiny-llama")
    greedy = kiln.SamplingParams(max_tokens=MAX_TOKENS, temperature=0.0)
    ref = {p: o.outputs[0].text for p, o in zip(PROMPTS, llm.generate(PROMPTS, greedy))}
    chat = llm.chat(CHAT, greedy).outputs[0].text
    app = OpenAIServer(llm, port=0, limits=LIMITS).start()  # the engine belongs to the server from here on
    yield Server(app, ref, chat)
    app.close()


def sse_events(text: str) -> list[Any]:
    """The `data:` payloads of an SSE body, JSON-decoded except the final `[DONE]`."""
    events = []
    for block in text.split("\n\n"):
        if block.strip():
            assert block.startswith("data: "), block
            payload = block[len("data: "):]
            events.append(payload if payload == "[DONE]" else json.loads(payload))
    return events


def test_completion_greedy_equals_llm_generate(server: Server) -> None:
    for prompt in PROMPTS:
        status, body = server.post("/v1/completions", {"model": "tiny-llama", "prompt": prompt, "max_tokens": MAX_TOKENS, "temperature": 0})
        assert status == 200, body
        assert body["object"] == "text_completion" and body["model"] == "tiny-llama" and body["id"].startswith("cmpl-")
        (choice,) = body["choices"]
        assert choice == {"index": 0, "text": server.greedy[prompt], "logprobs": None, "finish_reason": "length"}
        usage = body["usage"]
        assert usage["completion_tokens"] == MAX_TOKENS and usage["total_tokens"] == usage["prompt_tokens"] + MAX_TOKENS


def test_list_of_prompts_gives_prompt_major_choices(server: Server) -> None:
    status, body = server.post("/v1/completions", {"prompt": PROMPTS[:2], "n": 2, "max_tokens": MAX_TOKENS, "temperature": 0})
    assert status == 200, body
    assert [c["index"] for c in body["choices"]] == [0, 1, 2, 3]
    assert [c["text"] for c in body["choices"]] == [server.greedy[PROMPTS[0]]] * 2 + [server.greedy[PROMPTS[1]]] * 2


def test_token_id_prompt_equals_text_prompt(server: Server) -> None:
    ids = server.app.llm.tokenize(PROMPTS[1])
    status, body = server.post("/v1/completions", {"prompt": ids, "max_tokens": MAX_TOKENS, "temperature": 0})
    assert status == 200 and body["choices"][0]["text"] == server.greedy[PROMPTS[1]]
    assert body["usage"]["prompt_tokens"] == len(ids)


def test_chat_completion_renders_the_chat_template(server: Server) -> None:
    status, body = server.post("/v1/chat/completions", {"messages": CHAT, "max_tokens": MAX_TOKENS, "temperature": 0})
    assert status == 200, body
    assert body["object"] == "chat.completion" and body["id"].startswith("chatcmpl-")
    (choice,) = body["choices"]
    assert choice["message"] == {"role": "assistant", "content": server.chat}
    assert choice["finish_reason"] == "length" and body["usage"]["completion_tokens"] == MAX_TOKENS


def test_streamed_completion_adds_up_to_the_plain_text(server: Server) -> None:
    for prompt in PROMPTS:
        status, text = server.post("/v1/completions", {"prompt": prompt, "max_tokens": MAX_TOKENS, "temperature": 0, "stream": True})
        assert status == 200
        events = sse_events(text)
        assert events[-1] == "[DONE]" and "[DONE]" not in events[:-1]
        chunks = events[:-1]
        assert all(c["object"] == "text_completion" and len(c["choices"]) == 1 for c in chunks)
        assert "".join(c["choices"][0]["text"] for c in chunks) == server.greedy[prompt]
        assert [c["choices"][0]["finish_reason"] for c in chunks][-1] == "length"
        assert all(c["choices"][0]["finish_reason"] is None for c in chunks[:-1])


def test_streamed_chat_sends_role_then_content_then_done(server: Server) -> None:
    body = {"messages": CHAT, "max_tokens": MAX_TOKENS, "temperature": 0, "stream": True, "stream_options": {"include_usage": True}}
    status, text = server.post("/v1/chat/completions", body)
    assert status == 200
    events = sse_events(text)
    assert events[-1] == "[DONE]"
    first, *content, usage = events[:-1]
    assert first["object"] == "chat.completion.chunk" and first["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    assert "".join(c["choices"][0]["delta"].get("content", "") for c in content) == server.chat
    assert content[-1]["choices"][0]["finish_reason"] == "length"
    assert usage["choices"] == [] and usage["usage"]["completion_tokens"] == MAX_TOKENS


def test_streamed_samples_of_several_prompts_each_add_up(server: Server) -> None:
    body = {"prompt": PROMPTS[:2], "n": 2, "max_tokens": MAX_TOKENS, "temperature": 0, "stream": True}
    status, text = server.post("/v1/completions", body)
    assert status == 200
    texts = [""] * 4
    for chunk in sse_events(text)[:-1]:
        texts[chunk["choices"][0]["index"]] += chunk["choices"][0]["text"]
    assert texts == [server.greedy[PROMPTS[0]]] * 2 + [server.greedy[PROMPTS[1]]] * 2


def test_logprobs_have_openai_shapes(server: Server) -> None:
    status, body = server.post("/v1/completions", {"prompt": "Hi", "max_tokens": 4, "temperature": 0, "logprobs": 2})
    assert status == 200
    lp = body["choices"][0]["logprobs"]
    assert len(lp["tokens"]) == len(lp["token_logprobs"]) == len(lp["top_logprobs"]) == len(lp["text_offset"]) == 4
    assert all(v <= 0 for v in lp["token_logprobs"]) and all(1 <= len(t) <= 2 for t in lp["top_logprobs"])
    status, body = server.post("/v1/chat/completions", {"messages": CHAT, "max_tokens": 3, "temperature": 0, "logprobs": True, "top_logprobs": 2})
    content = body["choices"][0]["logprobs"]["content"]
    assert len(content) == 3 and all({"token", "logprob", "bytes", "top_logprobs"} <= set(e) for e in content)
    assert all(len(e["top_logprobs"]) == 2 for e in content)


def test_a_seed_makes_sampling_reproducible(server: Server) -> None:
    body = {"prompt": "Hello", "max_tokens": MAX_TOKENS, "temperature": 1.0, "seed": 7}
    assert server.post("/v1/completions", body)[1]["choices"] == server.post("/v1/completions", body)[1]["choices"]


def test_concurrent_clients_each_get_their_own_answer(server: Server) -> None:
    results: dict[int, str] = {}

    def client(i: int) -> None:
        prompt, stream = PROMPTS[i % len(PROMPTS)], i % 2 == 1
        status, out = server.post("/v1/completions", {"prompt": prompt, "max_tokens": MAX_TOKENS, "temperature": 0, "stream": stream})
        assert status == 200
        results[i] = "".join(c["choices"][0]["text"] for c in sse_events(out)[:-1]) if stream else out["choices"][0]["text"]

    threads = [threading.Thread(target=client, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert results == {i: server.greedy[PROMPTS[i % len(PROMPTS)]] for i in range(8)}


@pytest.mark.parametrize(("path", "body", "status", "param"), [
    ("/v1/completions", {"prompt": "x", "max_tokens": 501}, 400, "max_tokens"),
    ("/v1/completions", {"prompt": "x", "n": 5}, 400, "n"),
    ("/v1/completions", {"prompt": "x " * 150}, 400, "prompt"),
    ("/v1/completions", {"prompt": "x", "temperature": -0.5}, 400, "temperature"),
    ("/v1/completions", {"prompt": "x", "temperature": "hot"}, 400, "temperature"),
    ("/v1/completions", {"prompt": "x", "top_p": 1.5, "stream": True}, 400, "top_p"),
    ("/v1/completions", {"prompt": "x", "max_tokens": 0}, 400, "max_tokens"),
    ("/v1/completions", {"prompt": [1, 10**6]}, 400, "prompt"),
    ("/v1/completions", {"prompt": 12}, 400, "prompt"),
    ("/v1/completions", {"prompt": ["x"] * 9}, 400, "prompt"),
    ("/v1/completions", {"prompt": "x", "model": "gpt-4"}, 404, "model"),
    ("/v1/chat/completions", {"messages": "hi"}, 400, "messages"),
    ("/v1/chat/completions", {"messages": [{"role": "user", "content": "x " * 150}]}, 400, "messages"),
    ("/v1/completions", [1, 2], 400, None),
])
def test_bad_requests_get_a_4xx_naming_the_field(server: Server, path: str, body: Any, status: int, param: str | None) -> None:
    got, err = server.post(path, body)
    assert got == status, err
    assert set(err["error"]) == {"message", "type", "param", "code"} and err["error"]["param"] == param


def test_unknown_fields_are_ignored(server: Server) -> None:
    status, body = server.post("/v1/completions", {"prompt": "Hello", "max_tokens": MAX_TOKENS, "temperature": 0, "user": "me", "x_extra": [1]})
    assert status == 200 and body["choices"][0]["text"] == server.greedy["Hello"]


def test_invalid_json_unknown_route_and_wrong_method(server: Server) -> None:
    status, err = server.request("POST", "/v1/completions", raw=b'{"prompt": "x",')
    assert status == 400 and err["error"]["code"] == "invalid_json"
    assert server.request("POST", "/v1/nothing", {})[0] == 404
    assert server.request("GET", "/v1/completions")[0] == 405
    assert server.request("POST", "/v1/models", {})[0] == 405


def raw_exchange(port: int, data: bytes, *, read_timeout: float = 10.0) -> bytes:
    """Send raw bytes, read until the server closes the connection."""
    with socket.create_connection(("127.0.0.1", port), timeout=read_timeout) as sock:
        sock.sendall(data)
        out = b""
        while chunk := sock.recv(65536):
            out += chunk
        return out


def test_oversized_missing_and_invalid_content_length_are_refused(server: Server) -> None:
    big = json.dumps({"prompt": "x" * (70 << 10)}).encode()
    status, err = server.request("POST", "/v1/completions", raw=big)
    assert status == 413 and err["error"]["code"] == "body_too_large"
    claimed = raw_exchange(server.app.port, b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Length: 999999999\r\n\r\n")
    assert claimed.startswith(b"HTTP/1.1 413")
    missing = raw_exchange(server.app.port, b"POST /v1/completions HTTP/1.1\r\nHost: x\r\n\r\n")
    assert missing.startswith(b"HTTP/1.1 411")
    invalid = raw_exchange(server.app.port, b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Length: -5\r\n\r\n")
    assert invalid.startswith(b"HTTP/1.1 400")


def test_a_slow_client_times_out(server: Server) -> None:
    start = time.monotonic()
    out = raw_exchange(server.app.port, b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n{\"pro")
    assert out.startswith(b"HTTP/1.1 408") and time.monotonic() - start < LIMITS.socket_timeout_s + 3


def test_client_leaving_mid_stream_aborts_its_request(server: Server, monkeypatch: pytest.MonkeyPatch) -> None:
    driver = server.app.driver
    aborted = []
    real_abort = driver.abort
    monkeypatch.setattr(driver, "abort", lambda h: (aborted.append(h), real_abort(h)))
    engine = server.app.llm.engine
    real_step = engine.step
    monkeypatch.setattr(engine, "step", lambda: (time.sleep(0.02), real_step())[1])  # a GPU must not finish first
    body = json.dumps({"prompt": "Hello", "max_tokens": 500, "ignore_eos": True, "stream": True}).encode()
    with socket.create_connection(("127.0.0.1", server.app.port), timeout=10) as sock:
        sock.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body))
        assert sock.recv(4096).startswith(b"HTTP/1.1 200")  # headers (and maybe a chunk), then leave
    deadline = time.monotonic() + 10
    while (not aborted or driver.num_pending) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert aborted and driver.num_pending == 0
    status, body = server.post("/v1/completions", {"prompt": "Hello", "max_tokens": MAX_TOKENS, "temperature": 0})
    assert status == 200 and body["choices"][0]["text"] == server.greedy["Hello"]


def test_an_engine_error_fails_the_request_and_the_server_recovers(server: Server, monkeypatch: pytest.MonkeyPatch) -> None:
    engine = server.app.llm.engine

    def broken_step() -> list:
        raise RuntimeError("injected step failure")

    monkeypatch.setattr(engine, "step", broken_step)
    status, err = server.post("/v1/completions", {"prompt": "Hello", "max_tokens": 4})
    assert status == 500 and "injected step failure" in err["error"]["message"]
    status, text = server.post("/v1/completions", {"prompt": "Hello", "max_tokens": 4, "stream": True})
    assert status == 200 and "injected step failure" in sse_events(text)[-2]["error"]["message"]
    monkeypatch.undo()
    status, body = server.post("/v1/completions", {"prompt": "Hello", "max_tokens": MAX_TOKENS, "temperature": 0})
    assert status == 200 and body["choices"][0]["text"] == server.greedy["Hello"]


def test_full_queue_and_too_many_connections_get_503(server: Server, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(server.app.driver, "max_pending", 0)
    status, err = server.post("/v1/completions", {"prompt": "Hello"})
    assert status == 503 and err["error"]["code"] == "server_busy"
    monkeypatch.undo()
    idle = [socket.create_connection(("127.0.0.1", server.app.port)) for _ in range(LIMITS.max_connections)]
    try:
        time.sleep(0.3)  # let the server accept them all
        assert raw_exchange(server.app.port, b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n").startswith(b"HTTP/1.1 503")
    finally:
        for s in idle:
            s.close()
    deadline = time.monotonic() + 5
    while server.request("GET", "/health")[0] != 200 and time.monotonic() < deadline:
        time.sleep(0.1)
    assert server.request("GET", "/health") == (200, {"status": "ok"})


def test_models_and_health(server: Server) -> None:
    status, body = server.request("GET", "/v1/models")
    assert status == 200 and body["object"] == "list" and [m["id"] for m in body["data"]] == ["tiny-llama"]
    assert server.request("GET", "/health") == (200, {"status": "ok"})


class _EndlessEngine:
    """An engine stand-in whose requests never finish (the driver's view of it only)."""

    def __init__(self) -> None:
        self.requests: dict[str, Any] = {}

    def add_request(self, prompt_ids: list[int], params: kiln.SamplingParams, *, prompt: str | None = None, request_id: str = "") -> str:
        seq = SimpleNamespace(index=0, status=Status.RUNNING, output=[], logprobs=[], params=params, finish_reason=None)
        self.requests[request_id] = SimpleNamespace(seqs=[seq])
        return request_id

    def step(self) -> list:
        time.sleep(0.005)
        for req in self.requests.values():
            req.seqs[0].output.append(7)
        return []

    def stream_delta(self, seq: Any) -> str:
        return ""

    def abort(self, request_id: str) -> None:
        self.requests[request_id].seqs[0].status = Status.FINISHED

    def output(self, request_id: str) -> Any:
        return SimpleNamespace(request_id=request_id)

    def release(self, request_id: str) -> None:
        del self.requests[request_id]


def test_driver_bounds_pending_requests_and_shutdown_fails_the_unfinished() -> None:
    driver = EngineDriver(_EndlessEngine(), max_pending=2)  # type: ignore[arg-type]
    handles = [driver.submit([1, 2], kiln.SamplingParams()) for _ in range(2)]
    with pytest.raises(QueueFullError):
        driver.submit([1], kiln.SamplingParams())
    assert isinstance(handles[0].next_event(5), Started)
    assert isinstance(handles[0].next_event(5), Delta)  # tokens flow, text held back
    driver.shutdown()
    for h in handles:
        with pytest.raises(DriverStopped):
            h.result()
    assert driver.num_pending == 0 and not driver.alive
    with pytest.raises(DriverStopped):
        driver.submit([1], kiln.SamplingParams())
