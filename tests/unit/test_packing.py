"""Packed batches (train.packing) compute exactly what padded batches compute: per-example losses and
every parameter gradient, for SFT and CC, with and without gradient checkpointing, on tiny
llama / qwen2 / mistral (fp32, CPU); and every example keeps its own anchors at any offset."""

from __future__ import annotations

import copy
import random

import pytest
import torch
import torch.nn.functional as F

from cc_core.data.records import Record
from cc_core.modeling import CCTuningModel, capture_ffn
from cc_core.training.data import CCCollator, PackedCollator, encode_records, pack_layout, pack_rows

PAIRS = [
    ("Was ist 2+2?", "Vier.", "What is 2+2?"),
    ("日本の首都は？", "東京です。首都は東京。", "What is the capital of Japan?"),
    ("Explique la photosynthèse en une phrase, s'il te plaît.", "Les plantes font du sucre avec la lumière.",
     "Explain photosynthesis in one sentence, please."),
    ("Сколько ног у паука?", "Восемь.", "How many legs does a spider have?"),
]


def _features(tokenizer, method: str):
    records = [Record(f"r{i}", "de", x, y, x_en) for i, (x, y, x_en) in enumerate(PAIRS)]
    features, _ = encode_records(records, tokenizer, 256, method)
    return features


def _per_example_losses(logits: torch.Tensor, labels: torch.Tensor, spans: list[tuple[int, int, int]]):
    """Mean next-token loss of each example from (row, start, length) spans of a batch."""
    losses = []
    for row, start, length in spans:
        lg, lb = logits[row, start:start + length - 1], labels[row, start + 1:start + length]
        losses.append(F.cross_entropy(lg.float(), lb, ignore_index=-100))
    return torch.stack(losses)


def _spans_padded(features):
    return [(i, 0, len(f["input_ids"])) for i, f in enumerate(features)]


def _spans_packed(features, batch):
    spans = []
    for i, f in enumerate(features):
        row, anchor = int(batch["anchor_row"][i]), int(batch["anchor"][i]) if "anchor" in batch else None
        start = anchor - f["anchor"] if anchor is not None else None
        spans.append((row, start, len(f["input_ids"])))
    return spans


def _run(model, batch, method: str, spans, seed: int = 0):
    torch.manual_seed(seed)  # the same Gumbel noise for both layouts
    model.zero_grad(set_to_none=True)
    inputs = {k: v for k, v in batch.items() if not k.endswith("token_count")}
    if method == "sft":
        inputs = {k: inputs[k] for k in ("input_ids", "attention_mask", "position_ids", "labels") if k in inputs}
    out = model(**inputs)
    out.loss.backward()
    per_example = _per_example_losses(out.logits.detach(), batch["labels"], spans)
    grads = {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.grad is not None}
    return out.loss.detach(), per_example, grads, getattr(out, "choice", None)


def _sft_spans_packed(features, collator):
    batch = collator(features)
    layout = pack_layout([len(f["input_ids"]) for f in features], collator.budget)
    spans = [None] * len(features)
    for r, row in enumerate(layout):
        offset = 0
        for i in row:
            spans[i] = (r, offset, len(features[i]["input_ids"]))
            offset += len(features[i]["input_ids"])
    return batch, spans


# budgets: the default (at most twice the longest example), two rows of two examples, one row of all four
CASES = [("llama", b) for b in (None, 130, 1000)] + [("qwen2", 130), ("mistral", 130)]


