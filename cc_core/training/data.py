"""Training data: records → token features, and the collators that batch them.

    features, stats = encode_records(records, tokenizer, cutoff_len=1024, method="cc")
    collator = make_collator(params.train, pad_token_id(tokenizer))   # packed or padded batches

Truncation (``train.truncation``): ``keep_prompt`` keeps the prompt whole and cuts the response (an
example whose prompt fills the cutoff is dropped; the English prompt is cut from the left of its user
text); ``llama_factory`` is LLaMA-Factory's ``infer_seqlen`` as the authors ran it (``infer_seqlen``
below). An anchor of -1 (the authors' rule found no anchor, e.g. the prompt lost its assistant header)
is the last column of the padded batch, as in their code; packed, the example's own last token
(the same losses and gradients: an injection there reaches no label).

``CCCollator`` right-pads one example per row. ``PackedCollator`` (``train.packing``, the default)
concatenates a step's examples into rows chosen by ``pack_layout`` (first-fit decreasing, at the
row width whose rectangle has the fewest cells); positions restart per example and no attention
mask is passed, so attention stays inside each example. Both carry the anchors the CC step needs.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch.utils.data import Dataset

from cc_core.config import TrainParams
from cc_core.io import InputError
from cc_core.prompts import (AnchorRule, EncodedExample, encode_example, encode_pair, encode_prompt, pad_sequences,
                             pad_token_id)

TRUNCATIONS = ("keep_prompt", "llama_factory")


@dataclass
class EncodeStats:
    records: int = 0
    kept: int = 0
    dropped_truncated: int = 0  # response cut away entirely by cutoff_len
    response_truncated: int = 0  # response partly cut
    english_truncated: int = 0  # English prompt cut (keep_prompt: from the left; llama_factory: from the right)
    dropped_over_budget: int = 0  # longer than train.pack_max_tokens: cannot be packed
    prompt_truncated: int = 0  # llama_factory: the prompt cut from the right
    anchor_lost: int = 0  # no anchor found in the (cut) prompt: -1, the batch's last column
    english_anchor_lost: int = 0  # the same for the English prompt (cut, or emptied)
    english_emptied: int = 0  # llama_factory: the English prompt got no token (x + y fill the cutoff)


def infer_seqlen(source_len: int, target_len: int, cutoff_len: int) -> tuple[int, int]:
    """LLaMA-Factory's ``infer_seqlen`` (data/processors/processor_utils.py, the version the authors ran):
    the (prompt, response) lengths kept under ``cutoff_len``. A short response (under half the cutoff)
    is kept whole and the prompt cut; else a short prompt is kept and the response cut; else both are
    cut in proportion to their lengths. Both are cut from the right."""
    if target_len * 2 < cutoff_len:
        max_target = cutoff_len
    elif source_len * 2 < cutoff_len:
        max_target = cutoff_len - source_len
    else:
        max_target = int(cutoff_len * (target_len / (source_len + target_len)))
    target = min(max_target, target_len)
    source = min(max(cutoff_len - target, 0), source_len)
    return source, target


@dataclass(frozen=True)
class LlamaFactoryExample:
    example: EncodedExample
    english: list[int] | None  # the English prompt's kept ids (one padding token when none is kept); None: SFT
    english_kept: int = 0  # English prompt tokens kept
    english_total: int = 0  # ... of


def encode_llama_factory(tokenizer, instruction: str, response: str, instruction_en: str | None, cutoff_len: int,
                         rule: AnchorRule | None = None) -> LlamaFactoryExample:
    """The authors' truncation (LLaMA-Factory's data/processors/supervised.py). The prompt and response are
    cut by ``infer_seqlen``; the English prompt (a prompt with an empty response there) gets
    ``cutoff_len - len(x + y)`` tokens, cut from the right: none when the example fills the cutoff, which
    any cut example does. Anchors come from ``rule`` on what is kept (-1: none found). An English prompt
    cut to nothing is one padding token: their padded batch had a row of padding there."""
    rule = rule or AnchorRule()
    prompt_ids, response_ids = encode_pair(tokenizer, instruction, response)
    source, target = infer_seqlen(len(prompt_ids), len(response_ids), cutoff_len)
    ids = prompt_ids[:source] + response_ids[:target]
    example = EncodedExample(ids, [-100] * source + response_ids[:target], rule.locate(ids, source),
                             target < len(response_ids), source < len(prompt_ids))
    if instruction_en is None:
        return LlamaFactoryExample(example, None)
    en_full = encode_prompt(tokenizer, instruction_en).input_ids
    kept, _ = infer_seqlen(len(en_full), 0, cutoff_len - len(ids))
    return LlamaFactoryExample(example, en_full[:kept] or [pad_token_id(tokenizer)], kept, len(en_full))


def encode_records(records, tokenizer, cutoff_len: int, method: str, on_truncated: str = "drop",
                   where: str = "train.jsonl", pack_budget: int | None = None, truncation: str = "keep_prompt",
                   rule: AnchorRule | None = None) -> tuple[list[dict[str, Any]], EncodeStats]:
    """Tokenize records into training features (lists of ids; padding happens in the collator).
    ``pack_budget``: the packed row's token budget; an example (or its English prompt) longer than it
    cannot be packed and is dropped and counted (``on_truncated: error``: an error). ``truncation``:
    ``keep_prompt`` | ``llama_factory`` (module docstring). ``rule``: where the anchors are (default:
    the last prompt token)."""
    if truncation not in TRUNCATIONS:
        raise ValueError(f"train.truncation={truncation!r}; valid: {', '.join(TRUNCATIONS)}")
    rule = rule or AnchorRule()
    stats = EncodeStats(records=len(records))
    features = []
    for index, record in enumerate(records):
        factory = None
        if truncation == "llama_factory":
            factory = encode_llama_factory(tokenizer, record.instruction, record.output,
                                           record.instruction_en if method == "cc" else None, cutoff_len, rule)
            # no label left (a prompt far longer than the cutoff): LLaMA-Factory keeps it, for no loss at all
            example = factory.example if any(label != -100 for label in factory.example.labels) else None
        else:
            example = encode_example(tokenizer, record.instruction, record.output, cutoff_len, rule)
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
        stats.prompt_truncated += example.prompt_truncated
        stats.anchor_lost += example.anchor < 0
        feature: dict[str, Any] = {"input_ids": example.input_ids, "labels": example.labels, "anchor": example.anchor}
        if method == "cc":
            if factory is not None:
                english = factory.english
                stats.english_truncated += factory.english_kept < factory.english_total
                stats.english_emptied += factory.english_kept == 0
            else:
                encoded = encode_prompt(tokenizer, record.instruction_en,
                                        max_len=min(cutoff_len, pack_budget or cutoff_len))
                stats.english_truncated += encoded.truncated
                english = encoded.input_ids
            en_anchor = rule.locate(english) if factory is None or factory.english_kept else -1
            stats.english_anchor_lost += en_anchor < 0
            feature.update(en_input_ids=english, en_anchor=en_anchor)
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
            # -1 (no anchor found): the batch's last column, as the authors' hidden_states[k, -1]
            batch.update(anchor=torch.tensor([f["anchor"] % ids.shape[1] for f in features]), en_input_ids=en_ids,
                         en_attention_mask=en_mask,
                         en_anchor=torch.tensor([f["en_anchor"] % en_ids.shape[1] for f in features]),
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


def pack_batch(seqs: list[list[int]], anchors: list[int], labels: list[list[int]] | None, budget: int | None,
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
        # -1 (no anchor found): the example's own last token (module docstring)
        main = pack_batch([f["input_ids"] for f in features], [f["anchor"] % len(f["input_ids"]) for f in features],
                          [f["labels"] for f in features], self.budget, self.pad_id)
        batch: dict[str, Any] = {"input_ids": main["input_ids"], "position_ids": main["position_ids"],
                                 "labels": main["labels"], "token_count": sum(len(f["input_ids"]) for f in features)}
        if "en_input_ids" in features[0]:
            en = pack_batch([f["en_input_ids"] for f in features],
                            [f["en_anchor"] % len(f["en_input_ids"]) for f in features], None, self.budget, self.pad_id)
            batch.update(anchor=main["anchor"], anchor_row=main["anchor_row"], en_input_ids=en["input_ids"],
                         en_position_ids=en["position_ids"], en_anchor=en["anchor"], en_anchor_row=en["anchor_row"],
                         en_token_count=sum(len(f["en_input_ids"]) for f in features))
        return batch


def make_collator(tp: TrainParams, pad_id: int):
    return PackedCollator(pad_id, tp.pack_max_tokens) if tp.packing else CCCollator(pad_id)
