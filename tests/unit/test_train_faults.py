"""Faults around training that must never pass silently: half-written checkpoints, full disks,
leftover temp outputs, non-finite weights (fast; real kills and divergence are in tests/integration)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from cc_core.io import atomic_dir, atomic_file, clean_stale_temps, write_json
from cc_core.training.checkpoints import (
    COMPLETE,
    FINGERPRINT,
    CheckpointWriteError,
    disk_errors,
    resume_point,
    rotate_checkpoints,
)


def _checkpoint(work: Path, step: int, complete: bool) -> Path:
    folder = work / f"checkpoint-{step}"
    folder.mkdir(parents=True)
    (folder / "model.safetensors").write_bytes(b"x")
    if complete:
        (folder / "trainer_state.json").write_text("{}")
        write_json(folder / COMPLETE, {"step": step})
    return folder


def test_resume_skips_and_removes_a_half_written_checkpoint(tmp_path, caplog):
    work = tmp_path / ".cc-checkpoints"
    write_json(work / FINGERPRINT, {"a": 1})
    _checkpoint(work, 2, complete=True)
    _checkpoint(work, 4, complete=True)
    half = _checkpoint(work, 6, complete=False)  # a kill or a full disk during the save of step 6
    with caplog.at_level("INFO"):
        chosen = resume_point(work, {"a": 1})
    assert chosen == work / "checkpoint-4"
    assert not half.exists()
    assert f"skipping incomplete checkpoint {half}" in caplog.text
    # today's failure mode: the newest folder without trainer_state.json was picked and every rerun failed


def test_resume_with_only_incomplete_checkpoints_starts_fresh(tmp_path):
    work = tmp_path / "w"
    write_json(work / FINGERPRINT, {"a": 1})
    _checkpoint(work, 2, complete=False)
    assert resume_point(work, {"a": 1}) is None
    assert resume_point(tmp_path / "nothing", {"a": 1}) is None
    write_json(work / FINGERPRINT, {"a": 2})
    _checkpoint(work, 4, complete=True)
    assert resume_point(work, {"a": 1}) is None  # made with other params


def test_rotation_counts_only_complete_checkpoints(tmp_path):
    work = tmp_path / "w"
    _checkpoint(work, 2, complete=True)
    _checkpoint(work, 4, complete=False)  # older than the newest complete one: a leftover
    _checkpoint(work, 6, complete=True)
    _checkpoint(work, 8, complete=True)
    _checkpoint(work, 10, complete=False)  # being written right now (or cut short): kept
    rotate_checkpoints(work, keep=2)
    assert sorted(p.name for p in work.iterdir()) == ["checkpoint-10", "checkpoint-6", "checkpoint-8"]
    rotate_checkpoints(work, keep=1)
    assert sorted(p.name for p in work.iterdir()) == ["checkpoint-10", "checkpoint-8"]
    # save_total_limit=1 and a cut-short save: the one complete checkpoint survives
    only = tmp_path / "only"
    _checkpoint(only, 2, complete=True)
    _checkpoint(only, 4, complete=False)
    rotate_checkpoints(only, keep=1)
    assert (only / "checkpoint-2").is_dir()


@pytest.mark.parametrize("error", [
    RuntimeError("[enforce fail at inline_container.cc:672] . PytorchStreamWriter failed writing file data/3: "
                 "file write failed"),
    OSError(28, "No space left on device"),
])
def test_full_disk_is_one_line_naming_the_folder(tmp_path, error):
    folder = tmp_path / "checkpoint-2"
    with pytest.raises(CheckpointWriteError) as caught:
        with disk_errors(lambda: folder):
            raise error
    message = str(caught.value)
    assert message.startswith(f"{folder}: writing failed (disk full?)") and "\n" not in message
    with pytest.raises(ValueError, match="unrelated"):  # other errors pass through untouched
        with disk_errors(lambda: folder):
            raise ValueError("unrelated")


def test_the_tokenizers_librarys_full_disk_is_one_line_and_the_partial_checkpoint_goes(tmp_path):
    """Issue 21, point 5: tokenizers raises a plain Exception (no errno); before, it escaped as a traceback
    and the incomplete checkpoint folder stayed."""
    folder = _checkpoint(tmp_path / "w", 4, complete=False)
    done = _checkpoint(tmp_path / "w", 2, complete=True)
    with pytest.raises(CheckpointWriteError) as caught:
        with disk_errors(lambda: folder, partial=lambda: folder):
            raise Exception("No space left on device (os error 28)")  # noqa: TRY002 - what tokenizers raises
    assert str(caught.value) == (f"{folder}: writing failed (disk full?): No space left on device (os error 28); "
                                 "the incomplete folder was removed")
    assert not folder.exists() and done.is_dir()
    with pytest.raises(CheckpointWriteError) as caught:  # a complete checkpoint is never removed
        with disk_errors(lambda: done, partial=lambda: done):
            raise Exception("No space left on device (os error 28)")  # noqa: TRY002
    assert "removed" not in str(caught.value) and (done / COMPLETE).is_file()


def test_leftovers_of_a_killed_writer_are_cleaned_at_the_next_start(tmp_path):
    target = tmp_path / "activations"
    # a real kill: a child process starts an atomic output and is SIGKILLed inside it
    code = ("import os, signal, sys; from cc_core.io import atomic_dir, atomic_file\n"
            f"with atomic_file({str(tmp_path / 'transform.json')!r}) as f:\n"
            f"    with atomic_dir({str(target)!r}) as tmp:\n"
            "        (tmp / 'shard-00000.safetensors').write_bytes(b'half')\n"
            "        os.kill(os.getpid(), signal.SIGKILL)\n")
    proc = subprocess.run([sys.executable, "-c", code], env={**os.environ, "PYTHONPATH": str(Path.cwd())})
    assert proc.returncode == -9
    leftovers = sorted(p.name for p in tmp_path.iterdir())
    assert any(n.startswith(".activations.tmp-") for n in leftovers)
    assert any(n.startswith(".transform.json.tmp-") for n in leftovers)
    # the next run of each stage removes its own leftovers before writing
    with atomic_dir(target) as tmp:
        (tmp / "index.json").write_text("{}")
    with atomic_file(tmp_path / "transform.json") as handle:
        handle.write("{}")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["activations", "transform.json"]


def test_a_live_writers_temp_is_not_touched(tmp_path):
    target = tmp_path / "eval"
    live = tmp_path / f".eval.tmp-{os.getpid()}-abc"  # this process: alive
    live.mkdir()
    foreign = tmp_path / ".eval.tmp-unknownname"  # no pid: made by an older version, removed
    foreign.mkdir()
    removed = clean_stale_temps(target)
    assert live.is_dir() and not foreign.exists() and removed == [foreign]


def test_no_stage_loads_non_finite_weights(tmp_path, tiny_factory):
    from cc_core.modeling import CCTuningModel, load_cc_checkpoint, save_cc_checkpoint
    from cc_core.modeling.loading import NonFiniteWeightsError, load_model_dir

    model, tok = tiny_factory("llama")
    with torch.no_grad():
        model.model.layers[1].mlp.up_proj.weight[0, 0] = float("nan")
    model.save_pretrained(tmp_path / "sft")
    tok.save_pretrained(tmp_path / "sft")
    with pytest.raises(NonFiniteWeightsError, match=r"sft: weight 'model.layers.1.mlp.up_proj.weight' contains NaN"):
        load_model_dir(tmp_path / "sft")
    fresh, _ = tiny_factory("llama")
    cc = CCTuningModel(fresh)
    with torch.no_grad():
        cc.decision_maker.proj.weight[0, 0] = float("inf")
    save_cc_checkpoint(cc, tmp_path / "cc", tok)
    with pytest.raises(NonFiniteWeightsError, match="decision_maker.safetensors: weight 'proj.weight'"):
        load_cc_checkpoint(tmp_path / "cc")
    # and the CLI says it in one line (eval of a diverged checkpoint scored 0.0 without complaint)
    (tmp_path / "params.yaml").write_text("{}\n")  # every default
    pairs = tmp_path / "pairs.jsonl"
    pairs.write_text(json.dumps({"id": "p1", "lang": "de", "instruction": "Hallo?", "output": "Hallo.",
                                 "instruction_en": "Hello?"}) + "\n")
    proc = subprocess.run([sys.executable, "-m", "cc_core.cli", "collect", "--model", str(tmp_path / "sft"),
                           "--pairs", str(pairs), "--out", str(tmp_path / "activations")], capture_output=True,
                          text=True, cwd=tmp_path,
                          env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])})
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert proc.stderr.strip().splitlines()[-1].startswith("cctune collect: error: ")
    assert "contains NaN or inf" in proc.stderr and "Traceback" not in proc.stderr
    assert not (tmp_path / "activations").exists()


def test_train_metrics_name_their_checkpoint(tmp_path):
    from cc_core.train import TrainResult, write_train_metrics

    result = TrainResult("sft", "models/sft", 30, 1.5, 20.0, 100.0, None, tokens_this_run=2000,
                         tokens_total=3000, resumed_from_step=10, checkpoint_sha256="ab" * 32)
    write_train_metrics(result, [{"step": 30, "loss": 1.5}], tmp_path, "sft")
    metrics = json.loads((tmp_path / "train_sft.json").read_text())
    assert metrics["checkpoint_sha256"] == "ab" * 32
    # the rate's numerator and denominator are the same run's: 2000 tokens in 20 s, not 3000
    assert metrics["tokens_per_s"] == 100.0 and metrics["tokens_this_run"] == 2000
    assert metrics["tokens_total"] == 3000 and metrics["resumed_from_step"] == 10


def test_kernel_options_that_cannot_work_fail_before_the_model_loads(tmp_path, monkeypatch):
    from cc_core.config import TrainParams
    from cc_core.io import InputError
    from cc_core.training.kernels import check_kernel_options

    (tmp_path / "config.json").write_text(json.dumps({"model_type": "llama"}))
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(InputError, match=r"^train.liger=true needs a CUDA GPU"):
        check_kernel_options(TrainParams(liger=True), tmp_path)
    with pytest.raises(InputError, match=r"^train.compile=true with ZeRO-3"):
        check_kernel_options(TrainParams(compile=True, deepspeed="zero3"), tmp_path)
    check_kernel_options(TrainParams(compile=True), tmp_path)  # fine on a CPU, without ZeRO-3
    # on a GPU machine: an architecture Liger has no kernels for is named (or the missing extra)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "starcoder2"}))
    with pytest.raises(InputError, match=r"train.liger=true(: Liger Kernel has no kernels for model_type 'starcoder2'"
                                         r"| needs the liger-kernel package: pip install -e '\.\[gpu\]')"):
        check_kernel_options(TrainParams(liger=True), tmp_path)
