"""`ragctl import` and `ragctl jobs`: durable imports (IngestionService.StartImport).

    ragctl import PATH|gs://... [--follow]   start a job (and watch it to the end)
    ragctl jobs list                         the tenant's jobs, newest first
    ragctl jobs show ID                      one job, with its failed documents
    ragctl jobs cancel ID                    stop it between documents

Unlike `ragctl ingest`, an import goes on when ragctl stops, and after a
restart of the ingestion service; `--follow` shows its progress from the job
itself, so it can be followed again from anywhere with `jobs show`.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from collections.abc import Callable, Sequence

from google.protobuf.json_format import MessageToDict
from rich.console import Console
from rich.table import Table
from rich.text import Text

from ragplatform.v1 import ingestion_pb2
from services.cli.common import client_settings, progress_bar, with_clients
from services.common.tenancy import DEFAULT_TENANT
from services.runtime.clients import PlatformClients

Job = ingestion_pb2.Job
POLL_SECONDS = 0.5


def add_commands(
    commands: argparse._SubParsersAction[argparse.ArgumentParser],
    common: argparse.ArgumentParser,
    to_uri: Callable[[str], str],
) -> None:
    """Register `import` and `jobs` on ragctl's command parser."""
    start = commands.add_parser(
        "import", parents=[common], help="import files or gs:// objects as a durable job"
    )
    start.add_argument("paths", nargs="+", metavar="PATH", help="file, directory or gs:// URI")
    start.add_argument("--tag", dest="tags", action="append", default=[], metavar="TAG")
    start.add_argument(
        "--access-label", dest="access_labels", action="append", default=[], metavar="LABEL"
    )
    start.add_argument("--follow", action="store_true", help="show its progress to the end")
    start.add_argument("--json", action="store_true", help="print the job as JSON")
    start.set_defaults(
        handler=cmd_import, service="ingestion", tenant_fallback=DEFAULT_TENANT, to_uri=to_uri
    )

    jobs = commands.add_parser("jobs", parents=[common], help="list, show or cancel imports")
    actions = jobs.add_subparsers(dest="jobs_command", required=True, metavar="ACTION")
    listing = actions.add_parser("list", parents=[common], help="the tenant's jobs")
    listing.add_argument("--json", action="store_true")
    show = actions.add_parser("show", parents=[common], help="one job")
    show.add_argument("job_id", metavar="ID")
    show.add_argument("--json", action="store_true")
    cancel = actions.add_parser("cancel", parents=[common], help="stop a job")
    cancel.add_argument("job_id", metavar="ID")
    cancel.add_argument("--json", action="store_true")
    for parser in (listing, show, cancel):
        parser.set_defaults(handler=cmd_jobs, service="ingestion", tenant_fallback=DEFAULT_TENANT)


def cmd_import(args: argparse.Namespace, out: Console, err: Console) -> int:
    """StartImport; with --follow, exit 1 unless the job succeeds with no failure."""
    request = ingestion_pb2.IngestUrisRequest(
        uris=[args.to_uri(p) for p in args.paths],
        tenant=args.tenant,
        access_labels=args.access_labels,
        tags=args.tags,
    )

    async def work(clients: PlatformClients) -> int:
        reply = await clients.ingestion.StartImport(
            ingestion_pb2.StartImportRequest(request=request)
        )
        job = reply.job
        if args.follow:
            job = await follow(clients, job, out if not args.json else None)
        _print(job, args.json, out)
        return 0 if not args.follow or (job.state == Job.STATE_SUCCEEDED and not job.failed) else 1

    return asyncio.run(with_clients(client_settings(args), work))


async def follow(clients: PlatformClients, job: ingestion_pb2.Job, out: Console | None) -> Job:
    """Poll the job until it ends, with a progress bar on `out`."""
    bar = progress_bar(out) if out is not None else None
    task = bar.add_task(f"job {job.id}", total=None) if bar is not None else None
    if bar is not None:
        bar.start()
    try:
        while job.state not in (Job.STATE_SUCCEEDED, Job.STATE_FAILED, Job.STATE_CANCELLED):
            await asyncio.sleep(POLL_SECONDS)
            reply = await clients.ingestion.GetJob(
                ingestion_pb2.GetJobRequest(job_id=job.id, tenant=job.tenant)
            )
            job = reply.job
            if bar is not None and task is not None:
                done = job.created + job.updated + job.unchanged + job.failed
                bar.update(task, completed=done, total=job.total or None)
    finally:
        if bar is not None:
            bar.stop()
    return job


def cmd_jobs(args: argparse.Namespace, out: Console, err: Console) -> int:
    """jobs list|show|cancel."""

    async def work(clients: PlatformClients) -> int:
        stub = clients.ingestion
        if args.jobs_command == "list":
            listing = await stub.ListJobs(ingestion_pb2.ListJobsRequest(tenant=args.tenant))
            if args.json:
                sys.stdout.write(json.dumps([_dict(j) for j in listing.jobs]) + "\n")
            else:
                out.print(jobs_table(listing.jobs))
            return 0
        if args.jobs_command == "show":
            reply = await stub.GetJob(
                ingestion_pb2.GetJobRequest(job_id=args.job_id, tenant=args.tenant)
            )
            _print(reply.job, args.json, out)
            return 0
        cancelled = await stub.CancelJob(
            ingestion_pb2.CancelJobRequest(job_id=args.job_id, tenant=args.tenant)
        )
        _print(cancelled.job, args.json, out)
        return 0

    return asyncio.run(with_clients(client_settings(args), work))


def _dict(job: ingestion_pb2.Job) -> dict[str, object]:
    return MessageToDict(
        job, preserving_proto_field_name=True, always_print_fields_with_no_presence=True
    )


def _print(job: ingestion_pb2.Job, as_json: bool, out: Console) -> None:
    if as_json:
        sys.stdout.write(json.dumps(_dict(job)) + "\n")
        return
    out.print(
        Text(
            f"job {job.id}: {Job.State.Name(job.state).removeprefix('STATE_').lower()}, "
            f"{job.total} documents: {job.created} created, {job.updated} updated, "
            f"{job.unchanged} unchanged, {job.failed} failed"
            + (f" ({job.error})" if job.error else "")
        )
    )
    for failure in job.failures:
        out.print(Text(f"  failed: {failure.source_uri}: {failure.error_code}: {failure.message}"))


def jobs_table(jobs: Sequence[ingestion_pb2.Job]) -> Table:
    table = Table("job", "state", "documents", "created", "updated", "unchanged", "failed")
    for job in jobs:
        table.add_row(
            job.id,
            Job.State.Name(job.state).removeprefix("STATE_").lower(),
            str(job.total),
            str(job.created),
            str(job.updated),
            str(job.unchanged),
            str(job.failed),
        )
    return table
