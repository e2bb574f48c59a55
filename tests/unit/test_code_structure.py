"""The shape of the code, checked on its syntax tree: no module reaches into another's private names,
no cc_core file grows past 500 lines, and imports only run down the layers of docs/design.md."""

from __future__ import annotations

import ast
import sys
from functools import cache
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
MAX_LINES = 500
# Each cc_core module belongs to the layer of its longest matching prefix; a module may import its
# own layer and the layers before it, never one after it (docs/design.md, "Layers").
LAYERS: list[tuple[str, tuple[str, ...]]] = [
    ("foundation", ("cc_core.io", "cc_core.languages", "cc_core.hub", "cc_core.lineage", "cc_core.redact")),
    ("data formats", ("cc_core.data", "cc_core.data.records", "cc_core.data.benchmarks",
                      "cc_core.data.hub_templates")),
    ("scoring", ("cc_core.scoring", "cc_core.metrics")),
    ("config", ("cc_core.config",)),
    ("prompts", ("cc_core.prompts",)),
    ("modeling", ("cc_core.modeling",)),
    ("engines", ("cc_core.training", "cc_core.generation", "cc_core.generate", "cc_core.loglik",
                 "cc_core.tracking", "cc_core.tracking_store")),
    ("stages", ("cc_core.data.prepare", "cc_core.train", "cc_core.activations", "cc_core.transform",
                "cc_core.evaluate", "cc_core.report", "cc_core.registry", "cc_core.registry_files",
                "cc_core.champion")),
    ("adapters", ("cc_core.serving", "cc_core.pyfunc_model", "cc_core.lm_eval_backend", "cc_core.lm_eval_tasks",
                  "cc_core.preflight")),
    ("cli", ("cc_core.cli",)),
]
PRIVATE_CHECKED = ("cc_core", "bench", "flows")
# Function-local imports must say why (a heavy library in a module cctune imports at start-up, an
# optional extra, a stage's own module loaded by the CLI).
LOCAL_IMPORTS_UNCHECKED: set[tuple[str, str | None]] = set()


def _module_name(path: Path) -> str:
    return ".".join(path.relative_to(REPO).with_suffix("").parts).removesuffix(".__init__")


@cache
def _modules(package: str) -> dict[str, Path]:
    return {_module_name(p): p for p in sorted((REPO / package).rglob("*.py"))}


@cache
def _tree(path: Path) -> ast.Module:
    return ast.parse(path.read_text(encoding="utf-8"), filename=str(path))


def _private(name: str) -> bool:
    return name.startswith("_") and not name.startswith("__")


def _defined_private_names(tree: ast.Module) -> set[str]:
    """Private functions, classes, variables and attributes (``self._x``) a module defines."""
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)) and _private(node.name):
            names.add(node.name)
        elif isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store) and _private(node.id):
            names.add(node.id)
        elif (isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name)
              and node.value.id in ("self", "cls") and _private(node.attr)):
            names.add(node.attr)
    return names


def private_name_uses(packages: tuple[str, ...] = PRIVATE_CHECKED) -> list[str]:
    """``file:line: what`` for every import of another module's private name, and every use of a
    private attribute that another project module defines (through an object: ``tracker._connect()``)."""
    modules = {name: path for package in packages for name, path in _modules(package).items()}
    own = {name: _defined_private_names(_tree(path)) for name, path in modules.items()}
    project = ("cc_core", "flows", "bench")
    everywhere = {name for package in project for path in _modules(package).values()
                  for name in _defined_private_names(_tree(path))}
    found = []
    for name, path in modules.items():
        where = path.relative_to(REPO)
        for node in ast.walk(_tree(path)):
            if isinstance(node, ast.ImportFrom) and node.level == 0 and (node.module or "").split(".")[0] in project:
                found += [f"{where}:{node.lineno}: imports {node.module}.{alias.name}"
                          for alias in node.names if _private(alias.name) and node.module != name]
            elif isinstance(node, ast.Attribute) and _private(node.attr) and node.attr not in own[name]:
                value = node.value
                if isinstance(value, ast.Name) and value.id in ("self", "cls"):
                    continue
                if isinstance(value, ast.Call) and getattr(value.func, "id", None) == "super":
                    continue  # an override calling the method it overrides
                if node.attr in everywhere:
                    found.append(f"{where}:{node.lineno}: {ast.unparse(node)}")
    return found


def _resolve(target: str, modules: dict[str, Path]) -> str | None:
    while target and target not in modules:
        target = target.rpartition(".")[0]
    return target or None


def import_graph() -> dict[str, set[str]]:
    """cc_core module → the cc_core modules it imports, at module top or inside functions."""
    modules = _modules("cc_core")
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        edges = set()
        for node in ast.walk(_tree(path)):
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                targets = [f"{node.module}.{alias.name}" for alias in node.names]
            else:
                continue
            edges |= {t for t in (_resolve(t, modules) for t in targets if t.startswith("cc_core")) if t}
        graph[name] = edges - {name, "cc_core"}
    return graph


