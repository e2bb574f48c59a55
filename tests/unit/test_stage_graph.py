"""dvc.yaml is the one declaration of the stage graph: every stage's command spells the paths it
reads and writes, its deps cover the code it runs (the static import closure, inside cc_core, of
the CLI command it runs) and the package data that code reads.

    pytest tests/unit/test_stage_graph.py

On failure the message lists the exact ``deps`` lines to add (or remove) in dvc.yaml.
"""

from __future__ import annotations

import ast
import shlex
from functools import cache
from pathlib import Path, PurePosixPath

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
PACKAGE = "cc_core"

# Modules a stage runs that are deliberately not dependencies, and why. Each must stay true: the
# module only records what happened or answers a yes/no question; it never changes a stage's outputs.
NOT_DEPS = {
    "cc_core/tracking.py": "records runs and metrics in MLflow; never changes a stage's outputs "
                           "(register excepted: registering in MLflow is its output)",
    "cc_core/tracking_store.py": "says why an MLflow store cannot be used (locked, read-only, unreachable); never "
                                 "changes a stage's outputs",
    "cc_core/hub.py": "only answers whether the Hugging Face hub is reachable (offline: an error)",
    "cc_core/redact.py": "strips credentials from what is logged or printed; never changes a stage's outputs",
}
# The params schema imports data modules to check names (benchmarks, languages, record fields), never
# to read package data: package data a stage reads is found without following config.py's imports.
NAMES_ONLY = frozenset({"cc_core.cli", "cc_core.config"})
# register ships the whole package as the version's code (MLflow code_paths): it depends on all of it.
WHOLE_PACKAGE = {"register"}


def _module_file(name: str) -> Path | None:
    parts = name.split(".")
    as_file = REPO.joinpath(*parts).with_suffix(".py")
    if as_file.is_file():
        return as_file
    as_package = REPO.joinpath(*parts, "__init__.py")
    return as_package if as_package.is_file() else None


def _module_name(path: Path) -> str:
    rel = path.relative_to(REPO).with_suffix("")
    parts = rel.parts[:-1] if rel.name == "__init__" else rel.parts
    return ".".join(parts)


def _imported_modules(path: Path, tree: ast.AST | None = None) -> set[str]:
    """Every cc_core module an import statement anywhere in ``tree`` (default: the file) names,
    top-level or inside a function: a function-local import runs when the function does."""
    tree = tree or ast.parse(path.read_text(encoding="utf-8"))
    package = _module_name(path).split(".")
    if path.name != "__init__.py":
        package = package[:-1]
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = ".".join(package[:len(package) - node.level + 1] + ([node.module] if node.module else []))
            else:
                base = node.module or ""
            found.add(base)
            found |= {f"{base}.{alias.name}" for alias in node.names}  # `from pkg import module`
    return {name for name in found if name.split(".")[0] == PACKAGE and _module_file(name)}


def _with_parents(name: str) -> set[str]:
    """Importing a.b.c runs a/__init__, a/b/__init__ and a/b/c."""
    parts = name.split(".")
    return {".".join(parts[:i]) for i in range(1, len(parts) + 1)}


@cache
def closure(start: frozenset[str], leaves: frozenset[str] = frozenset({"cc_core.cli"})) -> frozenset[str]:
    """Files (repo-relative POSIX) of every cc_core module reachable from ``start``; the imports of
    ``leaves`` are not followed (cli.py: its stage functions' imports are the entry points)."""
    todo = [m for name in start for m in _with_parents(name)]
    seen: set[str] = set()
    while todo:
        name = todo.pop()
        if name in seen or _module_file(name) is None:
            continue
        seen.add(name)
        if name in leaves:
            continue
        for imported in _imported_modules(_module_file(name)):
            todo += [m for m in _with_parents(imported) if m not in seen]
    return frozenset(_module_file(name).relative_to(REPO).as_posix() for name in seen)


