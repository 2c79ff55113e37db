"""Grounding scores from Vertex AI's check-grounding API (Discovery Engine).

Why: the local lexical checker only sees shared words; check-grounding runs a
model that decides, claim by claim, whether the supplied facts entail the
answer, so paraphrases count as supported and recombined words do not. It is
a paid network call, hence optional (``RAG_GENERATION_GROUNDING_CHECKER=vertex``)
and, when it fails, the engine falls back to the local checker.

The call: ``GroundedGenerationServiceClient.check_grounding`` on the REST
transport with the project's default grounding config, each supplied source
as a fact (its number as an attribute), and the answer without its ``[n]``
markers (they are ours, not claims). Unsupported claims are those the service
says needed a check and found no supporting fact for. The client library is
synchronous; the call runs in a worker thread.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

import google.auth.exceptions
import requests
from google.api_core import exceptions as api_exceptions
from google.auth.credentials import Credentials
from google.cloud import discoveryengine_v1 as discoveryengine

from services.common.citations import keep_supplied_citations
from services.common.errors import (
    DeadlineError,
    PlatformError,
    RateLimitedError,
    UnavailableError,
)
from services.generation.backends import SourcePassage
from services.generation.grounding import Grounding

MAX_FACT_CHARS = 10_000
"""The API's limit on one fact's text."""
MAX_FACTS = 200
"""The API's limit on facts per request."""
CITATION_THRESHOLD = 0.6
"""The API's default: how strongly a fact must support a claim to be cited for it."""


class VertexGroundingChecker:
    """GroundingChecker backed by Vertex AI check-grounding (see the module docstring)."""

    name = "vertex-check-grounding"

    def __init__(
        self,
        *,
        project: str,
        timeout_seconds: float,
        endpoint: str = "",
        credentials: Credentials | None = None,
    ) -> None:
        self._config = (
            f"projects/{project}/locations/global/groundingConfigs/default_grounding_config"
        )
        self._timeout = timeout_seconds
        self._where = f"check-grounding ({endpoint or 'discoveryengine.googleapis.com'})"
        self._client = discoveryengine.GroundedGenerationServiceClient(
            credentials=credentials,
            transport="rest",
            client_options={"api_endpoint": endpoint} if endpoint else None,
        )

    def _request(
        self, answer: str, sources: Sequence[SourcePassage]
    ) -> discoveryengine.CheckGroundingRequest:
        return discoveryengine.CheckGroundingRequest(
            grounding_config=self._config,
            answer_candidate=keep_supplied_citations(answer, set()).text,
            facts=[
                discoveryengine.GroundingFact(
                    fact_text=s.text[:MAX_FACT_CHARS],
                    attributes={"source_number": str(s.number), "title": s.title},
                )
                for s in sources[:MAX_FACTS]
            ],
            grounding_spec=discoveryengine.CheckGroundingSpec(
                citation_threshold=CITATION_THRESHOLD
            ),
        )

    def _error(self, err: Exception) -> PlatformError:
        if isinstance(err, api_exceptions.TooManyRequests):
            return RateLimitedError(f"{self._where}: rate limited: {err.message}")
        if isinstance(err, api_exceptions.DeadlineExceeded | requests.Timeout):
            return DeadlineError(f"{self._where}: timed out")
        return UnavailableError(f"{self._where}: {type(err).__name__}: {err}")

    async def check(self, answer: str, sources: Sequence[SourcePassage]) -> Grounding:
        """The service's support score and its unsupported claims."""
        request = self._request(answer, sources)
        try:
            response = await asyncio.to_thread(
                self._client.check_grounding, request=request, timeout=self._timeout
            )
        except (
            api_exceptions.GoogleAPIError,
            requests.RequestException,
            google.auth.exceptions.GoogleAuthError,
            ValueError,
        ) as err:
            raise self._error(err) from err
        checked = [c for c in response.claims if c.grounding_check_required]
        unsupported = [c.claim_text for c in checked if not c.citation_indices]
        return Grounding(response.support_score, unsupported, self.name, len(checked))
