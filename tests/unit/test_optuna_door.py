"""Optuna's private names are reached only through studies/_optuna/, and each one it lists still exists."""

from __future__ import annotations

import ast
import importlib
import inspect
import re
from functools import cache
from pathlib import Path

import optuna

import studies._optuna

ROOT = Path(__file__).resolve().parents[2]
SCANNED = ("studies", "service", "worker", "tunefleet", "bench", "tests")
DOOR = ROOT / "studies" / "_optuna"
# A trial's and a study's id and a study's storage have no public spelling; the door's docstring says so.
TOLERATED = frozenset({"_trial_id", "_study_id", "_storage"})
ACCESSORS = frozenset({"getattr", "setattr", "hasattr", "delattr"})


def is_private(name: str) -> bool:
    return name.startswith("_") and not (name.startswith("__") and name.endswith("__"))


def defined_private_names(tree: ast.AST) -> set[str]:
    """Private functions, methods, classes, module names and `self._x` attributes a module defines."""
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
            names.add(node.name)
        elif isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store):
            names.add(node.id)
        elif (
            isinstance(node, ast.Attribute)
            and isinstance(node.ctx, ast.Store)
            and isinstance(node.value, ast.Name)
            and node.value.id == "self"
        ):
            names.add(node.attr)
    return {name for name in names if is_private(name)}


def our_files() -> list[Path]:
    return sorted(
        path
        for package in SCANNED
        for path in (ROOT / package).rglob("*.py")
        if DOOR not in path.parents and ".venv" not in path.parts
    )


@cache
def fenced_attributes() -> frozenset[str]:
    """Private names Optuna defines and tunefleet (outside the door) does not: reaching one is reaching Optuna."""
    optunas: set[str] = set()
    for path in Path(optuna.__file__).parent.rglob("*.py"):
        optunas |= defined_private_names(ast.parse(path.read_text(encoding="utf-8")))
    ours: set[str] = set()
    for path in our_files():
        ours |= defined_private_names(ast.parse(path.read_text(encoding="utf-8")))
    return frozenset(optunas - ours - TOLERATED)


def optuna_bindings(tree: ast.AST) -> set[str]:
    """Local names bound to Optuna modules or objects by the module's imports."""
    bound: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.split(".")[0] == "optuna":
                    bound.add(alias.asname or "optuna")
        elif (
            isinstance(node, ast.ImportFrom)
            and node.level == 0
            and node.module
            and node.module.split(".")[0] == "optuna"
        ):
            bound.update(alias.asname or alias.name for alias in node.names)
    return bound


def chain(node: ast.Attribute) -> tuple[str | None, list[str]]:
    """The root name and the attribute names of `a.b.c` (root None when it is not a plain name)."""
    parts: list[str] = []
    current: ast.expr = node
    while isinstance(current, ast.Attribute):
        parts.append(current.attr)
        current = current.value
    return (current.id if isinstance(current, ast.Name) else None), parts[::-1]


def violations(source: str, label: str, fenced: frozenset[str]) -> list[str]:
    """label:line and what was reached, for each private Optuna name the source reaches."""
    tree = ast.parse(source)
    bound = optuna_bindings(tree)
    found: set[tuple[int, str]] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                parts = alias.name.split(".")
                if parts[0] == "optuna" and any(is_private(p) for p in parts):
                    found.add((node.lineno, f"import {alias.name}"))
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            parts = node.module.split(".")
            if parts[0] != "optuna":
                continue
            private = [a.name for a in node.names if is_private(a.name)]
            if any(is_private(p) for p in parts) or private:
                found.add((node.lineno, f"from {node.module} import {', '.join(a.name for a in node.names)}"))
        elif isinstance(node, ast.Attribute):
            root, parts = chain(node)
            if (root in bound and any(is_private(p) for p in parts)) or node.attr in fenced:
                found.add((node.lineno, ".".join(p for p in (root, *parts) if p)))
        elif isinstance(node, ast.Call):
            func = node.func
            name = (
                func.id
                if isinstance(func, ast.Name)
                else func.attr
                if isinstance(func, ast.Attribute)
                else ""
            )
            for arg in node.args[1:2]:
                if name in ACCESSORS and isinstance(arg, ast.Constant) and arg.value in fenced:
                    found.add((node.lineno, f"{name}(..., {arg.value!r})"))
    return [f"{label}:{line}: {what}" for line, what in sorted(found)]


def listed_names() -> list[str]:
    """The private Optuna names the door's docstring lists."""
    return re.findall(r"``(optuna\.[A-Za-z0-9_.]+)``", studies._optuna.__doc__ or "")


def exists(dotted: str) -> bool:
    """Whether the installed Optuna has the module, attribute or (set in a constructor) instance attribute."""
    parts = dotted.split(".")
    for split in range(len(parts), 0, -1):
        try:
            target: object = importlib.import_module(".".join(parts[:split]))
        except ImportError:
            continue
        break
    else:
        return False
    rest = parts[split:]
    for index, part in enumerate(rest):
        if hasattr(target, part):
            target = getattr(target, part)
            continue
        # An instance attribute lives in no class: look for its assignment in the class or a base.
        if inspect.isclass(target) and index == len(rest) - 1:
            pattern = re.compile(rf"\bself\.{re.escape(part)}\b\s*(:[^=\n]*)?=")
            return any(pattern.search(_source(klass)) for klass in target.__mro__)
        return False
    return True


def _source(klass: type) -> str:
    try:
        return inspect.getsource(klass)
    except (OSError, TypeError):
        return ""


def test_no_module_outside_the_door_reaches_a_private_optuna_name() -> None:
    fenced = fenced_attributes()
    found = [
        problem
        for path in our_files()
        for problem in violations(path.read_text(encoding="utf-8"), str(path.relative_to(ROOT)), fenced)
    ]
    assert found == [], "reach Optuna's private names through studies/_optuna/:\n" + "\n".join(found)


def test_every_private_name_the_door_lists_exists_in_the_installed_optuna() -> None:
    names = listed_names()
    assert len(names) > 40, "the door's docstring lists its names as ``optuna.dotted.name``"
    missing = [name for name in names if not exists(name)]
    assert missing == [], f"optuna {optuna.__version__} no longer has: {', '.join(missing)}"


def test_the_check_names_each_kind_of_reach_with_its_line() -> None:
    source = "\n".join(
        [
            "import optuna",
            "from optuna.storages._rdb import models",
            "from optuna.pruners import _filter_study",
            "import optuna.samplers._tpe.sampler as tpe",
            "view = optuna.pruners._filter_study(study, trial)",
            "sampler._build_parzen_estimator(study, space, trials, handle_below=True)",
            "getattr(storage, '_get_trials')",
            "trial_id = trial._trial_id",
            "value = optuna.distributions.CategoricalDistribution",
        ]
    )
    assert [line.split(":")[1] for line in violations(source, "x.py", fenced_attributes())] == [
        "2",
        "3",
        "4",
        "5",
        "6",
        "7",
    ]


def test_a_listed_name_that_optuna_dropped_is_reported_missing() -> None:
    assert exists("optuna.samplers._tpe._truncnorm._log_gauss_mass")
    assert exists("optuna.study.Study._thread_local")
    assert not exists("optuna.samplers._tpe._truncnorm._no_such_function")
    assert not exists("optuna.no_such_module._name")
