"""`ragctl eval router|answers|retrieval|injection|arms`: measure the router, answers,
retrieval, resistance to prompt injection, A/B arms.

* ``eval router FILE`` scores the model router on JSON-lines questions labelled
  ``simple`` or ``complex`` (``{"question": ..., "label": ...}``, as in
  ``shared/eval/router/questions.jsonl``): accuracy, confusion matrix, share
  sent to the strong tier. The router normalises case and punctuation itself,
  so typography cannot decide. It runs locally (the router is plain Python,
  the same code the generation service runs) with the threshold given.
* ``eval answers DIR`` measures the running platform end to end on a
  directory laid out like ``shared/eval/clapnq`` (``passages.jsonl`` with
  ``_id``, ``title``, ``text``; ``qa.jsonl`` with ``question``, ``answerable``,
  ``gold_passage_id``): it uploads every passage as a document (id
  ``eval-<dir name>:<passage id>``, tenant ``eval`` unless --tenant or
  RAG_TENANT names another; unchanged ones are skipped on a re-run), asks
  every question through QueryService restricted to those documents (so the
  rest of the tenant does not interfere) and past the answer cache, and reports
  - retrieval recall@k: answerable questions whose gold passage was retrieved;
  - citation precision: (sentence, citation) pairs of the answers where the
    cited passage is the gold one (answerable questions) or supports the
    sentence (at least 60 % of its content words, the local grounding rule);
  - correct declines on unanswerable questions, false declines on answerable ones;
  - mean grounding score of the answers, tokens and cost, the tiers and
    backends that answered, and latency p50/p95 as the client saw it
    (questions asked one at a time).
* ``eval retrieval DIR --split NAME`` measures ranking quality per retrieval
  mode on a BEIR-layout set (services/cli/eval_retrieval.py).
* ``eval injection [DIR]`` asks questions over sources with planted
  instructions, locally, per generation backend, and reports how often an
  answer follows one (services/cli/eval_injection.py; samples/eval/injection).
* ``eval arms`` prints GenerationService.GetRouterReport: per A/B arm
  requests, errors, latency, tokens, cost, grounding, decline and fallback
  rates, and tokens and cost per (tier, model).

Figures measured with these commands, with the machine and the method, are in
docs/quality.md (answers, router), docs/retrieval.md (retrieval) and
docs/security.md (injection).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import statistics
import sys
import time
from collections import Counter
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from ragplatform.v1 import (
    common_pb2,
    generation_pb2,
    ingestion_pb2,
    query_pb2,
)
from services.cli import eval_injection, eval_retrieval
from services.generation.grounding import LexicalGroundingChecker, answer_claims
from services.generation.router import COMPLEX, DEFAULT_THRESHOLD, SIMPLE, TIERS, Router
from services.runtime.clients import PlatformClients
from services.runtime.settings import PlatformSettings

EVAL_TENANT = "eval"
"""Where `eval answers` and `eval retrieval` ingest their data sets unless told
otherwise (--tenant, RAG_TENANT): apart from the documents people ask about, so
neither disturbs the other."""
EVAL_TIMEOUT_SECONDS = 120.0
"""Deadline of each call of `eval answers` (uploads wait for the embedder)."""
UPLOAD_CONCURRENCY = 8
_INVALID_ID_CHARS = re.compile(r"[^A-Za-z0-9._:-]")
_TIER_NAMES = {common_pb2.TIER_SIMPLE: SIMPLE, common_pb2.TIER_COMPLEX: COMPLEX}


def add_command(
    commands: argparse._SubParsersAction[argparse.ArgumentParser],
    common: argparse.ArgumentParser,
) -> None:
    """Register `eval` and its subcommands on ragctl's command parser."""
    evaluate = commands.add_parser(
        "eval",
        parents=[common],
        help="measure the router, answers, retrieval, prompt injection or A/B arms",
    )
    actions = evaluate.add_subparsers(dest="eval_command", required=True, metavar="WHAT")

    router = actions.add_parser(
        "router", parents=[common], help="router accuracy on labelled questions (local)"
    )
    router.add_argument("file", type=Path, metavar="FILE", help="JSON lines: question, label")
    router.add_argument(
        "--threshold",
        type=float,
        default=DEFAULT_THRESHOLD,
        help=f"router threshold (default {DEFAULT_THRESHOLD})",
    )
    router.add_argument("--json", action="store_true", help="print the report as JSON")
    router.set_defaults(handler=cmd_eval_router)

    answers = actions.add_parser(
        "answers", parents=[common], help="ingest a QA set, ask every question, score answers"
    )
    answers.add_argument("directory", type=Path, metavar="DIR", help="passages.jsonl + qa.jsonl")
    answers.add_argument("--top-k", type=int, default=3, metavar="K", help="chunks per question")
    answers.add_argument("--limit", type=int, default=0, metavar="N", help="first N questions")
    answers.add_argument(
        "--cleanup", action="store_true", help="delete the ingested passages afterwards"
    )
    answers.add_argument("--json", action="store_true", help="print the report as JSON")
    answers.set_defaults(handler=cmd_eval_answers, service="query", tenant_fallback=EVAL_TENANT)

    eval_retrieval.add_command(actions, common, EVAL_TENANT)
    eval_injection.add_command(actions, common)

    arms = actions.add_parser("arms", parents=[common], help="A/B arm comparison report")
    arms.add_argument("--json", action="store_true", help="print the report as JSON")
    arms.set_defaults(handler=cmd_eval_arms, service="generation")


