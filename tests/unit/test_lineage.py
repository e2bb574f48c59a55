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


# --- issue 21, point 6: a matrix altered after the fit is refused ----------------------------------------

def _alter_values(path) -> None:
    """Scale every value by 0.5 and rewrite the file with the same header (same size, same metadata),
    leaving the record beside it as the fit wrote it."""
    from safetensors import safe_open
    from safetensors.torch import save_file

    with safe_open(str(path), framework="pt") as handle:
        tensors = {key: handle.get_tensor(key) * 0.5 for key in handle.keys()}
        metadata = handle.metadata()
    size = path.stat().st_size
    save_file(tensors, str(path), metadata=metadata)
    assert path.stat().st_size == size


def test_a_direct_eval_refuses_a_matrix_altered_after_fit_naming_both_hashes(tmp_path, tiny_factory, capsys,
                                                                             monkeypatch):
    """Before: `cctune eval --method cc` used the altered matrix (rc 0) and recorded its hash."""
    from cc_core.cli import main
    from cc_core.io import file_sha256

    sha = _checkpoint(tmp_path / "cc", tiny_factory, seed=0)
    (tmp_path / "transform").mkdir()
    matrix = tmp_path / "transform" / "transform.safetensors"
    _matrix(matrix, sha)
    fitted = file_sha256(matrix)
    assert json.loads((tmp_path / "transform" / "transform.json").read_text())["transform_sha256"] == fitted
    _alter_values(matrix)
    altered = file_sha256(matrix)
    (tmp_path / "params.yaml").write_text("tracking:\n  enabled: false\neval:\n  max_new_tokens: 2\n")
    monkeypatch.chdir(tmp_path)
    code = main(["eval", "--method", "cc", "--benchmark", "xnli", "--langs", "zh", "--limit", "1", "--model", "cc",
                 "--transform", "transform"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and err.count("\n") == 0, err
    assert err.startswith("cctune eval: error: transform/transform.safetensors: sha256 is ")
    assert f"sha256 is {altered} but `cctune fit` wrote {fitted}" in err and "re-run: cctune fit" in err
    assert not (tmp_path / "metrics").exists()  # nothing recorded the altered matrix's hash
