"""What observability costs an ask: tracing and metrics on against off, same run.

Two platforms run side by side on this machine (every service its own process,
both with the corpus of samples/corpus indexed):

* on: spans exported by OTLP/gRPC to a receiver in this process (parent-based
  ratio sampler, every trace by default, `--sample 0.1` for one in ten; the batch
  processor's default schedule), Prometheus metrics recorded and served
  (`--only tracing` or `--only metrics` isolates one);
* off: OTEL_TRACES_EXPORTER=none and RAG_METRICS_ENABLED=false: no provider, no
  interceptor, no middleware, no metrics endpoint.

Asks go through the REST gateway (the whole path: gateway, query, embedding,
retrieval, generation), one at a time, alternating between the two platforms
question by question, so that whatever else the machine does in the meantime
hits both sides alike; and in two rounds, the second with fresh platforms whose
roles are swapped, so that a difference between the two sets of processes
themselves cancels out. After a warm-up of each, the client-side latencies give
p50 and p95 per side, and the ratio on/off at p50 is the overhead figure (the
target is under 1.05).

The median of the paired differences (each question asked of both sides back
to back) is reported too: it is the least noisy estimate on a busy machine.

Usage: `python -m scripts.bench_overhead [--asks N] [--sample R] [--only tracing|metrics]
[--write docs/observability.md]`; --write replaces the block between the
`overhead:begin`/`overhead:end` markers.
"""

import argparse
import datetime as dt
import os
import platform as pyplatform
import re
import statistics
import sys
import tempfile
import time
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path

import grpc
import httpx

from ragplatform.v1 import ingestion_pb2, ingestion_pb2_grpc
from scripts.otlp_sink import SpanSink
from services.cli.supervisor import Platform
from services.common.tenancy import DEFAULT_TENANT

REPO = Path(__file__).resolve().parents[1]
CORPUS = REPO / "samples" / "corpus"
QUESTIONS = [q for q in (REPO / "samples" / "questions.txt").read_text().splitlines() if q]
WARMUP = 20
BEGIN, END = "<!-- overhead:begin -->", "<!-- overhead:end -->"


def platform_env(base: int) -> dict[str, str]:
    """A platform's addresses (gRPC on base+1..5, the gateway on base+30), and one
    model thread that does not spin when idle: two embedding processes that each
    take every core and busy-wait after each batch slow each other down at random,
    which would measure the neighbour rather than the telemetry."""
    names = ("query", "ingestion", "embedding", "retrieval", "generation")
    env = {f"RAG_{name.upper()}_ADDR": f"127.0.0.1:{base + i}" for i, name in enumerate(names, 1)}
    return {
        **env,
        "RAG_GATEWAY_PORT": str(base + 30),
        "RAG_EMBEDDING_THREADS": "1",
        "OMP_WAIT_POLICY": "PASSIVE",
    }


def start(stack: ExitStack, name: str, env: dict[str, str]) -> Platform:
    data = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix=f"overhead-{name}-")))
    platform = stack.enter_context(Platform(data, env=env))
    with grpc.insecure_channel(platform.settings.ingestion_addr) as channel:
        events = ingestion_pb2_grpc.IngestionServiceStub(channel).IngestUris(
            # The tenant the gateway (no API keys) asks as.
            ingestion_pb2.IngestUrisRequest(uris=[str(CORPUS)], tenant=DEFAULT_TENANT),
            timeout=600,
        )
        for event in events:
            if event.HasField("result") and event.result.error_code:
                raise SystemExit(f"{name}: ingesting {event.result.source_uri} failed")
    return platform


def ask(http: httpx.Client, question: str) -> float:
    started = time.perf_counter()
    reply = http.post("/v1/ask", json={"question": question})
    elapsed = time.perf_counter() - started
    if reply.status_code != 200:
        raise SystemExit(f"ask failed: {reply.status_code} {reply.text}")
    return elapsed


@dataclass(frozen=True)
class Result:
    """Client-side ask latencies (seconds) of each side, and what was exported."""

    on: list[float]
    off: list[float]
    spans: int
    cpu_per_ask_on: float
    cpu_per_ask_off: float
    """CPU seconds per ask of all the platform's processes together (scheduling
    delays on a busy machine do not count here, unlike in latencies)."""

    @staticmethod
    def p95(values: list[float]) -> float:
        return statistics.quantiles(values, n=100, method="inclusive")[94]

    @property
    def ratio_p50(self) -> float:
        return statistics.median(self.on) / statistics.median(self.off)

    @property
    def paired_median(self) -> float:
        """Median of on - off for the same question asked of both sides back to back:
        both meet the same moment of the machine, so this is the least noisy estimate."""
        return statistics.median(on - off for on, off in zip(self.on, self.off, strict=True))


def cpu_seconds(platform: Platform) -> float:
    """User plus system CPU time used so far by the platform's processes (Linux)."""
    ticks = os.sysconf("SC_CLK_TCK")
    total = 0
    for pid in platform.pids().values():
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        total += int(fields[11]) + int(fields[12])  # utime, stime
    return total / ticks


