"""The Transform Matrix M: maps a model's own non-English FFN activations to English-like ones
(docs/method.md, Transform Matrix and Inference). ``cctune fit`` (cc_core.transform) fits it.

    matrix = load_transform("transform")              # transform/transform.safetensors
    english_like = matrix.apply(acts, langs)           # acts [B, L, d] → [B, L, d]

One d×d matrix shared by all layers (the method), or one per layer ``[L, d, d]``; an optional bias;
optional per-language matrices (a language without one falls back to the shared matrix). Stored as
safetensors (float32) with the fit's options and the checkpoint hash in its metadata. ``save`` also
writes its record beside it (``transform.json`` for ``transform.safetensors``): the same metadata plus
the sha256 of the file written (``transform_sha256``), which ``check_fit_record`` compares before
``eval`` or ``register`` use a matrix, so one whose values changed after the fit is refused.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import save_file

from cc_core.io import InputError, file_sha256, read_json, read_safetensors, write_json
from cc_core.lineage import LineageError, short

TRANSFORM_FILE = "transform.safetensors"
REFIT = "cctune fit (dvc repro fit)"


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

    def save(self, path: str | Path) -> str:
        """Write the matrix and its record (``fit_record_path``); returns the file's sha256."""
        path = Path(path)
        tensors = {"matrix": self.matrix.float().contiguous()}
        if self.bias is not None:
            tensors["bias"] = self.bias.float().contiguous()
        for lang, (matrix, bias) in self.per_language.items():
            tensors[f"matrix.{lang}"] = matrix.float().contiguous()
            if bias is not None:
                tensors[f"bias.{lang}"] = bias.float().contiguous()
        save_file(tensors, str(path), metadata={"cc_transform": json.dumps(self.meta)})
        digest = file_sha256(path)
        write_json(fit_record_path(path), {**self.meta, "transform_sha256": digest})
        return digest


def fit_record_path(path: str | Path) -> Path:
    """The record written beside a matrix file: ``transform.safetensors`` → ``transform.json``."""
    return Path(path).with_suffix(".json")


def load_transform(path: str | Path, hidden_size: int | None = None, num_layers: int | None = None) -> TransformMatrix:
    """Load ``transform.safetensors``; a shape that does not fit the model is a clear error."""
    path = Path(path)
    if path.is_dir():
        path = path / TRANSFORM_FILE
    if not path.is_file():
        raise InputError(f"{path}: no Transform Matrix here (run `cctune fit` first)")
    tensors, metadata = read_safetensors(path, REFIT)
    meta = json.loads(metadata.get("cc_transform", "{}"))
    if "matrix" not in tensors:
        raise InputError(f"{path}: not a Transform Matrix file (no 'matrix' tensor)")
    matrix = tensors["matrix"]
    per_language = {key.split(".", 1)[1]: (tensor, tensors.get(f"bias.{key.split('.', 1)[1]}"))
                    for key, tensor in tensors.items() if key.startswith("matrix.")}
    transform = TransformMatrix(matrix, tensors.get("bias"), per_language, meta)
    transform.check_model(path, hidden_size, num_layers)
    return transform


def check_fit_record(path: str | Path) -> str:
    """The sha256 of the Transform Matrix file ``path``, once shown to be the file ``cctune fit`` wrote (the
    ``transform_sha256`` of ``transform.json`` beside it). A matrix whose values changed after the fit
    (its header intact) would otherwise be used, and its new hash recorded, as if fitted."""
    path = Path(path)
    path = path / TRANSFORM_FILE if path.is_dir() else path
    if not path.is_file():
        raise InputError(f"{path}: no Transform Matrix here (run `cctune fit` first)")
    record = fit_record_path(path)
    data = read_json(record) if record.is_file() else {}
    recorded = data.get("transform_sha256") if isinstance(data, dict) else None
    if not recorded:
        raise LineageError(f"{path}: {record} records no sha256 of the matrix `cctune fit` wrote (written by an "
                           f"older version, or not by fit), so it cannot be checked; re-run: {REFIT}")
    actual = file_sha256(path)
    if actual != recorded:
        raise LineageError(f"{path}: sha256 is {actual} but `cctune fit` wrote {recorded} ({record}): the matrix "
                           f"changed after it was fitted ({short(actual)} vs {short(recorded)}); re-run: {REFIT}")
    return actual
