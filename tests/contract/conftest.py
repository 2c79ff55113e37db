"""Fake model servers for the contract tests, one per module, reset per test."""

from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

import pytest

from services.generation.llm import Completion
from tests.contract.fakes.openai_fake import OpenAIFake
from tests.contract.fakes.scripted import ScriptedFake
from tests.contract.fakes.server import serve
from tests.contract.fakes.vertex_fake import VertexFake

FakeT = TypeVar("FakeT", bound=ScriptedFake[Any])


@dataclass
class Running(Generic[FakeT]):
    """A fake and the base URL it answers on."""

    fake: FakeT
    url: str


def _serving(fake: FakeT) -> Iterator[Running[FakeT]]:
    with serve(fake.app) as url:
        yield Running(fake, url)


def _fresh(running: Running[FakeT]) -> Iterator[Running[FakeT]]:
    """`running` with no scripted replies and no recorded requests; what the
    test left held (``hang=True``) is released after it."""
    running.fake.reset()
    yield running
    running.fake.release()


@pytest.fixture(scope="module")
def openai_server() -> Iterator[Running[OpenAIFake]]:
    yield from _serving(OpenAIFake())


@pytest.fixture(scope="module")
def vertex_server() -> Iterator[Running[VertexFake]]:
    yield from _serving(VertexFake())


@pytest.fixture
def openai(openai_server: Running[OpenAIFake]) -> Iterator[Running[OpenAIFake]]:
    """The OpenAI fake, fresh for the test."""
    yield from _fresh(openai_server)


@pytest.fixture
def vertex(vertex_server: Running[VertexFake]) -> Iterator[Running[VertexFake]]:
    """The Vertex fake, fresh for the test."""
    yield from _fresh(vertex_server)


async def received(stream: AsyncIterator[str | Completion], into: list[str]) -> None:
    """Consume a chat model's `stream` into `into`, its text deltas; fails the
    test if the stream ends in a Completion (the reply was taken as an answer)."""
    async for event in stream:
        assert isinstance(event, str), f"a reply that is no complete answer became {event!r}"
        into.append(event)
