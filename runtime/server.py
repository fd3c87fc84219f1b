"""`kiln serve`: an OpenAI-compatible HTTP server over one `kiln.LLM`, standard library only.

    server = OpenAIServer(kiln.LLM("tiny-llama"), port=0)   # 127.0.0.1, a free port
    server.start()                                          # or serve_forever() in this thread
    print(server.url)                                       # http://127.0.0.1:PORT
    server.close()

Routes: `POST /v1/completions`, `POST /v1/chat/completions` (both stream Server-Sent Events
with `"stream": true`, ending with `data: [DONE]`), `GET /v1/models`, `GET /health`.

Threads: `ThreadingHTTPServer` gives each connection a thread; those threads only parse, submit
to the `EngineDriver` (which alone touches the engine) and wait on their requests' event queues.
While waiting they poll the socket, so a client that disconnects (streaming or not) has its
requests aborted within half a second instead of generating for nobody.

Bounds: open connections (`max_connections`, 503 beyond), requests in the engine
(`max_pending`, 503 beyond), body size (413; the body is read only up to Content-Length, which
is required), a socket timeout on every read and write, and the per-request limits of
`ServerLimits` (400). Errors are OpenAI's JSON error object. Nothing from a request is ever
evaluated; only the chat template (the model's own Jinja, sandboxed by transformers) renders
message text.
"""

from __future__ import annotations

import contextlib
import ipaddress
import itertools
import json
import logging
import queue
import select
import socket
import threading
import time
import warnings
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from ..errors import KVCacheError
from . import openai_api as api
from .driver import Delta, Done, DriverStopped, EngineDriver, Failed, QueueFullError, RequestHandle, Started
from .openai_api import ApiError, Job, ModelInfo, ServerLimits

log = logging.getLogger("kiln.serve")

_WAIT_S = 0.5  # how often a waiting handler checks whether its client has gone
ROUTES = {"/v1/completions": "POST", "/v1/chat/completions": "POST", "/v1/models": "GET", "/health": "GET"}