def _read_jsonl(path: Path) -> list[dict[str, Any]]:
    """The objects of a JSON-lines file; a bad line is an error naming file and line."""
    rows = []
    with path.open(encoding="utf-8") as lines:
        for number, line in enumerate(lines, start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as err:
                raise ValueError(f"{path}:{number}: not JSON: {err.msg}") from None
            if not isinstance(row, dict):
                raise ValueError(f"{path}:{number}: expected a JSON object")
            rows.append(row)
    return rows


def _require(row: dict[str, Any], path: Path, number: int, *keys: str) -> None:
    missing = [k for k in keys if k not in row]
    if missing:
        raise ValueError(f"{path}: row {number} lacks {', '.join(missing)}")


# --------------------------------------------------------------------------- router


def load_router_questions(path: Path) -> list[tuple[str, str]]:
    """(question, label) pairs; labels must be `simple` or `complex`."""
    pairs = []
    for number, row in enumerate(_read_jsonl(path), start=1):
        _require(row, path, number, "question", "label")
        if row["label"] not in TIERS:
            raise ValueError(f"{path}: row {number} has label {row['label']!r}; use simple/complex")
        pairs.append((str(row["question"]), str(row["label"])))
    if not pairs:
        raise ValueError(f"{path}: no questions")
    return pairs


def evaluate_router(pairs: Sequence[tuple[str, str]], router: Router) -> dict[str, Any]:
    """Accuracy, confusion matrix (label → routed) and share routed to the strong tier."""
    confusion = {label: dict.fromkeys(TIERS, 0) for label in TIERS}
    for question, label in pairs:
        confusion[label][router.decide(question).tier] += 1
    correct = sum(confusion[t][t] for t in TIERS)
    strong = sum(confusion[label][COMPLEX] for label in TIERS)
    return {
        "questions": len(pairs),
        "threshold": router.threshold,
        "accuracy": round(correct / len(pairs), 4),
        "confusion": confusion,
        "share_strong": round(strong / len(pairs), 4),
    }


def cmd_eval_router(args: argparse.Namespace, out: Console, err: Console) -> int:
    """Score the router on a labelled file."""
    report = evaluate_router(load_router_questions(args.file), Router(threshold=args.threshold))
    if args.json:
        _print_json(report)
        return 0
    table = Table(title=f"router on {args.file} (threshold {report['threshold']})")
    table.add_column("label \\ routed")
    for tier in TIERS:
        table.add_column(tier, justify="right")
    for label in TIERS:
        table.add_row(label, *(str(report["confusion"][label][t]) for t in TIERS))
    out.print(table)
    out.print(
        f"accuracy {report['accuracy']:.3f} on {report['questions']} questions; "
        f"sent to the strong tier: {report['share_strong']:.3f}"
    )
    return 0


# --------------------------------------------------------------------------- answers


@dataclass(frozen=True)
class Passage:
    document_id: str
    title: str
    text: str


@dataclass(frozen=True)
class Question:
    question: str
    answerable: bool
    gold_document_id: str


def load_answer_set(directory: Path, prefix: str) -> tuple[list[Passage], list[Question]]:
    """The passages (ids prefixed and made valid document ids) and the questions."""
    passages, ids = [], {}
    path = directory / "passages.jsonl"
    for number, row in enumerate(_read_jsonl(path), start=1):
        _require(row, path, number, "_id", "text")
        ids[row["_id"]] = _INVALID_ID_CHARS.sub("_", f"{prefix}{row['_id']}")[:128]
        passages.append(Passage(ids[row["_id"]], str(row.get("title", "")), str(row["text"])))
    questions = []
    path = directory / "qa.jsonl"
    for number, row in enumerate(_read_jsonl(path), start=1):
        _require(row, path, number, "question", "answerable")
        gold = ids.get(row.get("gold_passage_id") or "", "")
        questions.append(Question(str(row["question"]), bool(row["answerable"]), gold))
    if not passages or not questions:
        raise ValueError(f"{directory}: needs passages.jsonl and qa.jsonl with rows")
    return passages, questions


async def _upload(clients: PlatformClients, passage: Passage, tenant: str) -> str:
    async def messages() -> AsyncIterator[ingestion_pb2.UploadDocumentRequest]:
        yield ingestion_pb2.UploadDocumentRequest(
            header=ingestion_pb2.DocumentHeader(
                filename=f"{passage.document_id}.txt",
                media_type="text/plain",
                document_id=passage.document_id,
                title=passage.title,
                tenant=tenant,
            )
        )
        yield ingestion_pb2.UploadDocumentRequest(data=passage.text.encode())

    reply = await clients.ingestion.UploadDocument(messages())
    result = reply.result
    if result.status == ingestion_pb2.IngestResult.STATUS_FAILED:
        raise ValueError(f"passage {passage.document_id}: {result.error_code}: {result.message}")
    return ingestion_pb2.IngestResult.Status.Name(result.status)


async def ingest_passages(
    clients: PlatformClients, passages: Sequence[Passage], tenant: str
) -> Counter[str]:
    """Upload every passage into `tenant` (a few at a time); counts per result status."""
    limit = asyncio.Semaphore(UPLOAD_CONCURRENCY)

    async def one(passage: Passage) -> str:
        async with limit:
            return await _upload(clients, passage, tenant)

    return Counter(await asyncio.gather(*(one(p) for p in passages)))


def _percentile(values: Sequence[float], share: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(share * (len(ordered) - 1)))] if ordered else 0.0


