"""cc_core.tracking: a store that cannot be used (a SQLite file locked by another writer, a failure
while finding the experiment or creating the run) follows tracking.on_unavailable: ``skip`` goes on
untracked with one warning naming the store, ``fail`` is a one-line TrackingUnavailableError; the wait
is bounded. A reopened run compares params as they were stored.

    pytest tests/unit/test_tracking.py
"""

from __future__ import annotations

import contextlib
import logging
import shutil
import sqlite3
import time

import pytest

from cc_core.config import TrackingParams
from cc_core.tracking import LOCK_WAIT_S, Tracker, TrackingUnavailableError, NullRun, sqlite_path, store_errors


def _params(tmp_path, **extra) -> TrackingParams:
    return TrackingParams(uri=f"sqlite:///{tmp_path}/mlflow.db", artifact_location=str(tmp_path / "art"), **extra)


@contextlib.contextmanager
def _locked(path):
    """A second SQLite connection holding the database (another writer in the middle of a transaction)."""
    holder = sqlite3.connect(path, isolation_level=None)
    holder.execute("BEGIN EXCLUSIVE")
    try:
        yield
    finally:
        holder.execute("ROLLBACK")
        holder.close()


@pytest.fixture(scope="module")
def template(tmp_path_factory):
    """An initialised MLflow SQLite store with one finished run (creating the schema takes seconds: once)."""
    root = tmp_path_factory.mktemp("template")
    with Tracker(_params(root)).run("first") as run:
        run.log_metrics({"loss": 1.0}, step=1)
    return root / "mlflow.db"


@pytest.fixture
def store(tmp_path, template):
    shutil.copy(template, tmp_path / "mlflow.db")
    return tmp_path


def test_sqlite_path():
    assert sqlite_path("sqlite:///mlflow.db") == "mlflow.db"
    assert sqlite_path("sqlite:////abs/m.db?timeout=3") == "/abs/m.db"
    assert sqlite_path("http://127.0.0.1:5000") is None and sqlite_path("sqlite://") is None


def test_locked_store_with_skip_goes_on_untracked(store, caplog):
    params = _params(store, on_unavailable="skip")
    with _locked(store / "mlflow.db"):
        started = time.perf_counter()
        with caplog.at_level(logging.WARNING), Tracker(params).run("train-sft", params={"a": 1}) as run:
            run.log_metrics({"loss": 0.5}, step=1)  # a no-op
        elapsed = time.perf_counter() - started
    assert isinstance(run, NullRun)
    assert elapsed < LOCK_WAIT_S + 5  # bounded: not MLflow's own ~12 s of retries, let alone minutes
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1
    assert f"MLflow tracking store {params.uri} is unavailable: database is locked" in warnings[0]
    assert "tracking was skipped for this run (tracking.on_unavailable=skip)" in warnings[0]


def test_locked_store_with_fail_is_one_line_naming_the_store(store):
    params = _params(store, on_unavailable="fail")
    with _locked(store / "mlflow.db"):
        started = time.perf_counter()
        with pytest.raises(TrackingUnavailableError) as err:
            Tracker(params).check()  # what `cctune train` calls before loading anything
        elapsed = time.perf_counter() - started
    message = str(err.value)
    assert "\n" not in message and elapsed < LOCK_WAIT_S + 5
    assert message.startswith(f"MLflow tracking store {params.uri} is unavailable: database is locked")
    assert message.endswith("(tracking.on_unavailable=fail)")
    # a store required by a command (register) says so, whatever on_unavailable is
    with _locked(store / "mlflow.db"), pytest.raises(TrackingUnavailableError, match=r"\(cctune register needs it\)$"):
        Tracker(_params(store, on_unavailable="skip"), required_by="cctune register").check()


def test_store_usable_again_once_the_lock_is_released(store):
    with _locked(store / "mlflow.db"):
        pass
    with Tracker(_params(store, on_unavailable="fail")).run("again") as run:
        assert run.run_id



def _raise_locked(*args, **kwargs):
    import sqlalchemy.exc

    raise sqlalchemy.exc.OperationalError("INSERT INTO runs ...", {}, sqlite3.OperationalError("database is locked"))


@pytest.mark.parametrize("step", ["get_experiment_by_name", "create_experiment", "create_run", "get_run"])
def test_store_failing_before_the_run_starts_follows_the_policy(store, caplog, step):
    """The store goes away after the client was made: the experiment lookup/creation or the run creation fails."""
    params = _params(store, on_unavailable="skip", experiment="fresh")
    tracker = Tracker(params)
    client = tracker.client()
    setattr(client, step, _raise_locked)
    resume = "some-run-id" if step == "get_run" else None
    with caplog.at_level(logging.WARNING), tracker.run("train-cc", run_id=resume) as run:
        pass
    assert isinstance(run, NullRun)
    assert any("database is locked" in r.getMessage() and "tracking was skipped" in r.getMessage()
               for r in caplog.records)
    strict = Tracker(params.model_copy(update={"on_unavailable": "fail"}))
    setattr(strict.client(), step, _raise_locked)
    with pytest.raises(TrackingUnavailableError, match=r"is unavailable: OperationalError: .*database is locked"):
        with strict.run("train-cc", run_id=resume):
            pass


