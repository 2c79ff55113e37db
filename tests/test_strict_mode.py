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
            f"*{STRICT_ENV}=1: 4 test(s) did not run*",
            "NOT RUN test_module_skip.py - `make setup` installs it",
            "NOT RUN test_others.py::test_needs_a_tool - tool missing: run `make setup`",
            "NOT RUN test_others.py::test_needs_data - data missing: clone ../shared",
            "NOT RUN test_others.py::test_known_bug - xfail: known bug",
        ]
    )


def test_without_strict_mode_skips_pass_loudly(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    result = run(pytester, monkeypatch, strict=False)
    assert result.ret == pytest.ExitCode.OK
    result.stdout.fnmatch_lines(
        ["4 test(s) did not run: `make test`*", "SKIPPED *tool missing: run `make setup`"]
    )
