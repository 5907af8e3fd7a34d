"""Every third-party module the code imports is declared in pyproject.toml: the package's own imports as
dependencies (or an optional extra), the tests' and benchmarks' as dependencies, extras or dev dependencies.
Import names map to distributions through ``importlib.metadata`` (``cv2`` -> opencv-python-headless)."""

from __future__ import annotations

import ast
import functools
import importlib.metadata
import re
import sys
import tomllib
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
DYNAMIC = {"import_module", "find_spec", "importorskip"}  # called with a module name as a string


def _imported(path: Path) -> set[str]:
    """Top-level module names ``path`` imports, in ``import`` statements (absolute ones, functions included)
    and as string arguments of ``importlib.import_module`` / ``find_spec`` / ``pytest.importorskip``."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module)
        elif _dynamic_import(node):
            names.add(node.args[0].value)
    return {name.split(".")[0] for name in names}


def _dynamic_import(node: ast.AST) -> bool:
    """``import_module("x")``, ``find_spec("x")``, ``pytest.importorskip("x")`` with a literal name."""
    return (
        isinstance(node, ast.Call) and getattr(node.func, "attr", getattr(node.func, "id", None)) in DYNAMIC
        and bool(node.args) and isinstance(node.args[0], ast.Constant) and isinstance(node.args[0].value, str)
    )


def third_party_imports(folder: str) -> dict[str, list[str]]:
    """``{module: [files importing it]}`` for every module of ``folder`` that is neither the standard library
    nor this repository's own code (``research``, ``tests``, a module beside the importing file or in benchmarks/ or scripts/,
    which the tests load)."""
    found: dict[str, list[str]] = {}
    for path in sorted((REPO / folder).rglob("*.py")):
        local = {p.stem for p in [*path.parent.glob("*.py"), *(REPO / "benchmarks").glob("*.py"), *(REPO / "scripts").glob("*.py")]} | {"research", "tests"}
        for name in _imported(path) - local - set(sys.stdlib_module_names):
            found.setdefault(name, []).append(str(path.relative_to(REPO)))
    return found


def _normalise(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _requirement(spec: str) -> tuple[str, set[str]]:
    """``'wandb[sweeps]>=0.17; ...'`` -> ``('wandb', {'sweeps'})``."""
    match = re.match(r"\s*([A-Za-z0-9][A-Za-z0-9._-]*)\s*(?:\[([^\]]*)\])?", spec)
    assert match, spec
    return _normalise(match.group(1)), {e.strip() for e in (match.group(2) or "").split(",") if e.strip()}


def _with_extras(name: str, extras: set[str]) -> set[str]:
    """``name`` and the distributions its ``extras`` pull in (``wandb[sweeps]`` brings ``sweeps``)."""
    out = {name}
    try:
        requires = importlib.metadata.requires(name) or []
    except importlib.metadata.PackageNotFoundError:
        return out
    for spec in requires:
        marker = re.search(r"extra\s*==\s*['\"]([^'\"]+)['\"]", spec)
        if marker and marker.group(1) in extras:
            out.add(_requirement(spec)[0])
    return out


def declared() -> dict[str, set[str]]:
    """Distributions declared in pyproject.toml: ``main`` (dependencies), ``extras`` and ``dev``."""
    project = tomllib.loads((REPO / "pyproject.toml").read_text())
    main = set().union(*(_with_extras(*_requirement(s)) for s in project["project"]["dependencies"]))
    extras = {_requirement(s)[0] for specs in project["project"].get("optional-dependencies", {}).values() for s in specs}
    dev = {_normalise(n) for n in project["tool"]["poetry"]["group"]["dev"]["dependencies"]}
    return {"main": main, "extras": extras, "dev": dev}


@functools.cache
def _module_owners() -> dict[str, set[str]]:
    """Top-level module -> the installed distributions that provide it: their top_level.txt, and the files they
    install (some wheels list only their extension module in top_level.txt; dlib-bin: _dlib_pybind11)."""
    owners = {module: {_normalise(d) for d in dists} for module, dists in importlib.metadata.packages_distributions().items()}
    for dist in importlib.metadata.distributions():
        for top in {f.parts[0].removesuffix(".py") for f in dist.files or [] if f.parts and not f.parts[0].endswith(".dist-info")}:
            owners.setdefault(top, set()).add(_normalise(dist.metadata["Name"]))
    return owners


def distributions_of(module: str) -> set[str]:
    """The installed distributions that provide ``module``."""
    return _module_owners().get(module, set())


def undeclared(folder: str, ok: set[str]) -> dict[str, tuple[list[str], list[str]]]:
    """``{module: (its distributions, files importing it)}`` for the imports of ``folder`` that no distribution
    in ``ok`` provides."""
    missing = {}
    for module, files in third_party_imports(folder).items():
        dists = distributions_of(module)
        if not dists & ok:
            missing[module] = (sorted(dists) or ["not installed"], files[:3])
    return missing


@pytest.mark.parametrize(
    ("folder", "allowed"),
    [("research", ("main", "extras")), ("benchmarks", ("main", "extras", "dev")), ("tests", ("main", "extras", "dev")),
     ("scripts", ("main", "extras", "dev"))],
)
def test_every_imported_module_is_declared(folder, allowed):
    groups = declared()
    missing = undeclared(folder, set().union(*(groups[g] for g in allowed)))
    assert not missing, f"imported in {folder}/ but not declared in pyproject.toml ({' or '.join(allowed)}): {missing}"


def test_the_check_finds_an_undeclared_import(tmp_path, monkeypatch):
    """The check above can fail: a module importing an installed package that is not declared."""
    (tmp_path / "fake").mkdir()
    (tmp_path / "fake" / "mod.py").write_text(
        "import json\nimport numpy.linalg\nfrom PIL import Image\nimport sibling\n"
        "def f():\n    import importlib\n    return importlib.import_module('yaml')\n"
    )
    (tmp_path / "fake" / "sibling.py").write_text("")
    monkeypatch.setattr(sys.modules[__name__], "REPO", tmp_path)
    assert set(third_party_imports("fake")) == {"numpy", "PIL", "yaml"}
    missing = undeclared("fake", {"numpy", "pillow"})
    assert list(missing) == ["yaml"] and missing["yaml"][0] == ["pyyaml"]
