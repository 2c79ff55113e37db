"""Static reading of the Dockerfiles and of what the images need (no Docker here).

* `parse(path)`: the instructions, stage by stage, continuation lines joined.
* `Build(dockerfile, args)`: one image of a parameterised Dockerfile: its stages with
  the build arguments substituted as the builder does, and the stages it needs.
* `third_party_imports(files)`: the distributions a set of Python files imports,
  split into module-level imports and imports inside functions (lazy ones).
* `closure(requirements)`: installed distributions a requirement list pulls in.
"""

from __future__ import annotations

import ast
import glob
import importlib.metadata as md
import importlib.util
import re
import shlex
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


# ------------------------------------------------------------- build arguments

# The instructions whose arguments the builder expands (RUN's are left to the shell,
# CMD and ENTRYPOINT are never expanded).
EXPANDED = {"ADD", "COPY", "ENV", "EXPOSE", "FROM", "LABEL", "STOPSIGNAL", "USER"}
EXPANDED |= {"VOLUME", "WORKDIR"}
_VARIABLE = re.compile(r"\$(?:\{(\w+)(?::([-+])([^}]*))?\}|(\w+))")


def expand(text: str, variables: dict[str, str]) -> str:
    """$NAME, ${NAME}, ${NAME:-default} and ${NAME:+alternative}, as the builder expands
    them; a variable that is not in `variables` (e.g. the base image's PATH) is kept."""

    def sub(m: re.Match[str]) -> str:
        name = m.group(1) or m.group(4)
        value = variables.get(name, "")
        if m.group(2) == "-":
            return value or m.group(3)
        if m.group(2) == "+":
            return m.group(3) if value else ""
        return value if name in variables else m.group(0)

    return _VARIABLE.sub(sub, text)


def env_pairs(args: str) -> list[tuple[str, str]]:
    """The (name, value) pairs of an ENV instruction (name=value form)."""
    pairs = []
    for word in shlex.split(args, posix=True):
        name, sep, value = word.partition("=")
        assert sep, f"ENV {args}: use the name=value form"
        pairs.append((name, value))
    return pairs


@dataclass
class Build:
    """One image: the Dockerfile built with `args` (--build-arg) for `target` (default:
    the last stage). Stages come back with their FROM and the arguments of the
    instructions in EXPANDED substituted; ARG scoping follows the builder (global ARGs
    for FROM, a stage sees what it declares, ENV values carry into child stages)."""

    dockerfile: Dockerfile
    args: dict[str, str]
    target: str | None = None

    def _globals(self) -> dict[str, str]:
        values: dict[str, str] = {}
        for name, default in self.dockerfile.global_args.items():
            values[name] = self.args.get(name, expand(default, values))
        return {k: v for k, v in values.items() if v or k in self.args}

    def _index(self, name: str | None) -> int:
        name = name or self.target
        if name is None:
            return len(self.dockerfile.stages) - 1
        (i,) = [i for i, s in enumerate(self.dockerfile.stages) if s.name == name]
        return i

    def parent(self, name: str | None = None) -> str | None:
        """The stage a stage is built on (None: an image)."""
        i = self._index(name)
        base = expand(self.dockerfile.stages[i].base, self._globals())
        earlier = [s.name for s in self.dockerfile.stages[:i]]
        return base if base in earlier else None

    def _env(self, name: str | None) -> dict[str, str]:
        parent = self.parent(name)
        return self._resolve(parent)[1] if parent else {}

    def _resolve(self, name: str | None) -> tuple[Stage, dict[str, str]]:
        raw = self.dockerfile.stages[self._index(name)]
        globals_ = self._globals()
        env = self._env(name)
        args: dict[str, str] = {}
        stage = Stage(expand(raw.base, globals_), raw.name)
        for i in raw.instructions:
            scope = {**args, **env}
            text = expand(i.args, scope) if i.keyword in EXPANDED else i.args
            stage.instructions.append(Instruction(i.keyword, text, i.line))
            if i.keyword == "ARG":
                for word in i.args.split():
                    arg, sep, default = word.partition("=")
                    if arg in self.args:
                        args[arg] = self.args[arg]
                    elif sep:
                        args[arg] = expand(default, scope)
                    elif arg in globals_:
                        args[arg] = globals_[arg]
            elif i.keyword == "ENV":
                env.update(env_pairs(text))
        return stage, env

    def stage(self, name: str | None = None) -> Stage:
        return self._resolve(name)[0]

    def chain(self, name: str | None = None) -> list[Stage]:
        """A stage and the stages it is built on, the first built first."""
        stages = [self.stage(name)]
        while (parent := self.parent(stages[0].name)) is not None:
            stages.insert(0, self.stage(parent))
        return stages

    def instructions(self, name: str | None = None) -> list[Instruction]:
        """Everything that went into a stage's filesystem and configuration."""
        return [i for s in self.chain(name) for i in s.instructions]

    def env(self, name: str | None = None) -> dict[str, str]:
        return self._resolve(name)[1]

    def needed(self, name: str | None = None) -> list[str]:
        """The stages the build of a stage runs (BuildKit skips the others)."""
        todo, seen = [name or self.stage().name], []
        while todo:
            current = todo.pop()
            if current is None or current in seen:
                continue
            seen.append(current)
            todo.append(self.parent(current))
            for i in self.stage(current).all("COPY"):
                if i.args.startswith("--from="):
                    todo.append(i.args.split()[0].removeprefix("--from="))
        return seen


def context_sources(stage: Stage) -> list[str]:
    """The build-context paths a stage COPYs, as written (wildcards kept)."""
    sources = []
    for i in stage.all("COPY"):
        if not i.args.startswith("--from="):
            sources.extend(i.args.split()[:-1])
    return sources


def matches(source: str, root: Path) -> list[Path]:
    """The files a COPY source names in the build context `root` (wildcards matched)."""
    if glob.has_magic(source):
        return sorted(root.glob(source))
    return [root / source] if (root / source).exists() else []


def pip_installs(run: str) -> tuple[list[str], list[str]]:
    """(packages named, requirement files given with -r) of the pip installs of a RUN."""
    packages: list[str] = []
    files: list[str] = []
    with_value = {"-c", "--constraint", "-r", "--requirement", "--index-url", "-i"}
    with_value |= {"--extra-index-url", "-f", "--find-links"}
    for command in re.split(r"&&|;|\|\|", run):
        words = shlex.split(command)
        if "install" not in words or not any(w.endswith("pip") for w in words):
            continue
        words = words[words.index("install") + 1 :]
        while words:
            word = words.pop(0)
            if word in with_value:
                value = words.pop(0)
                if word in ("-r", "--requirement"):
                    files.append(value)
            elif not word.startswith("-"):
                m = re.match(r"[A-Za-z0-9._-]+", word)
                assert m, word
                packages.append(m.group(0))
    return packages, files


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
