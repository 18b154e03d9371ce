"""HEAD on every GET route, as pure ASGI middleware (it covers the mounted dashboard too).

FastAPI routes declared with ``@router.get`` answer only GET; a HEAD request fell through to the
dashboard's mount and got its 404. Here HEAD is routed as GET and the body of the answer dropped:
status and headers (``Content-Length`` included) are those a GET gets, as RFC 9110 asks.
"""

from __future__ import annotations

from starlette.types import ASGIApp, Message, Receive, Scope, Send


class HeadAsGet:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] != "HEAD":
            await self.app(scope, receive, send)
            return

        async def without_body(message: Message) -> None:
            if message["type"] == "http.response.body":
                if message.get("more_body", False):
                    return  # the rest of a streamed body: nothing to send for HEAD
                message = {"type": "http.response.body", "body": b""}
            await send(message)

        await self.app({**scope, "method": "GET"}, receive, without_body)
