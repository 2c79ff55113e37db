"""The Prometheus rules are valid (`promtool check rules`) and every alert is
unit-tested (`promtool test rules` on rules_test.yaml) firing and silent."""

import shutil
import subprocess
from pathlib import Path

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


def test_every_alert_and_rule_file_is_covered() -> None:
    tests = yaml.safe_load(UNIT_TESTS.read_text())
    loaded = {(HERE / path).resolve() for path in tests["rule_files"]}
    assert loaded == {path.resolve() for path in rule_files()}, (
        "rules_test.yaml must load every file"
    )
    alerts = {
        rule["alert"]
        for path in rule_files()
        for group in yaml.safe_load(path.read_text())["groups"]
        for rule in group["rules"]
        if "alert" in rule
    }
    firing = {
        check["alertname"]
        for test in tests["tests"]
        for check in test.get("alert_rule_test", [])
        if check.get("exp_alerts")
    }
    silent = {
        check["alertname"]
        for test in tests["tests"]
        for check in test.get("alert_rule_test", [])
        if not check.get("exp_alerts")
    }
    assert alerts - firing == set(), f"alerts never shown firing: {sorted(alerts - firing)}"
    assert alerts - silent == set(), f"alerts never shown silent: {sorted(alerts - silent)}"
