"""`recthinker serve` under misuse, over a real uvicorn server on 127.0.0.1 where the socket matters.

A request body over the limit gets 413 before it is read (declared length and chunked); clients that
disconnect free their slots within one model call (`/v1/recommend` and the SSE stream); an unreachable
model back end makes `/healthz` say 503 "unavailable" and requests get 503 (502 when it fails mid-run),
with the real `OpenAICompatible` client; `/docs` and `/redoc` reference no external URL.
"""

from __future__ import annotations

import contextlib
import json
import re
import select
import socket
import threading
import time
from collections.abc import Iterator

import httpx
import pytest

pytest.importorskip("fastapi")
uvicorn = pytest.importorskip("uvicorn")
from fastapi.testclient import TestClient  # noqa: E402

from recthinker.agent.loop import AgentConfig  # noqa: E402
from recthinker.llm.openai import OpenAICompatible  # noqa: E402
from recthinker.serve.app import MAX_BODY_BYTES, create_app  # noqa: E402
from recthinker.tools.build import load_resources  # noqa: E402
from test_serve import CANDS, ScriptedServeModel, sse_events  # noqa: E402


@pytest.fixture(scope="module")
def res(tiny_benchmark):
    return load_resources(tiny_benchmark, "dense/test")


@pytest.fixture(scope="module")
def user(tiny_benchmark) -> str:
    return tiny_benchmark.episodes("dense/test")[0].user_id


def app_for(res, tiny_benchmark, model=None, **kw):
    kw.setdefault("config", AgentConfig(max_steps=4, max_tool_calls=3))
    return create_app(res, tiny_benchmark.items, model or ScriptedServeModel(), dataset="tiny", **kw)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def serving(app) -> Iterator[int]:
    """Run `app` under uvicorn on 127.0.0.1 in a thread; yields the port."""
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            pytest.fail("uvicorn did not start")
        time.sleep(0.05)
    try:
        yield port
    finally:
        server.should_exit = True
        thread.join(timeout=10)


