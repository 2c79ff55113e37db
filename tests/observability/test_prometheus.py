"""A real Prometheus scrapes every service of a running platform; every query of
every dashboard panel and every rule finds data.

The platform gets the traffic of a small day: a corpus ingested by URI, a failed
upload, questions through the gateway (unary and streamed) and over gRPC, a
repeated question (an answer-cache hit), a bad question, document reads, request
debugging. Prometheus (Debian's package) scrapes each process's /metrics every
second and evaluates the chart's rules; then each dashboard panel's expression
must return at least one series, each recording rule must have produced one,
and each metric an alert reads must have one.

Generation runs with its first backend down and two A/B arms (conftest), so
fallbacks, backend errors and the circuit breaker really happen. A metric whose
events could not happen here would be listed in NO_EVENTS_HERE with the reason;
for it the test checks instead that a service declares the metric (HELP/TYPE in
its /metrics), so a misspelt name in a dashboard or rule still fails.
"""

import json
import re
import shutil
import subprocess
import time
import urllib.parse
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import httpx
import pytest
import yaml

from ragplatform.v1 import (
    debug_pb2,
    debug_pb2_grpc,
    ingestion_pb2,
    ingestion_pb2_grpc,
    query_pb2,
    query_pb2_grpc,
)
from services.cli.supervisor import ALL, Platform, metrics_url
from tests.observability.conftest import CALLER, REPO, SAMPLES

CHART = REPO / "helm" / "ragplatform"
PROMETHEUS_PORT = 52490
RATE_INTERVAL = "1m"
"""What Grafana's $__rate_interval becomes here (at least four scrapes, as Grafana makes it)."""

_REMOTE_EMBEDDER = (
    "the observed platform embeds with the local MiniLM: only a remote model (Vertex AI) "
    "makes backend requests, counted in tests/unit/test_embedding_vertex.py"
)
NO_EVENTS_HERE: dict[str, str] = {
    "rag_embedding_backend_failures_total": _REMOTE_EMBEDDER,
    "rag_embedding_backend_retries_total": _REMOTE_EMBEDDER,
    "rag_embedding_backend_request_seconds_count": _REMOTE_EMBEDDER,
}
"""Metrics whose events cannot happen on this platform, with the reason."""

QUESTIONS = [
    "How many days of paid annual leave do full-time employees get?",
    "What is the reimbursement limit for a hotel night?",
    "Who do I call when production is down?",
]

_KEYWORDS = {"by", "without", "on", "ignoring", "group_left", "group_right", "and", "or"}
_KEYWORDS |= {"unless", "offset", "bool", "inf", "nan"}


def selectors(expr: str) -> list[str]:
    """The vector selectors (`name{matchers}`) of a PromQL expression."""
    text = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", expr)
    text = re.sub(r"\[[^\]]*\]", " ", text)  # range durations
    text = re.sub(r"\boffset\s+\w+", " ", text)
    found = []
    for match in re.finditer(r"(?<![\w.:])([a-zA-Z_:][\w:]*)\s*(\{[^}]*\})?(\s*\()?", text):
        name, matchers, call = match.groups()
        if call or name.lower() in _KEYWORDS:
            continue
        found.append(name + (matchers or ""))
    return found


def metric_name(selector: str) -> str:
    return selector.split("{", 1)[0]


def dashboard_queries() -> Iterator[tuple[str, str]]:
    """(where, expression) for each target of each panel, variables substituted."""
    for path in sorted((CHART / "dashboards").glob("*.json")):
        dashboard = json.loads(path.read_text())
        panels = [
            nested for panel in dashboard["panels"] for nested in [panel, *panel.get("panels", [])]
        ]
        for panel in panels:
            for target in panel.get("targets", []):
                expr = target["expr"].replace("$__rate_interval", RATE_INTERVAL)
                expr = re.sub(r"\$\{?\w+\}?", ".*", expr)  # every template variable: "All"
                yield f"{path.name}: {panel['title']} ({target['refId']})", expr


