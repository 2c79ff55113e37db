"""Start, watch and stop the platform's processes: one per service, plus the gateway.

`ragctl up` / `ragctl down` use it, and so do tests and benchmarks that need a
real platform: `with Platform(tmp_path, env={"RAG_QUERY_ADDR": ...}) as p: ...`.
Everything (addresses, ports, data dir) comes from the settings (PlatformSettings
and the local LLM's: LlmSettings) built from the same environment the children
get, so non-default ports just work.

Each child runs `sys.executable -m services.<name>` in its own session (a
terminal's Ctrl-C reaches only the supervisor, which then stops children in a
known order; detached children survive their terminal), with stdout and stderr
appended to `<data_dir>/logs/<name>.log` and its pid in `<data_dir>/run/<name>.pid`.

Startup goes in dependency stages (embedding, retrieval and generation; then
ingestion and query, which call them; then the gateway, which calls those), each
stage started in that order and waited for until it reports SERVING on the gRPC
health service (the gateway: HTTP 200 on /healthz) before the next starts, so no
service ever meets a dependency that is not up yet.

The local LLM (`ragctl up --llm`, services/llm) is one more process, started
only when asked, in the first stage and health-checked over HTTP (llama.cpp's
/health answers 200 once the model is loaded). Asking for it also sets, for
every child, the generation settings that make it the simple tier
(LlmSettings.generation_env), except those the environment sets itself.
"""

import contextlib
import errno
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any, Self

import grpc
import httpx
from grpc_health.v1 import health_pb2, health_pb2_grpc

import services as _services_package
from services.llm.settings import LLM_HOST, LlmSettings
from services.runtime.security import TlsFiles
from services.runtime.settings import SERVICE_NAMES

GATEWAY = "gateway"
LLM = "llm"
ALL: tuple[str, ...] = (*SERVICE_NAMES, GATEWAY)
"""Every process of the platform, in start order (what `ragctl up` starts)."""
KNOWN: tuple[str, ...] = (LLM, *ALL)
"""Every process the supervisor can run, the local LLM included, in start order."""
STAGES: tuple[tuple[str, ...], ...] = (
    (LLM, "embedding", "retrieval", "generation"),
    ("ingestion", "query"),
    (GATEWAY,),
)
"""Start order: each stage waits for the previous one to serve."""

SERVING = "SERVING"
NOT_SERVING = "NOT_SERVING"
UNREACHABLE = "UNREACHABLE"
WAITING = "WAITING"
"""Progress state of a service not launched yet (its stage has not come)."""
STARTING = "STARTING"
"""Progress state of a launched service not serving yet."""

DEFAULT_START_TIMEOUT = 180.0
DEFAULT_STOP_TIMEOUT = 15.0
HEALTH_TIMEOUT = 1.0
POLL_SECONDS = 0.25
LOG_TAIL_LINES = 40

ProgressCallback = Callable[[dict[str, str]], None]

# Short reconnect backoff: the default grows to minutes, which would make a
# service that needed 10 s to load look unready long after it serves.
_PROBE_CHANNEL_OPTIONS = [
    ("grpc.initial_reconnect_backoff_ms", 100),
    ("grpc.min_reconnect_backoff_ms", 100),
    ("grpc.max_reconnect_backoff_ms", 500),
]


class StartupError(RuntimeError):
    """A service could not be started; carries the tail of its log."""

    def __init__(self, service: str, reason: str, log_path: Path | None, log_tail: str) -> None:
        super().__init__(f"{service}: {reason}")
        self.service = service
        self.reason = reason
        self.log_path = log_path
        self.log_tail = log_tail


def settings_from_env(env: Mapping[str, str] | None = None) -> LlmSettings:
    """The settings a child started with `os.environ | env` reads: the shared
    PlatformSettings and the local LLM's (LlmSettings is both)."""
    fields = LlmSettings.model_fields
    overrides: dict[str, Any] = {
        key[4:].lower(): value
        for key, value in (env or {}).items()
        if key.upper().startswith("RAG_") and key[4:].lower() in fields
    }
    return LlmSettings(**overrides)


