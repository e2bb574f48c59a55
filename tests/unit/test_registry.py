"""The registry's alias policy, what it reads, its lineage checks and errors, the served model's
requirements, signature and file verification (the full round trip against a server is in
tests/integration/test_pipeline.py; immutability and serving in tests/integration/test_registry_serving.py).

    pytest tests/unit/test_registry.py
"""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from cc_core.config import ConfigError, parse_params
from cc_core.io import InputError, file_sha256, write_json
from cc_core.lineage import LineageError, checkpoint_sha256
from cc_core.champion import metric_tags
from cc_core.champion import should_promote as _should_promote
from cc_core.registry import (
    CONSTRAINTS_FILE,
    RegistryError,
    eval_metrics,
    eval_settings_hash,
    model_signature,
    read_constraints,
    register,
    serving_requirements,
)


def _write(metrics_dir, name: str, average: float, **extra) -> None:
    folder = metrics_dir / "eval" / "cc"
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"{name}.json").write_text(json.dumps({"average": average, **extra}))


def test_only_listed_benchmarks_count(tmp_path):
    _write(tmp_path, "XNLI", 40.0)
    _write(tmp_path, "MKQA", 99.0)  # left over from an earlier eval.benchmarks
    assert set(eval_metrics(tmp_path, ["xnli"])) == {"XNLI"}
    assert set(eval_metrics(tmp_path, None)) == {"XNLI", "MKQA"}


def test_eval_settings_hash_ignores_speed_only():
    base = parse_params({})
    assert eval_settings_hash(base) == eval_settings_hash(parse_params({}, overrides=["eval.batch_size=64"]))
    assert eval_settings_hash(base) != eval_settings_hash(parse_params({}, overrides=["eval.limit=50"]))
    assert eval_settings_hash(base) != eval_settings_hash(parse_params({}, overrides=["eval.langs=[zh]"]))


def test_register_metric_is_checked_when_params_load():
    assert parse_params({}, overrides=["register.metric=xquad"]).register.metric == "XQuAD"
    with pytest.raises(ConfigError, match="register.metric"):
        parse_params({}, overrides=["register.metric=bleu"])


EV = {"eval_data_sha256": "d" * 64, "scorer_sha256": "s" * 64}  # what both versions' scores were computed on


class FakeClient:
    def __init__(self, tags: dict[str, str]) -> None:
        self.tags = tags

    def get_model_version(self, name, version):
        return type("Version", (), {"tags": self.tags})()


def test_alias_policy():
    same = {"register_metric": "mean", "eval_settings_sha256": "h1", "metric_value": "50.0", **EV}
    assert _should_promote(FakeClient(same), "m", None, 10.0, "mean", "h1", {}, EV) == (True, "first version")
    assert _should_promote(FakeClient(same), "m", "1", 60.0, "mean", "h1", {}, EV)[0]
    promoted, why = _should_promote(FakeClient(same), "m", "1", 40.0, "mean", "h1", {}, EV)
    assert not promoted and "does not beat 50.0000" in why
    # a score from another evaluation (other langs / limit / data) or another metric is not comparable
    promoted, why = _should_promote(FakeClient(same), "m", "1", 90.0, "mean", "h2", {}, EV)
    assert not promoted and "not comparable with version 1" in why
    assert not _should_promote(FakeClient(same), "m", "1", 90.0, "XNLI", "h1", {}, EV)[0]
    # an evaluation with failed languages never takes the champion alias, even as the first version
    promoted, why = _should_promote(FakeClient(same), "m", None, 90.0, "mean", "h1", {"XNLI": ["zh"]}, EV)
    assert not promoted and "failed languages" in why


