"""The ``train`` stage: CC-Tuning or the vanilla SFT baseline, on the HF Trainer (+ DeepSpeed ZeRO).

    cctune train --method cc                                  # models/cc/, metrics/train_cc.json
    cctune train --method sft                                 # models/sft/ (the paper's baseline)
    cctune train --method cc --resume                         # continue from the last checkpoint
    cctune train --method cc --set train.deepspeed=zero3      # ZeRO-3 (one process; gloo on CPU)
    torchrun --nproc_per_node 2 -m cc_core.cli train --method cc --set train.deepspeed=zero3

Both methods train on the same non-English records with the same hyper-parameters; CC adds
the English prompt pass and the Decision Maker (METHOD.md, Training). Intermediate Trainer
checkpoints go to ``models/.<method>-checkpoints/`` (removed once the final model is in place, so a
later rerun trains afresh); the final model is written to a temp directory and renamed to
``models/<method>/`` only when training finished. A resumed run continues the killed run's
MLflow run and its token and layer-choice counters.
"""

from __future__ import annotations

import contextlib
import errno
import json
import logging
import math
import os
import shutil
import socket
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import Dataset

from cc_core.config import Params, TrainParams
from cc_core.data.prepare import read_records
from cc_core.io import InputError, dir_sha256, file_sha256, read_json, replace_path, write_json
from cc_core.prompts import encode_example, encode_prompt, pad_sequences, pad_token_id

log = logging.getLogger(__name__)
METHODS = ("cc", "sft")
# Built-in ZeRO configs: the checkout's configs/deepspeed (the working directory of `dvc repro`, the
# Prefect worker and the Docker image's /app), else the source tree of an editable install.
DEEPSPEED_DIRS = (Path("configs") / "deepspeed", Path(__file__).resolve().parent.parent / "configs" / "deepspeed")
FINGERPRINT = "cc_fingerprint.json"
COUNTERS = "cc_counters-rank{rank}.json"  # per-rank token / layer-choice counters saved with each checkpoint
# Written into checkpoint-N/ after every rank has saved everything: a checkpoint without it was cut
# short (a kill or a full disk during the save) and is never resumed from.
COMPLETE = "cc_checkpoint_complete.json"


class TrainingDivergedError(RuntimeError):
    """The loss or the gradient norm stopped being finite (more than train.nonfinite_patience steps)."""


class CheckpointWriteError(OSError):
    """Saving a checkpoint or the final model failed (typically a full disk); names the path."""


# --- data ----------------------------------------------------------------------------------------

@dataclass
class EncodeStats:
    records: int = 0
    kept: int = 0
    dropped_truncated: int = 0  # response cut away entirely by cutoff_len
    response_truncated: int = 0  # response partly cut
    english_truncated: int = 0  # English prompt cut from the left to fit
    dropped_over_budget: int = 0  # longer than train.pack_max_tokens: cannot be packed


def encode_records(records, tokenizer, cutoff_len: int, method: str, on_truncated: str = "drop",
                   where: str = "train.jsonl", pack_budget: int | None = None) -> tuple[list[dict[str, Any]], EncodeStats]:
    """Tokenize records into training features (lists of ids; padding happens in the collator).
    ``pack_budget``: the packed row's token budget; an example (or its English prompt) longer than it
    cannot be packed and is dropped and counted (``on_truncated: error``: an error)."""
    stats = EncodeStats(records=len(records))
    features = []
    for index, record in enumerate(records):
        example = encode_example(tokenizer, record.instruction, record.output, cutoff_len)
        if example is not None and pack_budget is not None and len(example.input_ids) > pack_budget:
            if on_truncated == "error":
                raise InputError(f"{where}: record {record.id!r} (line {index + 1}) has {len(example.input_ids)} "
                                 f"tokens, more than train.pack_max_tokens={pack_budget}")
            stats.dropped_over_budget += 1
            continue
        if example is None:
            if on_truncated == "error":
                raise InputError(f"{where}: record {record.id!r} (line {index + 1}) has no response token left "
                                 f"within train.cutoff_len={cutoff_len}")
            stats.dropped_truncated += 1
            continue
        stats.response_truncated += example.response_truncated
        feature: dict[str, Any] = {"input_ids": example.input_ids, "labels": example.labels, "anchor": example.anchor}
        if method == "cc":
            english = encode_prompt(tokenizer, record.instruction_en, max_len=min(cutoff_len, pack_budget or cutoff_len))
            stats.english_truncated += english.truncated
            feature.update(en_input_ids=english.input_ids, en_anchor=english.anchor)
        features.append(feature)
    stats.kept = len(features)
    return features, stats


class FeatureDataset(Dataset):
    def __init__(self, features: list[dict[str, Any]]) -> None:
        self.features = features

    def __len__(self) -> int:
        return len(self.features)

    def __getitem__(self, index: int) -> dict[str, Any]:
        return self.features[index]


