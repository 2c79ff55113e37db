"""ragctl: run and use the platform from a terminal.

`up`/`down` start and stop the processes (services/cli/supervisor.py does the
work); `status`, `ingest`, `ask`, `docs`, `debug` (services/cli/debug.py) and `eval`
(services/cli/evaluate.py) each convert their arguments into calls of the gRPC
contract and render the replies, as text for people or JSON for scripts. Addresses
and deadlines come from the same RAG_* environment the services read, so ragctl
talks to whatever platform that environment describes.

Every call acts for one tenant: `--tenant`, else RAG_TENANT, else "default"
(the embedded world's tenant; `eval` keeps its data sets apart in "eval").
ragctl talks gRPC to the services directly, so it is an operator's tool: it
may name any tenant, where the gateway takes the tenant from the API key.

Exit codes: 0 success, 1 failure (a gRPC error is printed as one line
`error: CODE: message`, never a traceback), 2 bad usage, 130 interrupted.
"""

import argparse
import asyncio
import json
import signal
import sys
import time
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from types import FrameType
from typing import Any

import grpc
from google.protobuf.json_format import MessageToDict
from google.protobuf.message import Message
from pydantic import Field
from rich.console import Console, Group, RenderableType
from rich.live import Live
from rich.panel import Panel
from rich.table import Table
from rich.text import Text

from ragplatform.v1 import common_pb2, ingestion_pb2, query_pb2, retrieval_pb2
from services.cli import debug as debug_command
from services.cli import evaluate as eval_command
from services.cli import jobs as jobs_command
from services.cli import reindex as reindex_command
from services.cli.common import client_settings, progress_bar, with_clients
from services.cli.evaluate import EVAL_TENANT
from services.cli.supervisor import (
    ALL,
    DEFAULT_START_TIMEOUT,
    DEFAULT_STOP_TIMEOUT,
    KNOWN,
    LLM,
    SERVING,
    Platform,
    StartupError,
    address_of,
    check_health,
    metrics_url,
    settings_from_env,
)
from services.common.errors import InvalidInputError
from services.common.tenancy import DEFAULT_TENANT, validate_labels, validate_tenant
from services.llm.settings import LlmSettings
from services.runtime.clients import PlatformClients
from services.runtime.settings import PlatformSettings

INGEST_DEFAULT_TIMEOUT = 3600.0
"""Deadline for a whole `ingest` when --timeout is not given: a directory of PDFs
takes far longer than one RPC's default deadline."""
STATUS_DEFAULT_TIMEOUT = 2.0
"""Deadline of each health check of `status` when --timeout is not given."""
LIST_PAGE_SIZE = 1000

_RESULT_STATUS = {
    ingestion_pb2.IngestResult.STATUS_CREATED: "created",
    ingestion_pb2.IngestResult.STATUS_UPDATED: "updated",
    ingestion_pb2.IngestResult.STATUS_UNCHANGED: "unchanged",
    ingestion_pb2.IngestResult.STATUS_FAILED: "failed",
}
SUMMARY_ORDER = ("created", "updated", "unchanged", "failed")

Handler = Callable[[argparse.Namespace, Console, Console], int]
"""A command: parsed arguments, stdout console, stderr console → exit code."""


class CliSettings(PlatformSettings):
    """ragctl's settings (env prefix RAG_): the platform's, plus whom it acts for."""

    tenant: str | None = Field(
        default=None,
        description=(
            "Tenant ragctl's ingest, ask, docs and eval act for when --tenant is not given; "
            f'unset: "{DEFAULT_TENANT}" (eval: "{EVAL_TENANT}").'
        ),
    )


def resolve_tenant(args: argparse.Namespace) -> None:
    """Set `args.tenant` for a command that acts for one (its parser set
    `tenant_fallback`): --tenant, else RAG_TENANT, else the command's fallback.
    Resolved once here, so that every command follows the same rule."""
    fallback: str | None = getattr(args, "tenant_fallback", None)
    if fallback is not None and args.tenant is None:
        args.tenant = CliSettings().tenant or fallback


# --------------------------------------------------------------------------- parsing


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be > 0: {text!r}")
    return value