def measure_round(
    sink: SpanSink, bases: dict[str, int], asks: int, tracing: bool, metrics: bool, ratio: float
) -> tuple[dict[str, list[float]], dict[str, float]]:
    """One round: both platforms started (on and off at the given port bases), asked
    alternately, stopped; per side, the latencies after the warm-up and the CPU
    time its processes used meanwhile."""
    with ExitStack() as stack:
        envs = {
            "on": {
                **platform_env(bases["on"]),
                "OTEL_TRACES_EXPORTER": "otlp" if tracing else "none",
                "OTEL_EXPORTER_OTLP_ENDPOINT": sink.endpoint,
                "OTEL_EXPORTER_OTLP_PROTOCOL": "grpc",
                "OTEL_TRACES_SAMPLER": "parentbased_traceidratio",
                "OTEL_TRACES_SAMPLER_ARG": str(ratio),
                "RAG_METRICS_ENABLED": str(metrics).lower(),
            },
            "off": {
                **platform_env(bases["off"]),
                "OTEL_TRACES_EXPORTER": "none",
                "RAG_METRICS_ENABLED": "false",
            },
        }
        print(f"starting both platforms ({bases}) and indexing samples/corpus", file=sys.stderr)
        sides = {name: start(stack, name, env) for name, env in envs.items()}
        clients = {
            name: stack.enter_context(httpx.Client(base_url=p.address("gateway"), timeout=60))
            for name, p in sides.items()
        }
        latencies: dict[str, list[float]] = {"on": [], "off": []}
        cpu: dict[str, float] = {}
        for n in range(WARMUP + asks):
            if n == WARMUP:
                cpu = {name: -cpu_seconds(platform) for name, platform in sides.items()}
            question = QUESTIONS[n % len(QUESTIONS)]
            order = ("on", "off") if n % 2 == 0 else ("off", "on")  # neither side always first
            for name in order:
                elapsed = ask(clients[name], question)
                if n >= WARMUP:
                    latencies[name].append(elapsed)
        cpu = {name: used + cpu_seconds(sides[name]) for name, used in cpu.items()}
        if metrics:
            port = sides["on"].settings.metrics_port_of("query")
            if "rag_rpc_requests_total" not in httpx.get(f"http://127.0.0.1:{port}/metrics").text:
                raise SystemExit("the 'on' platform serves no RPC metrics")
        return latencies, cpu


def measure(asks: int, tracing: bool = True, metrics: bool = True, ratio: float = 1.0) -> Result:
    """Two rounds with the roles of the two port sets swapped (a crossover), so that
    whatever makes one set of processes faster than the other (where the scheduler
    put them, background index optimisation) weighs on both sides alike."""
    on: list[float] = []
    off: list[float] = []
    cpu = {"on": 0.0, "off": 0.0}
    with SpanSink() as sink:
        for bases in ({"on": 52500, "off": 52600}, {"on": 52600, "off": 52500}):
            latencies, used = measure_round(sink, bases, asks // 2, tracing, metrics, ratio)
            on += latencies["on"]
            off += latencies["off"]
            cpu = {name: cpu[name] + used[name] for name in cpu}
        time.sleep(1)  # the last batch of spans
        return Result(on, off, len(sink.spans()), cpu["on"] / len(on), cpu["off"] / len(off))


def report(result: Result, asks: int, on_side: str) -> str:
    def ms(value: float) -> str:
        return f"{value * 1000:.1f} ms"

    off_p50, on_p50 = statistics.median(result.off), statistics.median(result.on)
    off_p95, on_p95 = Result.p95(result.off), Result.p95(result.on)
    verdict = "within" if result.ratio_p50 < 1.05 else "over"
    return "\n".join(
        [
            f"Measured {dt.date.today():%Y-%m-%d} on {pyplatform.machine()}, "
            f"{os.cpu_count()} CPUs, Python {pyplatform.python_version()}: {asks} asks per "
            "side through the gateway, alternating, in two rounds with the platforms' roles "
            f"swapped, after {WARMUP} warm-up asks each (`python -m scripts.bench_overhead`).",
            "",
            "| | p50 | p95 |",
            "|---|---|---|",
            f"| tracing and metrics off | {ms(off_p50)} | {ms(off_p95)} |",
            f"| {on_side} | {ms(on_p50)} | {ms(on_p95)} |",
            f"| on / off | **{result.ratio_p50:.3f}** | {on_p95 / off_p95:.3f} |",
            "",
            f"Added latency at p50: {(result.ratio_p50 - 1) * 100:+.1f} % ({verdict} the 5 % "
            "target). Median of the paired differences (the same question on both sides, "
            f"back to back): {result.paired_median * 1000:+.2f} ms "
            f"({result.paired_median / off_p50 * 100:+.1f} % of p50). CPU per ask, all "
            f"processes together: {ms(result.cpu_per_ask_off)} off, "
            f"{ms(result.cpu_per_ask_on)} on "
            f"({(result.cpu_per_ask_on / result.cpu_per_ask_off - 1) * 100:+.1f} %). "
            f"{result.spans} spans reached the OTLP receiver.",
        ]
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--asks", type=int, default=200, help="asks per side (default 200)")
    parser.add_argument("--write", type=Path, help="put the result into this Markdown file")
    parser.add_argument(
        "--only", choices=("tracing", "metrics"), help="turn on only this on the 'on' side"
    )
    parser.add_argument(
        "--sample", type=float, default=1.0, help="share of traces recorded (default 1: all)"
    )
    args = parser.parse_args()
    result = measure(args.asks, args.only != "metrics", args.only != "tracing", args.sample)
    on_side = {
        None: f"tracing ({args.sample:.0%} of traces recorded and exported) and metrics on",
        "tracing": f"tracing only ({args.sample:.0%} of traces recorded and exported)",
        "metrics": "metrics only",
    }[args.only]
    text = report(result, args.asks, on_side)
    print(text)
    if args.write:
        document = args.write.read_text()
        pattern = re.compile(re.escape(BEGIN) + ".*?" + re.escape(END), re.S)
        if not pattern.search(document):
            raise SystemExit(f"{args.write} has no {BEGIN} ... {END} block")
        args.write.write_text(pattern.sub(lambda _: f"{BEGIN}\n{text}\n{END}", document))


if __name__ == "__main__":
    main()
