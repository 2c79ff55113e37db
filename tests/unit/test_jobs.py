"""Durable import jobs (`services/ingestion/jobs.py`): one contract for both
stores (files; Firestore on its emulator), and the runner's states, progress,
cancellation and resumption after its replica dies. The whole path, with a
kill -9 of the real ingestion process, is tests/integration/test_jobs.py."""

import asyncio
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from ragplatform.v1 import ingestion_pb2
from services.common.errors import NotFoundError, PermissionDeniedError
from services.ingestion.jobs import (
    FileJobStore,
    FirestoreJobStore,
    Job,
    JobRecord,
    JobRunner,
    JobStore,
)

Status = ingestion_pb2.IngestResult.Status


@pytest.fixture(params=["file", "firestore"])
def job_store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[JobStore]:
    if request.param == "file":
        yield FileJobStore(tmp_path / "jobs")
    else:
        yield FirestoreJobStore(request.getfixturevalue("firestore_client"), "rag")


def record(job_id: str, tenant: str = "acme", created: int = 1) -> JobRecord:
    job = Job(id=job_id, tenant=tenant, uris=["gs://b/"], state=Job.STATE_PENDING,
              created_at_unix=created)  # fmt: skip
    return JobRecord(job, ingestion_pb2.IngestUrisRequest(uris=["gs://b/"], tenant=tenant))


def test_a_store_confines_jobs_to_their_tenant_newest_first(job_store: JobStore) -> None:
    for number, tenant in enumerate(["acme", "globex", "acme"]):
        job_store.create(record(f"a{number}", tenant, created=number))
    assert [r.job.id for r in job_store.recent("acme", 10)] == ["a2", "a0"]
    assert job_store.get("acme", "a1") is None  # globex's
    stored = job_store.get("acme", "a0")
    assert stored is not None and stored.request.uris == ["gs://b/"]


def test_one_owner_at_a_time_until_its_lease_runs_out(job_store: JobStore) -> None:
    job_store.create(record("j1"))
    assert job_store.runnable(now=100) == ["j1"]
    mine = job_store.claim("j1", "me", until=130, now=100)
    assert mine is not None and mine.owner == "me"
    assert job_store.claim("j1", "other", until=140, now=110) is None  # leased
    assert job_store.runnable(now=110) == []
    mine.job.state, mine.job.created = Job.STATE_RUNNING, 3
    assert job_store.save(mine, "me") == Job.STATE_RUNNING
    assert job_store.save(mine, "other") == Job.STATE_CANCELLED  # not the owner: stop
    assert job_store.runnable(now=131) == ["j1"]  # the owner died
    taken = job_store.claim("j1", "other", until=170, now=131)
    assert taken is not None and taken.job.created == 3
    assert job_store.save(mine, "me") == Job.STATE_CANCELLED  # the late writer stops
    stored = job_store.get("acme", "j1")
    assert stored is not None and stored.owner == "other"


def test_a_cancelled_job_stops_its_runner_and_is_never_resumed(job_store: JobStore) -> None:
    job_store.create(record("j2"))
    mine = job_store.claim("j2", "me", until=130, now=100)
    assert mine is not None
    assert job_store.cancel("globex", "j2") is None
    cancelled = job_store.cancel("acme", "j2")
    assert cancelled is not None and cancelled.job.state == Job.STATE_CANCELLED
    assert job_store.save(mine, "me") == Job.STATE_CANCELLED
    assert job_store.runnable(now=1000) == []
    assert job_store.claim("j2", "other", until=2000, now=1000) is None


def results(*statuses: int) -> Callable[[Any], AsyncIterator[ingestion_pb2.IngestUrisResponse]]:
    """An ingestion that finds len(statuses) documents and ends each so."""

    async def run(request: Any) -> AsyncIterator[ingestion_pb2.IngestUrisResponse]:
        plan = ingestion_pb2.IngestPlan(document_count=len(statuses))
        yield ingestion_pb2.IngestUrisResponse(plan=plan)
        for number, status in enumerate(statuses):
            await asyncio.sleep(0)
            result = ingestion_pb2.IngestResult(
                status=status,
                source_uri=f"gs://b/{number}.md",
                message="bad" if status == 4 else "",
            )
            yield ingestion_pb2.IngestUrisResponse(result=result)

    return run