def _tenant(text: str) -> str:
    try:
        return validate_tenant(text)
    except InvalidInputError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


def _label(text: str) -> str:
    try:
        return validate_labels([text], "label")[0]
    except InvalidInputError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


def _add_labels(parser: argparse.ArgumentParser, flag: str, help_text: str) -> None:
    """A repeatable `--tag` (into `tags`) or `--access-label` (into `access_labels`)."""
    name = "tags" if flag == "--tag" else "access_labels"
    parser.add_argument(
        flag,
        dest=name,
        action="append",
        type=_label,
        default=[],
        metavar="TAG" if flag == "--tag" else "LABEL",
        help=f"{help_text} (repeatable)",
    )


def _date_bound(text: str, *, end_of_day: bool) -> int:
    """Unix seconds from `1700000000` or a UTC date `2024-05-31` (its first second,
    or with `end_of_day` its last, so that a date range includes both its days)."""
    if text.lstrip("-").isdigit():
        return int(text)
    try:
        day = datetime.strptime(text, "%Y-%m-%d").replace(tzinfo=UTC)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"not a date (YYYY-MM-DD) or Unix seconds: {text!r}"
        ) from None
    return int(day.timestamp()) + (86_399 if end_of_day else 0)


def _since(text: str) -> int:
    return _date_bound(text, end_of_day=False)


def _until(text: str) -> int:
    return _date_bound(text, end_of_day=True)


def _non_negative_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0: {text!r}")
    return value


def build_parser() -> argparse.ArgumentParser:
    """ragctl's command line. `--timeout` is accepted before or after the command."""
    timeout_help = (
        "deadline in seconds: per gRPC call (default RAG_RPC_TIMEOUT_SECONDS; for ingest "
        f"the whole run, default {INGEST_DEFAULT_TIMEOUT:g}); for up, how long to wait for "
        f"health (default {DEFAULT_START_TIMEOUT:g}); for down, how long to wait for "
        f"processes to exit before killing them (default {DEFAULT_STOP_TIMEOUT:g}); for "
        f"status, each health check (default {STATUS_DEFAULT_TIMEOUT:g})"
    )
    tenant_help = (
        f'tenant to act for (default RAG_TENANT, else "{DEFAULT_TENANT}"; eval: '
        f'"{EVAL_TENANT}"); ignored by up, down, status and debug (which uses the request\'s)'
    )
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--timeout",
        type=_positive_float,
        metavar="SECONDS",
        default=argparse.SUPPRESS,
        help=timeout_help,
    )
    common.add_argument(
        "--tenant", type=_tenant, metavar="TENANT", default=argparse.SUPPRESS, help=tenant_help
    )
    parser = argparse.ArgumentParser(
        prog="ragctl",
        description="Run the RAG platform and use it: ingest documents, ask questions.",
        epilog="Addresses come from RAG_* environment variables (see PlatformSettings).",
    )
    parser.add_argument("--timeout", type=_positive_float, metavar="SECONDS", help=timeout_help)
    parser.add_argument("--tenant", type=_tenant, metavar="TENANT", help=tenant_help)
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    data_dir_help = "state, logs and pid files (default RAG_DATA_DIR, .ragdata)"
    up = commands.add_parser("up", parents=[common], help="start every service")
    up.add_argument("--data-dir", type=Path, metavar="DIR", help=data_dir_help)
    up.add_argument(
        "--detach", "-d", action="store_true", help="return once healthy; stop with `ragctl down`"
    )
    up.add_argument(
        "--llm",
        action="store_true",
        help="also start the local LLM (`make setup-llm` installs it) as the simple tier",
    )
    up.set_defaults(handler=cmd_up)

    down = commands.add_parser("down", parents=[common], help="stop services started detached")
    down.add_argument("--data-dir", type=Path, metavar="DIR", help=data_dir_help)
    down.set_defaults(handler=cmd_down)

    status = commands.add_parser("status", parents=[common], help="health of every service")
    status.add_argument("--json", action="store_true", help="print a JSON list")
    status.set_defaults(handler=cmd_status)

    ingest = commands.add_parser("ingest", parents=[common], help="ingest files or directories")
    ingest.add_argument("paths", nargs="+", metavar="PATH", help="file, directory or file:// URI")
    ingest.add_argument("--json", action="store_true", help="one JSON object per document")
    _add_labels(ingest, "--tag", "give every document this tag, for `ask --tag`")
    _add_labels(
        ingest,
        "--access-label",
        "only callers holding one of these labels see the documents; none: the whole tenant",
    )
    ingest.set_defaults(handler=cmd_ingest, service="ingestion", tenant_fallback=DEFAULT_TENANT)

    ask = commands.add_parser("ask", parents=[common], help="ask a question")
    ask.add_argument("question")
    ask.add_argument(
        "--top-k", type=_non_negative_int, default=0, metavar="N", help="chunks to retrieve"
    )
    ask.add_argument(
        "--json",
        action="store_true",
        help="print the AskResponse as JSON (with --stream: one JSON object per event)",
    )
    ask.add_argument("--debug", action="store_true", help="show retrieved chunks and selection")
    ask.add_argument("--stream", action="store_true", help="print the answer as it is written")
    _add_labels(ask, "--tag", "answer from documents carrying one of these tags")
    ask.add_argument(
        "--since", type=_since, metavar="DATE", help="documents dated on or after (YYYY-MM-DD)"
    )
    ask.add_argument(
        "--until", type=_until, metavar="DATE", help="documents dated on or before (YYYY-MM-DD)"
    )
    _add_labels(ask, "--access-label", "ask as a caller holding this access label")
    ask.set_defaults(handler=cmd_ask, service="query", tenant_fallback=DEFAULT_TENANT)

    docs = commands.add_parser("docs", parents=[common], help="list or delete documents")
    docs_commands = docs.add_subparsers(dest="docs_command", required=True, metavar="ACTION")
    docs_list = docs_commands.add_parser("list", parents=[common], help="list indexed documents")
    docs_list.add_argument("--json", action="store_true", help="print a JSON list")
    docs_list.set_defaults(
        handler=cmd_docs_list, service="retrieval", tenant_fallback=DEFAULT_TENANT
    )
    docs_delete = docs_commands.add_parser("delete", parents=[common], help="delete a document")
    docs_delete.add_argument("document_id", metavar="ID")
    docs_delete.set_defaults(
        handler=cmd_docs_delete, service="ingestion", tenant_fallback=DEFAULT_TENANT
    )

    debug_command.add_command(commands, common)
    eval_command.add_command(commands, common)
    reindex_command.add_command(commands, common)
    jobs_command.add_commands(commands, common, to_uri)
    return parser