def cli_entry_modules(subcommand: str) -> frozenset[str]:
    """What ``cctune SUBCOMMAND`` loads: cli.py's module-level imports, plus the imports inside the
    function registered with ``@stage("SUBCOMMAND", ...)``."""
    path = REPO / "cc_core" / "cli.py"
    tree = ast.parse(path.read_text(encoding="utf-8"))
    top = ast.Module(body=[n for n in tree.body if isinstance(n, (ast.Import, ast.ImportFrom))], type_ignores=[])
    found = {"cc_core.cli", "cc_core.config"} | _imported_modules(path, top)  # run() loads the params schema
    for node in tree.body:
        if isinstance(node, ast.FunctionDef):
            for decorator in node.decorator_list:
                call = decorator.func if isinstance(decorator, ast.Call) else None
                if (isinstance(call, ast.Call) and getattr(call.func, "id", None) == "stage"
                        and call.args and getattr(call.args[0], "value", None) == subcommand):
                    return frozenset(found | _imported_modules(path, node))
    raise AssertionError(f"cc_core/cli.py registers no stage {subcommand!r}")


def package_data(modules: frozenset[str]) -> set[str]:
    """Package data the modules read: their module-level ``BUNDLED_*`` path constants
    (``Path(__file__).parent / "bundled" / ...``), as repo-relative paths."""
    found = set()
    for rel in modules:
        tree = ast.parse((REPO / rel).read_text(encoding="utf-8"))
        for node in tree.body:
            if isinstance(node, ast.Assign) and any(getattr(t, "id", "").startswith("BUNDLED_") for t in node.targets):
                found.add(PurePosixPath(rel).parent.joinpath(*_string_parts(node.value)).as_posix())
    return found


def _string_parts(node: ast.AST) -> list[str]:
    """The string constants of ``Path(__file__).parent / "a" / "b"``, left to right."""
    if isinstance(node, ast.BinOp):
        return _string_parts(node.left) + _string_parts(node.right)
    return [node.value] if isinstance(node, ast.Constant) and isinstance(node.value, str) else []


@cache
def dvc_stages() -> dict[str, dict]:
    """Stages as DVC resolves them (matrix expanded, ${...} filled from params.yaml)."""
    from dvc.repo import Repo

    with Repo(str(REPO)) as repo:
        return {stage.name: {"cmd": stage.cmd, "deps": [Path(d.fs_path).relative_to(REPO).as_posix()
                                                            for d in stage.deps if not hasattr(d, "params")],
                             "outs": [Path(o.fs_path).relative_to(REPO).as_posix() for o in stage.outs]}
                for stage in repo.index.stages}


def _covered(path: str, deps: list[str]) -> bool:
    return any(path == dep or PurePosixPath(path).is_relative_to(dep) for dep in deps)


def stage_problems(name: str, stage: dict) -> list[str]:
    argv = shlex.split(stage["cmd"])
    assert argv[0] == "cctune", f"{name}: runs {argv[0]!r}, not the cctune CLI"
    if argv[1] in WHOLE_PACKAGE:
        return [] if PACKAGE in stage["deps"] else [f"{name}: add to deps (the version ships it): {PACKAGE}"]
    entry = cli_entry_modules(argv[1])
    code = closure(entry)
    needed = sorted((set(code) - set(NOT_DEPS)) | package_data(closure(entry, NAMES_ONLY)))
    missing = [path for path in needed if not _covered(path, stage["deps"])]
    python_deps = [d for d in stage["deps"] if d.startswith(f"{PACKAGE}/") and not (REPO / d).is_dir()
                   and d.endswith(".py")]
    extra = [d for d in python_deps if d not in code]
    problems = [f"{name}: add to deps (the stage runs it): {path}" for path in missing]
    problems += [f"{name}: remove from deps (the stage never imports it): {path}" for path in extra]
    return problems


def test_every_stage_depends_on_exactly_the_code_it_runs_and_the_data_it_reads():
    problems = [problem for name, stage in dvc_stages().items() for problem in stage_problems(name, stage)]
    assert not problems, "dvc.yaml deps do not match the code the stages run:\n" + "\n".join(problems)


def test_the_closure_follows_function_local_imports_and_package_inits(tmp_path):
    code = closure(cli_entry_modules("eval"))
    assert {"cc_core/scoring/qa.py", "cc_core/scoring/summary.py"} <= code  # both protocols' scorers
    assert "cc_core/modeling/__init__.py" in code and "cc_core/modeling/hooks.py" in code
    assert "cc_core/train.py" not in code  # evaluation never loads training code
    assert closure(cli_entry_modules("prepare")) >= {"cc_core/data/records.py", "cc_core/data/prepare.py"}


