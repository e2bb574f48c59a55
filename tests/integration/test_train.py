"""Real optimizer steps on tiny models: CC and SFT, ZeRO-2/3 (one and two processes), resume, MLflow."""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from cc_core.config import DataParams, parse_params
from cc_core.data.prepare import prepare
from cc_core.modeling.base import build_base_model
from cc_core.config import ModelParams

pytestmark = pytest.mark.integration
REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    root = tmp_path_factory.mktemp("train")
    build_base_model(ModelParams(base="tiny-random-llama"), root / "models/base")
    prepare(DataParams(num_pairs=8, max_train_records=16), root / "data/prepared")
    return root


def _overrides(root: Path, **extra) -> list[str]:
    base = {"train.max_steps": 4, "train.per_device_batch_size": 4, "train.learning_rate": 1e-3,
            "train.save_steps": 2, "train.logging_steps": 1, "train.warmup_ratio": 0.0,
            "train.lr_scheduler": "constant", "tracking.uri": f"sqlite:///{root}/mlflow.db",
            "tracking.artifact_location": str(root / "mlartifacts")}
    base.update(extra)
    return [f"{k}={v}" for k, v in base.items()]


def _cli(root: Path, *args: str, launcher: list[str] | None = None, env: dict | None = None, **overrides):
    cmd = (launcher or [sys.executable, "-m", "cc_core.cli"]) + list(args)
    for item in _overrides(root, **overrides):
        cmd += ["--set", item]
    full_env = {**{k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}, "DS_ACCELERATOR": "cpu",
                "PYTHONPATH": str(REPO), **(env or {})}
    return subprocess.run(cmd, cwd=root, env=full_env, capture_output=True, text=True, timeout=600)


def _params_file(root: Path) -> Path:
    path = root / "params.yaml"
    if not path.exists():
        path.write_text((REPO / "params.yaml").read_text())
    return path


def _train_api(root: Path, method: str, out: str, **overrides):
    from cc_core.train import train

    params = parse_params({}, overrides=_overrides(root, **overrides))
    return train(params, method, root / "models/base", root / "data/prepared", root / out, root / "metrics")


@pytest.mark.parametrize("method", ["cc", "sft"])
def test_loss_decreases_on_tiny_overfit_set(workspace, method, monkeypatch):
    monkeypatch.chdir(workspace)  # the project the stages run in: recorded paths are relative to it
    result = _train_api(workspace, method, f"models/{method}", **{"train.max_steps": 12,
                                                                 "train.per_device_batch_size": 16})
    history = json.loads((workspace / f"metrics/train_{method}_loss.json").read_text())
    losses = [h["loss"] for h in history]
    assert len(losses) == 12 and all(map(torch.isfinite, torch.tensor(losses)))
    assert losses[-1] < losses[0] - 0.5, losses
    metrics = json.loads((workspace / f"metrics/train_{method}.json").read_text())
    assert metrics["steps"] == 12 and metrics["tokens_per_s"] > 0
    out = workspace / f"models/{method}"
    assert (out / "model.safetensors").is_file() and not (out / "mlflow_run.json").exists()  # no run pointer
    # no pickle in a model directory (HF's training_args.bin included): safetensors and JSON only
    pickles = [p.name for p in out.rglob("*") if p.suffix in (".bin", ".pt", ".pth", ".pkl", ".pickle")]
    assert pickles == [], pickles
    if method == "cc":
        from cc_core.modeling import load_cc_checkpoint

        model, _ = load_cc_checkpoint(out)
        assert sum(result.layer_choice_counts.values()) == 12 * 16
        assert model.inject_layer == 0
    else:
        assert not (out / "cc_tuning.json").exists()
    # the MLflow run holds params, per-step metrics and the checkpoint tags
    import mlflow

    client = mlflow.MlflowClient(f"sqlite:///{workspace}/mlflow.db")
    run = client.get_run(result.run_id)
    assert run.data.params["train.learning_rate"] == "0.001"
    assert {"loss", "learning_rate", "grad_norm", "tokens_per_s", "final_loss"} <= set(run.data.metrics)
    assert len(client.get_metric_history(result.run_id, "loss")) == 12
    assert run.data.tags["checkpoint_sha256"] == result.checkpoint_sha256
    assert run.data.tags["checkpoint_path"] == f"models/{method}"  # relative to the project, not the checkout
    assert run.data.tags["method"] == method and run.data.tags["data_sha256"]
    if method == "cc":
        assert any(k.startswith("dm_choice_layer_") for k in run.data.metrics)
    # the run view's last throughput and FLOPs are the metrics file's (not the closing summary's 0s)
    assert run.data.metrics["tokens_per_s"] == pytest.approx(metrics["tokens_per_s"], abs=0.01)
    assert run.data.metrics["train_tokens_per_s"] == pytest.approx(metrics["tokens_per_s"], abs=0.01)
    assert run.data.metrics["total_flos"] == pytest.approx(metrics["total_flos"]) and metrics["total_flos"] > 0
    from cc_core.modeling.loading import load_model_dir

    base, _ = load_model_dir(workspace / "models/base")
    embedding = {id(p) for m in base.modules() if isinstance(m, torch.nn.Embedding) for p in m.parameters()}
    params = sum(p.numel() for p in base.parameters() if id(p) not in embedding)
    trained = 6 * params * metrics["tokens_total"]  # forward + backward per trained token
    if method == "sft":
        assert metrics["total_flos"] == pytest.approx(trained)
    else:  # plus the English prompt pass, a forward (2 per parameter and token)
        english = (metrics["total_flos"] - trained) / (2 * params)
        assert english == pytest.approx(round(english)) and 0 < english < metrics["tokens_total"]


