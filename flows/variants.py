"""Where a pipeline run runs: the workspace (params.yaml as is), or, for a variant, a DVC experiment.

A run with another params file or with overrides runs in a scratch git worktree of the project
(``.dvc/tmp/variants/NAME``: HEAD plus the uncommitted changes) that shares the DVC cache (stages
whose inputs did not change are checked out, not run again), with the variant's params as its
params.yaml, and is saved with ``dvc exp save -n NAME`` (``dvc exp show`` lists it, ``dvc exp
apply NAME`` brings it into the workspace). The workspace's outputs and dvc.lock are never touched.

    with variant_workspace(project, "params.tiny.yaml", ["eval.limit=2"], "tiny-limit2") as root:
        ...   # run the stages in root
"""

from __future__ import annotations

import contextlib
import fcntl
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import yaml

from cc_core.config import load_params
from cc_core.redact import redact
from flows import dvc_sync
from flows.stage_graph import RECORDED_PARAMS, load_stages

@contextlib.contextmanager
def exclusive(workspace: Path) -> Iterator[None]:
    """One pipeline run per workspace at a time (two would interleave stages and dvc.lock entries)."""
    lock_dir = workspace / ".dvc" / "tmp"
    lock_dir.mkdir(parents=True, exist_ok=True)
    with open(lock_dir / "cc-tuning-pipeline.lock", "w") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise RuntimeError(f"{workspace}: another cc-tuning pipeline run is using this workspace; wait for it "
                               "or run a variant (another params file or overrides: a DVC experiment)") from None
        yield


def is_variant(params_file: str, overrides: list[str]) -> bool:
    """A run of anything but params.yaml as is: dvc.lock records params.yaml."""
    return bool(overrides) or Path(params_file).as_posix() != RECORDED_PARAMS


def _git(project: Path, *args: str) -> str:
    out = subprocess.run(["git", *args], cwd=project, capture_output=True, text=True)
    if out.returncode:
        raise RuntimeError(f"git {' '.join(args)} in {project} failed: {out.stderr.strip() or out.stdout.strip()}")
    return out.stdout


def _absolute_tracking(data: dict, project: Path) -> dict:
    """A relative SQLite store or artifact folder points at the project's, not the worktree's."""
    tracking = data.setdefault("tracking", {})
    uri = tracking.get("uri", "sqlite:///mlflow.db")
    if uri.startswith("sqlite:///") and not uri.startswith("sqlite:////"):
        tracking["uri"] = f"sqlite:///{project / uri.removeprefix('sqlite:///')}"
    location = tracking.get("artifact_location", "mlartifacts")
    if location and "://" not in location and not Path(location).is_absolute():
        tracking["artifact_location"] = str(project / location)
    return data


@contextlib.contextmanager
def variant_workspace(project: Path, params_file: str, overrides: list[str], name: str) -> Iterator[Path]:
    """A scratch worktree of ``project`` at HEAD plus its uncommitted changes, sharing the DVC cache,
    with ``params_file`` + ``overrides`` as its params.yaml; saved as DVC experiment ``name`` when
    the body succeeds, removed either way."""
    params = load_params(project / params_file, overrides)  # a bad file or override fails here, named
    root = project / ".dvc" / "tmp" / "variants" / name
    if root.exists():
        raise RuntimeError(f"{root} exists: a variant run named {name!r} is running or was killed "
                           f"(remove it with: git worktree remove --force {root})")
    _git(project, "worktree", "add", "--detach", str(root), "HEAD")
    try:
        changes = _git(project, "ls-files", "-z", "--modified", "--others", "--exclude-standard").split("\0")
        for rel in filter(None, changes):
            source = project / rel
            if source.is_file() and not Path(rel).parts[0] == ".dvc":
                (root / rel).parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(source, root / rel)
        for rel in filter(None, _git(project, "ls-files", "-z", "--deleted").split("\0")):
            (root / rel).unlink(missing_ok=True)
        data = _absolute_tracking(params.model_dump(mode="json"), project)
        (root / RECORDED_PARAMS).write_text(
            f"# variant {name}: {params_file}" + redact("".join(f" --set {o}" for o in overrides)) + "\n"
            + yaml.safe_dump(data, sort_keys=False, allow_unicode=True), encoding="utf-8")
        cache = (project / ".dvc" / "cache").resolve()
        for args in (["cache", "dir", "--local", str(cache)], ["config", "--local", "cache.type", "reflink,hardlink,copy"],
                     ["checkout", "--allow-missing"]):
            out = dvc_sync.run_dvc(root, *args)
            if out.returncode and args[0] != "checkout":  # checkout: what is not cached simply runs
                raise dvc_sync.DvcError(f"dvc {' '.join(args)} in {root}: {dvc_sync.error_text(out)}")
        yield root
        env = {"GIT_AUTHOR_NAME": "cc-tuning", "GIT_AUTHOR_EMAIL": "cc-tuning@localhost",
               "GIT_COMMITTER_NAME": "cc-tuning", "GIT_COMMITTER_EMAIL": "cc-tuning@localhost"}
        saved = dvc_sync.run_dvc(root, "exp", "save", "--force", "-n", name, *_stages_with_outputs(root), env=env)
        if saved.returncode:
            raise dvc_sync.DvcError(f"dvc exp save -n {name} failed: {dvc_sync.error_text(saved)}")
    finally:
        subprocess.run(["git", "worktree", "remove", "--force", str(root)], cwd=project, capture_output=True)
        shutil.rmtree(root, ignore_errors=True)
        subprocess.run(["git", "worktree", "prune"], cwd=project, capture_output=True)


def _stages_with_outputs(root: Path) -> list[str]:
    """The stages ``dvc exp save`` records: all of them (no target) when every output exists, else
    those whose outputs do (a run of some stages, whose predecessors are neither cached nor run,
    is still saved: DVC's commit of every stage stops at the first missing output)."""
    stages = load_stages(root)
    complete = [stage.name for stage in stages if all((root / out).exists() for out in stage.outs)]
    return [] if len(complete) == len(stages) else complete
