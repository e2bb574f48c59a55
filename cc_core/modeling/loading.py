"""Loading what the stages run: a model directory (plain Hugging Face or CC checkpoint), its
Decision Maker, and the Transform Matrix, each checked before use.

    model, tokenizer = load_model_dir("models/base")                  # any HF directory
    cc_model, tokenizer = load_cc_checkpoint("models/cc")             # CCTuningModel + tokenizer
    model, tokenizer, cc = load_inference_model("models/cc")          # cc: None for a plain model
    loaded = load_for_inference("models/cc", transform="transform")   # + matrix + lineage hashes

Every loader refuses weights holding NaN or inf (a diverged training), naming the first bad one.
"""

from __future__ import annotations

import json
import logging
import threading
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors.torch import load_file

from cc_core.io import InputError, file_sha256
from cc_core.lineage import checkpoint_sha256, require_same_checkpoint
from cc_core.modeling.cc_model import CCTuningModel
from cc_core.modeling.checkpoint import CC_CONFIG, DM_WEIGHTS, read_cc_metadata
from cc_core.modeling.decision import DecisionMaker
from cc_core.modeling.transform_matrix import TRANSFORM_FILE, TransformMatrix, load_transform

log = logging.getLogger(__name__)
# transformers initialises weights under a process-global meta-device context: two threads
# loading at once (concurrent Prefect eval tasks) corrupt each other's models. One at a time.
_LOAD_LOCK = threading.Lock()


class ModelSourceError(ValueError):
    """``model.base`` (or a model directory) names nothing that can be loaded; the message says what would work."""


class NonFiniteWeightsError(ValueError):
    """A checkpoint holds NaN or inf weights (a diverged training): no stage may use it."""


@torch.no_grad()
def check_finite_weights(model: torch.nn.Module, path: str | Path) -> None:
    """Refuse a model with any NaN/inf parameter, naming the first one (one pass over the weights)."""
    for name, param in model.named_parameters():
        if param.device.type != "meta" and param.numel() and not bool(torch.isfinite(param).all()):
            raise NonFiniteWeightsError(f"{path}: weight {name!r} contains NaN or inf (a diverged training?); "
                                        "retrain this model before using it")


def _with_pad_token(tokenizer):
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def load_model_dir(path: str | Path, dtype=torch.float32, trust_remote_code: bool = False):
    """(model, tokenizer) from a directory written by this project (or any HF directory)."""
    # why: transformers' auto classes take seconds to import; cctune imports this module at start-up
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = Path(path)
    if not (path / "config.json").is_file():
        raise ModelSourceError(f"{path}: no model here (run the stage that writes it first)")
    tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=trust_remote_code)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype, trust_remote_code=trust_remote_code)
    check_finite_weights(model, path)
    return model, _with_pad_token(tokenizer)


def load_cc_checkpoint(path: str | Path, dtype=torch.float32, device: str | torch.device = "cpu"):
    """(CCTuningModel, tokenizer) from a directory written by ``save_cc_checkpoint``."""
    # why: transformers' auto classes take seconds to import; cctune imports this module at start-up
    from transformers import AutoModelForCausalLM, AutoTokenizer

    meta = read_cc_metadata(path)
    base = AutoModelForCausalLM.from_pretrained(path, dtype=dtype).to(device)
    decision = DecisionMaker(meta["hidden_size"], meta["num_layers"], meta["gumbel_tau"])
    decision.load_state_dict(load_file(str(Path(path) / DM_WEIGHTS)))
    decision.to(device=device, dtype=torch.float32)  # float32 whatever the model's dtype (docs/method.md, Inference)
    check_finite_weights(base, path)
    check_finite_weights(decision, Path(path) / DM_WEIGHTS)
    model = CCTuningModel(base, decision, meta["inject_layer"], meta["decision_mode_train"], meta["gumbel_tau"],
                          meta["detach_english"], arch_map=meta["arch_map"])
    return model.eval(), _with_pad_token(AutoTokenizer.from_pretrained(path))


def load_inference_model(model_dir: str | Path, dtype=torch.float32):
    """(causal LM, tokenizer, CCTuningModel or None) from a CC checkpoint or a plain HF directory."""
    model_dir = Path(model_dir)
    with _LOAD_LOCK:
        if (model_dir / CC_CONFIG).is_file():
            cc, tokenizer = load_cc_checkpoint(model_dir, dtype=dtype)
            return cc.model.eval(), tokenizer, cc
        model, tokenizer = load_model_dir(model_dir, dtype=dtype)
        return model.eval(), tokenizer, None


