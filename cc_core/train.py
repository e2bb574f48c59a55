"""The ``train`` stage: CC-Tuning or the vanilla SFT baseline, on the HF Trainer (+ DeepSpeed ZeRO).

    cctune train --method cc                                  # models/cc/, metrics/train_cc.json
    cctune train --method sft                                 # models/sft/ (the paper's baseline)
    cctune train --method cc --resume                         # continue from the last checkpoint
    cctune train --method cc --set train.deepspeed=zero3      # ZeRO-3 (one process; gloo on CPU)
    cctune train --method cc --set train.peft=lora            # LoRA adapters + the Decision Maker
    torchrun --nproc_per_node 2 -m cc_core.cli train --method cc --set train.deepspeed=zero3

Both methods train on the same non-English records with the same hyper-parameters; CC adds
the English prompt pass and the Decision Maker (docs/method.md, Training). The recipe reads top to
bottom: ``_setup`` (check the options, read and encode the data, load the model, find the resume
point), then the Trainer's loop, then ``_save`` (the final model renamed into ``models/<method>/``,
metrics, tracking). Its pieces live in ``cc_core/training/``: data and collators, the Trainer
subclass, checkpoints, kernels, distributed set-up, the non-finite guard.

With ``train.peft: lora`` the base stays frozen and LoRA adapters train beside the Decision Maker
(cc_core.training.adapters); ``models/<method>/`` is then an adapter checkpoint naming its base model
by content hash (cc_core.modeling.adapters).

Intermediate Trainer checkpoints go to ``models/.<method>-checkpoints/`` (removed once the final
model is in place, so a later rerun trains afresh); the final model is written to a temp directory
and renamed to ``models/<method>/`` only when training finished. A resumed run continues the
killed run's MLflow run and its token and layer-choice counters.
"""

from __future__ import annotations

import contextlib
import logging
import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from transformers import set_seed

from cc_core.config import Params
from cc_core.data.records import read_records
from cc_core.io import InputError, dir_sha256, project_path, replace_path, write_json
from cc_core.modeling.adapters import BaseRef
from cc_core.modeling.architectures import ArchPaths
from cc_core.modeling.cc_model import CCTuningModel
from cc_core.modeling.loading import check_tokenizer_matches, load_model_dir
from cc_core.prompts import anchor_rule, pad_token_id
from cc_core.tracking import (NullRun, Tracker, close_orphaned_training_runs, git_commit, read_run_id,
                              tracking_uri, write_run_file)
from cc_core.training.adapters import base_dtype, check_adapter_options, quantize, with_adapters
from cc_core.training.checkpoints import (BASE_WEIGHTS, FINGERPRINT, CheckpointWriteError, base_weights,
                                          disk_errors, make_fingerprint, resume_point, step_of)
from cc_core.training.data import EncodeStats, FeatureDataset, encode_records, make_collator
from cc_core.training.distributed import barrier, init_distributed_for_deepspeed, rank, resolve_deepspeed, \
    totals_over_ranks
from cc_core.training.divergence import TrainingDivergedError
from cc_core.training.kernels import apply_liger, check_kernel_options, compile_decoder

log = logging.getLogger(__name__)
METHODS = ("cc", "sft")
__all__ = ["METHODS", "CheckpointWriteError", "TrainResult", "TrainingDivergedError", "train"]


@dataclass
class TrainResult:
    method: str
    out_dir: str
    steps: int
    final_loss: float | None
    train_runtime_s: float
    tokens_per_s: float
    run_id: str | None
    encode: dict[str, int] = field(default_factory=dict)
    layer_choice_counts: dict[str, int] = field(default_factory=dict)
    checkpoint_sha256: str = ""
    tokens_this_run: int = 0  # trained by this process (after a resume: since the resume); tokens_per_s's numerator
    tokens_total: int = 0  # trained over the whole training, resumed parts included
    resumed_from_step: int | None = None
    total_flos: float = 0.0  # the Trainer's count (CCTrainer.floating_point_ops), resumed parts included
    tracking_stopped_at_step: int | None = None  # the store went away: the run holds the steps before it only
    tracking_stopped_reason: str | None = None


@dataclass
class _Setup:
    """Everything the loop needs, checked and loaded."""

    method: str
    out: Path
    work_dir: Path
    model: Any  # the causal LM, or the CCTuningModel around it
    tokenizer: Any
    features: list[dict[str, Any]]
    stats: EncodeStats
    args: Any  # TrainingArguments
    fingerprint: dict[str, Any]
    resume_from: Path | None
    tracker: Tracker
    adapter_base: BaseRef | None = None  # train.peft=lora: the base model the adapters belong to