@dataclass
class _Tally:
    """Running counts of `eval answers`."""

    answerable: int = 0
    unanswerable: int = 0
    retrieved_gold: int = 0
    correct_declines: int = 0
    false_declines: int = 0
    citations: int = 0
    precise_citations: int = 0
    grounding_sum: float = 0.0
    answered: int = 0
    input_tokens: int = 0
    output_tokens: int = 0
    cost_usd: float = 0.0


def _score_citations(
    response: query_pb2.AskResponse, question: Question, support: LexicalGroundingChecker
) -> tuple[int, int]:
    """(citations, precise ones): a citation is precise when it cites the gold passage
    of an answerable question or its passage supports the sentence it ends."""
    texts = {n: s.chunk.text for n, s in enumerate(response.debug.retrieved, start=1)}
    documents = {c.number: c.document_id for c in response.citations}
    total = precise = 0
    for claim in answer_claims(response.answer):
        for number in claim.cited:
            total += 1
            gold = question.answerable and documents.get(number) == question.gold_document_id
            supported = support.support(claim.text, [texts.get(number, "")]) >= support.min_support
            precise += gold or supported
    return total, precise


async def evaluate_answers(
    clients: PlatformClients,
    passages: Sequence[Passage],
    questions: Sequence[Question],
    top_k: int,
    tenant: str,
) -> dict[str, Any]:
    """Ask every question (one at a time, as `tenant`) and score the answers (see the
    module docstring)."""
    scope = common_pb2.MetadataFilter(document_ids=[p.document_id for p in passages])
    caller = common_pb2.Caller(tenant=tenant)
    tally = _Tally()
    latencies: list[float] = []
    tiers: Counter[str] = Counter()
    backends: Counter[str] = Counter()
    support = LexicalGroundingChecker()
    for question in questions:
        # bypass_cache: every answer is measured as generated, never as cached.
        request = query_pb2.AskRequest(
            question=question.question,
            top_k=top_k,
            filter=scope,
            debug=True,
            caller=caller,
            bypass_cache=True,
        )
        started = time.perf_counter()
        response: query_pb2.AskResponse = await clients.query.Ask(request)
        latencies.append(time.perf_counter() - started)
        retrieved = {s.chunk.document_id for s in response.debug.retrieved}
        if question.answerable:
            tally.answerable += 1
            tally.retrieved_gold += question.gold_document_id in retrieved
            tally.false_declines += response.declined
        else:
            tally.unanswerable += 1
            tally.correct_declines += response.declined
        if not response.declined:
            tally.answered += 1
            tally.grounding_sum += response.grounding.score
            cited, precise = _score_citations(response, question, support)
            tally.citations += cited
            tally.precise_citations += precise
        tally.input_tokens += response.usage.input_tokens
        tally.output_tokens += response.usage.output_tokens
        tally.cost_usd += response.cost_usd
        tiers[_TIER_NAMES.get(response.route.tier, "unspecified")] += 1
        backends[response.backend] += 1

    def share(part: int, whole: int) -> float | None:
        return round(part / whole, 4) if whole else None

    return {
        "questions": len(questions),
        "answerable": tally.answerable,
        "unanswerable": tally.unanswerable,
        "top_k": top_k,
        f"retrieval_recall_at_{top_k}": share(tally.retrieved_gold, tally.answerable),
        "citation_precision": share(tally.precise_citations, tally.citations),
        "citations": tally.citations,
        "correct_declines": share(tally.correct_declines, tally.unanswerable),
        "false_declines": share(tally.false_declines, tally.answerable),
        "mean_grounding": round(tally.grounding_sum / tally.answered, 4)
        if tally.answered
        else None,
        "input_tokens": tally.input_tokens,
        "output_tokens": tally.output_tokens,
        "cost_usd": round(tally.cost_usd, 6),
        "tiers": dict(tiers),
        "backends": dict(backends),
        "latency_p50_seconds": round(statistics.median(latencies), 4),
        "latency_p95_seconds": round(_percentile(latencies, 0.95), 4),
    }


