"""Loading what the stages run: a model directory (plain Hugging Face, CC checkpoint, or either
as LoRA adapters on a base model), its Decision Maker, and the Transform Matrix, each checked before use.

    model, tokenizer = load_model_dir("models/base")                  # any HF directory
    cc_model, tokenizer = load_cc_checkpoint("models/cc")             # CCTuningModel + tokenizer
    model, tokenizer, cc = load_inference_model("models/cc")          # cc: None for a plain model
    loaded = load_for_inference("models/cc", transform="transform")   # + matrix + lineage hashes
    merge_checkpoint("models/cc", "models/cc-merged")                 # `cctune merge`

An adapter checkpoint loads onto the base model it names (its content hash checked: another base is
refused) and is merged on load, so every stage computes exactly what the merged checkpoint would
(``merge=False`` keeps PEFT's wrapper: the unmerged computation). Every loader refuses weights
holding NaN or inf (a diverged training), naming the first bad one.
"""

from __future__ import annotations

import json
import logging
import threading
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors.torch import load_file

from cc_core.io import InputError, atomic_dir, file_sha256
from cc_core.lineage import checkpoint_sha256, require_same_checkpoint
from cc_core.modeling.adapters import attach_adapter, is_adapter_dir, load_adapter_weights, merge, resolve_base
from cc_core.modeling.cc_model import CCTuningModel
from cc_core.modeling.checkpoint import CC_CONFIG, DM_WEIGHTS, read_cc_metadata, save_cc_checkpoint
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


def quantization_config(quantize: str | None):
    """transformers' 4-bit NF4 config (QLoRA: double quantisation, bfloat16 compute), or None."""
    if quantize is None:
        return None
    if quantize != "4bit":
        raise InputError(f"train.lora.quantize={quantize!r}; valid: 4bit or null")
    # why: transformers' auto classes take seconds to import; cctune imports this module at start-up
    from transformers import BitsAndBytesConfig

    return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                              bnb_4bit_compute_dtype=torch.bfloat16)


def load_model_dir(path: str | Path, dtype=torch.float32, trust_remote_code: bool = False,
                   base_dir: str | Path | None = None, merge_adapter: bool = True, quantize: str | None = None):
    """(model, tokenizer) from a directory written by this project (or any HF directory). An adapter
    checkpoint (an SFT model trained with LoRA) loads onto its base (``base_dir``, default the one it
    records), merged unless ``merge_adapter`` is false. ``quantize="4bit"``: QLoRA's frozen base (CUDA)."""
    # why: transformers' auto classes take seconds to import; cctune imports this module at start-up
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = Path(path)
    if is_adapter_dir(path):
        model = _adapter_model(path, dtype, base_dir, merge_adapter)
        return model, _with_pad_token(AutoTokenizer.from_pretrained(_tokenizer_dir(path, base_dir)))
    if not (path / "config.json").is_file():
        raise ModelSourceError(f"{path}: no model here (run the stage that writes it first)")
    tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=trust_remote_code)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype, trust_remote_code=trust_remote_code,
                                                 quantization_config=quantization_config(quantize))
    check_finite_weights(model, path)
    return model, _with_pad_token(tokenizer)


def _adapter_model(path: Path, dtype, base_dir, merge_adapter: bool):
    """The base model ``path``'s adapter names (checked by content hash) with the adapter on it."""
    base, _ = load_model_dir(resolve_base(path, base_dir), dtype=dtype)
    model = attach_adapter(base, path)
    if merge_adapter:
        model = merge(model)
    check_finite_weights(model, path)
    return model


def _tokenizer_dir(path: Path, base_dir) -> Path:
    """An adapter checkpoint's own tokenizer, or its base model's (a registered version logs the
    tokenizer only where it differs from the base's)."""
    return path if (path / "tokenizer_config.json").is_file() else resolve_base(path, base_dir)