def test_a_score_on_other_data_or_by_another_scorer_is_never_compared():
    champion = {"register_metric": "mean", "eval_settings_sha256": "h1", "metric_value": "50.0", **EV}
    edited = {**EV, "eval_data_sha256": "e" * 64}  # one gold answer edited: the same items hash differently
    promoted, why = _should_promote(FakeClient(champion), "m", "1", 90.0, "mean", "h1", {}, edited)
    assert not promoted and why.startswith("not comparable with version 1: evaluation data differs")
    assert "dddddddddddd… (champion) vs eeeeeeeeeeee… (this version)" in why
    promoted, why = _should_promote(FakeClient(champion), "m", "1", 90.0, "mean", "h1", {},
                                    {**EV, "scorer_sha256": "t" * 64})
    assert not promoted and "scoring code or protocol differs" in why
    # a champion registered before scores recorded their data cannot be shown comparable
    old = {k: v for k, v in champion.items() if k not in EV}
    promoted, why = _should_promote(FakeClient(old), "m", "1", 90.0, "mean", "h1", {}, EV)
    assert not promoted and "evaluation data differs: eval_data_sha256 none (champion)" in why


def test_the_version_records_what_its_scores_were_computed_on():
    from cc_core.registry import score_identity

    evaluated = {"XNLI": {"eval_data_sha256": "a" * 64, "scorer_sha256": "s" * 64},
                 "MKQA": {"eval_data_sha256": "b" * 64, "scorer_sha256": "t" * 64}}
    tags = score_identity(evaluated)
    assert json.loads(tags["eval_data_by_benchmark"]) == {"MKQA": "b" * 64, "XNLI": "a" * 64}
    assert len(tags["eval_data_sha256"]) == 64 and len(tags["scorer_sha256"]) == 64
    changed = score_identity({**evaluated, "XNLI": {**evaluated["XNLI"], "eval_data_sha256": "c" * 64}})
    assert changed["eval_data_sha256"] != tags["eval_data_sha256"] and changed["scorer_sha256"] == tags["scorer_sha256"]
    assert score_identity({"XNLI": {"average": 1.0}})["eval_data_sha256"] == "none"


# --- promotion: like with like, ties keep the champion -----------------------------------------------

def _tags(value: float, **extra) -> dict[str, str]:
    return {"register_metric": "mean", "eval_settings_sha256": "h1", **metric_tags(value), **EV, **extra}


def test_equal_scores_never_move_the_champion():
    # the repro: the same model registered three times kept being promoted ("54.1667 > 54.1667")
    value = (50.0 + 58.3333) / 2 + 1e-9
    promoted, why = _should_promote(FakeClient(_tags(value)), "m", "1", value, "mean", "h1", {}, EV)
    assert not promoted and "tie keeps the champion" in why


def test_scores_that_differ_only_past_the_sixth_decimal_compare_exactly():
    champion = 54.1666664
    # 6-decimal tags would have stored "54.166666" and promoted this lower score
    promoted, why = _should_promote(FakeClient(_tags(champion)), "m", "1", 54.1666662, "mean", "h1", {}, EV)
    assert not promoted and why == "54.1666662 does not beat 54.1666664"
    promoted, why = _should_promote(FakeClient(_tags(champion)), "m", "1", 54.1666666, "mean", "h1", {}, EV)
    assert promoted and why == "54.1666666 > 54.1666664"  # enough digits to see the difference


def test_a_champion_tagged_by_an_older_version_is_compared_in_its_rounding():
    legacy = {"register_metric": "mean", "eval_settings_sha256": "h1", "metric_value": f"{54.16666666666667:.6f}", **EV}
    promoted, why = _should_promote(FakeClient(legacy), "m", "1", 54.16666666666667, "mean", "h1", {}, EV)
    assert not promoted and "tie" in why


# --- a small CC checkpoint on disk (no model is loaded before the tracking store is reached) -------------

def _fake_project(root: Path, average: float = 50.0) -> dict[str, Path]:
    """models/cc (CC checkpoint files), transform/ fitted for it, metrics/eval/cc/XNLI.json evaluated on both."""
    import torch
    from safetensors.torch import save_file

    from cc_core.modeling.checkpoint import FORMAT_VERSION
    from cc_core.modeling.transform_matrix import TransformMatrix

    model = root / "models" / "cc"
    model.mkdir(parents=True)
    save_file({"w": torch.arange(4.0)}, str(model / "model.safetensors"))
    save_file({"proj.weight": torch.zeros(2, 2)}, str(model / "decision_maker.safetensors"))
    write_json(model / "cc_tuning.json", {"format_version": FORMAT_VERSION, "hidden_size": 2, "num_layers": 2,
                                          "inject_layer": 0, "gumbel_tau": 1.0, "decision_mode_train": "gumbel",
                                          "detach_english": False, "arch_map": {}})
    (model / "config.json").write_text("{}")
    checkpoint = checkpoint_sha256(model)
    transform = root / "transform"
    transform.mkdir()
    # save() writes transform.json beside it (the record `cctune fit` leaves: the file's sha256)
    TransformMatrix(torch.eye(2), None, {}, {"model_sha256": checkpoint}).save(transform / "transform.safetensors")
    metrics = root / "metrics"
    write_json(metrics / "eval" / "cc" / "XNLI.json",
               {"average": average, "checkpoint_sha256": checkpoint,
                "transform_sha256": file_sha256(transform / "transform.safetensors")})
    return {"model": model, "transform": transform, "metrics": metrics, "checkpoint": checkpoint}


