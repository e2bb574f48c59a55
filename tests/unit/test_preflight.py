"""``cctune check``: the preflight lists every need of a profile and whether it is there, in seconds.

    .venv/bin/python -m pytest tests/unit/test_preflight.py -q
"""

from __future__ import annotations

import shutil
from collections import namedtuple
from pathlib import Path

import pytest

from cc_core.cli import main

REPO = Path(__file__).resolve().parents[2]


def test_tiny_profile_has_everything_it_needs(capsys):
    assert main(["check", "--params", str(REPO / "params.tiny.yaml")]) == 0
    out = capsys.readouterr().out
    for need in ("base model", "training data", "evaluation data", "GPUs", "disk"):
        assert f"] {need}: " in out
    assert "[ok  ] base model: tiny-random-llama" in out and "XNLI 3/10, XLSum 2/10" in out
    assert "everything this profile needs is here" in out


def test_paper_profile_without_its_prerequisites_names_each_and_where_it_comes_from(capsys, monkeypatch, tmp_path):
    import torch

    monkeypatch.chdir(tmp_path)  # no external/CC-Tuning here
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert main(["check", "--params", str(REPO / "params.paper.yaml")]) == 2
    captured = capsys.readouterr()
    lines = {line.split("]")[1].split(":")[0].strip(): line for line in captured.out.splitlines() if line.startswith("[")}
    assert lines["base model"].startswith("[MISSING] base model: meta-llama/Llama-3.1-8B: hub id")
    assert "huggingface-cli download meta-llama/Llama-3.1-8B --local-dir DIR" in lines["base model"]
    clone = "git clone https://github.com/YYF-Tommy/CC-Tuning external/CC-Tuning"
    assert lines["training data"].startswith("[MISSING]") and clone in lines["training data"]
    assert lines["evaluation data"].startswith("[MISSING]") and clone in lines["evaluation data"]
    assert lines["GPUs"].startswith("[MISSING] GPUs: none, but this profile needs GPUs: 8.03B parameters")
    assert "GiB per GPU on 8 GPUs" in lines["GPUs"]
    assert captured.err.startswith("cctune check: error: ") and len(captured.err.strip().splitlines()) == 1
    assert "needs missing (base model, training data, evaluation data, GPUs" in captured.err


def test_a_local_model_directory_gpus_and_disk_are_measured(tmp_path, capsys, monkeypatch):
    """A local base model is sized from its config.json; too little disk is missing, with the estimate."""
    import json

    import torch

    from cc_core.config import parse_params
    from cc_core.io import InputError
    from cc_core.preflight import check

    model = tmp_path / "model"
    model.mkdir()
    params = parse_params({}, overrides=[f"model.base={model}", "eval.data_dir=bundled"])
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(InputError, match="1 of 5 needs missing \\(base model\\)"):
        check(params)
    assert "not a Hugging Face model directory" in capsys.readouterr().out
    (model / "config.json").write_text(json.dumps({"hidden_size": 2048, "num_hidden_layers": 16,
                                                   "intermediate_size": 8192, "vocab_size": 128256}))
    (model / "model.safetensors").write_bytes(b"0" * 1024)
    Usage = namedtuple("Usage", "total used free")
    monkeypatch.setattr(shutil, "disk_usage", lambda path: Usage(10 << 30, 9 << 30, 1 << 30))
    with pytest.raises(InputError, match="needs missing \\(GPUs, disk\\)"):
        check(parse_params({}, overrides=[f"model.base={model}", "train.bf16=true"]))
    out = capsys.readouterr().out
    assert "[MISSING] GPUs: none, but this profile needs GPUs: 1.60B parameters (its config.json)" in out
    assert "[MISSING] disk: 1 GiB free" in out and "resumable checkpoints" in out


def test_prepare_says_where_a_missing_data_file_comes_from(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(["prepare", "--params", str(REPO / "params.paper.yaml"), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert "aya_train_mini_parallel.json: data file not found (data.source); it is the authors' training data" in err
    assert "git clone https://github.com/YYF-Tommy/CC-Tuning external/CC-Tuning" in err
    assert main(["prepare", "--set", "data.source=mine.jsonl", "--params", str(REPO / "params.tiny.yaml"),
                 "--out", str(tmp_path / "out")]) == 2
    assert "mine.jsonl: data file not found (data.source); it is your parallel SFT data" in capsys.readouterr().err
