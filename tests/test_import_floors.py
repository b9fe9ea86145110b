"""The house's floors, read from the source (no imports run): the kernels' folder imports nothing of s1fast;
the trainer reaches nothing of the projection; s1fast's modules import one another without cycles; files
stay under 500 lines and functions under 80 (those named below say why they are longer)."""
import ast
import glob
import os

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LONG_FUNCTIONS = {  # path:function -> the stated reason
}


def _module_name(path: str) -> str:
    rel = os.path.relpath(path, ROOT)[:-3].replace(os.sep, ".")
    rel = rel.replace("triton_kernels.", "s1fast_kernels.", 1) if rel.startswith("triton_kernels.") else rel
    return rel[: -len(".__init__")] if rel.endswith(".__init__") else rel


def _imports(path: str) -> set[str]:
    """Every module ``path`` imports, at module level or inside functions, as absolute dotted names."""
    mod = _module_name(path)
    package = mod if path.endswith("__init__.py") else mod.rsplit(".", 1)[0]
    out = set()
    for node in ast.walk(ast.parse(open(path).read())):
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = package.split(".")
            if node.level:
                base = base[: len(base) - node.level + 1]
                stem = ".".join(base + ([node.module] if node.module else []))
            else:
                stem = node.module
            out.add(stem)
            out |= {f"{stem}.{a.name}" for a in node.names}  # "from pkg import module"
    return out


def _files(*patterns):
    return sorted(p for pat in patterns for p in glob.glob(os.path.join(ROOT, pat), recursive=True))


FILES = _files("s1fast/**/*.py", "triton_kernels/*.py")
MODULES = {_module_name(p): p for p in FILES}


def _graph() -> dict[str, set[str]]:
    return {m: {d for d in _imports(p) if d in MODULES and d != m} for m, p in MODULES.items()}


def test_kernels_folder_imports_nothing_of_s1fast():
    for p in _files("triton_kernels/*.py"):
        bad = sorted(d for d in _imports(p) if d == "s1fast" or d.startswith("s1fast."))
        assert not bad, f"{os.path.relpath(p, ROOT)} imports {bad}: triton_kernels/ must stand alone"


def test_trainer_reaches_nothing_of_the_projection():
    graph, seen, todo = _graph(), set(), ["s1fast.train"]
    while todo:
        m = todo.pop()
        if m not in seen:
            seen.add(m)
            todo += graph[m]
    report = sorted(m for m in seen if m.startswith(("s1fast.projection", "s1fast.project")))
    assert not report, f"s1fast.train reaches the projection (report code) through {report}"


def test_no_import_cycles():
    graph, state, path = _graph(), {}, []

    def visit(m):
        state[m] = "open"
        path.append(m)
        for d in sorted(graph[m]):
            if state.get(d) == "open":
                raise AssertionError("import cycle: " + " -> ".join(path[path.index(d):] + [d]))
            if d not in state:
                visit(d)
        path.pop()
        state[m] = "done"
    for m in sorted(graph):
        if m not in state:
            visit(m)


def test_files_under_500_lines_and_functions_under_80():
    for p in FILES:
        rel = os.path.relpath(p, ROOT)
        src = open(p).read()
        assert len(src.splitlines()) <= 500, f"{rel}: {len(src.splitlines())} lines; split it by concern"
        for node in ast.walk(ast.parse(src)):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                n = node.end_lineno - node.lineno + 1
                assert n <= 80 or f"{rel}:{node.name}" in LONG_FUNCTIONS, \
                    f"{rel}:{node.lineno} {node.name}() has {n} lines; split it or state why in LONG_FUNCTIONS"


def test_the_walk_sees_the_modules_it_checks():
    """The checks above cannot pass vacuously: the walker finds the trainer's and the kernels' imports."""
    graph = _graph()
    assert {"s1fast.memory", "s1fast.hardware", "s1fast.config"} <= graph["s1fast.train"]
    assert "s1fast_kernels.linear_cross_entropy_op" in graph["s1fast_kernels.custom_ops"]
    assert "s1fast.projection.report" in graph["s1fast.projection.cli"]
