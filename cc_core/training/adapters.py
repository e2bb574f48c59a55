"""LoRA in the training recipe (``train.peft: lora``): the options checked before anything loads, the
base model's dtype, and the model wrapped with adapters (QLoRA: on a 4-bit base).

    check_adapter_options(params.train)                       # a one-line error naming the key
    model, tokenizer = load_model_dir(base, dtype=base_dtype(tp), quantize=quantize(tp))
    model = with_adapters(model, tp)                           # only the adapters (and the Decision Maker) train

The Decision Maker trains in full beside the adapters (float32, the same learning rate unless
``train.decision_maker_lr``); the connection and capture hooks are unchanged (docs/design.md).
"""

from __future__ import annotations

import logging

import torch

from cc_core.config import TrainParams
from cc_core.io import InputError
from cc_core.modeling.adapters import LoraSpec, add_lora, require_peft, trainable_parameters

log = logging.getLogger(__name__)


def check_adapter_options(tp: TrainParams, cuda: bool | None = None) -> None:
    """``train.peft`` / ``train.lora.quantize`` asked for where they cannot work: an error naming the key,
    before the model loads (minutes at 8B)."""
    cuda = torch.cuda.is_available() if cuda is None else cuda
    quantized = tp.lora.quantize is not None
    if quantized and tp.peft != "lora":
        raise InputError(f"train.lora.quantize={tp.lora.quantize} needs train.peft=lora (QLoRA trains adapters on "
                         "the quantized base); set train.peft=lora or train.lora.quantize=null")
    if quantized and not cuda:
        raise InputError(f"train.lora.quantize={tp.lora.quantize} needs a CUDA GPU (bitsandbytes' 4-bit kernels); "
                         "on this machine set train.lora.quantize=null (plain LoRA)")
    if quantized and tp.deepspeed and "3" in str(tp.deepspeed):
        raise InputError(f"train.lora.quantize={tp.lora.quantize} with ZeRO-3 (train.deepspeed={tp.deepspeed}): "
                         "4-bit weights cannot be partitioned here; use train.deepspeed=null or zero2")
    if tp.peft == "lora":
        require_peft()
    if quantized:
        try:
            # why: an optional extra ('.[qlora]', CUDA only)
            import bitsandbytes  # noqa: F401
        except ImportError as err:
            raise InputError(f"train.lora.quantize={tp.lora.quantize} needs the bitsandbytes package: "
                             f"pip install -c constraints.txt -e '.[qlora]' ({err})") from None


def base_dtype(tp: TrainParams) -> torch.dtype:
    """The frozen base's dtype: bfloat16 under ``train.bf16`` with adapters (half the memory of float32;
    the adapters and the Decision Maker stay float32), else float32 (full fine-tuning: the Trainer or
    DeepSpeed casts)."""
    return torch.bfloat16 if tp.peft == "lora" and tp.bf16 else torch.float32


def quantize(tp: TrainParams) -> str | None:
    return tp.lora.quantize if tp.peft == "lora" else None


def lora_spec(tp: TrainParams) -> LoraSpec:
    lora = tp.lora
    targets = lora.target_modules if isinstance(lora.target_modules, str) else tuple(lora.target_modules)
    return LoraSpec(r=lora.r, alpha=lora.alpha, dropout=lora.dropout, target_modules=targets)


def with_adapters(model: torch.nn.Module, tp: TrainParams) -> torch.nn.Module:
    """``model`` wrapped with fresh LoRA adapters, every base weight frozen (on a 4-bit base: prepared
    for k-bit training first, as QLoRA does)."""
    if tp.lora.quantize is not None:
        peft = require_peft()
        model = peft.prepare_model_for_kbit_training(model, use_gradient_checkpointing=tp.gradient_checkpointing)
    wrapped = add_lora(model, lora_spec(tp), gradient_checkpointing=tp.gradient_checkpointing)
    trainable, total = trainable_parameters(wrapped)
    log.info("LoRA r=%d alpha=%g on %s: %d of %d parameters train (%.3f%%), plus the Decision Maker for cc",
             tp.lora.r, tp.lora.alpha, tp.lora.target_modules, trainable, total, 100 * trainable / max(total, 1))
    return wrapped