def _losses(root: Path, method: str) -> list[float]:
    return [h["loss"] for h in json.loads((root / f"metrics/train_{method}_loss.json").read_text())]


def _load_trained(root: Path, method: str, out: str):
    from cc_core.modeling import load_cc_checkpoint
    from cc_core.modeling.loading import load_model_dir

    if method == "cc":
        cc, _ = load_cc_checkpoint(root / out)
        return cc.model, cc
    return load_model_dir(root / out)[0], None


@pytest.mark.parametrize(("method", "stage"), [("cc", "zero2"), ("sft", "zero2"), ("cc", "zero3"), ("sft", "zero3")])
def test_deepspeed_single_process(workspace, method, stage):
    """Both methods under ZeRO-2 and ZeRO-3 (one process, gloo): finite, falling loss; a loadable model."""
    _params_file(workspace)
    out = f"models/{method}-{stage}"
    proc = _cli(workspace, "train", "--method", method, "--out", out,
                **{"train.deepspeed": stage, "train.max_steps": 4, "train.gradient_checkpointing": stage == "zero3"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    losses = _losses(workspace, method)
    assert len(losses) == 4 and all(math.isfinite(x) for x in losses), losses
    assert losses[-1] < losses[0], losses
    model, cc = _load_trained(workspace, method, out)
    base = _load_trained(workspace, "sft", "models/base")[0]
    assert sum(p.numel() for p in model.parameters()) == sum(p.numel() for p in base.parameters())  # consolidated
    assert not torch.equal(model.model.layers[0].mlp.up_proj.weight, base.model.layers[0].mlp.up_proj.weight)
    if cc is not None:
        metrics = json.loads((workspace / "metrics/train_cc.json").read_text())
        assert sum(metrics["layer_choice_counts"].values()) == 4 * 4  # the Decision Maker chose for every example


def test_hooks_work_on_zero3_partitioned_parameters(workspace):
    """Capture and connection on a ZeRO-3-partitioned model equal the plain model's, and leave no hook."""
    proc = subprocess.run([sys.executable, str(REPO / "tests/integration/zero3_hooks_check.py"), "models/base"],
                          cwd=workspace, capture_output=True, text=True, timeout=600,
                          env={**os.environ, "DS_ACCELERATOR": "cpu", "PYTHONPATH": str(REPO)})
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    assert report["partitioned"], report
    assert report["capture_max_abs_diff"] <= 1e-6 < report["capture_norm"], report
    assert report["connected_max_abs_diff"] <= 1e-5 < report["connection_effect"], report
    assert report["hooks_after"] == report["hooks_before"], report


@pytest.mark.parametrize("stage", ["zero2", "zero3"])
def test_two_processes_with_torchrun(workspace, stage):
    """Two CPU processes (torchrun, gloo): layer choices counted over both ranks, one full checkpoint."""
    _params_file(workspace)
    out = f"models/cc-2proc-{stage}"
    launcher = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "-m", "cc_core.cli"]
    proc = _cli(workspace, "train", "--method", "cc", "--out", out, launcher=launcher,
                **{"train.deepspeed": stage, "train.max_steps": 2, "train.per_device_batch_size": 2})
    assert proc.returncode == 0, proc.stderr[-3000:]
    model, _ = _load_trained(workspace, "cc", out)
    base = _load_trained(workspace, "sft", "models/base")[0]
    assert sum(p.numel() for p in model.parameters()) == sum(p.numel() for p in base.parameters())
    assert not torch.equal(model.model.layers[0].mlp.up_proj.weight, base.model.layers[0].mlp.up_proj.weight)
    metrics = json.loads((workspace / "metrics/train_cc.json").read_text())
    assert sum(metrics["layer_choice_counts"].values()) == 2 * 2 * 2  # steps × batch × ranks
    assert all(math.isfinite(x) for x in _losses(workspace, "cc"))


def test_resume_after_kill_reaches_same_final_loss(workspace):
    _params_file(workspace)
    settings = {"train.max_steps": 8, "train.save_steps": 2, "train.per_device_batch_size": 2}
    reference = _cli(workspace, "train", "--method", "cc", "--out", "models/cc-ref", **settings)
    assert reference.returncode == 0, reference.stderr[-3000:]
    expected = json.loads((workspace / "metrics/train_cc.json").read_text())["final_loss"]
    reference_tokens = json.loads((workspace / "metrics/train_cc.json").read_text())["tokens_total"]

    cmd = [sys.executable, "-m", "cc_core.cli", "train", "--method", "cc", "--out", "models/cc-resume"]
    for item in _overrides(workspace, **settings):
        cmd += ["--set", item]
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen(cmd, cwd=workspace, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    checkpoint = workspace / "models/.cc-resume-checkpoints/checkpoint-4/cc_checkpoint_complete.json"
    deadline = time.time() + 300
    while not checkpoint.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.2)
    proc.send_signal(signal.SIGKILL)  # a real kill, mid-run
    proc.wait()
    assert checkpoint.exists() and not (workspace / "models/cc-resume").exists()

    killed_run = json.loads((workspace / "models/.cc-resume-checkpoints/mlflow_run.json").read_text())["run_id"]

    resumed = _cli(workspace, "train", "--method", "cc", "--out", "models/cc-resume", "--resume", **settings)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "resuming from" in resumed.stderr
    final = json.loads((workspace / "metrics/train_cc.json").read_text())
    assert final["steps"] == 8
    assert final["final_loss"] == pytest.approx(expected, rel=1e-4)
    # throughput counts the resumed part's tokens over the resumed part's runtime (it divided all 8
    # steps' tokens by the last 4 steps' time), and the whole run's tokens match the uninterrupted run
    assert final["resumed_from_step"] == 4
    assert final["tokens_total"] == reference_tokens and 0 < final["tokens_this_run"] < final["tokens_total"]
    assert final["tokens_per_s"] == pytest.approx(final["tokens_this_run"] / final["train_runtime_s"], rel=0.01)
    # the counters came back with the checkpoint: every example of all 8 steps is in the histogram
    assert sum(final["layer_choice_counts"].values()) == 8 * 2
    # one MLflow run holds the whole training, steps before and after the kill
    import mlflow

    run_id = final["run_id"]  # the model directory holds no run pointer; the metrics name the run
    assert run_id == killed_run
    client = mlflow.MlflowClient(f"sqlite:///{workspace}/mlflow.db")
    steps = {m.step for m in client.get_metric_history(run_id, "loss")}
    assert steps == set(range(1, 9)) and client.get_run(run_id).info.status == "FINISHED"
    # finished: the intermediate checkpoints are gone, so a rerun trains afresh instead of resuming
    assert not (workspace / "models/.cc-resume-checkpoints").exists()
    again = _cli(workspace, "train", "--method", "cc", "--out", "models/cc-resume", "--resume",
                 **{**settings, "train.max_steps": 2})
    assert again.returncode == 0 and "resuming from" not in again.stderr
    assert json.loads((workspace / "metrics/train_cc.json").read_text())["steps"] == 2


def test_bad_inputs_fail_clearly_and_leave_no_output(workspace, tmp_path):
    _params_file(workspace)
    # a DeepSpeed config that does not parse
    bad = tmp_path / "ds.json"
    bad.write_text("{not json")
    proc = _cli(workspace, "train", "--method", "cc", "--out", "models/bad", **{"train.deepspeed": str(bad)})
    assert proc.returncode == 2 and "ds.json:1: DeepSpeed config is not valid JSON" in proc.stderr
    # every example truncated away
    proc = _cli(workspace, "train", "--method", "sft", "--out", "models/bad", **{"train.cutoff_len": 8})
    assert proc.returncode == 2 and "no example left to train on: train.cutoff_len=8 dropped 16" in proc.stderr
    # MLflow down: fail fast when asked to
    proc = _cli(workspace, "train", "--method", "sft", "--out", "models/bad",
                **{"tracking.uri": "http://127.0.0.1:9", "tracking.on_unavailable": "fail"})
    assert proc.returncode == 2 and "unreachable" in proc.stderr
    assert not (workspace / "models/bad").exists()
    # MLflow down: train anyway and say so
    proc = _cli(workspace, "train", "--method", "sft", "--out", "models/sft-untracked",
                **{"tracking.uri": "http://127.0.0.1:9", "train.max_steps": 1})
    assert proc.returncode == 0 and "tracking was skipped" in proc.stderr
    # a record without instruction_en, and an empty training set
    data = tmp_path / "data"
    data.mkdir()
    (data / "train.jsonl").write_text(json.dumps({"id": "a", "lang": "de", "instruction": "x", "output": "y"}) + "\n")
    proc = _cli(workspace, "train", "--method", "cc", "--data", str(data), "--out", "models/bad")
    assert proc.returncode == 2 and "train.jsonl:1: missing field 'instruction_en'" in proc.stderr
    (data / "train.jsonl").write_text("")
    proc = _cli(workspace, "train", "--method", "cc", "--data", str(data), "--out", "models/bad")
    assert proc.returncode == 2 and "empty training set" in proc.stderr
    assert not (workspace / "models/bad").exists()


def test_tokenizer_model_mismatch(workspace, tmp_path):
    import shutil

    from cc_core.modeling.loading import load_model_dir

    model, tok = load_model_dir(workspace / "models/base")
    small = tmp_path / "base-small"
    shutil.copytree(workspace / "models/base", small)
    model.resize_token_embeddings(1000)
    model.save_pretrained(small)
    _params_file(workspace)
    proc = _cli(workspace, "train", "--method", "sft", "--base", str(small), "--out", "models/bad")
    assert proc.returncode == 2 and "tokenizer and model do not match" in proc.stderr


# --- faults that must not pass silently --------------------------------------------------------------------

def test_diverged_training_stops_with_a_clear_error(workspace):
    _params_file(workspace)
    proc = _cli(workspace, "train", "--method", "sft", "--out", "models/diverged",
                **{"train.learning_rate": 1e15, "train.max_steps": 6})
    assert proc.returncode == 2, proc.stderr[-2000:]
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("cctune train: error: training diverged: non-finite"), last
    assert "train.nonfinite_patience=0" in last and "Traceback" not in proc.stderr
    assert not (workspace / "models/diverged").exists()  # no model with NaN weights to evaluate


def test_nonfinite_patience_skips_bad_steps(workspace, monkeypatch, caplog):
    """One NaN step within the patience: its update is skipped, the weights stay finite."""
    import cc_core.train as train_module
    from cc_core.training import trainer as trainer_lib

    class Poisoned(trainer_lib.CCTrainer):
        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            loss = super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
            if self.state.global_step == 1:  # the second step's loss (and gradients) are NaN
                return (loss[0] * float("nan"), loss[1]) if return_outputs else loss * float("nan")
            return loss

    monkeypatch.setattr(trainer_lib, "CCTrainer", Poisoned)
    with caplog.at_level("WARNING"):
        result = _train_api(workspace, "sft", "models/sft-patience", **{"train.nonfinite_patience": 1,
                                                                        "train.max_steps": 3})
    assert result.steps == 3 and "step 2: non-finite loss, update skipped" in caplog.text
    model, _ = _load_trained(workspace, "sft", "models/sft-patience")  # loading checks every weight is finite
    with pytest.raises(train_module.TrainingDivergedError, match="at step 2"):
        _train_api(workspace, "sft", "models/sft-patience0", **{"train.nonfinite_patience": 0, "train.max_steps": 3})


def test_full_disk_during_a_checkpoint_save_is_one_error_and_resume_skips_it(workspace, monkeypatch, caplog):
    import cc_core.train as train_module
    from cc_core.training.checkpoints import COMPLETE

    real_save = torch.save

    def full_disk(obj, f, *args, **kwargs):
        if "checkpoint-4" in str(f):
            raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 64 vs 0")
        return real_save(obj, f, *args, **kwargs)

    monkeypatch.setattr(torch, "save", full_disk)
    with pytest.raises(train_module.CheckpointWriteError) as caught:
        _train_api(workspace, "sft", "models/sft-disk", **{"train.max_steps": 6})
    work = workspace / "models/.sft-disk-checkpoints"
    assert str(caught.value).startswith(f"{work / 'checkpoint-4'}: writing failed (disk full?)")
    assert str(caught.value).endswith("; the incomplete folder was removed")  # issue 21: its space is needed
    assert (work / "checkpoint-2" / COMPLETE).is_file()
    assert not (work / "checkpoint-4").exists()
    monkeypatch.setattr(torch, "save", real_save)  # space freed
    params = parse_params({}, overrides=_overrides(workspace, **{"train.max_steps": 6}))
    with caplog.at_level("INFO"):
        result = train_module.train(params, "sft", workspace / "models/base", workspace / "data/prepared",
                                    workspace / "models/sft-disk", workspace / "metrics", resume=True)
    assert f"resuming from {work / 'checkpoint-2'}" in caplog.text
    assert result.steps == 6 and result.resumed_from_step == 2


def _start_and_kill_during_save(root: Path, out: str, settings: dict, step: int) -> Path:
    """Start training in a child process and SIGKILL it while it saves checkpoint-<step>."""
    cmd = [sys.executable, "-m", "cc_core.cli", "train", "--method", "sft", "--out", out, "--resume"]
    for item in _overrides(root, **settings):
        cmd += ["--set", item]
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen(cmd, cwd=root, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    folder = root / f"models/.{Path(out).name}-checkpoints/checkpoint-{step}"
    deadline = time.time() + 300
    while not folder.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.002)
    proc.send_signal(signal.SIGKILL)  # the save has only begun: the folder holds a part of the checkpoint
    proc.wait()
    assert folder.exists(), "training ended before the checkpoint was started"
    return folder


def test_kill_during_a_checkpoint_save_then_resume_and_fresh_start(workspace):
    import mlflow

    _params_file(workspace)
    settings = {"train.max_steps": 6, "train.save_steps": 2, "train.per_device_batch_size": 2}
    half = _start_and_kill_during_save(workspace, "models/sft-kill", settings, step=4)
    work = half.parent
    cut_short = not (half / "cc_checkpoint_complete.json").exists()
    killed_run = json.loads((work / "mlflow_run.json").read_text())["run_id"]
    resumed = _cli(workspace, "train", "--method", "sft", "--out", "models/sft-kill", "--resume", **settings)
    assert resumed.returncode == 0, resumed.stderr[-3000:]  # before: No such file ... trainer_state.json
    if cut_short:  # the usual case; a kill can land a few ms late, after the save completed
        assert "skipping incomplete checkpoint models/.sft-kill-checkpoints/checkpoint-4" in resumed.stderr
        assert "resuming from models/.sft-kill-checkpoints/checkpoint-2" in resumed.stderr
    assert json.loads((workspace / "metrics/train_sft.json").read_text())["steps"] == 6
    client = mlflow.MlflowClient(f"sqlite:///{workspace}/mlflow.db")
    assert client.get_run(killed_run).info.status == "FINISHED"  # resumed: the same run finished
    # killed again, then restarted with other params: the abandoned run is closed, not left RUNNING
    _start_and_kill_during_save(workspace, "models/sft-kill2", settings, step=2)
    abandoned = json.loads((workspace / "models/.sft-kill2-checkpoints/mlflow_run.json").read_text())["run_id"]
    assert client.get_run(abandoned).info.status == "RUNNING"
    fresh = _cli(workspace, "train", "--method", "sft", "--out", "models/sft-kill2", "--resume",
                 **{**settings, "train.learning_rate": 5e-4, "train.max_steps": 2})
    assert fresh.returncode == 0, fresh.stderr[-3000:]
    assert "other params/data: starting fresh" in fresh.stderr
    assert client.get_run(abandoned).info.status == "KILLED"


# --- issue 21 ---------------------------------------------------------------------------------------------

def _scale_float_tensors(weights: Path, factor: float) -> None:
    """Every float tensor times ``factor``, written back in place: the same size, other weights."""
    from safetensors import safe_open
    from safetensors.torch import save_file

    with safe_open(str(weights), framework="pt") as handle:
        tensors = {k: handle.get_tensor(k) for k in handle.keys()}
        metadata = handle.metadata()
    size = weights.stat().st_size
    save_file({k: v * factor if v.is_floating_point() else v for k, v in tensors.items()}, str(weights),
              metadata=metadata)
    assert weights.stat().st_size == size


def test_resume_after_the_base_weights_changed_starts_fresh(workspace):
    """Point 1. Killed after checkpoint-4 is complete, the base model's weights scaled by 0.5 (same size):
    before, the rerun resumed from step 4 on other weights (rc 0); now the fingerprint (weights by content,
    through the manifest base-model wrote) differs and training starts fresh."""
    import shutil

    _params_file(workspace)
    shutil.copytree(workspace / "models/base", workspace / "models/base-p1")  # copy2: the manifest stays valid
    settings = {"train.max_steps": 30, "train.save_steps": 2, "train.per_device_batch_size": 2}
    cmd = [sys.executable, "-m", "cc_core.cli", "train", "--method", "cc", "--base", "models/base-p1", "--out",
           "models/cc-p1", "--metrics-dir", "metrics-p1", "--resume"]
    for item in _overrides(workspace, **settings):
        cmd += ["--set", item]
    log_file = (workspace / "p1-killed.log").open("w")
    proc = subprocess.Popen(cmd, cwd=workspace, env={**os.environ, "PYTHONPATH": str(REPO)},
                            stdout=subprocess.DEVNULL, stderr=log_file)
    marker = workspace / "models/.cc-p1-checkpoints/checkpoint-4/cc_checkpoint_complete.json"
    deadline = time.time() + 300
    while not marker.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.002)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    log_file.close()
    assert marker.exists(), f"ended before checkpoint-4: {(workspace / 'p1-killed.log').read_text()[-2000:]}"
    _scale_float_tensors(workspace / "models/base-p1/model.safetensors", 0.5)
    rerun = _cli(workspace, "train", "--method", "cc", "--base", "models/base-p1", "--out", "models/cc-p1",
                 "--metrics-dir", "metrics-p1", "--resume", **settings)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    assert "were made with other params/data: starting fresh" in rerun.stderr
    assert "model.safetensors changed since its hash was recorded" in rerun.stderr
    metrics = json.loads((workspace / "metrics-p1/train_cc.json").read_text())
    assert metrics["resumed_from_step"] is None and metrics["steps"] == 30


