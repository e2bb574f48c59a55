"""The Hugging Face Trainer, specialised for CC-Tuning: ``CCTrainer``, its arguments and its callback.

    args = training_arguments(params.train, work_dir, deepspeed_config)
    trainer = CCTrainer(model=model, args=args, train_dataset=FeatureDataset(features), ...,
                        callbacks=[TrackingCallback(run)], nonfinite_patience=0, save_total_limit=2)
    trainer.train(resume_from_checkpoint=...)

The Trainer brings DeepSpeed, accumulation, bf16, the schedule and checkpoints. ``CCTrainer``
adds: the loss of the CC two-pass step (or plain SFT), token and layer-choice counters, the
non-finite guard (cc_core.training.divergence), checkpoints that count only once complete
(cc_core.training.checkpoints), adapter checkpoints for a model with LoRA adapters (naming
``adapter_base``), and the Decision Maker's own learning rate (``decision_maker_lr``). It overrides four Trainer methods that are private in
transformers 5.24 (``_clip_grad_norm``, ``_save_checkpoint``, ``_save``, ``_load_from_checkpoint``):
the seams where the norm, the checkpoint folder and the CC checkpoint format are handled.
"""

from __future__ import annotations

import logging
import math
import time
from collections import Counter
from pathlib import Path
from typing import Any

import torch
from transformers import Trainer, TrainerCallback, TrainingArguments
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR

from cc_core.config import TrainParams
from cc_core.modeling.adapters import BaseRef, load_adapter_weights, save_adapter
from cc_core.modeling.architectures import is_wrapped
from cc_core.modeling.cc_model import CCTuningModel
from cc_core.modeling.checkpoint import save_cc_checkpoint
from cc_core.modeling.loading import load_cc_weights
from cc_core.training.checkpoints import (mark_complete, mark_incomplete, read_counters, rotate_checkpoints,
                                          write_counters)
from cc_core.training.distributed import barrier, rank
from cc_core.training.divergence import NonFiniteGuard

log = logging.getLogger(__name__)
LOSS_AVERAGES = ("global_tokens", "micro_batch")


def training_arguments(tp: TrainParams, work_dir: Path, deepspeed_config: dict | None) -> TrainingArguments:
    return TrainingArguments(
        output_dir=str(work_dir),
        per_device_train_batch_size=tp.per_device_batch_size,
        gradient_accumulation_steps=tp.gradient_accumulation_steps,
        learning_rate=tp.learning_rate,
        lr_scheduler_type=tp.lr_scheduler,
        warmup_steps=tp.warmup_ratio,  # a float < 1 is a ratio of the total steps in transformers 5 (params: < 1)
        num_train_epochs=tp.epochs,
        max_steps=tp.max_steps,
        weight_decay=tp.weight_decay,
        max_grad_norm=tp.max_grad_norm,
        bf16=tp.bf16,
        activation_checkpointing=tp.gradient_checkpointing,
        activation_checkpointing_kwargs={"use_reentrant": False} if tp.gradient_checkpointing else None,
        logging_steps=tp.logging_steps,
        logging_nan_inf_filter=False,  # log a NaN loss as NaN (the default logs an average of earlier steps)
        save_strategy="steps",
        save_steps=tp.save_steps,
        save_total_limit=None,  # CCTrainer rotates, counting only complete checkpoints (tp.save_total_limit)
        seed=tp.seed,
        data_seed=tp.seed,
        deepspeed=deepspeed_config,
        use_cpu=not torch.cuda.is_available(),
        report_to="none",
        remove_unused_columns=False,
        dataloader_num_workers=0,
        disable_tqdm=True,
    )


