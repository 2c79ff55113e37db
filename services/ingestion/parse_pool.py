"""Parse documents in worker processes that can be killed, under per-job limits.

A parser works on bytes chosen by a caller: a crafted PDF or page can take
minutes of CPU or gigabytes of memory, and a thread cannot be stopped once it
runs. So each document is parsed and chunked in a worker process of a small
pool, under three limits: a wall deadline enforced here (the worker is killed
and replaced when it passes), and the CPU time (RLIMIT_CPU) and address space
(RLIMIT_AS) set in the worker, which the kernel enforces even if this process
stalls. Cancelling the awaiting task (the client's deadline) kills the job's
worker too, so no abandoned parse keeps a CPU. A worker that dies is reported as
the document's failure and the next job gets a fresh one; the service lives on.

Workers come from a `forkserver` (never `fork`): the service's own threads
(gRPC, ONNX, tokenizers) must not be copied into a child mid-lock, and the
server forks each worker from a process that has only imported the parsing
modules, so a new worker is ready in milliseconds instead of re-importing them.

Waiting jobs take free workers in turns by key (the tenant), so one tenant's
queue of documents delays another tenant's document by one job at most.
"""

from __future__ import annotations

import asyncio
import logging
import math
import multiprocessing
import os
import pickle
import resource
import signal
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from multiprocessing.connection import Connection
from multiprocessing.process import BaseProcess
from typing import Any, TypeVar

from services.common.errors import PlatformError, TooLargeError

log = logging.getLogger(__name__)

T = TypeVar("T")


@dataclass(frozen=True)
class ParseLimits:
    """Worker count and per-job limits (from settings)."""

    workers: int
    """Jobs run at once, one per worker process."""
    seconds: float
    """Wall time of one job, and (rounded up) its CPU time."""
    memory_mb: int = 0
    """Address space of a worker process in MiB; 0: no limit."""


def _cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _picklable(error: BaseException) -> BaseException:
    """`error`, or a PlatformError with its text when it cannot cross the pipe."""
    try:
        pickle.dumps(error)
    except Exception:
        return PlatformError(f"{type(error).__name__}: {error}")
    return error


def _serve(conn: Connection, limits: ParseLimits) -> None:
    """A worker's loop: run (function, args) jobs from `conn` until it closes.

    CPU time is cumulative per process, so each job's soft RLIMIT_CPU is what
    the worker has used so far plus the job's allowance; past it the kernel
    sends SIGXCPU, which ends the worker. After a MemoryError the worker
    reports it and exits, since the allocator may be left fragmented.
    """
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the service decides when workers stop
    os.environ["TOKENIZERS_PARALLELISM"] = "false"  # one thread: CPU time = wall time
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))  # SIGXCPU would dump core
    if limits.memory_mb:
        size = limits.memory_mb * 1024 * 1024
        resource.setrlimit(resource.RLIMIT_AS, (size, size))
    _, cpu_hard = resource.getrlimit(resource.RLIMIT_CPU)
    while True:
        try:
            function, args = conn.recv()
            soft = math.ceil(_cpu_seconds() + limits.seconds)
            if cpu_hard != resource.RLIM_INFINITY:
                soft = min(soft, cpu_hard)
            resource.setrlimit(resource.RLIMIT_CPU, (soft, cpu_hard))
            conn.send(("ok", function(*args)))
        except EOFError:
            return
        except MemoryError:
            conn.send(("memory", None))
            return
        except Exception as error:
            conn.send(("error", _picklable(error)))


@dataclass(eq=False)
class _Worker:
    process: BaseProcess
    conn: Connection

    def exchange(self, job: tuple[Callable[..., Any], tuple[Any, ...]]) -> tuple[str, Any]:
        """Send a job and wait for its outcome (blocking; run in a thread)."""
        try:
            self.conn.send(job)
            outcome: tuple[str, Any] = self.conn.recv()
        except (EOFError, OSError):
            self.process.join()
            return "died", self.process.exitcode
        return outcome