def load_cc_checkpoint(path: str | Path, dtype=torch.float32, device: str | torch.device = "cpu",
                       base_dir: str | Path | None = None, merge_adapter: bool = True):
    """(CCTuningModel, tokenizer) from a directory written by ``save_cc_checkpoint``; one with LoRA
    adapters loads onto its base model (see ``load_model_dir``)."""
    # why: transformers' auto classes take seconds to import; cctune imports this module at start-up
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = Path(path)
    meta = read_cc_metadata(path)
    if is_adapter_dir(path):
        base = _adapter_model(path, dtype, base_dir, merge_adapter).to(device)
        tokenizer_dir = _tokenizer_dir(path, base_dir)
    else:
        base = AutoModelForCausalLM.from_pretrained(path, dtype=dtype).to(device)
        check_finite_weights(base, path)
        tokenizer_dir = path
    decision = DecisionMaker(meta["hidden_size"], meta["num_layers"], meta["gumbel_tau"])
    decision.load_state_dict(load_file(str(path / DM_WEIGHTS)))
    decision.to(device=device, dtype=torch.float32)  # float32 whatever the model's dtype (docs/method.md, Inference)
    check_finite_weights(decision, path / DM_WEIGHTS)
    model = CCTuningModel(base, decision, meta["inject_layer"], meta["decision_mode_train"], meta["gumbel_tau"],
                          meta["detach_english"], arch_map=meta["arch_map"])
    return model.eval(), _with_pad_token(AutoTokenizer.from_pretrained(tokenizer_dir))


def load_inference_model(model_dir: str | Path, dtype=torch.float32, base_dir: str | Path | None = None,
                         merge_adapter: bool = True):
    """(causal LM, tokenizer, CCTuningModel or None) from a CC checkpoint or a plain HF directory (either
    may be LoRA adapters on a base model: merged, unless ``merge_adapter`` is false)."""
    model_dir = Path(model_dir)
    with _LOAD_LOCK:
        if (model_dir / CC_CONFIG).is_file():
            cc, tokenizer = load_cc_checkpoint(model_dir, dtype=dtype, base_dir=base_dir, merge_adapter=merge_adapter)
            return cc.model.eval(), tokenizer, cc
        model, tokenizer = load_model_dir(model_dir, dtype=dtype, base_dir=base_dir, merge_adapter=merge_adapter)
        return model.eval(), tokenizer, None


def merge_checkpoint(model_dir: str | Path, out_dir: str | Path, base_dir: str | Path | None = None) -> Path:
    """``cctune merge``: an adapter checkpoint (CC or SFT) → a full checkpoint of the same kind, with the
    adapters merged into the base weights; written to a temp directory and renamed into ``out_dir``."""
    model_dir = Path(model_dir)
    if not is_adapter_dir(model_dir):
        raise InputError(f"{model_dir}: not an adapter checkpoint (no cc_adapter.json): nothing to merge")
    model, tokenizer, cc = load_inference_model(model_dir, base_dir=base_dir)
    with atomic_dir(out_dir) as tmp:
        if cc is not None:
            save_cc_checkpoint(cc, tmp, tokenizer)
        else:
            model.save_pretrained(tmp, safe_serialization=True)
            tokenizer.save_pretrained(tmp)
    return Path(out_dir)


@dataclass
class LoadedModel:
    """What generation needs, loaded and checked against each other (``load_for_inference``)."""

    model: torch.nn.Module
    tokenizer: object
    cc: CCTuningModel | None = None
    transform: TransformMatrix | None = None
    lineage: dict[str, str] = field(default_factory=dict)  # checkpoint (and Transform Matrix) sha256


def load_for_inference(model_dir: str | Path, transform: str | Path | None = None, with_transform: bool = False,
                       device: str = "cpu", dtype: torch.dtype | None = None, base_dir: str | Path | None = None,
                       merge_adapter: bool = True) -> LoadedModel:
    """The model of ``model_dir`` on ``device`` and, ``with_transform``, the Transform Matrix of
    ``transform`` (a file, or a directory holding ``transform.safetensors``; default ``transform/``),
    which must have been fitted for this checkpoint. On a GPU the default dtype is bfloat16, on a
    CPU float32. An adapter checkpoint loads onto ``base_dir`` (default: the base it records)."""
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
    model, tokenizer, cc = load_inference_model(model_dir, dtype=dtype, base_dir=base_dir, merge_adapter=merge_adapter)
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
    """A CC checkpoint's weights (base model or adapters, and the Decision Maker) into an existing
    ``CCTuningModel`` (resume)."""
    if is_adapter_dir(directory):
        load_adapter_weights(model.model, directory)
    else:
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
