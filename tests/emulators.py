"""Google's local emulators as test fixtures: the Firestore emulator.

``gcloud emulators firestore start --host-port=127.0.0.1:PORT`` (the Debian
package google-cloud-cli-firestore-emulator, a Java 17+ program started by a
shell script started by gcloud) runs in its own process group on a free
loopback port; :func:`firestore_emulator` waits until ``http://host:port/``
answers ``Ok`` (about 3.5 s) and, at exit, ends the whole group, Java
included: nothing is left running.

Clients: :func:`firestore_client` binds a ``google.cloud.firestore.Client`` to
the emulator (``FIRESTORE_EMULATOR_HOST``, which the client reads once, when it
is built: it then speaks plain gRPC with AnonymousCredentials). Code under test
that builds its own client needs ``FIRESTORE_EMULATOR_HOST`` in its
environment (``monkeypatch.setenv`` in process, ``env=`` for a subprocess).

Isolation: every test gets a project id of its own (:func:`fresh_project`);
the emulator keeps each project's documents apart. That is free (no request),
cannot race with writes another test left in flight, and leaves a failed
test's documents to look at. :func:`wipe_firestore` (the emulator's ``DELETE
/emulator/v1/projects/{project}/databases/(default)/documents``) empties one
project, for code configured with a fixed project id.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import random
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import IO, TYPE_CHECKING
from unittest import mock

import httpx

if TYPE_CHECKING:
    from google.cloud import firestore

FIRESTORE_START_TIMEOUT_SECONDS = 60.0
STOP_TIMEOUT_SECONDS = 10.0
INSTALL_HINT = (
    "the Firestore emulator needs `gcloud` with the component cloud-firestore-emulator "
    "(Debian package google-cloud-cli-firestore-emulator, from Google's apt repository "
    "https://packages.cloud.google.com/apt) and a Java 17+ runtime (openjdk-17-jre-headless)"
)


class EmulatorError(RuntimeError):
    """An emulator is missing or did not start."""


def firestore_missing() -> str | None:
    """What is missing to run the Firestore emulator, or None."""
    gcloud = shutil.which("gcloud")
    if gcloud is None:
        return f"gcloud not found: {INSTALL_HINT}"
    if shutil.which("java") is None:
        return f"java not found: {INSTALL_HINT}"
    sdk = Path(gcloud).resolve().parent.parent
    if not (sdk / "platform" / "cloud-firestore-emulator").is_dir():
        return f"{sdk}/platform/cloud-firestore-emulator not found: {INSTALL_HINT}"
    return None


def free_port(host: str = "127.0.0.1") -> int:
    """A free port in 20000-31999, with the next 2000 ports free at its +1000 and
    +2000 (the metrics and health ports of a platform process on it). Below the
    kernel's ephemeral range and the integration tests' fixed 5xxxx ports, so an
    emulator or a test platform on it never takes a port another test needs."""
    rng = random.Random()
    while True:
        port = rng.randrange(20000, 30000)
        try:
            for candidate in (port, port + 1000, port + 2000):
                with socket.socket() as probe:
                    probe.bind((host, candidate))
        except OSError:
            continue
        return port


@contextlib.contextmanager
def firestore_emulator(
    host: str = "127.0.0.1", timeout: float = FIRESTORE_START_TIMEOUT_SECONDS
) -> Iterator[str]:
    """Run the Firestore emulator until the block exits; yields its ``host:port``."""
    missing = firestore_missing()
    if missing:
        raise EmulatorError(missing)
    gcloud = shutil.which("gcloud")
    assert gcloud is not None
    address = f"{host}:{free_port(host)}"
    with tempfile.TemporaryFile() as log:
        process = subprocess.Popen(
            [gcloud, "emulators", "firestore", "start", f"--host-port={address}", "--quiet"],
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own process group: stop() ends Java too
        )
        try:
            _wait_until_ok(process, f"http://{address}/", timeout, log)
            yield address
        finally:
            stop_group(process)


def _wait_until_ok(
    process: subprocess.Popen[bytes], url: str, timeout: float, log: IO[bytes]
) -> None:
    deadline = time.monotonic() + timeout
    while True:
        if process.poll() is not None:
            raise EmulatorError(
                f"the Firestore emulator exited ({process.returncode}):\n{_tail(log)}"
            )
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(url, timeout=1.0).text.strip() == "Ok":
                return
        if time.monotonic() > deadline:
            raise EmulatorError(
                f"the Firestore emulator did not answer {url} in {timeout:.0f} s:\n{_tail(log)}"
            )
        time.sleep(0.1)


def _tail(log: IO[bytes], size: int = 4000) -> str:
    log.seek(0)
    return log.read().decode(errors="replace")[-size:]


def stop_group(process: subprocess.Popen[bytes]) -> None:
    """End `process`'s whole process group (SIGTERM, then SIGKILL) and wait until
    none of its processes is alive."""
    group = process.pid  # start_new_session: the leader's pid is the group id
    for sig, grace in (
        (signal.SIGTERM, STOP_TIMEOUT_SECONDS),
        (signal.SIGKILL, STOP_TIMEOUT_SECONDS),
    ):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(group, sig)
        deadline = time.monotonic() + grace
        while time.monotonic() < deadline:
            process.poll()  # reap the leader
            if not group_alive(group):
                return
            time.sleep(0.05)
    raise EmulatorError(f"process group {group} survived SIGKILL")


def group_alive(group: int) -> bool:
    """Whether a process of `group` is alive (zombies, which only wait to be
    reaped, are not)."""
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            text = stat.read_text()
        except OSError:
            continue  # gone meanwhile
        fields = text[text.rindex(")") + 2 :].split()  # after "pid (comm) "
        if int(fields[2]) == group and fields[0] != "Z":
            return True
    return False


def fresh_project() -> str:
    """A project id no other test uses."""
    return f"test-{uuid.uuid4().hex[:12]}"


def firestore_client(host: str, project: str) -> firestore.Client:
    """A Firestore client bound to the emulator at `host` (``host:port``)."""
    from google.auth.credentials import AnonymousCredentials
    from google.cloud import firestore

    with mock.patch.dict(os.environ, {"FIRESTORE_EMULATOR_HOST": host}):
        return firestore.Client(
            project=project,
            credentials=AnonymousCredentials(),  # type: ignore[no-untyped-call]
        )


def wipe_firestore(host: str, project: str) -> None:
    """Delete every document of `project`'s default database in the emulator."""
    url = f"http://{host}/emulator/v1/projects/{project}/databases/(default)/documents"
    httpx.delete(url, timeout=10.0).raise_for_status()


_SHARED: dict[str, str] = {}
_SHARED_STACK = contextlib.ExitStack()


def shared_firestore_emulator() -> str:
    """The ``host:port`` of one Firestore emulator per test process, started on
    first use and stopped when the process exits: the session fixture and the
    `VectorStore` contract's factories (plain functions, not fixtures) share it."""
    if "host" not in _SHARED:
        _SHARED["host"] = _SHARED_STACK.enter_context(firestore_emulator())
        atexit.register(_SHARED_STACK.close)
    return _SHARED["host"]
