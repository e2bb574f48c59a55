"""dvc.yaml's stage graph, as the Prefect flow runs it (dvc.yaml is its only declaration).

    stages = load_stages(".")               # topological order, matrix stages expanded
    stages[0].name, stages[0].argv          # "base_model", base-model --out models/base (as its command spells it)
    changed(".", ["prepare"])               # {"prepare": True}: what `dvc status` says

A stage's command is ``cctune ARGS``; the flow runs ARGS through ``cc_core.cli`` (in-process, or
under the training launcher), exactly the code path ``dvc repro`` takes, then records it with
``dvc commit``. Nothing here knows a path: paths are in the commands, as DVC resolves them.
"""

from __future__ import annotations

import shlex
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Literal, get_args

from cc_core import cli
from cc_core.config import Params, load_params
from flows.dvc_sync import project_lock

RECORDED_PARAMS = "params.yaml"  # what dvc.yaml's params and dvc.lock refer to

# What a run can select (the flow's ``stages`` parameter): dvc.yaml's stages, each train_<method>
# and eval stage grouped under one name. tests/unit/test_stage_graph.py keeps them equal.
StageKind = Literal["base_model", "prepare", "train", "collect", "fit", "eval", "report", "register"]
STAGE_KINDS: tuple[str, ...] = get_args(StageKind)
Method = Literal["base", "sft", "cc"]
METHODS: tuple[str, ...] = get_args(Method)


@dataclass(frozen=True)
class RunContext:
    """What the tasks of one flow run share: where the stages run and how."""

    workspace: str                       # the project checkout, or a variant's worktree
    launcher: str = "inprocess"
    num_gpus: int = 1
    num_nodes: int = 1
    hostfile: str | None = None
    dvc_remote: str | None = None
    record: bool = True                  # dvc commit each stage

    def params(self) -> Params:
        return load_params(Path(self.workspace) / RECORDED_PARAMS)


def user_error_not_retried(task, task_run, state) -> bool:
    """Bad input (a params key, a data file, a lineage mismatch) fails the same way every time."""
    return not cli.is_user_error(state.result(raise_on_failure=False))



def stage_kind(name: str) -> str:
    """``train_cc`` → ``train``; ``eval@base-XNLI`` / ``eval_cc@XNLI`` → ``eval``."""
    group = name.split("@", 1)[0]
    return group.split("_", 1)[0] if group.startswith(("train_", "eval_")) else group


def _inside(path: str, folder: str) -> bool:
    return path == folder or PurePosixPath(path).is_relative_to(folder)


@dataclass(frozen=True)
class PipelineStage:
    name: str                   # as dvc.yaml names it: train_cc, eval@base-XNLI, eval_cc@XNLI
    argv: tuple[str, ...]       # the cctune arguments of its command
    deps: tuple[str, ...]       # paths relative to the project root
    outs: tuple[str, ...]
    upstream: tuple[str, ...]   # stages whose outputs it reads
    cached: tuple[str, ...] = ()  # its outputs in the DVC cache (what a remote holds); metrics files are in git

    @property
    def kind(self) -> str:
        return stage_kind(self.name)

    def option(self, flag: str) -> str | None:
        """The value of ``--flag`` in the command (None if absent)."""
        argv = list(self.argv)
        return argv[argv.index(flag) + 1] if flag in argv[:-1] else None

    @property
    def method(self) -> str | None:
        return self.option("--method")

    @property
    def label(self) -> str:
        """What the Prefect UI calls its task run: train-cc, eval-sft-XNLI, base-model."""
        parts = [self.kind.replace("_", "-")]
        if self.method:
            parts.append(self.method)
        if self.option("--benchmark"):
            parts.append(self.option("--benchmark"))
        return "-".join(parts)