# --------------------------------------------------------------------------- formatting


def message_to_dict(message: Message) -> dict[str, Any]:
    """A message as JSON-ready data with the contract's field names, defaults included."""
    return MessageToDict(
        message, preserving_proto_field_name=True, always_print_fields_with_no_presence=True
    )


def to_uri(path: str) -> str:
    """An absolute file:// URI for a path; strings that already are URIs pass unchanged."""
    if "://" in path:
        return path
    return Path(path).expanduser().resolve().as_uri()


_TRANSPORT_FAILURES = ("failed to connect", "deadline exceeded", "connection refused")


def error_line(err: grpc.RpcError, called: str | None = None) -> str:
    """`error: CODE: message` for a failed call. When the call itself could not
    reach `called` (a "service at address" phrase), the message starts with it:
    gRPC's own transport messages do not say which service was meant."""
    code = err.code()
    details = err.details() or ""
    name = code.name if code is not None else "UNKNOWN"
    transport = details.lower().startswith(_TRANSPORT_FAILURES) or not details
    if called and transport and name in ("UNAVAILABLE", "DEADLINE_EXCEEDED"):
        details = f"{called}: {details}" if details else called
    return f"error: {name}: {details}" if details else f"error: {name}"


def result_status(result: ingestion_pb2.IngestResult) -> str:
    """created / updated / unchanged / failed (unspecified for an unset status)."""
    return _RESULT_STATUS.get(result.status, "unspecified")


def ingest_summary(counts: Mapping[str, int]) -> str:
    """`N documents: a created, b updated, c unchanged, d failed`."""
    total = sum(counts.values())
    parts = ", ".join(f"{counts.get(key, 0)} {key}" for key in SUMMARY_ORDER)
    noun = "document" if total == 1 else "documents"
    return f"{total} {noun}: {parts}"


