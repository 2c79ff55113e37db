"""What the model-server fakes share: scripted replies, recorded requests, a gate
that holds requests (a stuck backend), and the ways a stream can go wrong.

A fake answers each request with the next scripted reply (then with its
default one). No reply waits on the wall clock: a backend that does not answer
is a reply with ``hang=True``, held until the test (or the fixture, after the
test) calls :meth:`ScriptedFake.release`. A deadline test therefore gives the
client a tiny deadline against a fake that never answers: it cannot pass or
fail by how fast the machine is.
"""

from __future__ import annotations

import abc
import asyncio
import json
import threading
from collections import deque
from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, PlainTextResponse, Response

DEFAULT_TEXT = "Full-time employees get 25 days of paid leave per year [1]."


@dataclass(frozen=True)
class ScriptedReply:
    """How a fake answers one request (each fake adds its protocol's fields)."""

    text: str = DEFAULT_TEXT
    status: int = 200
    """An HTTP error status instead of an answer."""
    hang: bool = False
    """Hold the request until the fake is released: a stuck backend."""
    malformed: bool = False
    """200 with a body that is not a reply."""
    break_after_chunks: int | None = None
    """Streaming: drop the connection after this many text chunks."""
    error_after_chunks: int | None = None
    """Streaming: send the protocol's in-stream error after this many text chunks."""
    error_code: int = 500
    """The code of that in-stream error (an HTTP error's is its status)."""


ReplyT = TypeVar("ReplyT", bound=ScriptedReply)


class Gate:
    """Holds coroutines of any event loop until opened from any thread."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._held: list[tuple[asyncio.AbstractEventLoop, asyncio.Event]] = []

    async def wait(self) -> None:
        event = asyncio.Event()
        with self._lock:
            self._held.append((asyncio.get_running_loop(), event))
        await event.wait()

    def open(self) -> int:
        """Let every held coroutine go on; returns how many there were."""
        with self._lock:
            held, self._held = self._held, []
        for loop, event in held:
            loop.call_soon_threadsafe(event.set)
        return len(held)


class ScriptedFake(abc.ABC, Generic[ReplyT]):
    """A fake's ASGI app and state: scripted replies, recorded request bodies
    and headers."""

    def __init__(self, default: ReplyT) -> None:
        self.app = FastAPI()
        self.replies: deque[ReplyT] = deque()
        self.requests: list[dict[str, Any]] = []
        self.headers: list[dict[str, str]] = []
        self._default = default
        self._gate = Gate()

    def script(self, *replies: ReplyT) -> None:
        """Answer the next requests with `replies`, then with the default reply."""
        self.replies.extend(replies)

    def release(self) -> int:
        """Let held (``hang=True``) requests answer; returns how many were held."""
        return self._gate.open()

    def reset(self) -> None:
        """No scripted replies, no recorded requests, nothing held."""
        self.release()
        self.replies.clear()
        self.requests.clear()
        self.headers.clear()

    async def _take(self, request: Request, body: dict[str, Any]) -> ReplyT | Response:
        """Record the request; its scripted reply, or the response that ends it
        (an HTTP error or a malformed body), once the gate lets it through."""
        self.requests.append(body)
        self.headers.append(dict(request.headers))
        reply = self.replies.popleft() if self.replies else self._default
        if reply.hang:
            await self._gate.wait()
        if reply.status != 200:
            return JSONResponse({"error": self._error(reply.status)}, status_code=reply.status)
        if reply.malformed:
            return PlainTextResponse("<html>502 Bad Gateway</html>", media_type="application/json")
        return reply

    @abc.abstractmethod
    def _error(self, code: int) -> dict[str, Any]:
        """The protocol's error object for `code` (the value of ``"error"``)."""


def sse(data: dict[str, Any], newline: str = "\n") -> str:
    """One Server-Sent Event carrying `data` as JSON."""
    return f"data: {json.dumps(data)}{newline}{newline}"


async def chunked(events: Iterable[str], reply: ScriptedReply, error: str) -> AsyncIterator[str]:
    """`events` (the text chunks, then the rest) as the reply's script says:
    whole, cut (the connection drops) or ended by the in-stream `error`."""
    for n, event in enumerate(events):
        if n == reply.break_after_chunks:
            raise ConnectionAbortedError("fake: connection dropped mid-stream")
        if n == reply.error_after_chunks:
            yield error
            return
        yield event


def pieces(text: str, size: int = 3) -> list[str]:
    """`text` split into deltas of about `size` words (whitespace kept)."""
    words = text.split(" ")
    return [
        " ".join(words[i : i + size]) + (" " if i + size < len(words) else "")
        for i in range(0, len(words), size)
    ]
