"""MLflow pyfunc for a registered CC-Tuning checkpoint ("models from code": nothing is pickled).

    model = mlflow.pyfunc.load_model("models:/cc-tuning-smollm2-135m-instruct@champion")
    model.predict(pd.DataFrame({"prompt": ["Quelle est la capitale du Kenya ?"], "lang": ["fr"]}))
    model.predict(["Was ist 2+2?", "..."], params={"max_new_tokens": 16})  # → list of str
    model.predict("Was ist 2+2?")

What a request may hold, its limits (the model config's ``max_prompts``, ``max_prompt_chars``,
``request_timeout_s``) and how it is refused: cc_core/serving.py.

MLflow executes this file when loading; ``cctune register`` logs it (cc_core.registry) with
the ``cc_core`` package as ``code_paths``. The model config says where the checkpoint is:
``storage: artifacts`` (the default) reads the copy in the MLflow artifact store,
``storage: reference`` the absolute paths recorded at registration. Either way the config
records the sha256 of every file (``files``), and loading verifies each one: a missing or
changed file, or a Transform Matrix fitted for another checkpoint, is refused with an error
naming the version (registered model, run, logged model id), the file and both hashes; it
never falls back to other weights.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from pathlib import Path

import mlflow
import pandas as pd
from mlflow.pyfunc import PythonModel
from safetensors import safe_open

from cc_core.generate import GenerationStopped, Generator
from cc_core.io import file_sha256
from cc_core.lineage import LineageError, require_same_checkpoint
from cc_core.modeling.transform_matrix import TRANSFORM_FILE
from cc_core.prompts import encode_prompt
from cc_core.serving import (Limits, ServingError, check_fits, check_params, check_prompts, install_request_guard,
                             max_new_tokens, prompts_from)

log = logging.getLogger(__name__)


class ModelFilesError(ValueError):
    """A registered version's files are missing or not the ones it was registered with."""


def registered_version(config: dict) -> str | None:
    """The version number of the model being loaded (it is assigned after the model config is written):
    from the ``registered_model_meta`` file MLflow writes beside the model's files when it loads
    ``models:/NAME/VERSION`` or ``models:/NAME@ALIAS``, else from the registry by logged model id.
    None when neither says (a logged model loaded by its own URI, a store out of reach)."""
    meta = Path(__file__).with_name("registered_model_meta")  # this file runs from the model's own folder
    if meta.is_file():
        for line in meta.read_text(encoding="utf-8", errors="replace").splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "model_version" and value.strip():
                return value.strip().strip("'\"")
    name, logged = config.get("registered_model"), config.get("logged_model_id")
    if not name or not logged or not os.environ.get("MLFLOW_TRACKING_URI"):
        return None  # no store named (mlflow.set_tracking_uri exports it): never open a default one here
    try:
        for version in mlflow.MlflowClient().search_model_versions(f"name='{name}'"):
            if getattr(version, "model_id", None) == logged or str(version.source).endswith(str(logged)):
                return str(version.version)
    except Exception:  # noqa: BLE001 - only an error message is being written: the store may be the problem
        return None
    return None


def describe(config: dict) -> str:
    """How a load error names the version: registered model, version number, run, logged model id."""
    version = registered_version(config)
    return (f"registered model {config.get('registered_model', '?')}"
            f"{f' version {version}' if version else ''} (run {config.get('run_id', '?')}, "
            f"logged model {config.get('logged_model_id', '?')}, registered {config.get('registered_at', '?')}, "
            f"weights {'by reference' if config.get('storage') == 'reference' else 'in the artifact store'})")


def _hint(config: dict) -> str:
    if config.get("storage") == "reference":
        commit = str(config.get("git_commit", "?"))
        dirty = " (registered from a tree with uncommitted changes)" if commit.endswith("-dirty") else ""
        return (f"this version references the files by path: restore them (e.g. `git checkout "
                f"{commit.removesuffix('-dirty')} && dvc checkout`{dirty}) or register the current checkpoint "
                "as a new version")
    return "the artifact store's copy of this version is damaged: restore it from a backup or register again"


def verify_files(config: dict, roots: dict[str, Path]) -> None:
    """Every file of ``config['files']`` is present under its root with its recorded sha256, and the
    model holds no other weights (the checkpoint hash covers every ``*.safetensors`` below it)."""
    where, manifest = describe(config), config.get("files")
    if not isinstance(manifest, dict) or not manifest.get("model") or not manifest.get("transform"):
        raise ModelFilesError(f"{where}: its model config lists no file hashes (registered by an older cc-tuning); "
                              "its weights cannot be verified: register the checkpoint again")
    for group, root in roots.items():
        for rel, expected in sorted(manifest.get(group, {}).items()):
            path = root / rel
            if not path.is_file():
                raise ModelFilesError(f"{where}: {path}: missing (registered with sha256 {expected}); {_hint(config)}")
            actual = file_sha256(path)
            if actual != expected:
                raise ModelFilesError(f"{where}: {path}: sha256 is {actual}, registered {expected}: the file changed "
                                      f"after registration; {_hint(config)}")
    model_root = roots["model"]
    extra = sorted(p.relative_to(model_root).as_posix() for p in model_root.rglob("*.safetensors")
                   if p.relative_to(model_root).as_posix() not in manifest["model"])
    if extra:
        raise ModelFilesError(f"{where}: {model_root}: weights {', '.join(extra)} are not part of the registered "
                              f"checkpoint; {_hint(config)}")


