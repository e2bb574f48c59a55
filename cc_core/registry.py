"""The ``register`` stage: the CC checkpoint → a new version in the MLflow Model Registry.

    cctune register        # after eval; needs metrics/eval/cc/*.json

The version is an MLflow pyfunc (cc_core/pyfunc_model.py) whose ``predict`` generates in
``transform`` mode.

Immutable versions. By default (``register.log_weights: true``) the checkpoint (weights,
Decision Maker, tokenizer, chat template, ``cc_tuning.json``) and the Transform Matrix are
copied into the MLflow artifact store: a version never changes after registration, whatever
happens to the checkout. With ``log_weights: false`` (very large checkpoints on shared
storage) the files are referenced by absolute path; the model config then records the sha256
of every referenced file and loading verifies each one, refusing a changed or missing file.

Servable anywhere. The ``cc_core`` package travels with the model (``code_paths``); its
``requirements.txt`` pins the serving-time libraries exactly and its ``constraints.txt`` pins every
distribution of the environment it was registered from (``environment_pins``), so
``mlflow models serve -m models:/NAME@champion`` needs nothing but PyPI and no dependency floats.
The signature declares the param ``max_new_tokens`` and the string output; the input (a string, a
list of strings, or a DataFrame with ``prompt`` and optional ``lang``) and the serving limits
(``register.max_prompts``, ``max_prompt_chars``, ``request_timeout_s``, kept in the model config)
are checked by the pyfunc (cc_core/serving.py).

Lineage. Registration refuses a Transform Matrix fitted for another checkpoint and any
evaluation metrics file that does not name the checkpoint being registered
(``cc_core.lineage``). Each version is tagged with git commit, dvc.lock / params / evaluation
settings hashes, training run, checkpoint and transform hashes, per-benchmark averages.

Alias policy (cc_core/champion.py): the new version gets ``challenger``; ``champion`` moves to it
only when its ``register.metric`` (mean over benchmarks, or one benchmark's average) strictly beats
the current champion's, evaluated the same way (settings, data and scorer hashes) and completely;
otherwise the champion stays (``not_compared`` when the scores cannot be compared). Concurrent
registrations decide their aliases one at a time, in the order of their version numbers; every move
is appended to the registered model's ``alias_history`` tag. Versions are never overwritten or deleted.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
import logging
import math
import os
import re
import shutil
import tempfile
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

import mlflow
from mlflow.exceptions import MlflowException
from mlflow.models import ModelSignature
from mlflow.types.schema import ColSpec, ParamSchema, ParamSpec, Schema
from safetensors import safe_open

from cc_core.champion import metric_tags, pending_tags, settle, should_promote
from cc_core.config import Params
from cc_core.data.benchmarks import canonical_benchmark
from cc_core.io import InputError, file_sha256, read_json, write_json
from cc_core.lineage import LineageError, checkpoint_sha256, combined_sha256, require_same_checkpoint, short
from cc_core.modeling.checkpoint import read_cc_metadata
from cc_core.modeling.transform_matrix import TRANSFORM_FILE, check_fit_record
from cc_core.redact import strip_userinfo
from cc_core.tracking import (RUN_FILE, Tracker, close_orphaned_training_runs, fluent_tracking_uri, git_commit,
                              store_errors)

log = logging.getLogger(__name__)
PACKAGE_DIR = Path(__file__).resolve().parent
PYFUNC_FILE = PACKAGE_DIR / "pyfunc_model.py"
CONSTRAINTS_FILE = PACKAGE_DIR.parent / "constraints.txt"
LOGGED_MODEL_NAME = "cc_tuning_model"
REQUIRED_BY = "cctune register"
# What the pyfunc imports at serving time (cc_core travels as code): pinned from constraints.txt.
# Training-only tools (deepspeed, prefect, dvc, datasets, accelerate) are deliberately absent.
SERVING_PACKAGES = ("mlflow", "torch", "transformers", "tokenizers", "safetensors", "huggingface-hub",
                    "numpy", "pandas", "pyyaml", "pydantic", "jinja2")


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
    storage: str = "artifacts"
    checkpoint_sha256: str = ""


def model_name(params: Params) -> str:
    if params.register.model_name:
        return params.register.model_name
    base = Path(params.model.base).name if Path(params.model.base).is_dir() else params.model.base
    safe = "".join(ch if ch.isalnum() or ch in "-_." else "-" for ch in base.lower())
    return f"cc-tuning-{safe}"


# --- evaluation metrics ----------------------------------------------------------------------------

def _rerun_eval(benchmark: str) -> str:
    return f"cctune eval --method cc --benchmark {benchmark} (dvc repro eval_cc@{benchmark})"


def _read_metrics(path: Path) -> dict:
    """One metrics/eval/cc/<benchmark>.json, checked for what registration reads."""
    data = read_json(path)  # a truncated or non-UTF-8 file: InputError naming the file and line
    if not isinstance(data, dict):
        raise RegistryError(f"{path}: expected a JSON object (written by `cctune eval`); re-run: {_rerun_eval(path.stem)}")
    average = data.get("average")
    if isinstance(average, bool) or not isinstance(average, (int, float)) or not math.isfinite(average):
        what = "no 'average' key" if "average" not in data else f"'average' is {average!r}, not a number"
        raise RegistryError(f"{path}: {what} (not written by `cctune eval`, or by an older version); "
                            f"re-run: {_rerun_eval(path.stem)}")
    failed = data.get("failed_languages")
    if failed is not None and not isinstance(failed, (list, dict)):
        raise RegistryError(f"{path}: 'failed_languages' is {failed!r}, expected a list")
    return data


def eval_metrics(metrics_dir: Path, benchmarks: list[str] | None = None, method: str = "cc") -> dict[str, dict]:
    """``{benchmark: metrics json}`` of the benchmarks in ``eval.benchmarks`` (files left over from
    benchmarks no longer listed are ignored: DVC does not delete them)."""
    folder = Path(metrics_dir) / "eval" / method
    wanted = None if benchmarks is None else {canonical_benchmark(b) for b in benchmarks}
    found = {}
    for path in sorted(folder.glob("*.json")) if folder.is_dir() else []:
        if wanted is None or path.stem in wanted:
            found[path.stem] = _read_metrics(path)
    return found


def eval_settings_hash(params: Params) -> str:
    """What makes two versions' scores comparable: the evaluation, not how fast it ran (batch size, KV
    cache, compilation) nor where its data lies (the data itself is compared by content: eval_data_sha256)."""
    settings = params.eval.model_dump(exclude={"batch_size", "cache", "compile", "data_dir"})
    return hashlib.sha256(json.dumps(settings, sort_keys=True, default=str).encode()).hexdigest()


def pick_metric(averages: dict[str, float], metric: str) -> float:
    if metric == "mean":
        return sum(averages.values()) / len(averages)
    name = canonical_benchmark(metric)
    if name not in averages:
        raise RegistryError(f"register.metric={metric!r}: no evaluation of {name} for the cc model "
                            f"(have: {', '.join(averages) or 'none'})")
    return averages[name]


# --- lineage --------------------------------------------------------------------------------------

def transform_model_sha256(transform_file: Path) -> str | None:
    """The checkpoint the Transform Matrix was fitted for (its safetensors metadata; transform.json
    next to it for files that carry none)."""
    try:
        with safe_open(str(transform_file), framework="pt") as handle:
            meta = json.loads((handle.metadata() or {}).get("cc_transform", "{}"))
    except Exception as err:  # noqa: BLE001 - OSError, bad JSON, or safetensors' own SafetensorError
        raise InputError(f"{transform_file}: not a readable Transform Matrix ({err})") from None
    recorded = meta.get("model_sha256")
    side = transform_file.with_name("transform.json")
    if not recorded and side.is_file():
        data = read_json(side)
        recorded = data.get("model_sha256") if isinstance(data, dict) else None
    return recorded


def check_lineage(model_dir: Path, transform_file: Path, evaluated: dict[str, dict],
                  metrics_dir: Path) -> tuple[str, str]:
    """(checkpoint sha256, transform sha256) once the Transform Matrix and every metrics file are
    shown to come from this checkpoint; otherwise a LineageError naming both hashes and what to re-run."""
    checkpoint = checkpoint_sha256(model_dir)
    transform = check_fit_record(transform_file)  # the matrix fit wrote, not one altered since
    require_same_checkpoint(transform_file, transform_model_sha256(transform_file), checkpoint, model_dir,
                            rerun="cctune collect && cctune fit (dvc repro fit), then cctune register")
    for benchmark, data in evaluated.items():
        path = metrics_dir / "eval" / "cc" / f"{benchmark}.json"
        require_same_checkpoint(path, data.get("checkpoint_sha256"), checkpoint, model_dir,
                                rerun=_rerun_eval(benchmark))
        recorded = data.get("transform_sha256")
        if recorded is not None and recorded != transform:
            raise LineageError(f"{path}: evaluated with Transform Matrix {short(recorded)} but {transform_file} is "
                               f"now {short(transform)}; re-run: {_rerun_eval(benchmark)}")
    return checkpoint, transform


# --- what a version carries -------------------------------------------------------------------------

def checkpoint_files(model_dir: Path) -> list[str]:
    """The files of a checkpoint a version needs (relative POSIX paths): every top-level file but the
    MLflow run pointer and hidden files, and every ``*.safetensors`` below (what the checkpoint hash covers)."""
    files = {p.name for p in model_dir.iterdir() if p.is_file() and not p.name.startswith(".") and p.name != RUN_FILE}
    files |= {p.relative_to(model_dir).as_posix() for p in model_dir.rglob("*.safetensors") if p.is_file()}
    return sorted(files)


def transform_files(transform_dir: Path) -> list[str]:
    return [name for name in (TRANSFORM_FILE, "transform.json") if (transform_dir / name).is_file()]


def file_manifest(model_dir: Path, transform_dir: Path) -> dict[str, dict[str, str]]:
    """``{"model": {relative path: sha256}, "transform": {...}}``: what loading verifies."""
    return {"model": {rel: file_sha256(model_dir / rel) for rel in checkpoint_files(model_dir)},
            "transform": {rel: file_sha256(transform_dir / rel) for rel in transform_files(transform_dir)}}


def _link_or_copy(source: Path, target: Path) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.link(source, target)  # no second copy on disk while MLflow uploads
    except OSError:
        shutil.copy2(source, target)


def _stage(model_dir: Path, transform_dir: Path, manifest: dict, into: Path) -> dict[str, str]:
    """Exactly the manifest's files under ``into/model`` and ``into/transform`` (MLflow artifacts)."""
    for group, root in (("model", model_dir), ("transform", transform_dir)):
        for rel in manifest[group]:
            _link_or_copy(root / rel, into / group / rel)
    return {"model": str(into / "model"), "transform": str(into / "transform")}