def _reachable_host(settings: LlmSettings) -> str:
    """The listen host as this host dials it (a wildcard becomes loopback)."""
    host = settings.listen_host
    if host in ("", "0.0.0.0"):
        return "127.0.0.1"
    if host == "::":
        return "[::1]"
    return f"[{host}]" if ":" in host else host


def llm_url(settings: LlmSettings) -> str:
    """Where the local LLM answers (it binds loopback only)."""
    return f"http://{LLM_HOST}:{settings.llm_port}"


def gateway_url(settings: LlmSettings) -> str:
    """Where the gateway answers, reachable from this host."""
    return f"http://{_reachable_host(settings)}:{settings.gateway_port}"


def metrics_url(settings: LlmSettings, name: str) -> str:
    """Where process `name` serves Prometheus metrics, reachable from this host."""
    if name == LLM:
        return f"{llm_url(settings)}/metrics"
    return f"http://{_reachable_host(settings)}:{settings.metrics_port_of(name)}/metrics"


def address_of(settings: LlmSettings, name: str) -> str:
    """The gRPC address of a service, or the gateway's or the local LLM's URL."""
    if name == LLM:
        return llm_url(settings)
    return gateway_url(settings) if name == GATEWAY else settings.address_of(name)


def _listen_address(settings: LlmSettings, name: str) -> tuple[str, int]:
    if name == GATEWAY:
        return settings.listen_host, settings.gateway_port
    if name == LLM:
        return LLM_HOST, settings.llm_port
    host, port = settings.listen_address_of(name).rsplit(":", 1)
    return host.strip("[]"), int(port)


def port_in_use(host: str, port: int) -> bool:
    """Whether binding `host:port` fails because something else holds it."""
    try:
        info = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
    except socket.gaierror:
        return False
    family, kind, proto, _, sockaddr = info
    with socket.socket(family, kind, proto) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind(sockaddr)
        except OSError as err:
            return err.errno == errno.EADDRINUSE
    return False


def read_log_tail(path: Path, lines: int = LOG_TAIL_LINES, since: int = 0) -> str:
    """The last `lines` lines of `path` written after byte offset `since`."""
    try:
        with path.open("rb") as log:
            log.seek(since)
            data = log.read()
    except OSError:
        return ""
    return "\n".join(data.decode(errors="replace").splitlines()[-lines:])


class HealthProbe:
    """Checks services' health; keeps one gRPC channel per address between checks."""

    def __init__(self, settings: LlmSettings, timeout: float = HEALTH_TIMEOUT) -> None:
        self.settings = settings
        self.timeout = timeout
        self._channels: dict[str, grpc.Channel] = {}

    def check(self, name: str) -> str:
        """SERVING, NOT_SERVING (or another health status name) or UNREACHABLE."""
        if name == GATEWAY:
            return self._check_http(f"{gateway_url(self.settings)}/healthz")
        if name == LLM:
            return self._check_http(f"{llm_url(self.settings)}/health")
        address = self.settings.address_of(name)
        if TlsFiles.of(self.settings, name) is not None:  # its plaintext health port
            host, port = address.rsplit(":", 1)
            address = f"{host}:{int(port) + self.settings.health_port_offset}"
        if address not in self._channels:
            self._channels[address] = grpc.insecure_channel(address, options=_PROBE_CHANNEL_OPTIONS)
        stub = health_pb2_grpc.HealthStub(self._channels[address])
        try:
            reply = stub.Check(health_pb2.HealthCheckRequest(service=""), timeout=self.timeout)
        except grpc.RpcError as err:
            code = err.code()
            if code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED):
                return UNREACHABLE
            return str(code.name)
        return str(health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status))

    def _check_http(self, url: str) -> str:
        try:
            response = httpx.get(url, timeout=self.timeout)
        except httpx.HTTPError:
            return UNREACHABLE
        return SERVING if response.status_code == 200 else NOT_SERVING

    def check_all(self, names: Sequence[str]) -> dict[str, str]:
        """Health of each of `names`."""
        return {name: self.check(name) for name in names}

    def close(self) -> None:
        """Close the probe channels."""
        for channel in self._channels.values():
            channel.close()
        self._channels.clear()


