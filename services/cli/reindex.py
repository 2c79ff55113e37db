"""`ragctl reindex`: move the index to another embedding model without downtime.

    ragctl reindex --embedding MODEL      build a generation of MODEL, switch to it
    ragctl reindex --status               the generations and their progress
    ragctl reindex --promote NAME         make a generation live (e.g. undo a switch)
    ragctl reindex --drop NAME            delete a generation that is not live

The new generation is filled from the live one's stored chunks (same chunk ids,
text and metadata, so citations keep their ids), embedded by the embedding
service that runs MODEL (found among RAG_EMBEDDING_ADDR and RAG_EMBEDDING_ADDRS,
or --embedding-addr). The live generation keeps answering meanwhile and keeps
taking writes; each pass compares the two registries and copies what differs,
until a pass finds nothing to copy. Then readers switch in one step, and a
last pass copies the writes that raced the switch. Everything the command
knows is in the index, so a re-index that was stopped (or whose process died)
resumes where it was when run again: documents already copied are skipped,
never embedded twice.
"""

from __future__ import annotations

import argparse
import asyncio
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field

from rich.console import Console
from rich.table import Table
from rich.text import Text

from ragplatform.v1 import common_pb2, embedding_pb2, retrieval_pb2
from services.cli.common import client_settings, progress_bar, with_clients
from services.common.errors import FailedPreconditionError, PlatformError
from services.runtime.clients import PlatformClients
from services.runtime.embedders import Embedder
from services.runtime.errors import downstream

MAX_PASSES = 5
"""Passes before the switch: each copies what changed during the previous one;
writes that keep racing them are caught by the pass after the switch."""
COPY_CONCURRENCY = 4
"""Documents copied at once: enough to keep one embedding service busy."""
EMBED_BATCH = 64
"""Chunks per EmbedDocuments call."""
PAGE_SIZE = 1000


@dataclass
class PassReport:
    """What one pass over the two generations did."""

    copied: int = 0
    removed: int = 0
    current: int = 0
    """Documents already equal in both generations."""
    failed: list[str] = field(default_factory=list)
    """One line per document that could not be copied, naming it and why."""

    @property
    def changes(self) -> int:
        return self.copied + self.removed


Progress_ = Callable[[int, int, str], None]
"""(done, total, what) after each document of a pass."""


