"""Static reading of the Dockerfiles and of what the images need (no Docker here).

* `parse(path)`: the instructions, stage by stage, continuation lines joined.
* `third_party_imports(files)`: the distributions a set of Python files imports,
  split into module-level imports and imports inside functions (lazy ones).
* `closure(requirements)`: installed distributions a requirement list pulls in.
"""

from __future__ import annotations

import ast
import importlib.metadata as md
import importlib.util
import re
import sys
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

FIRST_PARTY = {"services", "ragplatform"}


@dataclass
class Instruction:
    keyword: str
    args: str
    line: int


@dataclass
class Stage:
    base: str
    name: str | None
    instructions: list[Instruction] = field(default_factory=list)

    def all(self, keyword: str) -> list[Instruction]:
        return [i for i in self.instructions if i.keyword == keyword]


@dataclass
class Dockerfile:
    path: Path
    global_args: dict[str, str]
    stages: list[Stage]

    def stage(self, name: str) -> Stage:
        (found,) = [s for s in self.stages if s.name == name]
        return found


def parse(path: Path) -> Dockerfile:
    logical: list[tuple[int, str]] = []
    pending, start = "", 0
    for number, raw in enumerate(path.read_text().splitlines(), 1):
        stripped = raw.strip()
        if not pending and (not stripped or stripped.startswith("#")):
            continue
        if pending and stripped.startswith("#"):
            continue
        if not pending:
            start = number
        if stripped.endswith("\\"):
            pending += stripped[:-1] + " "
            continue
        logical.append((start, pending + stripped))
        pending = ""
    global_args: dict[str, str] = {}
    stages: list[Stage] = []
    for number, text in logical:
        keyword, _, args = text.partition(" ")
        keyword = keyword.upper()
        args = args.strip()
        if keyword == "FROM":
            m = re.match(r"(\S+)(?:\s+AS\s+(\S+))?$", args, re.IGNORECASE)
            assert m, f"{path}:{number}: unreadable FROM"
            stages.append(Stage(m.group(1), m.group(2)))
        elif not stages:
            assert keyword == "ARG", f"{path}:{number}: only ARG may precede FROM"
            name, _, default = args.partition("=")
            global_args[name] = default
        else:
            stages[-1].instructions.append(Instruction(keyword, args, number))
    return Dockerfile(path, global_args, stages)


# ------------------------------------------------------------------- imports


def _imports_in(tree: ast.AST) -> list[tuple[str, bool]]:
    """(module, module_level) for every absolute import; TYPE_CHECKING blocks skipped."""
    found: list[tuple[str, bool]] = []

    def visit(node: ast.AST, top: bool) -> None:
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            return
        if isinstance(node, ast.Import):
            found.extend((a.name, top) for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            # "from pkg import name": name may be a submodule (namespace packages).
            found.extend((f"{node.module}.{a.name}", top) for a in node.names)
        inner = top and not isinstance(
            node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef | ast.Lambda
        )
        for child in ast.iter_child_nodes(node):
            visit(child, inner)

    visit(tree, True)
    return found


@cache
def _distribution_of(module: str) -> str | None:
    """The installed distribution providing `module` (None: stdlib or first-party)."""
    top = module.split(".")[0]
    if top in sys.stdlib_module_names or top in FIRST_PARTY or top == "__future__":
        return None
    candidates = sorted(set(md.packages_distributions().get(top, [])))
    if len(candidates) == 1:
        return canonicalize_name(candidates[0])
    # A namespace package (google, opentelemetry): the distribution whose files hold
    # the deepest importable part of the dotted name.
    parts = module.split(".")
    for depth in range(len(parts), 1, -1):
        prefix = "/".join(parts[:depth])
        for dist in candidates:
            files = md.files(dist) or []
            if any(str(f).startswith(prefix + "/") or str(f) == prefix + ".py" for f in files):
                return canonicalize_name(dist)
    if importlib.util.find_spec(top) is None:
        raise LookupError(f"{module} is not installed in the project's environment")
    raise LookupError(f"cannot tell which distribution provides {module}: {candidates}")


def third_party_imports(files: list[Path]) -> tuple[dict[str, set[str]], dict[str, set[str]]]:
    """({distribution: files} imported at module level, {distribution: files} lazily)."""
    eager: dict[str, set[str]] = {}
    lazy: dict[str, set[str]] = {}
    for f in files:
        for module, top in _imports_in(ast.parse(f.read_text(), str(f))):
            dist = _distribution_of(module)
            if dist is not None:
                (eager if top else lazy).setdefault(dist, set()).add(f.name)
    return eager, lazy


# --------------------------------------------------------------- requirements


def requirement_lines(path: Path) -> list[Requirement]:
    reqs = []
    for raw in path.read_text().splitlines():
        line = raw.split("#", 1)[0].strip()
        if line:
            reqs.append(Requirement(line))
    return reqs


def closure(names: set[str]) -> set[str]:
    """The distributions installing `names` brings in (per the installed metadata)."""
    seen: set[str] = set()
    todo = [canonicalize_name(n) for n in names]
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        try:
            requires = md.requires(name) or []
        except md.PackageNotFoundError:
            continue
        for spec in requires:
            req = Requirement(spec)
            if req.marker is None or req.marker.evaluate({"extra": ""}):
                todo.append(canonicalize_name(req.name))
    return seen