def check_health(
    settings: LlmSettings, names: Sequence[str] = ALL, timeout: float = HEALTH_TIMEOUT
) -> dict[str, str]:
    """One health check of each of `names` (no processes needed: `ragctl status`)."""
    probe = HealthProbe(settings, timeout)
    try:
        return probe.check_all(names)
    finally:
        probe.close()


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    with contextlib.suppress(OSError):  # /proc exists on Linux only
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        if state != "Z":
            return True
        # The main thread shows "Z" as soon as it exits, while the process's other
        # threads may still be winding down: it has exited only once they are gone.
        return len(os.listdir(f"/proc/{pid}/task")) > 1
    return True


def _is_service_process(pid: int, name: str) -> bool:
    """Whether `pid` still runs `-m services.<name>` (pids get reused after a crash)."""
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return _process_alive(pid)  # no /proc: trust the pid file
    return f"services.{name}".encode() in cmdline


@dataclass
class _Child:
    """A started (or adopted, from a pid file) service process."""

    name: str
    pid: int
    process: subprocess.Popen[bytes] | None = None
    log_offset: int = 0

    def returncode(self) -> int | None:
        """Exit status once it has exited (-1 when adopted: not ours to reap)."""
        if self.process is not None:
            return self.process.poll()
        return None if _process_alive(self.pid) else -1

    def signal(self, sig: signal.Signals) -> None:
        if self.returncode() is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, sig)

    def wait(self, deadline: float) -> bool:
        """Wait until it exits or `deadline` (monotonic) passes; True if it exited."""
        while self.returncode() is None:
            if time.monotonic() >= deadline:
                return False
            time.sleep(0.05)
        return True


