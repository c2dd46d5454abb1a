"""Dependencies point one way: no import cycle between packages or between modules.

Layers, lowest first: `indexing` (the domain: imports no other package of ours),
`deployment` (configuration, building a process's service), then the edges: `workers`
(Celery) and `app` (API, CLI, web), where `app` may compose `workers` and never the
reverse. Every import counts, including those inside functions.
"""

from __future__ import annotations

import ast
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
PACKAGES = ("indexing", "deployment", "workers", "app")
ALLOWED = {
    "indexing": set(),
    "deployment": {"indexing"},
    "workers": {"indexing", "deployment"},
    "app": {"indexing", "deployment", "workers"},
}


def modules() -> dict[str, Path]:
    found = {}
    for package in PACKAGES:
        for path in (REPO / package).rglob("*.py"):
            name = ".".join(path.relative_to(REPO).with_suffix("").parts)
            found[name.removesuffix(".__init__")] = path
    return found


def imports(path: Path, known: dict[str, Path]) -> set[str]:
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module, *(f"{node.module}.{alias.name}" for alias in node.names)]
        elif isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        else:
            continue
        out.update(name for name in names if name in known)
    return out


def graph() -> dict[str, set[str]]:
    known = modules()
    return {name: imports(path, known) - {name} for name, path in known.items()}


def test_packages_depend_one_way() -> None:
    wrong = sorted(
        f"{module} imports {target}"
        for module, targets in graph().items() for target in targets
        if target.split(".")[0] != module.split(".")[0] and target.split(".")[0] not in ALLOWED[module.split(".")[0]]
    )
    assert not wrong, wrong


def test_no_module_import_cycle() -> None:
    edges = graph()
    state: dict[str, int] = {}
    path: list[str] = []
    cycles: list[list[str]] = []

    def visit(node: str) -> None:
        state[node] = 1
        path.append(node)
        for target in sorted(edges[node]):
            if state.get(target) == 1:
                cycles.append(path[path.index(target):] + [target])
            elif target not in state:
                visit(target)
        path.pop()
        state[node] = 2

    for node in sorted(edges):
        if node not in state:
            visit(node)
    assert not cycles, cycles


def test_the_edges_call_the_service_not_its_collaborators() -> None:
    """`app/` and `workers/` go through `NominalService`'s methods: never `service.versions.x`,
    `service.patches.x` or `service.embedder.x`, which are the core's own seams (a re-index
    builds through `Versions`; the service delegates to them)."""
    collaborators = {"versions", "patches", "embedder", "references"}
    reached = []
    for package in ("app", "workers"):
        for path in (REPO / package).rglob("*.py"):
            for node in ast.walk(ast.parse(path.read_text())):
                # service.<collaborator>.<member> (or runtime.service.<collaborator>.<member>)
                if (
                    isinstance(node, ast.Attribute)
                    and isinstance(node.value, ast.Attribute)
                    and node.value.attr in collaborators
                    and isinstance(node.value.value, (ast.Name, ast.Attribute))
                    and (getattr(node.value.value, "id", None) or getattr(node.value.value, "attr", None)) == "service"
                ):
                    reached.append(f"{path.relative_to(REPO)}:{node.lineno} service.{node.value.attr}.{node.attr}")
    assert reached == []
