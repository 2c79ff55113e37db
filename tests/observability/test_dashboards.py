"""The Grafana dashboards type-check against @grafana/schema with tsc.

Each dashboard JSON is written into a TypeScript module as an object literal
declared `Dashboard`, so that tsc checks every field's type and rejects unknown
fields (excess property checks apply to literals). The schema types a few fields
as TypeScript string enums (`thresholds.mode` is `ThresholdsMode`), which no JSON
string can satisfy; those values are written as the enum member that carries
them (`"absolute"` becomes `ThresholdsMode.Absolute`), and a value that is no
member stays a string, so tsc still rejects it. The last tests show that the
check bites.
"""

import json
import re
import subprocess
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[2]
DASHBOARDS = REPO / "helm" / "ragplatform" / "dashboards"
TOOLS = REPO / "tools" / "node_modules"
TSC = TOOLS / ".bin" / "tsc"

REQUIRED = {"service-overview.json", "rag-quality-cost.json", "ingestion.json"}
ENUM_FIELDS = {("thresholds", "mode"): "ThresholdsMode", ("color", "mode"): "FieldColorModeId"}
"""(parent key, key) of fields typed as a string enum → the enum's name."""

pytestmark = pytest.mark.skipif(
    not TSC.exists(), reason="tools/node_modules missing: run `make setup` (npm install)"
)


def load_dashboards() -> dict[str, dict[str, Any]]:
    return {path.name: json.loads(path.read_text()) for path in sorted(DASHBOARDS.glob("*.json"))}


def string_enums() -> dict[str, dict[str, str]]:
    """Each string enum of the schema: value → member name, read from its .d.ts."""
    source = (TOOLS / "@grafana/schema/dist/types/raw/dashboard/x/types.gen.d.ts").read_text()
    enums: dict[str, dict[str, str]] = {}
    for name, body in re.findall(r"export declare enum (\w+) \{([^}]*)\}", source):
        members = dict((value, member) for member, value in re.findall(r'(\w+) = "([^"]*)"', body))
        if members:
            enums[name] = members
    return enums


def to_typescript(value: Any, enums: dict[str, dict[str, str]], parent: str = "") -> str:
    """`value` as a TypeScript literal, enum-typed fields as enum members."""
    if isinstance(value, dict):
        items = []
        for key, item in value.items():
            enum = ENUM_FIELDS.get((parent, key))
            if enum and isinstance(item, str) and item in enums[enum]:
                text = f"{enum}.{enums[enum][item]}"
            else:
                text = to_typescript(item, enums, key)
            items.append(f"{json.dumps(key)}: {text}")
        return "{" + ", ".join(items) + "}"
    if isinstance(value, list):
        return "[" + ", ".join(to_typescript(item, enums, parent) for item in value) + "]"
    return json.dumps(value)


def typecheck(
    dashboards: dict[str, dict[str, Any]], workdir: Path
) -> subprocess.CompletedProcess[str]:
    """tsc --noEmit on a module declaring each dashboard as a @grafana/schema Dashboard."""
    enums = string_enums()
    names = ", ".join(sorted(set(ENUM_FIELDS.values())))
    lines = [
        'import type { Dashboard } from "@grafana/schema";',
        f'import {{ {names} }} from "@grafana/schema";',
        "",
    ]
    for index, (name, dashboard) in enumerate(dashboards.items()):
        lines.append(f"// {name}")
        lines.append(
            f"export const dashboard{index}: Dashboard = {to_typescript(dashboard, enums)};"
        )
    (workdir / "dashboards.ts").write_text("\n".join(lines) + "\n")
    config = {
        "compilerOptions": {
            "strict": True,
            "noEmit": True,
            "target": "es2022",
            "module": "esnext",
            "moduleResolution": "bundler",
            "baseUrl": ".",
            "paths": {"@grafana/schema": [str(TOOLS / "@grafana" / "schema")]},
            "types": [],
        },
        "files": ["dashboards.ts"],
    }
    (workdir / "tsconfig.json").write_text(json.dumps(config))
    return subprocess.run(
        [str(TSC), "--project", str(workdir / "tsconfig.json")],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_every_dashboard_type_checks(tmp_path: Path) -> None:
    dashboards = load_dashboards()
    assert set(dashboards) >= REQUIRED, f"missing dashboards: {REQUIRED - set(dashboards)}"
    result = typecheck(dashboards, tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr


def overview_with(change: Any) -> dict[str, dict[str, Any]]:
    overview = load_dashboards()["service-overview.json"]
    change(overview, next(p for p in overview["panels"] if p["type"] != "row"))
    return {"service-overview.json": overview}


def test_a_wrong_field_type_fails(tmp_path: Path) -> None:
    def change(_: dict[str, Any], panel: dict[str, Any]) -> None:
        panel["gridPos"]["h"] = "eight"  # a number in the schema

    result = typecheck(overview_with(change), tmp_path)
    assert result.returncode != 0
    assert "Type 'string' is not assignable to type 'number'" in result.stdout, result.stdout


def test_an_unknown_field_fails(tmp_path: Path) -> None:
    def change(dashboard: dict[str, Any], _: dict[str, Any]) -> None:
        dashboard["refreshEvery"] = "30s"

    result = typecheck(overview_with(change), tmp_path)
    assert result.returncode != 0
    assert "refreshEvery" in result.stdout, result.stdout


def test_a_value_outside_a_string_enum_fails(tmp_path: Path) -> None:
    def change(_: dict[str, Any], panel: dict[str, Any]) -> None:
        panel["fieldConfig"]["defaults"]["thresholds"] = {"mode": "relative", "steps": []}

    result = typecheck(overview_with(change), tmp_path)
    assert result.returncode != 0
    assert "ThresholdsMode" in result.stdout, result.stdout