def _stage_code(into: Path) -> str:
    """A copy of the cc_core package without bytecode caches (MLflow's ``code_paths``)."""
    target = into / "code" / "cc_core"
    shutil.copytree(PACKAGE_DIR, target, ignore=shutil.ignore_patterns("__pycache__", "*.pyc", ".*"))
    return str(target)


def _normalise(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def read_constraints(path: Path = CONSTRAINTS_FILE) -> dict[str, tuple[str, str]]:
    """``{normalised name: (name as written, version)}`` of the ``name==version`` lines of constraints.txt."""
    pins = {}
    if path.is_file():
        for line in path.read_text(encoding="utf-8").splitlines():
            line = line.split("#", 1)[0].strip()
            if "==" in line and not line.startswith("-"):
                name, version = (part.strip() for part in line.split("==", 1))
                pins[_normalise(name)] = (name, version)
    return pins


def _editable(dist) -> bool:
    return bool(json.loads(dist.read_text("direct_url.json") or "{}").get("dir_info", {}).get("editable"))


def environment_pins() -> list[str]:
    """``name==version`` of every distribution installed in this environment (the one registering),
    without local tags such as +cpu; editable installs (the project itself: it travels as code) left
    out. Logged as the version's constraints.txt: a serving host that builds an environment gets
    every dependency at the version registered, not the newest."""
    pins: dict[str, str] = {}
    for dist in importlib.metadata.distributions():  # sys.path order: the first is the one imported
        name = dist.metadata["Name"]
        # the project travels as code (by name too: a checkout's egg-info shadows the editable record)
        if not name or _normalise(name) in pins or _editable(dist) or _normalise(name) == "cc-tuning":
            continue
        pins[_normalise(name)] = f"{name}=={dist.version.split('+', 1)[0]}"
    return [pins[key] for key in sorted(pins)]


def serving_requirements(constraints: Path = CONSTRAINTS_FILE) -> list[str]:
    """Exact pins of what the pyfunc needs at serving time, at their versions in this environment
    (as ``environment_pins``); constraints.txt's pin for one that is not installed."""
    pins = read_constraints(constraints)
    requirements = []
    for package in SERVING_PACKAGES:
        try:
            name, version = package, importlib.metadata.version(package).split("+", 1)[0]
        except importlib.metadata.PackageNotFoundError:
            if package not in pins:
                raise RegistryError(f"{constraints}: no pin for {package}, and it is not installed") from None
            name, version = pins[package]
        requirements.append(f"{name}=={version}")
    return requirements


def model_signature(max_new_tokens: int):
    """Param ``max_new_tokens`` (int); output: one string per prompt. No input schema: MLflow would
    then refuse a bare string or list of strings before the model sees it; the pyfunc checks every
    accepted form itself (cc_core/serving.py), with the limits of the model config."""
    return ModelSignature(inputs=None, outputs=Schema([ColSpec("string")]),
                          params=ParamSchema([ParamSpec("max_new_tokens", "long", int(max_new_tokens))]))


# --- the stage ---------------------------------------------------------------------------------------

def _ensure_registered_model(client, name: str) -> None:
    """Create the registered model unless it exists (a concurrent registration may create it first)."""
    try:
        client.get_registered_model(name)
        return
    except MlflowException as err:
        if err.error_code != "RESOURCE_DOES_NOT_EXIST":
            raise
    try:
        client.create_registered_model(name, description="CC-Tuning checkpoints (pyfunc, transform mode)")
    except MlflowException as err:
        if err.error_code != "RESOURCE_ALREADY_EXISTS":
            raise


def register(params: Params, model_dir: str | Path = "models/cc", transform_dir: str | Path = "transform",
             metrics_dir: str | Path = "metrics", lock_file: str | Path = "dvc.lock") -> RegisterResult:
    model_dir, transform_dir, metrics_dir = Path(model_dir), Path(transform_dir), Path(metrics_dir)
    evaluated = eval_metrics(metrics_dir, params.eval.benchmarks)
    if not evaluated:
        raise RegistryError(f"{metrics_dir / 'eval' / 'cc'}: no evaluation metrics for the cc model; "
                            "run `cctune eval --method cc --benchmark ...` first (register refuses unevaluated models)")
    averages = {name: float(data["average"]) for name, data in evaluated.items()}
    if params.register.metric == "mean":
        missing = [b for b in params.eval.benchmarks if b not in averages]  # names canonical since load
        if missing:
            raise RegistryError(f"{metrics_dir / 'eval' / 'cc'}: no metrics for {', '.join(missing)} of eval.benchmarks; "
                                "the mean over benchmarks needs all of them (run their eval stages)")
    value = pick_metric(averages, params.register.metric)
    failed = {name: data["failed_languages"] for name, data in evaluated.items() if data.get("failed_languages")}
    settings_hash = eval_settings_hash(params)
    evidence = score_identity(evaluated)
    read_cc_metadata(model_dir)  # a clear error if this is not a CC checkpoint
    transform_file = transform_dir / TRANSFORM_FILE
    if not transform_file.is_file():
        raise InputError(f"{transform_dir}: no Transform Matrix; run `cctune fit` first")
    checkpoint, transform_sha = check_lineage(model_dir, transform_file, evaluated, metrics_dir)

    tracker = Tracker(params.tracking, required_by=REQUIRED_BY)
    uri = tracker.uri
    client = tracker.client()
    close_orphaned_training_runs(tracker, metrics_dir)  # a training run its lost store left RUNNING: FAILED now
    name = model_name(params)
    training_run = tracker.training_run_id(checkpoint)
    storage = "artifacts" if params.register.log_weights else "reference"
    manifest = file_manifest(model_dir, transform_dir)
    tags = {"git_commit": git_commit(), "params_sha256": params.section_hash(),
            "dvc_lock_sha256": file_sha256(lock_file) if Path(lock_file).is_file() else "none",
            "register_metric": params.register.metric, **metric_tags(value),
            "eval_settings_sha256": settings_hash, **evidence,
            "checkpoint_sha256": checkpoint, "transform_sha256": transform_sha,
            "training_run_id": training_run or "none", "storage": storage,
            **({"failed_languages": json.dumps(failed)} if failed else {}),
            **{f"avg_{k}": f"{v:.4f}" for k, v in averages.items()}}
    config = {"mode": "transform", "decision_mode": params.eval.decision_mode,
              "max_new_tokens": params.eval.max_new_tokens, "batch_size": params.eval.batch_size,
              "storage": storage, "registered_model": name, "tracking_uri": strip_userinfo(uri),
              "git_commit": tags["git_commit"], "max_prompts": params.register.max_prompts,
              "max_prompt_chars": params.register.max_prompt_chars,
              "request_timeout_s": params.register.request_timeout_s,
              "checkpoint_sha256": checkpoint, "transform_sha256": transform_sha, "files": manifest,
              "registered_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    if storage == "reference":
        config.update(model_dir=str(model_dir.resolve()), transform_dir=str(transform_dir.resolve()))

    try:  # next to the checkpoint: its files are hard-linked, not copied, into the staging folder
        staging = Path(tempfile.mkdtemp(prefix=".register-", dir=model_dir.resolve().parent))
    except OSError:
        staging = Path(tempfile.mkdtemp(prefix="cc-register-"))
    try:
        # fluent: mlflow.start_run / log_model, and create_model_version resolving the logged model's
        # "models:/m-..." source, use the process-global URI (set for this block only)
        with store_errors(uri, required_by=REQUIRED_BY), fluent_tracking_uri(uri):
            run_id = training_run
            if run_id is not None and Tracker.find_run(client, run_id) is None:
                # trained against another tracking store: log the model in a new run here
                log.warning("training run %s is not in %s: registering from a new run", run_id, strip_userinfo(uri))
                run_id = None
            artifacts = _stage(model_dir, transform_dir, manifest, staging) if storage == "artifacts" else None
            code = _stage_code(staging)
            pins = staging / "constraints.txt"
            pins.write_text("\n".join(environment_pins()) + "\n", encoding="utf-8")
            experiment = tracker.experiment_id(client)
            with mlflow.start_run(run_id=run_id, experiment_id=None if run_id else experiment,
                                  run_name=None if run_id else "register") as run:
                logged = mlflow.initialize_logged_model(
                    name=LOGGED_MODEL_NAME, source_run_id=run.info.run_id,
                    experiment_id=run.info.experiment_id)  # its id goes into the config: load errors name it
                config.update(run_id=run.info.run_id, logged_model_id=logged.model_id)
                with warnings.catch_warnings():
                    # No input example on purpose: MLflow would load the model (the whole checkpoint) to check it.
                    warnings.filterwarnings("ignore", message=".*input example was not provided.*")
                    info = mlflow.pyfunc.log_model(
                        name=LOGGED_MODEL_NAME, model_id=logged.model_id, python_model=str(PYFUNC_FILE),
                        code_paths=[code], model_config=config, artifacts=artifacts,
                        signature=model_signature(params.eval.max_new_tokens),
                        pip_requirements=[*serving_requirements(), f"-c {pins}"],
                        tags={"checkpoint_sha256": checkpoint, "transform_sha256": transform_sha, "storage": storage})
            _ensure_registered_model(client, name)
            tags["logged_model_id"] = info.model_id
            # model_id: MLflow 3 servers resolve a "models:/m-..." source through the logged model's id
            # tagged pending in the same write: the aliases are decided in version order (cc_core.champion)
            version = str(client.create_model_version(name, info.model_uri, run_id=info.run_id,
                                                      tags={**tags, **pending_tags()}, model_id=info.model_id).version)

            def decide(champion: str | None) -> tuple[bool, str]:
                return should_promote(client, name, champion, value, params.register.metric, settings_hash, failed,
                                      evidence)

            def record(champion: str | None) -> None:  # inside the critical section: the last version writes last
                write_json(metrics_dir / "register.json", {"model_name": name, "version": str(version),
                                                           "metric": params.register.metric, "value": value,
                                                           "champion": str(champion), "promoted": champion == version})

            champion, promoted, _ = settle(client, name, version, decide, record)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    log.info("registered %s version %s (%s=%.4f, weights: %s); champion: version %s", name, version,
             params.register.metric, value, "in the artifact store" if storage == "artifacts" else "by reference",
             champion)
    return RegisterResult(name, str(version), params.register.metric, value, str(champion), promoted,
                          f"models:/{name}/{version}", storage, checkpoint)


def score_identity(evaluated: dict[str, dict]) -> dict[str, str]:
    """The version's tags naming what its scores were computed on: the evaluation data (content hash per
    benchmark, and one over all) and the scoring code and protocol. "none" when a metrics file predates them."""
    data = {name: m.get("eval_data_sha256") or "none" for name, m in sorted(evaluated.items())}
    scorers = {name: m.get("scorer_sha256") or "none" for name, m in sorted(evaluated.items())}
    return {"eval_data_sha256": "none" if "none" in data.values() else combined_sha256(data),
            "eval_data_by_benchmark": json.dumps(data),
            "scorer_sha256": "none" if "none" in scorers.values() else combined_sha256(scorers)}
