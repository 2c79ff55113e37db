"""Durable imports: an IngestUris that goes on without its caller and survives
a restart of the ingestion service.

A job is stored before it runs (its request included), and a replica runs it
under a lease that it renews while it works. A replica that dies stops renewing;
any replica (the restarted one, or another) finds the job with its lease run out
and runs it again from the start of its URIs: what the first run indexed comes
back UNCHANGED (same generation or same bytes) and is never embedded again, so
"resume" costs a listing and the hashes. Progress is written at most every
`PROGRESS_SECONDS`, and a cancel is seen at the next lease renewal.

Two stores: files under RAG_DATA_DIR/jobs (one replica, the embedded default)
and Firestore (any number of replicas; its emulator in the tests).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import logging
import os
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from prometheus_client import Counter, Gauge

from ragplatform.v1 import ingestion_pb2
from services.common.errors import NotFoundError, PlatformError

log = logging.getLogger(__name__)

Job = ingestion_pb2.Job
State = ingestion_pb2.Job.State
Status = ingestion_pb2.IngestResult.Status
FINISHED = frozenset({Job.STATE_SUCCEEDED, Job.STATE_FAILED, Job.STATE_CANCELLED})
LEASE_SECONDS = 30.0
"""How long a replica owns a running job without renewing (by default); past
it, another resumes it. The lease is renewed when a third of it is left."""
PROGRESS_SECONDS = 1.0
MAX_FAILURES = 100
"""Failed documents kept with their reasons; the count goes on past it."""

JOBS = Counter("rag_ingestion_jobs_total", "Import jobs that ended, by final state.", ["state"])
RUNNING = Gauge("rag_ingestion_jobs_running", "Import jobs this replica is running now.")


@dataclass
class JobRecord:
    """What the store keeps of a job: the job, its request and its lease."""

    job: ingestion_pb2.Job
    request: ingestion_pb2.IngestUrisRequest
    owner: str = ""
    lease_until: float = 0.0


class JobStore(Protocol):
    """Where jobs live; every method is atomic for the record it touches."""

    def create(self, record: JobRecord) -> None: ...

    def get(self, tenant: str, job_id: str) -> JobRecord | None: ...

    def recent(self, tenant: str, limit: int) -> list[JobRecord]:
        """The tenant's jobs, newest first."""
        ...

    def claim(self, job_id: str, owner: str, until: float, now: float) -> JobRecord | None:
        """Take (or keep) the lease of an unfinished job whose lease is free or
        `owner`'s; None when another holds it or it is finished."""
        ...

    def save(self, record: JobRecord, owner: str) -> State.ValueType:
        """Write the job's progress if `owner` still holds it and it is not
        finished; the state stored, CANCELLED when `owner` lost the job to
        another replica (either way, the runner must stop)."""
        ...

    def cancel(self, tenant: str, job_id: str) -> JobRecord | None: ...

    def runnable(self, now: float) -> list[str]:
        """Ids of unfinished jobs whose lease has run out (or was never taken)."""
        ...


def _fields(record: JobRecord) -> dict[str, Any]:
    return {
        "tenant": record.job.tenant,
        "created_at_unix": record.job.created_at_unix,
        "finished": record.job.state in FINISHED,
        "owner": record.owner,
        "lease_until": record.lease_until,
        "job": record.job.SerializeToString(),
        "request": record.request.SerializeToString(),
    }


def _record(data: dict[str, Any]) -> JobRecord:
    job = ingestion_pb2.Job.FromString(bytes(data["job"]))
    request = ingestion_pb2.IngestUrisRequest.FromString(bytes(data["request"]))
    return JobRecord(job, request, str(data["owner"]), float(data["lease_until"]))


def _claimable(record: JobRecord, owner: str, now: float) -> bool:
    return record.job.state not in FINISHED and (
        record.owner in ("", owner) or record.lease_until < now
    )


