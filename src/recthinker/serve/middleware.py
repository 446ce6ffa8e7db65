"""The service's two pure ASGI middlewares: the request-body limit (413) and the pages' Content-Security-Policy.

    app.add_middleware(BodyLimit, max_bytes=1 << 20)   # a larger body gets 413 before it is read
    app.add_middleware(SameOriginPages)                # every HTML page gets PAGE_CSP

Both wrap the ASGI `send` / `receive` callables, so they act on a streamed body and on any response,
FastAPI's own pages (/docs, /redoc) included.
"""

from __future__ import annotations

import json

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from recthinker.serve.schemas import ErrorBody

# What a page of this server may load: only from this server (the inline parts are Swagger UI's set-up).
PAGE_CSP = (
    "default-src 'self'; script-src 'self' 'unsafe-inline'; style-src 'self' 'unsafe-inline'; "
    "img-src 'self' data:; worker-src 'self' blob:"
)


class _BodyTooLarge(Exception):
    """Raised by `BodyLimit`'s `receive` when a streamed body passes the limit."""


class BodyLimit:
    """Pure ASGI middleware: a request body over `max_bytes` gets 413 (JSON) without being read.

    A declared `Content-Length` over the limit is refused before the app runs; a body without one (chunked)
    is counted as the app reads it, and the read stops at the first message past the limit. Either way the
    413 says `Connection: close`, so the server reads nothing more of that request.
    """

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app, self.max_bytes = app, max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = _content_length(scope)
        if declared is not None and declared > self.max_bytes:
            await self._refuse(
                send, f"request body of {declared} bytes is over the limit of {self.max_bytes} bytes"
            )
            return
        received, over, started = 0, False, False

        async def limited_receive() -> Message:
            nonlocal received, over
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    over = True
                    raise _BodyTooLarge
            return message

        async def guarded_send(message: Message) -> None:
            nonlocal started
            if over and not started:
                return  # the app's answer to the failed read (FastAPI makes it a 400): replaced by the 413
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, limited_receive, guarded_send)
        except _BodyTooLarge:
            if started:
                raise
        if over and not started:
            await self._refuse(send, f"request body is over the limit of {self.max_bytes} bytes")

    @staticmethod
    async def _refuse(send: Send, message: str) -> None:
        body = json.dumps(ErrorBody(error=message).model_dump()).encode()
        headers = [
            (b"content-type", b"application/json"),
            (b"content-length", str(len(body)).encode()),
            (b"connection", b"close"),
        ]
        await send({"type": "http.response.start", "status": 413, "headers": headers})
        await send({"type": "http.response.body", "body": body})


class SameOriginPages:
    """Pure ASGI middleware: every HTML page gets `PAGE_CSP`, so the browser fetches nothing from another
    host (ReDoc's footer links a logo on its CDN: the browser does not load it, ReDoc leaves it out)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        async def send_with_csp(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", ()))
                if any(k == b"content-type" and v.startswith(b"text/html") for k, v in headers):
                    headers.append((b"content-security-policy", PAGE_CSP.encode()))
                    message = {**message, "headers": headers}
            await send(message)

        await self.app(scope, receive, send_with_csp if scope["type"] == "http" else send)


def _content_length(scope: Scope) -> int | None:
    for name, value in scope.get("headers", ()):
        if name == b"content-length":
            try:
                return int(value)
            except ValueError:
                return None  # the server refuses a malformed length itself
    return None