def train(params: Params, method: str, base_dir: str | Path = "models/base", data_dir: str | Path = "data/prepared",
          out_dir: str | Path | None = None, metrics_dir: str | Path = "metrics", resume: bool = False,
          checkpoint_dir: str | Path | None = None) -> TrainResult:
    """Train ``method`` (cc | sft) on ``data_dir/train.jsonl`` from ``base_dir``: set up, run the
    Trainer's loop, save ``models/<method>/`` and its metrics, all inside the method's MLflow run.
    Intermediate checkpoints (for ``resume``) go to ``checkpoint_dir`` (default: ``.<name>-checkpoints``
    beside the output)."""
    out = Path(out_dir or f"models/{method}")
    setup = _setup(params, method, Path(base_dir), Path(data_dir) / "train.jsonl", out, resume,
                   Path(checkpoint_dir) if checkpoint_dir else out.parent / f".{out.name}-checkpoints")
    if rank() == 0:  # a run whose store went away in an earlier training is closed FAILED, with the reason
        close_orphaned_training_runs(setup.tracker, Path(metrics_dir))
    with _tracked_run(params, setup) as run:
        trainer, output = _run_trainer(params, setup, run)
        result = _save(params, setup, trainer, output, run, Path(metrics_dir))
    barrier()
    return result


@contextlib.contextmanager
def _tracked_run(params: Params, setup: _Setup):
    """The training's MLflow run on rank 0 (a resumed training continues the killed run, so MLflow
    shows one run with every step); a no-op run on the other ranks."""
    if rank() != 0:
        yield NullRun()
        return
    previous_run = read_run_id(setup.work_dir) if setup.resume_from else None
    tags = {"method": setup.method, "git_commit": git_commit(), "data_sha256": setup.fingerprint["data_sha256"],
            "base_model": params.model.base, "stage": "train"}
    with setup.tracker.run(f"train-{setup.method}", params=params.flat(), tags=tags, run_id=previous_run) as run:
        if run.run_id:
            write_run_file(setup.work_dir, run, tracking_uri(params.tracking))
        run.log_metrics({f"data_{k}": v for k, v in asdict(setup.stats).items()}, step=0)
        yield run


def _setup(params: Params, method: str, base_dir: Path, data_file: Path, out: Path, resume: bool,
           work_dir: Path) -> _Setup:
    """Check the options, read the data, find the resume point, load and prepare the model, encode the
    data; then (only then) discard a fresh start's old checkpoints."""
    if method not in METHODS:
        raise ValueError(f"--method must be one of {', '.join(METHODS)}, not {method!r}")
    tp = params.train
    is_main = rank() == 0
    check_kernel_options(tp, base_dir)  # before anything loads: a clear error naming the key
    check_adapter_options(tp)
    ds_config = resolve_deepspeed(tp.deepspeed)
    if ds_config is not None and tp.nonfinite_patience:
        # DeepSpeed applies the update inside backward(): a bad step cannot be skipped after the fact.
        raise InputError(f"train.nonfinite_patience={tp.nonfinite_patience} needs train.deepspeed=null: under "
                         "DeepSpeed a non-finite step cannot be skipped (set train.nonfinite_patience=0)")
    if ds_config is not None:
        init_distributed_for_deepspeed()
    records = read_records(data_file)
    if not records:
        raise InputError(f"{data_file}: empty training set")

    weights = base_weights(base_dir, work_dir)  # hashed only where no record vouches for a file (size, mtime)
    fingerprint = make_fingerprint(params, method, data_file, base_dir, weights)
    resume_from = resume_point(work_dir, fingerprint) if resume else None
    tracker = Tracker(params.tracking)
    if is_main:
        tracker.check()  # fail fast (tracking.on_unavailable=fail) before loading anything

    # why: transformers' Trainer takes seconds to import; cctune imports this module at start-up
    from cc_core.training.trainer import training_arguments

    args = training_arguments(tp, work_dir, ds_config)  # before loading: ZeRO-3 loads partitioned
    set_seed(tp.seed)
    model, tokenizer = load_model_dir(base_dir, dtype=base_dtype(tp), quantize=quantize(tp))
    model.config.use_cache = False  # training never reuses a KV cache (and a cache turns off packed masks)
    if tp.liger:
        apply_liger(model)
    check_tokenizer_matches(tokenizer, model, base_dir)
    features, stats = _encode(params, method, records, tokenizer, data_file)
    arch_map = ArchPaths.from_mapping(params.model.arch_map.model_dump()) if params.model.arch_map else None
    adapter_base = None
    if tp.peft == "lora":
        adapter_base = BaseRef.of(base_dir)  # its content hash: loading the adapter refuses another base
        model = with_adapters(model, tp)
    if tp.compile:
        compile_decoder(model, arch_map)
    if method == "cc":
        model = CCTuningModel(model, inject_layer=tp.inject_layer, decision_mode=tp.decision_mode,
                              gumbel_tau=tp.gumbel_tau, detach_english=tp.detach_english,
                              arch_map=arch_map, decision_maker_init=tp.decision_maker_init)

    # Only now, with the input checked, may a fresh start discard the old checkpoints (and close the
    # killed run that made them, which MLflow would otherwise show RUNNING forever).
    if is_main and resume_from is None and work_dir.exists():
        tracker.mark_killed(read_run_id(work_dir))
        shutil.rmtree(work_dir)
    barrier()
    if is_main:
        work_dir.mkdir(parents=True, exist_ok=True)
        write_json(work_dir / FINGERPRINT, fingerprint)
        write_json(work_dir / BASE_WEIGHTS, weights)  # the next start trusts these while size and mtime hold
    return _Setup(method, out, work_dir, model, tokenizer, features, stats, args, fingerprint, resume_from, tracker,
                  adapter_base)