class FileJobStore:
    """One file per job under a directory, replaced atomically; one process."""

    def __init__(self, directory: Path) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        self._directory = directory
        self._lock = threading.Lock()

    def create(self, record: JobRecord) -> None:
        with self._lock:
            self._write(record)

    def get(self, tenant: str, job_id: str) -> JobRecord | None:
        with self._lock:
            record = self._read(job_id)
        return record if record is not None and record.job.tenant == tenant else None

    def recent(self, tenant: str, limit: int) -> list[JobRecord]:
        with self._lock:
            records = [self._read(path.stem) for path in self._directory.glob("*.job")]
        mine = [r for r in records if r is not None and r.job.tenant == tenant]
        return sorted(mine, key=lambda r: (-r.job.created_at_unix, r.job.id))[:limit]

    def claim(self, job_id: str, owner: str, until: float, now: float) -> JobRecord | None:
        with self._lock:
            record = self._read(job_id)
            if record is None or not _claimable(record, owner, now):
                return None
            record.owner, record.lease_until = owner, until
            self._write(record)
            return record

    def save(self, record: JobRecord, owner: str) -> State.ValueType:
        with self._lock:
            stored = self._read(record.job.id)
            if stored is None or stored.owner != owner:
                return Job.STATE_CANCELLED
            if stored.job.state in FINISHED:
                return stored.job.state
            self._write(record)
            return record.job.state

    def cancel(self, tenant: str, job_id: str) -> JobRecord | None:
        with self._lock:
            record = self._read(job_id)
            if record is None or record.job.tenant != tenant:
                return None
            if record.job.state not in FINISHED:
                record.job.state = Job.STATE_CANCELLED
                record.job.finished_at_unix = int(time.time())
                self._write(record)
            return record

    def runnable(self, now: float) -> list[str]:
        with self._lock:
            records = [self._read(path.stem) for path in self._directory.glob("*.job")]
        return [
            r.job.id
            for r in records
            if r is not None and r.job.state not in FINISHED and r.lease_until < now
        ]

    def _path(self, job_id: str) -> Path:
        return self._directory / f"{job_id}.job"

    def _read(self, job_id: str) -> JobRecord | None:
        if not job_id.isalnum():  # ids are hex: nothing else names a file here
            return None
        try:
            data = json.loads(self._path(job_id).read_text(encoding="utf-8"))
        except FileNotFoundError:
            return None
        return _record({**data, **{k: base64.b64decode(data[k]) for k in ("job", "request")}})

    def _write(self, record: JobRecord) -> None:
        fields = _fields(record)
        for key in ("job", "request"):
            fields[key] = base64.b64encode(fields[key]).decode()
        path = self._path(record.job.id)
        temporary = path.with_suffix(".tmp")
        with temporary.open("w", encoding="utf-8") as handle:
            json.dump(fields, handle)
            handle.flush()
            os.fsync(handle.fileno())
        temporary.replace(path)