def request_head(path: str, headers: dict[str, str]) -> bytes:
    lines = [f"POST {path} HTTP/1.1", "Host: 127.0.0.1", "Content-Type: application/json"]
    lines += [f"{k}: {v}" for k, v in headers.items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def read_response(sock: socket.socket, data: bytes = b"", timeout: float = 10.0) -> tuple[int, dict, bytes]:
    """Status, headers and body of the HTTP response on `sock` (`data`: bytes of it already read)."""
    sock.setblocking(True)
    sock.settimeout(timeout)
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        assert chunk, f"connection closed before a response: {data!r}"
        data += chunk
    head, body = data.split(b"\r\n\r\n", 1)
    status_line, *header_lines = head.decode().split("\r\n")
    headers = {k.lower(): v.strip() for k, v in (line.split(":", 1) for line in header_lines)}
    while len(body) < int(headers.get("content-length", 0)):
        chunk = sock.recv(65536)
        if not chunk:
            break
        body += chunk
    return int(status_line.split()[1]), headers, body


# ---- 1. request-body limit -----------------------------------------------------------------------------


def test_declared_body_over_the_limit_is_refused_before_it_is_sent(res, tiny_benchmark):
    """A 200 MB Content-Length: 413 at once, although not one byte of the body was sent."""
    with serving(app_for(res, tiny_benchmark)) as port, socket.create_connection(("127.0.0.1", port)) as s:
        s.sendall(request_head("/v1/recommend", {"Content-Length": "200000000"}))
        status, headers, body = read_response(s)
    assert status == 413 and headers["connection"] == "close"
    assert json.loads(body)["error"] == (
        f"request body of 200000000 bytes is over the limit of {MAX_BODY_BYTES} bytes"
    )


def test_chunked_body_over_the_limit_stops_being_read(res, tiny_benchmark):
    """A chunked body (no Content-Length) of up to 256 MiB: the 413 comes back and the server stops reading
    while the client is still sending -- it is never read in full."""
    total, frame_size = 256 << 20, 64 << 10
    frame = f"{frame_size:x}\r\n".encode() + b"x" * frame_size + b"\r\n"
    with serving(app_for(res, tiny_benchmark)) as port, socket.create_connection(("127.0.0.1", port)) as s:
        s.sendall(request_head("/v1/recommend", {"Transfer-Encoding": "chunked"}))
        s.setblocking(False)
        sent, pending, answer = 0, memoryview(b""), b""
        deadline = time.monotonic() + 30
        while sent < total and b"\r\n\r\n" not in answer and time.monotonic() < deadline:
            readable, writable, _ = select.select([s], [s], [], 0.5)
            if readable:
                chunk = s.recv(65536)
                if not chunk:
                    break
                answer += chunk
            elif writable:
                pending = pending or memoryview(frame)
                try:
                    n = s.send(pending)
                except (BrokenPipeError, ConnectionResetError):
                    break  # the server closed the connection after its 413
                pending, sent = pending[n:], sent + n
        status, headers, body = read_response(s, answer)
    assert status == 413 and headers["connection"] == "close"
    assert json.loads(body)["error"] == f"request body is over the limit of {MAX_BODY_BYTES} bytes"
    assert sent < 64 << 20, f"the client could send {sent} bytes: the server kept reading"


def test_body_limit_on_the_asgi_app(res, tiny_benchmark, user):
    client = TestClient(app_for(res, tiny_benchmark, max_body_bytes=2000))
    ok = {"user_id": user, "candidates": CANDS, "max_steps": 2}
    assert client.post("/v1/recommend", json=ok).status_code == 200  # under the limit: untouched
    r = client.post("/v1/recommend", content=b"x" * 2001, headers={"Content-Type": "application/json"})
    assert r.status_code == 413 and "2001 bytes is over the limit of 2000 bytes" in r.json()["error"]

    def chunks():  # no Content-Length: counted as it is read
        for _ in range(10):
            yield b" " * 500

    for path in ("/v1/recommend", "/v1/recommend/stream"):
        r = client.post(path, content=chunks(), headers={"Content-Type": "application/json"})
        assert r.status_code == 413 and r.json()["error"] == "request body is over the limit of 2000 bytes"
    assert (
        client.post(
            "/v1/recommend", content=b'{"user_id": ', headers={"Content-Type": "application/json"}
        ).status_code
        == 400
    )
    with pytest.raises(ValueError, match="max_body_bytes"):
        app_for(res, tiny_benchmark, max_body_bytes=0)


# ---- 2. a client that disconnects frees its slot -------------------------------------------------------


def test_disconnected_clients_free_their_slots_within_one_model_call(res, tiny_benchmark, user):
    """Four clients fill the four slots (two plain, two streaming) and hang up: the slots come back within one
    model call, not when the runs would have ended (4 runs x 8 turns x 0.5 s on one model slot)."""
    delay = 0.5
    model = ScriptedServeModel(answer=False, delay=delay)  # never answers: a run takes all 8 turns
    app = app_for(
        res, tiny_benchmark, model, config=AgentConfig(max_steps=8, max_tool_calls=3), timeout_s=120
    )
    body = json.dumps({"user_id": user, "candidates": CANDS}).encode()
    with serving(app) as port, httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=10) as http:
        socks = []
        for path in ("/v1/recommend", "/v1/recommend/stream") * 2:
            s = socket.create_connection(("127.0.0.1", port))
            s.sendall(request_head(path, {"Content-Length": str(len(body))}) + body)
            socks.append(s)
        deadline = time.monotonic() + 20
        while (http.get("/healthz").json()["busy"] < 4 or model.calls < 2) and time.monotonic() < deadline:
            time.sleep(0.02)  # all four runs hold a slot, and they are past their first (cold) setup
        assert http.post("/v1/recommend", json={"user_id": user, "candidates": CANDS}).status_code == 503
        calls_at_hangup = model.calls
        t0 = time.monotonic()
        for s in socks:
            s.close()
        while http.get("/healthz").json()["busy"] > 0 and time.monotonic() - t0 < 10:
            time.sleep(0.02)
        freed_after = time.monotonic() - t0
        assert freed_after < delay + 1.5, f"slots freed after {freed_after:.1f} s"
        assert model.calls <= calls_at_hangup + 1  # no run went on to a new turn
        r = http.post("/v1/recommend", json={"user_id": user, "candidates": CANDS, "max_steps": 1})
        assert r.status_code == 200 and r.json()["valid"] is False