def test_a_missing_scorer_dependency_is_reported():
    """The drift this test exists for: an eval stage without the scorers (e.g. the standard protocol's)."""
    stage = dict(dvc_stages()["eval_cc@XNLI"])
    stage["deps"] = [d for d in stage["deps"] if not d.startswith("cc_core/scoring")]
    problems = stage_problems("eval_cc@XNLI", stage)
    assert "eval_cc@XNLI: add to deps (the stage runs it): cc_core/scoring/qa.py" in problems
    assert all(problem.startswith("eval_cc@XNLI: add to deps (the stage runs it): cc_core/scoring/")
               for problem in problems)


def _option_paths(argv: list[str]) -> dict[str, str]:
    """``{option: value}`` of the path options a cctune command line spells."""
    from cc_core.cli import build_parser

    parser = build_parser()
    sub = next(a for a in parser._actions if a.dest == "stage").choices[argv[1]]
    paths = {}
    for action in sub._actions:
        if action.option_strings and action.dest in PATH_OPTIONS:
            paths[action.dest] = action.option_strings[0]
    return paths


PATH_OPTIONS = {"out", "base", "data", "checkpoint_dir", "metrics_dir", "model", "pairs", "activations",
                "transform", "eval_dir", "data_dir"}


def test_every_path_a_stage_reads_or_writes_is_spelled_in_its_command():
    for name, stage in dvc_stages().items():
        argv = shlex.split(stage["cmd"])
        for dest, option in _option_paths(argv).items():
            if dest == "transform" and "--method" in argv and argv[argv.index("--method") + 1] != "cc":
                continue  # only cc reads a Transform Matrix
            assert option in argv, f"{name}: `{stage['cmd']}` leaves {option} to the CLI default"


def test_flow_stage_kinds_are_the_dvc_yaml_stage_groups():
    from flows.stage_graph import STAGE_KINDS, stage_kind

    groups = {stage_kind(name) for name in dvc_stages()}
    assert set(STAGE_KINDS) == groups
    raw = yaml.safe_load((REPO / "dvc.yaml").read_text())
    assert {stage_kind(name) for name in raw["stages"]} == groups


def expected_deps(subcommand: str) -> list[str]:
    """What dvc.yaml should list for ``cctune SUBCOMMAND`` (whole folders where every module is needed):
    ``python -c "import sys; sys.path[:0] = ['tests/unit']; import test_stage_graph as t; print(t.expected_deps('eval'))"``"""
    entry = cli_entry_modules(subcommand)
    files = (set(closure(entry)) - set(NOT_DEPS)) | package_data(closure(entry, NAMES_ONLY))
    packages = [p.parent for p in (REPO / PACKAGE).glob("*/__init__.py")]
    folders = {p.relative_to(REPO).as_posix() for p in packages
               if all(f.relative_to(REPO).as_posix() in files for f in p.glob("*.py"))}
    return sorted(folders | {f for f in files if not any(_covered(f, [d]) for d in folders)})


def test_the_base_models_hash_manifest_is_outside_its_dvc_hash(tmp_path):
    """models/base carries a manifest of its weights' hashes with their mtimes (cc_core/lineage.py): re-running
    base-model with the same weights must leave the same DVC output, or every later stage would re-run."""
    import shutil
    import subprocess
    import sys

    from cc_core.lineage import WEIGHTS_MANIFEST

    dvc = [sys.executable, "-m", "dvc"]
    subprocess.run([*dvc, "init", "--no-scm", "-q"], cwd=tmp_path, check=True)
    shutil.copy(REPO / ".dvcignore", tmp_path / ".dvcignore")
    write = ("import pathlib, time; d = pathlib.Path('base'); d.mkdir(exist_ok=True); "
             "(d / 'model.safetensors').write_text('weights'); "
             f"(d / '{WEIGHTS_MANIFEST}').write_text(str(time.time_ns()))")
    subprocess.run([*dvc, "stage", "add", "-q", "-n", "base_model", "-o", "base", f'python -c "{write}"'],
                   cwd=tmp_path, check=True)

    def output_hash() -> str:
        subprocess.run([*dvc, "repro", "-f", "-q"], cwd=tmp_path, check=True, capture_output=True)
        lock = yaml.safe_load((tmp_path / "dvc.lock").read_text())
        return lock["stages"]["base_model"]["outs"][0]["md5"]

    first = output_hash()
    assert (tmp_path / "base" / WEIGHTS_MANIFEST).read_text() and output_hash() == first