def load_stages(project: str | Path) -> list[PipelineStage]:
    """Every stage of ``project``'s dvc.yaml, resolved by DVC (``${...}`` from params.yaml, matrix
    expanded), in topological order (dvc.yaml's order among independent stages)."""
    from dvc.repo import Repo

    root = Path(project).resolve()
    with project_lock(root), Repo(str(root)) as repo:
        raw = []
        for stage in repo.index.stages:
            argv = shlex.split(stage.cmd)
            if not argv or argv[0] != "cctune":
                raise ValueError(f"{root / 'dvc.yaml'}: stage {stage.name} runs {stage.cmd!r}, not a cctune command")

            def rel(path) -> str:
                return Path(path).resolve().relative_to(root).as_posix()

            deps = tuple(rel(d.fs_path) for d in stage.deps if not hasattr(d, "params"))
            raw.append((stage.name, tuple(argv[1:]), deps, tuple(rel(o.fs_path) for o in stage.outs),
                        tuple(rel(o.fs_path) for o in stage.outs if o.use_cache)))
    produced = {out: name for name, _, _, outs, _ in raw for out in outs}
    stages = []
    for name, argv, deps, outs, cached in raw:
        upstream = {producer for out, producer in produced.items() if producer != name
                    for dep in deps if _inside(dep, out) or _inside(out, dep)}
        stages.append(PipelineStage(name, argv, deps, outs, tuple(sorted(upstream)), cached))
    return _topological(stages)


def _topological(stages: list[PipelineStage]) -> list[PipelineStage]:
    done: list[PipelineStage] = []
    names: set[str] = set()
    pending = list(stages)
    while pending:
        ready = [s for s in pending if set(s.upstream) <= names]
        if not ready:
            raise ValueError("dvc.yaml: the stages depend on each other in a cycle: "
                             + ", ".join(s.name for s in pending))
        for stage in ready:
            done.append(stage)
            names.add(stage.name)
            pending.remove(stage)
    return done


def methods_of(stages: list[PipelineStage]) -> dict[str, set[str]]:
    """The methods each stage serves: its own ``--method``, else those of the stages it reads
    (collect and fit serve cc; report serves all; base_model and prepare none)."""
    by_name: dict[str, set[str]] = {}
    for stage in stages:  # topological: upstream first
        inherited = set().union(*(by_name[u] for u in stage.upstream))
        by_name[stage.name] = {stage.method} if stage.method else inherited
    return by_name


def select(stages: list[PipelineStage], kinds: list[str], methods: list[str]) -> list[PipelineStage]:
    """The stages a run asked for: of the chosen kinds, serving at least one chosen method (or none)."""
    served = methods_of(stages)
    return [s for s in stages if s.kind in kinds and (not served[s.name] or served[s.name] & set(methods))]


def changed(project: str | Path, names: list[str]) -> dict[str, bool]:
    """``{stage: True}`` for each stage `dvc status` reports (changed deps, params, command or
    outputs, or never recorded): the stages `dvc repro` would run."""
    from dvc.repo import Repo

    if not names:
        return {}
    with project_lock(project), Repo(str(Path(project).resolve())) as repo:
        status = repo.status(targets=list(names))
    return {name: bool(status.get(name)) for name in names}


def stage_inputs(project: str | Path, names: list[str], strict: bool = True) -> dict[str, str]:
    """``{path: producing stage}``: the outputs of other stages that ``names`` read (what a node must
    pull before running them). ``strict=False`` skips names dvc.yaml does not have (e.g. an eval
    stage of a benchmark that only another params file lists)."""
    stages = {s.name: s for s in load_stages(project)}
    unknown = [name for name in names if name not in stages]
    if unknown and strict:
        raise ValueError(f"no stage {', '.join(unknown)} in dvc.yaml (stages: {', '.join(stages)})")
    wanted: dict[str, str] = {}
    for name in (n for n in names if n in stages):
        for other in stages.values():
            if other.name in names:
                continue
            for out in other.cached if other.name in stages[name].upstream else ():
                for dep in stages[name].deps:
                    if _inside(dep, out):        # a file inside another stage's output folder
                        wanted[dep] = other.name
                    elif _inside(out, dep):      # another stage's output inside a folder this stage reads
                        wanted[out] = other.name
    return wanted
