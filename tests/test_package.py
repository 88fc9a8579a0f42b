"""The siren package's shape: no import circle (module-level or inside functions), and every
stage script reads as the shared vocabulary (its --help shows no hand-written default text)."""

from __future__ import annotations

import ast

from conftest import REPO


def import_graph() -> dict[str, set[str]]:
    """siren module -> the siren modules it imports anywhere in its source."""
    modules = {path.stem: path for path in (REPO / "siren").glob("*.py")}
    graph: dict[str, set[str]] = {name: set() for name in modules}
    for name, path in modules.items():
        for node in ast.walk(ast.parse(path.read_text())):
            targets = []
            if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "siren":
                parts = node.module.split(".")
                targets = [parts[1]] if len(parts) > 1 else [alias.name for alias in node.names]
            elif isinstance(node, ast.Import):
                targets = [alias.name.split(".")[1] for alias in node.names if alias.name.startswith("siren.")]
            graph[name] |= {t for t in targets if t in modules and t != name}
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    visiting, done = [], set()

    def visit(node: str) -> list[str] | None:
        if node in visiting:
            return visiting[visiting.index(node):] + [node]
        if node in done:
            return None
        visiting.append(node)
        for nxt in sorted(graph[node]):
            cycle = visit(nxt)
            if cycle:
                return cycle
        visiting.pop()
        done.add(node)
        return None

    for start in sorted(graph):
        cycle = visit(start)
        if cycle:
            return cycle
    return None


def test_the_package_has_no_import_circle():
    graph = import_graph()
    assert len(graph) > 20 and graph["answer_only"] and graph["alignment"]
    assert find_cycle(graph) is None, " -> ".join(find_cycle(graph))


def test_cycle_finder_finds_a_circle():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def test_stage_scripts_spell_no_default_in_their_help():
    """The shared help formatter appends each default; a hand-written "(default: ...)" would repeat it."""
    for script in [*REPO.glob("*.py"), *(REPO / "scripts").glob("*.py")]:
        assert "%(default)" not in script.read_text(), script.name