def failure_line(result: ingestion_pb2.IngestResult) -> Text:
    """One failed document: its source, code and message."""
    source = result.source_uri or result.document.source_uri or result.document.document_id
    line = Text("failed ", style="bold red")
    line.append(source or "?")
    line.append(f": {result.error_code or 'UNKNOWN'}: {result.message}", style="red")
    return line


def format_citation(citation: query_pb2.Citation) -> Text:
    """`[n] Title — source · p. 3 · § Section · score 0.812`."""
    line = Text(f"[{citation.number}] ", style="bold")
    line.append(citation.title or citation.document_id or "untitled")
    line.append(f" — {citation.source_uri}", style="cyan")
    if citation.page:
        line.append(f" · p. {citation.page}")
    if citation.section:
        line.append(f" · § {citation.section}")
    line.append(f" · score {citation.score:.3f}", style="dim")
    return line


def format_timings(response: query_pb2.AskResponse) -> Text:
    """Stage timings, backend and request id on one dim line."""
    parts = [f"{t.stage} {t.seconds * 1000:.0f} ms" for t in response.timings]
    if response.backend:
        parts.append(f"{response.backend}/{response.model}" if response.model else response.backend)
    if response.request_id:
        parts.append(f"request {response.request_id}")
    return Text(" · ".join(parts), style="dim")


def format_route(response: query_pb2.AskResponse) -> Text:
    """Which tier answered and why, the backends that failed before, an escalation
    and the grounding score, on one line: where a model's answer came from."""
    route = response.route
    tier = common_pb2.Tier.Name(route.tier).removeprefix("TIER_").lower()
    parts = [f"route {tier}: {route.reason}"]
    parts.extend(f"{a.backend} failed: {a.error_code}" for a in route.fallbacks)
    if route.escalation:
        parts.append(f"escalated: {route.escalation}")
    if response.HasField("grounding") and not response.declined:
        parts.append(f"grounding {response.grounding.score:.2f}")
    return Text(" · ".join(parts), style="dim")


def format_debug(debug: query_pb2.AskDebug) -> list[RenderableType]:
    """The debug view: retrieved chunks, the extractive selection, the prompt."""
    out: list[RenderableType] = [Text("Retrieved", style="bold")]
    for number, scored in enumerate(debug.retrieved, start=1):
        chunk = scored.chunk
        line = Text(f"  {number}. ", style="bold")
        line.append(f"{chunk.title or chunk.document_id} #{chunk.ordinal}")
        line.append(f" score {scored.score:.3f}", style="dim")
        line.append("\n     " + " ".join(chunk.text.split())[:200], style="dim")
        out.append(line)
    if debug.selection:
        out.append(Text("Selected sentences", style="bold"))
        for sentence in debug.selection:
            line = Text(f"  [{sentence.source_number}] ")
            line.append(sentence.text)
            line.append(f" ({sentence.score:.3f})", style="dim")
            out.append(line)
    if debug.prompt:
        out.append(Panel(Text(debug.prompt), title="prompt", title_align="left"))
    if debug.invalid_citations_removed:
        out.append(Text(f"invalid citations removed: {debug.invalid_citations_removed}"))
    return out


def render_answer(
    response: query_pb2.AskResponse, *, include_text: bool = True, debug: bool = False
) -> list[RenderableType]:
    """The answer, its numbered sources and the timings (dim), for the terminal."""
    out: list[RenderableType] = []
    if include_text:
        out.append(Text(response.answer))
    if response.declined:
        out.append(Text("(the sources do not answer this question)", style="yellow"))
    if response.citations:
        out.append(Text("\nSources", style="bold"))
        out.extend(format_citation(c) for c in response.citations)
    if debug and response.HasField("debug"):
        out.append(Text(""))
        out.extend(format_debug(response.debug))
    out.append(Text(""))
    if response.HasField("route"):
        out.append(format_route(response))
    out.append(format_timings(response))
    return out


