"""The package's shape: the sans-IO core at the top of ``nfflowd/``, adapters in
``nfflowd/io/``, the wiring in ``nfflowd/app/``.  A core module imports neither;
nothing imports in a circle.  Read from the modules' ``ast``, so a lazy import
inside a function counts as much as one at the top."""
from __future__ import annotations

import ast
import pathlib

PKG = pathlib.Path(__file__).resolve().parent.parent / "nfflowd"
# the entry point: it maps arguments onto the wiring, as a program's main does
ENTRY = {"nfflowd.cli", "nfflowd.__main__"}
# edges still to be cut by issue 16's later steps; each must go, none may be added
KNOWN: set[tuple[str, str]] = set()


def module_name(path: pathlib.Path) -> str:
    rel = path.relative_to(PKG.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def modules() -> dict[str, pathlib.Path]:
    return {module_name(p): p for p in PKG.rglob("*.py")}


def imports(name: str, path: pathlib.Path, known: set[str]) -> set[str]:
    """The nfflowd modules ``name`` imports (``from pkg import mod`` counts as
    the module when ``mod`` is one)."""
    pkg = name if path.name == "__init__.py" else name.rpartition(".")[0]
    out = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            out.update(a.name for a in node.names if a.name.startswith("nfflowd"))
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = pkg.split(".")
                base = base[:len(base) - node.level + 1]
                mod = ".".join(base + ([node.module] if node.module else []))
            else:
                mod = node.module or ""
            if not mod.startswith("nfflowd"):
                continue
            subs = {f"{mod}.{a.name}" for a in node.names} & known
            out.update(subs or {mod})
    out.discard(name)
    return out


def graph() -> dict[str, set[str]]:
    mods = modules()
    return {n: imports(n, p, set(mods)) for n, p in mods.items()}


def layer(name: str) -> str:
    if name.startswith("nfflowd.io.") or name == "nfflowd.io":
        return "io"
    if name.startswith("nfflowd.app.") or name == "nfflowd.app":
        return "app"
    return "entry" if name in ENTRY else "core"


def cycles(g: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index, low, stack, on, out = {}, {}, [], set(), []
    counter = [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in g.get(v, ()):
            if (v, w) in KNOWN:
                continue
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(g):
        if v not in index:
            visit(v)
    return out


def test_the_reader_finds_every_module():
    g = graph()
    assert "nfflowd.correlate" in g and "nfflowd.app.daemon" in g and "nfflowd.io.export" in g
    assert "nfflowd.app.pipeline" in g["nfflowd.app.daemon"]


def test_no_core_module_imports_an_adapter_or_the_wiring():
    bad = sorted((a, b) for a, bs in graph().items() for b in bs
                 if layer(a) == "core" and layer(b) in ("io", "app") and (a, b) not in KNOWN)
    assert bad == []


def test_adapters_do_not_import_the_wiring():
    bad = sorted((a, b) for a, bs in graph().items() for b in bs
                 if layer(a) == "io" and layer(b) == "app" and (a, b) not in KNOWN)
    assert bad == []


def test_no_import_circles():
    assert cycles(graph()) == []


def test_the_known_exceptions_still_exist():
    """An edge cut from the code must be cut from KNOWN too, so that it cannot
    come back unseen."""
    g = graph()
    assert sorted(e for e in KNOWN if e[1] not in g.get(e[0], ())) == []


def test_the_checks_see_a_circle_and_a_core_import():
    """The walker itself: a made-up package with a circle and a core module
    importing an adapter is caught."""
    g = {"nfflowd.a": {"nfflowd.b"}, "nfflowd.b": {"nfflowd.a"},
         "nfflowd.c": {"nfflowd.io.x"}, "nfflowd.io.x": set()}
    assert cycles(g) == [["nfflowd.a", "nfflowd.b"]]
    assert layer("nfflowd.c") == "core" and layer("nfflowd.io.x") == "io"
