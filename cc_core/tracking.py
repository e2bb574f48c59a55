"""MLflow tracking: one run per training, metrics from later stages into that run.

Default store: ``sqlite:///mlflow.db`` plus the ``mlartifacts/`` folder (see params
``tracking.*``; ``MLFLOW_TRACKING_URI`` overrides). When the store cannot be used (a server
that is down, a SQLite file locked by another writer for longer than ``LOCK_WAIT_S``, any
failure while creating the client, finding or creating the experiment, or creating/reopening
the run), ``tracking.on_unavailable`` decides: ``skip`` (run anyway, one warning naming the
store and why) or ``fail`` (a one-line :class:`TrackingUnavailableError` naming the store).
With ``skip``, a store that goes away in the middle of a run only ends the tracking, not the run.

    with Tracker(params.tracking).run("train-cc", params=params.flat()) as run:
        run.log_metrics({"loss": 1.2}, step=1)
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlparse
from urllib.request import urlopen

from cc_core.config import TrackingParams
from cc_core.io import write_json
from cc_core.redact import redact, strip_userinfo
# The store's failure modes live in tracking_store; named here too, where stages and tests have always found them.
from cc_core.tracking_store import (LOCK_WAIT_S, TrackingUnavailableError, failure_reason,  # noqa: F401
                                    is_store_failure, sqlite_busy, sqlite_path, sqlite_read_only, store_errors,
                                    unavailable_error)

log = logging.getLogger(__name__)
RUN_FILE = "mlflow_run.json"
QUIET_URL = "MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT"


def tracking_uri(params: TrackingParams) -> str:
    """The store to connect to, credentials included: show or save it only through ``strip_userinfo``."""
    return os.environ.get("MLFLOW_TRACKING_URI") or params.uri


@contextlib.contextmanager
def fluent_tracking_uri(uri: str) -> Iterator[None]:
    """mlflow's fluent API (``start_run``, ``log_model``) bound to ``uri`` for the body only.
    ``mlflow.set_tracking_uri`` also exports ``MLFLOW_TRACKING_URI`` to this process's environment,
    which ``tracking_uri`` honours: left set, it would send every later run of this process (a flow,
    a test) to this store. Both are restored on exit."""
    # why: mlflow takes seconds to import; cctune imports this module at start-up
    import mlflow
    from mlflow.tracking._tracking_service import utils as mlflow_uri

    previous_env = os.environ.get("MLFLOW_TRACKING_URI")
    previous = getattr(mlflow_uri, "_tracking_uri", previous_env)  # None: mlflow's default
    quiet = os.environ.get(QUIET_URL)
    if strip_userinfo(uri) != uri:  # the fluent API prints "View run ... at: <uri>/#/..." when a run ends
        os.environ[QUIET_URL] = "true"
    mlflow.set_tracking_uri(uri)
    try:
        yield
    finally:
        mlflow.set_tracking_uri(previous)
        if quiet is None:
            os.environ.pop(QUIET_URL, None)
        else:
            os.environ[QUIET_URL] = quiet
        if previous_env is None:
            os.environ.pop("MLFLOW_TRACKING_URI", None)
        else:
            os.environ["MLFLOW_TRACKING_URI"] = previous_env


def _server_up(uri: str, timeout: float = 3.0) -> bool:
    parsed = urlparse(uri)
    if parsed.scheme not in ("http", "https"):
        return True  # sqlite / file stores are local
    try:
        # /health needs no login (MLflow's basic-auth app included); urllib cannot take user:password@ anyway
        with urlopen(strip_userinfo(uri).rstrip("/") + "/health", timeout=timeout) as response:
            return response.status == 200
    except OSError:
        return False


def git_commit(cwd: str | Path = ".") -> str:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=cwd, capture_output=True, text=True, timeout=10)
        commit = out.stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=cwd,
                               capture_output=True, text=True, timeout=10).stdout.strip()
        return f"{commit}{'-dirty' if dirty else ''}" if commit else "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


class NullRun:
    """Stands in for a run when tracking is disabled or skipped: every call is a no-op."""

    run_id: str | None = None
    stopped_at_step: int | None = None  # never started: nothing stopped
    stopped_reason: str | None = None

    def log_metrics(self, metrics: dict[str, float], step: int | None = None) -> None:
        pass

    def log_params(self, params: dict[str, Any]) -> None:
        pass

    def set_tags(self, tags: dict[str, Any]) -> None:
        pass

    def log_artifacts(self, path: str | Path, artifact_path: str | None = None) -> None:
        pass

    def log_artifact(self, path: str | Path, artifact_path: str | None = None) -> None:
        pass

    def log_dict(self, data: dict, name: str) -> None:
        pass


@dataclass
class Run:
    """A live MLflow run (thin wrapper: values are made MLflow-safe).

    ``tolerant`` (tracking.on_unavailable=skip): the first failed call (server gone, network
    down) logs a warning and turns every later call into a no-op, so the work goes on untracked.
    """

    run_id: str
    client: Any
    tolerant: bool = False
    broken: bool = False
    last_step: int = 0  # of the latest log_metrics call
    stopped_at_step: int | None = None  # the first step whose metrics did not reach the store
    stopped_reason: str | None = None

    def _call(self, what: str, fn, *args, **kwargs) -> None:
        if self.broken:
            return
        try:
            fn(*args, **kwargs)
        except Exception as err:  # noqa: BLE001 - any tracking failure, by policy
            if not self.tolerant:
                raise
            self.broken = True
            # the run stays RUNNING in the store: the training metrics say so, and the next start closes it
            self.stopped_at_step, self.stopped_reason = self.last_step, f"MLflow {what} failed ({failure_reason(err)})"
            log.warning("MLflow %s failed (%s): tracking was skipped for the rest of run %s from step %d "
                        "(tracking.on_unavailable=skip)", what, failure_reason(err), self.run_id, self.last_step)

    def log_metrics(self, metrics: dict[str, float], step: int | None = None) -> None:
        # why: mlflow takes seconds to import; cctune imports this module at start-up
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        self.last_step = max(self.last_step, step or 0)
        clean = [Metric(_metric_key(k), float(v), now, step or 0) for k, v in metrics.items() if v is not None]
        if clean:
            self._call("log_metrics", self.client.log_batch, self.run_id, metrics=clean)

    def log_params(self, params: dict[str, Any]) -> None:
        # why: mlflow takes seconds to import; cctune imports this module at start-up
        from mlflow.entities import Param

        items = [Param(k, param_text(v)) for k, v in params.items()]
        for start in range(0, len(items), 100):  # MLflow takes at most 100 params per batch
            self._call("log_params", self.client.log_batch, self.run_id, params=items[start:start + 100])

    def set_tags(self, tags: dict[str, Any]) -> None:
        for key, value in tags.items():
            self._call("set_tag", self.client.set_tag, self.run_id, key, redact(str(value)))

    def log_artifacts(self, path: str | Path, artifact_path: str | None = None) -> None:
        self._call("log_artifacts", self.client.log_artifacts, self.run_id, str(path), artifact_path)

    def log_artifact(self, path: str | Path, artifact_path: str | None = None) -> None:
        self._call("log_artifact", self.client.log_artifact, self.run_id, str(path), artifact_path)

    def log_dict(self, data: dict, name: str) -> None:
        self._call("log_dict", self.client.log_dict, self.run_id, data, name)

    def terminate(self, status: str) -> None:
        self._call("set_terminated", self.client.set_terminated, self.run_id, status=status)


def param_text(value: Any) -> str:
    """How a param value is stored in MLflow (and so how a logged value is compared with a new one):
    a URI in it without its credentials."""
    return "null" if value is None else redact(str(value))[:6000]


def _metric_key(key: str) -> str:
    # MLflow allows alphanumerics, _ - . space / only.
    return "".join(ch if ch.isalnum() or ch in "_-. /" else "_" for ch in key)


class Tracker:
    """``required_by`` (e.g. ``"cctune register"``): the store is needed, whatever
    ``tracking.on_unavailable`` says; an unusable store is a one-line error naming it."""

    def __init__(self, params: TrackingParams, required_by: str | None = None) -> None:
        if required_by:
            params = params.model_copy(update={"on_unavailable": "fail", "enabled": True})
        self.params = params
        self.required_by = required_by
        self.uri = tracking_uri(params)
        self._client = None
        self._checked = False

    def check(self) -> None:
        """Connect now: with tracking.on_unavailable=fail an unreachable server fails here, before any work."""
        self.client()

    def client(self):
        """The ``MlflowClient`` for this URI (made once), or None when tracking is off or skipped."""
        if self._checked:
            return self._client
        self._checked = True
        self._client = self._make_client()
        return self._client

    def _unavailable(self, reason: str) -> None:
        """``fail``: raise a one-line error naming the store; ``skip``: warn (the caller goes on untracked)."""
        if self.params.on_unavailable == "fail":
            raise unavailable_error(self.uri, reason, self.params.on_unavailable, self.required_by)
        log.warning("MLflow tracking store %s is unavailable: %s; tracking was skipped for this run "
                    "(tracking.on_unavailable=skip)", strip_userinfo(self.uri), reason)

    def _make_client(self):
        if not self.params.enabled:
            return None
        if strip_userinfo(self.uri) != self.uri:
            # MLflow prints "View run ... at: <tracking URI>/#/..." whenever a run ends (set_terminated
            # included), login and all: not for this process
            os.environ[QUIET_URL] = "true"
        if not _server_up(self.uri):
            self._unavailable("the server is unreachable (no answer on /health)")
            return None
        blocked = sqlite_read_only(self.uri) or sqlite_busy(self.uri)
        if blocked:
            self._unavailable(blocked)
            return None
        if self.params.on_unavailable == "skip" and urlparse(self.uri).scheme in ("http", "https"):
            # MLflow retries a failed request for minutes by default; a run that goes on untracked
            # should not stall that long on a server that went away.
            os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "2")
            os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "30")
        # why: mlflow takes seconds to import; cctune imports this module at start-up
        import mlflow

        # A client bound to this URI, not mlflow's process-global fluent state (which also
        # exports MLFLOW_TRACKING_URI to every child process). A SQL store is opened here.
        try:
            return mlflow.MlflowClient(self.uri)
        except Exception as err:  # noqa: BLE001 - any failure to open the store, by policy
            self._unavailable(failure_reason(err))
            return None

    @staticmethod
    def find_run(client, run_id: str):
        """The run with this id in the client's store, or None (a store that fails is an error, not None)."""
        # why: mlflow takes seconds to import; cctune imports this module at start-up
        from mlflow.exceptions import MlflowException

        try:
            return client.get_run(run_id)
        except MlflowException as err:
            if is_store_failure(err):
                raise
            return None

    def training_run_id(self, checkpoint: str | None) -> str | None:
        """The newest training run whose model has this content hash (its ``checkpoint_sha256`` tag,
        set when training saved the model), or None: tracking off or skipped, or trained in another
        store. Later stages log into that run; the model directory itself holds no run pointer, so
        the same weights are the same DVC output whichever run produced them."""
        client = self.client()
        if client is None or not checkpoint:
            return None
        try:
            runs = client.search_runs([self.experiment_id(client)],
                                      f"tags.checkpoint_sha256 = '{checkpoint}' and tags.stage = 'train'",
                                      order_by=["attributes.start_time DESC"], max_results=1)
        except Exception as err:  # noqa: BLE001 - an unusable store, by policy (tracking.on_unavailable)
            self._unavailable(failure_reason(err))
            return None
        return runs[0].info.run_id if runs else None

    def experiment_id(self, client) -> str:
        experiment = client.get_experiment_by_name(self.params.experiment)
        if experiment is not None:
            return experiment.experiment_id
        location = self.params.artifact_location or None
        if location and "://" not in location:
            # A local folder only makes sense for a local store; a tracking server chooses its own
            # artifact destination (mlflow server --artifacts-destination).
            location = None if urlparse(self.uri).scheme in ("http", "https") else Path(location).resolve().as_uri()
        return client.create_experiment(self.params.experiment, artifact_location=location)

    def mark_killed(self, run_id: str | None) -> None:
        """Mark a run that was abandoned (a killed training's, whose checkpoints a fresh start discards)
        KILLED, so MLflow does not show it RUNNING forever; a failure only warns."""
        client = self.client() if run_id else None
        if client is None:
            return
        found = self.find_run(client, run_id)
        if found is not None and found.info.status == "RUNNING":
            try:
                client.set_terminated(run_id, status="KILLED")
                log.info("MLflow run %s of the abandoned checkpoints marked KILLED", run_id)
            except Exception as err:  # noqa: BLE001 - tracking must not stop the work (on_unavailable=skip)
                log.warning("could not mark MLflow run %s KILLED: %s", run_id, err)

    def close_orphaned(self, run_id: str | None, reason: str) -> bool:
        """Close as FAILED, with ``reason`` in its ``failure_reason`` tag, a run its process could no longer
        close (the store went away mid-run); a run that is not RUNNING is left alone. True if closed."""
        client = self.client() if run_id else None
        found = self.find_run(client, run_id) if client is not None else None
        if found is None or found.info.status != "RUNNING":
            return False
        client.set_tag(run_id, "failure_reason", redact(reason)[:5000])
        client.set_terminated(run_id, status="FAILED")
        log.warning("MLflow run %s was left RUNNING when %s: closed as FAILED", run_id, reason)
        return True

    def find_or_create_run(self, name: str, tags: dict[str, str]) -> str | None:
        """The id of the newest run carrying all of ``tags`` in the experiment, or of a new (finished) run
        named ``name`` with them; None when tracking is off or skipped."""
        client = self.client()
        if client is None:
            return None
        experiment = self.experiment_id(client)
        query = " and ".join(f"tags.{key} = '{value}'" for key, value in tags.items())
        runs = client.search_runs([experiment], query, order_by=["attributes.start_time DESC"], max_results=1)
        if runs:
            return runs[0].info.run_id
        run = client.create_run(experiment, run_name=name, tags=tags)
        client.set_terminated(run.info.run_id)
        return run.info.run_id

    @contextlib.contextmanager
    def run(self, name: str, params: dict[str, Any] | None = None, tags: dict[str, Any] | None = None,
            run_id: str | None = None) -> Iterator[Run | NullRun]:
        """Start (or, with ``run_id``, reopen) a run; yields a no-op run when tracking is off."""
        client = self.client()
        if client is None:
            yield NullRun()
            return
        try:
            existing = self.find_run(client, run_id) if run_id is not None else None
            if run_id is not None and existing is None:
                # e.g. a model pulled with `dvc pull` whose run lives in another tracking store
                log.warning("run %s is not in %s: logging to a new run %r instead", run_id, strip_userinfo(self.uri),
                            name)
                tags = {**(tags or {}), "origin_run_id": run_id}
            run_id = existing.info.run_id if existing else \
                client.create_run(self.experiment_id(client), run_name=name).info.run_id
        except TrackingUnavailableError:
            raise
        except Exception as err:  # noqa: BLE001 - the store failed before the run began: policy decides
            self._unavailable(failure_reason(err))
            yield NullRun()
            return
        run = Run(run_id, client, tolerant=self.params.on_unavailable == "skip")
        if params and existing:
            # MLflow refuses to change a logged param: log the new ones, warn about changed ones.
            # Compared as stored (None is logged as "null"), or every resume reports a change.
            logged = existing.data.params
            changed = sorted(k for k, v in params.items() if k in logged and logged[k] != param_text(v))
            if changed:
                log.warning("run %s: params changed since it was started, keeping the logged values of %s",
                            run_id, ", ".join(changed))
            params = {k: v for k, v in params.items() if k not in logged}
        if params:
            run.log_params(params)
        if tags:
            run.set_tags(tags)
        status = "FAILED"
        try:
            yield run
            status = "FINISHED"
        finally:
            run.terminate(status)