def test_a_full_disk_in_the_tokenizers_library_is_one_line_and_leaves_no_partial_checkpoint(workspace, monkeypatch,
                                                                                            capsys):
    """Point 5. The tokenizers library reports a full disk as a plain ``Exception`` ("No space left on device
    (os error 28)"); before, it escaped as a traceback and the incomplete checkpoint-4 (15 MB) stayed."""
    from transformers import AutoTokenizer

    from cc_core.cli import main
    from cc_core.training.checkpoints import COMPLETE

    tokenizer_class = type(AutoTokenizer.from_pretrained(workspace / "models/base"))
    real_save = tokenizer_class.save_pretrained

    def full_disk(self, save_directory, *args, **kwargs):
        if "checkpoint-4" in str(save_directory):
            raise Exception("No space left on device (os error 28)")  # noqa: TRY002 - the library's own type
        return real_save(self, save_directory, *args, **kwargs)

    monkeypatch.setattr(tokenizer_class, "save_pretrained", full_disk)
    _params_file(workspace)
    monkeypatch.chdir(workspace)
    args = ["train", "--method", "sft", "--out", "models/sft-p5", "--metrics-dir", "metrics-p5"]
    for item in _overrides(workspace, **{"train.max_steps": 6, "train.per_device_batch_size": 2}):
        args += ["--set", item]
    assert main(args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    work = Path("models/.sft-p5-checkpoints")
    assert err[-1] == (f"cctune train: error: {work / 'checkpoint-4'}: writing failed (disk full?): No space left on "
                       "device (os error 28); the incomplete folder was removed")
    assert not any("Traceback" in line for line in err)
    assert not (work / "checkpoint-4").exists() and (work / "checkpoint-2" / COMPLETE).is_file()
    assert not Path("models/sft-p5").exists()


def test_training_against_a_read_only_store_warns_once_and_goes_on(workspace, tmp_path, read_only):
    """Point 8. Before: training went on but logged MLflow tracebacks whose stated reason was
    "(raised as a result of Query-invoked autoflush…)"."""
    import mlflow

    _params_file(workspace)
    db = tmp_path / "mlflow.db"
    mlflow.MlflowClient(f"sqlite:///{db}").search_experiments()  # an existing store
    read_only(db)
    out = _cli(workspace, "train", "--method", "sft", "--out", "models/sft-p8", "--metrics-dir", "metrics-p8",
               **{"train.max_steps": 2, "tracking.uri": f"sqlite:///{db}"})
    assert out.returncode == 0, out.stderr[-3000:]
    assert "Traceback" not in out.stderr and "autoflush" not in out.stderr
    warnings = [line for line in out.stderr.splitlines() if "mlflow" in line.lower() and "WARNING" in line]
    assert len(warnings) == 1 and warnings[0].endswith(
        f"MLflow tracking store sqlite:///{db} is unavailable: the store is read-only (no write access to {db}); "
        "tracking was skipped for this run (tracking.on_unavailable=skip)"), out.stderr[-3000:]
    assert json.loads((workspace / "metrics-p8/train_sft.json").read_text())["steps"] == 2


def _mlflow_server(root: Path, port: int) -> subprocess.Popen:
    """``mlflow server`` in a session of its own (it runs its web workers as children: a SIGKILL of the
    group takes them all, as a crashed host would), logging to a file."""
    log = (root / f"mlflow-server-{port}.log").open("a")
    proc = subprocess.Popen([str(Path(sys.executable).parent / "mlflow"), "server", "--host", "127.0.0.1", "--port",
                             str(port), "--backend-store-uri", f"sqlite:///{root}/server.db", "--artifacts-destination",
                             str(root / "server-artifacts"), "--workers", "1"],
                            cwd=root, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
                            env={k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_TRACKING")})
    import urllib.request

    deadline = time.time() + 180
    while time.time() < deadline:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2) as response:
                if response.status == 200:
                    return proc
        except OSError:
            time.sleep(0.5)
        assert proc.poll() is None, (root / f"mlflow-server-{port}.log").read_text()[-3000:]
    raise TimeoutError("mlflow server not healthy")


def test_a_tracking_server_killed_mid_training_is_recorded_and_its_run_closed_later(workspace, tmp_path, monkeypatch):
    """Point 9. The MLflow server is SIGKILLed before step 5's metrics are logged: training finishes and writes
    the model (as before), metrics/train_sft.json says tracking stopped at step 5 (before: no mention, and
    the run stayed RUNNING with 4 of 30 loss points), and the next start closes that run FAILED with the reason."""
    import socket

    import mlflow

    from cc_core.training import trainer as trainer_lib

    monkeypatch.chdir(workspace)
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "1")  # a dead server is given up on in seconds
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR", "1")
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    uri = f"http://127.0.0.1:{port}"
    server = _mlflow_server(tmp_path, port)
    real_on_log = trainer_lib.TrackingCallback.on_log

    def kill_server_at_step_5(self, args, state, control, logs=None, **kwargs):
        if state.global_step == 5 and server.poll() is None:
            os.killpg(server.pid, signal.SIGKILL)  # the server and its workers, mid-training
            server.wait()
        return real_on_log(self, args, state, control, logs=logs, **kwargs)

    monkeypatch.setattr(trainer_lib.TrackingCallback, "on_log", kill_server_at_step_5)
    metrics_dir = tmp_path / "metrics"
    try:
        result = _train_api(workspace, "sft", "models/sft-p9", **{"train.max_steps": 30, "tracking.uri": uri,
                                                                   "train.per_device_batch_size": 2})
        metrics_file = metrics_dir / "train_sft.json"
        (metrics_dir).mkdir()
        (workspace / "metrics/train_sft.json").replace(metrics_file)  # this test's record, kept apart
        record = json.loads(metrics_file.read_text())
        assert result.steps == 30 and (workspace / "models/sft-p9/model.safetensors").is_file()
        assert record["tracking_stopped_at_step"] == 5 and record["run_id"] == result.run_id
        assert record["tracking_stopped_reason"].startswith("MLflow log_metrics failed (")
        monkeypatch.setattr(trainer_lib.TrackingCallback, "on_log", real_on_log)
        server = _mlflow_server(tmp_path, port)  # back up, same store
        client = mlflow.MlflowClient(uri)
        orphan = client.get_run(result.run_id)
        assert orphan.info.status == "RUNNING"
        assert [m.step for m in client.get_metric_history(result.run_id, "loss")] == [1, 2, 3, 4]
        # the next start (in the same project) closes it, with the reason
        from cc_core.train import train

        params = parse_params({}, overrides=_overrides(workspace, **{"train.max_steps": 1, "tracking.uri": uri}))
        train(params, "sft", workspace / "models/base", workspace / "data/prepared", workspace / "models/sft-p9b",
              metrics_dir)
        closed = client.get_run(result.run_id)
        assert closed.info.status == "FAILED"
        assert closed.data.tags["failure_reason"].startswith("tracking stopped at step 5 of 30 (MLflow log_metrics "
                                                             "failed")
    finally:
        if server.poll() is None:
            os.killpg(server.pid, signal.SIGTERM)
            server.wait(timeout=60)