def _params(root: Path, *overrides: str):
    return parse_params({}, overrides=["eval.benchmarks=[XNLI]", f"tracking.uri=sqlite:///{root}/mlflow.db",
                                       f"tracking.artifact_location={root}/mlartifacts", "register.model_name=cc-test",
                                       *overrides])


def _register(root: Path, paths: dict):
    return register(_params(root), paths["model"], paths["transform"], paths["metrics"], root / "dvc.lock")


def _metrics_file(paths) -> Path:
    return paths["metrics"] / "eval" / "cc" / "XNLI.json"


# --- lineage: register refuses inputs made from another checkpoint ------------------------------------

def test_register_refuses_a_transform_fitted_for_another_checkpoint(tmp_path):
    import torch

    from cc_core.modeling.transform_matrix import TransformMatrix

    paths = _fake_project(tmp_path)
    TransformMatrix(torch.eye(2), None, {}, {"model_sha256": "f" * 64}).save(paths["transform"] / "transform.safetensors")
    with pytest.raises(LineageError) as err:
        _register(tmp_path, paths)
    message = str(err.value)
    assert "transform.safetensors: made from checkpoint ffffffffffff" in message
    assert paths["checkpoint"][:12] in message and "cctune fit" in message
    assert not (tmp_path / "mlflow.db").exists()  # refused before touching the registry


def test_register_refuses_metrics_from_another_checkpoint(tmp_path):
    paths = _fake_project(tmp_path)
    data = json.loads(_metrics_file(paths).read_text())
    _metrics_file(paths).write_text(json.dumps({**data, "checkpoint_sha256": "a" * 64}))
    with pytest.raises(LineageError) as err:
        _register(tmp_path, paths)
    message = str(err.value)
    assert "XNLI.json: made from checkpoint aaaaaaaaaaaa" in message and paths["checkpoint"][:12] in message
    assert "cctune eval --method cc --benchmark XNLI" in message


def test_register_refuses_metrics_without_a_checkpoint_hash(tmp_path):
    paths = _fake_project(tmp_path)
    _metrics_file(paths).write_text(json.dumps({"average": 50.0}))  # written before eval recorded it
    with pytest.raises(LineageError, match=r"XNLI\.json: records no checkpoint hash.*older version.*"
                                           r"cctune eval --method cc --benchmark XNLI"):
        _register(tmp_path, paths)


def test_register_refuses_metrics_from_another_transform(tmp_path):
    paths = _fake_project(tmp_path)
    data = json.loads(_metrics_file(paths).read_text())
    _metrics_file(paths).write_text(json.dumps({**data, "transform_sha256": "b" * 64}))
    with pytest.raises(LineageError, match=r"XNLI\.json: evaluated with Transform Matrix bbbbbbbbbbbb.*re-run: cctune eval"):
        _register(tmp_path, paths)