def _encode(params: Params, method: str, records, tokenizer, data_file: Path):
    """Training features of ``records``; examples that cannot fit are dropped with a warning (or refused)."""
    tp = params.train
    budget = tp.pack_max_tokens  # None: rows of at most twice each batch's longest example
    rule = anchor_rule(tokenizer, params.model.anchor) if method == "cc" else None  # SFT has no anchor
    features, stats = encode_records(records, tokenizer, tp.cutoff_len, method, tp.on_truncated, str(data_file),
                                     budget if tp.packing else None, tp.truncation, rule)
    if stats.dropped_over_budget:
        log.warning("dropped %d of %d examples longer than train.pack_max_tokens=%s", stats.dropped_over_budget,
                    stats.records, budget)
    if stats.dropped_truncated:
        log.warning("dropped %d of %d examples whose response did not fit train.cutoff_len=%d",
                    stats.dropped_truncated, stats.records, tp.cutoff_len)
    if stats.anchor_lost or stats.english_anchor_lost:
        log.warning("%d examples (%d English prompts) lost their anchor to train.truncation=%s: the authors' -1, "
                    "their batch's last column", stats.anchor_lost, stats.english_anchor_lost, tp.truncation)
    if not features:
        # name the key(s) that dropped them: a row budget below every example is not a cutoff problem
        causes = [f"train.pack_max_tokens={budget} dropped {stats.dropped_over_budget} (longer than a packed row)"
                  ] if stats.dropped_over_budget else []
        if stats.dropped_truncated:
            causes.append(f"train.cutoff_len={tp.cutoff_len} dropped {stats.dropped_truncated} (no response token left)")
        keys = " and ".join(c.split("=", 1)[0] for c in causes)
        raise InputError(f"{data_file}: no example left to train on: {'; '.join(causes)}; raise {keys}")
    return features, stats


def _run_trainer(params: Params, setup: _Setup, run):
    """The Trainer's loop, from the resume point if there is one; a failed checkpoint write names its folder."""
    # why: transformers' Trainer takes seconds to import; cctune imports this module at start-up
    from cc_core.training import trainer as trainer_lib

    tp = params.train
    callback = trainer_lib.TrackingCallback(run)
    trainer = trainer_lib.CCTrainer(
        model=setup.model, args=setup.args, train_dataset=FeatureDataset(setup.features),
        data_collator=make_collator(tp, pad_token_id(setup.tokenizer)), processing_class=setup.tokenizer,
        callbacks=[callback], nonfinite_patience=tp.nonfinite_patience, save_total_limit=tp.save_total_limit,
        adapter_base=setup.adapter_base, decision_maker_lr=tp.decision_maker_lr,
        loss_average=tp.loss_average,
    )
    callback.attach(trainer)
    if setup.resume_from:
        trainer.restore_counters(setup.resume_from)
    # trainer.saving_to: the checkpoint being written, if any; a full disk removes that incomplete folder
    with disk_errors(lambda: trainer.saving_to or setup.work_dir, partial=lambda: trainer.saving_to):
        output = trainer.train(resume_from_checkpoint=str(setup.resume_from) if setup.resume_from else None)
    return trainer, output


