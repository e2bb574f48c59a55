"""Resumable Trainer checkpoints in ``models/.<method>-checkpoints/``: what a resume must match,
when a checkpoint counts, which ones are kept, and what a failed write reports.

    fingerprint = make_fingerprint(params, "cc", data_file, base_dir)
    resume_from = resume_point(work_dir, fingerprint)       # newest complete match, or None
    rotate_checkpoints(work_dir, keep=2)
    with disk_errors(lambda: work_dir, partial=lambda: folder): ...   # a full disk → CheckpointWriteError

- Fingerprint (``cc_fingerprint.json``): train params, arch map, data hash, the base model's small
  files and its weight files by content (the weights through the manifest ``cctune base-model`` wrote,
  or the hashes the previous start saved in ``cc_base_weights.json``; a file whose size or mtime matches
  neither is hashed again: ``lineage.weight_records``). ``--resume`` continues only from a match.
- Completion marker (``cc_checkpoint_complete.json``): written into ``checkpoint-N/`` after every
  rank saved everything; a checkpoint without it was cut short and is skipped (and removed) on resume.
- Rotation: the newest ``train.save_total_limit`` complete checkpoints are kept; the only complete
  checkpoint is never deleted for a newer incomplete one.
- Counters (``cc_counters-rank<r>.json``): each rank's token and layer-choice counts, saved first,
  so a resumed run's tokens/s and histogram cover every step.
"""

from __future__ import annotations

import contextlib
import errno
import json
import logging
import shutil
from pathlib import Path
from typing import Any

from cc_core.config import Params
from cc_core.io import file_sha256, read_json, write_json
from cc_core.lineage import WEIGHTS_MANIFEST, weight_records

log = logging.getLogger(__name__)
FINGERPRINT = "cc_fingerprint.json"
COUNTERS = "cc_counters-rank{rank}.json"  # per-rank token / layer-choice counters saved with each checkpoint
# Written into checkpoint-N/ after every rank has saved everything: a checkpoint without it was cut
# short (a kill or a full disk during the save) and is never resumed from.
COMPLETE = "cc_checkpoint_complete.json"
# The base weights' sha256 with the size and mtime they were hashed at: a resume after `dvc checkout` copied
# the base model (new mtimes, so the base model's own manifest no longer vouches) hashes it once, not each start.
BASE_WEIGHTS = "cc_base_weights.json"
_DISK_FULL_SIGNS = ("No space left", "inline_container", "file write failed", "Disk quota exceeded", "os error 28",
                    "os error 122")


class CheckpointWriteError(OSError):
    """Saving a checkpoint or the final model failed (typically a full disk); names the path."""


def base_weights(base_dir: Path, work_dir: Path | None = None) -> dict[str, dict]:
    """The base weights' records (``lineage.weight_records``): hashes from the base model's manifest, or from
    ``work_dir/cc_base_weights.json`` (saved by the previous start), for files whose size and mtime match."""
    saved = work_dir / BASE_WEIGHTS if work_dir is not None else None
    try:
        known = read_json(saved) if saved is not None and saved.is_file() else {}
    except ValueError:  # an unreadable record proves nothing: hash
        known = {}
    return weight_records(base_dir, known if isinstance(known, dict) else {})


def make_fingerprint(params: Params, method: str, data_file: Path, base_dir: Path,
                     weights: dict[str, dict] | None = None) -> dict[str, Any]:
    """What a resumable checkpoint must match: params that shape training, the data, the base model
    (its small files and its weights by content: ``weights``, default ``base_weights(base_dir)``, takes each
    hash from the manifest written by ``cctune base-model`` while the file's size and mtime are unchanged,
    so no start re-reads many GB, yet same-size edited weights are seen). The manifest itself is not
    compared: it records mtimes, which a copy or ``dvc checkout`` changes without changing the weights."""
    small = {p.name: file_sha256(p) for p in sorted(base_dir.iterdir())
             if p.is_file() and p.suffix != ".safetensors" and p.name != WEIGHTS_MANIFEST
             and p.stat().st_size < 64 << 20}
    weights = base_weights(base_dir) if weights is None else weights
    return {"method": method, "train_params": params.section_hash("train"), "arch_map": str(params.model.arch_map),
            "anchor": params.model.anchor,
            "data_sha256": file_sha256(data_file), "base_files_sha256": small,
            "base_weights_sha256": {name: entry["sha256"] for name, entry in weights.items()}}


def step_of(checkpoint: Path | None) -> int | None:
    """The optimizer step of a ``checkpoint-N`` folder (None for None)."""
    return int(checkpoint.name.rsplit("-", 1)[-1]) if checkpoint else None