def test_register_refuses_a_matrix_altered_after_fit_naming_both_hashes(tmp_path):
    """Issue 21, point 6. Before: registered (with a "Failed to log model config as params" warning) a version
    whose matrix was not the one fit wrote, and whose run params contradicted it."""
    from safetensors import safe_open
    from safetensors.torch import save_file

    paths = _fake_project(tmp_path)
    matrix = paths["transform"] / "transform.safetensors"
    fitted = file_sha256(matrix)
    with safe_open(str(matrix), framework="pt") as handle:  # values scaled, header and metadata intact
        tensors, metadata = {k: handle.get_tensor(k) * 0.5 for k in handle.keys()}, handle.metadata()
    save_file(tensors, str(matrix), metadata=metadata)
    altered = file_sha256(matrix)
    data = json.loads(_metrics_file(paths).read_text())  # the metrics even name the altered matrix
    _metrics_file(paths).write_text(json.dumps({**data, "transform_sha256": altered}))
    with pytest.raises(LineageError) as err:
        _register(tmp_path, paths)
    assert f"sha256 is {altered} but `cctune fit` wrote {fitted}" in str(err.value)
    assert not (tmp_path / "mlflow.db").exists()  # refused before touching the registry


# --- register's errors: one line naming the file --------------------------------------------------------

def test_truncated_metrics_file_is_an_error_naming_it(tmp_path):
    paths = _fake_project(tmp_path)
    _metrics_file(paths).write_text('{\n  "average": 50.0,\n  "benchmark": "XNL')
    with pytest.raises(InputError, match=r"eval/cc/XNLI\.json:3: malformed JSON: Unterminated string"):
        _register(tmp_path, paths)


def test_metrics_without_average_is_an_error_naming_it(tmp_path):
    paths = _fake_project(tmp_path)
    _metrics_file(paths).write_text(json.dumps({"checkpoint_sha256": paths["checkpoint"]}))
    with pytest.raises(RegistryError, match=r"XNLI\.json: no 'average' key .*re-run: cctune eval"):
        _register(tmp_path, paths)
    _metrics_file(paths).write_text(json.dumps({"average": "high", "checkpoint_sha256": paths["checkpoint"]}))
    with pytest.raises(RegistryError, match=r"XNLI\.json: 'average' is 'high', not a number"):
        _register(tmp_path, paths)
    _metrics_file(paths).write_text("[]")
    with pytest.raises(RegistryError, match=r"XNLI\.json: expected a JSON object"):
        _register(tmp_path, paths)


def _cli_register(root: Path, paths: dict, *extra: str) -> subprocess.CompletedProcess:
    params = root / "params.yaml"
    params.write_text("eval:\n  benchmarks: [XNLI]\nregister:\n  model_name: cc-test\ntracking:\n"
                      f"  uri: sqlite:///{root}/mlflow.db\n  artifact_location: {root}/mlartifacts\n"
                      "  on_unavailable: skip\n")
    return subprocess.run([sys.executable, "-m", "cc_core.cli", "register", "--params", str(params), "--model",
                           str(paths["model"]), "--transform", str(paths["transform"]), "--metrics-dir",
                           str(paths["metrics"]), *extra], cwd=root, capture_output=True, text=True, timeout=300)


def _error_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.startswith("cctune register: error:")]