def is_loopback(host: str) -> bool:
    """Whether binding `host` keeps the server reachable from this machine only."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def model_info(llm: Any, name: str) -> ModelInfo:
    """What the OpenAI layer needs of `llm`: tokenizer calls only, never the engine.

    Request threads take turns on the tokenizer (a lock): a fast tokenizer may mutably borrow
    its Rust core to change settings, and concurrent use then fails with "Already borrowed".
    """
    tok, lock = llm.tokenizer, threading.Lock()

    def tokenize(text: str) -> list[int]:
        with lock:
            return llm.tokenize(text)

    def encode_chat(messages: list[dict]) -> list[int]:
        with lock:
            out = tok.apply_chat_template(messages, add_generation_prompt=True, tokenize=True, return_dict=False)
        return list(out["input_ids"] if isinstance(out, dict) else out)

    def token_text(token_id: int) -> str:
        with lock:
            return tok.decode([token_id])

    has_template = tok is not None and bool(getattr(tok, "chat_template", None))
    return ModelInfo(
        name=name, max_model_len=llm.max_model_len, vocab_size=llm.runner.info.vocab_size, tokenize=tokenize if tok is not None else None,
        encode_chat=encode_chat if has_template else None,
        token_text=token_text if tok is not None else str,
    )


def error_for(exc: BaseException) -> ApiError:
    """The HTTP answer to an exception raised while serving a request."""
    if isinstance(exc, ApiError):
        return exc
    if isinstance(exc, QueueFullError):
        return ApiError(503, str(exc), code="server_busy", type="server_busy")
    if isinstance(exc, DriverStopped):
        return ApiError(503, str(exc), code="shutting_down", type="server_error")
    if isinstance(exc, (ValueError, TypeError, KVCacheError)):  # refused at admission
        return ApiError(400, str(exc), code=type(exc).__name__)
    log.exception("internal error", exc_info=exc)
    return ApiError(500, f"internal error: {type(exc).__name__}: {exc}", type="server_error")


class _HTTPServer(ThreadingHTTPServer):
    """ThreadingHTTPServer with a bound on open connections (each one holds a thread)."""

    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, address: tuple[str, int], app: OpenAIServer):
        self.app = app
        self._slots = threading.BoundedSemaphore(app.limits.max_connections)
        super().__init__(address, _Handler)

    def process_request(self, request: Any, client_address: Any) -> None:
        if not self._slots.acquire(blocking=False):
            body = json.dumps(ApiError(503, "too many open connections; retry later", code="server_busy").body()).encode()
            try:  # answer without reading the request; then take in a little of it so that
                # closing does not reset the connection before the client reads the 503
                request.settimeout(0.1)
                request.sendall(b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\n"
                                b"Connection: close\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body))
                request.shutdown(socket.SHUT_WR)
                request.recv(65536)
            except OSError:
                pass
            self.shutdown_request(request)
            return
        try:
            super().process_request(request, client_address)
        except BaseException:
            self._slots.release()
            raise

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            self._slots.release()


class _Handler(BaseHTTPRequestHandler):
    """One connection (HTTP/1.1 keep-alive); routes to the OpenAI endpoints."""

    protocol_version = "HTTP/1.1"
    server_version = "kiln"
    server: _HTTPServer

    def setup(self) -> None:
        self.timeout = self.server.app.limits.socket_timeout_s  # applied to the socket by setup()
        super().setup()

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 (the base class's name)
        log.info("%s %s", self.address_string(), format % args)

    # ---- routing ----------------------------------------------------------------------------
    def do_GET(self) -> None:
        self._route("GET")

    def do_POST(self) -> None:
        self._route("POST")

    def do_PUT(self) -> None:
        self._route("PUT")

    def do_DELETE(self) -> None:
        self._route("DELETE")

    def do_PATCH(self) -> None:
        self._route("PATCH")

    def _route(self, method: str) -> None:
        app = self.server.app
        path = self.path.split("?", 1)[0]
        try:
            allowed = ROUTES.get(path)
            if allowed is None:
                raise ApiError(404, f"no route {path[:100]!r}; routes: {', '.join(ROUTES)}", code="not_found")
            if method != allowed:
                self.close_connection = True  # a body we will not read may follow
                raise ApiError(405, f"{method} is not allowed on {path}; use {allowed}", code="method_not_allowed")
            if path == "/health":
                ok = app.driver.alive
                self._json(200 if ok else 503, {"status": "ok" if ok else "engine stopped"})
            elif path == "/v1/models":
                self._json(200, api.models_list(app.model, app.created))
            else:
                job = api.parse_request(self._read_json(), chat=path.endswith("chat/completions"), model=app.model, limits=app.limits)
                (self._stream if job.stream else self._complete)(job)
        except Exception as exc:
            self._error(error_for(exc))

    # ---- request and response bodies --------------------------------------------------------
    def _read_json(self) -> Any:
        """The JSON body, read only up to its Content-Length, which must be there and in bounds."""
        limit = self.server.app.limits.max_body_bytes
        if self.headers.get("Transfer-Encoding"):
            self.close_connection = True
            raise ApiError(411, "chunked request bodies are not supported; send Content-Length", code="length_required")
        raw = self.headers.get("Content-Length")
        if raw is None:
            self.close_connection = True
            raise ApiError(411, "a Content-Length header is required", code="length_required")
        if not raw.strip().isdigit():
            self.close_connection = True
            raise ApiError(400, f"invalid Content-Length {raw[:40]!r}", code="invalid_content_length")
        size = int(raw)
        if size > limit:
            self.close_connection = True
            self._discard(size, limit)
            raise ApiError(413, f"the request body is {size} bytes; the limit is {limit}", code="body_too_large")
        try:
            data = self.rfile.read(size)
        except TimeoutError:
            self.close_connection = True
            raise ApiError(408, f"the body did not arrive within {self.server.app.limits.socket_timeout_s} s", code="timeout") from None
        if len(data) < size:
            self.close_connection = True
            raise ApiError(400, f"the body ended after {len(data)} of {size} bytes", code="incomplete_body")
        try:
            return json.loads(data)
        except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as exc:
            raise ApiError(400, f"the body is not valid JSON: {exc}"[:300], code="invalid_json") from None

    def _discard(self, size: int, limit: int) -> None:
        """Read (and drop) up to `limit` bytes of an oversized body, so that closing the socket
        does not reset the connection before the client reads the 413; beyond that, close."""
        try:
            self.connection.settimeout(min(0.25, self.timeout))  # only what is already on its way
            left = min(size, limit)
            while left > 0:
                chunk = self.rfile.read1(min(left, 65536))
                if not chunk:
                    return
                left -= len(chunk)
        except OSError:
            pass

    def _json(self, status: int, obj: dict, headers: dict | None = None) -> None:
        body = json.dumps(obj).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        if self.close_connection:
            self.send_header("Connection", "close")
        self.end_headers()
        self.wfile.write(body)

    def _error(self, err: ApiError) -> None:
        if getattr(self, "_streaming", False):  # headers are out: report inside the stream
            try:
                self._event(err.body())
                self._event_end()
            except OSError:
                self.close_connection = True
            return
        headers = {"Allow": ROUTES.get(self.path.split("?", 1)[0], "")} if err.status == 405 else None
        try:
            self._json(err.status, err.body(), headers)
        except OSError:
            self.close_connection = True

    def send_error(self, code: int, message: str | None = None, explain: str | None = None) -> None:
        """Protocol-level errors (bad request line, oversized headers, ...) as JSON too."""
        self.close_connection = True
        err = ApiError(code, message or HTTPStatus(code).phrase, code=HTTPStatus(code).phrase.lower().replace(" ", "_"))
        try:
            self._json(code, err.body())
        except OSError:
            pass

    # ---- waiting for the engine -------------------------------------------------------------
    def _client_gone(self) -> bool:
        """Whether the peer closed the connection (readable with nothing to read)."""
        try:
            readable, _, _ = select.select([self.connection], [], [], 0)
            return bool(readable) and self.connection.recv(1, socket.MSG_PEEK) == b""
        except (OSError, ValueError):
            return True

    def _submit(self, job: Job) -> tuple[queue.Queue, list[RequestHandle]]:
        """Submit every prompt of `job`, all reporting to one queue; abort them all on failure."""
        driver, events = self.server.app.driver, queue.Queue()
        handles: list[RequestHandle] = []
        try:
            for ids, text in job.prompts:
                handles.append(driver.submit(ids, job.params, prompt=text, events=events))
        except Exception:
            for h in handles:
                driver.abort(h)
            raise
        return events, handles

    def _events(self, events: queue.Queue, handles: list[RequestHandle]) -> Any:
        """Yield events until every handle is terminal; abort all if the client leaves or we stop."""
        driver = self.server.app.driver
        left, checked = len(handles), time.monotonic()
        try:
            while left:
                event = driver.next_event(events, _WAIT_S)
                if time.monotonic() - checked >= _WAIT_S:
                    checked = time.monotonic()
                    if self._client_gone():
                        log.info("client %s went away: aborting %d request(s)", self.address_string(), left)
                        self.close_connection = True
                        return
                if event is None:
                    continue
                if isinstance(event, (Done, Failed)):
                    left -= 1
                yield event
        finally:
            for h in handles:
                if not h.finished:
                    driver.abort(h)

    def _complete(self, job: Job) -> None:
        events, handles = self._submit(job)
        with contextlib.closing(self._events(events, handles)) as stream:  # closing aborts what is left
            for event in stream:
                if isinstance(event, Failed):
                    raise event.error
        if all(h.output is not None for h in handles):
            self._json(200, api.response(job, [h.output for h in handles], self.server.app.model))

    def _stream(self, job: Job) -> None:
        events, handles = self._submit(job)
        stream = self._events(events, handles)
        started, early = 0, []
        for event in stream:  # admission first: a refused request still gets a plain 4xx
            if isinstance(event, Failed):
                stream.close()
                raise event.error
            if isinstance(event, Started):
                started += 1
            else:  # an earlier prompt's output, while a later one waits for admission
                early.append(event)
            if started == len(handles):
                break
        else:
            return  # the client left before admission
        self._stream_events(job, handles, itertools.chain(early, stream), stream)

    def _stream_events(self, job: Job, handles: list[RequestHandle], events: Any, stream: Any) -> None:
        model, n = self.server.app.model, job.params.n
        first = {h.request_id: i * n for i, h in enumerate(handles)}
        offsets: dict[int, int] = {}
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Cache-Control", "no-cache")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        self._streaming = True
        try:
            if job.chat:
                for index in range(len(handles) * n):
                    self._event(api.role_chunk(job, model, index))
            for event in events:
                if isinstance(event, Delta) and (event.text or event.finish_reason or job.logprobs and event.token_ids):
                    index = first[event.request.request_id] + event.index
                    self._event(api.delta_chunk(job, model, index, event.text, event.logprobs, event.finish_reason, offsets.get(index, 0)))
                    offsets[index] = offsets.get(index, 0) + len(event.text)
                elif isinstance(event, Failed):
                    stream.close()
                    self._error(error_for(event.error))
                    return
            if job.include_usage and all(h.output is not None for h in handles):
                outs = [h.output for h in handles]
                self._event(api.usage_chunk(job, model, sum(len(o.prompt_token_ids) for o in outs),
                                            sum(len(c.token_ids) for o in outs for c in o.outputs)))
            self._event_end()
        except OSError:  # the client went away mid-stream: `stream.close()` aborts its requests
            self.close_connection = True
            stream.close()
        except Exception as exc:
            stream.close()
            self._error(error_for(exc))
        finally:
            self._streaming = False

    def _event(self, obj: dict | str) -> None:
        data = b"data: " + (obj if isinstance(obj, str) else json.dumps(obj)).encode() + b"\n\n"
        self.wfile.write(b"%x\r\n%s\r\n" % (len(data), data))

    def _event_end(self) -> None:
        self._event("[DONE]")
        self.wfile.write(b"0\r\n\r\n")


class OpenAIServer:
    """The HTTP server, the engine driver and the served model's description, started together."""

    def __init__(self, llm: Any, *, host: str = "127.0.0.1", port: int = 8000, limits: ServerLimits | None = None,
                 model_name: str | None = None):
        if not is_loopback(host):
            warnings.warn(f"kiln serve is binding {host!r}: reachable from other machines, with no authentication",
                          stacklevel=2)
        self.llm = llm
        self.limits = limits or ServerLimits()
        self.model = model_info(llm, model_name or llm.name)
        self.created = int(time.time())
        self.driver = EngineDriver(llm.engine, max_pending=self.limits.max_pending)
        try:
            self.httpd = _HTTPServer((host, port), self)
        except BaseException:
            self.driver.shutdown()
            raise
        self._thread: threading.Thread | None = None

    @property
    def port(self) -> int:
        return self.httpd.server_address[1]

    @property
    def url(self) -> str:
        host = self.httpd.server_address[0]
        return f"http://{f'[{host}]' if ':' in host else host}:{self.port}"

    def serve_forever(self) -> None:
        """Serve in this thread until `close()` (from another thread) or KeyboardInterrupt."""
        self.httpd.serve_forever(poll_interval=0.2)

    def start(self) -> OpenAIServer:
        """Serve on a background thread; returns self."""
        self._thread = threading.Thread(target=self.serve_forever, name="kiln-http", daemon=True)
        self._thread.start()
        return self

    def close(self) -> None:
        """Stop accepting, fail what is still running (clients get an error event), stop the engine thread."""
        if self._thread is not None:
            self.httpd.shutdown()
            self._thread.join()
        self.httpd.server_close()
        self.driver.shutdown()

    def __enter__(self) -> OpenAIServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

