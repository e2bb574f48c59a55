"""Stage artifacts through a DVC remote, so nodes share no working tree.

    inputs = stage_graph.stage_inputs(project, ["eval_cc@XNLI"])   # {"models/cc": "train_cc", "transform": "fit"}
    pull(project, list(inputs), remote="cluster")          # before a stage runs on a node
    commit(project, ["fit"]); push(project, ["fit"], "cluster")   # after it produced its outputs

A stage's *inputs* are its dependencies that other stages produce and DVC caches (a model
directory, the Transform Matrix): exactly what a node must fetch before running it. Source
files and the bundled data come with the git checkout. Pushing a stage sends the cached
outputs recorded for it in ``dvc.lock``; ``dvc commit`` records them first, the same entry
``dvc repro`` would write.

A node that runs a stage for another node (an evaluation job) does not have that node's
``dvc.lock``: it receives the entries of the stages it needs (:func:`lock_entries`) and
writes them into its own ``dvc.lock`` (:func:`adopt_lock_entries`) before pulling, so it
checks out exactly the versions the pipeline run produced.

Every DVC command of one checkout runs under a file lock (several jobs may share a
checkout on one node; DVC itself refuses a second concurrent command in a repository), and
every failure names the remote, its URL and DVC's own error.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import yaml

from cc_core.redact import redact, strip_userinfo
from flows.s3_errors import s3_reason


class DvcError(RuntimeError):
    """A DVC command failed; the message names the command, the remote and DVC's error."""