def test_cli_register_prints_a_bad_metrics_file_as_one_line(tmp_path, capsys, monkeypatch):
    from cc_core.cli import main

    paths = _fake_project(tmp_path)
    _metrics_file(paths).write_text('{"average": 5')
    (tmp_path / "params.yaml").write_text("eval:\n  benchmarks: [XNLI]\n")
    monkeypatch.chdir(tmp_path)
    assert main(["register", "--model", str(paths["model"]), "--transform", str(paths["transform"]),
                 "--metrics-dir", str(paths["metrics"])]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and err.startswith("cctune register: error: ") and "XNLI.json:1: malformed JSON" in err


def test_cli_register_with_a_locked_store_is_one_line_exit_2(tmp_path):
    """A second SQLite connection holds the store (BEGIN EXCLUSIVE): register waits a few seconds,
    then says which store is locked, even with tracking.on_unavailable=skip (it cannot register without it)."""
    import mlflow

    paths = _fake_project(tmp_path)
    mlflow.MlflowClient(f"sqlite:///{tmp_path}/mlflow.db").search_experiments()  # create the store
    holder = sqlite3.connect(tmp_path / "mlflow.db", isolation_level=None)
    holder.execute("BEGIN EXCLUSIVE")
    try:
        started = time.perf_counter()
        out = _cli_register(tmp_path, paths)
        elapsed = time.perf_counter() - started
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    assert out.returncode == 2, out.stderr[-2000:]
    assert "Traceback" not in out.stderr and "OperationalError" not in out.stderr
    lines = _error_lines(out.stderr)
    assert len(lines) == 1, out.stderr[-2000:]
    assert f"MLflow tracking store sqlite:///{tmp_path}/mlflow.db is unavailable: database is locked" in lines[0]
    assert "cctune register needs it" in lines[0]
    assert elapsed < 60  # the wait on the lock is a few seconds (the rest is Python start-up)


def test_cli_register_with_a_read_only_store_is_one_line_exit_2(tmp_path, read_only):
    """Issue 21, point 8. Before: exit 2 with the misleading "(raised as a result of Query-invoked autoflush…)"
    after about 100 lines of traceback."""
    import mlflow

    paths = _fake_project(tmp_path)
    mlflow.MlflowClient(f"sqlite:///{tmp_path}/mlflow.db").search_experiments()  # create the store
    read_only(tmp_path / "mlflow.db")
    out = _cli_register(tmp_path, paths)
    assert out.returncode == 2, out.stderr[-2000:]
    assert "Traceback" not in out.stderr and "autoflush" not in out.stderr
    lines = _error_lines(out.stderr)
    assert lines == [f"cctune register: error: MLflow tracking store sqlite:///{tmp_path}/mlflow.db is unavailable: "
                     f"the store is read-only (no write access to {tmp_path}/mlflow.db) (cctune register needs it)"]


def test_register_closes_a_training_run_its_lost_store_left_running(tmp_path):
    """Issue 21, point 9: a training whose tracking server died mid-run left its run RUNNING and said so in
    metrics/train_cc.json; register (the store reachable again) closes it FAILED with the reason."""
    import mlflow

    paths = _fake_project(tmp_path)
    client = mlflow.MlflowClient(f"sqlite:///{tmp_path}/mlflow.db")
    orphan = client.create_run(client.create_experiment("cc-tuning", artifact_location=str(tmp_path / "a"))).info.run_id
    write_json(paths["metrics"] / "train_cc.json", {"method": "cc", "steps": 30, "run_id": orphan,
                                                   "tracking_stopped_at_step": 5,
                                                   "tracking_stopped_reason": "MLflow log_metrics failed (...)"})
    write_json(paths["metrics"] / "train_cc_loss.json", [{"step": 1, "loss": 2.0}])  # a plot: not a record
    _register(tmp_path, paths)
    run = client.get_run(orphan)
    assert run.info.status == "FAILED"
    assert run.data.tags["failure_reason"] == ("tracking stopped at step 5 of 30 (MLflow log_metrics failed (...)); "
                                               f"training went on untracked ({paths['metrics'] / 'train_cc.json'})")


# --- what the served model declares ---------------------------------------------------------------------

def test_serving_requirements_are_pinned_as_in_constraints():
    pins = read_constraints(CONSTRAINTS_FILE)
    requirements = serving_requirements()
    names = set()
    for requirement in requirements:
        name, version = requirement.split("==")
        key = name.lower().replace("_", "-")
        names.add(key)
        assert key in pins, f"{name} is not in constraints.txt"
        assert pins[key][1] == version, f"{requirement}: constraints.txt has {pins[key][1]}"
    assert {"mlflow", "torch", "transformers", "tokenizers", "safetensors", "numpy", "pandas", "pyyaml",
            "pydantic"} <= names
    assert not names & {"deepspeed", "prefect", "dvc", "datasets", "accelerate", "cc-tuning"}  # training only


def test_signature_declares_max_new_tokens_and_leaves_the_input_to_the_model():
    """No input schema: MLflow would refuse a bare string or list before the pyfunc sees it
    (cc_core/serving.py checks every form, tests/unit/test_serving.py)."""
    signature = model_signature(12).to_dict()
    assert signature["inputs"] is None
    assert json.loads(signature["outputs"]) == [{"type": "string", "required": True}]
    params = json.loads(signature["params"])
    assert [(p["name"], p["type"], p["default"]) for p in params] == [("max_new_tokens", "long", 12)]


def test_a_version_registered_with_the_defaults_keeps_its_own_weights(tmp_path):
    """Without register.* settings a version carries a copy of its files: overwriting the checkpoint
    after registration leaves what the version loads verified and unchanged (a by-reference version
    refuses instead: test_by_reference_version_refuses_a_changed_file)."""
    import mlflow

    from cc_core.pyfunc_model import resolve_checkpoint
    from cc_core.tracking import fluent_tracking_uri

    paths = _fake_project(tmp_path)
    weights = paths["model"] / "model.safetensors"
    registered = file_sha256(weights)
    result = _register(tmp_path, paths)
    weights.write_bytes(b"retrained")  # the checkout moves on
    with fluent_tracking_uri(f"sqlite:///{tmp_path}/mlflow.db"):
        local = Path(mlflow.artifacts.download_artifacts(artifact_uri=result.model_uri, dst_path=str(tmp_path / "v")))
    config = mlflow.models.Model.load(local).flavors["python_function"]["config"]
    model_dir, _ = resolve_checkpoint(config, {"model": str(local / "artifacts" / "model"),
                                               "transform": str(local / "artifacts" / "transform")})
    assert result.storage == config["storage"] == "artifacts" and "model_dir" not in config
    assert file_sha256(model_dir / "model.safetensors") == registered != file_sha256(weights)


def _mlflow_plugins(tmp_path: Path) -> Path:
    """A folder to put on PYTHONPATH that declares the package's MLflow entry points (pyproject.toml) as an
    installed distribution does: the shared environment may have been installed before they existed."""
    import tomllib

    repo = Path(__file__).resolve().parents[2]
    points = tomllib.loads((repo / "pyproject.toml").read_text())["project"]["entry-points"]
    dist = tmp_path / "plugins" / "cc_tuning_entry_points-0.0.dist-info"
    dist.mkdir(parents=True)
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: cc-tuning-entry-points\nVersion: 0.0\n")
    (dist / "entry_points.txt").write_text("[mlflow.artifact_repository]\n" + "".join(
        f"{name} = {target}\n" for name, target in points["mlflow.artifact_repository"].items()))
    return dist.parent


def test_a_version_whose_artifacts_are_gone_is_one_line_naming_version_and_path(tmp_path):
    """Issue 21, point 7. Before: `mlflow.pyfunc.load_model("models:/NAME@champion")` with the version's artifact
    directory deleted said `No such artifact: ''`, and ModelFilesError did not name the version."""
    import os
    import shutil
    from urllib.parse import unquote, urlparse

    import mlflow

    paths = _fake_project(tmp_path)
    result = _register(tmp_path, paths)
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    client = mlflow.MlflowClient(uri)
    logged = client.get_model_version("cc-test", result.version).tags["logged_model_id"]
    location = Path(unquote(urlparse(client.get_logged_model(logged).artifact_location).path))
    repo = Path(__file__).resolve().parents[2]
    env = {**os.environ, "PYTHONPATH": f"{repo}{os.pathsep}{_mlflow_plugins(tmp_path)}"}
    load = "import mlflow, sys; mlflow.set_tracking_uri(sys.argv[1]); mlflow.pyfunc.load_model(sys.argv[2])"

    def last_line() -> str:
        out = subprocess.run([sys.executable, "-c", load, uri, "models:/cc-test@champion"], cwd=tmp_path, env=env,
                             capture_output=True, text=True, timeout=300)
        assert out.returncode != 0
        return out.stderr.strip().splitlines()[-1]

    shutil.rmtree(location / "artifacts" / "model")  # the version's weights gone, its MLmodel still there
    line = last_line()
    assert "ModelFilesError: registered model cc-test version 1 (run " in line
    assert f"{location}/artifacts/model/" in line and "missing (registered with sha256 " in line
    shutil.rmtree(location)  # the version's whole artifact directory
    line = last_line()
    assert line == (f"cc_registry_plugin.ArtifactsMissingError: registered model cc-test version 1 "
                    f"(models:/cc-test@champion): its files are missing from the artifact store: {location} does not "
                    "exist; restore them from a backup or register the checkpoint again")


# --- loading verifies every file ----------------------------------------------------------------------------

def _config(paths: dict, storage: str = "reference") -> dict:
    from cc_core.registry import file_manifest

    return {"storage": storage, "registered_model": "cc-test", "run_id": "r1", "logged_model_id": "m-1",
            "checkpoint_sha256": paths["checkpoint"], "files": file_manifest(paths["model"], paths["transform"]),
            "model_dir": str(paths["model"]), "transform_dir": str(paths["transform"]), "git_commit": "abc"}


def test_by_reference_version_refuses_a_changed_file(tmp_path):
    from safetensors.torch import save_file
    import torch

    from cc_core.pyfunc_model import ModelFilesError, resolve_checkpoint

    paths = _fake_project(tmp_path)
    config = _config(paths)
    assert resolve_checkpoint(config, {}) == (paths["model"], paths["transform"] / "transform.safetensors")
    weights = paths["model"] / "model.safetensors"
    expected = file_sha256(weights)
    save_file({"w": torch.ones(4)}, str(weights))  # retrained in place
    with pytest.raises(ModelFilesError) as err:
        resolve_checkpoint(config, {})
    message = str(err.value)
    assert message.startswith("registered model cc-test (run r1, logged model m-1")
    assert f"{weights}: sha256 is {file_sha256(weights)}, registered {expected}" in message
    assert "register the current checkpoint as a new version" in message


def test_by_reference_version_refuses_missing_or_extra_files(tmp_path):
    from cc_core.pyfunc_model import ModelFilesError, resolve_checkpoint

    paths = _fake_project(tmp_path)
    config = _config(paths)
    extra = paths["model"] / "model-00002.safetensors"
    extra.write_bytes((paths["model"] / "model.safetensors").read_bytes())
    with pytest.raises(ModelFilesError, match="model-00002.safetensors are not part of the registered checkpoint"):
        resolve_checkpoint(config, {})
    extra.unlink()
    (paths["transform"] / "transform.safetensors").unlink()
    with pytest.raises(ModelFilesError, match=r"transform\.safetensors: missing \(registered with sha256 [0-9a-f]{64}\)"):
        resolve_checkpoint(config, {})


def test_logged_version_never_falls_back_to_other_weights(tmp_path):
    from cc_core.pyfunc_model import ModelFilesError, resolve_checkpoint

    paths = _fake_project(tmp_path)
    config = _config(paths, storage="artifacts")  # model_dir/transform_dir present, yet never used
    with pytest.raises(ModelFilesError, match="artifact.s. model, transform missing from the logged model"):
        resolve_checkpoint(config, {})
    with pytest.raises(ModelFilesError, match="lists no file hashes"):
        resolve_checkpoint({**config, "files": None}, {"model": str(paths["model"]),
                                                        "transform": str(paths["transform"])})


def test_pyfunc_refuses_a_transform_fitted_for_another_checkpoint(tmp_path):
    import torch

    from cc_core.pyfunc_model import resolve_checkpoint
    from cc_core.modeling.transform_matrix import TransformMatrix

    paths = _fake_project(tmp_path)
    TransformMatrix(torch.eye(2), None, {}, {"model_sha256": "c" * 64}).save(paths["transform"] / "transform.safetensors")
    config = _config(paths)  # hashes recorded as registered (e.g. by a tool that skipped register's check)
    with pytest.raises(LineageError, match=r"registered model cc-test .*transform\.safetensors: made from checkpoint "
                                           r"cccccccccccc.* but .* is now " + paths["checkpoint"][:12]):
        resolve_checkpoint(config, {})


def test_resolving_a_models_uri_never_imports_the_installed_cc_core(tmp_path):
    """MLflow imports the models:/ plugin before a version's code_paths go on sys.path: a plugin inside
    cc_core put the installed cc_core in sys.modules first, and a served version ran the checkout's code."""
    import os

    repo = Path(__file__).resolve().parents[2]
    script = ("import sys\n"
              "from mlflow.store.artifact.artifact_repository_registry import _artifact_repository_registry as r\n"
              "print(r._registry['models'].__module__, 'cc_core' in sys.modules)")
    env = {**os.environ, "PYTHONPATH": f"{repo}{os.pathsep}{_mlflow_plugins(tmp_path)}",
           "MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path}/mlflow.db"}
    out = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, env=env, capture_output=True, text=True,
                         timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.split()[-2:] == ["cc_registry_plugin", "False"], out.stdout
