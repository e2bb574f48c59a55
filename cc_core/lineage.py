"""Lineage between stages: every artifact names the checkpoint it was made from.

    from cc_core.lineage import checkpoint_sha256, require_same_checkpoint
    h = checkpoint_sha256("models/cc")                          # content hash of the weights
    require_same_checkpoint("transform/transform.safetensors", recorded=meta["model_sha256"],
                            current=h, model_dir="models/cc", rerun="cctune collect && cctune fit")

A score's identity is the content hash of the items it was computed on (:func:`items_sha256`) and
of the scoring code and settings (:func:`scorer_sha256`): two scores are comparable only when both
are equal (the registry's champion rule).

A checkpoint's identity is the content hash of its ``*.safetensors`` files (names and bytes,
``cc_core.io.dir_sha256``): the base model's weights, or a trained model's weights plus its
Decision Maker. The activations, the Transform Matrix, every metrics file and every registry
version record it; a stage that reads an artifact made from another checkpoint refuses with
an error naming both hashes and the stage to re-run, instead of silently mixing them.

A base model directory carries a manifest of its weight files' sha256 (:data:`WEIGHTS_MANIFEST`,
written once by ``cctune base-model``): :func:`weights_sha256` takes a file's hash from it while the
file's size and mtime are as recorded and hashes the file again otherwise, so a resume compares the
base weights by content without reading gigabytes at every start.
"""

from __future__ import annotations

import hashlib
import json
import logging
import threading
from collections.abc import Iterable
from pathlib import Path

from cc_core.io import InputError, dir_sha256, file_sha256, read_json, write_json

log = logging.getLogger(__name__)
PATTERN = "*.safetensors"
WEIGHTS_MANIFEST = "cc_weights_sha256.json"  # {"files": {name: {"sha256", "size", "mtime_ns"}}}
_MEMO: dict[tuple, str] = {}
_MEMO_LOCK = threading.Lock()


class LineageError(InputError):
    """An artifact was made from another checkpoint than the one it is used with."""


def _stat_key(model_dir: Path) -> tuple:
    files = sorted(p for p in model_dir.rglob(PATTERN) if p.is_file())
    return (str(model_dir.resolve()),
            tuple((str(p.relative_to(model_dir)), p.stat().st_size, p.stat().st_mtime_ns) for p in files))


def checkpoint_sha256(model_dir: str | Path) -> str:
    """Content hash of a model directory's weights (memoised per process while the files are unchanged:
    hashing 16 GB of an 8B checkpoint takes tens of seconds, and several stages ask)."""
    model_dir = Path(model_dir)
    if not model_dir.is_dir():
        raise InputError(f"{model_dir}: no such model directory")
    key = _stat_key(model_dir)
    if not key[1]:
        raise InputError(f"{model_dir}: no *.safetensors weights in this model directory")
    with _MEMO_LOCK:
        cached = _MEMO.get(key)
    if cached is None:
        cached = dir_sha256(model_dir, PATTERN)
        with _MEMO_LOCK:
            _MEMO[key] = cached
    return cached


def short(digest: str | None) -> str:
    return f"{digest[:12]}…" if digest and digest != "none" else "none"


def require_same_checkpoint(artifact: str | Path, recorded: str | None, current: str, model_dir: str | Path,
                            rerun: str) -> None:
    """Refuse ``artifact`` unless it records ``current`` (the hash of ``model_dir``)."""
    if not recorded:
        raise LineageError(f"{artifact}: records no checkpoint hash, so it cannot be matched with {model_dir} "
                           f"(made by an older version?); re-run: {rerun}")
    if recorded != current:
        raise LineageError(f"{artifact}: made from checkpoint {short(recorded)} but {model_dir} is now "
                           f"{short(current)}; re-run: {rerun}")


def items_sha256(items: Iterable) -> str:
    """Content hash of benchmark items as evaluated (id, language, prompt, gold, English prompt), in
    order: an edited gold answer or prompt gives another hash, whatever file or hub it came from."""
    digest = hashlib.sha256()
    for item in items:
        digest.update(json.dumps([item.id, item.lang, item.prompt, item.gold, item.prompt_en], ensure_ascii=False,
                                 sort_keys=True, default=str).encode())
        digest.update(b"\n")
    return digest.hexdigest()


def combined_sha256(parts: dict[str, str]) -> str:
    """One hash of named hashes (e.g. every language's data hash of a benchmark), order-independent."""
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()


def scorer_sha256(source_files: Iterable[str | Path], **settings) -> str:
    """Content hash of the scoring code (its source files' bytes) and the settings that choose a
    scorer (protocol, choice scoring): a changed scorer makes old scores incomparable."""
    files = {Path(f).name: file_sha256(f) for f in source_files}
    return combined_sha256({"files": json.dumps(files, sort_keys=True),
                            "settings": json.dumps(settings, sort_keys=True, default=str)})


def _weight_files(model_dir: Path) -> list[Path]:
    return sorted(p for p in model_dir.glob(PATTERN) if p.is_file())


def _record(path: Path) -> dict:
    stat = path.stat()  # before hashing: a file changed while it is read gets another mtime, so it is hashed again
    return {"sha256": file_sha256(path), "size": stat.st_size, "mtime_ns": stat.st_mtime_ns}


def write_weights_manifest(model_dir: str | Path) -> dict[str, str]:
    """Hash every top-level ``*.safetensors`` of ``model_dir`` once and record it with its size and mtime."""
    model_dir = Path(model_dir)
    files = {path.name: _record(path) for path in _weight_files(model_dir)}
    write_json(model_dir / WEIGHTS_MANIFEST, {"files": files})
    return {name: entry["sha256"] for name, entry in files.items()}


def weight_records(model_dir: str | Path, known: dict | None = None) -> dict[str, dict]:
    """``{file name: {"sha256", "size", "mtime_ns"}}`` of the top-level ``*.safetensors`` of ``model_dir``. A
    file whose size and mtime are those recorded (in the manifest, or in ``known``: records saved by an
    earlier call, e.g. beside a training's checkpoints) takes the recorded hash; any other file (changed
    since, copied by ``dvc checkout``, or a directory without a manifest, written by an older
    ``cctune base-model``) is hashed now."""
    model_dir = Path(model_dir)
    manifest = model_dir / WEIGHTS_MANIFEST
    try:
        recorded = read_json(manifest).get("files", {}) if manifest.is_file() else {}
    except (InputError, AttributeError):
        recorded = {}  # an unreadable manifest proves nothing: hash
    if not recorded:
        log.info("%s: no readable %s (written by an older cctune base-model?): hashing its weight files",
                 model_dir, WEIGHTS_MANIFEST)
    records = {}
    for path in _weight_files(model_dir):
        stat = path.stat()
        candidates = [entry for entry in (recorded.get(path.name), (known or {}).get(path.name))
                      if isinstance(entry, dict) and entry.get("sha256")]
        same = [e for e in candidates if e.get("size") == stat.st_size and e.get("mtime_ns") == stat.st_mtime_ns]
        if same:
            records[path.name] = {"sha256": same[0]["sha256"], "size": stat.st_size, "mtime_ns": stat.st_mtime_ns}
        else:
            if candidates:
                log.info("%s changed since its hash was recorded (size or mtime): hashing it", path)
            records[path.name] = _record(path)
    return records


def weights_sha256(model_dir: str | Path, known: dict | None = None) -> dict[str, str]:
    """``{file name: sha256}`` of the weights of ``model_dir`` (:func:`weight_records`)."""
    return {name: entry["sha256"] for name, entry in weight_records(model_dir, known).items()}
