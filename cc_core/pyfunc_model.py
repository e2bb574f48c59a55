"""MLflow pyfunc for a registered CC-Tuning checkpoint ("models from code": nothing is pickled).

    model = mlflow.pyfunc.load_model("models:/cc-tuning-smollm2-135m-instruct@champion")
    model.predict(pd.DataFrame({"prompt": ["Quelle est la capitale du Kenya ?"], "lang": ["fr"]}))
    model.predict(pd.DataFrame({"prompt": [...]}), params={"max_new_tokens": 16})  # → list of str

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
import math
import threading
from pathlib import Path

import mlflow
import pandas as pd
from mlflow.exceptions import MlflowException
from mlflow.protos.databricks_pb2 import INVALID_PARAMETER_VALUE
from mlflow.pyfunc import PythonModel
from safetensors import safe_open

from cc_core.generate import Generator
from cc_core.io import file_sha256
from cc_core.lineage import LineageError, require_same_checkpoint
from cc_core.modeling.transform_matrix import TRANSFORM_FILE

class ModelFilesError(ValueError):
    """A registered version's files are missing or not the ones it was registered with."""


def describe(config: dict) -> str:
    """How a load error names the version (its number is assigned after the model is logged)."""
    return (f"registered model {config.get('registered_model', '?')} (run {config.get('run_id', '?')}, "
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
        self._lock = threading.Lock()  # a request's max_new_tokens must not leak into a concurrent one

    def predict(self, context, model_input: pd.DataFrame, params: dict | None = None) -> list[str]:
        # With the signature, MLflow hands over a DataFrame (``prompt``, optional ``lang``); the
        # DataFrame hint only tells MLflow not to infer another schema from the hints.
        prompts, langs = _prompts(model_input)
        max_new = _max_new_tokens(params, self.generator.max_new_tokens, self.context_len)
        generator = self.generator
        with self._lock:
            configured = generator.max_new_tokens, generator.max_prompt_len
            try:  # a per-call override, not a change for later calls
                generator.max_new_tokens = max_new
                if self.context_len:  # prompt + new tokens must fit the context
                    generator.max_prompt_len = min(configured[1], self.context_len - max_new)
                return [g.text for g in generator.generate(prompts, langs)]
            finally:
                generator.max_new_tokens, generator.max_prompt_len = configured


def _bad_request(message: str) -> Exception:
    return MlflowException(message, error_code=INVALID_PARAMETER_VALUE)  # the scoring server answers 400


def _max_new_tokens(params: dict | None, default: int, context_len: int | None) -> int:
    value = (params or {}).get("max_new_tokens", default)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value != int(value) or value < 1:
        raise _bad_request(f"params.max_new_tokens must be a positive integer, got {value!r}")
    value = int(value)
    if context_len and value > context_len - 1:
        raise _bad_request(f"params.max_new_tokens={value} does not fit the model's context of {context_len} tokens")
    return value


def _text(value, what: str, optional: bool = False):
    if value is None or (isinstance(value, float) and math.isnan(value)):
        if optional:
            return None
        raise _bad_request(f"{what} is missing")
    if not isinstance(value, str):
        raise _bad_request(f"{what} must be a string, got {type(value).__name__} {value!r}")
    return value


def _prompts(model_input) -> tuple[list[str], list[str | None] | None]:
    """Prompts (and optional languages) from a DataFrame with ``prompt`` (+ ``lang``), a list of
    strings or of ``{"prompt", "lang"}`` records, a dict, or one string."""
    if hasattr(model_input, "columns"):
        if "prompt" not in model_input.columns:
            raise _bad_request(f"the input needs a 'prompt' column (got columns {list(model_input.columns)})")
        prompts = [_text(p, f"prompt {i}") for i, p in enumerate(model_input["prompt"].tolist())]
        langs = ([_text(x, f"lang {i}", optional=True) for i, x in enumerate(model_input["lang"].tolist())]
                 if "lang" in model_input.columns else None)
        return prompts, langs
    if isinstance(model_input, dict):
        prompts = model_input.get("prompt", model_input.get("prompts"))
        langs = model_input.get("lang")
        if isinstance(prompts, str):
            prompts, langs = [prompts], [langs] if isinstance(langs, str) else langs
        if not isinstance(prompts, list):
            raise _bad_request("the input needs 'prompt': a string or a list of strings")
        return [_text(p, f"prompt {i}") for i, p in enumerate(prompts)], langs
    if isinstance(model_input, str):
        return [model_input], None
    if isinstance(model_input, list) and model_input and all(isinstance(r, dict) for r in model_input):
        return ([_text(r.get("prompt"), f"prompt {i}") for i, r in enumerate(model_input)],
                [_text(r.get("lang"), f"lang {i}", optional=True) for i, r in enumerate(model_input)])
    if isinstance(model_input, list):
        return [_text(p, f"prompt {i}") for i, p in enumerate(model_input)], None
    raise _bad_request(f"unsupported input type {type(model_input).__name__}: send prompts as a 'prompt' column")


mlflow.models.set_model(CCTuningPyfunc())