def layer_of(module: str) -> int | None:
    matches = [(len(prefix), index) for index, (_, prefixes) in enumerate(LAYERS) for prefix in prefixes
               if module == prefix or module.startswith(prefix + ".")]
    return max(matches)[1] if matches else None


def upward_imports(graph: dict[str, set[str]]) -> list[str]:
    """Imports of a later layer (modules without a layer are test_every_cc_core_module_has_a_layer's)."""
    placed = {name: layer_of(name) for name in {*graph, *(b for targets in graph.values() for b in targets)}}
    return sorted(f"{a} ({LAYERS[placed[a]][0]}) imports {b} ({LAYERS[placed[b]][0]})"
                  for a, targets in graph.items() for b in targets
                  if placed[a] is not None and placed[b] is not None and placed[b] > placed[a])


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index, low, stack, on_stack, found = {}, {}, [], set(), []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in sorted(graph.get(node, ())):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


# --- the tests ---------------------------------------------------------------------------------------

def test_no_module_imports_or_calls_another_modules_private_name():
    assert private_name_uses() == []


def test_the_private_name_check_sees_imports_and_reach_ins(tmp_path, monkeypatch):
    package = tmp_path / "cc_core"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "a.py").write_text("class Tracker:\n    def _connect(self):\n        return 1\n\n\ndef _helper():\n"
                                  "    return Tracker()._connect()\n")
    (package / "b.py").write_text("from cc_core.a import Tracker, _helper\n\n\ndef use(t: Tracker):\n"
                                  "    return t._connect() + _helper()\n")
    (package / "c.py").write_text("class Sub:\n    def _connect(self):\n        return super()._connect()\n")
    for empty in ("flows", "bench"):
        (tmp_path / empty).mkdir()
    monkeypatch.setattr(sys.modules[__name__], "REPO", tmp_path)
    _modules.cache_clear()
    _tree.cache_clear()
    try:
        assert private_name_uses(("cc_core",)) == ["cc_core/b.py:1: imports cc_core.a._helper",
                                                   "cc_core/b.py:5: t._connect"]
    finally:
        _modules.cache_clear()
        _tree.cache_clear()


def test_no_cc_core_file_is_over_500_lines():
    sizes = {str(path.relative_to(REPO)): len(path.read_text(encoding="utf-8").splitlines())
             for path in _modules("cc_core").values()}
    assert {name: n for name, n in sizes.items() if n > MAX_LINES} == {}


def test_every_cc_core_module_has_a_layer():
    assert [name for name in _modules("cc_core") if name != "cc_core" and layer_of(name) is None] == []


def test_imports_run_down_the_layers_without_cycles():
    graph = import_graph()
    assert upward_imports(graph) == []
    assert cycles(graph) == []


def test_the_layer_check_sees_an_arrow_back_up():
    graph = {"cc_core.config": {"cc_core.data.prepare"}, "cc_core.data.prepare": {"cc_core.config"}}
    assert upward_imports(graph) == ["cc_core.config (config) imports cc_core.data.prepare (stages)"]
    assert cycles(graph) == [["cc_core.config", "cc_core.data.prepare"]]


def test_modeling_knows_nothing_of_the_params_schema_or_the_stages():
    graph = import_graph()
    reached = {b for a, targets in graph.items() if a.startswith("cc_core.modeling") for b in targets}
    assert {b for b in reached if layer_of(b) >= layer_of("cc_core.config") and not b.startswith("cc_core.modeling")
            and b != "cc_core.prompts"} == set()


def unexplained_local_imports() -> list[str]:
    """Imports inside a function without a ``# why:`` comment on their line or the few lines above."""
    found = []
    for path in _modules("cc_core").values():
        where = str(path.relative_to(REPO))
        lines = path.read_text(encoding="utf-8").splitlines()
        for function in ast.walk(_tree(path)):
            if not isinstance(function, (ast.FunctionDef, ast.AsyncFunctionDef)):
                continue
            if (where, None) in LOCAL_IMPORTS_UNCHECKED or (where, function.name) in LOCAL_IMPORTS_UNCHECKED:
                continue
            for node in ast.walk(function):
                if isinstance(node, (ast.Import, ast.ImportFrom)):
                    above = lines[max(function.lineno, node.lineno - 7):node.lineno]
                    if not any("# why:" in line for line in above):
                        found.append(f"{where}:{node.lineno}: {lines[node.lineno - 1].strip()}")
    return found


def test_function_local_imports_say_why():
    assert unexplained_local_imports() == []


def test_cc_core_imports_neither_prefect_nor_dvc_nor_flows():
    banned = ("prefect", "dvc", "flows", "bench")
    found = []
    for name, path in _modules("cc_core").items():
        for node in ast.walk(_tree(path)):
            names = ([a.name for a in node.names] if isinstance(node, ast.Import)
                     else [node.module or ""] if isinstance(node, ast.ImportFrom) and node.level == 0 else [])
            found += [f"{name}: {n}" for n in names if n.split(".")[0] in banned]
    assert found == []
