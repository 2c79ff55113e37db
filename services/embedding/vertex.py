"""Vertex AI text embeddings through google-genai's ``models.embed_content``.

For ``text-embedding-005`` and ``gemini-embedding-001`` the SDK posts to
``…/publishers/google/models/{model}:predict`` with one instance per text
(``content``, ``task_type``, ``title``) and ``parameters``
(``outputDimensionality``, ``autoTruncate``), and reads
``predictions[].embeddings`` (``values``, ``statistics.token_count``,
``statistics.truncated``). Documents are embedded as ``RETRIEVAL_DOCUMENT``
with their title, questions as ``RETRIEVAL_QUERY``.

Nothing is truncated silently: ``autoTruncate`` is off, so Google refuses an
over-long text instead of embedding its head. Clients count tokens with an
upper bound of the hidden tokenizer's count (`services.common.tokens`): a
document over the limit by that bound is refused here, naming it, before any
request; a question is cut to the bound, as the API promises for queries.

A call's texts are packed into requests within the model's limits (texts and
tokens per request, by the bound; one title per request, since the SDK puts
the config's title on every instance) and the requests run concurrently in a
thread pool of ``concurrency`` workers: that pool is the quota. Threads, not
an event loop, because the micro-batcher already calls ``embed`` in a worker
thread and the SDK's synchronous client is thread-safe; the pool bounds the
requests in flight across every call without a second loop to manage.

A request answered 429 RESOURCE_EXHAUSTED or 503 UNAVAILABLE is sent again
after a full-jitter backoff (`Backoff`), up to a bounded number of attempts;
any other failure is permanent and raised at once, so the documents of the
call fail once rather than being retried into the same refusal. Tokens and
cost of every answered request are metered (`services.embedding.metrics`).

Limits and their sources: docs/embedding.md.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Sequence
from concurrent.futures import FIRST_EXCEPTION, ThreadPoolExecutor, wait
from dataclasses import dataclass, field

import numpy as np
from google.auth.credentials import Credentials
from google.genai import errors as genai_errors
from google.genai import types

from services.common.errors import InvalidInputError, PlatformError, UnavailableError
from services.common.tokens import utf8_token_bound
from services.embedding import metrics
from services.embedding.backends import Matrix, TextKind, TokenCounting
from services.runtime.costs import PriceTable
from services.runtime.genai import FAILURES, http_detail, platform_error, vertex_client


@dataclass(frozen=True)
class VertexModel:
    """What Google documents for one embedding model (sources in docs/embedding.md)."""

    max_input_tokens: int
    """Longest text, in the model's tokens."""
    max_dimension: int
    """Full output size; `output_dimensionality` may ask for fewer."""
    texts_per_request: int
    tokens_per_request: int


VERTEX_MODELS: dict[str, VertexModel] = {
    "text-embedding-005": VertexModel(2048, 768, 250, 20_000),
    "gemini-embedding-001": VertexModel(2048, 3072, 1, 20_000),
}

SPECIAL_TOKENS_PER_INPUT = 3
"""Tokens the model may add that cover no byte of the text: start and end
tokens and SentencePiece's dummy "▁" prefix. Not documented, so all three."""

_TASK_TYPES: dict[TextKind, str] = {"document": "RETRIEVAL_DOCUMENT", "query": "RETRIEVAL_QUERY"}
_RETRYABLE = {429: "RESOURCE_EXHAUSTED", 503: "UNAVAILABLE"}


@dataclass(frozen=True)
class Backoff:
    """Exponential backoff with full jitter: retry n waits uniform(0, min(cap, base·2ⁿ)).

    Full jitter spreads the retries of many throttled requests over the whole
    window instead of sending them back in waves. `sleep` and `uniform` are
    injectable so tests neither wait nor depend on chance.
    """

    attempts: int = 6
    base_seconds: float = 0.5
    cap_seconds: float = 8.0
    sleep: Callable[[float], None] = time.sleep
    uniform: Callable[[float, float], float] = random.uniform

    def wait(self, retry: int) -> None:
        """Sleep before retry number `retry` (0 for the first)."""
        self.sleep(self.uniform(0.0, min(self.cap_seconds, self.base_seconds * 2**retry)))


@dataclass
class _Request:
    """One embed_content call: positions in the embed call's texts, and their title."""

    title: str
    indexes: list[int] = field(default_factory=list)
    tokens: int = 0


class _Retryable(Exception):
    """A throttle or an outage worth another attempt; `error` if none is left."""

    def __init__(self, status: str, error: PlatformError) -> None:
        super().__init__(str(error))
        self.status = status
        self.error = error


