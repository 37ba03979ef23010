"""The layering rules of docs/decisions.md, checked on the source: a change that breaks one fails here.

The import graph is read from the source with L{ast} (every import, also
those inside functions; not those under C{if TYPE_CHECKING}, which never
run), relative imports resolved.  A top-level part is the
first name under C{mizud} (C{mizud.sip.core} belongs to C{sip},
C{mizud.config} is its own part).  SQL is recognised as a string constant
that begins with a statement's keywords (L{SQL}).
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "mizud"

#: Parts that may import nothing of the parts above them.
LOWER = {
    "store": {"api", "sip", "wire", "console", "portal", "app", "tap", "security", "billing", "chores", "metrics"},
    "billing": {"api", "sip", "wire", "console", "portal", "app", "tap", "security"},
    "security": {"api", "sip", "wire", "console", "portal", "app", "tap"},
    "sip": {"api", "wire", "console", "portal", "app", "tap"},
    "wire": {"portal", "app", "tap", "console"},
    "portal": {"api", "app", "tap", "console"},
    "api": {"wire", "console", "portal", "app", "tap"},
    "console": {"wire", "portal", "app", "tap"},
}

MAX_FUNCTION_LINES = 100
SQL = re.compile(r"^\s*\(?\s*(SELECT\b|INSERT INTO\b|UPDATE \w+ SET\b|DELETE FROM\b|CREATE (TABLE|INDEX|TRIGGER)\b|"
                 r"ALTER TABLE\b|DROP (TABLE|INDEX)\b|WITH \w+ AS\b|PRAGMA \w|VACUUM\b|ANALYZE\b|REPLACE INTO\b|INSERT OR\b|"
                 r"LISTEN \w|NOTIFY \w)")


def _modules() -> dict[str, Path]:
    """Every module of the package by dotted name."""
    found = {}
    for path in PACKAGE.rglob("*.py"):
        parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        found[".".join(parts)] = path
    return found


def _is_type_checking(test: ast.expr) -> bool:
    """Whether an C{if} tests C{TYPE_CHECKING} (its imports are for the type checker only)."""
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _imports(name: str, path: Path) -> set[str]:
    """The modules of mizud that module C{name} imports when it runs (not under C{if TYPE_CHECKING})."""
    tree = ast.parse(path.read_text(), str(path))
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    typing_only = {id(inner) for node in ast.walk(tree) if isinstance(node, ast.If) and _is_type_checking(node.test)
                   for child in node.body for inner in ast.walk(child)}
    out: set[str] = set()
    for node in ast.walk(tree):
        if id(node) in typing_only:
            continue
        if isinstance(node, ast.Import):
            out.update(alias.name for alias in node.names if alias.name.startswith("mizud"))
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[:len(base) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if target.startswith("mizud"):
                out.add(target)
                out.update(f"{target}.{alias.name}" for alias in node.names)
    return out


def _graph() -> dict[str, set[str]]:
    """Module -> the package's modules it imports (names that are not modules dropped)."""
    modules = _modules()
    return {name: {m for m in _imports(name, path) if m in modules and m != name} for name, path in modules.items()}


