"""`ragctl debug ID [--expect DOC_ID] [--json]`: why was this answer wrong?

Fetches the query service's record of one recent request (by request id, or by
trace id) from RequestDebugService and prints the checklist an engineer walks:
the question and parameters, the retrieved chunks with their scores, whether the
expected document is indexed and where its best chunk ranks for the question,
the model, its parameters and the exact prompt, the answer with its citations,
the grounding verdict, the stage timings; then the findings that follow.

The record holds the question, chunk text and the prompt: it is printed to the
operator's terminal only, never logged. ragctl asks as --tenant (else RAG_TENANT)
with its --access-label values, and the query service shows only the records of
that tenant's requests whose caller held no label ragctl lacks. The expected
document is checked as the request's own caller (its tenant and access labels)
would search: the question is why *that* caller got *that* answer.
"""

import argparse
import asyncio
import json
import sys
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

import grpc
from google.protobuf.json_format import MessageToDict
from google.protobuf.message import Message
from grpc import aio
from rich.console import Console, Group, RenderableType
from rich.panel import Panel
from rich.table import Table
from rich.text import Text

from ragplatform.v1 import common_pb2, debug_pb2
from services.cli.common import client_settings
from services.common.tenancy import DEFAULT_TENANT
from services.runtime.clients import PlatformClients


def add_command(
    commands: "argparse._SubParsersAction[argparse.ArgumentParser]",
    common: argparse.ArgumentParser,
) -> None:
    """Register `debug` on ragctl's command parser."""
    debug = commands.add_parser(
        "debug",
        parents=[common],
        help="show what happened to one recent request (retrieval, prompt, citations)",
    )
    debug.add_argument("id", metavar="ID", help="AskResponse.request_id, or the request's trace id")
    debug.add_argument(
        "--expect",
        metavar="DOC_ID",
        help="a document of the request's tenant that should have answered: is it indexed "
        "and visible to the caller, where does it rank?",
    )
    debug.add_argument("--json", action="store_true", help="print the record and checks as JSON")
    debug.add_argument(
        "--access-label",
        dest="access_labels",
        action="append",
        default=[],
        metavar="LABEL",
        help="an access label to read the record with: every label the request's caller "
        "held is needed (repeatable)",
    )
    debug.set_defaults(handler=cmd_debug, service="query", tenant_fallback=DEFAULT_TENANT)


def _dict(message: Message) -> dict[str, Any]:
    return MessageToDict(
        message, preserving_proto_field_name=True, always_print_fields_with_no_presence=True
    )


async def fetch_record(
    clients: PlatformClients, key: str, caller: common_pb2.Caller
) -> debug_pb2.RequestRecord:
    """The record whose request id is `key`, or else whose trace id is `key`,
    as `caller` may read it."""
    stub = clients.request_debug
    try:
        reply = await stub.GetRequestRecord(
            debug_pb2.GetRequestRecordRequest(request_id=key, caller=caller)
        )
    except aio.AioRpcError as error:
        if error.code() != grpc.StatusCode.NOT_FOUND:
            raise
        reply = await stub.GetRequestRecord(
            debug_pb2.GetRequestRecordRequest(trace_id=key, caller=caller)
        )
    record: debug_pb2.RequestRecord = reply.record
    return record


def _retrieved(record: debug_pb2.RequestRecord) -> Sequence[Any]:
    return record.response.debug.retrieved