def status_rows(settings: LlmSettings, health: Mapping[str, str]) -> list[dict[str, str]]:
    """`{name, address, health, metrics}` per service; the gateway's address is its URL,
    `metrics` the URL Prometheus scrapes (empty when RAG_METRICS_ENABLED is false)."""
    return [
        {
            "name": name,
            "address": address_of(settings, name),
            "health": state,
            "metrics": metrics_url(settings, name) if settings.metrics_enabled else "",
        }
        for name, state in health.items()
    ]


_HEALTH_STYLE = {SERVING: "green", "STARTING": "yellow", "WAITING": "dim"}


def health_table(rows: Sequence[Mapping[str, str]], title: str | None = None) -> Table:
    """A table of services, addresses and health."""
    table = Table(title=title, title_justify="left")
    table.add_column("service")
    table.add_column("address")
    table.add_column("health")
    for row in rows:
        style = _HEALTH_STYLE.get(row["health"], "red")
        table.add_row(row["name"], row["address"], Text(row["health"], style=style))
    return table


def documents_table(documents: Sequence[common_pb2.DocumentInfo]) -> Table:
    """Indexed documents, one row each, the source under the title (`--json` has
    every field)."""
    table = Table()
    # Ids are what `docs delete` takes: never shortened, whatever the width.
    id_width = max((len(doc.document_id) for doc in documents), default=2)
    table.add_column("id", no_wrap=True, min_width=id_width)
    table.add_column("title / source", overflow="fold")
    table.add_column("chunks", justify="right", no_wrap=True)
    table.add_column("size", justify="right", no_wrap=True)
    table.add_column("indexed", no_wrap=True)
    for doc in documents:
        indexed = datetime.fromtimestamp(doc.indexed_at_unix, UTC).strftime("%Y-%m-%d")
        described = Text(doc.title or "(untitled)")
        described.append(f"\n{doc.source_uri}", style="dim")
        table.add_row(
            Text(doc.document_id),
            described,
            str(doc.chunk_count),
            human_size(doc.size_bytes),
            indexed if doc.indexed_at_unix else "",
        )
    return table


def human_size(size: int) -> str:
    """Bytes as B, KiB, MiB or GiB."""
    value = float(size)
    for unit in ("B", "KiB", "MiB"):
        if value < 1024:
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{value:.1f} GiB"


def _print_json(data: object) -> None:
    sys.stdout.write(json.dumps(data, ensure_ascii=False) + "\n")
    sys.stdout.flush()


# --------------------------------------------------------------------------- commands


def cmd_status(args: argparse.Namespace, out: Console, err: Console) -> int:
    """Health of every service (and of the local LLM while `up --llm` runs it);
    exit 1 unless all serve."""
    settings = settings_from_env()
    llm = Platform.from_pid_files(settings.data_dir, services=[LLM]).pids()
    names = (*llm, *ALL)
    health = check_health(settings, names, timeout=args.timeout or STATUS_DEFAULT_TIMEOUT)
    rows = status_rows(settings, health)
    if args.json:
        _print_json(rows)
    else:
        out.print(health_table(rows))
    return 0 if all(state == SERVING for state in health.values()) else 1


def cmd_ingest(args: argparse.Namespace, out: Console, err: Console) -> int:
    """IngestUris with a progress bar (or JSON lines); exit 1 if any document failed."""
    settings = client_settings(args, INGEST_DEFAULT_TIMEOUT)
    request = ingestion_pb2.IngestUrisRequest(
        uris=[to_uri(p) for p in args.paths],
        tenant=args.tenant,
        access_labels=args.access_labels,
        tags=args.tags,
    )

    async def work(clients: PlatformClients) -> int:
        counts: Counter[str] = Counter()
        call = clients.ingestion.IngestUris(request)
        if args.json:
            async for event in call:
                if event.WhichOneof("event") == "result":
                    counts[result_status(event.result)] += 1
                    _print_json(message_to_dict(event.result))
            return 1 if counts["failed"] else 0
        progress = progress_bar(out)
        with progress:
            task = progress.add_task("ingesting", total=None)
            async for event in call:
                if event.WhichOneof("event") == "plan":
                    progress.update(task, total=event.plan.document_count)
                    continue
                result = event.result
                counts[result_status(result)] += 1
                if result.status == ingestion_pb2.IngestResult.STATUS_FAILED:
                    progress.console.print(failure_line(result))
                name = result.document.title or result.source_uri
                progress.update(task, advance=1, description=f"ingesting {name[:40]}")
        out.print(ingest_summary(counts), style="red" if counts["failed"] else "green")
        return 1 if counts["failed"] else 0

    return asyncio.run(with_clients(settings, work))


