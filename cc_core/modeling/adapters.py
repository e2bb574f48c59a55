"""LoRA adapters (PEFT) on a stock causal LM: wrap for training, save, reload, merge.

    peft_model = add_lora(model, LoraSpec(r=8, alpha=16))        # only the adapters train
    save_adapter(peft_model, "models/sft", BaseRef.of("models/base"))
    base_dir = resolve_base("models/cc")                           # the base it was trained on, checked
    model = merge(attach_adapter(base_model, "models/cc"))        # a plain model again

An adapter checkpoint is PEFT's own format (``adapter_config.json``, ``adapter_model.safetensors``:
``PeftModel.from_pretrained`` loads it) plus ``cc_adapter.json``, which names the base model by path
and by content hash (``cc_core.lineage.checkpoint_sha256``: its ``*.safetensors``). Loading refuses
another base. A CC adapter checkpoint also holds the Decision Maker and ``cc_tuning.json``
(cc_core.modeling.checkpoint), written last.

The capture and connection hooks never see the wrapper: module paths (``model.layers``, ``mlp``) are
resolved on the wrapped transformers model (``architectures.unwrap``), whose modules are the ones the
PEFT model runs, LoRA layers included.
"""

from __future__ import annotations

import contextlib
import json
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from cc_core.io import InputError, project_path, write_json
from cc_core.lineage import checkpoint_sha256, short
from cc_core.modeling.architectures import is_wrapped

ADAPTER_META = "cc_adapter.json"
ADAPTER_WEIGHTS = "adapter_model.safetensors"
ADAPTER_CONFIG = "adapter_config.json"
FORMAT_VERSION = 1


class AdapterBaseError(InputError):
    """An adapter checkpoint met a base model other than the one it was trained on (or none)."""


@dataclass(frozen=True)
class LoraSpec:
    """What ``train.lora`` asks for (LLaMA-Factory's defaults: r 8, alpha 16, dropout 0, every linear
    layer of the decoder). The training recipe builds it from params; modeling/ never reads them."""

    r: int = 8
    alpha: float = 16.0
    dropout: float = 0.0
    target_modules: str | tuple[str, ...] = "all-linear"


@dataclass(frozen=True)
class BaseRef:
    """The base model an adapter belongs to: where it was (as recorded) and what it is (content hash)."""

    path: str
    sha256: str

    @classmethod
    def of(cls, base_dir: str | Path) -> "BaseRef":
        return cls(project_path(base_dir), checkpoint_sha256(base_dir))


def require_peft():
    """The ``peft`` module, or a one-line error saying how to install it."""
    try:
        # why: an optional extra ('.[peft]'); only adapter training and adapter checkpoints need it
        import peft
    except ImportError as err:
        raise InputError("LoRA adapters (train.peft=lora, or an adapter checkpoint) need the peft package: "
                         f"pip install -c constraints.txt -e '.[peft]' (scripts/setup.sh does this; {err})") from None
    return peft


@contextlib.contextmanager
def _quiet():
    """PEFT 0.21 asks transformers 5 a deprecated question (``is_gradient_checkpointing``) on every wrap."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
        yield


def is_adapter_dir(path: str | Path) -> bool:
    return (Path(path) / ADAPTER_META).is_file()


def add_lora(model: torch.nn.Module, spec: LoraSpec, gradient_checkpointing: bool = False):
    """``model`` wrapped by PEFT with fresh LoRA adapters (B = 0: the wrapped model computes exactly what
    ``model`` does); every base weight frozen. With gradient checkpointing the embeddings' output
    requires grad, so reentrant checkpoints (whose inputs would otherwise need none) still reach the
    adapters inside them."""
    peft = require_peft()
    targets = spec.target_modules if isinstance(spec.target_modules, str) else list(spec.target_modules)
    config = peft.LoraConfig(r=spec.r, lora_alpha=spec.alpha, lora_dropout=spec.dropout, target_modules=targets,
                             bias="none", task_type="CAUSAL_LM")
    with _quiet():
        wrapped = peft.get_peft_model(model, config)
    if gradient_checkpointing:
        wrapped.get_base_model().enable_input_require_grads()
    return wrapped


def adapter_state(peft_model, state_dict: dict[str, torch.Tensor] | None = None) -> dict[str, torch.Tensor]:
    """The adapter's tensors (PEFT's key names), from the module or from a full ``state_dict`` of it
    (keys relative to the PEFT model: under ZeRO-3 the Trainer passes the gathered weights)."""
    peft = require_peft()
    state = peft.get_peft_model_state_dict(peft_model, state_dict=state_dict)
    return {key: value.detach().contiguous().cpu() for key, value in state.items()}


def save_adapter(peft_model, out_dir: str | Path, base: BaseRef,
                 state_dict: dict[str, torch.Tensor] | None = None) -> Path:
    """PEFT's files (adapter config and weights, safetensors) and ``cc_adapter.json``, written last."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / ADAPTER_META).unlink(missing_ok=True)
    save_file(adapter_state(peft_model, state_dict), str(out / ADAPTER_WEIGHTS), metadata={"format": "pt"})
    config = peft_model.peft_config["default"]
    config.base_model_name_or_path = base.path
    config.save_pretrained(str(out))
    write_adapter_meta(out, base)
    return out