def rules() -> list[dict[str, Any]]:
    return [
        rule
        for path in sorted((CHART / "rules").glob("*.yaml"))
        for group in yaml.safe_load(path.read_text())["groups"]
        for rule in group["rules"]
    ]


class PrometheusApi:
    def __init__(self, url: str) -> None:
        self.http = httpx.Client(base_url=url, timeout=10)

    def query(self, expr: str) -> list[dict[str, Any]]:
        reply = self.http.get("/api/v1/query", params={"query": expr})
        body = reply.json()
        assert body.get("status") == "success", f"{expr}: {body}"
        result: list[dict[str, Any]] = body["data"]["result"]
        return result


def send_traffic(platform: Platform) -> None:
    settings = platform.settings
    with grpc.insecure_channel(settings.ingestion_addr) as channel:
        ingestion = ingestion_pb2_grpc.IngestionServiceStub(channel)
        request = ingestion_pb2.IngestUrisRequest(uris=[str(SAMPLES)], tenant=CALLER.tenant)
        events = list(ingestion.IngestUris(request))
        assert any(e.HasField("result") for e in events)
    with httpx.Client(base_url=platform.address("gateway"), timeout=60) as http:
        bad = http.post("/v1/documents", files={"file": ("notes.pdf", b"not a pdf at all")})
        assert bad.status_code == 400, bad.text
        for question in QUESTIONS:
            assert http.post("/v1/ask", json={"question": question}).status_code == 200
        streamed = http.post("/v1/ask/stream", json={"question": QUESTIONS[0]})
        assert streamed.status_code == 200 and "event: answer" in streamed.text
        repeated = http.post("/v1/ask", json={"question": QUESTIONS[0]})
        assert repeated.json()["cache"]["kind"] == "KIND_EXACT", "asked before: a cache hit"
        assert http.post("/v1/ask", json={"question": " "}).status_code == 400
        assert http.get("/v1/documents").status_code == 200
        assert http.get("/v1/documents/no-such-document").status_code == 404
    with grpc.insecure_channel(settings.query_addr) as channel:
        answer = query_pb2_grpc.QueryServiceStub(channel).Ask(
            query_pb2.AskRequest(question=QUESTIONS[1], bypass_cache=True, caller=CALLER)
        )  # a fresh answer: a cached one has no retrieval for the record to show
        debug = debug_pb2_grpc.RequestDebugServiceStub(channel)
        record = debug.GetRequestRecord(
            debug_pb2.GetRequestRecordRequest(request_id=answer.request_id, caller=CALLER)
        ).record
        assert record.response.debug.retrieved
        debug.CheckDocument(
            debug_pb2.CheckDocumentRequest(
                question=QUESTIONS[1], document_id="expense-policy.md", caller=CALLER
            )
        )


