"""The parse pool: jobs in worker processes under wall, CPU and memory limits,
failures reported per job, dead workers replaced, cancelled jobs killed."""

import asyncio
import os
import resource
import signal
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from services.common.errors import InvalidInputError, PlatformError, TooLargeError
from services.ingestion.parse_pool import ParseLimits, ParsePool

# Jobs: module-level so that they reach the workers by pickle.


def pid() -> int:
    return os.getpid()


def nap(seconds: float, mark: str = "") -> int:
    if mark:
        Path(mark).write_text(str(os.getpid()))
    time.sleep(seconds)
    return os.getpid()


def limits() -> tuple[tuple[int, int], tuple[int, int], float]:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return (
        resource.getrlimit(resource.RLIMIT_CPU),
        resource.getrlimit(resource.RLIMIT_AS),
        usage.ru_utime + usage.ru_stime,
    )


def allocate(mib: int) -> int:
    return len(bytearray(mib * 1024 * 1024))


def refuse(name: str) -> None:
    raise InvalidInputError(f"{name}: refused")


def exit_now(code: int) -> None:
    os._exit(code)


def signal_self(number: int) -> None:
    os.kill(os.getpid(), number)


@pytest.fixture
async def pool() -> AsyncIterator[ParsePool]:
    pool = ParsePool(ParseLimits(workers=2, seconds=2, memory_mb=512))
    yield pool
    await pool.close()


def written(path: Path) -> None:
    """Wait until a job has written its process id to `path`."""
    while not path.exists() or not path.read_text():
        time.sleep(0.02)


def gone(process_id: int) -> bool:
    """Whether the process has exited and been reaped."""
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        try:
            os.kill(process_id, 0)
        except ProcessLookupError:
            return True
        time.sleep(0.05)
    return False


async def test_jobs_run_in_reused_workers_under_cpu_and_memory_limits(pool: ParsePool) -> None:
    first = await pool.run(pid, name="a.txt")
    assert first != os.getpid()
    assert await pool.run(pid, name="b.txt") == first  # the idle worker is reused
    (cpu_soft, _), (as_soft, as_hard), used = await pool.run(limits, name="c.txt")
    assert used < cpu_soft <= used + 2 + 1  # this job's 2 s on top of what the worker used
    assert as_soft == as_hard == 512 * 1024 * 1024


async def test_a_job_past_its_wall_deadline_is_killed_and_the_pool_keeps_serving(
    pool: ParsePool, tmp_path: Path
) -> None:
    mark = tmp_path / "pid"
    started = time.monotonic()
    slow = asyncio.create_task(pool.run(nap, 60, str(mark), name="slow.pdf"))
    await pool.run(nap, 0, name="other.txt")  # meanwhile, on the other worker
    assert not slow.done()
    with pytest.raises(TooLargeError, match=r"slow\.pdf: parsing took longer than 2 s"):
        await slow
    assert time.monotonic() - started < 10
    assert gone(int(mark.read_text()))
    assert await pool.run(nap, 0, name="next.txt") != int(mark.read_text())


async def test_a_job_over_the_memory_limit_fails_cleanly(pool: ParsePool) -> None:
    with pytest.raises(TooLargeError, match=r"bomb\.pdf: parsing needs more memory than 512 MiB"):
        await pool.run(allocate, 1024, name="bomb.pdf")
    assert await pool.run(allocate, 16, name="small.txt") == 16 * 1024 * 1024


async def test_a_job_error_is_raised_as_is_and_the_worker_is_kept(pool: ParsePool) -> None:
    worker = await pool.run(pid, name="a.txt")
    with pytest.raises(InvalidInputError, match=r"^bad\.txt: refused$"):
        await pool.run(refuse, "bad.txt", name="bad.txt")
    assert await pool.run(pid, name="a.txt") == worker


async def test_a_crashing_worker_is_reported_and_replaced(pool: ParsePool) -> None:
    worker = await pool.run(pid, name="a.txt")
    with pytest.raises(
        PlatformError, match=r"crash\.pdf: the parser's worker process died \(code 3\)"
    ):
        await pool.run(exit_now, 3, name="crash.pdf")
    with pytest.raises(TooLargeError, match=r"spin\.pdf: parsing used more than 2 s of CPU time"):
        await pool.run(signal_self, signal.SIGXCPU, name="spin.pdf")  # as the kernel does
    replacement = await pool.run(pid, name="b.txt")
    assert replacement != worker and gone(worker)


async def test_cancelling_the_caller_kills_the_worker(pool: ParsePool, tmp_path: Path) -> None:
    mark = tmp_path / "pid"
    job = asyncio.create_task(pool.run(nap, 60, str(mark), name="slow.pdf"))
    await asyncio.to_thread(written, mark)
    job.cancel()
    with pytest.raises(asyncio.CancelledError):
        await job
    assert gone(int(mark.read_text()))
    assert await pool.run(nap, 0, name="next.txt") != int(mark.read_text())


async def test_waiting_jobs_take_turns_by_key() -> None:
    pool = ParsePool(ParseLimits(workers=1, seconds=5))
    order: list[str] = []

    async def job(key: str, label: str) -> None:
        await pool.run(nap, 0.05, name=label, key=key)
        order.append(label)

    try:
        first = asyncio.create_task(job("bulk", "bulk-1"))
        await asyncio.sleep(0)  # bulk-1 takes the only worker
        rest = [job("bulk", "bulk-2"), job("bulk", "bulk-3"), job("upload", "upload-1")]
        await asyncio.gather(first, *rest)
    finally:
        await pool.close()
    assert order == ["bulk-1", "bulk-2", "upload-1", "bulk-3"]


async def test_a_job_cancelled_while_waiting_leaves_its_turn() -> None:
    pool = ParsePool(ParseLimits(workers=1, seconds=5))
    try:
        running = asyncio.create_task(pool.run(nap, 0.3, name="a.txt", key="a"))
        await asyncio.sleep(0)
        waiting = asyncio.create_task(pool.run(nap, 0, name="b.txt", key="b"))
        await asyncio.sleep(0)
        waiting.cancel()
        after = asyncio.create_task(pool.run(nap, 0, name="c.txt", key="c"))
        await asyncio.wait_for(asyncio.gather(running, after), 10)
        assert waiting.cancelled()
    finally:
        await pool.close()


async def test_a_closed_pool_refuses_jobs() -> None:
    pool = ParsePool(ParseLimits(workers=1, seconds=5))
    worker = await pool.run(pid, name="a.txt")
    await pool.close()
    assert gone(worker)
    with pytest.raises(PlatformError, match="closed"):
        await pool.run(pid, name="b.txt")