class FirestoreJobStore:
    """Jobs as documents of `<prefix>_jobs`, leases taken in transactions, so
    any number of ingestion replicas share them."""

    def __init__(self, client: Any, prefix: str) -> None:
        self._client = client
        self._jobs = client.collection(f"{prefix}_jobs")

    def create(self, record: JobRecord) -> None:
        self._jobs.document(record.job.id).create(_fields(record))

    def get(self, tenant: str, job_id: str) -> JobRecord | None:
        snapshot = self._jobs.document(job_id).get()
        if not snapshot.exists:
            return None
        record = _record(snapshot.to_dict() or {})
        return record if record.job.tenant == tenant else None

    def recent(self, tenant: str, limit: int) -> list[JobRecord]:
        from google.cloud.firestore_v1 import FieldFilter

        query = self._jobs.where(filter=FieldFilter("tenant", "==", tenant))
        records = [_record(s.to_dict() or {}) for s in query.stream()]
        return sorted(records, key=lambda r: (-r.job.created_at_unix, r.job.id))[:limit]

    def claim(self, job_id: str, owner: str, until: float, now: float) -> JobRecord | None:
        def change(record: JobRecord) -> JobRecord | None:
            if not _claimable(record, owner, now):
                return None
            record.owner, record.lease_until = owner, until
            return record

        return self._update(job_id, change)

    def save(self, record: JobRecord, owner: str) -> State.ValueType:
        state: list[State.ValueType] = []

        def change(stored: JobRecord) -> JobRecord | None:
            if stored.owner != owner or stored.job.state in FINISHED:
                state.append(Job.STATE_CANCELLED if stored.owner != owner else stored.job.state)
                return None
            state.append(record.job.state)
            return record

        self._update(record.job.id, change)
        return state[0] if state else Job.STATE_CANCELLED

    def cancel(self, tenant: str, job_id: str) -> JobRecord | None:
        found: list[JobRecord] = []

        def change(record: JobRecord) -> JobRecord | None:
            if record.job.tenant != tenant:
                return None
            found.append(record)
            if record.job.state in FINISHED:
                return None
            record.job.state = Job.STATE_CANCELLED
            record.job.finished_at_unix = int(time.time())
            return record

        self._update(job_id, change)
        return found[0] if found else None

    def runnable(self, now: float) -> list[str]:
        from google.cloud.firestore_v1 import FieldFilter

        query = self._jobs.where(filter=FieldFilter("finished", "==", False))
        return [
            snapshot.id
            for snapshot in query.stream()
            if float((snapshot.to_dict() or {}).get("lease_until", 0)) < now
        ]

    def _update(
        self, job_id: str, change: Callable[[JobRecord], JobRecord | None]
    ) -> JobRecord | None:
        """Apply `change` to the stored record in one transaction; its result
        (None: nothing written)."""
        from google.cloud import firestore

        reference = self._jobs.document(job_id)

        @firestore.transactional
        def apply(transaction: Any) -> JobRecord | None:
            snapshot = reference.get(transaction=transaction)
            if not snapshot.exists:
                return None
            changed = change(_record(snapshot.to_dict() or {}))
            if changed is not None:
                transaction.set(reference, _fields(changed))
            return changed

        result: JobRecord | None = apply(self._client.transaction())
        return result


