"""Lineage between stages: a Transform Matrix, activations or metrics made from another checkpoint
are refused with both hashes and the stage to re-run (a retrained models/cc once ran with the old
matrix and registered the old scores)."""

from __future__ import annotations

import json

import pytest
import torch

from cc_core.config import parse_params
from cc_core.generate import Generator
from cc_core.lineage import LineageError, checkpoint_sha256, require_same_checkpoint
from cc_core.modeling import CCTuningModel, save_cc_checkpoint
from cc_core.modeling.transform_matrix import TransformMatrix


def _checkpoint(path, tiny_factory, seed: int):
    model, tok = tiny_factory("llama", seed=seed)
    torch.manual_seed(seed)
    save_cc_checkpoint(CCTuningModel(model), path, tok)
    return checkpoint_sha256(path)


def _matrix(path, model_sha256: str | None):
    meta = {"num_layers": 2, "hidden_size": 64, **({"model_sha256": model_sha256} if model_sha256 else {})}
    TransformMatrix(torch.eye(64), None, {}, meta).save(path)


def test_checkpoint_hash_is_the_weights_content(tmp_path, tiny_factory):
    first = _checkpoint(tmp_path / "cc", tiny_factory, seed=0)
    assert checkpoint_sha256(tmp_path / "cc") == first  # stable (and memoised while unchanged)
    (tmp_path / "cc" / "tokenizer_config.json").write_text("{}")  # not weights: same identity
    assert checkpoint_sha256(tmp_path / "cc") == first
    second = _checkpoint(tmp_path / "cc", tiny_factory, seed=1)  # retrained: new weights
    assert second != first and checkpoint_sha256(tmp_path / "cc") == second


def test_eval_refuses_a_transform_fitted_for_another_checkpoint(tmp_path, tiny_factory):
    old = _checkpoint(tmp_path / "cc", tiny_factory, seed=0)
    _matrix(tmp_path / "transform.safetensors", old)
    generator = Generator.from_dirs(tmp_path / "cc", tmp_path / "transform.safetensors", mode="transform")
    assert generator.lineage["checkpoint_sha256"] == old and len(generator.lineage["transform_sha256"]) == 64
    new = _checkpoint(tmp_path / "cc", tiny_factory, seed=3)  # e.g. another train.seed
    with pytest.raises(LineageError) as caught:
        Generator.from_dirs(tmp_path / "cc", tmp_path / "transform.safetensors", mode="transform")
    message = str(caught.value)
    assert f"made from checkpoint {old[:12]}" in message and f"is now {new[:12]}" in message
    assert "re-run: cctune collect && cctune fit" in message
    _matrix(tmp_path / "transform.safetensors", None)  # a matrix that records no checkpoint at all
    with pytest.raises(LineageError, match="records no checkpoint hash"):
        Generator.from_dirs(tmp_path / "cc", tmp_path / "transform.safetensors", mode="transform")


def test_eval_metrics_name_their_checkpoint_and_matrix(tmp_path, tiny_factory):
    from cc_core.evaluate import evaluate

    sha = _checkpoint(tmp_path / "cc", tiny_factory, seed=0)
    _matrix(tmp_path / "transform.safetensors", sha)
    params = parse_params({}, overrides=["tracking.enabled=false", "eval.max_new_tokens=2", "eval.langs=[zh]"])
    evaluate(params, "cc", "xnli", limit=1, model_dir=tmp_path / "cc", transform=tmp_path / "transform.safetensors",
             out_root=tmp_path / "eval", metrics_root=tmp_path / "metrics")
    saved = json.loads((tmp_path / "metrics" / "cc" / "XNLI.json").read_text())
    assert saved["checkpoint_sha256"] == sha
    assert saved["transform_sha256"] and saved["languages"]["zh"]["checkpoint_sha256"] == sha


def test_require_same_checkpoint_messages():
    require_same_checkpoint("x", "a" * 64, "a" * 64, "models/cc", "cctune eval")
    with pytest.raises(LineageError, match=r"^metrics/eval/cc/XNLI.json: made from checkpoint aaaaaaaaaaaa… "
                                           r"but models/cc is now bbbbbbbbbbbb…; re-run: cctune eval"):
        require_same_checkpoint("metrics/eval/cc/XNLI.json", "a" * 64, "b" * 64, "models/cc", "cctune eval")
