"""Request body limits as pure ASGI middleware (it covers the mounted dashboard too).

The body is *not* read up front: routes authenticate first (a write without a valid key is refused
before a byte of its body is read, and its connection closed), then read it through this
middleware, which counts what arrives and gives up on a body that is larger than the limit (413)
or slower than ``timeout_s`` (408), so a client that sends headers and then nothing cannot hold a
server task. A spec (``POST /api/v1/studies``) has a limit of its own, far below the general one:
a spec is a few kilobytes, and parsing cost grows with size.
"""

from __future__ import annotations

import asyncio
import json
import time

from starlette.types import ASGIApp, Message, Receive, Scope, Send

SPEC_PATH = "/api/v1/studies"


class BodyError(Exception):
    """A request body refused while it was being read (answered by ``service.errors``)."""

    status_code = 400

    def __init__(self, detail: str) -> None:
        super().__init__(detail)
        self.detail = detail


class BodyTooLarge(BodyError):
    status_code = 413


class BodyTimeout(BodyError):
    status_code = 408


class BodyLimit:
    """413 for a body over the limit (by Content-Length at once, or by what arrives), 408 for a
    body not complete ``timeout_s`` after the request started."""

    def __init__(self, app: ASGIApp, max_bytes: int, max_spec_bytes: int, timeout_s: float) -> None:
        self.app = app
        self.max_bytes = max_bytes
        self.max_spec_bytes = max_spec_bytes
        self.timeout_s = timeout_s

    def limit_for(self, scope: Scope) -> int:
        if scope["method"] == "POST" and scope["path"].rstrip("/") == SPEC_PATH:
            return min(self.max_bytes, self.max_spec_bytes)
        return self.max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit = self.limit_for(scope)
        declared = dict(scope["headers"]).get(b"content-length")
        if declared is not None and (not declared.isdigit() or int(declared) > limit):
            await send_error(send, BodyTooLarge(too_large(limit)))
            return
        deadline = time.monotonic() + self.timeout_s
        size = 0
        complete = False
        started = False

        async def limited_receive() -> Message:
            nonlocal size, complete
            if complete:  # after the body: a disconnect, whenever it comes
                return await receive()
            try:
                message = await asyncio.wait_for(receive(), max(0.0, deadline - time.monotonic()))
            except TimeoutError:
                raise BodyTimeout(
                    f"request body not received within {self.timeout_s:g} s"
                ) from None
            if message["type"] == "http.request":
                size += len(message.get("body", b""))
                if size > limit:
                    raise BodyTooLarge(too_large(limit))
                complete = not message.get("more_body", False)
            return message

        async def tracked_send(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, limited_receive, tracked_send)
        except BodyError as exc:  # raised where no exception handler answers it
            if not started:
                await send_error(send, exc)


def too_large(limit: int) -> str:
    return f"request body larger than {limit} bytes"


async def send_error(send: Send, exc: BodyError) -> None:
    """Answer ``exc`` as JSON and close the connection (the rest of the body is not read)."""
    body = json.dumps({"detail": exc.detail}).encode()
    await send(
        {
            "type": "http.response.start",
            "status": exc.status_code,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
                (b"connection", b"close"),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})