@contextlib.contextmanager
def project_lock(project: str | Path) -> Iterator[None]:
    """Serialise DVC commands on one checkout (released by the kernel if the holder dies)."""
    lock_dir = Path(project) / ".dvc" / "tmp"
    lock_dir.mkdir(parents=True, exist_ok=True)
    with open(lock_dir / "cc-tuning-flows.lock", "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env.setdefault("DVC_NO_ANALYTICS", "1")
    # The venv's bin first: a stage's cmd (cctune) is never run here, but DVC spawns git.
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    return env


def run_dvc(project: str | Path, *args: str, timeout: float | None = None,
            env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """``dvc ARGS`` in ``project`` under the checkout's lock (no exception on failure); ``env`` adds
    variables to the environment."""
    with project_lock(project):
        return subprocess.run([sys.executable, "-m", "dvc", *args], cwd=project, env={**_env(), **(env or {})},
                              capture_output=True, text=True, timeout=timeout)


def error_text(out: subprocess.CompletedProcess) -> str:
    """DVC's own words: its WARNING lines, the ERROR line and what it lists after it (or the tail)."""
    text = (out.stderr or "") + (out.stdout or "")
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    first = next((i for i, line in enumerate(lines) if line.startswith("ERROR")), None)
    if first is None:
        return " | ".join(lines[-5:]) or f"exit status {out.returncode}"
    warnings = [line for line in lines[:first] if line.startswith("WARNING")]
    return " | ".join(warnings + lines[first:first + 6])


def probe(url: str, timeout: float = 5.0) -> str | None:
    """Why ``url`` cannot be reached (a missing folder, a refused connection), or None if it answers
    or cannot be checked from here. DVC reports an unreachable HTTP remote as missing files."""
    from urllib.parse import urlparse

    parsed = urlparse(url)
    if parsed.scheme in ("", "file") or len(parsed.scheme) == 1:  # a path (or a Windows drive letter)
        path = Path(parsed.path if parsed.scheme == "file" else url)
        return None if path.is_dir() else f"{path} is not a directory"
    if parsed.scheme in ("http", "https") and parsed.hostname:
        import socket

        port = parsed.port or (443 if parsed.scheme == "https" else 80)
        try:
            with socket.create_connection((parsed.hostname, port), timeout=timeout):
                return None
        except OSError as err:
            return f"cannot connect to {parsed.hostname}:{port}: {err.strerror or err}"
    return None


def remote_url(project: str | Path, remote: str) -> str:
    """The URL configured for ``remote`` (``dvc remote list``), or a note that it is not configured."""
    out = run_dvc(project, "remote", "list")
    for line in out.stdout.splitlines():
        words = line.split()
        if words and words[0] == remote:
            return words[1] if len(words) > 1 else "(no url)"
    return "not configured in .dvc/config"


def _remote_failure(project, verb: str, remote: str, what: str, out: subprocess.CompletedProcess) -> DvcError:
    direction = "from" if verb == "pull" else "to"
    url = remote_url(project, remote)
    error = error_text(out)
    reason = probe(url)
    hint = f" [the remote cannot be reached: {reason}]" if reason else ""
    if not hint and (s3 := s3_reason(url, error)):  # DVC says only "Forbidden (403)": name the variables
        hint = f" [{s3}]"
    # the URL and DVC's own words may carry a login: neither reaches a message
    return DvcError(f"{what}: dvc {verb} {direction} remote '{remote}' ({strip_userinfo(url)}) failed: "
                    f"{redact(error)}{hint}")


def pull(project: str | Path, targets: list[str], remote: str, what: str = "stage") -> list[str]:
    """Fetch ``targets`` (DVC-tracked paths) from ``remote`` and check them out.

    DVC fetches into the cache first and checks out only after every download succeeded,
    so a remote that cannot be reached leaves the workspace as it was."""
    if not targets:
        return []
    root = Path(project).resolve()
    absent = {folder for target in targets for folder in [root / target, *(root / target).parents]
              if folder != root and root in folder.parents and not folder.exists()}
    out = run_dvc(project, "pull", "--remote", remote, *targets)
    if out.returncode:
        for folder in sorted(absent, key=lambda f: len(f.parts), reverse=True):  # DVC made them for the checkout
            with contextlib.suppress(OSError):
                folder.rmdir()  # only if still empty
        raise _remote_failure(project, "pull", remote, what, out)
    return list(targets)


def commit(project: str | Path, stages: list[str]) -> None:
    """Record ``stages``' current deps, params and outputs in dvc.lock (and their outputs in the cache)."""
    if not stages:
        return
    out = run_dvc(project, "commit", "--force", *stages)
    if out.returncode:
        raise DvcError(f"dvc commit {' '.join(stages)} failed: {error_text(out)}")


def push(project: str | Path, stages: list[str], remote: str, what: str = "stage") -> None:
    """Send the cached outputs recorded for ``stages`` in dvc.lock to ``remote``."""
    if not stages:
        return
    out = run_dvc(project, "push", "--remote", remote, *stages)
    if out.returncode:
        raise _remote_failure(project, "push", remote, what, out)


def _read_lock(project: str | Path) -> dict[str, Any]:
    path = Path(project) / "dvc.lock"
    if not path.is_file():
        return {"schema": "2.0", "stages": {}}
    data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    data.setdefault("schema", "2.0")
    data.setdefault("stages", {})
    return data


def recorded_stages(project: str | Path) -> set[str]:
    """The stages dvc.lock has an entry for."""
    return set(_read_lock(project)["stages"])


def lock_entries(project: str | Path, stages: list[str]) -> dict[str, Any]:
    """``stages``' entries of dvc.lock (what another node needs to pull their outputs)."""
    recorded = _read_lock(project)["stages"]
    missing = [name for name in stages if name not in recorded]
    if missing:
        raise DvcError(f"{', '.join(missing)} not recorded in {Path(project) / 'dvc.lock'}: run "
                       f"{'that stage' if len(missing) == 1 else 'those stages'} first (their outputs are what "
                       "other nodes pull)")
    return {name: recorded[name] for name in stages}


def adopt_lock_entries(project: str | Path, entries: dict[str, Any]) -> None:
    """Write ``entries`` (from another node's dvc.lock) into this checkout's dvc.lock, atomically."""
    if not entries:
        return
    with project_lock(project):
        data = _read_lock(project)
        data["stages"].update(entries)
        path = Path(project) / "dvc.lock"
        fd, tmp = tempfile.mkstemp(prefix=".dvc.lock.tmp-", dir=path.parent)
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            yaml.safe_dump(data, handle, sort_keys=False, allow_unicode=True)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
