"""What a registry version carries (``cctune register``, cc_core/registry.py): its files and their
hashes, the code, the pinned requirements, the signature; and for an adapter checkpoint, the base
model it names.

    manifest = file_manifest(Path("models/cc"), Path("transform"), base_dir)   # {group: {file: sha256}}
    artifacts = stage_files({"model": ..., "transform": ...}, manifest, staging)
    base_id = logged_base_model(client, experiment_id, run_id, base_dir, manifest["base"])

An adapter version (``train.peft: lora``) logs the adapter, the Decision Maker, ``cc_tuning.json``,
``cc_adapter.json`` and the Transform Matrix (megabytes); its tokenizer only where it differs from the
base model's (training never changes it: it then travels with the base). The base model itself is
logged once per content (a logged model ``cc_tuning_base`` tagged with the hash of its files, which
every later version of the same base reuses), or referenced by path with ``register.log_weights:
false``; either way the version's model config holds the sha256 of every base file and loading
verifies them (cc_core/pyfunc_model.py), so a version never runs on another base.
"""

from __future__ import annotations

import importlib.metadata
import json
import os
import re
import shutil
from pathlib import Path

from mlflow.models import ModelSignature
from mlflow.types.schema import ColSpec, ParamSchema, ParamSpec, Schema

from cc_core.io import file_sha256
from cc_core.lineage import combined_sha256
from cc_core.modeling.adapters import ADAPTER_CONFIG, ADAPTER_META, ADAPTER_WEIGHTS
from cc_core.modeling.checkpoint import CC_CONFIG, DM_WEIGHTS
from cc_core.modeling.transform_matrix import TRANSFORM_FILE
from cc_core.tracking import RUN_FILE

PACKAGE_DIR = Path(__file__).resolve().parent
CONSTRAINTS_FILE = PACKAGE_DIR.parent / "constraints.txt"
# What the pyfunc imports at serving time (cc_core travels as code): pinned from constraints.txt.
# Training-only tools (deepspeed, prefect, dvc, datasets, accelerate) are deliberately absent.
SERVING_PACKAGES = ("mlflow", "torch", "transformers", "tokenizers", "safetensors", "huggingface-hub",
                    "numpy", "pandas", "pyyaml", "pydantic", "jinja2")
ADAPTER_SERVING_PACKAGES = ("peft",)  # an adapter version loads its adapter onto the base with PEFT
BASE_MODEL_NAME = "cc_tuning_base"  # the logged model holding a base model's files
BASE_FILES_TAG = "cc_base_files_sha256"
# An adapter checkpoint's own files; the rest (tokenizer, chat template) may be its base model's.
ADAPTER_OWN_FILES = {ADAPTER_CONFIG, ADAPTER_WEIGHTS, ADAPTER_META, CC_CONFIG, DM_WEIGHTS}


class RegistryError(ValueError):
    pass


def checkpoint_files(model_dir: Path) -> list[str]:
    """The files of a checkpoint a version needs (relative POSIX paths): every top-level file but the
    MLflow run pointer and hidden files, and every ``*.safetensors`` below (what the checkpoint hash covers)."""
    files = {p.name for p in model_dir.iterdir() if p.is_file() and not p.name.startswith(".") and p.name != RUN_FILE}
    files |= {p.relative_to(model_dir).as_posix() for p in model_dir.rglob("*.safetensors") if p.is_file()}
    return sorted(files)


def transform_files(transform_dir: Path) -> list[str]:
    return [name for name in (TRANSFORM_FILE, "transform.json") if (transform_dir / name).is_file()]


def file_manifest(model_dir: Path, transform_dir: Path, base_dir: Path | None = None) -> dict[str, dict[str, str]]:
    """``{"model": {relative path: sha256}, "transform": {...}}``: what loading verifies. For an adapter
    checkpoint, ``"base"``: every file of its base model (``base_dir``), and ``"model"`` without the
    tokenizer files when they are all the base's own."""
    model = {rel: file_sha256(model_dir / rel) for rel in checkpoint_files(model_dir)}
    manifest = {"model": model,
                "transform": {rel: file_sha256(transform_dir / rel) for rel in transform_files(transform_dir)}}
    if base_dir is not None:
        base = {rel: file_sha256(base_dir / rel) for rel in checkpoint_files(base_dir)}
        shared = {rel for rel in model if rel not in ADAPTER_OWN_FILES}
        if shared and all(base.get(rel) == model[rel] for rel in shared):
            manifest["model"] = {rel: digest for rel, digest in model.items() if rel not in shared}
        manifest["base"] = base
    return manifest


def base_files_sha256(base_manifest: dict[str, str]) -> str:
    """One hash of a base model's files (names and contents): the key a logged base model is reused by."""
    return combined_sha256(base_manifest)


def _link_or_copy(source: Path, target: Path) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.link(source, target)  # no second copy on disk while MLflow uploads
    except OSError:
        shutil.copy2(source, target)


def stage_files(roots: dict[str, Path], manifest: dict, into: Path) -> dict[str, str]:
    """Exactly the manifest's files of each group (``roots``: group → its directory) under ``into/<group>``
    (MLflow artifacts)."""
    for group, root in roots.items():
        for rel in manifest[group]:
            _link_or_copy(root / rel, into / group / rel)
    return {group: str(into / group) for group in roots}


def stage_code(into: Path) -> str:
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


def serving_requirements(constraints: Path = CONSTRAINTS_FILE, adapter: bool = False) -> list[str]:
    """Exact pins of what the pyfunc needs at serving time (``adapter``: PEFT too), at their versions in
    this environment (as ``environment_pins``); constraints.txt's pin for one that is not installed."""
    pins = read_constraints(constraints)
    requirements = []
    for package in SERVING_PACKAGES + (ADAPTER_SERVING_PACKAGES if adapter else ()):
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


# --- the base model of an adapter version ----------------------------------------------------------

def logged_base_model(client, experiment_id: str, run_id: str, base_dir: Path, base_manifest: dict[str, str],
                      staging: Path) -> str:
    """The id of the logged model holding exactly these base files: one already logged in the experiment
    (READY, same ``cc_base_files_sha256``), else a new one logged now from ``base_dir``."""
    key = base_files_sha256(base_manifest)
    found = client.search_logged_models(experiment_ids=[experiment_id], max_results=1,
                                        filter_string=f"name = '{BASE_MODEL_NAME}' AND tags.{BASE_FILES_TAG} = '{key}'")
    for model in found:
        if str(getattr(model.status, "name", model.status)).upper().endswith("READY"):
            return model.model_id
    model = client.create_logged_model(experiment_id, name=BASE_MODEL_NAME, source_run_id=run_id,
                                       tags={BASE_FILES_TAG: key, "role": "the base model of adapter versions"})
    folder = Path(stage_files({"base": base_dir}, {"base": base_manifest}, staging)["base"])
    client.log_model_artifacts(model.model_id, str(folder))
    client.finalize_logged_model(model.model_id, "READY")
    return model.model_id