def cmd_ask(args: argparse.Namespace, out: Console, err: Console) -> int:
    """Ask (or AskStream) and print the answer with its sources."""
    settings = client_settings(args)
    fields = {
        "question": args.question,
        "top_k": args.top_k,
        "debug": args.debug,
        "caller": common_pb2.Caller(tenant=args.tenant, access_labels=args.access_labels),
        "filter": common_pb2.MetadataFilter(
            tags=args.tags, date_from_unix=args.since, date_to_unix=args.until
        ),
    }

    async def work(clients: PlatformClients) -> int:
        if not args.stream:
            response = await clients.query.Ask(query_pb2.AskRequest(**fields))
            if args.json:
                _print_json(message_to_dict(response))
            else:
                out.print(Group(*render_answer(response, debug=args.debug)), soft_wrap=True)
            return 0
        final: query_pb2.AskResponse | None = None
        async for event in clients.query.AskStream(query_pb2.AskStreamRequest(**fields)):
            if args.json:
                _print_json(message_to_dict(event))
            elif event.WhichOneof("event") == "delta":
                out.file.write(event.delta)
                out.file.flush()
            elif event.WhichOneof("event") == "restart":
                out.file.write("\n")
                out.print(Text(f"(answer restarted: {event.restart.reason})", style="yellow"))
            else:
                final = event.final
        if final is not None:
            out.file.write("\n")
            out.print(
                Group(*render_answer(final, include_text=False, debug=args.debug)),
                soft_wrap=True,
            )
        return 0

    return asyncio.run(with_clients(settings, work))


def cmd_docs_list(args: argparse.Namespace, out: Console, err: Console) -> int:
    """Every document of the tenant, following next_page_token to the end."""
    settings = client_settings(args)

    async def work(clients: PlatformClients) -> int:
        documents: list[common_pb2.DocumentInfo] = []
        token = ""
        while True:
            page = await clients.retrieval.ListDocuments(
                retrieval_pb2.ListDocumentsRequest(
                    page_size=LIST_PAGE_SIZE, page_token=token, tenant=args.tenant
                )
            )
            documents.extend(page.documents)
            token = page.next_page_token
            if not token:
                break
        if args.json:
            _print_json([message_to_dict(doc) for doc in documents])
        elif documents:
            out.print(documents_table(documents))
        else:
            out.print("no documents")
        return 0

    return asyncio.run(with_clients(settings, work))


def cmd_docs_delete(args: argparse.Namespace, out: Console, err: Console) -> int:
    """DeleteDocument; NOT_FOUND is an error (exit 1)."""
    settings = client_settings(args)

    async def work(clients: PlatformClients) -> int:
        reply = await clients.ingestion.DeleteDocument(
            ingestion_pb2.DeleteDocumentRequest(document_id=args.document_id, tenant=args.tenant)
        )
        noun = "chunk" if reply.chunks_deleted == 1 else "chunks"
        out.print(Text(f"deleted {args.document_id} ({reply.chunks_deleted} {noun})"))
        return 0

    return asyncio.run(with_clients(settings, work))


class _StopRequested:
    """SIGINT/SIGTERM handler: the first signal interrupts (KeyboardInterrupt), later
    ones are ignored so that the bounded stop that follows is not cut short,
    which would leave children running."""

    def __init__(self) -> None:
        self.received = False

    def __call__(self, signum: int, frame: FrameType | None) -> None:
        if not self.received:
            self.received = True
            raise KeyboardInterrupt


def _data_dir(args: argparse.Namespace) -> Path:
    if args.data_dir is not None:
        return Path(args.data_dir)
    return PlatformSettings().data_dir