# ---- 3. an unreachable model back end ------------------------------------------------------------------


def test_unreachable_backend_is_not_ready_and_requests_get_503(res, tiny_benchmark, user):
    dead = free_port()  # nothing listens there
    model = OpenAICompatible(f"http://127.0.0.1:{dead}/v1", "m", max_retries=0, timeout_s=2)
    with TestClient(app_for(res, tiny_benchmark, model, retry_after_s=3)) as client:
        r = client.get("/healthz")
        assert r.status_code == 503
        h = r.json()
        assert h["status"] == "unavailable" and h["ready"] is False and h["model"] == "m"
        assert h["reason"].startswith(f"http://127.0.0.1:{dead}/v1/models: ConnectError")
        for path in ("/v1/recommend", "/v1/recommend/stream"):
            r = client.post(path, json={"user_id": user, "candidates": CANDS})
            assert r.status_code == 503 and r.headers["Retry-After"] == "3"
            assert r.json()["error"].startswith(
                f"model back end unavailable: http://127.0.0.1:{dead}/v1/models"
            )
        assert client.get("/healthz").json()["busy"] == 0
    model.close()


def test_backend_failing_mid_run_is_a_502(res, tiny_benchmark, user):
    """The server answers /models but every chat call fails: 502 with the back end's reason, not a 500."""

    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.path == "/v1/models":
            return httpx.Response(200, json={"data": [{"id": "m"}]})
        return httpx.Response(500, text="model crashed")

    model = OpenAICompatible(
        "http://backend.test/v1", "m", max_retries=0, transport=httpx.MockTransport(handler)
    )
    with TestClient(app_for(res, tiny_benchmark, model)) as client:
        assert client.get("/healthz").json()["ready"] is True
        r = client.post("/v1/recommend", json={"user_id": user, "candidates": CANDS})
        assert r.status_code == 502
        assert r.json()["error"] == (
            "model back end failed: http://backend.test/v1/chat/completions: HTTP 500 after 1 attempts: "
            "model crashed"
        )
        with client.stream("POST", "/v1/recommend/stream", json={"user_id": user, "candidates": CANDS}) as s:
            events = sse_events(s.read().decode())
        assert [k for k, _ in events] == ["start", "error"] and events[-1][1]["status"] == 502
        assert client.get("/healthz").json()["busy"] == 0


def test_probe_is_one_cheap_cached_get():
    seen: list[tuple[str, str]] = []
    status = {"code": 200}

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append((request.method, request.url.path))
        return httpx.Response(status["code"], json={"data": []})

    model = OpenAICompatible("http://backend.test/v1", transport=httpx.MockTransport(handler))
    assert model.probe() is None and model.probe() is None
    assert seen == [("GET", "/v1/models")]  # the second answer came from the cache
    model._probed = None  # as if 5 s had passed
    status["code"] = 401
    assert model.probe() == "http://backend.test/v1/models: HTTP 401"
    model.close()


# ---- 4. /docs and /redoc offline -----------------------------------------------------------------------


def test_docs_pages_reference_no_external_url(res, tiny_benchmark):
    client = TestClient(app_for(res, tiny_benchmark))
    for path in ("/docs", "/redoc", "/docs/oauth2-redirect", "/"):
        r = client.get(path)
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/html")
        assert r.headers["content-security-policy"].startswith("default-src 'self';")  # nothing off-site
        assert not re.search(r"(https?:)?//[a-z0-9]", r.text, flags=re.I), (path, r.text)
        for asset in re.findall(r'(?:src|href)="([^"]+)"', r.text):
            assert client.get(asset).status_code == 200, (path, asset)
    assert "/static-offline-docs/swagger-ui-bundle.js" in client.get("/docs").text
    assert "/static-offline-docs/redoc.standalone.js" in client.get("/redoc").text
