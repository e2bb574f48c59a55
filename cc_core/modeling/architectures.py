"""Where the method attaches in each architecture: a small map of module paths.

Hooks, not forks: the method needs only (1) the ModuleList of decoder layers and (2) in each
layer the module whose output is the FFN contribution added to the residual stream. Most
decoders call it ``mlp``; Gemma 2/3 normalise the MLP output (``post_feedforward_layernorm``)
before the residual add, so that module is their FFN output.

With LoRA adapters (PEFT) the model is wrapped and every module path gains a prefix
(``base_model.model.``); ``unwrap`` resolves through the wrapper, so the same paths name the same
modules, LoRA layers included, whichever object the caller holds.

An architecture belongs here only if (a) adding a vector to that module's output equals adding
it to the residual stream after the layer, and (b) the hidden state entering layer 0 is the
input embedding module's output (training reads the anchor embedding from ``embed``, inference
from layer 0's input). Granite scales the residual branch and the embeddings outside these
modules (``residual_multiplier``, ``embedding_multiplier``), so it is not listed.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass

import torch.nn as nn


@dataclass(frozen=True)
class ArchPaths:
    layers: str  # from the CausalLM to the decoder layers
    ffn: str  # inside a decoder layer: the module whose output is added to the residual
    embed: str = "model.embed_tokens"

    def to_dict(self) -> dict[str, str]:
        return asdict(self)

    @classmethod
    def from_mapping(cls, data: Mapping[str, str]) -> "ArchPaths":
        """From ``cc_tuning.json``'s ``arch_map`` or params.yaml's ``model.arch_map`` (as a dict)."""
        return cls(**dict(data))


_LLAMA_LIKE = ArchPaths("model.layers", "mlp")
_GEMMA_NORMED = ArchPaths("model.layers", "post_feedforward_layernorm")

ARCHITECTURES: dict[str, ArchPaths] = {
    "llama": _LLAMA_LIKE,
    "mistral": _LLAMA_LIKE,
    "mixtral": ArchPaths("model.layers", "mlp"),  # the sparse MoE block's output
    "qwen2": _LLAMA_LIKE,
    "qwen3": _LLAMA_LIKE,
    "gemma": _LLAMA_LIKE,
    "gemma2": _GEMMA_NORMED,
    "gemma3_text": _GEMMA_NORMED,
    "phi3": _LLAMA_LIKE,
    "olmo2": ArchPaths("model.layers", "post_feedforward_layernorm"),
    "cohere": _LLAMA_LIKE,
    "starcoder2": _LLAMA_LIKE,
}


class UnsupportedArchitectureError(ValueError):
    pass


def is_wrapped(model: nn.Module) -> bool:
    """A PEFT wrapper (duck-typed: ``get_base_model`` returns the transformers model inside)."""
    return callable(getattr(type(model), "get_base_model", None))


def unwrap(model: nn.Module) -> nn.Module:
    """The transformers model inside a PEFT wrapper (itself when not wrapped): the root of ``ArchPaths``."""
    while is_wrapped(model):
        inner = model.get_base_model()
        if inner is model:
            break
        model = inner
    return model


def arch_paths(model: nn.Module, override: ArchPaths | Mapping[str, str] | None = None) -> ArchPaths:
    """Paths for ``model`` (by ``config.model_type``), or ``override`` (params.yaml's ``model.arch_map``,
    or a checkpoint's ``cc_tuning.json``) when given."""
    if override is not None:
        return override if isinstance(override, ArchPaths) else ArchPaths.from_mapping(override)
    model_type = getattr(getattr(unwrap(model), "config", None), "model_type", None)
    if model_type not in ARCHITECTURES:
        raise UnsupportedArchitectureError(
            f"architecture {model_type!r} has no module map; supported: {', '.join(sorted(ARCHITECTURES))}. "
            "Give the paths by hand in params.yaml: model.arch_map: "
            "{layers: model.layers, ffn: mlp, embed: model.embed_tokens}"
        )
    return ARCHITECTURES[model_type]


def get_module(root: nn.Module, path: str) -> nn.Module:
    module = root
    for part in path.split("."):
        if not hasattr(module, part):
            raise UnsupportedArchitectureError(
                f"{type(root).__name__} has no submodule {path!r} (failed at {part!r}); "
                "fix model.arch_map in params.yaml"
            )
        module = getattr(module, part)
    return module


def decoder_layers(model: nn.Module, paths: ArchPaths) -> list[nn.Module]:
    layers = get_module(unwrap(model), paths.layers)
    if not isinstance(layers, (nn.ModuleList, list, tuple)):
        raise UnsupportedArchitectureError(f"{paths.layers!r} is a {type(layers).__name__}, not a list of layers")
    return list(layers)


def ffn_modules(model: nn.Module, paths: ArchPaths) -> list[nn.Module]:
    return [get_module(layer, paths.ffn) for layer in decoder_layers(model, paths)]
