"""Request body size limit: bodies over it get 413 before any route sees them."""
from __future__ import annotations

from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send


class BodyLimit:
    """ASGI middleware: refuse bodies over `max_bytes`, by Content-Length when a client
    sends one, and by counting otherwise (chunked uploads have no length up front).

    The body is read here, up to the limit, and handed to the app afterwards: bodies are
    small JSON job specs, and reading first is what lets the answer be a clean 413.
    Uploads (`streamed`: method and path) pass through: they stream to disk under a
    limit of their own (api/uploads.py).
    """

    def __init__(self, app: ASGIApp, max_bytes: int, streamed: frozenset[tuple[str, str]] = frozenset()):
        self.app, self.max_bytes, self.streamed = app, max_bytes, streamed

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or (scope["method"], scope["path"]) in self.streamed:
            return await self.app(scope, receive, send)
        declared = dict(scope["headers"]).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_bytes:
            return await self.refuse(scope, receive, send)
        messages = await self.read_body(receive)
        if messages is None:
            return await self.refuse(scope, receive, send)

        async def replay() -> Message:
            return messages.pop(0) if messages else await receive()

        await self.app(scope, replay, send)

    async def read_body(self, receive: Receive) -> list[Message] | None:
        """The request's body messages, or None once they pass the limit."""
        messages, size = [], 0
        while True:
            message = await receive()
            messages.append(message)
            size += len(message.get("body", b""))
            if size > self.max_bytes:
                return None
            if message["type"] != "http.request" or not message.get("more_body", False):
                return messages

    async def refuse(self, scope: Scope, receive: Receive, send: Send) -> None:
        response = JSONResponse({"detail": f"request body over {self.max_bytes} bytes"}, status_code=413)
        await response(scope, receive, send)