def _print_startup_error(err: StartupError, console: Console) -> None:
    console.print(Text(f"error: {err}", style="bold red"))
    if err.log_tail:
        title = f"{err.service} log ({err.log_path})" if err.log_path else err.service
        console.print(Panel(Text(err.log_tail), title=title, title_align="left"))


def cmd_up(args: argparse.Namespace, out: Console, err: Console) -> int:
    """Start the platform, show it healthy, and supervise it until Ctrl-C/SIGTERM
    (or return at once with --detach)."""
    platform = Platform(_data_dir(args), services=(*ALL, LLM) if args.llm else ALL)
    stop = _StopRequested()
    signal.signal(signal.SIGINT, stop)
    signal.signal(signal.SIGTERM, stop)

    def rows(states: Mapping[str, str]) -> list[dict[str, str]]:
        return status_rows(platform.settings, states)

    try:
        with Live(health_table(rows({}), "starting"), console=out, transient=True) as live:
            platform.start(
                args.timeout or DEFAULT_START_TIMEOUT,
                on_progress=lambda states: live.update(health_table(rows(states), "starting")),
            )
    except StartupError as error:
        _print_startup_error(error, err)
        return 1
    except KeyboardInterrupt:
        err.print("interrupted: stopped every service started")
        return 130

    out.print(health_table(rows(platform.health()), "ragplatform"))
    out.print(Text(f"logs and pids under {platform.data_dir}", style="dim"))
    if args.detach:
        out.print("running in the background; `ragctl down` stops it")
        return 0
    out.print("press Ctrl-C to stop")
    code = 0
    try:
        while not (exited := platform.exited()):
            time.sleep(0.5)
        for name, status in exited.items():
            err.print(Text(f"error: {name} exited with code {status}", style="bold red"))
            tail = platform.log_tail(name)
            if tail:
                err.print(Panel(Text(tail), title=f"{name} log", title_align="left"))
        code = 1
    except KeyboardInterrupt:
        pass
    finally:
        stop.received = True  # from here on signals are ignored: the stop is bounded
        out.print("stopping…")
        platform.stop()
    out.print("stopped")
    return code


def cmd_down(args: argparse.Namespace, out: Console, err: Console) -> int:
    """Stop the services whose pid files `up --detach` left."""
    platform = Platform.from_pid_files(_data_dir(args), services=KNOWN)
    if args.timeout is not None:
        platform.stop_timeout = args.timeout
    running = platform.pids()
    if not running:
        out.print(f"nothing running (no live pid files under {platform.data_dir / 'run'})")
        return 0
    platform.stop()
    out.print("stopped " + ", ".join(f"{name} (pid {pid})" for name, pid in running.items()))
    return 0


# --------------------------------------------------------------------------- main


def main(argv: Sequence[str] | None = None) -> int:
    """Run one ragctl command; returns the exit code."""
    parser = build_parser()
    args = parser.parse_args(argv)
    for option in ("timeout", "tenant"):
        if not hasattr(args, option):
            setattr(args, option, None)
    resolve_tenant(args)
    # soft_wrap: long lines (answers, paths, error messages) are left for the
    # terminal to wrap, so that piped output and copied ids stay whole.
    out = Console(soft_wrap=True)
    err = Console(stderr=True, soft_wrap=True)
    try:
        handler: Handler = args.handler
        return handler(args, out, err)
    except grpc.RpcError as error:  # grpc.aio.AioRpcError included
        called = getattr(args, "service", None)
        if called is not None:
            called = f"{called} service at {PlatformSettings().address_of(called)}"
        err.print(Text(error_line(error, called)), soft_wrap=True)
        return 1
    except StartupError as error:
        _print_startup_error(error, err)
        return 1
    except KeyboardInterrupt:
        return 130
    except Exception as error:  # never a traceback: one line naming the problem
        err.print(Text(f"error: {type(error).__name__}: {error}"), soft_wrap=True)
        return 1


__all__ = [
    "CliSettings",
    "build_parser",
    "error_line",
    "format_citation",
    "format_timings",
    "ingest_summary",
    "main",
    "message_to_dict",
    "render_answer",
    "resolve_tenant",
    "status_rows",
    "to_uri",
]

if __name__ == "__main__":
    sys.exit(main())
