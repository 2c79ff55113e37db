"""tests/conftest.py's strict mode, on a tiny suite run in-process by pytester."""

import pytest

from tests.conftest import STRICT_ENV

SUITE = """
import pytest

pytest.importorskip("no_such_module_here", reason="`make setup` installs it")
"""
OTHER = """
import pytest

def test_runs():
    pass

@pytest.mark.skipif(True, reason="tool missing: run `make setup`")
def test_needs_a_tool():
    pass

def test_needs_data():
    pytest.skip("data missing: clone ../shared")

@pytest.mark.xfail(reason="known bug")
def test_known_bug():
    assert False
"""


def run(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch, strict: bool
) -> pytest.RunResult:
    pytester.makeconftest('pytest_plugins = ["tests.conftest"]')
    pytester.makepyfile(test_module_skip=SUITE, test_others=OTHER)
    if strict:
        monkeypatch.setenv(STRICT_ENV, "1")
    else:
        monkeypatch.delenv(STRICT_ENV, raising=False)
    return pytester.runpytest_inprocess("-p", "no:cacheprovider", "-p", "no:asyncio", "-rs")


def test_strict_mode_fails_on_every_skip_and_names_it(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    result = run(pytester, monkeypatch, strict=True)
    assert result.ret == pytest.ExitCode.TESTS_FAILED
    result.assert_outcomes(passed=1, skipped=3, xfailed=1)
    result.stdout.fnmatch_lines(
        [
            f"*{STRICT_ENV}=1: 3 skipped, so the run fails*",
            "SKIPPED test_module_skip.py - `make setup` installs it",
            "SKIPPED test_others.py::test_needs_a_tool - tool missing: run `make setup`",
            "SKIPPED test_others.py::test_needs_data - data missing: clone ../shared",
        ]
    )
    assert "test_known_bug -" not in result.stdout.str()  # an xfail is no skip


def test_without_strict_mode_skips_pass_loudly(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    result = run(pytester, monkeypatch, strict=False)
    assert result.ret == pytest.ExitCode.OK
    result.stdout.fnmatch_lines(
        ["3 skipped: `make test`*", "SKIPPED *tool missing: run `make setup`"]
    )


def test_an_xfail_that_passes_fails_the_run(pytestconfig: pytest.Config) -> None:
    """A known failure that stops failing is reported (xfail_strict in pyproject)."""
    assert pytestconfig.getini("xfail_strict") is True
