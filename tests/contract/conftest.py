"""Fake model servers for the contract tests, one per module, reset per test."""

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Generic, TypeVar

import pytest

from tests.contract.fakes.openai_fake import OpenAIFake
from tests.contract.fakes.server import serve
from tests.contract.fakes.vertex_fake import VertexFake

FakeT = TypeVar("FakeT")


@dataclass
class Running(Generic[FakeT]):
    """A fake and the base URL it answers on."""

    fake: FakeT
    url: str


@pytest.fixture(scope="module")
def openai_server() -> Iterator[Running[OpenAIFake]]:
    fake = OpenAIFake()
    with serve(fake.app) as url:
        yield Running(fake, url)


@pytest.fixture(scope="module")
def vertex_server() -> Iterator[Running[VertexFake]]:
    fake = VertexFake()
    with serve(fake.app) as url:
        yield Running(fake, url)


@pytest.fixture
def openai(openai_server: Running[OpenAIFake]) -> Running[OpenAIFake]:
    """The OpenAI fake with no scripted replies and no recorded requests."""
    openai_server.fake.replies.clear()
    openai_server.fake.requests.clear()
    openai_server.fake.headers.clear()
    return openai_server


@pytest.fixture
def vertex(vertex_server: Running[VertexFake]) -> Running[VertexFake]:
    """The Vertex fake with no scripted replies and no recorded requests."""
    fake = vertex_server.fake
    for recorded in (
        fake.replies,
        fake.requests,
        fake.paths,
        fake.headers,
        fake.grounding_requests,
    ):
        recorded.clear()
    return vertex_server
