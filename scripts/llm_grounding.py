"""Does a hallucination of the local LLM reach the user? (docs/quality.md, Local LLM)

Starts a platform with the local LLM as the simple tier (`ragctl up --llm`'s
setup, on ports 5260x and gateway 52680), ingests samples/corpus and asks
questions whose answer is in the sources and questions whose answer is not
(about the corpus's subjects, so that retrieval finds plausible passages).
Each question is asked twice:

* forced to the simple tier: the model's own answer, kept whatever the grounding
  check says (a forced tier is never escalated), i.e. what a user would see
  without the check acting on it;
* routed as usual: the router, the grounding check and the escalation to the
  complex tier (extractive here) decide what the user sees.

A hallucination reaches the user when a question the sources do not answer gets
an answer that is not declined and whose grounding passes the threshold. Run:
`.venv/bin/python -m scripts.llm_grounding [--model NAME] [--json FILE]`.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import grpc

from ragplatform.v1 import (
    common_pb2,
    ingestion_pb2,
    ingestion_pb2_grpc,
    query_pb2,
    query_pb2_grpc,
)
from services.cli.supervisor import ALL, LLM, Platform
from services.common.tenancy import DEFAULT_TENANT
from services.llm.models import DEFAULT_MODEL, MODELS

REPO = Path(__file__).resolve().parents[1]
CORPUS = REPO / "samples" / "corpus"
ENV = {
    "RAG_QUERY_ADDR": "127.0.0.1:52601",
    "RAG_INGESTION_ADDR": "127.0.0.1:52602",
    "RAG_EMBEDDING_ADDR": "127.0.0.1:52603",
    "RAG_RETRIEVAL_ADDR": "127.0.0.1:52604",
    "RAG_GENERATION_ADDR": "127.0.0.1:52605",
    "RAG_LLM_PORT": "52606",
    "RAG_GATEWAY_PORT": "52680",
    "RAG_LLM_THREADS": "1",
    "RAG_QUERY_CACHE_ENABLED": "false",
    "RAG_DRAIN_SECONDS": "2",
}
"""Ports of this script and of tests/integration/test_local_llm.py (one at a time);
one LLM thread, so that a shared 2-core machine stays usable."""
ANSWERABLE = (
    "How many days of paid annual leave do full-time employees get?",
    "What is the hotel limit per night in London?",
    "How often must the status page be updated during a SEV1 incident?",
    "What is the maximum size of a single object in Acme Cloud Object Storage?",
)
UNANSWERABLE = (
    "Where is the production database hosted?",
    "Who is the CEO of Acme Cloud?",
    "How much is the weekly on-call stipend?",
    "Which programming language is the Acme Cloud billing service written in?",
    "How many buckets can one account create?",
    "What is the phone number of the IT desk?",
    "How much does the business support plan cost per month?",
    "Which laptop model do new engineers receive?",
)
"""About the corpus's subjects, answered nowhere in it (checked by hand)."""


@dataclass(frozen=True)
class Outcome:
    question: str
    answerable: bool
    mode: str
    """"forced-simple" or "routed"."""
    answer: str
    declined: bool
    backend: str
    tier: str
    reason: str
    escalation: str
    fallbacks: list[str]
    grounding: float
    unsupported: list[str]
    input_tokens: int
    output_tokens: int
    seconds: float

    def shown_as_grounded(self, threshold: float) -> bool:
        """An answer (not a decline) whose grounding passes: shown as trustworthy."""
        return not self.declined and self.grounding >= threshold


def ask(stub: query_pb2_grpc.QueryServiceStub, question: str, forced: bool) -> Outcome:
    started = time.monotonic()
    reply: query_pb2.AskResponse = stub.Ask(
        query_pb2.AskRequest(
            question=question,
            tier=common_pb2.TIER_SIMPLE if forced else common_pb2.TIER_UNSPECIFIED,
            caller=common_pb2.Caller(tenant=DEFAULT_TENANT),
            bypass_cache=True,
        ),
        timeout=300,
    )
    route = reply.route
    return Outcome(
        question=question,
        answerable=question in ANSWERABLE,
        mode="forced-simple" if forced else "routed",
        answer=reply.answer,
        declined=reply.declined,
        backend=reply.backend,
        tier=common_pb2.Tier.Name(route.tier),
        reason=route.reason,
        escalation=route.escalation,
        fallbacks=[f"{a.backend}: {a.error_code}" for a in route.fallbacks],
        grounding=round(reply.grounding.score, 3),
        unsupported=list(reply.grounding.unsupported_sentences),
        input_tokens=reply.usage.input_tokens,
        output_tokens=reply.usage.output_tokens,
        seconds=round(time.monotonic() - started, 1),
    )


def summary(outcomes: list[Outcome], threshold: float) -> dict[str, dict[str, int]]:
    """Per mode: unanswerable questions answered by the model, shown as grounded,
    declined; answerable ones answered by the model and declined."""
    table: dict[str, dict[str, int]] = {}
    for mode in ("forced-simple", "routed"):
        mine = [o for o in outcomes if o.mode == mode]
        bad = [o for o in mine if not o.answerable]
        good = [o for o in mine if o.answerable]
        table[mode] = {
            "unanswerable": len(bad),
            "unanswerable_answered_by_llm": sum(
                not o.declined and o.backend == "vllm" for o in bad
            ),
            "hallucinations_shown_as_grounded": sum(o.shown_as_grounded(threshold) for o in bad),
            "unanswerable_declined": sum(o.declined for o in bad),
            "answerable": len(good),
            "answerable_answered": sum(not o.declined for o in good),
            "answerable_answered_by_llm": sum(not o.declined and o.backend == "vllm" for o in good),
        }
    return table


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", choices=sorted(MODELS), default=DEFAULT_MODEL)
    parser.add_argument("--threshold", type=float, default=0.8, help="grounding threshold")
    parser.add_argument("--json", type=Path, help="also write every outcome here")
    args = parser.parse_args()
    env = {
        **ENV,
        "RAG_LLM_MODEL": args.model,
        "RAG_GENERATION_GROUNDING_THRESHOLD": str(args.threshold),
    }
    outcomes: list[Outcome] = []
    with (
        tempfile.TemporaryDirectory() as data_dir,
        Platform(Path(data_dir), env, (*ALL, LLM)) as platform,
    ):
        settings = platform.settings
        with grpc.insecure_channel(settings.ingestion_addr) as channel:
            ingestion = ingestion_pb2_grpc.IngestionServiceStub(channel)
            uris = [p.as_uri() for p in sorted(CORPUS.iterdir())]
            list(
                ingestion.IngestUris(
                    ingestion_pb2.IngestUrisRequest(uris=uris, tenant=DEFAULT_TENANT),
                    timeout=300,
                )
            )
        with grpc.insecure_channel(settings.query_addr) as channel:
            stub = query_pb2_grpc.QueryServiceStub(channel)
            for question in (*ANSWERABLE, *UNANSWERABLE):
                for forced in (True, False):
                    outcome = ask(stub, question, forced)
                    outcomes.append(outcome)
                    print(json.dumps(asdict(outcome), ensure_ascii=False), flush=True)
    table = summary(outcomes, args.threshold)
    print(json.dumps({"model": args.model, "threshold": args.threshold, **table}, indent=2))
    if args.json:
        args.json.write_text(
            json.dumps({"summary": table, "outcomes": [asdict(o) for o in outcomes]}, indent=2)
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