def _save(params: Params, setup: _Setup, trainer, output, run, metrics_dir: Path) -> TrainResult:
    """Write the final model into a temp sibling, rename it over ``models/<method>/``, drop the
    checkpoints, write the metrics and log them (rank 0; every rank joins ZeRO-3's gathering)."""
    method, model, out, is_main = setup.method, setup.model, setup.out, rank() == 0
    (model.model if method == "cc" else model).config.use_cache = True  # the saved model generates with a cache
    partial = out.parent / f".{out.name}.partial"
    if is_main and partial.exists():
        shutil.rmtree(partial)
    barrier()
    with disk_errors(lambda: partial, partial=lambda: partial):
        trainer.save_model(str(partial))  # every rank: ZeRO-3 gathers the full weights collectively
    barrier()
    history = [h for h in trainer.state.log_history if "loss" in h]
    runtime = float(output.metrics.get("train_runtime", 0.0))  # this process's part of the run
    tokens, tokens_total, choices = totals_over_ranks(trainer.tokens_this_run(), trainer.tokens_seen,
                                                      trainer.choice_counts, model.num_layers if method == "cc" else 0,
                                                      setup.args.device)
    result = TrainResult(
        method=method, out_dir=str(out), steps=trainer.state.global_step,
        final_loss=history[-1]["loss"] if history else None, train_runtime_s=runtime,
        tokens_per_s=tokens / runtime if runtime else 0.0, tokens_this_run=tokens, tokens_total=tokens_total,
        resumed_from_step=step_of(setup.resume_from), total_flos=float(trainer.state.total_flos),
        run_id=run.run_id, encode=asdict(setup.stats),
        layer_choice_counts={f"layer_{k:02d}": v for k, v in sorted(choices.items())},
    )
    if is_main:
        setup.tokenizer.save_pretrained(partial)
        # No MLflow run pointer inside the model: the model is exactly its content (DVC sees the same
        # output when the same weights are trained again); later stages find the run by checkpoint_sha256.
        result.checkpoint_sha256 = dir_sha256(partial, "*.safetensors")
        replace_path(partial, out)
        shutil.rmtree(setup.work_dir, ignore_errors=True)  # finished: a rerun must not resume from these
        _log_result(params, result, run, out)
        # after the last MLflow call: the metrics say whether the run holds every step
        result.tracking_stopped_at_step, result.tracking_stopped_reason = run.stopped_at_step, run.stopped_reason
        if run.stopped_at_step is not None:
            log.warning("tracking stopped at step %d of %d (%s): MLflow run %s holds the steps before it only; it is "
                        "closed as FAILED at the next start or register", run.stopped_at_step, result.steps,
                        run.stopped_reason, run.run_id)
        write_train_metrics(result, history, metrics_dir, method)
    return result


def _log_result(params: Params, result: TrainResult, run, out: Path) -> None:
    # tokens_per_s's last point is the whole run's rate, as in metrics/train_<method>.json
    run.log_metrics({"final_loss": result.final_loss, "train_runtime_s": result.train_runtime_s,
                     "train_tokens_per_s": result.tokens_per_s, "tokens_per_s": result.tokens_per_s,
                     "total_flos": result.total_flos}, step=result.steps)
    for key, count in result.layer_choice_counts.items():
        run.log_metrics({f"dm_choice_{key}": count}, step=result.steps)
    if result.layer_choice_counts:
        run.log_dict(result.layer_choice_counts, "decision_maker/layer_choice_counts.json")
    run.set_tags({"checkpoint_path": project_path(out), "checkpoint_sha256": result.checkpoint_sha256})
    if params.tracking.log_checkpoint:
        run.log_artifacts(out, "checkpoint")


def write_train_metrics(result: TrainResult, history: list[dict], metrics_dir: Path, method: str) -> None:
    """``metrics/train_<method>.json`` (a DVC metric) and ``metrics/train_<method>_loss.json`` (a DVC plot)."""
    metrics = {"method": method, "steps": result.steps, "final_loss": result.final_loss,
               "first_loss": history[0]["loss"] if history else None,
               "train_runtime_s": round(result.train_runtime_s, 3), "tokens_per_s": round(result.tokens_per_s, 2),
               "tokens_this_run": result.tokens_this_run, "tokens_total": result.tokens_total,
               "total_flos": result.total_flos,
               "resumed_from_step": result.resumed_from_step, "checkpoint_sha256": result.checkpoint_sha256,
               # MLflow's record of this training: which run, and whether it is complete (a store that went
               # away mid-run leaves it RUNNING with the steps before tracking_stopped_at_step only)
               "run_id": result.run_id, "tracking_stopped_at_step": result.tracking_stopped_at_step,
               "tracking_stopped_reason": result.tracking_stopped_reason,
               "examples": result.encode.get("kept", 0), "dropped_truncated": result.encode.get("dropped_truncated", 0),
               "layer_choice_counts": result.layer_choice_counts}
    write_json(metrics_dir / f"train_{method}.json", metrics)
    write_json(metrics_dir / f"train_{method}_loss.json",
               [{"step": h["step"], "loss": h["loss"]} for h in history])  # a DVC plot
