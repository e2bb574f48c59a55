"""What is wrong with an MLflow tracking store, in one line: locked, read-only, unreachable.

    reason = sqlite_read_only(uri) or sqlite_busy(uri)      # None: the store can take a write now
    with store_errors(uri, required_by="cctune register"):  # a store failure → TrackingUnavailableError
        client.create_model_version(...)

``failure_reason(err)`` names the cause of a store failure (a read-only file, a lock), not the notes
SQLAlchemy adds around it ("(raised as a result of Query-invoked autoflush...)").
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
from collections.abc import Iterator
from pathlib import Path

from cc_core.redact import redact, strip_userinfo

LOCK_WAIT_S = 3.0  # how long a SQLite store locked by another writer is waited for


class TrackingUnavailableError(RuntimeError):
    """The MLflow store cannot be reached or written (the message names it)."""

    user_error = True  # cctune prints it as one line (cc_core.cli.is_user_error)


def sqlite_path(uri: str) -> str | None:
    """The file of a ``sqlite:///relative.db`` / ``sqlite:////abs.db`` URI (None: not SQLite, or in memory)."""
    if not uri.startswith("sqlite:///"):
        return None
    path = uri[len("sqlite:///"):].split("?", 1)[0]
    return path or None


def sqlite_busy(uri: str, wait: float = LOCK_WAIT_S) -> str | None:
    """Why a SQLite store cannot take a write now (e.g. ``database is locked`` after ``wait`` s), or None.

    MLflow itself waits about 12 s (SQLite's 5 s busy timeout, then engine retries) and then
    raises a raw ``OperationalError``; this probe takes a write lock and releases it at once."""
    path = sqlite_path(uri)
    if path is None or not Path(path).is_file():
        return None  # nothing to lock yet: MLflow creates the file
    try:
        con = sqlite3.connect(path, timeout=wait, isolation_level=None)
        try:
            con.execute("BEGIN IMMEDIATE")
            con.execute("ROLLBACK")
        finally:
            con.close()
    except sqlite3.Error as err:
        reason = str(err)
        return f"{reason} (another process holds it; waited {wait:g} s)" if "locked" in reason else reason
    return None


def sqlite_read_only(uri: str) -> str | None:
    """Why a SQLite store cannot be written (a read-only file, or a folder where SQLite cannot create its
    journal), or None. MLflow would find out at its first write, logging tracebacks whose stated reason
    is SQLAlchemy's "(raised as a result of Query-invoked autoflush...)"."""
    path = sqlite_path(uri)
    if path is None or not Path(path).is_file():
        return None
    folder = Path(path).resolve().parent
    if not os.access(path, os.W_OK):
        return f"the store is read-only (no write access to {path})"
    if not os.access(folder, os.W_OK | os.X_OK):
        return f"the store is read-only (no write access to its folder {folder}, where SQLite writes its journal)"
    return None


def failure_reason(err: BaseException) -> str:
    """One line saying why the store failed: the underlying cause, not SQLAlchemy's notes about it."""
    chain, seen = [], set()
    while err is not None and id(err) not in seen:
        seen.add(id(err))
        chain.append(err)
        err = err.__cause__ or err.__context__
    if any("readonly database" in str(e) for e in chain):
        return "the store is read-only (attempt to write a readonly database)"
    first = chain[0]
    lines = [line.strip() for line in redact(str(first)).splitlines()
             if line.strip() and not line.strip().startswith("(raised as a result of")]
    text = lines[0].removeprefix("(sqlite3.OperationalError) ") if lines else ""
    return f"{type(first).__name__}: {text[:300]}" if text else type(first).__name__


def unavailable_error(uri: str, reason: str, policy: str = "fail",
                      required_by: str | None = None) -> TrackingUnavailableError:
    why = f"{required_by} needs it" if required_by else f"tracking.on_unavailable={policy}"
    return TrackingUnavailableError(f"MLflow tracking store {strip_userinfo(uri)} is unavailable: {reason} ({why})")


@contextlib.contextmanager
def store_errors(uri: str, policy: str = "fail", required_by: str | None = None) -> Iterator[None]:
    """Turn a failure of the tracking store (locked SQLite file, server gone, ...) inside the body
    into a one-line :class:`TrackingUnavailableError` naming the store."""
    try:
        yield
    except TrackingUnavailableError:
        raise
    except Exception as err:  # noqa: BLE001 - which exception a store raises depends on the store
        if not is_store_failure(err):
            raise
        raise unavailable_error(uri, failure_reason(err), policy, required_by) from err


def is_store_failure(err: BaseException) -> bool:
    """Errors of the store itself (database locked or unreachable, connection refused), as opposed
    to a request the store refused on its merits (an unknown model name, a bad value)."""
    seen: set[int] = set()
    while err is not None and id(err) not in seen:
        seen.add(id(err))
        module = type(err).__module__
        if module.startswith(("sqlalchemy", "sqlite3", "requests", "urllib3")) or isinstance(err, (sqlite3.Error,
                                                                                                   ConnectionError)):
            return True
        text = str(err)
        if any(marker in text for marker in ("database is locked", "OperationalError", "unable to open database",
                                              "Max retries exceeded", "Connection refused")):
            return True
        err = err.__cause__ or err.__context__
    return False