@pytest.mark.parametrize(("arch", "budget"), CASES)
@pytest.mark.parametrize("method", ["sft", "cc"])
@pytest.mark.parametrize("checkpointing", [False, True])
def test_packed_batch_equals_padded_batch(tiny_factory, arch, method, checkpointing, budget):
    base, tok = tiny_factory(arch, seed=4)
    features = _features(tok, method)
    padded = CCCollator(tok.pad_token_id)(features)
    packer = PackedCollator(tok.pad_token_id, budget)
    packed, spans_packed = _sft_spans_packed(features, packer)
    assert packed["input_ids"].shape[0] == len(pack_layout([len(f["input_ids"]) for f in features], budget))
    if budget:
        assert packed["input_ids"].shape[0] < len(features)  # several examples share a row
    results = []
    for batch, spans in ((padded, _spans_padded(features)), (packed, spans_packed)):
        model = copy.deepcopy(base).train()
        model.config.use_cache = False  # as cc_core.train does (a cache also turns off transformers' packed masks)
        if checkpointing:
            model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
        torch.manual_seed(1)
        net = CCTuningModel(model, decision_mode="gumbel", detach_english=False) if method == "cc" else model
        results.append(_run(net, batch, method, spans))
    (loss_a, per_a, grads_a, choice_a), (loss_b, per_b, grads_b, choice_b) = results
    torch.testing.assert_close(per_a, per_b, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(loss_a, loss_b, rtol=1e-5, atol=1e-5)
    assert grads_a.keys() == grads_b.keys() and len(grads_a) > 10
    for name in grads_a:
        torch.testing.assert_close(grads_a[name], grads_b[name], rtol=1e-4, atol=1e-6, msg=name)
    if method == "cc":
        torch.testing.assert_close(choice_a, choice_b)  # the Decision Maker saw one row per example, alike


@pytest.mark.parametrize("offset_tokens", [0, 1, 7, 33])
def test_anchors_are_right_at_any_offset_in_a_row(tiny_factory, offset_tokens):
    """An example's English anchor after `offset_tokens` of another example reads what the example alone reads."""
    model, tok = tiny_factory("llama", seed=2)
    features = _features(tok, "cc")
    filler = {"input_ids": list(range(5, 5 + offset_tokens)) or [5], "labels": [-100] * max(offset_tokens, 1),
              "anchor": max(offset_tokens, 1) - 1, "en_input_ids": list(range(5, 5 + offset_tokens)) or [5],
              "en_anchor": max(offset_tokens, 1) - 1}
    target = features[2]
    packed = PackedCollator(tok.pad_token_id, 4096)([filler, target])
    assert int(packed["en_anchor"][1]) == max(offset_tokens, 1) + target["en_anchor"]
    with torch.no_grad():
        alone = capture_ffn(model, torch.tensor([target["en_input_ids"]]), None, torch.tensor([target["en_anchor"]]))
        inside = capture_ffn(model, packed["en_input_ids"], None, packed["en_anchor"], rows=packed["en_anchor_row"],
                             position_ids=packed["en_position_ids"])
    torch.testing.assert_close(inside[1], alone[0], rtol=1e-5, atol=1e-5)
    assert packed["input_ids"][0, packed["anchor"][1]] == target["input_ids"][target["anchor"]]


def test_pack_rows_first_fit_decreasing():
    assert pack_rows([5, 3, 8, 2], None) == [[2], [0, 1], [3]]  # rows no wider than the longest (8)
    assert pack_rows([5, 3, 8, 2], 100) == [[0, 1, 2, 3]]
    assert pack_rows([5, 3, 8, 2], 10) == [[1, 2], [0, 3]] or pack_rows([5, 3, 8, 2], 10) == [[2, 3], [0, 1]]
    rows = pack_rows([5, 3, 8, 2], 10)
    assert sorted(i for row in rows for i in row) == [0, 1, 2, 3]
    assert all(sum([5, 3, 8, 2][i] for i in row) <= 10 for row in rows)
    with pytest.raises(ValueError, match="pack_max_tokens=4"):
        pack_rows([5], 4)


def _cells(lengths, rows):
    return len(rows) * max(sum(lengths[i] for i in row) for row in rows)


@pytest.mark.parametrize("seed", range(20))
def test_pack_layout_has_the_fewest_cells_of_any_width_up_to_the_cap(seed):
    """Exhaustively: no first-fit-decreasing width between the longest example and the cap gives a
    smaller rectangle than the chosen layout; every example is placed once; no row exceeds the cap."""
    rng = random.Random(seed)
    lengths = [rng.randint(20, 200) for _ in range(rng.randint(2, 24))]
    for cap in (None, max(lengths), max(lengths) + 57, 3 * max(lengths)):
        rows = pack_layout(lengths, cap)
        limit = cap or 2 * max(lengths)  # the default: twice the longest example
        assert sorted(i for row in rows for i in row) == list(range(len(lengths)))
        assert all(sum(lengths[i] for i in row) <= limit for row in rows)
        best = min(_cells(lengths, pack_rows(lengths, w)) for w in range(max(lengths), limit + 1))
        assert _cells(lengths, rows) == best


def test_pack_layout_beats_rows_as_wide_as_the_longest_example():
    lengths = [150, 140, 130, 120, 60, 50, 40, 30]  # longest-width rows leave 150-140, 150-130-... unused
    assert _cells(lengths, pack_layout(lengths, None)) < _cells(lengths, pack_rows(lengths, None))
    assert pack_layout(lengths, sum(lengths)) == [list(range(len(lengths)))]  # the whole batch fits: one row
    assert pack_layout([7], None) == [[0]]
    rng = random.Random(1)
    many = [rng.randint(100, 1000) for _ in range(64)]  # a width range wider than the candidate grid
    rows = pack_layout(many, 16384)
    assert _cells(many, rows) <= _cells(many, pack_rows(many, None))
    assert all(sum(many[i] for i in row) <= 16384 for row in rows)
    with pytest.raises(ValueError, match="pack_max_tokens=100"):
        pack_layout([101, 5], 100)


def test_examples_over_the_pack_budget_are_dropped_and_counted(smol_tokenizer):
    from cc_core.io import InputError

    records = [Record(f"r{i}", "de", x, y, x_en) for i, (x, y, x_en) in enumerate(PAIRS)]
    kept, stats = encode_records(records, smol_tokenizer, 256, "sft", pack_budget=40)
    assert stats.dropped_over_budget >= 1 and stats.kept == len(records) - stats.dropped_over_budget
    assert all(len(f["input_ids"]) <= 40 for f in kept)
    with pytest.raises(InputError, match="more than train.pack_max_tokens=40"):
        encode_records(records, smol_tokenizer, 256, "sft", on_truncated="error", pack_budget=40)