def _part(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else ""


def _cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one node (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    out: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on.add(node)
        for nxt in edges.get(node, ()):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                top = stack.pop()
                on.discard(top)
                component.append(top)
                if top == node:
                    break
            if len(component) > 1:
                out.append(sorted(component))

    for node in sorted(edges):
        if node not in index:
            visit(node)
    return out


def test_lower_parts_import_nothing_above_them() -> None:
    """store and billing know no API, SIP, front end or composition; SIP knows no API; the front ends do not
    know the composition root, and wire does not know the portal."""
    broken = sorted(
        f"{module} imports {target}"
        for module, targets in _graph().items()
        for target in targets
        if _part(target) in LOWER.get(_part(module), set())
    )
    assert broken == []


def test_no_import_cycle_between_top_level_parts() -> None:
    """The parts (store, billing, security, sip, api, wire, console, portal, app and the single modules) form
    no cycle: each can be understood, and tested, with only the parts below it."""
    parts: dict[str, set[str]] = {}
    for module, targets in _graph().items():
        if _part(module):
            parts.setdefault(_part(module), set()).update(_part(t) for t in targets if _part(t) not in ("", _part(module)))
    assert _cycles(parts) == []


def test_no_module_cycle_inside_a_part() -> None:
    """Inside a part, modules form no cycle either: the SIP core imports its method handlers, which import
    only what they share with it (sip/responses.py, sip/routing.py), never the core."""
    graph = _graph()
    found = []
    for part in sorted({_part(m) for m in graph if _part(m)}):
        edges = {m: {t for t in ts if _part(t) == part} for m, ts in graph.items() if _part(m) == part}
        found.extend(_cycles(edges))
    assert found == []


def _sql_files() -> set[str]:
    """Files outside mizud/store/ with a string that is an SQL statement."""
    found = set()
    for path in PACKAGE.rglob("*.py"):
        relative = path.relative_to(PACKAGE).as_posix()
        if relative.startswith("store/"):
            continue
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Constant) and isinstance(node.value, str) and SQL.match(node.value):
                found.add(relative)
                break
    return found


def test_sql_lives_in_the_store() -> None:
    """No SQL statement outside mizud/store/: the API, SIP and billing call store components."""
    assert _sql_files() == set()


def test_the_sql_check_finds_sql() -> None:
    """The check itself recognises statements, and not prose."""
    assert SQL.match("SELECT id FROM tb_users") and SQL.match("INSERT INTO tb_cdrs (id) VALUES (?)")
    assert SQL.match("UPDATE tb_users SET credit = ?") and SQL.match("DELETE FROM tb_calls WHERE id = ?")
    assert SQL.match("ANALYZE") and SQL.match("INSERT OR IGNORE INTO tb_x VALUES (1)")
    assert not SQL.match("Select the user") and not SQL.match("update the balance")


def _long_functions() -> set[str]:
    found = set()
    for path in PACKAGE.rglob("*.py"):
        relative = path.relative_to(PACKAGE).as_posix()
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                assert node.end_lineno is not None
                if node.end_lineno - node.lineno + 1 > MAX_FUNCTION_LINES:
                    found.add(f"{relative}:{node.name}")
    return found


def test_no_function_over_100_lines() -> None:
    """No function is over 100 lines."""
    assert _long_functions() == set()


def test_the_graph_sees_relative_and_lazy_imports() -> None:
    """The import reader resolves relative imports and finds imports inside functions (a lazy import is a
    dependency too)."""
    graph = _graph()
    assert "mizud.sip.core" in graph["mizud.sip.service"]
    assert "mizud.store.database" in graph["mizud.store.registrations"]
    assert any(_part(t) == "sip" for t in graph["mizud.sip.core"])
    # Imported only inside a handler's body:
    assert "mizud.api.functions.accounts" in graph["mizud.api.functions.fields"]


def test_every_handler_is_a_documented_method_of_its_area() -> None:
    """Every API handler is a method, with a docstring, of the one area class of its module in
    mizud.api.functions (importable, and testable on an area object built with stand-ins for what its
    constructor names); the handler factories of a few modules build such methods too."""
    import importlib
    import inspect

    from mizud.api.functions import build_registry

    implemented = [f for f in build_registry() if f.implemented]
    assert len(implemented) > 100
    for function in implemented:
        method = function.method
        assert method is not None and function.handler is None, function.name
        assert method.__module__.startswith("mizud.api.functions."), function.name
        assert method.__doc__ and method.__doc__.strip(), function.name
        module = importlib.import_module(method.__module__)
        areas = [c for c in vars(module).values()
                 if inspect.isclass(c) and c.__module__ == module.__name__ and c.__name__.endswith("Functions")]
        assert len(areas) == 1, method.__module__
        owner = method.__qualname__.split(".")[0]
        assert owner == areas[0].__name__ or owner in ("_sms_handler", "_maintenance"), \
            f"{function.name}: {method.__qualname__}"
        assert list(inspect.signature(method).parameters)[:2] == ["self", "invocation"], function.name