class Reindex:
    """Copies one generation into another through the embedder of the target's model."""

    def __init__(self, clients: PlatformClients, embedder: Embedder) -> None:
        self._clients = clients
        self._embedder = embedder
        self._address = clients.settings.retrieval_addr

    async def start(self) -> retrieval_pb2.Generation:
        """The building generation of the embedder's model (created, or resumed)."""
        with downstream("retrieval", self._address):
            reply: retrieval_pb2.CreateGenerationResponse = await (
                self._clients.index_generations.CreateGeneration(
                    retrieval_pb2.CreateGenerationRequest(
                        embedding_model=self._embedder.model,
                        dimension=self._embedder.info.dimension,
                    )
                )
            )
        return reply.generation

    async def promote(self, name: str) -> retrieval_pb2.Generation:
        with downstream("retrieval", self._address):
            reply: retrieval_pb2.PromoteGenerationResponse = (
                await self._clients.index_generations.PromoteGeneration(
                    retrieval_pb2.PromoteGenerationRequest(name=name)
                )
            )
        return reply.generation

    async def sync(
        self,
        source: str,
        target: str,
        progress: Progress_,
        switched_at_unix: int = 0,
    ) -> PassReport:
        """One pass: make `target` hold what `source` holds.

        Before the switch (`switched_at_unix` 0) every difference is copied and
        every document `source` lacks is removed from `target`. After it,
        `target` is live and takes writes of its own: a document is copied only
        when `source` has a newer version, and removed only when `target`'s
        copy predates the switch (its source was deleted while it was copied).
        """
        report = PassReport()
        plan: list[tuple[str, str, bool]] = []  # (tenant, document id, copy or remove)
        for tenant in await self._tenants(source, target):
            async for old, new in _joined(
                self._listing(tenant, source), self._listing(tenant, target)
            ):
                if old is not None and _needs_copy(old, new, switched_at_unix):
                    plan.append((tenant, old.document_id, True))
                elif (
                    old is None
                    and new is not None
                    and (not switched_at_unix or new.indexed_at_unix < switched_at_unix)
                ):
                    plan.append((tenant, new.document_id, False))
                else:
                    report.current += 1
        slots = asyncio.Semaphore(COPY_CONCURRENCY)
        done = 0

        async def apply(tenant: str, document_id: str, copy: bool) -> None:
            nonlocal done
            async with slots:
                try:
                    if copy:
                        await self._copy(source, tenant, document_id)
                        report.copied += 1
                    else:
                        await self._remove(target, tenant, document_id)
                        report.removed += 1
                except PlatformError as error:
                    if error.code_name != "NOT_FOUND":  # gone meanwhile: the next pass sees it
                        report.failed.append(f"{tenant}/{document_id}: {error}")
                done += 1
                progress(done, len(plan), f"{tenant}/{document_id}")

        await asyncio.gather(*(apply(*step) for step in plan))
        return report

    async def _tenants(self, *generations: str) -> list[str]:
        tenants: set[str] = set()
        for name in generations:
            with downstream("retrieval", self._address):
                reply = await self._clients.index_generations.ListTenants(
                    retrieval_pb2.ListTenantsRequest(generation=name)
                )
            tenants.update(reply.tenants)
        return sorted(tenants)

    async def _listing(
        self, tenant: str, generation: str
    ) -> AsyncIterator[common_pb2.DocumentInfo]:
        token = ""
        while True:
            with downstream("retrieval", self._address):
                page = await self._clients.retrieval.ListDocuments(
                    retrieval_pb2.ListDocumentsRequest(
                        tenant=tenant, page_size=PAGE_SIZE, page_token=token, generation=generation
                    )
                )
            for document in page.documents:
                yield document
            token = page.next_page_token
            if not token:
                return

    async def _copy(self, source: str, tenant: str, document_id: str) -> None:
        """Embed the document's stored chunks with the target model and write
        them, with the source's record unchanged (its indexed-at time included:
        it tells the passes which version is newer)."""
        with downstream("retrieval", self._address):
            stored = await self._clients.index_generations.GetDocumentChunks(
                retrieval_pb2.GetDocumentChunksRequest(
                    tenant=tenant, document_id=document_id, generation=source
                )
            )
        chunks = list(stored.chunks)
        vectors: list[embedding_pb2.Vector] = []
        for start in range(0, len(chunks), EMBED_BATCH):
            part = chunks[start : start + EMBED_BATCH]
            with downstream("embedding", self._embedder.address):
                embedded = await self._embedder.stub.EmbedDocuments(
                    embedding_pb2.EmbedDocumentsRequest(
                        texts=[c.text for c in part], titles=[stored.document.title] * len(part)
                    )
                )
            vectors.extend(embedded.vectors)
        with downstream("retrieval", self._address):
            await self._clients.retrieval.ReplaceDocument(
                retrieval_pb2.ReplaceDocumentRequest(
                    document=stored.document,
                    chunks=[
                        retrieval_pb2.IndexedChunk(chunk=chunk, vector=vector)
                        for chunk, vector in zip(chunks, vectors, strict=True)
                    ],
                    embedding_model=self._embedder.model,
                )
            )

    async def _remove(self, generation: str, tenant: str, document_id: str) -> None:
        with downstream("retrieval", self._address):
            await self._clients.retrieval.RemoveDocument(
                retrieval_pb2.RemoveDocumentRequest(
                    tenant=tenant, document_id=document_id, generation=generation
                )
            )


def _needs_copy(
    old: common_pb2.DocumentInfo, new: common_pb2.DocumentInfo | None, switched_at_unix: int
) -> bool:
    if new is None:
        return True
    if switched_at_unix:
        return old.indexed_at_unix > new.indexed_at_unix
    return old != new


async def _joined(
    left: AsyncIterator[common_pb2.DocumentInfo], right: AsyncIterator[common_pb2.DocumentInfo]
) -> AsyncIterator[tuple[common_pb2.DocumentInfo | None, common_pb2.DocumentInfo | None]]:
    """Merge two listings ordered by document id into pairs (None: absent on that side)."""
    a = await anext(left, None)
    b = await anext(right, None)
    while a is not None or b is not None:
        if b is None or (a is not None and a.document_id < b.document_id):
            yield a, None
            a = await anext(left, None)
        elif a is None or b.document_id < a.document_id:
            yield None, b
            b = await anext(right, None)
        else:
            yield a, b
            a, b = await anext(left, None), await anext(right, None)


async def _live_generation(clients: PlatformClients) -> retrieval_pb2.Generation:
    with downstream("retrieval", clients.settings.retrieval_addr):
        reply: retrieval_pb2.ListGenerationsResponse = (
            await clients.index_generations.ListGenerations(retrieval_pb2.ListGenerationsRequest())
        )
    live: retrieval_pb2.Generation = next(g for g in reply.generations if g.state == "live")
    return live


