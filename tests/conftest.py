"""The suite cannot pass on tests that did not run: strict mode fails on any skip.

A test skips when something it needs is missing (a tool that `make setup`
installs, the evaluation data in ../shared/eval, a model package), and its
reason names what installs it. A plain `pytest` lists each skip (-rsx in
pyproject) and may still pass. With RAG_TESTS_STRICT=1, which `make test` and
`make test-all` (hence CI) set, a run in which any test or module was skipped
fails, and the summary names each one and why.

An xfail is not a skip: it runs, is listed (-rsx), and is strict (xfail_strict in
pyproject), so a known failure that stops failing fails the run until its marker goes.
"""

import os
from collections.abc import Iterator
from typing import TYPE_CHECKING

import pytest

from tests import emulators

if TYPE_CHECKING:
    from google.cloud import firestore

STRICT_ENV = "RAG_TESTS_STRICT"

pytest_plugins = ["pytester"]  # tests/test_strict_mode.py runs the hook on a tiny suite


class StrictSkips:
    """Collects every skipped test or module; in strict mode they fail the run."""

    def __init__(self, strict: bool) -> None:
        self.strict = strict
        self.skipped: list[tuple[str, str]] = []

    def note(self, report: pytest.CollectReport | pytest.TestReport) -> None:
        if report.skipped and not hasattr(report, "wasxfail"):
            reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else report.longrepr
            self.skipped.append((report.nodeid, str(reason).removeprefix("Skipped: ")))

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        self.note(report)

    def pytest_collectreport(self, report: pytest.CollectReport) -> None:
        self.note(report)

    def pytest_sessionfinish(self, session: pytest.Session) -> None:
        passing = (pytest.ExitCode.OK, pytest.ExitCode.NO_TESTS_COLLECTED)
        if self.strict and self.skipped and session.exitstatus in passing:
            session.exitstatus = pytest.ExitCode.TESTS_FAILED

    def pytest_terminal_summary(self, terminalreporter: pytest.TerminalReporter) -> None:
        if not self.skipped:
            return
        count = len(self.skipped)
        if not self.strict:
            terminalreporter.write_line(
                f"{count} skipped: `make test` ({STRICT_ENV}=1) fails on them",
                yellow=True,
                bold=True,
            )
            return
        terminalreporter.section(f"{STRICT_ENV}=1: {count} skipped, so the run fails", red=True)
        for nodeid, reason in self.skipped:
            terminalreporter.write_line(f"SKIPPED {nodeid} - {reason}", red=True)
        terminalreporter.write_line(
            "Install what each reason names (a plain `pytest` lets skips pass).", red=True
        )


def pytest_configure(config: pytest.Config) -> None:
    strict = os.environ.get(STRICT_ENV) == "1"
    config.pluginmanager.register(StrictSkips(strict), "ragplatform-strict-skips")


# The Firestore emulator (tests/emulators.py): one per session, shared by the
# contract and integration tests; each test's client gets a project of its own.


@pytest.fixture(scope="session")
def firestore_emulator() -> Iterator[str]:
    """The Firestore emulator's ``host:port`` (FIRESTORE_EMULATOR_HOST's value).
    Fails, never skips, when gcloud, its emulator component or java is missing."""
    missing = emulators.firestore_missing()
    if missing:
        pytest.fail(missing, pytrace=False)
    yield emulators.shared_firestore_emulator()


@pytest.fixture
def firestore_client(firestore_emulator: str) -> "Iterator[firestore.Client]":
    """A Firestore client on the emulator, in a project no other test uses."""
    client = emulators.firestore_client(firestore_emulator, emulators.fresh_project())
    yield client
    client.close()  # type: ignore[no-untyped-call]
