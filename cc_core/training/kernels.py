"""Faster kernels for training, both off by default: Liger Kernel (``train.liger``) and
``torch.compile`` of the decoder layers (``train.compile``).

    check_kernel_options(params.train, Path("models/base"))   # before the model loads
    apply_liger(model)                                         # fused LM head + cross-entropy, RMSNorm, ...
    compile_decoder(model)                                     # each decoder layer's submodules

The capture and connection hooks sit on the decoder layer and on the FFN module's call, outside
the compiled forwards, so the CC step's numbers do not change (tests/integration/test_compile.py).
"""

from __future__ import annotations

from pathlib import Path

import torch

from cc_core.config import TrainParams
from cc_core.io import InputError, read_json
from cc_core.modeling.architectures import ArchPaths, arch_paths, decoder_layers


def _liger_functions() -> dict:
    try:
        # why: an optional extra ('.[gpu]', CUDA only)
        from liger_kernel.transformers.monkey_patch import MODEL_TYPE_TO_APPLY_LIGER_FN
    except ImportError as err:
        raise InputError("train.liger=true needs the liger-kernel package: pip install -e '.[gpu]' "
                         f"(on a CUDA machine; {err})") from None
    return MODEL_TYPE_TO_APPLY_LIGER_FN


def check_kernel_options(tp: TrainParams, base_dir: Path) -> None:
    """train.liger / train.compile asked for where they cannot work: an error naming the key, before
    the model loads (minutes at 8B)."""
    if tp.liger:
        if not torch.cuda.is_available():
            raise InputError("train.liger=true needs a CUDA GPU (Liger Kernel's Triton kernels); set train.liger=false")
        config = base_dir / "config.json"
        model_type = read_json(config).get("model_type") if config.is_file() else None
        if model_type not in _liger_functions():
            raise InputError(f"train.liger=true: Liger Kernel has no kernels for model_type {model_type!r} "
                             f"(supported: {', '.join(sorted(_liger_functions()))}); set train.liger=false")
    if tp.compile and tp.deepspeed and "3" in str(tp.deepspeed):
        raise InputError("train.compile=true with ZeRO-3: parameters are gathered inside the forward, which "
                         "torch.compile of the layers does not follow; use DeepSpeed's compile or train.compile=false")


def apply_liger(model) -> None:
    """Liger's fused kernels on this model instance: the LM head and cross-entropy fused (no logits
    tensor: 16k tokens × 128k vocabulary at Llama-3 scale), RMSNorm, SwiGLU and RoPE where they apply."""
    _liger_functions()[model.config.model_type](model=model)


def compile_decoder(model, arch_map: ArchPaths | None = None) -> None:
    """torch.compile every submodule of every decoder layer (attention, MLP, norms). The capture and
    connection hooks sit on the layer and on the FFN module's call, outside the compiled forwards,
    so the graphs never change when hooks come and go."""
    for layer in decoder_layers(model, arch_paths(model, arch_map)):
        for child in layer.children():
            child.forward = torch.compile(child.forward, dynamic=True)
