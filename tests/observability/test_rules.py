"""The Prometheus rules are valid (`promtool check rules`) and every alert is
unit-tested (`promtool test rules` on rules_test.yaml): firing only once its
`for:` has elapsed, and silent just below its threshold."""

import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import yaml

HERE = Path(__file__).resolve().parent
RULES = HERE.parents[1] / "helm" / "ragplatform" / "rules"
UNIT_TESTS = HERE / "rules_test.yaml"


def promtool() -> str:
    path = shutil.which("promtool")
    assert path, "promtool not found: `make setup` installs Debian's prometheus package"
    return path


def rule_files() -> list[Path]:
    files = sorted(RULES.glob("*.yaml"))
    assert files, f"no rule files in {RULES}"
    return files


def test_rules_are_valid() -> None:
    result = subprocess.run(
        [promtool(), "check", "rules", *map(str, rule_files())],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_every_alert_passes_its_unit_tests() -> None:
    result = subprocess.run(
        [promtool(), "test", "rules", str(UNIT_TESTS)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        cwd=HERE,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_every_rule_file_is_loaded() -> None:
    loaded = {(HERE / path).resolve() for path in unit_tests()["rule_files"]}
    assert loaded == {path.resolve() for path in rule_files()}, (
        "rules_test.yaml must load every file"
    )


def test_every_alert_fires_after_its_for_and_stays_silent_below() -> None:
    assert alerts(), "no alert found"
    missing = missing_cases(unit_tests())
    assert missing == [], (
        "rules_test.yaml must show each alert firing (with `for:`: pending just before it"
        " elapses, see shows_firing) and silent (see shows_silent); missing: "
        + ", ".join(f"{name} {case}" for name, case in missing)
    )


def test_the_coverage_check_bites() -> None:
    """Without the ALERTS_FOR_STATE and ALERTS checks, each alert with `for:` lacks
    both its cases; without any test, every alert lacks both."""
    tests = unit_tests()
    for group in tests["tests"]:
        group.pop("promql_expr_test", None)
    waiting = [name for name, rule in alerts().items() if "for" in rule]
    assert waiting, "some alert has a for:"
    assert missing_cases(tests) == [(n, c) for n in waiting for c in ("firing", "silent")]
    everything = [(n, c) for n in alerts() for c in ("firing", "silent")]
    assert missing_cases({**tests, "tests": []}) == everything


# ------------------------------------------------------------------------ helpers


def unit_tests() -> dict[str, Any]:
    tests: dict[str, Any] = yaml.safe_load(UNIT_TESTS.read_text())
    return tests


def alerts() -> dict[str, dict[str, Any]]:
    """Every alerting rule of the rule files, by name."""
    return {
        rule["alert"]: rule
        for path in rule_files()
        for group in yaml.safe_load(path.read_text())["groups"]
        for rule in group["rules"]
        if "alert" in rule
    }


def seconds(duration: str | int) -> int:
    """A Prometheus duration ("1h30m", "90s") in seconds."""
    units = {"d": 86400, "h": 3600, "m": 60, "s": 1}
    parts = re.findall(r"(\d+)([dhms])", str(duration))
    assert "".join(n + u for n, u in parts) == str(duration), f"unsupported duration {duration}"
    return sum(int(n) * units[u] for n, u in parts)


def checks(group: dict[str, Any], alert: str) -> tuple[list[int], list[int]]:
    """The eval times (s) at which `group` expects `alert` firing, and silent."""
    firing, silent = [], []
    for check in group.get("alert_rule_test", []):
        if check["alertname"] == alert:
            (firing if check.get("exp_alerts") else silent).append(seconds(check["eval_time"]))
    return firing, silent


def queried(group: dict[str, Any], expr: str) -> dict[int, list[float]]:
    """eval time (s) -> the values expected of `expr` in the group's promql_expr_test."""
    return {
        seconds(test["eval_time"]): [float(s["value"]) for s in test.get("exp_samples") or []]
        for test in group.get("promql_expr_test", [])
        if test["expr"].replace(" ", "") == expr
    }


def shows_firing(group: dict[str, Any], alert: str, wait: int, step: int) -> bool:
    """Firing in `group`; with `for:` (wait > 0), pending at an eval time less than one
    evaluation before `for:` elapses since ALERTS_FOR_STATE's moment, firing at the
    first evaluation once it has."""
    firing, silent = checks(group, alert)
    if not firing or not wait:
        return bool(firing)
    since = queried(group, f'ALERTS_FOR_STATE{{alertname="{alert}"}}')
    for before in silent:
        active = set(since.get(before, []))
        if len(active) != 1:
            continue
        due = int(active.pop()) + wait
        if due - step <= before < due and any(due <= t < due + step for t in firing):
            return True
    return False


def shows_silent(group: dict[str, Any], alert: str, wait: int, step: int) -> bool:
    """Silent in a group where it never fires; with `for:`, not even pending (no
    ALERTS series) at an eval time by which a pending alert would have fired."""
    firing, silent = checks(group, alert)
    if firing or not silent:
        return False
    if not wait:
        return True
    pending = queried(group, f'ALERTS{{alertname="{alert}"}}')
    return any(t >= wait + step and pending.get(t) == [] for t in silent)


def missing_cases(tests: dict[str, Any]) -> list[tuple[str, str]]:
    """(alert, "firing" or "silent") for each case that rules_test.yaml lacks."""
    step = seconds(tests.get("evaluation_interval", "1m"))
    missing = []
    for name, rule in alerts().items():
        wait = seconds(rule.get("for", "0s"))
        if not any(shows_firing(group, name, wait, step) for group in tests["tests"]):
            missing.append((name, "firing"))
        if not any(shows_silent(group, name, wait, step) for group in tests["tests"]):
            missing.append((name, "silent"))
    return missing