def findings(
    record: debug_pb2.RequestRecord,
    expected: str | None = None,
    check: debug_pb2.CheckDocumentResponse | None = None,
) -> list[str]:
    """What the record says went wrong (or right), one sentence each, in the
    order of the pipeline: the first finding is usually the cause."""
    if record.error_code:
        return [f"the request failed: {record.error_code}: {record.error_message}"]
    response = record.response
    retrieved = _retrieved(record)
    out: list[str] = []
    if not retrieved:
        out.append("retrieval returned no chunk: the index is empty or the filter excludes all")
    if expected is not None and check is not None:
        out.append(_expected_finding(record, expected, check))
    if response.declined:
        out.append("the answer declined: generation found no support in the retrieved chunks")
    removed = response.debug.invalid_citations_removed
    if removed:
        out.append(f"generation cited {removed} source(s) it was not given; they were removed")
    grounding = _dict(response).get("grounding")
    if grounding and not response.declined:
        unsupported = grounding.get("unsupported_sentences", [])
        if unsupported:
            out.append(
                f"grounding score {grounding.get('score', 0):.2f}: "
                f"{len(unsupported)} sentence(s) not supported by their citations"
            )
    if not out:
        out.append("nothing stands out: retrieval found chunks and the answer cites them")
    return out


def _expected_finding(
    record: debug_pb2.RequestRecord, expected: str, check: debug_pb2.CheckDocumentResponse
) -> str:
    if not check.indexed:
        return (
            f"{expected} is not indexed for this caller: ingest it into tenant "
            f"{record.request.caller.tenant!r} (or it is labelled for other callers)"
        )
    ranks = [
        n for n, hit in enumerate(_retrieved(record), start=1) if hit.chunk.document_id == expected
    ]
    cited = {c.document_id for c in record.response.citations}
    if ranks and expected in cited:
        return f"{expected} was retrieved (rank {ranks[0]}) and cited"
    if ranks:
        return (
            f"{expected} was retrieved (rank {ranks[0]}) but not cited: a generation problem "
            "(see the prompt or selection)"
        )
    top_k = len(_retrieved(record))
    if check.rank:
        return (
            f"{expected} is indexed but its best chunk ranks {check.rank} for this question "
            f"(score {check.best_chunk.score:.3f}), outside the {top_k} retrieved: a retrieval "
            "problem (chunking, embedding, filter) or top_k too small"
        )
    return (
        f"{expected} is indexed but none of its chunks is in the first {check.depth} for this "
        "question: a retrieval problem (chunking, embedding) or the document does not say it"
    )


_SHOWN_DEBUG_FIELDS = frozenset({"retrieved", "prompt", "selection", "invalid_citations_removed"})
"""AskDebug fields the checklist lays out itself; any other is printed as it comes."""


def _section(title: str) -> Text:
    return Text(f"\n{title}", style="bold")