class CCTrainer(Trainer):
    """Trainer whose loss is the CC two-pass step (or plain SFT); counts tokens and layer choices."""

    def __init__(self, *args, nonfinite_patience: int = 0, save_total_limit: int | None = None,
                 adapter_base: BaseRef | None = None, decision_maker_lr: float | None = None,
                 loss_average: str = "global_tokens", **kwargs):
        """``loss_average``: ``global_tokens`` (the Trainer's token count over all micro-batches of the step
        on every device) | ``micro_batch``: each micro-batch's own token mean, divided by the accumulation
        steps and averaged over devices by their gradients (the authors' Trainer passed no token count)."""
        if loss_average not in LOSS_AVERAGES:
            raise ValueError(f"train.loss_average={loss_average!r}; valid: {', '.join(LOSS_AVERAGES)}")
        super().__init__(*args, **kwargs)
        self.adapter_base = adapter_base  # the base model LoRA adapters are trained on (None: full weights)
        self.decision_maker_lr = decision_maker_lr
        self.loss_average = loss_average
        self.tokens_seen = 0  # non-English (trained) tokens
        self.english_tokens_seen = 0
        self.tokens_restored = 0  # part of tokens_seen that a resumed run inherited (not trained now)
        self.choice_counts: Counter[int] = Counter()
        self.guard = NonFiniteGuard(nonfinite_patience)
        self.keep_checkpoints = save_total_limit  # rotation is ours: only complete checkpoints count
        self.saving_to: Path | None = None

    # --- the step -------------------------------------------------------------------------------
    def training_step(self, model, inputs, num_items_in_batch=None):
        if self.loss_average == "micro_batch":
            num_items_in_batch = None  # the model's own mean; the Trainer then divides by the accumulation steps
        loss = super().training_step(model, inputs, num_items_in_batch)
        self.guard.record_loss(loss)
        return loss

    def _clip_grad_norm(self, model):
        norm = super()._clip_grad_norm(model)  # pre-clip norm (after the step under DeepSpeed)
        self.guard.record_grad_norm(norm)
        return norm

    def create_optimizer(self, model=None):
        """The Trainer's optimizer; with ``decision_maker_lr``, the Decision Maker's weights in a group of
        their own at that learning rate (the schedule scales every group alike)."""
        optimizer = super().create_optimizer(model)
        target = self.model if model is None else model
        if self.decision_maker_lr is None or not isinstance(target, CCTuningModel):
            return optimizer
        mine = {id(p) for p in target.decision_maker.parameters()}
        for group in optimizer.param_groups:
            group["params"] = [p for p in group["params"] if id(p) not in mine]
        optimizer.add_param_group({"params": list(target.decision_maker.parameters()), "weight_decay": 0.0,
                                   "lr": self.decision_maker_lr})
        return optimizer

    def check_finite(self, model) -> None:
        """Before each optimizer step (TrackingCallback): skip a non-finite update or stop training."""
        self.guard.check(self.state.global_step + 1, model)

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        # bookkeeping keys from the collators (plain ints: counting costs no device sync)
        self.tokens_seen += int(inputs.pop("token_count", 0))
        self.english_tokens_seen += int(inputs.pop("en_token_count", 0))
        loss, outputs = super().compute_loss(model, inputs, return_outputs=True,
                                             num_items_in_batch=num_items_in_batch)
        choice = getattr(outputs, "choice", None)
        if choice is not None:
            self.choice_counts.update(choice.argmax(-1).tolist())
        return (loss, outputs) if return_outputs else loss

    # --- counters ---------------------------------------------------------------------------------
    def counters(self) -> dict[str, Any]:
        return {"tokens_seen": self.tokens_seen, "english_tokens_seen": self.english_tokens_seen,
                "choice_counts": {str(k): v for k, v in sorted(self.choice_counts.items())}}

    def tokens_this_run(self) -> int:
        """Tokens trained by this process since it started (a resumed run's rate must not count the
        restored tokens against the resumed part's runtime)."""
        return self.tokens_seen - self.tokens_restored

    def restore_counters(self, checkpoint: Path) -> None:
        saved = read_counters(checkpoint, rank())
        if saved is None:
            log.warning("%s: no counters saved with this checkpoint; tokens/s and the layer-choice "
                        "histogram count only the steps after the resume", checkpoint)
            return
        self.tokens_seen, self.english_tokens_seen = saved["tokens_seen"], saved["english_tokens_seen"]
        self.tokens_restored = self.tokens_seen
        self.choice_counts = Counter({int(k): v for k, v in saved["choice_counts"].items()})

    # --- checkpoints --------------------------------------------------------------------------------
    def floating_point_ops(self, inputs) -> int:
        """A micro-batch's training FLOPs for the Trainer's ``total_flos``: 6 × trained non-embedding
        parameters per trained token (padding not counted), 4 × frozen ones (LoRA's base: forward and
        the input gradients, no weight gradients), plus CC's English prompt pass, 2 × every parameter
        per token (a forward; as the trained pass when gradients flow through it: train.detach_english
        false). The Trainer's own estimate finds no parameters on the CC wrapper (0) and counts padding."""
        model = self.accelerator.unwrap_model(self.model, keep_torch_compile=False)
        cc = isinstance(model, CCTuningModel)
        if getattr(self, "flop_params", None) is None:
            hf = model.model if cc else model
            embedding = {id(p) for m in hf.modules() if isinstance(m, torch.nn.Embedding) for p in m.parameters()}
            counted = [p for p in hf.parameters() if id(p) not in embedding]
            # ZeRO-3 partitions parameters (numel 0 here): ds_numel is the full count
            self.flop_params = {grad: sum(getattr(p, "ds_numel", p.numel()) for p in counted if p.requires_grad == grad)
                                for grad in (True, False)}
        trained, frozen = self.flop_params[True], self.flop_params[False]
        per_token = 6 * trained + 4 * frozen
        english = per_token if cc and not model.detach_english else 2 * (trained + frozen)
        return (per_token * int(inputs.get("token_count", 0))
                + (english * int(inputs.get("en_token_count", 0)) if cc else 0))

    def _save_checkpoint(self, model, trial):
        # Counters first, so a checkpoint that has its trainer_state.json also has them.
        run_dir = Path(self._get_output_dir(trial=trial))
        folder = run_dir / f"{PREFIX_CHECKPOINT_DIR}-{self.state.global_step}"
        self.saving_to = folder
        mark_incomplete(folder)  # re-saving a step: incomplete until done again
        write_counters(folder, rank(), self.counters())
        super()._save_checkpoint(model, trial)  # args.save_total_limit is None: no rotation in there
        barrier()  # every rank's shards and optimizer states are on disk
        if self.args.should_save:
            mark_complete(folder, self.state.global_step)
            rotate_checkpoints(run_dir, self.keep_checkpoints)
        self.saving_to = None

    def _save(self, output_dir=None, state_dict=None):
        model = self.accelerator.unwrap_model(self.model, keep_torch_compile=False)
        out = output_dir or self.args.output_dir
        if not isinstance(model, CCTuningModel) and not is_wrapped(model):
            super()._save(output_dir, state_dict)
            if self.args.should_save:  # HF pickles TrainingArguments there; nothing reads it: no pickle
                Path(out, "training_args.bin").unlink(missing_ok=True)
            return None
        if not self.args.should_save:
            return None
        if isinstance(model, CCTuningModel):
            save_cc_checkpoint(model, out, self.processing_class, state_dict=state_dict, base=self.adapter_base)
        else:  # SFT with LoRA adapters: the adapter checkpoint (PEFT's files + cc_adapter.json)
            save_adapter(model, out, self.adapter_base, state_dict=state_dict)
            if self.processing_class is not None:
                self.processing_class.save_pretrained(out)
        return None

    def _load_from_checkpoint(self, resume_from_checkpoint, model=None):
        target = model or self.model
        if isinstance(target, CCTuningModel):
            load_cc_weights(target, resume_from_checkpoint)
        elif is_wrapped(target):
            load_adapter_weights(target, resume_from_checkpoint)
        else:
            return super()._load_from_checkpoint(resume_from_checkpoint, model)
        return None