def check_transform_lineage(config: dict, transform_file: Path, model_dir: Path) -> None:
    """Refuse a Transform Matrix fitted for another checkpoint than this version's."""
    with safe_open(str(transform_file), framework="pt") as handle:
        meta = json.loads((handle.metadata() or {}).get("cc_transform", "{}"))
    try:
        require_same_checkpoint(transform_file, meta.get("model_sha256"), config.get("checkpoint_sha256") or "",
                                model_dir, rerun="cctune collect && cctune fit, then cctune register")
    except LineageError as err:
        raise LineageError(f"{describe(config)}: {err}") from None


def resolve_checkpoint(config: dict, artifacts: dict) -> tuple[Path, Path]:
    """(model directory, Transform Matrix file) of this version, verified."""
    storage, where = config.get("storage"), describe(config)
    if storage == "artifacts":
        missing = [key for key in ("model", "transform") if not artifacts.get(key)]
        if missing:
            raise ModelFilesError(f"{where}: artifact(s) {', '.join(missing)} missing from the logged model; "
                                  f"{_hint(config)}")
        roots = {"model": Path(artifacts["model"]), "transform": Path(artifacts["transform"])}
    elif storage == "reference":
        roots = {"model": Path(config["model_dir"]), "transform": Path(config["transform_dir"])}
    else:
        raise ModelFilesError(f"{where}: model config has no valid 'storage' ({storage!r}): register the checkpoint again")
    verify_files(config, roots)
    transform_file = roots["transform"] / TRANSFORM_FILE
    check_transform_lineage(config, transform_file, roots["model"])
    return roots["model"], transform_file


class CCTuningPyfunc(PythonModel):
    def load_context(self, context):
        config = dict(context.model_config or {})
        model_dir, transform = resolve_checkpoint(config, dict(context.artifacts or {}))
        self.generator = Generator.from_dirs(
            model_dir, transform=transform, mode=config.get("mode", "transform"),
            decision_mode=config.get("decision_mode", "argmax"),
            max_new_tokens=int(config.get("max_new_tokens", 40)), batch_size=int(config.get("batch_size", 8)))
        text_config = self.generator.model.config.get_text_config()
        self.context_len = getattr(text_config, "max_position_embeddings", None)
        self.limits = Limits.from_config(config)
        self.default_max_new_tokens = self.generator.max_new_tokens  # read without the lock: never overridden
        self._lock = threading.Lock()  # a request's max_new_tokens must not leak into a concurrent one
        install_request_guard(self.limits)  # under `mlflow models serve`: one-line errors, unknown params refused

    def predict(self, context, model_input: pd.DataFrame, params: dict | None = None) -> list[str]:
        """A string, a list of strings or records, or a DataFrame (``prompt``, optional ``lang``) →
        one string per prompt; limits and errors as cc_core/serving.py describes. (The DataFrame hint
        is one MLflow infers no schema from, so it validates and converts nothing: every form reaches
        this method as sent; without a hint MLflow warns at every load.)"""
        started = time.monotonic()
        deadline_s = self.limits.deadline_s()
        prompts, langs = prompts_from(model_input)
        check_prompts(prompts, langs, self.limits)
        check_params(params)
        generator = self.generator
        max_new = max_new_tokens(params, self.default_max_new_tokens, self.context_len)
        if not self._lock.acquire(timeout=max(deadline_s - (time.monotonic() - started), 0)):
            raise ServingError(f"the model was busy with other requests for the whole deadline of {deadline_s:g} s "
                               "(request_timeout_s): retry later", "TEMPORARILY_UNAVAILABLE")
        try:
            try:
                # as generate will encode them (a prompt over the generator's max_prompt_len is cut from the left)
                check_fits([len(encode_prompt(generator.tokenizer, p, generator.max_prompt_len).input_ids)
                            for p in prompts], max_new, self.context_len)
                generator.max_new_tokens = max_new  # a per-call override, not a change for later calls
                generator.should_stop = lambda: time.monotonic() - started > deadline_s
                return [g.text for g in generator.generate(prompts, langs)]
            except GenerationStopped:
                raise ServingError(f"the request ran past the deadline of {deadline_s:g} s (request_timeout_s) and was "
                                   f"stopped: send fewer prompts or a smaller max_new_tokens") from None
            except ServingError:
                raise
            except Exception as err:  # noqa: BLE001 - one line for the client, the traceback for the server's log
                log.exception("generation failed")
                raise ServingError(f"generation failed ({type(err).__name__}); the server's log has the details",
                                   "INTERNAL_ERROR") from None
            finally:
                generator.max_new_tokens, generator.should_stop = self.default_max_new_tokens, None
        finally:
            self._lock.release()


mlflow.models.set_model(CCTuningPyfunc())