def list_checkpoints(work_dir: Path) -> list[tuple[int, Path, bool]]:
    """(step, folder, complete) of every ``checkpoint-N`` folder, oldest first."""
    found = []
    for folder in work_dir.glob("checkpoint-*") if work_dir.is_dir() else []:
        step = folder.name.rsplit("-", 1)[-1]
        if folder.is_dir() and step.isdigit():
            found.append((int(step), folder, (folder / COMPLETE).is_file()))
    return sorted(found)


def mark_incomplete(folder: Path) -> None:
    """A checkpoint being (re-)saved: incomplete until ``mark_complete``."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / COMPLETE).unlink(missing_ok=True)


def mark_complete(folder: Path, step: int) -> None:
    write_json(folder / COMPLETE, {"step": step})


def rotate_checkpoints(work_dir: Path, keep: int | None) -> None:
    """Keep the newest ``keep`` complete checkpoints; an incomplete one older than the newest complete
    one is a leftover and goes too. Never deletes the only complete checkpoint for a newer incomplete one."""
    checkpoints = list_checkpoints(work_dir)
    complete = [c for c in checkpoints if c[2]]
    if not complete:
        return
    newest = complete[-1][0]
    doomed = complete[:-keep] if keep else []
    doomed += [c for c in checkpoints if not c[2] and c[0] < newest]
    for _, folder, _ in doomed:
        shutil.rmtree(folder, ignore_errors=True)


def resume_point(work_dir: Path, fingerprint: dict[str, Any]) -> Path | None:
    """The newest complete Trainer checkpoint, if it was made with the same params, data and base model.
    Incomplete checkpoints (cut short by a kill or a full disk) are named, skipped and removed."""
    if not work_dir.is_dir():
        log.info("no checkpoint to resume from in %s: starting fresh", work_dir)
        return None
    saved = work_dir / FINGERPRINT
    try:
        same = json.loads(saved.read_text()) == fingerprint if saved.is_file() else True
    except (json.JSONDecodeError, UnicodeDecodeError):
        same = False
    if not same:
        log.warning("checkpoints in %s were made with other params/data: starting fresh", work_dir)
        return None
    checkpoints = list_checkpoints(work_dir)
    complete = [folder for _, folder, done in checkpoints if done]
    for _, folder, done in checkpoints:
        if not done:
            log.warning("skipping incomplete checkpoint %s (its save was cut short); removing it", folder)
            shutil.rmtree(folder, ignore_errors=True)
    if not complete:
        log.info("no complete checkpoint in %s: starting fresh", work_dir)
        return None
    log.info("resuming from %s, the newest complete checkpoint", complete[-1])
    return complete[-1]


def write_counters(folder: Path, rank: int, counters: dict[str, Any]) -> None:
    write_json(folder / COUNTERS.format(rank=rank), counters)


def read_counters(checkpoint: Path, rank: int) -> dict[str, Any] | None:
    """The counters this rank saved with ``checkpoint`` (None: saved without them)."""
    path = checkpoint / COUNTERS.format(rank=rank)
    return read_json(path) if path.is_file() else None


def is_disk_full(err: BaseException) -> bool:
    """A write that failed for want of space, whichever library raised it: ENOSPC/EDQUOT, torch's
    ``[enforce fail at inline_container.cc]``, or the tokenizers library's plain ``Exception: No space left
    on device (os error 28)`` (Rust's io::Error, no errno attribute); causes and contexts are followed."""
    seen: set[int] = set()
    while err is not None and id(err) not in seen:
        seen.add(id(err))
        text = str(err)
        if getattr(err, "errno", None) in (errno.ENOSPC, errno.EDQUOT) or any(s in text for s in _DISK_FULL_SIGNS):
            return True
        err = err.__cause__ or err.__context__
    return False


def remove_partial(folder: Path | None) -> bool:
    """Remove a folder whose write was cut short (a checkpoint without its completion marker, or the final
    model's ``.partial`` directory): it holds no usable state, and on a full disk its space is needed."""
    if folder is None or not folder.is_dir() or (folder / COMPLETE).is_file():
        return False
    shutil.rmtree(folder, ignore_errors=True)
    return not folder.exists()


@contextlib.contextmanager
def disk_errors(where, partial=None):
    """A failed write (full disk) becomes one line naming the folder being written (``where()``), whatever
    library raised it; the incomplete folder (``partial()``, e.g. the checkpoint being saved) is removed."""
    try:
        yield
    except Exception as err:  # noqa: BLE001 - torch raises RuntimeError, tokenizers a plain Exception
        if not is_disk_full(err):
            raise
        text = str(err).strip()
        first = text.splitlines()[0] if text else type(err).__name__
        removed = remove_partial(partial() if partial else None)
        raise CheckpointWriteError(f"{where()}: writing failed (disk full?): {first[:200]}"
                                   + ("; the incomplete folder was removed" if removed else "")) from None