class TrackingCallback(TrainerCallback):
    """Forwards the Trainer's logs (loss, lr, grad norm) plus tokens/s and the Decision Maker's choice
    entropy to the run; stops a diverged run before its update is applied. ``attach(trainer)`` first."""

    def __init__(self, run) -> None:
        self.run = run
        self.trainer: CCTrainer | None = None
        self.last_time: float | None = None
        self.last_tokens = 0

    def attach(self, trainer: CCTrainer) -> None:
        self.trainer = trainer

    def on_pre_optimizer_step(self, args, state, control, **kwargs):
        self.trainer.check_finite(self.trainer.model)

    def on_train_begin(self, args, state, control, **kwargs):
        self.last_time = time.perf_counter()
        self.last_tokens = self.trainer.tokens_seen

    def on_log(self, args, state, control, logs=None, **kwargs):
        if not state.is_world_process_zero or not logs:
            return
        trainer = self.trainer
        now = time.perf_counter()
        metrics = {k: v for k, v in logs.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
        # the Trainer's closing summary (train_runtime, total_flos) trains no tokens: a rate over it
        # would log 0 as the run's last tokens_per_s; train() logs the whole run's rate instead
        if self.last_time is not None and now > self.last_time and trainer.tokens_seen > self.last_tokens:
            metrics["tokens_per_s"] = (trainer.tokens_seen - self.last_tokens) * args.world_size / (now - self.last_time)
        self.last_time, self.last_tokens = now, trainer.tokens_seen
        if trainer.choice_counts:
            total = sum(trainer.choice_counts.values())
            probs = [c / total for c in trainer.choice_counts.values()]
            metrics["dm_choice_entropy"] = -sum(p * math.log(p) for p in probs if p > 0)
        self.run.log_metrics(metrics, step=state.global_step)
