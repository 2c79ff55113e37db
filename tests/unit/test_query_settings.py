"""RAG_QUERY_SEARCH_AHEAD: auto, on or off (booleans read as on/off); auto
runs the keyword leg ahead only where the process has plenty of CPUs."""

import pytest
from pydantic import ValidationError

from services.query.__main__ import AUTO_AHEAD_MIN_CPUS, QuerySettings
from services.runtime import settings as runtime_settings


@pytest.mark.parametrize(
    ("value", "read_as"),
    [
        ("auto", "auto"),
        ("on", "on"),
        ("off", "off"),
        ("true", "on"),
        ("False", "off"),
        ("1", "on"),
        ("0", "off"),
    ],
)
def test_search_ahead_values(monkeypatch: pytest.MonkeyPatch, value: str, read_as: str) -> None:
    monkeypatch.setenv("RAG_QUERY_SEARCH_AHEAD", value)
    assert QuerySettings().query_search_ahead == read_as


def test_an_unknown_search_ahead_value_is_refused_by_name(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RAG_QUERY_SEARCH_AHEAD", "sometimes")
    with pytest.raises(ValidationError, match="query_search_ahead"):
        QuerySettings()


@pytest.mark.parametrize(
    ("cpus", "ahead"), [(2, False), (AUTO_AHEAD_MIN_CPUS - 1, False), (AUTO_AHEAD_MIN_CPUS, True)]
)
def test_auto_follows_the_cpus_the_process_may_use(
    monkeypatch: pytest.MonkeyPatch, cpus: int, ahead: bool
) -> None:
    monkeypatch.delenv("RAG_QUERY_SEARCH_AHEAD", raising=False)
    monkeypatch.setattr(runtime_settings.os, "sched_getaffinity", lambda pid: set(range(cpus)))
    assert QuerySettings().search_ahead() is ahead


@pytest.mark.parametrize(("value", "ahead"), [("on", True), ("off", False)])
def test_on_and_off_ignore_the_cpus(
    monkeypatch: pytest.MonkeyPatch, value: str, ahead: bool
) -> None:
    monkeypatch.setenv("RAG_QUERY_SEARCH_AHEAD", value)
    monkeypatch.setattr(
        runtime_settings.os, "sched_getaffinity", lambda pid: set(range(64 if not ahead else 1))
    )
    assert QuerySettings().search_ahead() is ahead


def test_without_an_affinity_the_machines_cpus_count(monkeypatch: pytest.MonkeyPatch) -> None:
    """macOS has no sched_getaffinity: auto then counts the machine's CPUs."""
    monkeypatch.delattr(runtime_settings.os, "sched_getaffinity")
    monkeypatch.setattr(runtime_settings.os, "cpu_count", lambda: AUTO_AHEAD_MIN_CPUS)
    monkeypatch.delenv("RAG_QUERY_SEARCH_AHEAD", raising=False)
    assert QuerySettings().search_ahead() is True