def write_adapter_meta(out: Path, base: BaseRef) -> None:
    write_json(out / ADAPTER_META, {"format_version": FORMAT_VERSION, "peft": "lora",
                                    "base_model": asdict(base)})


def read_adapter_meta(path: str | Path) -> BaseRef:
    """The base model ``cc_adapter.json`` names; a clear error for a damaged file."""
    meta_file = Path(path) / ADAPTER_META
    try:
        meta = json.loads(meta_file.read_text(encoding="utf-8"))
        base = meta["base_model"]
        ref = BaseRef(str(base["path"]), str(base["sha256"]))
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise AdapterBaseError(f"{meta_file}: not a readable adapter description ({type(err).__name__}: {err})") from None
    if meta.get("format_version") != FORMAT_VERSION:
        raise AdapterBaseError(f"{meta_file}: format_version {meta.get('format_version')} is not supported "
                               f"(expected {FORMAT_VERSION})")
    return ref


def resolve_base(adapter_dir: str | Path, base_dir: str | Path | None = None) -> Path:
    """The base model directory of ``adapter_dir``: ``base_dir`` if given, else the path it records
    (relative to the working directory, the project). Refused unless its content hash is the recorded one."""
    ref = read_adapter_meta(adapter_dir)
    base = Path(base_dir) if base_dir is not None else Path(ref.path)
    if not (base / "config.json").is_file():
        raise AdapterBaseError(f"{adapter_dir}: an adapter of base model {short(ref.sha256)}, expected at {base}, "
                               "which holds no model: run `cctune base-model` (dvc repro base_model) or give "
                               "the base model's directory")
    actual = checkpoint_sha256(base)
    if actual != ref.sha256:
        raise AdapterBaseError(f"{adapter_dir}: an adapter trained on base model {short(ref.sha256)}, but {base} is "
                               f"{short(actual)}: it would apply to other weights; use the base it was trained on "
                               "or retrain the adapter")
    return base


def attach_adapter(model: torch.nn.Module, adapter_dir: str | Path):
    """``model`` (the checked base) wrapped with the adapter saved in ``adapter_dir``, for inference."""
    peft = require_peft()
    with _quiet():
        return peft.PeftModel.from_pretrained(model, str(adapter_dir), is_trainable=False)


def merge(peft_model) -> torch.nn.Module:
    """The plain transformers model with ``W + (alpha / r) · B A`` in every adapted layer (PEFT's merge)."""
    return peft_model.merge_and_unload()


def load_adapter_weights(peft_model, adapter_dir: str | Path) -> None:
    """An adapter checkpoint's weights into an existing PEFT model (resume), every key matched."""
    peft = require_peft()
    result = peft.set_peft_model_state_dict(peft_model, load_file(str(Path(adapter_dir) / ADAPTER_WEIGHTS)))
    unexpected = list(getattr(result, "unexpected_keys", []) or [])
    if unexpected:
        raise RuntimeError(f"{adapter_dir}: adapter weights do not match the model (unexpected: {unexpected[:5]})")


def trainable_parameters(model: torch.nn.Module) -> tuple[int, int]:
    """(trainable, all) parameter counts."""
    params = list(model.parameters())
    return sum(p.numel() for p in params if p.requires_grad), sum(p.numel() for p in params)


__all__ = ["ADAPTER_CONFIG", "ADAPTER_META", "ADAPTER_WEIGHTS", "AdapterBaseError", "BaseRef", "LoraSpec",
           "add_lora", "adapter_state", "attach_adapter", "is_adapter_dir", "is_wrapped", "load_adapter_weights",
           "merge", "read_adapter_meta", "require_peft", "resolve_base", "save_adapter", "trainable_parameters",
           "write_adapter_meta"]