async def wait_for(runner: JobRunner, job_id: str, state: int) -> Job:
    for _ in range(500):
        job = runner.get("acme", job_id)
        if job.state == state:
            return job
        await asyncio.sleep(0.01)
    raise AssertionError(f"job never reached {Job.State.Name(state)}: {runner.get('acme', job_id)}")


async def test_a_job_runs_and_counts_every_document(tmp_path: Path) -> None:
    runner = JobRunner(FileJobStore(tmp_path), results(1, 2, 3, 3, 4))
    request = ingestion_pb2.IngestUrisRequest(uris=["gs://b/"], tenant="acme")
    job = runner.start_stored(request)
    assert job.state == Job.STATE_PENDING
    runner.run_soon(job.id)
    done = await wait_for(runner, job.id, Job.STATE_SUCCEEDED)
    counts = (done.total, done.created, done.updated, done.unchanged, done.failed, done.attempts)
    assert counts == (5, 1, 1, 2, 1, 1)
    assert [f.source_uri for f in done.failures] == ["gs://b/4.md"]
    assert done.started_at_unix and done.finished_at_unix
    assert [j.id for j in runner.recent("acme", 10)] == [job.id]
    with pytest.raises(NotFoundError, match="not found in tenant 'globex'"):
        runner.get("globex", job.id)


async def test_a_job_whose_source_is_refused_fails_with_the_reason(tmp_path: Path) -> None:
    async def refused(request: Any) -> AsyncIterator[ingestion_pb2.IngestUrisResponse]:
        raise PermissionDeniedError("gs://other/: tenant 'acme' may not import from there")
        yield  # an async generator

    runner = JobRunner(FileJobStore(tmp_path), refused)
    job = runner.start_stored(ingestion_pb2.IngestUrisRequest(uris=["gs://other/"], tenant="acme"))
    runner.run_soon(job.id)
    failed = await wait_for(runner, job.id, Job.STATE_FAILED)
    assert "may not import from there" in failed.error


async def test_a_job_of_a_dead_replica_is_resumed_by_another(tmp_path: Path) -> None:
    store = FileJobStore(tmp_path)
    clock = [1000.0]
    started = asyncio.Event()

    async def never_ends(request: Any) -> AsyncIterator[ingestion_pb2.IngestUrisResponse]:
        yield ingestion_pb2.IngestUrisResponse(plan=ingestion_pb2.IngestPlan(document_count=2))
        started.set()
        await asyncio.Event().wait()

    dying = JobRunner(store, never_ends, clock=lambda: clock[0])
    job = dying.start_stored(ingestion_pb2.IngestUrisRequest(uris=["gs://b/"], tenant="acme"))
    dying.run_soon(job.id)
    await started.wait()
    await dying.close()  # the replica is gone: its lease is no longer renewed

    survivor = JobRunner(store, results(3, 3), clock=lambda: clock[0])
    assert survivor.resume() == 0  # the lease still holds
    clock[0] += 31
    assert survivor.resume() == 1
    done = await wait_for(survivor, job.id, Job.STATE_SUCCEEDED)
    assert (done.attempts, done.unchanged, done.total) == (2, 2, 2)


async def test_cancelling_stops_a_running_job(tmp_path: Path) -> None:
    clock = [0.0]

    async def slow(request: Any) -> AsyncIterator[ingestion_pb2.IngestUrisResponse]:
        yield ingestion_pb2.IngestUrisResponse(plan=ingestion_pb2.IngestPlan(document_count=100))
        for _ in range(100):
            clock[0] += 2  # past PROGRESS_SECONDS: every result is saved
            await asyncio.sleep(0.01)
            yield ingestion_pb2.IngestUrisResponse(
                result=ingestion_pb2.IngestResult(status=Status.STATUS_CREATED)
            )

    runner = JobRunner(FileJobStore(tmp_path), slow, clock=lambda: clock[0])
    job = runner.start_stored(ingestion_pb2.IngestUrisRequest(uris=["gs://b/"], tenant="acme"))
    runner.run_soon(job.id)
    await asyncio.sleep(0.1)
    assert runner.cancel("acme", job.id).state == Job.STATE_CANCELLED
    await asyncio.sleep(0.1)
    stopped = runner.get("acme", job.id)
    assert stopped.state == Job.STATE_CANCELLED and stopped.created < 100
    await runner.close()
