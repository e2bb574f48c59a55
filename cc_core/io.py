"""Atomic outputs and strict JSON Lines input.

Every stage writes through these helpers so that a killed stage never leaves a
half-written output behind: files and directories are built under a temporary name
next to the target and renamed into place at the end.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any


class InputError(ValueError):
    """Bad input data; the message names the file (and line)."""


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, owned by someone else
        return True
    return True


def clean_stale_temps(path: str | Path) -> list[Path]:
    """Remove what killed writers of ``path`` left beside it (``.<name>.tmp-<pid>-*`` and
    ``.<name>.old-<pid>``), so a rerun of a killed stage starts clean. Temps of a writer that is
    still alive (a concurrent process) are kept; so are names this module did not make."""
    path = Path(path)
    removed = []
    if not path.parent.is_dir():
        return removed
    for kind in ("tmp", "old"):
        for leftover in path.parent.glob(f".{glob_escape(path.name)}.{kind}-*"):
            pid_text = leftover.name[len(f".{path.name}.{kind}-"):].split("-", 1)[0]
            if pid_text.isdigit() and (int(pid_text) == os.getpid() or _pid_alive(int(pid_text))):
                continue
            if leftover.is_dir() and not leftover.is_symlink():
                shutil.rmtree(leftover, ignore_errors=True)
            else:
                leftover.unlink(missing_ok=True)
            removed.append(leftover)
    return removed


def glob_escape(name: str) -> str:
    return "".join(f"[{ch}]" if ch in "*?[" else ch for ch in name)


def _tmp_prefix(path: Path) -> str:
    # The writer's pid in the name tells a leftover of a killed run from a live concurrent writer.
    return f".{path.name}.tmp-{os.getpid()}-"


def _tmp_sibling(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    clean_stale_temps(path)
    tmp = Path(tempfile.mkdtemp(prefix=_tmp_prefix(path), dir=path.parent))
    tmp.chmod(0o777 & ~_umask())  # mkdtemp makes 0700; outputs are normal directories
    return tmp


def replace_path(tmp: Path, path: Path) -> None:
    """Move ``tmp`` to ``path``, replacing whatever is there (a directory is renamed aside first,
    so ``path`` is never missing for longer than two renames)."""
    if path.is_dir() and not path.is_symlink():
        old = path.with_name(f".{path.name}.old-{os.getpid()}")
        os.replace(path, old)
        os.replace(tmp, path)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(tmp, path)


@contextlib.contextmanager
def atomic_dir(path: str | Path) -> Iterator[Path]:
    """Yield a temp directory that becomes ``path`` only if the body finishes."""
    path = Path(path)
    tmp = _tmp_sibling(path)
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    replace_path(tmp, path)


@contextlib.contextmanager
def atomic_file(path: str | Path, mode: str = "w") -> Iterator[Any]:
    """Open a temp file that replaces ``path`` only if the body finishes."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    clean_stale_temps(path)
    fd, tmp_name = tempfile.mkstemp(prefix=_tmp_prefix(path), dir=path.parent)
    tmp = Path(tmp_name)
    try:
        with os.fdopen(fd, mode, encoding=None if "b" in mode else "utf-8") as handle:
            yield handle
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    tmp.chmod(0o666 & ~_umask())  # mkstemp makes 0600; outputs are normal files
    os.replace(tmp, path)


def write_json(path: str | Path, data: Any) -> None:
    with atomic_file(path) as handle:
        json.dump(data, handle, ensure_ascii=False, indent=2, sort_keys=False)
        handle.write("\n")


def write_jsonl(path: str | Path, rows: Iterable[Any]) -> int:
    count = 0
    with atomic_file(path) as handle:
        for row in rows:
            handle.write(json.dumps(row, ensure_ascii=False) + "\n")
            count += 1
    return count


def read_json(path: str | Path) -> Any:
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: file not found")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError as err:
        raise InputError(f"{path}: not valid UTF-8 ({err.reason} at byte {err.start})") from None
    except json.JSONDecodeError as err:
        raise InputError(f"{path}:{err.lineno}: malformed JSON: {err.msg}") from None


def iter_jsonl(path: str | Path, skip_blank: bool = True) -> Iterator[tuple[int, Any]]:
    """Yield ``(line_number, value)``; malformed JSON or bad UTF-8 raises naming ``file:line``."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: file not found")
    with path.open("rb") as handle:
        for number, raw in enumerate(handle, start=1):
            try:
                text = raw.decode("utf-8")
            except UnicodeDecodeError as err:
                raise InputError(f"{path}:{number}: not valid UTF-8 ({err.reason})") from None
            if not text.strip():
                if skip_blank:
                    continue
                raise InputError(f"{path}:{number}: blank line")
            try:
                yield number, json.loads(text)
            except json.JSONDecodeError as err:
                raise InputError(f"{path}:{number}: malformed JSON: {err.msg}") from None


def read_safetensors(path: str | Path, rerun: str) -> tuple[dict[str, Any], dict[str, str]]:
    """(tensors, metadata) of a safetensors file; a truncated or damaged one is an InputError naming the
    file and ``rerun`` (the stage that rewrites it), not safetensors' own error without the file's name."""
    # why: safetensors' torch loader imports torch (seconds); cctune imports this module at start-up
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as handle:
            return {key: handle.get_tensor(key) for key in handle.keys()}, dict(handle.metadata() or {})
    except Exception as err:  # noqa: BLE001 - SafetensorError, OSError: a file that cannot be read as safetensors
        reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise InputError(f"{path}: not a readable safetensors file (truncated or damaged: {reason[:200]}); "
                         f"re-run: {rerun}") from None


def file_sha256(path: str | Path, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with Path(path).open("rb") as handle:
        while block := handle.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def dir_sha256(path: str | Path, pattern: str = "*") -> str:
    """Content hash of a directory: file names and bytes, in sorted order."""
    digest = hashlib.sha256()
    root = Path(path)
    for file in sorted(p for p in root.rglob(pattern) if p.is_file()):
        digest.update(str(file.relative_to(root)).encode())
        digest.update(file_sha256(file).encode())
    return digest.hexdigest()


def project_path(path: str | Path, root: str | Path | None = None) -> str:
    """``path`` as recorded in tags and side files: POSIX and relative to the project (``root``, the
    working directory the stages run in) when it lies inside it, else as given (never the checkout's
    absolute location, which means nothing on another machine)."""
    path = Path(path)
    base = Path(root or Path.cwd()).resolve()
    try:
        return path.resolve().relative_to(base).as_posix() or "."
    except ValueError:
        return path.as_posix()