@pytest.fixture(scope="module")
def prometheus(
    observed_platform: Platform, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[PrometheusApi]:
    binary = shutil.which("prometheus")
    assert binary, "prometheus not found: `make setup` installs Debian's prometheus package"
    send_traffic(observed_platform)
    workdir = tmp_path_factory.mktemp("prometheus")
    targets = [
        {"targets": [urllib.parse.urlsplit(metrics_url(observed_platform.settings, name)).netloc],
         "labels": {"component": name}}
        for name in ALL
    ]  # fmt: skip
    config = {
        "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
        "rule_files": [str(path) for path in sorted((CHART / "rules").glob("*.yaml"))],
        "scrape_configs": [{"job_name": "ragplatform", "static_configs": targets}],
    }
    (workdir / "prometheus.yml").write_text(yaml.safe_dump(config))
    log = (workdir / "prometheus.log").open("w")
    process = subprocess.Popen(
        [
            binary,
            f"--config.file={workdir / 'prometheus.yml'}",
            f"--storage.tsdb.path={workdir / 'data'}",
            f"--web.listen-address=127.0.0.1:{PROMETHEUS_PORT}",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    api = PrometheusApi(f"http://127.0.0.1:{PROMETHEUS_PORT}")
    try:
        wait_for_data(api, process, workdir / "prometheus.log")
        yield api
    finally:
        process.terminate()
        process.wait(timeout=30)
        log.close()


def wait_for_data(api: PrometheusApi, process: subprocess.Popen[bytes], log: Path) -> None:
    """Until every target was scraped a few times and every recording rule ran."""
    records = [rule["record"] for rule in rules() if "record" in rule]
    deadline = time.monotonic() + 60
    while True:
        assert process.poll() is None, f"prometheus exited:\n{log.read_text()[-3000:]}"
        try:
            scraped = api.query("count_over_time(up[1m]) >= 4 and up == 1")
            recorded = all(api.query(name) for name in records)
            if len(scraped) == len(ALL) and recorded:
                return
        except (httpx.HTTPError, ValueError, AssertionError):
            pass  # not listening yet
        assert time.monotonic() < deadline, f"no data in time:\n{log.read_text()[-3000:]}"
        time.sleep(0.5)


def declared(platform: Platform, name: str) -> bool:
    """Whether some service exposes metric family `name` (HELP/TYPE), data or not."""
    family = re.sub(r"_(total|count|sum|bucket)$", "", name)
    for process in ALL:
        text = httpx.get(metrics_url(platform.settings, process), timeout=5).text
        if re.search(rf"^# TYPE {re.escape(family)}(_total)? ", text, re.M):
            return True
    return False


def check_selectors(
    api: PrometheusApi, platform: Platform, where: str, expr: str, recorded: set[str]
) -> tuple[list[str], bool]:
    """Problems with the selectors of `expr` (no series, unless the metric is a
    declared NO_EVENTS_HERE one), and whether some selector is such an excused one."""
    problems = []
    excused = False
    for selector in selectors(expr):
        if api.query(selector):
            continue
        name = metric_name(selector)
        if name in NO_EVENTS_HERE and name not in recorded:
            excused = True
            if not declared(platform, name):
                problems.append(f"{where}: {name} is declared by no service")
            continue
        problems.append(f"{where}: no series for {selector}")
    return problems, excused


def test_every_dashboard_query_returns_series(
    prometheus: PrometheusApi, observed_platform: Platform
) -> None:
    queries = list(dashboard_queries())
    assert len(queries) >= 30, "the three dashboards hold at least 30 queries"
    problems = []
    for where, expr in queries:
        if prometheus.query(expr):
            continue
        found, excused = check_selectors(prometheus, observed_platform, where, expr, set())
        problems.extend(found)
        if not found and not excused:
            problems.append(f"{where}: no series for {expr} although each selector has some")
    assert not problems, "\n".join(problems)


def test_every_rule_query_returns_series(
    prometheus: PrometheusApi, observed_platform: Platform
) -> None:
    all_rules = rules()
    recorded = {rule["record"] for rule in all_rules if "record" in rule}
    problems = []
    for rule in all_rules:
        if "record" in rule:
            if not prometheus.query(rule["record"]):
                problems.append(f"recording rule {rule['record']}: no series")
            continue
        where = f"alert {rule['alert']}"
        prometheus.query(rule["expr"])  # valid PromQL (raises otherwise); empty when healthy
        found, _ = check_selectors(prometheus, observed_platform, where, rule["expr"], recorded)
        problems.extend(found)
    assert not problems, "\n".join(problems)


def test_no_alert_fires_on_a_healthy_platform(prometheus: PrometheusApi) -> None:
    """Pending alerts count too: an alert with a `for:` of 10 minutes or more
    would only fire long after this test, but it is pending as soon as its
    condition holds."""
    raised = prometheus.query("ALERTS")
    assert raised == [], raised


def test_selector_extraction() -> None:
    expr = (
        'sum by (service) (rate(rag_rpc_requests_total{code=~"A|B"}[5m])) / '
        "clamp_min(sum(rate(x_total[1m] offset 1h)), 1e-9) > on() group_left() y:z:w"
    )
    assert selectors(expr) == ['rag_rpc_requests_total{code=~"A|B"}', "x_total", "y:z:w"]