class JobRunner:
    """Starts, runs, resumes and cancels the jobs of one ingestion replica."""

    def __init__(
        self,
        store: JobStore,
        run: Callable[[ingestion_pb2.IngestUrisRequest], Any],
        *,
        lease_seconds: float = LEASE_SECONDS,
        clock: Callable[[], float] = time.time,
    ) -> None:
        """`run(request)` is the ingestion itself: an async iterator of
        IngestUrisResponse (the pipeline's `ingest_uris` for the request)."""
        self._store = store
        self._run_request = run
        self._clock = clock
        self._lease = lease_seconds
        self.owner = uuid.uuid4().hex
        self._tasks: dict[str, asyncio.Task[None]] = {}

    def start_stored(self, request: ingestion_pb2.IngestUrisRequest) -> ingestion_pb2.Job:
        """Store a new job for a validated request (blocking); `run_soon` runs it."""
        job = ingestion_pb2.Job(
            id=uuid.uuid4().hex,
            tenant=request.tenant,
            uris=request.uris,
            state=Job.STATE_PENDING,
            created_at_unix=int(self._clock()),
        )
        self._store.create(JobRecord(job, request))
        return job

    def run_soon(self, job_id: str) -> None:
        """Run a stored job on this replica, in the background."""
        self._spawn(job_id)

    def get(self, tenant: str, job_id: str) -> ingestion_pb2.Job:
        record = self._store.get(tenant, job_id)
        if record is None:
            raise NotFoundError(f"job {job_id!r} not found in tenant {tenant!r}")
        return record.job

    def recent(self, tenant: str, limit: int) -> list[ingestion_pb2.Job]:
        """The tenant's jobs, newest first."""
        return [record.job for record in self._store.recent(tenant, limit)]

    def cancel(self, tenant: str, job_id: str) -> ingestion_pb2.Job:
        record = self._store.cancel(tenant, job_id)
        if record is None:
            raise NotFoundError(f"job {job_id!r} not found in tenant {tenant!r}")
        return record.job

    def resume(self) -> int:
        """Start every unfinished job whose lease ran out; how many."""
        ids = [i for i in self._store.runnable(self._clock()) if i not in self._tasks]
        for job_id in ids:
            self._spawn(job_id)
        return len(ids)

    async def resume_periodically(self) -> None:
        """Pick up, once per lease, the jobs of replicas that died."""
        while True:
            with contextlib.suppress(Exception):  # the store may be down for a while
                self.resume()
            await asyncio.sleep(self._lease)

    async def close(self) -> None:
        """Stop this replica's jobs; their leases run out and another resumes them."""
        for task in list(self._tasks.values()):
            task.cancel()
        await asyncio.gather(*self._tasks.values(), return_exceptions=True)

    def _spawn(self, job_id: str) -> None:
        task = asyncio.create_task(self._run(job_id))
        self._tasks[job_id] = task
        task.add_done_callback(lambda _: self._tasks.pop(job_id, None))

    async def _run(self, job_id: str) -> None:
        now = self._clock()
        record = await asyncio.to_thread(
            self._store.claim, job_id, self.owner, now + self._lease, now
        )
        if record is None:
            return  # another replica has it, or it ended
        job = record.job
        job.state, job.started_at_unix = Job.STATE_RUNNING, int(now)
        job.attempts += 1
        for field in ("total", "created", "updated", "unchanged", "failed"):
            setattr(job, field, 0)
        del job.failures[:]
        if await asyncio.to_thread(self._store.save, record, self.owner) == Job.STATE_CANCELLED:
            return
        RUNNING.inc()
        ingest = asyncio.create_task(self._ingest(record))
        beat = asyncio.create_task(self._heartbeat(record, ingest))
        try:
            await ingest
            job.state = Job.STATE_SUCCEEDED
        except (_Cancelled, asyncio.CancelledError):
            # Cancelled, taken over, or this replica is closing: the store (or the
            # replica resuming it) has the job's state; nothing more to write.
            return
        except PlatformError as error:
            job.state, job.error = Job.STATE_FAILED, str(error)
        finally:
            beat.cancel()
            ingest.cancel()
            RUNNING.dec()
        job.finished_at_unix = int(self._clock())
        state = await asyncio.to_thread(self._store.save, record, self.owner)
        JOBS.labels(Job.State.Name(state)).inc()
        log.info("import job ended", extra={"job": job.id, "state": Job.State.Name(state)})

    async def _heartbeat(self, record: JobRecord, ingest: asyncio.Task[None]) -> None:
        """Renew the lease while a document takes long; stop the ingestion when
        the job was cancelled or another replica took it over."""
        while True:
            await asyncio.sleep(self._lease / 3)
            record.lease_until = self._clock() + self._lease
            if await asyncio.to_thread(self._store.save, record, self.owner) == Job.STATE_CANCELLED:
                ingest.cancel()
                return

    async def _ingest(self, record: JobRecord) -> None:
        job, saved_at = record.job, self._clock()
        async for event in self._run_request(record.request):
            if event.HasField("plan"):
                job.total = event.plan.document_count
                continue
            _count(job, event.result)
            now = self._clock()
            if now - saved_at >= PROGRESS_SECONDS or now + self._lease / 3 > record.lease_until:
                record.lease_until, saved_at = now + self._lease, now
                state = await asyncio.to_thread(self._store.save, record, self.owner)
                if state == Job.STATE_CANCELLED:
                    raise _Cancelled


class _Cancelled(Exception):
    """The job was cancelled (or taken over) while it ran."""


def _count(job: ingestion_pb2.Job, result: ingestion_pb2.IngestResult) -> None:
    if result.status == Status.STATUS_CREATED:
        job.created += 1
    elif result.status == Status.STATUS_UPDATED:
        job.updated += 1
    elif result.status == Status.STATUS_UNCHANGED:
        job.unchanged += 1
    else:
        job.failed += 1
        if len(job.failures) < MAX_FAILURES:
            job.failures.append(result)