def write_run_file(directory: str | Path, run: Run | NullRun, uri: str) -> None:
    """The run a training's checkpoints belong to (in its checkpoint folder: a resume reopens it);
    written atomically, so a kill mid-write cannot leave a torn file."""
    write_json(Path(directory, RUN_FILE), {"run_id": run.run_id, "tracking_uri": strip_userinfo(uri)})


def read_run_id(directory: str | Path) -> str | None:
    path = Path(directory, RUN_FILE)
    if not path.is_file():
        return None
    return json.loads(path.read_text()).get("run_id")


def close_orphaned_training_runs(tracker: Tracker, metrics_dir: str | Path) -> list[str]:
    """The training runs whose tracking stopped mid-way (``tracking_stopped_at_step`` in
    ``metrics/train_<method>.json``; the store went away, so the run was never closed) closed as FAILED
    with the reason, once the store is back: at the next training start or ``register``. Best effort: a
    store still away leaves them for next time. Returns the ids closed."""
    closed = []
    for path in sorted(Path(metrics_dir).glob("train_*.json")):
        try:
            record = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue
        if not isinstance(record, dict) or record.get("tracking_stopped_at_step") is None or not record.get("run_id"):
            continue
        reason = (f"tracking stopped at step {record['tracking_stopped_at_step']} of {record.get('steps')} "
                  f"({record.get('tracking_stopped_reason')}); training went on untracked ({path})")
        try:
            if tracker.close_orphaned(record["run_id"], reason):
                closed.append(record["run_id"])
        except Exception as err:  # noqa: BLE001 - a store still unusable: try again next time
            log.warning("could not close MLflow run %s yet: %s", record["run_id"], failure_reason(err))
    return closed
