"""LoRA-CC training through the recipe (train.peft: lora) on a tiny llama: ZeRO-3, and ZeRO-2 with
gradient checkpointing, on two CPU ranks, and resume after a crash reaching the uninterrupted run's loss.

    pytest -m integration tests/integration/test_lora_train.py
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from cc_core.config import DataParams, ModelParams, parse_params
from cc_core.data.prepare import prepare
from cc_core.modeling.base import build_base_model

pytestmark = pytest.mark.integration
REPO = Path(__file__).resolve().parents[2]
SETTINGS = {"train.peft": "lora", "train.max_steps": 4, "train.per_device_batch_size": 2,
            "train.learning_rate": 1e-2, "train.save_steps": 2, "train.logging_steps": 1,
            "train.warmup_ratio": 0.0, "train.lr_scheduler": "constant", "tracking.enabled": "false"}


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    root = tmp_path_factory.mktemp("lora-train")
    build_base_model(ModelParams(base="tiny-random-llama"), root / "models/base")
    prepare(DataParams(num_pairs=8, max_train_records=16), root / "data/prepared")
    return root


def _adapter_b_norm(out: Path) -> float:
    return sum(float(t.norm()) for k, t in load_file(str(out / "adapter_model.safetensors")).items() if "lora_B" in k)


@pytest.mark.parametrize("stage,checkpointing", [("zero3", False), ("zero2", True)])
def test_deepspeed_on_two_cpu_ranks_trains_lora_adapters(workspace, stage, checkpointing):
    """torchrun, 2 processes, gloo; ZeRO-3 partitioning the frozen base and the adapters, or ZeRO-2 with
    (non-reentrant) gradient checkpointing: an adapter checkpoint (not the base's weights) whose adapters
    moved, choices counted over both ranks."""
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "-m", "cc_core.cli", "train",
           "--method", "cc", "--out", f"models/cc-{stage}"]
    settings = {**SETTINGS, "train.deepspeed": stage, "train.max_steps": 2,
                "train.gradient_checkpointing": str(checkpointing).lower()}
    for key, value in settings.items():
        cmd += ["--set", f"{key}={value}"]
    (workspace / "params.yaml").write_text((REPO / "params.yaml").read_text())
    proc = subprocess.run(cmd, cwd=workspace, capture_output=True, text=True, timeout=900,
                          env={**os.environ, "DS_ACCELERATOR": "cpu", "PYTHONPATH": str(REPO)})
    assert proc.returncode == 0, proc.stderr[-4000:]
    out = workspace / f"models/cc-{stage}"
    assert (out / "cc_adapter.json").is_file() and not (out / "model.safetensors").exists()
    assert _adapter_b_norm(out) > 0  # B starts at 0: the adapters trained
    metrics = json.loads((workspace / "metrics/train_cc.json").read_text())
    assert sum(metrics["layer_choice_counts"].values()) == 2 * 2 * 2  # steps × batch × ranks
    assert all(math.isfinite(h["loss"]) for h in json.loads((workspace / "metrics/train_cc_loss.json").read_text()))
    from cc_core.modeling.loading import load_inference_model

    model, _, cc = load_inference_model(out, base_dir=workspace / "models/base")
    assert cc is not None and cc.num_layers == 2


class _Crash(RuntimeError):
    pass


def test_resume_after_a_crash_reaches_the_uninterrupted_loss(workspace, monkeypatch):
    """A LoRA-CC run that dies after its step-2 checkpoint resumes from it (adapters, Decision Maker,
    optimizer) and ends on the uninterrupted run's loss."""
    from cc_core.train import train
    from cc_core.training.trainer import CCTrainer

    monkeypatch.chdir(workspace)
    params = parse_params({}, overrides=[f"{k}={v}" for k, v in SETTINGS.items()])
    reference = train(params, "cc", "models/base", "data/prepared", "models/cc-ref", "metrics")
    assert reference.steps == 4

    real_step = CCTrainer.training_step

    def crash_at_step_3(self, *args, **kwargs):
        if self.state.global_step == 2:  # checkpoint-2 is complete: die in the third step
            raise _Crash("killed")
        return real_step(self, *args, **kwargs)

    monkeypatch.setattr(CCTrainer, "training_step", crash_at_step_3)
    with pytest.raises(_Crash):
        train(params, "cc", "models/base", "data/prepared", "models/cc-resume", "metrics")
    checkpoint = workspace / "models/.cc-resume-checkpoints/checkpoint-2"
    assert (checkpoint / "cc_checkpoint_complete.json").is_file() and (checkpoint / "cc_adapter.json").is_file()
    monkeypatch.setattr(CCTrainer, "training_step", real_step)

    resumed = train(params, "cc", "models/base", "data/prepared", "models/cc-resume", "metrics", resume=True)
    assert resumed.resumed_from_step == 2 and resumed.steps == 4
    assert resumed.final_loss == pytest.approx(reference.final_loss, rel=1e-5)
    ref = load_file(str(workspace / "models/cc-ref/adapter_model.safetensors"))
    got = load_file(str(workspace / "models/cc-resume/adapter_model.safetensors"))
    assert ref.keys() == got.keys()
    for key in ref:
        torch.testing.assert_close(got[key], ref[key], atol=1e-6, rtol=1e-5, msg=key)