@dataclass
class LoadedModel:
    """What generation needs, loaded and checked against each other (``load_for_inference``)."""

    model: torch.nn.Module
    tokenizer: object
    cc: CCTuningModel | None = None
    transform: TransformMatrix | None = None
    lineage: dict[str, str] = field(default_factory=dict)  # checkpoint (and Transform Matrix) sha256


def load_for_inference(model_dir: str | Path, transform: str | Path | None = None, with_transform: bool = False,
                       device: str = "cpu", dtype: torch.dtype | None = None) -> LoadedModel:
    """The model of ``model_dir`` on ``device`` and, ``with_transform``, the Transform Matrix of
    ``transform`` (a file, or a directory holding ``transform.safetensors``; default ``transform/``),
    which must have been fitted for this checkpoint. On a GPU the default dtype is bfloat16, on a
    CPU float32."""
    dtype = dtype or (torch.bfloat16 if str(device).startswith("cuda") else torch.float32)
    checkpoint = checkpoint_sha256(model_dir)
    matrix, lineage = None, {"checkpoint_sha256": checkpoint}
    if with_transform:  # before the model loads: a mismatch is found in a second, not a minute
        path = Path(transform or "transform")
        path = path / TRANSFORM_FILE if path.is_dir() else path
        matrix = load_transform(path)
        require_same_checkpoint(path, matrix.meta.get("model_sha256"), checkpoint, model_dir,
                                "cctune collect && cctune fit (dvc repro fit)")
        lineage["transform_sha256"] = file_sha256(path)
    model, tokenizer, cc = load_inference_model(model_dir, dtype=dtype)
    model.to(device)
    if cc is not None:
        cc.to(device)
    if matrix is not None:
        matrix.check_model(path, model.config.hidden_size, model.config.num_hidden_layers)
    return LoadedModel(model, tokenizer, cc, matrix, lineage)


def load_base_weights(model: torch.nn.Module, directory: str | Path) -> None:
    """Load (possibly sharded) safetensors weights of a save_pretrained directory into ``model``."""
    directory = Path(directory)
    index = directory / "model.safetensors.index.json"
    files = sorted(set(json.loads(index.read_text())["weight_map"].values())) if index.is_file() else ["model.safetensors"]
    state: dict[str, torch.Tensor] = {}
    for name in files:
        state.update(load_file(str(directory / name)))
    missing, unexpected = model.load_state_dict(state, strict=False)
    tied = {"lm_head.weight"} if getattr(model.config, "tie_word_embeddings", False) else set()
    if unexpected or set(missing) - tied:
        raise RuntimeError(f"{directory}: checkpoint does not match the model (missing={missing}, unexpected={unexpected})")
    if tied:
        model.tie_weights()


def load_cc_weights(model: CCTuningModel, directory: str | Path) -> None:
    """A CC checkpoint's weights (base model and Decision Maker) into an existing ``CCTuningModel`` (resume)."""
    load_base_weights(model.model, directory)
    model.decision_maker.load_state_dict(load_file(str(Path(directory) / DM_WEIGHTS)))


def check_tokenizer_matches(tokenizer, model, base_dir: Path) -> None:
    """A tokenizer from another model: more tokens than embedding rows, or special tokens outside them."""
    rows = model.get_input_embeddings().num_embeddings
    if len(tokenizer) > rows:
        raise InputError(f"{base_dir}: the tokenizer has {len(tokenizer)} tokens but the model's embedding has "
                         f"{rows} rows: tokenizer and model do not match")
    for name in ("bos_token_id", "eos_token_id", "pad_token_id"):
        token_id = getattr(tokenizer, name, None)
        if isinstance(token_id, int) and not 0 <= token_id < rows:
            raise InputError(f"{base_dir}: the tokenizer's {name}={token_id} is outside the model's {rows} "
                             "embedding rows: tokenizer and model do not match")
    if len(tokenizer) < 0.9 * rows:  # models pad their vocabulary, but rarely by more than a few percent
        log.warning("%s: the tokenizer has %d tokens, the model's embedding %d rows: is it this model's tokenizer?",
             base_dir, len(tokenizer), rows)
