"""Vertex AI check-grounding through the real Discovery Engine client (REST) against a fake."""

import google.oauth2.credentials
import pytest

from services.common.errors import UnavailableError
from services.generation.backends import SourcePassage
from services.generation.vertex_grounding import VertexGroundingChecker
from tests.contract.conftest import Running
from tests.contract.fakes.vertex_fake import VertexFake

SOURCES = [
    SourcePassage(
        1, "Full-time employees get 25 days of paid leave per year. Other.", "Leave", 0.7
    ),
    SourcePassage(2, "The cafeteria opens at noon.", "Cafeteria", 0.4),
]
ANSWER = "Full-time employees get 25 days of paid leave per year [1]. Leave is unlimited [2]."


def checker(endpoint: str) -> VertexGroundingChecker:
    return VertexGroundingChecker(
        project="acme-rag",
        timeout_seconds=5.0,
        endpoint=endpoint,
        credentials=google.oauth2.credentials.Credentials(token="fake-token"),  # type: ignore[no-untyped-call]
    )


async def test_scores_claims_and_lists_the_unsupported_ones(vertex: Running[VertexFake]) -> None:
    grounding = await checker(vertex.url).check(ANSWER, SOURCES)
    assert grounding.score == 0.5
    assert grounding.unsupported == ["Leave is unlimited."]
    assert (grounding.checker, grounding.checked) == ("vertex-check-grounding", 2)
    (sent,) = vertex.fake.grounding_requests
    assert sent["answerCandidate"] == (
        "Full-time employees get 25 days of paid leave per year. Leave is unlimited."
    ), "our [n] markers are not claims"
    assert sent["facts"][0] == {
        "factText": SOURCES[0].text,
        "attributes": {"source_number": "1", "title": "Leave"},
    }
    assert sent["groundingSpec"] == {"citationThreshold": 0.6}


async def test_unreachable_service_is_unavailable() -> None:
    with pytest.raises(UnavailableError, match="check-grounding"):
        await checker("http://127.0.0.1:1").check(ANSWER, SOURCES)
