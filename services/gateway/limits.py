"""Request bodies are bounded before they are read.

A body over its limit is refused with 413 before a byte of it is parsed: from
its Content-Length when the client sends one, else as soon as the bytes
received pass the limit. The services behind the gateway have limits of their
own, but only once the gateway has spooled or parsed the whole body.
"""

from __future__ import annotations

from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from services.gateway.errors import error_response

UPLOAD_PATH = "/v1/documents"


class BodyLimitMiddleware:
    """Refuse request bodies over `upload_bytes` (document uploads) or
    `other_bytes` (every other request: JSON questions and the like) with 413."""

    def __init__(self, app: ASGIApp, *, upload_bytes: int, other_bytes: int) -> None:
        self.app = app
        self._upload = upload_bytes
        self._other = other_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        upload = scope["method"] == "POST" and scope["path"] == UPLOAD_PATH
        limit = self._upload if upload else self._other
        declared = dict(scope["headers"]).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > limit:
            response = error_response(413, "RESOURCE_EXHAUSTED", _message(int(declared), limit))
            await response(scope, receive, send)
            return
        received = 0

        async def bounded() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    raise HTTPException(413, _message(received, limit, at_least=True))
            return message

        await self.app(scope, bounded, send)


def _message(size: int, limit: int, *, at_least: bool = False) -> str:
    size_text = f"at least {size}" if at_least else str(size)
    return f"request body of {size_text} bytes is over the limit of {limit} bytes"