def _client_settings(args: argparse.Namespace, default_timeout: float | None) -> PlatformSettings:
    settings = PlatformSettings()
    timeout = args.timeout or default_timeout
    if timeout is not None:
        settings = settings.model_copy(update={"rpc_timeout_seconds": timeout})
    return settings


def cmd_eval_answers(args: argparse.Namespace, out: Console, err: Console) -> int:
    """Ingest the set's passages, ask its questions, print the scores."""
    directory: Path = args.directory
    passages, questions = load_answer_set(directory, f"eval-{directory.resolve().name}:")
    if args.limit:
        questions = questions[: args.limit]

    async def work() -> dict[str, Any]:
        clients = PlatformClients(_client_settings(args, EVAL_TIMEOUT_SECONDS))
        try:
            ingested = await ingest_passages(clients, passages, args.tenant)
            report = await evaluate_answers(clients, passages, questions, args.top_k, args.tenant)
            if args.cleanup:
                for passage in passages:
                    await clients.ingestion.DeleteDocument(
                        ingestion_pb2.DeleteDocumentRequest(
                            document_id=passage.document_id, tenant=args.tenant
                        )
                    )
        finally:
            await clients.close()
        return {
            "dataset": str(directory),
            "tenant": args.tenant,
            "ingested": dict(ingested),
            **report,
        }

    report = asyncio.run(work())
    if args.json:
        _print_json(report)
    else:
        table = Table(title=f"answers on {directory}")
        table.add_column("metric")
        table.add_column("value", justify="right")
        for key, value in report.items():
            table.add_row(key, json.dumps(value) if isinstance(value, dict) else str(value))
        out.print(table)
    return 0


