"""The Transform Matrix M: maps a model's own non-English FFN activations to English-like ones
(docs/method.md, Transform Matrix and Inference). ``cctune fit`` (cc_core.transform) fits it.

    matrix = load_transform("transform")              # transform/transform.safetensors
    english_like = matrix.apply(acts, langs)           # acts [B, L, d] → [B, L, d]

One d×d matrix shared by all layers (the method), or one per layer ``[L, d, d]``; an optional bias;
optional per-language matrices (a language without one falls back to the shared matrix). Stored as
safetensors (float32) with the fit's options and the checkpoint hash in its metadata.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from cc_core.io import InputError

TRANSFORM_FILE = "transform.safetensors"


class TransformShapeError(ValueError):
    pass


@dataclass
class TransformMatrix:
    """``apply(acts [B, L, d], langs)`` → English-like activations ``[B, L, d]``."""

    matrix: torch.Tensor  # [d, d] shared, or [L, d, d] per layer
    bias: torch.Tensor | None  # [d] or [L, d]
    per_language: dict[str, tuple[torch.Tensor, torch.Tensor | None]]
    meta: dict

    @property
    def hidden_size(self) -> int:
        return self.matrix.shape[-1]

    def check_model(self, where, hidden_size: int | None = None, num_layers: int | None = None) -> None:
        """A matrix that cannot fit the model (another d, another layer count) is a clear error."""
        matrix = self.matrix
        if hidden_size is not None and tuple(matrix.shape[-2:]) != (hidden_size, hidden_size):
            raise TransformShapeError(f"{where}: the matrix is {matrix.shape[-2]}×{matrix.shape[-1]} but the model's "
                                      f"hidden size is {hidden_size}: it was fitted for another model")
        if num_layers is not None and matrix.dim() == 3 and matrix.shape[0] != num_layers:
            raise TransformShapeError(f"{where}: {matrix.shape[0]} per-layer matrices but the model has "
                                      f"{num_layers} layers")

    def _params_for(self, lang: str | None):
        if lang is not None and lang in self.per_language:
            return self.per_language[lang]
        return self.matrix, self.bias

    def apply(self, acts: torch.Tensor, langs: list[str] | None = None) -> torch.Tensor:
        if acts.shape[-1] != self.hidden_size:
            raise TransformShapeError(f"activations have d={acts.shape[-1]} but the Transform Matrix is for "
                                      f"d={self.hidden_size}")
        rows = []
        for i in range(acts.shape[0]) if self.per_language else [None]:
            matrix, bias = self._params_for(langs[i] if (langs and i is not None) else None)
            x = acts if i is None else acts[i:i + 1]
            m = matrix.to(x.device, x.dtype)
            y = torch.einsum("bld,lde->ble", x, m) if m.dim() == 3 else x @ m
            if bias is not None:
                y = y + bias.to(x.device, x.dtype)
            rows.append(y)
        return torch.cat(rows) if len(rows) > 1 else rows[0]

    def save(self, path: str | Path) -> None:
        tensors = {"matrix": self.matrix.float().contiguous()}
        if self.bias is not None:
            tensors["bias"] = self.bias.float().contiguous()
        for lang, (matrix, bias) in self.per_language.items():
            tensors[f"matrix.{lang}"] = matrix.float().contiguous()
            if bias is not None:
                tensors[f"bias.{lang}"] = bias.float().contiguous()
        save_file(tensors, str(path), metadata={"cc_transform": json.dumps(self.meta)})


def load_transform(path: str | Path, hidden_size: int | None = None, num_layers: int | None = None) -> TransformMatrix:
    """Load ``transform.safetensors``; a shape that does not fit the model is a clear error."""
    path = Path(path)
    if path.is_dir():
        path = path / TRANSFORM_FILE
    if not path.is_file():
        raise InputError(f"{path}: no Transform Matrix here (run `cctune fit` first)")
    with safe_open(str(path), framework="pt") as handle:
        tensors = {key: handle.get_tensor(key) for key in handle.keys()}
        meta = json.loads((handle.metadata() or {}).get("cc_transform", "{}"))
    if "matrix" not in tensors:
        raise InputError(f"{path}: not a Transform Matrix file (no 'matrix' tensor)")
    matrix = tensors["matrix"]
    per_language = {key.split(".", 1)[1]: (tensor, tensors.get(f"bias.{key.split('.', 1)[1]}"))
                    for key, tensor in tensors.items() if key.startswith("matrix.")}
    transform = TransformMatrix(matrix, tensors.get("bias"), per_language, meta)
    transform.check_model(path, hidden_size, num_layers)
    return transform