class Platform:
    """The platform's processes, started and stopped as one.

    `env` is added to os.environ for the children and for the settings used here
    (addresses, ports), and RAG_DATA_DIR is set to `data_dir`. `services` selects
    a subset of KNOWN (tests may start only what they need, or add LLM); they
    still start in KNOWN's order and stages. With LLM, the generation settings
    that make it the simple tier are added where neither os.environ nor `env`
    sets them.
    """

    def __init__(
        self,
        data_dir: Path,
        env: Mapping[str, str] | None = None,
        services: Sequence[str] = ALL,
        *,
        python: str = sys.executable,
        stop_timeout: float = DEFAULT_STOP_TIMEOUT,
    ) -> None:
        unknown = [name for name in services if name not in KNOWN]
        if unknown:
            raise ValueError(f"unknown services {unknown}; known: {', '.join(KNOWN)}")
        self.data_dir = data_dir.resolve()
        self.services: tuple[str, ...] = tuple(name for name in KNOWN if name in services)
        env = dict(env or {})
        if LLM in self.services:
            llm_env = settings_from_env(env).generation_env()
            env = {**{k: v for k, v in llm_env.items() if k not in os.environ}, **env}
        self.python = python
        self.stop_timeout = stop_timeout
        root = str(Path(services_root()).parent)
        python_path = os.pathsep.join(p for p in (root, os.environ.get("PYTHONPATH", "")) if p)
        self.env: dict[str, str] = {
            **os.environ,
            "PYTHONPATH": python_path,
            "PYTHONUNBUFFERED": "1",
            **env,
            "RAG_DATA_DIR": str(self.data_dir),
        }
        self.settings = settings_from_env({**env, "RAG_DATA_DIR": str(self.data_dir)})
        self._children: dict[str, _Child] = {}
        self._probe = HealthProbe(self.settings)

    # ----------------------------------------------------------------- paths

    def log_path(self, name: str) -> Path:
        """Where `name`'s stdout and stderr are appended."""
        return self.data_dir / "logs" / f"{name}.log"

    def pid_path(self, name: str) -> Path:
        """Where `name`'s pid is written while it runs."""
        return self.data_dir / "run" / f"{name}.pid"

    def address(self, name: str) -> str:
        """gRPC address of `name`, or the gateway's URL."""
        return address_of(self.settings, name)

    def pids(self) -> dict[str, int]:
        """Pids of the processes started (or adopted) and not stopped."""
        return {name: child.pid for name, child in self._children.items()}

    # ----------------------------------------------------------------- start

    def start(
        self, timeout: float = DEFAULT_START_TIMEOUT, on_progress: ProgressCallback | None = None
    ) -> None:
        """Start every selected service and wait until all serve.

        Raises StartupError naming the service (with its log tail) when one cannot
        bind its port, exits, or is not serving within `timeout` seconds; every
        process started is stopped again before it raises (also on Ctrl-C).
        """
        (self.data_dir / "logs").mkdir(parents=True, exist_ok=True)
        (self.data_dir / "run").mkdir(parents=True, exist_ok=True)
        self._check_not_running()
        self._check_ports(self.services)
        deadline = time.monotonic() + timeout
        try:
            for stage in STAGES:
                names = [name for name in stage if name in self.services]
                if not names:
                    continue
                for name in names:
                    self._launch(name)
                self._wait_serving(names, deadline, timeout, on_progress)
        except BaseException:
            self.stop()
            raise

    def _check_not_running(self) -> None:
        for name in self.services:
            pid = _read_pid(self.pid_path(name))
            if pid is not None and _is_service_process(pid, name) and _process_alive(pid):
                raise StartupError(
                    name,
                    f"already running (pid {pid}, see {self.pid_path(name)}); stop it first "
                    "(`ragctl down`)",
                    None,
                    "",
                )

    def _check_ports(self, names: Sequence[str]) -> None:
        for name in names:
            host, port = _listen_address(self.settings, name)
            if port_in_use(host, port):
                raise StartupError(
                    name,
                    f"port {port} on {host} is already in use (another platform running? "
                    "`ragctl status`)",
                    None,
                    "",
                )

    def _launch(self, name: str) -> None:
        log_path = self.log_path(name)
        with log_path.open("ab") as log:
            stamp = time.strftime("%Y-%m-%dT%H:%M:%S")
            log.write(f"--- ragctl: starting {name} at {stamp} ---\n".encode())
            log.flush()
            offset = log.tell()
            process = subprocess.Popen(
                [self.python, "-m", f"services.{name}"],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=self.env,
                start_new_session=True,
            )
        self._children[name] = _Child(name, process.pid, process, offset)
        self.pid_path(name).write_text(f"{process.pid}\n")

    def _progress(self, states: Mapping[str, str]) -> dict[str, str]:
        view = {}
        for name in self.services:
            if name in states:
                view[name] = states[name]
            elif name in self._children:
                view[name] = SERVING  # an earlier stage, already serving
            else:
                view[name] = WAITING
        return view

    def _wait_serving(
        self,
        names: Sequence[str],
        deadline: float,
        timeout: float,
        on_progress: ProgressCallback | None,
    ) -> None:
        states = dict.fromkeys(names, STARTING)
        while True:
            for name in names:
                code = self._children[name].returncode()
                if code is not None:
                    raise self._failure(name, f"exited with code {code} while starting")
            for name in names:
                if states[name] != SERVING:
                    health = self._probe.check(name)
                    states[name] = SERVING if health == SERVING else STARTING
            if on_progress is not None:
                on_progress(self._progress(states))
            if all(state == SERVING for state in states.values()):
                return
            if time.monotonic() >= deadline:
                late = [name for name in names if states[name] != SERVING]
                raise self._failure(late[0], f"not serving after {timeout:g} s ({', '.join(late)})")
            time.sleep(POLL_SECONDS)

    def _failure(self, name: str, reason: str) -> StartupError:
        child = self._children.get(name)
        offset = child.log_offset if child else 0
        path = self.log_path(name)
        return StartupError(name, reason, path, read_log_tail(path, since=offset))

    # ----------------------------------------------------------------- watch

    def health(self) -> dict[str, str]:
        """Health of each selected service: SERVING, NOT_SERVING or UNREACHABLE."""
        return self._probe.check_all(self.services)

    def exited(self) -> dict[str, int]:
        """Started services that have exited since, with their exit status."""
        codes = {name: child.returncode() for name, child in self._children.items()}
        return {name: code for name, code in codes.items() if code is not None}

    def log_tail(self, name: str, lines: int = LOG_TAIL_LINES) -> str:
        """The end of `name`'s log since it was last started."""
        child = self._children.get(name)
        return read_log_tail(self.log_path(name), lines, child.log_offset if child else 0)

    # ----------------------------------------------------------------- stop

    def stop(self) -> None:
        """SIGTERM every process in reverse start order, wait up to `stop_timeout` s
        for them to drain and exit, SIGKILL the rest; remove their pid files."""
        children = [self._children[n] for n in reversed(KNOWN) if n in self._children]
        self._terminate(children)
        self._children.clear()
        self._probe.close()

    def _terminate(self, children: Sequence[_Child]) -> None:
        for child in children:
            child.signal(signal.SIGTERM)
        deadline = time.monotonic() + self.stop_timeout
        for child in children:
            if not child.wait(deadline):
                child.signal(signal.SIGKILL)
                child.wait(time.monotonic() + 5.0)
        for child in children:
            path = self.pid_path(child.name)
            if _read_pid(path) == child.pid:
                path.unlink(missing_ok=True)

    def restart(self, name: str, timeout: float = DEFAULT_START_TIMEOUT) -> None:
        """Stop one service (as `stop` does) and start it again, waiting until it serves."""
        if name not in self.services:
            raise ValueError(f"{name!r} is not one of this platform's services")
        child = self._children.pop(name, None)
        if child is not None:
            self._terminate([child])
        self._check_ports([name])
        self._launch(name)
        try:
            self._wait_serving([name], time.monotonic() + timeout, timeout, None)
        except BaseException:
            failed = self._children.pop(name)
            self._terminate([failed])
            raise

    # ----------------------------------------------------------------- adopt

    @classmethod
    def from_pid_files(
        cls, data_dir: Path, env: Mapping[str, str] | None = None, services: Sequence[str] = ALL
    ) -> Self:
        """The platform whose processes the pid files in `data_dir` name (started
        by `ragctl up --detach`), so that `stop()` can stop them. Stale pid files
        (process gone, or the pid reused by another program) are removed."""
        platform = cls(data_dir, env, services)
        for name in platform.services:
            path = platform.pid_path(name)
            pid = _read_pid(path)
            if pid is None:
                continue
            if _process_alive(pid) and _is_service_process(pid, name):
                platform._children[name] = _Child(name, pid)
            else:
                path.unlink(missing_ok=True)
        return platform

    def __enter__(self) -> Self:
        if not self._children:
            self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()


def _read_pid(path: Path) -> int | None:
    try:
        return int(path.read_text().strip())
    except (OSError, ValueError):
        return None


def services_root() -> str:
    """The directory of the `services` package that children must import."""
    return str(Path(next(iter(_services_package.__path__))))


@contextlib.contextmanager
def running(
    data_dir: Path,
    env: Mapping[str, str] | None = None,
    services: Sequence[str] = ALL,
    timeout: float = DEFAULT_START_TIMEOUT,
) -> Iterator[Platform]:
    """`with running(dir) as platform:`: started within `timeout`, always stopped."""
    platform = Platform(data_dir, env, services)
    platform.start(timeout)
    try:
        yield platform
    finally:
        platform.stop()


__all__ = [
    "ALL",
    "GATEWAY",
    "KNOWN",
    "LLM",
    "NOT_SERVING",
    "SERVING",
    "STAGES",
    "UNREACHABLE",
    "HealthProbe",
    "Platform",
    "StartupError",
    "address_of",
    "check_health",
    "gateway_url",
    "llm_url",
    "running",
    "settings_from_env",
]