class VertexEmbedder:
    """An Embedder on a Vertex AI embedding model (see the module docstring)."""

    def __init__(
        self,
        *,
        model: str,
        dimension: int,
        project: str,
        location: str,
        prices: PriceTable,
        max_texts_per_request: int = 0,
        max_tokens_per_request: int = 0,
        concurrency: int = 8,
        timeout_seconds: float = 30.0,
        base_url: str = "",
        credentials: Credentials | None = None,
        backoff: Backoff | None = None,
    ) -> None:
        spec = VERTEX_MODELS.get(model)
        if spec is None:
            raise ValueError(
                f"unknown Vertex AI embedding model {model!r}; known: {', '.join(VERTEX_MODELS)}"
            )
        if not 1 <= dimension <= spec.max_dimension:
            raise ValueError(
                f"{model} embeds into at most {spec.max_dimension} dimensions, not {dimension}"
            )
        self._texts_per_request = max_texts_per_request or spec.texts_per_request
        self._tokens_per_request = max_tokens_per_request or spec.tokens_per_request
        if self._tokens_per_request < spec.max_input_tokens:
            raise ValueError(
                f"{self._tokens_per_request} tokens per request cannot hold one text of "
                f"{spec.max_input_tokens} tokens ({model}'s limit)"
            )
        if concurrency < 1:
            raise ValueError("concurrency must be at least 1")
        self._model = model
        self._spec = spec
        self._dimension = dimension
        self._prices = prices
        self._backoff = backoff or Backoff()
        self._where = f"Vertex AI {model} ({project}/{location})"
        self._client = vertex_client(
            project=project,
            location=location,
            timeout_seconds=timeout_seconds,
            base_url=base_url,
            credentials=credentials,
        )
        self._pool = ThreadPoolExecutor(concurrency, thread_name_prefix="vertex-embedding")

    @property
    def model_name(self) -> str:
        return self._model

    @property
    def dimension(self) -> int:
        return self._dimension

    @property
    def max_input_tokens(self) -> int:
        return self._spec.max_input_tokens

    @property
    def special_tokens_per_input(self) -> int:
        return SPECIAL_TOKENS_PER_INPUT

    @property
    def token_counting(self) -> TokenCounting:
        return "utf8_bytes_upper_bound"

    def tokenizer_json(self) -> bytes:
        """Google does not publish the tokenizer."""
        return b""

    def count_tokens(self, texts: Sequence[str]) -> list[int]:
        """The upper bound of each text's tokens, special tokens included."""
        return [utf8_token_bound(text) + SPECIAL_TOKENS_PER_INPUT for text in texts]

    def close(self) -> None:
        """Stop the request threads (waiting for those under way) and the HTTP client."""
        self._pool.shutdown(wait=True, cancel_futures=True)
        self._client.close()

    def embed(self, texts: Sequence[str], kind: TextKind, titles: Sequence[str] = ()) -> Matrix:
        """One L2-normalised row per text, from as few concurrent requests as the
        limits allow; raises the first request's permanent failure."""
        if titles and len(titles) != len(texts):
            raise ValueError(f"{len(titles)} titles given for {len(texts)} texts")
        if kind == "query":
            texts = [self._cut(text) for text in texts]
            titles = ()
        counts = self.count_tokens(texts)
        for index, count in enumerate(counts):
            if count > self.max_input_tokens:
                raise InvalidInputError(
                    f"texts[{index}] counts {count} tokens; {self._model} reads at most "
                    f"{self.max_input_tokens}: split it, it is not truncated"
                )
        requests = self._pack(counts, titles)
        rows = np.empty((len(texts), self._dimension), dtype=np.float32)
        futures = [self._pool.submit(self._send, texts, kind, request) for request in requests]
        done, pending = wait(futures, return_when=FIRST_EXCEPTION)
        for future in pending:
            future.cancel()
        errors = [error for f in futures if f in done and (error := f.exception()) is not None]
        if errors:
            wait(pending)  # nothing of this call runs on after it raised
            raise errors[0]
        for request, future in zip(requests, futures, strict=True):
            rows[request.indexes] = future.result()
        return rows

    def _cut(self, query: str) -> str:
        """`query`, cut to the longest head whose bound fits the model's input."""
        budget = self.max_input_tokens - SPECIAL_TOKENS_PER_INPUT
        if utf8_token_bound(query) <= budget:
            return query
        head = query.encode("utf-8")[:budget].decode("utf-8", errors="ignore")
        while (excess := utf8_token_bound(head) - budget) > 0:  # NFKC lengthened it
            head = head[:-excess]
        return head

    def _pack(self, counts: Sequence[int], titles: Sequence[str]) -> list[_Request]:
        """Requests holding every text once, in order within each title, each
        within the texts and tokens per request."""
        open_requests: dict[str, _Request] = {}
        requests: list[_Request] = []
        for index, count in enumerate(counts):
            title = titles[index] if titles else ""
            request = open_requests.get(title)
            if (
                request is None
                or len(request.indexes) >= self._texts_per_request
                or request.tokens + count > self._tokens_per_request
            ):
                request = _Request(title)
                open_requests[title] = request
                requests.append(request)
            request.indexes.append(index)
            request.tokens += count
        return requests

    def _send(self, texts: Sequence[str], kind: TextKind, request: _Request) -> Matrix:
        """One request's rows, retried with backoff while it is throttled."""
        contents: list[types.ContentUnion] = [texts[i] for i in request.indexes]
        config = types.EmbedContentConfig(
            task_type=_TASK_TYPES[kind],
            title=request.title or None,
            output_dimensionality=self._dimension,
            auto_truncate=False,
        )
        retry = 0
        while True:
            try:
                return self._attempt(contents, config, request)
            except _Retryable as throttled:
                if retry + 1 >= self._backoff.attempts:
                    metrics.FAILURES.labels(self._model, throttled.error.code_name).inc()
                    raise throttled.error from throttled
                metrics.RETRIES.labels(self._model, throttled.status).inc()
                self._backoff.wait(retry)
                retry += 1
            except PlatformError as error:
                metrics.FAILURES.labels(self._model, error.code_name).inc()
                raise

    def _attempt(
        self,
        contents: list[types.ContentUnion],
        config: types.EmbedContentConfig,
        request: _Request,
    ) -> Matrix:
        started = time.perf_counter()
        try:
            response = self._client.models.embed_content(
                model=self._model, contents=contents, config=config
            )
        except FAILURES as err:
            raise self._error(err, request) from err
        finally:
            metrics.REQUEST_SECONDS.labels(self._model).observe(time.perf_counter() - started)
        embeddings = response.embeddings or []
        if len(embeddings) != len(contents):
            raise UnavailableError(
                f"{self._where}: {len(embeddings)} embeddings for {len(contents)} texts"
            )
        tokens = 0
        for embedding in embeddings:
            statistics = embedding.statistics
            if statistics is not None and statistics.truncated:
                raise UnavailableError(f"{self._where}: truncated a text despite autoTruncate off")
            if statistics is not None and statistics.token_count:
                tokens += int(statistics.token_count)
        metrics.TOKENS.labels(self._model).inc(tokens)
        metrics.COST.labels(self._model).inc(self._prices.cost(self._model, tokens))
        rows = np.asarray([e.values or [] for e in embeddings], dtype=np.float32)
        if rows.shape != (len(contents), self._dimension):
            raise UnavailableError(
                f"{self._where}: vectors of shape {rows.shape[1:]}, expected ({self._dimension},)"
            )
        norms = np.linalg.norm(rows, axis=1, keepdims=True)
        if not np.all(norms > 0):
            raise UnavailableError(f"{self._where}: a zero vector")
        # Google normalises full-size vectors only; a shorter output_dimensionality is not.
        normalised: Matrix = rows / norms
        return normalised

    def _error(self, err: Exception, request: _Request) -> PlatformError | _Retryable:
        """The platform error for a failed request (retryable or not), naming the
        model and the request's texts: a 400 is the caller's (INVALID_ARGUMENT)."""
        where = f"{self._where}, texts {_positions(request.indexes)}"
        if isinstance(err, genai_errors.APIError) and err.code == 400:
            return InvalidInputError(f"{where}: refused ({http_detail(err)})")
        error = platform_error(err, where)
        if isinstance(err, genai_errors.APIError) and err.code in _RETRYABLE:
            return _Retryable(_RETRYABLE[err.code], error)
        return error


def _positions(indexes: Sequence[int]) -> str:
    """A request's texts for a message: "[3, 4]", "[3..9]" or "[3, 5, 8, …] (12 texts)"."""
    if len(indexes) <= 3:
        return f"{list(indexes)}"
    if indexes[-1] - indexes[0] == len(indexes) - 1:
        return f"[{indexes[0]}..{indexes[-1]}]"
    return f"[{', '.join(map(str, indexes[:3]))}, …] ({len(indexes)} texts)"
