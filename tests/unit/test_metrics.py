"""cc_core.metrics: the one scorer dispatch (kind × protocol), and both protocols on real items from
../shared/benchmarks."""

from __future__ import annotations

import dataclasses
import json
import re

import pytest

from cc_core.metrics import PROTOCOLS, ItemScore, check_protocol, score_item
from cc_core.scoring.choice import parse_options, score_choice
from cc_core.scoring.qa import score_qa
from cc_core.scoring.summary import rouge_l_standard, score_summary

NLI = ("1", "2", "3")
MC = ("A", "B", "C", "D")


def test_item_score_is_frozen() -> None:
    item = ItemScore(score=1.0, parsed="2", extra={})
    with pytest.raises(dataclasses.FrozenInstanceError):
        item.score = 0.0  # type: ignore[misc]


# ---------------------------------------------------------------------------- entry point


def test_protocols_and_errors():
    assert PROTOCOLS == ("lenient", "standard")
    assert check_protocol("standard") == "standard"
    with pytest.raises(ValueError, match=r"unknown scoring protocol 'strict'; valid: lenient, standard"):
        score_item("choice", "strict", "B", "B", lang="en", labels=MC)
    with pytest.raises(ValueError, match=r"unknown benchmark kind 'ranking'; valid: choice, qa, summary"):
        score_item("ranking", "standard", "B", "B", lang="en")


def test_score_item_dispatches_to_each_protocol():
    prompt = "Q\n(A) 0\n(B) 4\n(C) 2\n(D) 6\n\nIf you have to choose one of these options, your answer would be:"
    assert score_item("choice", "lenient", "4", "B", lang="en", prompt=prompt, labels=MC).score == 1.0  # option text
    assert score_item("choice", "standard", "4", "B", lang="en", prompt=prompt, labels=MC).score == 0.0
    # a bare string gold is one answer for both protocols
    assert score_item("qa", "standard", "3", "3.0", lang="en", benchmark="MKQA").score == 0.0
    assert score_item("qa", "lenient", "3", "3.0", lang="en", benchmark="MKQA").score == 1.0  # numbers canonicalised
    assert score_item("summary", "standard", "x y", "x y", lang="de") == ItemScore(1.0, "x y", {})
    assert score_item("summary", "lenient", "x y", "x y", lang="de") == score_summary("x y", "x y", "de")


# ---------------------------------------------------------------------------- real items from ../shared/benchmarks


def _lines(path):
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def _items(root, bench, prompt_dir, answer_dir, lang):
    prompts = [row["instruction"] for row in _lines(root / bench / prompt_dir / f"{lang}.json")]
    return list(zip(prompts, _lines(root / bench / answer_dir / f"{lang}.json")))


def test_real_xnli_option_text_answers_count_only_under_lenient(shared_benchmarks):
    # Answering with the gold option's word ("中立") is right for lenient and unparsed for standard,
    # on all 200 zh items; writing the label "(2)" is right for both.
    items = _items(shared_benchmarks, "XNLI", "split_sample", "ans_sample", "zh")
    assert len(items) == 200
    words = [parse_options(prompt, NLI)[gold] for prompt, gold in items]
    lenient = [score_choice(w, g, "zh", p, NLI).score for w, (p, g) in zip(words, items)]
    standard = [score_choice(w, g, "zh", p, NLI, "standard") for w, (p, g) in zip(words, items)]
    assert sum(lenient) == 200
    assert [s.parsed for s in standard] == [None] * 200
    assert sum(score_choice(f"({g})", g, "zh", p, NLI, "standard").score for p, g in items) == 200


def test_real_xquad_and_mkqa_items(shared_benchmarks):
    (prompt, gold), *_ = _items(shared_benchmarks, "XQuAD", "split", "ans", "en")
    assert gold == "308" and "gave up just 308 points, ranking sixth in the league" in prompt
    # [panthers, defense, gave, up, just, 308, points, ranking, sixth, in, league] (both "the" dropped)
    # vs [308]: P = 1/11, R = 1, F1 = (2/11)/(12/11) = 1/6
    sentence = "The Panthers defense gave up just 308 points, ranking sixth in the league"
    assert score_qa(sentence, gold, "en", "standard", "XQuAD").score == pytest.approx(1 / 6)
    mkqa_zh = _items(shared_benchmarks, "MKQA", "split_sample", "ans_sample", "zh")
    assert mkqa_zh[2][1] == ["保罗·泽丁"]
    assert score_qa("保罗泽丁", mkqa_zh[2][1], "zh", "standard", "MKQA").score == pytest.approx(8 / 9)
    assert score_qa("保罗泽丁", mkqa_zh[2][1], "zh").score == 1.0  # lenient drops "·"


def test_real_mkqa_numbers_are_strict(shared_benchmarks):
    # 10 of the 200 English items have a single-number gold written "N.0" ("3.0", "114194.0", ...):
    # answering the integer is exact for lenient (numbers canonicalised) and 0 for MKQA's script.
    items = _items(shared_benchmarks, "MKQA", "split_sample", "ans_sample", "en")
    numeric = [golds for _, golds in items if golds[0].endswith(".0") and golds[0][:-2].isdigit()]
    assert len(numeric) == 10
    for golds in numeric:
        integer = golds[0][:-2]
        assert score_qa(integer, golds, "en", "standard", "MKQA").extra["em"] == 0.0
        assert score_qa(integer, golds, "en").extra["em"] == 1.0


def test_real_xlsum_references(shared_benchmarks):
    from rouge_score import rouge_scorer

    refs = [gold for _, gold in _items(shared_benchmarks, "XLSum", "split_sample", "ans_sample", "ar")]
    assert len(refs) == 100
    default = rouge_scorer.RougeScorer(["rougeL"])
    # 90 of the 100 references have no ASCII letter or digit: rouge-score's default tokenizer
    # leaves nothing of them, so even a perfect copy scores 0 (the other 10 keep a year or a name).
    arabic_only = [r for r in refs if not re.search("[A-Za-z0-9]", r)]
    assert len(arabic_only) == 90
    assert {default.score(r, r)["rougeL"].fmeasure for r in arabic_only} == {0.0}
    assert {rouge_l_standard(r, r, "ar") for r in refs} == {1.0}
    ref = _items(shared_benchmarks, "XLSum", "split_sample", "ans_sample", "en")[0][1]
    assert ref.startswith("Beyonce's pregnancy announcement is now the most liked photo on Instagram")
    # ref: [beyonc, s, pregnanc, announc, is, now, the, most, like, photo, on, instagram, ever,
    #       surpass, the, 2016, record, in, just, 11, hour] = 21 tokens ("'" splits "beyonce's")
    # pred: [beyonc, s, pregnanc, photo, is, the, most, like, on, instagram] = 10 tokens
    # LCS beyonc-s-pregnanc-is-the-most-like-on-instagram = 9 -> F = 18/31
    pred = "Beyonce's pregnancy photo is the most liked on Instagram"
    assert rouge_l_standard(pred, ref, "en") == pytest.approx(18 / 31)
