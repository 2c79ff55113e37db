"""What ragctl's commands share: client settings with the --timeout override,
clients closed after the work, the progress bar of long commands."""

from __future__ import annotations

import argparse
from collections.abc import Awaitable, Callable

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from services.runtime.clients import PlatformClients
from services.runtime.settings import PlatformSettings


def client_settings(
    args: argparse.Namespace, default_timeout: float | None = None
) -> PlatformSettings:
    """RAG_* settings, with --timeout (else `default_timeout`) as every call's deadline."""
    settings = PlatformSettings()
    timeout = args.timeout if args.timeout is not None else default_timeout
    if timeout is not None:
        settings = settings.model_copy(update={"rpc_timeout_seconds": timeout})
    return settings


async def with_clients(
    settings: PlatformSettings, work: Callable[[PlatformClients], Awaitable[int]]
) -> int:
    """Run `work` with clients of the platform, closed afterwards; its exit code."""
    clients = PlatformClients(settings)
    try:
        return await work(clients)
    finally:
        await clients.close()


def progress_bar(console: Console) -> Progress:
    """A bar with the done/total count and the elapsed time, gone when finished."""
    return Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=console,
        transient=True,
    )
