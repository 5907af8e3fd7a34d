"""The package's layout and imports: they run one way (no module imports, directly or through others,
a module that imports it, not even inside a function: STYLE.md, "Imports run one way"), the rooms of
ARCHITECTURE.md keep to their side, and no function grows past what one job needs."""

from __future__ import annotations

import ast
from pathlib import Path

import research

ROOT = Path(research.__file__).parent


def import_graph() -> dict[str, set[str]]:
    modules = {}
    for path in ROOT.rglob("*.py"):
        parts = path.relative_to(ROOT.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        modules[name] = path
    graph: dict[str, set[str]] = {name: set() for name in modules}
    for name, path in modules.items():
        for node in ast.walk(ast.parse(path.read_text())):  # function-level imports too
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                targets = [node.module, *(f"{node.module}.{alias.name}" for alias in node.names)]
            else:
                continue
            graph[name] |= {t for t in targets if t in modules and t != name}
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}  # 1 = on the current path, 2 = done

    def visit(node: str, path: list[str]) -> list[str] | None:
        state[node] = 1
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                return [*path[path.index(nxt):], nxt]
            if nxt not in state and (found := visit(nxt, [*path, nxt])):
                return found
        state[node] = 2
        return None

    for start in sorted(graph):
        if start not in state and (found := visit(start, [start])):
            return found
    return None


def test_no_import_cycle_in_the_package():
    cycle = find_cycle(import_graph())
    assert cycle is None, " -> ".join(cycle)


def test_the_cycle_finder_finds_cycles():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def reachable(graph: dict[str, set[str]], start: str) -> set[str]:
    """Every module ``start`` imports, directly or through others."""
    seen: set[str] = set()
    todo = [start]
    while todo:
        for nxt in graph[todo.pop()]:
            if nxt not in seen:
                seen.add(nxt)
                todo.append(nxt)
    return seen


def test_training_does_not_import_predict_and_the_registry_imports_no_builder():
    graph = import_graph()
    assert "research.inference.predict" not in reachable(graph, "research.train")
    assert not {"research.models.backbones", "research.models.scratch", "research.models.factory"} & graph["research.models.registry"]
    assert not any(m.startswith("research.data") for m in graph["research.models.backbones"] | graph["research.models.classifier"])


def test_the_top_level_keeps_at_most_eight_modules():
    modules = sorted(p.stem for p in ROOT.glob("*.py") if p.stem not in ("__init__", "__main__"))
    assert len(modules) <= 8, modules


def test_faces_import_nothing_from_inference_or_training():
    graph = import_graph()
    for module in (m for m in graph if m.startswith("research.faces")):
        bad = {m for m in reachable(graph, module) if m.startswith(("research.inference", "research.engine", "research.train"))}
        assert not bad, f"{module} imports {sorted(bad)}"


def test_nothing_on_the_inference_side_imports_the_trainer():
    graph = import_graph()
    trainer = {"research.engine.trainer", "research.builders.training", "research.train"}
    for module in (m for m in graph if m.startswith("research.inference")):
        bad = trainer & reachable(graph, module)
        assert not bad, f"{module} imports {sorted(bad)}"


def test_the_report_reads_the_comparison_not_the_predict_command():
    graph = import_graph()
    commands = {"research.inference.predict", "research.inference.evaluate", "research.cli", "research.pipeline"}
    for module in (m for m in graph if m.startswith("research.report")):
        bad = commands & reachable(graph, module)
        assert not bad, f"{module} imports {sorted(bad)}"
    assert "research.inference.comparison" in reachable(graph, "research.report.render")


def code_lines(source: list[str], node: ast.FunctionDef | ast.AsyncFunctionDef) -> int:
    """Lines of a function that hold code: no blank lines, comments or docstring."""
    first = node.body[0]
    docstring = set()
    if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant) and isinstance(first.value.value, str):
        docstring = set(range(first.lineno, first.end_lineno + 1))
    start = node.decorator_list[0].lineno if node.decorator_list else node.lineno
    return sum(
        1 for n in range(start, node.end_lineno + 1)
        if n not in docstring and source[n - 1].strip() and not source[n - 1].strip().startswith("#")
    )


def test_functions_do_one_job():
    """No function has more than 75 code lines, and at most two have more than 60."""
    lengths = {}
    for path in ROOT.rglob("*.py"):
        text = path.read_text()
        for node in ast.walk(ast.parse(text)):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                lengths[f"{path.relative_to(ROOT.parent)}:{node.lineno} {node.name}"] = code_lines(text.splitlines(), node)
    too_long = {k: v for k, v in lengths.items() if v > 75}
    long = {k: v for k, v in lengths.items() if v > 60}
    assert not too_long, too_long
    assert len(long) <= 2, long


def test_the_function_length_counter_counts_code_only():
    source = '''def f(x):
    """Doc.

    More doc.
    """
    # a comment

    y = x + 1
    return y
'''
    node = ast.parse(source).body[0]
    assert code_lines(source.splitlines(), node) == 3