# --------------------------------------------------------------------------- arms


def router_report(reply: generation_pb2.GetRouterReportResponse) -> dict[str, Any]:
    """The report as JSON-ready data, tiers by name."""
    return {
        "uptime_seconds": round(reply.uptime_seconds, 1),
        "arms": [
            {
                "arm": a.arm,
                "tier": _TIER_NAMES.get(a.tier, "unspecified"),
                "backend": a.backend,
                "requests": a.requests,
                "errors": a.errors,
                "mean_latency_seconds": round(a.mean_latency_seconds, 4),
                "input_tokens": a.input_tokens,
                "output_tokens": a.output_tokens,
                "cost_usd": round(a.cost_usd, 6),
                "mean_grounding": round(a.mean_grounding, 4),
                "decline_rate": round(a.decline_rate, 4),
                "fallback_rate": round(a.fallback_rate, 4),
            }
            for a in reply.arms
        ],
        "usage": [
            {
                "tier": _TIER_NAMES.get(u.tier, "unspecified"),
                "model": u.model,
                "answers": u.answers,
                "input_tokens": u.input_tokens,
                "output_tokens": u.output_tokens,
                "cost_usd": round(u.cost_usd, 6),
            }
            for u in reply.usage
        ],
    }


def cmd_eval_arms(args: argparse.Namespace, out: Console, err: Console) -> int:
    """Print GenerationService.GetRouterReport."""

    async def work() -> generation_pb2.GetRouterReportResponse:
        clients = PlatformClients(_client_settings(args, None))
        try:
            reply: generation_pb2.GetRouterReportResponse = (
                await clients.generation.GetRouterReport(generation_pb2.GetRouterReportRequest())
            )
            return reply
        finally:
            await clients.close()

    report = router_report(asyncio.run(work()))
    if args.json:
        _print_json(report)
        return 0
    out.print(comparison_table(report["arms"], report["uptime_seconds"]))
    usage = Table(title="usage per tier and model")
    for column in ("tier", "model", "answers", "input_tokens", "output_tokens", "cost_usd"):
        usage.add_column(column, justify="left" if column in ("tier", "model") else "right")
    for row in report["usage"]:
        usage.add_row(*(str(v) for v in row.values()))
    out.print(usage)
    return 0


def comparison_table(arms: Sequence[dict[str, Any]], uptime_seconds: float) -> Table | str:
    """Arms side by side, one column each, one metric per row (a report reads across)."""
    if not arms:
        return "A/B arms: none configured (RAG_GENERATION_AB_ARMS)"
    table = Table(title=f"A/B arms over the last {uptime_seconds} s")
    table.add_column("")
    for arm in arms:
        table.add_column(f"{arm['arm']} ({arm['tier']})", justify="right")
    for metric in list(arms[0])[2:]:
        table.add_row(metric, *(str(arm[metric]) for arm in arms))
    return table


def _print_json(data: object) -> None:
    sys.stdout.write(json.dumps(data, ensure_ascii=False) + "\n")
    sys.stdout.flush()