@dataclass
class CCCollator:
    """Right-pads the non-English prompt+response (labels -100 on prompt and padding) and, for CC,
    the English prompt; carries both anchors (right padding keeps them at len(prompt) - 1).
    ``token_count`` / ``en_token_count`` (plain ints: no device sync to count them) are bookkeeping
    for tokens/s, removed before the model sees the batch."""

    pad_id: int

    def __call__(self, features: list[dict[str, Any]]) -> dict[str, Any]:
        ids, mask = pad_sequences([f["input_ids"] for f in features], self.pad_id, "right")
        labels, _ = pad_sequences([f["labels"] for f in features], -100, "right")
        batch: dict[str, Any] = {"input_ids": ids, "attention_mask": mask, "labels": labels,
                                 "token_count": sum(len(f["input_ids"]) for f in features)}
        if "en_input_ids" in features[0]:
            en_ids, en_mask = pad_sequences([f["en_input_ids"] for f in features], self.pad_id, "right")
            batch.update(anchor=torch.tensor([f["anchor"] for f in features]), en_input_ids=en_ids,
                         en_attention_mask=en_mask, en_anchor=torch.tensor([f["en_anchor"] for f in features]),
                         en_token_count=sum(len(f["en_input_ids"]) for f in features))
        return batch


def pack_rows(lengths: list[int], budget: int | None) -> list[list[int]]:
    """Example indices per row: first-fit decreasing into rows of at most ``budget`` tokens (None: the
    longest example's length, so no row is wider than a padded batch's). Deterministic; an example
    longer than the budget is an error (encode_records drops or refuses those before they get here)."""
    budget = budget or max(lengths)
    rows: list[list[int]] = []
    room: list[int] = []
    for index in sorted(range(len(lengths)), key=lambda i: (-lengths[i], i)):
        if lengths[index] > budget:
            raise ValueError(f"an example of {lengths[index]} tokens does not fit train.pack_max_tokens={budget}")
        slot = next((r for r, free in enumerate(room) if free >= lengths[index]), None)
        if slot is None:
            rows.append([index])
            room.append(budget - lengths[index])
        else:
            rows[slot].append(index)
            room[slot] -= lengths[index]
    return [sorted(row) for row in rows]


DEFAULT_ROW_CAP = 2  # train.pack_max_tokens null: rows of at most twice the batch's longest example
WIDTH_CANDIDATES = 256  # row widths tried per batch at most (exhaustive below that many)


