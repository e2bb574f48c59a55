"""The ``register`` stage: the CC checkpoint → a new version in the MLflow Model Registry.

    cctune register        # after eval; needs metrics/eval/cc/*.json

The version is an MLflow pyfunc (cc_core/pyfunc_model.py) whose ``predict`` generates in
``transform`` mode. Alias policy: the new version gets ``challenger``; ``champion`` moves to
it only when its ``register.metric`` (mean over benchmarks, or one benchmark's average)
beats the current champion's, and only when both were evaluated the same way (same
``eval_settings_sha256`` tag: benchmarks, languages, limit, data, generation settings) and
completely (no failed languages): a score from another evaluation is not comparable. MLflow
keeps no alias history, so every move is appended to the registered model's
``alias_history`` tag. Versions are never overwritten or deleted.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path

from cc_core.config import Params
from cc_core.io import InputError, file_sha256, write_json
from cc_core.tracking import Tracker, git_commit, read_run_id, tracking_uri

log = logging.getLogger(__name__)
CHAMPION, CHALLENGER = "champion", "challenger"
PYFUNC_FILE = Path(__file__).with_name("pyfunc_model.py")


class RegistryError(ValueError):
    pass


@dataclass(frozen=True)
class RegisterResult:
    model_name: str
    version: str
    metric: str
    value: float
    champion: str
    promoted: bool
    model_uri: str


def model_name(params: Params) -> str:
    if params.register.model_name:
        return params.register.model_name
    base = Path(params.model.base).name if Path(params.model.base).is_dir() else params.model.base
    safe = "".join(ch if ch.isalnum() or ch in "-_." else "-" for ch in base.lower())
    return f"cc-tuning-{safe}"


def eval_metrics(metrics_dir: Path, benchmarks: list[str] | None = None, method: str = "cc") -> dict[str, dict]:
    """``{benchmark: metrics json}`` of the benchmarks in ``eval.benchmarks`` (files left over from
    benchmarks no longer listed are ignored: DVC does not delete them)."""
    from cc_core.data.benchmarks import canonical_benchmark

    folder = metrics_dir / "eval" / method
    wanted = None if benchmarks is None else {canonical_benchmark(b) for b in benchmarks}
    found = {}
    for path in sorted(folder.glob("*.json")) if folder.is_dir() else []:
        if wanted is None or path.stem in wanted:
            found[path.stem] = json.loads(path.read_text())
    return found


def eval_settings_hash(params: Params) -> str:
    """What makes two versions' scores comparable: the evaluation, not how fast it ran."""
    settings = params.eval.model_dump(exclude={"batch_size"})
    return hashlib.sha256(json.dumps(settings, sort_keys=True, default=str).encode()).hexdigest()


def pick_metric(averages: dict[str, float], metric: str) -> float:
    if metric == "mean":
        return sum(averages.values()) / len(averages)
    from cc_core.data.benchmarks import canonical_benchmark

    name = canonical_benchmark(metric)
    if name not in averages:
        raise RegistryError(f"register.metric={metric!r}: no evaluation of {name} for the cc model "
                            f"(have: {', '.join(averages) or 'none'})")
    return averages[name]


def _history(client, name: str) -> list[dict]:
    model = client.get_registered_model(name)
    return json.loads(model.tags.get("alias_history", "[]"))


