"""pyproject.toml and requirements.lock against the code: imports declared, bounded and locked.

README command 1 installs the runtime dependencies alone; a distribution the code imports but does
not declare works only while some other package happens to bring it (kombu's `packaging` did).
"""

from __future__ import annotations

import ast
import re
import sys
import tomllib
from importlib.metadata import packages_distributions

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from tests.conftest import ROOT

PROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
RUNTIME = [Requirement(r) for r in PROJECT["dependencies"]]
TEST = [Requirement(r) for r in PROJECT["optional-dependencies"]["test"]]
OTEL = [Requirement(r) for r in PROJECT["optional-dependencies"]["otel"]]
# imported only where an optional extra is in use: the module, the one file, the extra
OPTIONAL = {"opentelemetry": ("core/otel.py", OTEL)}
LOCK = {
    canonicalize_name(name): version
    for name, version in re.findall(
        r"^([A-Za-z0-9_.\-]+)==(\S+)", (ROOT / "requirements.lock").read_text(), re.MULTILINE
    )
}
# declared for a reason other than an import in gateway/, handlers/ or tasks/
NOT_IMPORTED = {
    "aiosmtpd": "`gateway dev`'s local mail catcher (issue 9)",
}


def imported_top_levels(*, optional: bool = False) -> set[str]:
    """Top-level modules imported anywhere in the shipped packages, stdlib and our own excluded
    (and, unless ``optional``, the OPTIONAL extras' modules in the one file allowed them)."""
    found: set[str] = set()
    for package in ("core", "gateway", "handlers", "tasks"):
        for path in (ROOT / package).rglob("*.py"):
            where = path.relative_to(ROOT).as_posix()
            skip = set() if optional else {m for m, (f, _) in OPTIONAL.items() if f == where}
            here: set[str] = set()
            for node in ast.walk(ast.parse(path.read_text())):
                if isinstance(node, ast.Import):
                    here.update(alias.name.split(".")[0] for alias in node.names)
                elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                    here.add(node.module.split(".")[0])
            found |= here - skip
    return found - set(sys.stdlib_module_names) - {"core", "gateway", "handlers", "tasks"}


def test_an_optional_extras_module_is_imported_only_where_allowed_and_declared_by_it() -> None:
    assert set(OPTIONAL) <= imported_top_levels(optional=True)
    providers = packages_distributions()
    for module, (_, extra) in OPTIONAL.items():
        declared = {canonicalize_name(r.name) for r in extra}
        dists = {canonicalize_name(d) for d in providers.get(module, [])}
        assert dists & declared, f"`{module}` is not provided by its extra {extra}"


def test_every_imported_distribution_is_a_declared_runtime_dependency() -> None:
    declared = {canonicalize_name(r.name) for r in RUNTIME}
    providers = packages_distributions()
    undeclared = {}
    for module in sorted(imported_top_levels()):
        dists = {canonicalize_name(d) for d in providers.get(module, [])}
        assert dists, f"`{module}` is imported but no installed distribution provides it"
        if not dists & declared:
            undeclared[module] = dists
    assert not undeclared, f"imported but not in [project].dependencies: {undeclared}"


def test_every_declared_runtime_dependency_is_used() -> None:
    providers = packages_distributions()
    imported = {
        canonicalize_name(d) for module in imported_top_levels() for d in providers.get(module, [])
    }
    unused = {canonicalize_name(r.name) for r in RUNTIME} - imported - set(NOT_IMPORTED)
    assert not unused, f"declared but never imported: {unused}"


def test_every_dependency_has_an_upper_bound() -> None:
    unbounded = [
        str(r)
        for r in RUNTIME + TEST + OTEL
        if not any(spec.operator in ("<", "<=", "==", "~=") for spec in r.specifier)
    ]
    assert not unbounded


def test_the_lock_pins_every_dependency_inside_its_declared_range() -> None:
    for requirement in RUNTIME + TEST + OTEL:
        pinned = LOCK.get(canonicalize_name(requirement.name))
        assert pinned, f"{requirement.name} is not in requirements.lock"
        assert requirement.specifier.contains(pinned, prereleases=True), (str(requirement), pinned)
    # the extras' own packages are locked too (kombu's redis extra brought `packaging`)
    for name in ("packaging", "redis", "kombu"):
        assert canonicalize_name(name) in LOCK