async def run_reindex(
    clients: PlatformClients,
    model: str,
    embedding_addr: str,
    *,
    promote: bool,
    report: Callable[[str], None],
    progress: Progress_,
) -> int:
    """The whole re-index; the exit code (1 when documents failed to copy)."""
    embedder = await clients.embedders.serving_at(embedding_addr) if embedding_addr else None
    embedder = embedder or await clients.embedders.serving(model)
    if embedder.model != model:
        raise FailedPreconditionError(
            f"the embedding service at {embedder.address} runs '{embedder.model}', not '{model}'"
        )
    reindex = Reindex(clients, embedder)
    live = await _live_generation(clients)
    if live.embedding_model == model:
        report(f"generation {live.name} of '{model}' is already live; nothing to do")
        return 0
    target = await reindex.start()
    report(
        f"building generation {target.name} of '{model}' ({target.dimension} dimensions) "
        f"from {live.name} ('{live.embedding_model}')"
    )
    for number in range(1, MAX_PASSES + 1):
        outcome = await reindex.sync(live.name, target.name, progress)
        report(_pass_line(f"pass {number}", outcome))
        if outcome.failed:
            for line in outcome.failed:
                report(f"  failed: {line}")
            report("not switching: fix or delete the documents above, then run again")
            return 1
        if not outcome.changes:
            break
    if not promote:
        report(f"generation {target.name} is complete; switch with --promote {target.name}")
        return 0
    switched = await reindex.promote(target.name)
    report(f"switched: generation {switched.name} of '{model}' is live")
    outcome = await reindex.sync(live.name, target.name, progress, switched.promoted_at_unix)
    report(_pass_line("after the switch", outcome))
    for line in outcome.failed:
        report(f"  failed: {line}")
    report(f"generation {live.name} is kept; delete it with --drop {live.name}")
    return 1 if outcome.failed else 0


def _pass_line(name: str, outcome: PassReport) -> str:
    return (
        f"{name}: {outcome.copied} copied, {outcome.removed} removed, "
        f"{outcome.current} already current, {len(outcome.failed)} failed"
    )


# -- the command ------------------------------------------------------------------


def add_command(
    commands: argparse._SubParsersAction[argparse.ArgumentParser],
    common: argparse.ArgumentParser,
) -> None:
    """Register `reindex` on ragctl's command parser."""
    reindex = commands.add_parser(
        "reindex",
        parents=[common],
        help="move the index to another embedding model (blue/green), or manage generations",
    )
    action = reindex.add_mutually_exclusive_group(required=True)
    action.add_argument("--embedding", metavar="MODEL", help="build a generation of MODEL")
    action.add_argument("--status", action="store_true", help="list the generations")
    action.add_argument("--promote", metavar="NAME", help="make generation NAME live")
    action.add_argument("--drop", metavar="NAME", help="delete generation NAME (not the live one)")
    reindex.add_argument(
        "--embedding-addr",
        metavar="HOST:PORT",
        default="",
        help="embedding service running MODEL (default: the one of RAG_EMBEDDING_ADDR and "
        "RAG_EMBEDDING_ADDRS that runs it)",
    )
    reindex.add_argument(
        "--no-promote", action="store_true", help="build the generation but do not switch to it"
    )
    reindex.set_defaults(handler=cmd_reindex, service="retrieval")


def cmd_reindex(args: argparse.Namespace, out: Console, err: Console) -> int:
    """One of the four actions; exit 1 when documents failed to copy."""
    return asyncio.run(
        with_clients(client_settings(args), lambda clients: _dispatch(args, clients, out))
    )


async def _dispatch(args: argparse.Namespace, clients: PlatformClients, out: Console) -> int:
    stub = clients.index_generations
    if args.promote:
        reply = await stub.PromoteGeneration(
            retrieval_pb2.PromoteGenerationRequest(name=args.promote)
        )
        out.print(
            f"generation {reply.generation.name} ('{reply.generation.embedding_model}') is live"
        )
        return 0
    if args.drop:
        await stub.DropGeneration(retrieval_pb2.DropGenerationRequest(name=args.drop))
        out.print(f"generation {args.drop} dropped")
        return 0
    if args.status:
        listing = await stub.ListGenerations(retrieval_pb2.ListGenerationsRequest())
        out.print(generations_table(listing.generations))
        return 0
    progress = progress_bar(out)
    with progress:
        task = progress.add_task("re-indexing", total=None)

        def advance(done: int, total: int, what: str) -> None:
            progress.update(task, completed=done, total=total, description=f"copying {what[:40]}")

        return await run_reindex(
            clients,
            args.embedding,
            args.embedding_addr,
            promote=not args.no_promote,
            report=lambda line: progress.console.print(Text(line)),
            progress=advance,
        )


def generations_table(generations: Sequence[retrieval_pb2.Generation]) -> Table:
    table = Table("generation", "state", "embedding model", "dimension", "documents", "chunks")
    for generation in generations:
        table.add_row(
            generation.name,
            generation.state,
            generation.embedding_model or "-",
            str(generation.dimension),
            str(generation.document_count),
            str(generation.chunk_count),
        )
    return table