def _record_alias(client, name: str, alias: str, version: str, previous: str | None, reason: str) -> None:
    history = _history(client, name)
    history.append({"alias": alias, "version": version, "previous": previous, "reason": reason,
                    "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())})
    client.set_registered_model_alias(name, alias, version)
    client.set_registered_model_tag(name, "alias_history", json.dumps(history))


def register(params: Params, model_dir: str | Path = "models/cc", transform_dir: str | Path = "transform",
             metrics_dir: str | Path = "metrics", lock_file: str | Path = "dvc.lock") -> RegisterResult:
    import mlflow
    from mlflow.exceptions import MlflowException

    model_dir, transform_dir, metrics_dir = Path(model_dir), Path(transform_dir), Path(metrics_dir)
    evaluated = eval_metrics(metrics_dir, params.eval.benchmarks)
    if not evaluated:
        raise RegistryError(f"{metrics_dir / 'eval' / 'cc'}: no evaluation metrics for the cc model; "
                            "run `cctune eval --method cc --benchmark ...` first (register refuses unevaluated models)")
    averages = {name: data["average"] for name, data in evaluated.items()}
    if params.register.metric == "mean":
        missing = [b for b in params.eval.benchmarks if b not in averages]  # names canonical since load
        if missing:
            raise RegistryError(f"{metrics_dir / 'eval' / 'cc'}: no metrics for {', '.join(missing)} of eval.benchmarks; "
                                "the mean over benchmarks needs all of them (run their eval stages)")
    value = pick_metric(averages, params.register.metric)
    failed = {name: data["failed_languages"] for name, data in evaluated.items() if data.get("failed_languages")}
    settings_hash = eval_settings_hash(params)
    from cc_core.modeling.checkpoint import read_cc_metadata

    read_cc_metadata(model_dir)  # a clear error if this is not a CC checkpoint
    if not (transform_dir / "transform.safetensors").is_file():
        raise InputError(f"{transform_dir}: no Transform Matrix; run `cctune fit` first")
    tracker = Tracker(params.tracking.model_copy(update={"on_unavailable": "fail", "enabled": True}))
    client = tracker._connect()
    uri = tracking_uri(params.tracking)
    name = model_name(params)
    run_id = read_run_id(model_dir)
    tags = {"git_commit": git_commit(), "params_sha256": params.section_hash(),
            "dvc_lock_sha256": file_sha256(lock_file) if Path(lock_file).is_file() else "none",
            "register_metric": params.register.metric, "metric_value": f"{value:.6f}",
            "eval_settings_sha256": settings_hash,
            **({"failed_languages": json.dumps(failed)} if failed else {}),
            **{f"avg_{k}": f"{v:.4f}" for k, v in averages.items()}}
    if run_id is not None and Tracker.find_run(client, run_id) is None:
        # trained against another tracking store: log the model in a new run here, tagged with the origin
        log.warning("training run %s is not in %s: registering from a new run", run_id, uri)
        tags["training_run_id"] = run_id
        run_id = None
    config = {"model_dir": str(model_dir.resolve()), "transform": str((transform_dir / "transform.safetensors").resolve()),
              "mode": "transform", "decision_mode": params.eval.decision_mode,
              "max_new_tokens": params.eval.max_new_tokens, "batch_size": params.eval.batch_size}
    artifacts = None
    if params.register.log_weights:  # copy the weights into the artifact store instead of referencing them
        artifacts = {"model": str(model_dir.resolve()), "transform": config["transform"]}
    mlflow.set_tracking_uri(uri)
    experiment = tracker.experiment_id(client)
    with mlflow.start_run(run_id=run_id, experiment_id=None if run_id else experiment,
                          run_name=None if run_id else "register"):
        info = mlflow.pyfunc.log_model(
            name="cc_tuning_model", python_model=str(PYFUNC_FILE), model_config=config, artifacts=artifacts,
            pip_requirements=[f"cc-tuning=={_version()}"], tags={"checkpoint_sha256": _weights_hash(model_dir)})
    try:
        client.get_registered_model(name)
    except MlflowException:
        client.create_registered_model(name, description="CC-Tuning checkpoints (pyfunc, transform mode)")
    # model_id: MLflow 3 servers resolve a "models:/m-..." source through the logged model's id
    version = client.create_model_version(name, info.model_uri, run_id=info.run_id, tags=tags,
                                          model_id=info.model_id).version
    _record_alias(client, name, CHALLENGER, version, _alias_version(client, name, CHALLENGER), "new version")
    champion = _alias_version(client, name, CHAMPION)
    promoted, reason = _should_promote(client, name, champion, value, params.register.metric, settings_hash, failed)
    if promoted:
        _record_alias(client, name, CHAMPION, version, champion, reason)
        champion = version
    else:
        log.info("champion stays at version %s: %s", champion, reason)
    log.info("registered %s version %s (%s=%.4f); champion: version %s", name, version,
             params.register.metric, value, champion)
    result = RegisterResult(name, str(version), params.register.metric, value, str(champion), promoted,
                            f"models:/{name}/{version}")
    write_json(metrics_dir / "register.json", {"model_name": name, "version": result.version, "metric": result.metric,
                                               "value": value, "champion": result.champion, "promoted": promoted})
    return result


def _should_promote(client, name: str, champion: str | None, value: float, metric: str, settings_hash: str,
                    failed: dict) -> tuple[bool, str]:
    """(move champion?, why) under the alias policy in the module docstring."""
    if failed:
        return False, f"incomplete evaluation (failed languages: {failed})"
    if champion is None:
        return True, "first version"
    tags = client.get_model_version(name, champion).tags
    if tags.get("register_metric", metric) != metric or tags.get("eval_settings_sha256", settings_hash) != settings_hash:
        return False, (f"not comparable with version {champion}: evaluated with other eval settings or metric "
                       "(move the alias by hand if intended)")
    champion_value = float(tags.get("metric_value", "-inf"))
    if value > champion_value:
        return True, f"{value:.4f} > {champion_value:.4f}"
    return False, f"{value:.4f} does not beat {champion_value:.4f}"


def _alias_version(client, name: str, alias: str) -> str | None:
    from mlflow.exceptions import MlflowException

    try:
        return client.get_model_version_by_alias(name, alias).version
    except MlflowException:
        return None


def _version() -> str:
    import importlib.metadata

    return importlib.metadata.version("cc-tuning")


def _weights_hash(model_dir: Path) -> str:
    digest = hashlib.sha256()
    for path in sorted(model_dir.glob("*.safetensors")):
        digest.update(file_sha256(path).encode())
    return digest.hexdigest()