def test_errors_inside_the_run_are_not_mistaken_for_the_store(store):
    with pytest.raises(KeyError):
        with Tracker(_params(store, on_unavailable="skip")).run("train-cc"):
            raise KeyError("the work failed, not the store")
    with pytest.raises(KeyError), store_errors("sqlite:///x.db"):
        raise KeyError("unrelated")
    with pytest.raises(TrackingUnavailableError, match=r"sqlite:///x.db is unavailable: OperationalError"):
        with store_errors("sqlite:///x.db"):
            _raise_locked()


def test_resume_does_not_report_unchanged_none_params(store, caplog):
    """None is stored as "null": comparing it with "None" made every resume warn that params changed."""
    params = _params(store)
    logged = {"eval.limit": None, "model.chat_template": None, "train.seed": 0}
    with Tracker(params).run("train-cc", params=logged) as run:
        pass
    with caplog.at_level(logging.WARNING), Tracker(params).run("train-cc", params=logged, run_id=run.run_id):
        pass
    assert not [r for r in caplog.records if "params changed" in r.getMessage()]
    with caplog.at_level(logging.WARNING), Tracker(params).run("train-cc", params={**logged, "eval.limit": 5},
                                                               run_id=run.run_id):
        pass
    changed = [r.getMessage() for r in caplog.records if "params changed" in r.getMessage()]
    assert len(changed) == 1 and changed[0].endswith("keeping the logged values of eval.limit")


@pytest.mark.parametrize("outer", [None, "http://127.0.0.1:9/outer"])
def test_fluent_tracking_uri_does_not_outlive_its_block(tmp_path, monkeypatch, outer):
    """mlflow.set_tracking_uri exports MLFLOW_TRACKING_URI; after a registration in a long-lived
    process (a flow, a test session) every later Tracker would otherwise log to that store."""
    import os

    from cc_core.tracking import fluent_tracking_uri, tracking_uri

    if outer is None:
        monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    else:
        monkeypatch.setenv("MLFLOW_TRACKING_URI", outer)
    inner = f"sqlite:///{tmp_path}/inner.db"
    with fluent_tracking_uri(inner):
        assert os.environ["MLFLOW_TRACKING_URI"] == inner
    assert os.environ.get("MLFLOW_TRACKING_URI") == outer
    own = f"sqlite:///{tmp_path}/own.db"
    assert tracking_uri(TrackingParams(uri=own)) == (outer or own)


def test_mark_killed_closes_only_a_running_run(store):
    """A fresh start that abandons a killed training's checkpoints closes its run; a finished run, an
    unknown id, no id and tracking turned off are left alone."""
    tracker = Tracker(_params(store))
    client = tracker.client()
    experiment = tracker.experiment_id(client)
    abandoned = client.create_run(experiment, run_name="train-sft").info.run_id  # RUNNING, as a kill leaves it
    with tracker.run("train-cc") as finished:
        pass
    for run_id in (abandoned, finished.run_id, "no-such-run", None):
        tracker.mark_killed(run_id)
    assert client.get_run(abandoned).info.status == "KILLED"
    assert client.get_run(finished.run_id).info.status == "FINISHED"
    Tracker(_params(store, enabled=False)).mark_killed(finished.run_id)
    assert client.get_run(finished.run_id).info.status == "FINISHED"


def test_find_or_create_run_reuses_the_newest_run_with_the_tags(store):
    tracker = Tracker(_params(store))
    tags = {"method": "base", "base_model": "tiny-random-llama"}
    first = tracker.find_or_create_run("base", tags)
    assert tracker.find_or_create_run("base", tags) == first
    assert tracker.client().get_run(first).data.tags["base_model"] == "tiny-random-llama"
    assert tracker.find_or_create_run("base", {**tags, "base_model": "other"}) != first
    assert Tracker(_params(store, enabled=False)).find_or_create_run("base", tags) is None


SECRET = "pw-Zq81x"


