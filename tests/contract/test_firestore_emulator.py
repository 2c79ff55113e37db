"""The Firestore emulator fixtures (tests/emulators.py, tests/conftest.py): a
real emulator, documents written and read through google-cloud-firestore."""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

import httpx
from google.cloud import firestore

from tests import emulators


def test_write_then_read_a_document(firestore_client: firestore.Client) -> None:
    document = firestore_client.collection("documents").document("handbook")
    document.set({"title": "Employee handbook", "chunks": 3})
    assert document.get().to_dict() == {"title": "Employee handbook", "chunks": 3}


def test_projects_are_apart_and_a_wipe_empties_one(firestore_emulator: str) -> None:
    first, second = emulators.fresh_project(), emulators.fresh_project()
    one = emulators.firestore_client(firestore_emulator, first)
    other = emulators.firestore_client(firestore_emulator, second)
    one.collection("documents").document("a").set({"n": 1})
    other.collection("documents").document("b").set({"n": 2})
    assert [d.id for d in one.collection("documents").stream()] == ["a"]
    emulators.wipe_firestore(firestore_emulator, first)
    assert list(one.collection("documents").stream()) == []
    assert [d.id for d in other.collection("documents").stream()] == ["b"]


def test_the_emulator_leaves_no_process_behind() -> None:
    seen: list[int] = []
    with emulators.firestore_emulator() as host:
        assert httpx.get(f"http://{host}/").text.strip() == "Ok"
        # The processes started for our port: gcloud, its script, Java.
        port = host.rsplit(":", 1)[1]
        for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
            with contextlib.suppress(OSError):
                words = cmdline.read_bytes().decode(errors="replace").split("\0")
                if f"--host-port={host}" in words or f"--port={port}" in words:
                    seen.append(os.getpgid(int(cmdline.parent.name)))
    assert seen, "no emulator process found"
    assert not any(emulators.group_alive(group) for group in set(seen))