def render_checklist(
    record: debug_pb2.RequestRecord,
    expected: str | None = None,
    check: debug_pb2.CheckDocumentResponse | None = None,
) -> list[RenderableType]:
    """The checklist for the terminal."""
    response = record.response
    when = datetime.fromtimestamp(record.received_at_unix_ms / 1000, UTC)
    head = Text(f"request {record.request_id or '(none)'}", style="bold")
    head.append(f" · trace {record.trace_id or '(tracing off)'}")
    head.append(f" · {when:%Y-%m-%d %H:%M:%S} UTC · {'AskStream' if record.streamed else 'Ask'}")
    caller = record.request.caller
    labels = ", ".join(caller.access_labels) or "none"
    out: list[RenderableType] = [
        head,
        Text(f"tenant: {caller.tenant or '(none)'} · access labels: {labels}"),
        Text(f"question: {record.request.question}"),
    ]
    params = _dict(record.request)
    for shown in ("question", "debug", "caller"):
        params.pop(shown, None)
    out.append(Text("parameters: " + json.dumps(params, sort_keys=True), style="dim"))

    cited_numbers = {c.number for c in response.citations}
    out.append(_section(f"1. retrieval: {len(_retrieved(record))} chunks"))
    table = Table(show_edge=False)
    for column in ("#", "score", "document", "chunk", "cited"):
        table.add_column(column)
    for number, hit in enumerate(_retrieved(record), start=1):
        chunk = hit.chunk
        table.add_row(
            str(number),
            f"{hit.score:.3f}",
            Text(f"{chunk.document_id} — {chunk.title}"),
            Text(f"#{chunk.ordinal} {chunk.section}".strip()),
            f"[{number}]" if number in cited_numbers else "",
        )
    out.append(table)

    if expected is not None and check is not None:
        out.append(_section(f"2. expected document {expected}"))
        if not check.indexed:
            out.append(Text("not indexed", style="red"))
        else:
            doc = check.document
            out.append(Text(f"indexed: {doc.title!r}, {doc.chunk_count} chunks, {doc.source_uri}"))
            rank = str(check.rank) if check.rank else f"beyond {check.depth}"
            out.append(
                Text(
                    f"best chunk #{check.best_chunk.chunk.ordinal}: score "
                    f"{check.best_chunk.score:.3f}, rank {rank} among all chunks"
                )
            )

    out.append(_section("3. generation"))
    usage = response.usage
    line = f"backend {response.backend} · model {response.model} · tokens in "
    line += f"{usage.input_tokens} / out {usage.output_tokens}"
    out.append(Text(line))
    debug = response.debug
    # Route, cost and any model parameters the contract carries, as they come.
    extra = {k: v for k, v in _dict(response).items() if k in ("route", "cost_usd")}
    extra |= {k: v for k, v in _dict(debug).items() if k not in _SHOWN_DEBUG_FIELDS}
    if extra:
        out.append(Text(json.dumps(extra, sort_keys=True), style="dim"))
    if debug.prompt:
        out.append(Panel(Text(debug.prompt), title="prompt", title_align="left"))
    for sentence in debug.selection:
        line = f"  selected [{sentence.source_number}] {sentence.text} ({sentence.score:.3f})"
        out.append(Text(line))

    out.append(_section("4. answer and citations"))
    out.append(Text(response.answer or "(no answer)"))
    for citation in response.citations:
        out.append(
            Text(
                f"  [{citation.number}] {citation.document_id} — {citation.title} · "
                f"score {citation.score:.3f}"
            )
        )

    out.append(_section("5. grounding"))
    verdict = "declined (the sources do not answer)" if response.declined else "answered"
    out.append(Text(f"{verdict} · invalid citations removed: {debug.invalid_citations_removed}"))
    grounding = _dict(response).get("grounding")
    if grounding:
        out.append(Text(json.dumps(grounding, sort_keys=True), style="dim"))

    timings = " · ".join(f"{t.stage} {t.seconds * 1000:.0f} ms" for t in response.timings)
    out.append(_section("6. timings"))
    out.append(Text(timings or "(none)", style="dim"))

    out.append(_section("findings"))
    out.extend(Text(f"- {finding}") for finding in findings(record, expected, check))
    return out


def cmd_debug(args: argparse.Namespace, out: Console, err: Console) -> int:
    """Print the checklist of one recent request (exit 1 if it is unknown)."""
    settings = client_settings(args)

    async def work() -> int:
        clients = PlatformClients(settings)
        try:
            caller = common_pb2.Caller(tenant=args.tenant, access_labels=args.access_labels)
            record = await fetch_record(clients, args.id, caller)
            check = None
            if args.expect:
                check = await clients.request_debug.CheckDocument(
                    debug_pb2.CheckDocumentRequest(
                        question=record.request.question,
                        document_id=args.expect,
                        caller=record.request.caller,
                    )
                )
        finally:
            await clients.close()
        if args.json:
            data = {
                "record": _dict(record),
                "expected": _dict(check) if check is not None else None,
                "findings": findings(record, args.expect, check),
            }
            sys.stdout.write(json.dumps(data, ensure_ascii=False) + "\n")
        else:
            out.print(Group(*render_checklist(record, args.expect, check)), soft_wrap=True)
        return 0

    return asyncio.run(work())


__all__ = ["add_command", "cmd_debug", "fetch_record", "findings", "render_checklist"]