class ParsePool:
    """Runs picklable functions in worker processes under `ParseLimits`.

    Workers start on first use and are kept while they stay healthy. Functions
    and their arguments travel by pickle, so they must be importable module-level
    names; `preload` names the modules the fork server imports once for all
    workers (the functions' modules, and what they import).
    """

    def __init__(self, limits: ParseLimits, preload: Sequence[str] = ()) -> None:
        if limits.workers < 1:
            raise ValueError("a ParsePool needs at least one worker")
        self.limits = limits
        self._context = multiprocessing.get_context("forkserver")
        self._context.set_forkserver_preload([__name__, *preload])
        # One thread per worker waits on its pipe; shared threads would starve
        # the service's own asyncio.to_thread calls during long parses.
        self._threads = ThreadPoolExecutor(limits.workers, thread_name_prefix="parse-pool")
        self._workers: set[_Worker] = set()
        self._idle: list[_Worker] = []
        self._running = 0
        self._waiting: dict[str, deque[asyncio.Future[None]]] = {}
        """Jobs waiting for a worker, by key; keys take turns in insertion order."""
        self._closed = False

    async def run(self, function: Callable[..., T], *args: Any, name: str, key: str = "") -> T:
        """`function(*args)` in a worker; its exception, or a PlatformError naming
        `name` (the document) when the worker passes a limit or dies."""
        await self._acquire(key)
        try:
            return await self._run(function, args, name)
        finally:
            self._release()

    async def close(self) -> None:
        """Kill every worker (jobs still running fail) and refuse new jobs."""
        self._closed = True
        idle, self._idle = self._idle, []
        for worker in list(self._workers):
            self._kill(worker)
        for worker in idle:
            await asyncio.to_thread(_reap, worker)

    async def _acquire(self, key: str) -> None:
        if self._closed:
            raise PlatformError("the parse pool is closed (the service is stopping)")
        if self._running < self.limits.workers and not self._waiting:
            self._running += 1
            return
        turn = asyncio.get_running_loop().create_future()
        self._waiting.setdefault(key, deque()).append(turn)
        try:
            await turn
        except asyncio.CancelledError:
            if not turn.cancelled():
                self._release()  # handed a worker just as the caller gave up
            elif turn in self._waiting.get(key, ()):
                self._waiting[key].remove(turn)
                if not self._waiting[key]:
                    del self._waiting[key]
            raise

    def _release(self) -> None:
        """Hand the slot to the next key's oldest waiting job, or free it."""
        while self._waiting:
            key = next(iter(self._waiting))
            queue = self._waiting.pop(key)
            turn = queue.popleft()
            if queue:
                self._waiting[key] = queue  # back of the line, behind the other keys
            if not turn.done():  # else cancelled: its task has yet to see it
                turn.set_result(None)
                return
        self._running -= 1

    def _start(self) -> _Worker:
        """A new worker (blocking: run in a thread)."""
        parent, child = self._context.Pipe()
        process = self._context.Process(
            target=_serve, args=(child, self.limits), name="parse-worker", daemon=True
        )
        process.start()
        child.close()  # else the worker's death would not end our recv
        return _Worker(process, parent)

    def _kill(self, worker: _Worker) -> None:
        """Kill the worker now; the thread waiting on its pipe reaps it."""
        self._workers.discard(worker)
        worker.process.kill()

    async def _run(self, function: Callable[..., T], args: tuple[Any, ...], name: str) -> T:
        loop = asyncio.get_running_loop()
        worker = self._idle.pop() if self._idle else None
        if worker is None or not worker.process.is_alive():
            if worker is not None:
                self._workers.discard(worker)
            worker = await loop.run_in_executor(self._threads, self._start)
            self._workers.add(worker)
        exchange = loop.run_in_executor(self._threads, worker.exchange, (function, args))
        try:
            status, value = await asyncio.wait_for(asyncio.shield(exchange), self.limits.seconds)
        except BaseException as error:  # the deadline, or the caller's cancellation
            self._kill(worker)
            exchange.add_done_callback(lambda _: worker.conn.close())
            if isinstance(error, TimeoutError):
                raise TooLargeError(
                    f"{name}: parsing took longer than {self.limits.seconds:g} s "
                    "(RAG_INGESTION_PARSE_SECONDS); the document was not indexed"
                ) from None
            raise
        if status in ("ok", "error"):
            if self._closed:
                self._kill(worker)
                await loop.run_in_executor(self._threads, _reap, worker)
            else:
                self._idle.append(worker)
            if status == "error":
                raise value
            return value  # type: ignore[no-any-return]
        self._workers.discard(worker)
        await loop.run_in_executor(self._threads, _reap, worker)
        raise self._death(name, value if status == "died" else None)

    def _death(self, name: str, exitcode: int | None) -> PlatformError:
        """The error of a job whose worker ran out of memory (None) or died."""
        memory = f"{self.limits.memory_mb} MiB (RAG_INGESTION_PARSE_MEMORY_MB)"
        if exitcode is None:
            return TooLargeError(
                f"{name}: parsing needs more memory than {memory}; the document was not indexed"
            )
        if exitcode == -signal.SIGXCPU:
            return TooLargeError(
                f"{name}: parsing used more than {math.ceil(self.limits.seconds)} s of CPU "
                "time (RAG_INGESTION_PARSE_SECONDS); the document was not indexed"
            )
        if exitcode in (-signal.SIGABRT, -signal.SIGKILL) and self.limits.memory_mb:
            # Native code (the tokenizer) aborts when an allocation fails; the
            # kernel's OOM killer sends SIGKILL.
            return TooLargeError(
                f"{name}: the parser's worker process was killed by {_signal_name(-exitcode)}, "
                f"most likely over its memory limit of {memory}; the document was not indexed"
            )
        how = f"signal {_signal_name(-exitcode)}" if exitcode < 0 else f"code {exitcode}"
        log.error("parse worker died", extra={"document": name, "exit": how})
        return PlatformError(
            f"{name}: the parser's worker process died ({how}); the document was not indexed"
        )


def _reap(worker: _Worker) -> None:
    """Wait for a stopped worker's process and close its pipe (blocking)."""
    worker.process.join()
    worker.conn.close()


def _signal_name(number: int) -> str:
    try:
        return signal.Signals(number).name
    except ValueError:
        return str(number)
