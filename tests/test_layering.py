"""The shape of the package: arrows point down, no circles, modules stay small, apps never import apps.

Floors, top to bottom (a subpackage may import its own floor and those below, never one above):

    testing                       the harness users run (builds models, decodes)
    tuning                        Optuna studies over replay or real decoding
    calibration, replay, runs     numbers over decoded results; traces; results directories
    decoding                      the loop, the step core, rules, drafters
    models                        load_model, the MTP container, training losses, model quality
    data, metrics, policies       corpus/tokenizer/prompts; pure figures; policies (import nothing of ours)
"""

from __future__ import annotations

import ast
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PKG = ROOT / "specpolicy"
FLOORS = [("testing",), ("tuning",), ("calibration", "replay", "runs"), ("decoding",), ("models",),
          ("data", "metrics", "policies")]
LEVEL = {name: i for i, names in enumerate(FLOORS) for name in names}
BOTTOM_LEAVES = {"errors", "_version"}  # modules at the very bottom, importable from anywhere


def _subpackage_imports() -> dict[tuple[str, str], set[str]]:
    """{(subpackage, file): subpackages of specpolicy it imports (module level and inside functions)}."""
    out = {}
    for path in PKG.rglob("*.py"):
        rel = path.relative_to(PKG)
        if len(rel.parts) < 2:
            continue  # the public face (specpolicy/__init__.py) and bottom leaves
        sub = rel.parts[0]
        pkg = ["specpolicy", *rel.parts[:-1]]
        found = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom):
                if node.level:
                    base = pkg[: len(pkg) - node.level + 1]
                    target = base + (node.module.split(".") if node.module else [])
                    names = [target + [a.name] for a in node.names] if not node.module else [target]
                else:
                    names = [node.module.split(".")]
            elif isinstance(node, ast.Import):
                names = [a.name.split(".") for a in node.names]
            else:
                continue
            for parts in names:
                if parts[0] == "specpolicy" and len(parts) > 1 and parts[1] != sub:
                    found.add(parts[1])
        out[(sub, str(rel))] = found
    return out


def test_no_subpackage_imports_one_above_it():
    assert set(LEVEL) == {p.name for p in PKG.iterdir() if p.is_dir() and (p / "__init__.py").exists()}
    bad = [f"{file} imports specpolicy.{dep}" for (sub, file), deps in _subpackage_imports().items()
           for dep in deps if dep not in BOTTOM_LEAVES and LEVEL[dep] < LEVEL[sub]]
    assert not bad, "imports that point up: " + "; ".join(sorted(bad))


def test_no_import_circle_between_subpackages():
    edges: dict[str, set[str]] = {}
    for (sub, _), deps in _subpackage_imports().items():
        edges.setdefault(sub, set()).update(d for d in deps if d in LEVEL)
    seen, stack = set(), []

    def visit(node):
        assert node not in stack, f"import circle: {' -> '.join(stack[stack.index(node):] + [node])}"
        if node in seen:
            return
        stack.append(node)
        for nxt in sorted(edges.get(node, ())):
            visit(nxt)
        stack.pop()
        seen.add(node)

    for node in sorted(edges):
        visit(node)


def test_policies_import_nothing_of_ours_but_policies():
    deps = {d for (sub, _), ds in _subpackage_imports().items() if sub == "policies" for d in ds}
    assert not deps, f"specpolicy.policies imports {deps}: a policy sees numbers, never models"


@pytest.mark.parametrize("folder", ["specpolicy", "experiments", "analysis"])
def test_modules_stay_under_about_400_lines(folder):
    long = [f"{p.relative_to(ROOT)} ({n} lines)" for p in sorted((ROOT / folder).rglob("*.py"))
            if (n := len(p.read_text().splitlines())) > 420]
    assert not long, "split by concept: " + ", ".join(long)


def test_apps_import_only_the_shared_module():
    out = subprocess.run(["git", "grep", "-n", "-E", r"^(from|import) experiments", "--", "experiments/"], cwd=ROOT,
                         capture_output=True, text=True)
    if out.returncode not in (0, 1):
        pytest.skip("not a git checkout")
    modules = {line.split(":", 2)[2].split()[1] for line in out.stdout.splitlines()}
    assert modules <= {"experiments.common"}, f"apps import apps: {modules - {'experiments.common'}}"