def test_credentials_never_reach_a_param_a_tag_or_the_run_file(store):
    from cc_core.tracking import RUN_FILE, read_run_id, write_run_file

    params = _params(store)
    logged = {"tracking.uri": f"postgresql://mlflow:{SECRET}@db:5432/mlflow", "train.seed": 0}
    with Tracker(params).run("train-cc", params=logged, tags={"remote": f"s3://AKIA:{SECRET}@bucket/dvc"}) as run:
        run.set_tags({"endpoint": f"https://h/x?sig={SECRET}&v=1"})
        write_run_file(store, run, f"http://admin:{SECRET}@10.0.0.5:5000")
    # resuming compares the stored (stripped) value: no "params changed" for the same credentialed URI
    with Tracker(params).run("train-cc", params=logged, run_id=run.run_id):
        pass
    import mlflow

    stored = mlflow.MlflowClient(params.uri).get_run(run.run_id).data
    assert stored.params["tracking.uri"] == "postgresql://db:5432/mlflow"
    assert stored.tags["remote"] == "s3://bucket/dvc" and stored.tags["endpoint"] == "https://h/x?v=1"
    assert read_run_id(store) == run.run_id
    assert (store / RUN_FILE).read_text().count("http://10.0.0.5:5000") == 1
    for path in store.rglob("*"):
        if path.is_file():
            assert SECRET.encode() not in path.read_bytes(), path


@pytest.mark.parametrize("policy", ["skip", "fail"])
def test_an_unavailable_store_is_named_without_its_credentials(policy, caplog):
    params = TrackingParams(uri=f"http://admin:{SECRET}@127.0.0.1:9", on_unavailable=policy)
    with caplog.at_level(logging.WARNING):
        if policy == "fail":
            with pytest.raises(TrackingUnavailableError) as caught:
                Tracker(params).check()
            text = str(caught.value)
        else:
            Tracker(params).check()
            text = caplog.text
    assert "http://127.0.0.1:9 is unavailable" in text and SECRET not in text and "admin" not in text


def test_fluent_block_with_credentials_prints_no_run_url(tmp_path, monkeypatch):
    """MLflow's fluent end_run prints "View run ... at: <tracking URI>/#/..." to stdout."""
    import os

    from cc_core.tracking import QUIET_URL, fluent_tracking_uri

    monkeypatch.delenv(QUIET_URL, raising=False)
    with fluent_tracking_uri(f"http://admin:{SECRET}@127.0.0.1:9"):
        assert os.environ[QUIET_URL] == "true"
    assert QUIET_URL not in os.environ
    with fluent_tracking_uri(f"sqlite:///{tmp_path}/m.db"):
        assert QUIET_URL not in os.environ  # nothing to hide: MLflow prints its links as usual
    # MlflowClient.set_terminated prints the link too: a Tracker with a login turns it off for the process
    Tracker(TrackingParams(uri=f"sqlite:///{tmp_path}/m.db", on_unavailable="skip")).check()
    assert QUIET_URL not in os.environ
    Tracker(TrackingParams(uri=f"http://admin:{SECRET}@127.0.0.1:9", on_unavailable="skip")).check()
    assert os.environ[QUIET_URL] == "true"


# --- issue 21, point 8: a store that cannot be written ------------------------------------------------------

def test_a_read_only_store_with_skip_goes_on_untracked_with_one_warning(store, read_only, caplog, capfd):
    """Before: MLflow logged tracebacks whose stated reason was "(raised as a result of Query-invoked
    autoflush...)"; now one warning naming the store as read-only, and no MLflow error log at all."""
    read_only(store / "mlflow.db")
    with caplog.at_level(logging.INFO):
        with Tracker(_params(store, on_unavailable="skip")).run("train-cc", params={"a": 1}) as run:
            run.log_metrics({"loss": 1.0}, step=1)
    assert isinstance(run, NullRun)
    warnings = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert warnings == [f"MLflow tracking store sqlite:///{store}/mlflow.db is unavailable: the store is read-only "
                        f"(no write access to {store}/mlflow.db); tracking was skipped for this run "
                        "(tracking.on_unavailable=skip)"]
    assert "Traceback" not in capfd.readouterr().err
    with pytest.raises(TrackingUnavailableError, match=r"mlflow\.db is unavailable: the store is read-only"):
        Tracker(_params(store, on_unavailable="fail")).check()


def test_a_store_made_read_only_mid_run_is_named_as_such_not_as_autoflush():
    """The reason given for a failure inside a run: the cause, not SQLAlchemy's note about the flush."""
    from cc_core.tracking_store import failure_reason as _reason

    try:
        try:
            raise sqlite3.OperationalError("attempt to write a readonly database")
        except sqlite3.OperationalError as cause:
            raise RuntimeError("(raised as a result of Query-invoked autoflush; consider using a session.no_autoflush "
                               "block if this flush is occurring prematurely)\n(sqlite3.OperationalError) attempt "
                               "to write a readonly database") from cause
    except RuntimeError as err:
        assert _reason(err) == "the store is read-only (attempt to write a readonly database)"
    assert _reason(RuntimeError("(raised as a result of Query-invoked autoflush)\n(sqlite3.OperationalError) "
                                "disk I/O error")) == "RuntimeError: disk I/O error"