def pack_layout(lengths: list[int], max_tokens: int | None) -> list[list[int]]:
    """Example indices per row for a packed batch: of the first-fit-decreasing layouts with a row
    width between the longest example and ``max_tokens`` (None: twice the longest), the one with the
    fewest cells (rows × widest row), since a batch is a rectangle and every cell costs compute;
    ties go to the narrower rows (less attention work where masked blocks are computed). Widths
    tried: every one in the range, or an even grid of WIDTH_CANDIDATES plus the exact fits
    ceil(total / k). A budget that holds the whole batch gives one row with no padding at all; an
    example longer than the budget is pack_rows's error."""
    longest, total = max(lengths), sum(lengths)
    cap = max_tokens if max_tokens is not None else DEFAULT_ROW_CAP * longest
    if total <= cap:
        return [list(range(len(lengths)))]
    step = max(1, (cap - longest) // WIDTH_CANDIDATES)
    widths = set(range(longest, cap + 1, step)) | {cap}
    widths |= {w for k in range(1, len(lengths) + 1) if longest <= (w := -(-total // k)) <= cap}
    best: tuple[int, int] | None = None
    layout: list[list[int]] = []
    for width in sorted(widths):
        rows = pack_rows(lengths, width)
        used = max(sum(lengths[i] for i in row) for row in rows)
        if best is None or (len(rows) * used, used) < best:
            best, layout = (len(rows) * used, used), rows
    return layout


def _pack(seqs: list[list[int]], anchors: list[int], labels: list[list[int]] | None, budget: int | None,
          pad_id: int) -> dict[str, torch.Tensor]:
    """Concatenate sequences into rows (``pack_layout``); positions restart at 0 for every example
    (and for the padding that squares the rows off, which so forms an example of its own with no loss)."""
    layout = pack_layout([len(s) for s in seqs], budget)
    width = max(sum(len(seqs[i]) for i in row) for row in layout)
    ids = torch.full((len(layout), width), pad_id, dtype=torch.long)
    pos = torch.zeros((len(layout), width), dtype=torch.long)
    lab = torch.full((len(layout), width), -100, dtype=torch.long)
    anchor, anchor_row = torch.zeros(len(seqs), dtype=torch.long), torch.zeros(len(seqs), dtype=torch.long)
    for r, row in enumerate(layout):
        offset = 0
        for i in row:
            n = len(seqs[i])
            ids[r, offset:offset + n] = torch.tensor(seqs[i])
            pos[r, offset:offset + n] = torch.arange(n)
            if labels is not None:
                lab[r, offset:offset + n] = torch.tensor(labels[i])
            anchor[i], anchor_row[i] = offset + anchors[i], r
            offset += n
        pos[r, offset:] = torch.arange(width - offset)
    out = {"input_ids": ids, "position_ids": pos, "anchor": anchor, "anchor_row": anchor_row}
    if labels is not None:
        out["labels"] = lab
    return out


@dataclass
class PackedCollator:
    """Padding-free batches (train.packing): the same examples as CCCollator's batch, several per row
    up to ``budget`` tokens, positions restarting per example and no attention mask, so transformers
    confines attention to each example (block-diagonal causal; FlashAttention-2 varlen on GPUs).
    For CC the English prompts are packed the same way; every example keeps its own anchors
    (``anchor``/``anchor_row``, ``en_anchor``/``en_anchor_row``) and the Decision Maker sees one row
    per example."""

    pad_id: int
    budget: int | None = None  # tokens per packed row at most (None: twice the batch's longest example)

    def __call__(self, features: list[dict[str, Any]]) -> dict[str, Any]:
        main = _pack([f["input_ids"] for f in features], [f["anchor"] for f in features],
                     [f["labels"] for f in features], self.budget, self.pad_id)
        batch: dict[str, Any] = {"input_ids": main["input_ids"], "position_ids": main["position_ids"],
                                 "labels": main["labels"], "token_count": sum(len(f["input_ids"]) for f in features)}
        if "en_input_ids" in features[0]:
            en = _pack([f["en_input_ids"] for f in features], [f["en_anchor"] for f in features], None,
                       self.budget, self.pad_id)
            batch.update(anchor=main["anchor"], anchor_row=main["anchor_row"], en_input_ids=en["input_ids"],
                         en_position_ids=en["position_ids"], en_anchor=en["anchor"], en_anchor_row=en["anchor_row"],
                         en_token_count=sum(len(f["en_input_ids"]) for f in features))
        return batch


def _liger_functions() -> dict:
    try:
        from liger_kernel.transformers.monkey_patch import MODEL_TYPE_TO_APPLY_LIGER_FN
    except ImportError as err:
        raise InputError("train.liger=true needs the liger-kernel package: pip install -e '.[gpu]' "
                         f"(on a CUDA machine; {err})") from None
    return MODEL_TYPE_TO_APPLY_LIGER_FN


def check_kernel_options(tp: TrainParams, base_dir: Path) -> None:
    """train.liger / train.compile asked for where they cannot work: an error naming the key, before
    the model loads (minutes at 8B)."""
    if tp.liger:
        if not torch.cuda.is_available():
            raise InputError("train.liger=true needs a CUDA GPU (Liger Kernel's Triton kernels); set train.liger=false")
        config = base_dir / "config.json"
        model_type = read_json(config).get("model_type") if config.is_file() else None
        if model_type not in _liger_functions():
            raise InputError(f"train.liger=true: Liger Kernel has no kernels for model_type {model_type!r} "
                             f"(supported: {', '.join(sorted(_liger_functions()))}); set train.liger=false")
    if tp.compile and tp.deepspeed and "3" in str(tp.deepspeed):
        raise InputError("train.compile=true with ZeRO-3: parameters are gathered inside the forward, which "
                         "torch.compile of the layers does not follow; use DeepSpeed's compile or train.compile=false")


def apply_liger(model) -> None:
    """Liger's fused kernels on this model instance: the LM head and cross-entropy fused (no logits
    tensor: 16k tokens × 128k vocabulary at Llama-3 scale), RMSNorm, SwiGLU and RoPE where they apply."""
    _liger_functions()[model.config.model_type](model=model)


def compile_decoder(model, arch_map=None) -> None:
    """torch.compile every submodule of every decoder layer (attention, MLP, norms). The capture and
    connection hooks sit on the layer and on the FFN module's call, outside the compiled forwards,
    so the graphs never change when hooks come and go."""
    from cc_core.modeling.architectures import arch_paths, decoder_layers

    for layer in decoder_layers(model, arch_paths(model, arch_map)):
        for child in layer.children():
            child.forward = torch.compile(child.forward, dynamic=True)


def make_collator(tp: TrainParams, pad_id: int):
    return PackedCollator(pad_id, tp.pack_max_tokens) if tp.packing else CCCollator(pad_id)


# --- DeepSpeed -------------------------------------------------------------------------------------

def resolve_deepspeed(name: str | None) -> dict | None:
    """``zero0|zero2|zero3|zero3_offload`` or a JSON path → the config dict (None: no DeepSpeed)."""
    if not name:
        return None
    builtin = [d / f"{name}.json" for d in DEEPSPEED_DIRS if (d / f"{name}.json").is_file()]
    path = builtin[0] if builtin else Path(name)
    if not path.is_file():
        looked = ", ".join(str(d.resolve()) for d in DEEPSPEED_DIRS)
        raise InputError(f"train.deepspeed={name!r}: no such config (built-in: zero0, zero2, zero3, zero3_offload, "
                         f"looked for in {looked}; or a path to a JSON file)")
    try:
        config = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise InputError(f"{path}:{err.lineno}: DeepSpeed config is not valid JSON: {err.msg}") from None
    if not isinstance(config, dict) or "zero_optimization" not in config:
        raise InputError(f"{path}: DeepSpeed config must be an object with a 'zero_optimization' section")
    return config


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def init_distributed_for_deepspeed() -> None:
    """Without GPUs DeepSpeed needs the gloo backend and rendezvous variables; set them for a
    single process, or use those a launcher (torchrun / deepspeed) already set."""
    if torch.cuda.is_available():
        return  # the Trainer/accelerate set up NCCL
    os.environ.setdefault("DS_ACCELERATOR", "cpu")
    if "WORLD_SIZE" not in os.environ:
        os.environ.update(RANK="0", LOCAL_RANK="0", WORLD_SIZE="1", MASTER_ADDR="127.0.0.1",
                          MASTER_PORT=os.environ.get("MASTER_PORT", str(_free_port())))
    import deepspeed
    import torch.distributed as dist

    if not dist.is_initialized():
        deepspeed.init_distributed(dist_backend="gloo")


def rank() -> int:
    return int(os.environ.get("RANK", "0"))


# --- trainer ---------------------------------------------------------------------------------------

def _make_trainer_class():
    from transformers import Trainer

    from cc_core.modeling.checkpoint import DM_WEIGHTS, save_cc_checkpoint

    class CCTrainer(Trainer):
        """Trainer whose loss is the CC two-pass step (or plain SFT); counts tokens and layer choices."""

        def __init__(self, *args, nonfinite_patience: int = 0, save_total_limit: int | None = None, **kwargs):
            super().__init__(*args, **kwargs)
            self.tokens_seen = 0  # non-English (trained) tokens
            self.english_tokens_seen = 0
            self.tokens_restored = 0  # part of tokens_seen that a resumed run inherited (not trained now)
            self.choice_counts: Counter[int] = Counter()
            self.nonfinite_patience = nonfinite_patience
            self.keep_checkpoints = save_total_limit  # rotation is ours: only complete checkpoints count
            self.saving_to: Path | None = None
            self._step_nonfinite: torch.Tensor | None = None  # on the device: no sync per micro-batch
            self._grad_norm: float | torch.Tensor | None = None
            self._nonfinite_streak = 0

        def training_step(self, model, inputs, num_items_in_batch=None):
            loss = super().training_step(model, inputs, num_items_in_batch)
            bad = ~torch.isfinite(loss.detach())
            self._step_nonfinite = bad if self._step_nonfinite is None else self._step_nonfinite | bad
            return loss

        def _clip_grad_norm(self, model):
            self._grad_norm = super()._clip_grad_norm(model)  # pre-clip norm (after the step under DeepSpeed)
            return self._grad_norm

        def check_finite(self, model) -> None:
            """Before each optimizer step: a non-finite loss or gradient norm skips the update (its
            gradients dropped) while the streak is within train.nonfinite_patience, then stops training."""
            loss_bad = bool(self._step_nonfinite) if self._step_nonfinite is not None else False
            norm = self._grad_norm
            norm = float(norm) if norm is not None else None
            self._step_nonfinite, self._grad_norm = None, None
            if not loss_bad and (norm is None or math.isfinite(norm)):
                self._nonfinite_streak = 0
                return
            self._nonfinite_streak += 1
            step = self.state.global_step + 1
            what = "loss" if loss_bad else f"gradient norm ({norm})"
            if self._nonfinite_streak > self.nonfinite_patience:
                raise TrainingDivergedError(
                    f"training diverged: non-finite {what} at step {step} ({self._nonfinite_streak} step(s) in a row, "
                    f"train.nonfinite_patience={self.nonfinite_patience}); nothing of this run after its last "
                    "checkpoint was kept. Lower train.learning_rate or raise train.max_grad_norm's strictness")
            log.warning("step %d: non-finite %s, update skipped (%d of train.nonfinite_patience=%d)", step, what,
                        self._nonfinite_streak, self.nonfinite_patience)
            for param in model.parameters():
                param.grad = None  # torch optimizers skip parameters without a gradient: no update, no moments

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

        def floating_point_ops(self, inputs) -> int:
            """A micro-batch's training FLOPs for the Trainer's ``total_flos``: 6 × non-embedding
            parameters per trained token (padding not counted), plus CC's English prompt pass, 2 × per
            token (a forward; 6 × when gradients flow through it: train.detach_english false). The
            Trainer's own estimate finds no parameters on the CC wrapper (0) and counts padding cells."""
            from cc_core.modeling.cc_model import CCTuningModel

            model = self.accelerator.unwrap_model(self.model, keep_torch_compile=False)
            cc = isinstance(model, CCTuningModel)
            if getattr(self, "_flop_params", None) is None:
                hf = model.model if cc else model
                embedding = {id(p) for m in hf.modules() if isinstance(m, torch.nn.Embedding) for p in m.parameters()}
                # ZeRO-3 partitions parameters (numel 0 here): ds_numel is the full count
                self._flop_params = sum(getattr(p, "ds_numel", p.numel()) for p in hf.parameters()
                                        if id(p) not in embedding)
            english = 6 if cc and not model.detach_english else 2
            return self._flop_params * (6 * int(inputs.get("token_count", 0))
                                        + (english * int(inputs.get("en_token_count", 0)) if cc else 0))

        def _save_checkpoint(self, model, trial):
            # Counters first, so a checkpoint that has its trainer_state.json also has them.
            from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR

            run_dir = Path(self._get_output_dir(trial=trial))
            folder = run_dir / f"{PREFIX_CHECKPOINT_DIR}-{self.state.global_step}"
            self.saving_to = folder
            folder.mkdir(parents=True, exist_ok=True)
            (folder / COMPLETE).unlink(missing_ok=True)  # re-saving a step: incomplete until done again
            write_json(folder / COUNTERS.format(rank=rank()), self.counters())
            super()._save_checkpoint(model, trial)  # args.save_total_limit is None: no rotation in there
            _barrier()  # every rank's shards and optimizer states are on disk
            if self.args.should_save:
                write_json(folder / COMPLETE, {"step": self.state.global_step})
                rotate_checkpoints(run_dir, self.keep_checkpoints)
            self.saving_to = None

        def counters(self) -> dict[str, Any]:
            return {"tokens_seen": self.tokens_seen, "english_tokens_seen": self.english_tokens_seen,
                    "choice_counts": {str(k): v for k, v in sorted(self.choice_counts.items())}}

        def tokens_this_run(self) -> int:
            """Tokens trained by this process since it started (a resumed run's rate must not count the
            restored tokens against the resumed part's runtime)."""
            return self.tokens_seen - self.tokens_restored

        def restore_counters(self, checkpoint: Path) -> None:
            path = checkpoint / COUNTERS.format(rank=rank())
            if not path.is_file():
                log.warning("%s: no counters saved with this checkpoint; tokens/s and the layer-choice "
                            "histogram count only the steps after the resume", checkpoint)
                return
            saved = read_json(path)
            self.tokens_seen, self.english_tokens_seen = saved["tokens_seen"], saved["english_tokens_seen"]
            self.tokens_restored = self.tokens_seen
            self.choice_counts = Counter({int(k): v for k, v in saved["choice_counts"].items()})

        def _save(self, output_dir=None, state_dict=None):
            from cc_core.modeling.cc_model import CCTuningModel

            model = self.accelerator.unwrap_model(self.model, keep_torch_compile=False)
            if not isinstance(model, CCTuningModel):
                return super()._save(output_dir, state_dict)
            if not self.args.should_save:
                return None
            output_dir = output_dir or self.args.output_dir
            save_cc_checkpoint(model, output_dir, self.processing_class, state_dict=state_dict)
            return None

        def _load_from_checkpoint(self, resume_from_checkpoint, model=None):
            from cc_core.modeling.cc_model import CCTuningModel

            target = model or self.model
            if not isinstance(target, CCTuningModel):
                return super()._load_from_checkpoint(resume_from_checkpoint, model)
            from safetensors.torch import load_file

            load_base_weights(target.model, resume_from_checkpoint)
            target.decision_maker.load_state_dict(load_file(str(Path(resume_from_checkpoint) / DM_WEIGHTS)))
            return None

    return CCTrainer


def load_base_weights(model: torch.nn.Module, directory: str | Path) -> None:
    """Load (possibly sharded) safetensors weights of a save_pretrained directory into ``model``."""
    from safetensors.torch import load_file

    directory = Path(directory)
    index = directory / "model.safetensors.index.json"
    files = sorted(set(json.loads(index.read_text())["weight_map"].values())) if index.is_file() else ["model.safetensors"]
    state: dict[str, torch.Tensor] = {}
    for name in files:
        state.update(load_file(str(directory / name)))
    missing, unexpected = model.load_state_dict(state, strict=False)
    tied = {"lm_head.weight"} if getattr(model.config, "tie_word_embeddings", False) else set()
    if unexpected or set(missing) - tied:
        raise RuntimeError(f"{directory}: checkpoint does not match the model (missing={missing}, unexpected={unexpected})")
    if tied:
        model.tie_weights()


def _make_log_callback(run, trainer_ref: dict):
    from transformers import TrainerCallback

    class TrackingCallback(TrainerCallback):
        """Forwards the Trainer's logs (loss, lr, grad norm) plus tokens/s to MLflow and the log;
        stops a diverged run before its update is applied."""

        def __init__(self):
            self.last_time = None
            self.last_tokens = 0

        def on_pre_optimizer_step(self, args, state, control, **kwargs):
            trainer = trainer_ref["trainer"]
            trainer.check_finite(trainer.model)

        def on_train_begin(self, args, state, control, **kwargs):
            self.last_time = time.perf_counter()
            self.last_tokens = trainer_ref["trainer"].tokens_seen

        def on_log(self, args, state, control, logs=None, **kwargs):
            if not state.is_world_process_zero or not logs:
                return
            trainer = trainer_ref["trainer"]
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
            run.log_metrics(metrics, step=state.global_step)

    return TrackingCallback()


# --- the stage ---------------------------------------------------------------------------------------

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


def _fingerprint(params: Params, method: str, data_file: Path, base_dir: Path) -> dict[str, Any]:
    """What a resumable checkpoint must match: params that shape training, the data, the base model
    (its small files by content, its weight files by name and size: hashing many GB on every
    start would cost more than the resume saves)."""
    small = {p.name: file_sha256(p) for p in sorted(base_dir.iterdir())
             if p.is_file() and p.suffix != ".safetensors" and p.stat().st_size < 64 << 20}
    weights = {p.name: p.stat().st_size for p in sorted(base_dir.glob("*.safetensors"))}
    return {"method": method, "train_params": params.section_hash("train"), "arch_map": str(params.model.arch_map),
            "data_sha256": file_sha256(data_file), "base_files_sha256": small, "base_weight_sizes": weights}


def _training_arguments(tp: TrainParams, work_dir: Path, deepspeed_config: dict | None):
    from transformers import TrainingArguments

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


def train(params: Params, method: str, base_dir: str | Path = "models/base", data_dir: str | Path = "data/prepared",
          out_dir: str | Path | None = None, metrics_dir: str | Path = "metrics", resume: bool = False) -> TrainResult:
    from transformers import set_seed

    from cc_core.modeling.base import load_model_dir
    from cc_core.modeling.cc_model import CCTuningModel
    from cc_core.tracking import Tracker, read_run_id, tracking_uri, write_run_file

    if method not in METHODS:
        raise ValueError(f"--method must be one of {', '.join(METHODS)}, not {method!r}")
    tp = params.train
    base_dir, data_file = Path(base_dir), Path(data_dir) / "train.jsonl"
    out = Path(out_dir or f"models/{method}")
    work_dir = out.parent / f".{out.name}-checkpoints"
    is_main = rank() == 0

    check_kernel_options(tp, base_dir)  # before anything loads: a clear error naming the key
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

    fingerprint = _fingerprint(params, method, data_file, base_dir)
    resume_from = _resume_point(work_dir, fingerprint) if resume else None
    tracker = Tracker(params.tracking)
    if is_main:
        tracker.check()  # fail fast (tracking.on_unavailable=fail) before loading anything

    args = _training_arguments(tp, work_dir, ds_config)  # before loading: ZeRO-3 loads partitioned
    set_seed(tp.seed)
    model, tokenizer = load_model_dir(base_dir)
    model.config.use_cache = False  # training never reuses a KV cache (and a cache turns off packed masks)
    if tp.liger:
        apply_liger(model)
    check_tokenizer_matches(tokenizer, model, base_dir)
    budget = tp.pack_max_tokens  # None: rows of at most twice each batch's longest example
    features, stats = encode_records(records, tokenizer, tp.cutoff_len, method, tp.on_truncated, str(data_file),
                                     budget if tp.packing else None)
    if stats.dropped_over_budget:
        log.warning("dropped %d of %d examples longer than train.pack_max_tokens=%s", stats.dropped_over_budget,
                    stats.records, budget)
    if stats.dropped_truncated:
        log.warning("dropped %d of %d examples whose response did not fit train.cutoff_len=%d",
                    stats.dropped_truncated, stats.records, tp.cutoff_len)
    if not features:
        raise InputError(f"{data_file}: all {stats.records} examples were truncated away by "
                         f"train.cutoff_len={tp.cutoff_len}; raise it")
    if tp.compile:
        compile_decoder(model, params.model.arch_map)
    if method == "cc":
        model = CCTuningModel(model, inject_layer=tp.inject_layer, decision_mode=tp.decision_mode,
                              gumbel_tau=tp.gumbel_tau, detach_english=tp.detach_english,
                              arch_map=params.model.arch_map, decision_maker_init=tp.decision_maker_init)

    # Only now, with the input checked, may a fresh start discard the old checkpoints (and close the
    # killed run that made them, which MLflow would otherwise show RUNNING forever).
    if is_main and resume_from is None and work_dir.exists():
        _end_stale_run(tracker, read_run_id(work_dir))
        shutil.rmtree(work_dir)
    _barrier()
    if is_main:
        work_dir.mkdir(parents=True, exist_ok=True)
        write_json(work_dir / FINGERPRINT, fingerprint)

    trainer_ref: dict[str, Any] = {}
    run_tags = {"method": method, "git_commit": _git(), "data_sha256": fingerprint["data_sha256"],
                "base_model": params.model.base, "stage": "train"}
    # A resumed training continues the killed run, so MLflow shows one run with every step.
    previous_run = read_run_id(work_dir) if resume_from else None
    run_ctx = tracker.run(f"train-{method}", params=params.flat(), tags=run_tags, run_id=previous_run) \
        if is_main else _null_run()
    with run_ctx as run:
        if is_main and run.run_id:
            write_run_file(work_dir, run, tracking_uri(params.tracking))
        run.log_metrics({f"data_{k}": v for k, v in asdict(stats).items()}, step=0)
        trainer = _make_trainer_class()(
            model=model, args=args, train_dataset=FeatureDataset(features),
            data_collator=make_collator(tp, pad_token_id(tokenizer)), processing_class=tokenizer,
            callbacks=[_make_log_callback(run, trainer_ref)],
            nonfinite_patience=tp.nonfinite_patience, save_total_limit=tp.save_total_limit,
        )
        trainer_ref["trainer"] = trainer
        if resume_from:
            trainer.restore_counters(resume_from)
        with _disk_errors(lambda: trainer.saving_to or work_dir):
            output = trainer.train(resume_from_checkpoint=str(resume_from) if resume_from else None)
        (model.model if method == "cc" else model).config.use_cache = True  # the saved model generates with a cache
        partial = out.parent / f".{out.name}.partial"
        if is_main and partial.exists():
            shutil.rmtree(partial)
        _barrier()
        with _disk_errors(lambda: partial):
            trainer.save_model(str(partial))  # every rank: ZeRO-3 gathers the full weights collectively
        _barrier()
        history = [h for h in trainer.state.log_history if "loss" in h]
        runtime = float(output.metrics.get("train_runtime", 0.0))  # this process's part of the run
        tokens, tokens_total, choices = _totals_over_ranks(trainer, model.num_layers if method == "cc" else 0,
                                                           args.device)
        result = TrainResult(
            method=method, out_dir=str(out), steps=trainer.state.global_step,
            final_loss=history[-1]["loss"] if history else None, train_runtime_s=runtime,
            tokens_per_s=tokens / runtime if runtime else 0.0, tokens_this_run=tokens, tokens_total=tokens_total,
            resumed_from_step=_step_of(resume_from), total_flos=float(trainer.state.total_flos),
            run_id=run.run_id, encode=asdict(stats),
            layer_choice_counts={f"layer_{k:02d}": v for k, v in sorted(choices.items())},
        )
        if is_main:
            tokenizer.save_pretrained(partial)
            write_run_file(partial, run, tracking_uri(params.tracking))
            result.checkpoint_sha256 = dir_sha256(partial, "*.safetensors")
            replace_path(partial, out)
            shutil.rmtree(work_dir, ignore_errors=True)  # finished: a rerun must not resume from these
            _write_train_metrics(result, history, Path(metrics_dir), method)
            # tokens_per_s's last point is the whole run's rate, as in metrics/train_<method>.json
            run.log_metrics({"final_loss": result.final_loss, "train_runtime_s": runtime,
                             "train_tokens_per_s": result.tokens_per_s, "tokens_per_s": result.tokens_per_s,
                             "total_flos": result.total_flos}, step=result.steps)
            for key, count in result.layer_choice_counts.items():
                run.log_metrics({f"dm_choice_{key}": count}, step=result.steps)
            if result.layer_choice_counts:
                run.log_dict(result.layer_choice_counts, "decision_maker/layer_choice_counts.json")
            run.set_tags({"checkpoint_path": str(out.resolve()), "checkpoint_sha256": result.checkpoint_sha256})
            if params.tracking.log_checkpoint:
                run.log_artifacts(out, "checkpoint")
    _barrier()
    return result


def check_tokenizer_matches(tokenizer, model, base_dir: Path) -> None:
    """A tokenizer from another model: more tokens than embedding rows, or special tokens outside them."""
    rows = model.get_input_embeddings().num_embeddings
    if len(tokenizer) > rows:
        raise InputError(f"{base_dir}: the tokenizer has {len(tokenizer)} tokens but the model's embedding has "
                         f"{rows} rows: tokenizer and model do not match")
    for name in ("bos_token_id", "eos_token_id", "pad_token_id"):
        token_id = getattr(tokenizer, name, None)
        if isinstance(token_id, int) and not 0 <= token_id < rows:
            raise InputError(f"{base_dir}: the tokenizer's {name}={token_id} is outside the model's {rows} "
                             "embedding rows: tokenizer and model do not match")
    if len(tokenizer) < 0.9 * rows:  # models pad their vocabulary, but rarely by more than a few percent
        log.warning("%s: the tokenizer has %d tokens, the model's embedding %d rows: is it this model's tokenizer?",
                    base_dir, len(tokenizer), rows)


def _totals_over_ranks(trainer, num_layers: int, device) -> tuple[int, int, Counter]:
    """(tokens trained by this process's run, tokens of the whole training, layer choices of the whole
    training), summed over all ranks. A resumed run's rate divides only the first by its own runtime."""
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return trainer.tokens_this_run(), trainer.tokens_seen, trainer.choice_counts
    counts = torch.zeros(num_layers + 2, dtype=torch.long, device=device)
    counts[0], counts[1] = trainer.tokens_this_run(), trainer.tokens_seen
    for layer, count in trainer.choice_counts.items():
        counts[layer + 2] = count
    dist.all_reduce(counts)
    return int(counts[0]), int(counts[1]), Counter({i: int(c) for i, c in enumerate(counts[2:].tolist()) if c})


def _write_train_metrics(result: TrainResult, history: list[dict], metrics_dir: Path, method: str) -> None:
    metrics = {"method": method, "steps": result.steps, "final_loss": result.final_loss,
               "first_loss": history[0]["loss"] if history else None,
               "train_runtime_s": round(result.train_runtime_s, 3), "tokens_per_s": round(result.tokens_per_s, 2),
               "tokens_this_run": result.tokens_this_run, "tokens_total": result.tokens_total,
               "total_flos": result.total_flos,
               "resumed_from_step": result.resumed_from_step, "checkpoint_sha256": result.checkpoint_sha256,
               "examples": result.encode.get("kept", 0), "dropped_truncated": result.encode.get("dropped_truncated", 0),
               "layer_choice_counts": result.layer_choice_counts}
    write_json(metrics_dir / f"train_{method}.json", metrics)
    write_json(metrics_dir / f"train_{method}_loss.json",
               [{"step": h["step"], "loss": h["loss"]} for h in history])  # a DVC plot


def _step_of(checkpoint: Path | None) -> int | None:
    return int(checkpoint.name.rsplit("-", 1)[-1]) if checkpoint else None


def _checkpoints(work_dir: Path) -> list[tuple[int, Path, bool]]:
    """(step, folder, complete) of every ``checkpoint-N`` folder, oldest first."""
    found = []
    for folder in work_dir.glob("checkpoint-*") if work_dir.is_dir() else []:
        step = folder.name.rsplit("-", 1)[-1]
        if folder.is_dir() and step.isdigit():
            found.append((int(step), folder, (folder / COMPLETE).is_file()))
    return sorted(found)


def rotate_checkpoints(work_dir: Path, keep: int | None) -> None:
    """Keep the newest ``keep`` complete checkpoints; an incomplete one older than the newest complete
    one is a leftover and goes too. Never deletes the only complete checkpoint for a newer incomplete one."""
    checkpoints = _checkpoints(work_dir)
    complete = [c for c in checkpoints if c[2]]
    if not complete:
        return
    newest = complete[-1][0]
    doomed = complete[:-keep] if keep else []
    doomed += [c for c in checkpoints if not c[2] and c[0] < newest]
    for _, folder, _ in doomed:
        shutil.rmtree(folder, ignore_errors=True)


def _resume_point(work_dir: Path, fingerprint: dict[str, str]) -> Path | None:
    """The newest complete Trainer checkpoint, if it was made with the same params, data and base model.
    Incomplete checkpoints (cut short by a kill or a full disk) are named, skipped and removed."""
    if not work_dir.is_dir():
        log.info("no checkpoint to resume from in %s: starting fresh", work_dir)
        return None
    saved = work_dir / FINGERPRINT
    try:
        same = json.loads(saved.read_text()) == fingerprint if saved.is_file() else True
    except (json.JSONDecodeError, UnicodeDecodeError):
        same = False
    if not same:
        log.warning("checkpoints in %s were made with other params/data: starting fresh", work_dir)
        return None
    checkpoints = _checkpoints(work_dir)
    complete = [folder for _, folder, done in checkpoints if done]
    for _, folder, done in checkpoints:
        if not done:
            log.warning("skipping incomplete checkpoint %s (its save was cut short); removing it", folder)
            shutil.rmtree(folder, ignore_errors=True)
    if not complete:
        log.info("no complete checkpoint in %s: starting fresh", work_dir)
        return None
    log.info("resuming from %s, the newest complete checkpoint", complete[-1])
    return complete[-1]


def _end_stale_run(tracker, run_id: str | None) -> None:
    """Mark the MLflow run of a killed training KILLED when a fresh start abandons its checkpoints."""
    if not run_id:
        return
    client = tracker._connect()
    if client is None:
        return
    found = tracker.find_run(client, run_id)
    if found is not None and found.info.status == "RUNNING":
        try:
            client.set_terminated(run_id, status="KILLED")
            log.info("MLflow run %s of the abandoned checkpoints marked KILLED", run_id)
        except Exception as err:  # noqa: BLE001 - tracking must not stop training (on_unavailable=skip)
            log.warning("could not mark MLflow run %s KILLED: %s", run_id, err)


_DISK_FULL_SIGNS = ("No space left", "inline_container", "file write failed", "Disk quota exceeded")


@contextlib.contextmanager
def _disk_errors(where):
    """A failed write (full disk: ENOSPC, or torch's ``[enforce fail at inline_container.cc]``) becomes one
    line naming the folder being written; the incomplete checkpoint is skipped by the next resume."""
    try:
        yield
    except (OSError, RuntimeError) as err:
        text = str(err)
        if getattr(err, "errno", None) in (errno.ENOSPC, errno.EDQUOT) or any(s in text for s in _DISK_FULL_SIGNS):
            first = text.strip().splitlines()[0] if text.strip() else type(err).__name__
            raise CheckpointWriteError(f"{where()}: writing failed (disk full?): {first[:200]}") from None
        raise


def _barrier() -> None:
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.barrier()


def _git() -> str:
    from cc_core.tracking import git_commit

    return git_commit()


class _null_run:
    """Non-zero ranks do not track."""

    def __enter__(self):
        from cc_core.tracking import _NullRun

        return _NullRun()

    def __exit__(self, *exc):
        return False
