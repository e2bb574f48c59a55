"""CC checkpoint format: a plain HF model directory + ``cc_tuning.json`` + ``decision_maker.safetensors``.

    save_cc_checkpoint(cc_model, "models/cc", tokenizer)
    save_cc_checkpoint(cc_lora_model, "models/cc", tokenizer, base=BaseRef.of("models/base"))
    cc_model, tokenizer = load_cc_checkpoint("models/cc")     # cc_core.modeling.loading

``AutoModelForCausalLM.from_pretrained("models/cc")`` still loads the fine-tuned base model
for anyone who ignores CC. A model trained with LoRA adapters saves the adapter instead of the
weights (PEFT's format plus ``cc_adapter.json`` naming the base model by content hash:
cc_core.modeling.adapters); the Decision Maker and ``cc_tuning.json`` are the same. The Transform
Matrix, fitted later, lives in its own file (``transform/transform.safetensors``; see
cc_core.modeling.transform_matrix).
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import save_file

from cc_core.io import write_json
from cc_core.modeling.adapters import BaseRef, save_adapter
from cc_core.modeling.architectures import is_wrapped
from cc_core.modeling.cc_model import CCTuningModel

FORMAT_VERSION = 1
CC_CONFIG = "cc_tuning.json"
DM_WEIGHTS = "decision_maker.safetensors"


class NotACCCheckpointError(ValueError):
    pass


def cc_metadata(model: CCTuningModel) -> dict:
    return {
        "format_version": FORMAT_VERSION,
        "inject_layer": model.inject_layer,
        "decision_mode_train": model.decision_mode,
        "decision_mode_eval": "argmax",
        "gumbel_tau": model.gumbel_tau,
        "detach_english": model.detach_english,
        "num_layers": model.num_layers,
        "hidden_size": model.decision_maker.proj.in_features,
        "model_type": model.config.model_type,
        "arch_map": model.paths.to_dict(),
    }


def save_cc_checkpoint(model: CCTuningModel, out_dir: str | Path, tokenizer=None,
                       state_dict: dict[str, torch.Tensor] | None = None, base: BaseRef | None = None) -> Path:
    """Write the CC checkpoint into ``out_dir`` (an existing or new directory).

    ``state_dict`` (keys ``model.*`` and ``decision_maker.*``) overrides the module's own
    weights: under DeepSpeed ZeRO-3 the Trainer passes the gathered full weights here. A model with
    LoRA adapters saves only them, naming ``base``: the base model they were trained on.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    # cc_tuning.json is the marker and goes last: a directory whose write was cut short is not
    # mistaken for a checkpoint (the stages also write to a temp directory and rename it).
    (out / CC_CONFIG).unlink(missing_ok=True)
    explicit = state_dict is not None
    if state_dict is None:
        state_dict = model.state_dict()
    weights = {k[len("model."):]: v for k, v in state_dict.items() if k.startswith("model.")}
    dm = {k[len("decision_maker."):]: v.detach().contiguous().cpu()
          for k, v in state_dict.items() if k.startswith("decision_maker.")}
    if is_wrapped(model.model):
        if base is None:
            raise ValueError("a CC checkpoint with LoRA adapters must name its base model (base=BaseRef.of(dir))")
        save_adapter(model.model, out, base, state_dict=weights if explicit else None)
    else:
        model.model.save_pretrained(out, state_dict=weights, safe_serialization=True)
    save_file(dm, str(out / DM_WEIGHTS), metadata={"format": "pt"})
    if tokenizer is not None:
        tokenizer.save_pretrained(out)
    write_json(out / CC_CONFIG, cc_metadata(model))
    return out


REQUIRED_KEYS = ("hidden_size", "num_layers", "inject_layer", "gumbel_tau", "decision_mode_train",
                 "detach_english", "arch_map")


def read_cc_metadata(path: str | Path) -> dict:
    path = Path(path)
    meta_file = path / CC_CONFIG
    if not meta_file.is_file() or not (path / DM_WEIGHTS).is_file():
        raise NotACCCheckpointError(
            f"{path}: not a CC-Tuning checkpoint (needs {CC_CONFIG} and {DM_WEIGHTS}); "
            "train one with `cctune train --method cc`, or use mode 'none' for a plain model"
        )
    try:
        meta = json.loads(meta_file.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise NotACCCheckpointError(f"{meta_file}: not valid JSON ({err})") from None
    if not isinstance(meta, dict) or meta.get("format_version") != FORMAT_VERSION:
        version = meta.get("format_version") if isinstance(meta, dict) else None
        raise NotACCCheckpointError(f"{meta_file}: format_version {version} is not supported (expected {FORMAT_VERSION})")
    missing = [k for k in REQUIRED_KEYS if k not in meta]
    if missing:
        raise NotACCCheckpointError(f"{meta_file}: missing key(s) {', '.join(missing)}")
    return meta
