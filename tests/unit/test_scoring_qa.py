"""cc_core.scoring.qa: token F1 and exact match for XQuAD and MKQA under both protocols.

The ``standard`` protocol's expected numbers are worked out by hand from the official scripts'
algorithms; the comment next to each shows the tokens and the arithmetic. Sources: SQuAD v1.1
``evaluate-v1.1.py`` (English XQuAD), facebookresearch/MLQA ``mlqa_evaluation_v1.py`` (other XQuAD
languages), apple/ml-mkqa ``mkqa_eval_util.py`` (MKQA).
"""

from __future__ import annotations

import pytest

from cc_core.metrics import ItemScore
from cc_core.scoring.common import normalize_answer
from cc_core.scoring.qa import mkqa_normalize, mlqa_normalize, qa_exact_match, qa_f1, qa_tokens, score_qa, squad_normalize


# ---------------------------------------------------------------------------- QA F1 / EM


def test_numbers_have_one_spelling() -> None:
    # MKQA golds write numbers as "3.0": "3" is right, "30" is not, and "3.5" is not "35"
    assert qa_exact_match("3", ["3.0"], "en") == 1.0
    assert qa_exact_match("30", ["3.0"], "en") == 0.0
    assert qa_f1("250", ["25.0"], "en") == 0.0
    assert normalize_answer("It costs 3.50.", "en") == "it costs 3.5"
    assert normalize_answer("1,000 Menschen", "de") == "1000 menschen"
    assert normalize_answer("2,5 km", "fr") == "2.5 km"
    assert normalize_answer("1.234,5", "de") == "1234.5"
    assert normalize_answer("٣٫٠", "ar") == "3"  # Arabic decimal separator, Eastern Arabic digits



def test_qa_f1_english_hand_computed() -> None:
    # pred [cat, sat] vs gold [cat, sat, down]: P = 2/2, R = 2/3, F1 = 0.8
    assert qa_f1("the cat sat", ["cat sat down"], "en") == pytest.approx(0.8)


def test_qa_f1_chinese_character_level() -> None:
    # pred [北, 京, 市] vs gold [北, 京]: P = 2/3, R = 1, F1 = 0.8
    assert qa_f1("北京市", ["北京"], "zh") == pytest.approx(0.8)


def test_qa_f1_takes_max_over_mkqa_golds() -> None:
    golds = ["Obama", "Barack Hussein Obama"]
    # vs "obama": P = 1/2, R = 1 -> 2/3; vs "barack hussein obama": P = 1, R = 2/3 -> 0.8
    assert qa_f1("Barack Obama", golds, "en") == pytest.approx(0.8)
    assert qa_f1("Obama", golds, "en") == pytest.approx(1.0)


def test_qa_f1_counts_repeated_tokens_once_per_occurrence() -> None:
    # [x, x, y] vs [x, y, z]: the bags share one x and one y, so P = R = 2/3
    assert qa_f1("x x y", ["x y z"], "de") == pytest.approx(2 / 3)


def test_qa_f1_empty_and_disjoint() -> None:
    assert qa_f1("", ["cat"], "en") == 0.0
    assert qa_f1("the", ["the"], "en") == 0.0  # nothing left after removing articles
    assert qa_f1("dog", ["cat"], "en") == 0.0
    assert qa_f1("cat", [], "en") == 0.0


def test_qa_f1_accepts_single_gold_string() -> None:
    assert qa_f1("Kawann Short", "Kawann Short", "en") == pytest.approx(1.0)


@pytest.mark.parametrize(
    ("prediction", "golds", "lang", "expected"),
    [
        ("The Beatles!", ["beatles"], "en", 1.0),
        ("Beatles band", ["beatles"], "en", 0.0),
        ("Luke Kuechly", ["Luke Kuechly."], "en", 1.0),
        ("20-18", ["20–18"], "en", 1.0),  # hyphen vs en dash
        ("paris", ["London", "PARIS"], "fr", 1.0),
        ("北京 市", ["北京市"], "zh", 1.0),  # spacing is irrelevant per character
        ("١٩٩٩.", ["1999"], "ar", 1.0),
        ("بول زيردين؟", ["بول زيردين"], "ar", 1.0),
        ("", [""], "en", 0.0),
    ],
)
def test_qa_exact_match(prediction: str, golds: list[str], lang: str, expected: float) -> None:
    assert qa_exact_match(prediction, golds, lang) == expected


def test_score_qa() -> None:
    item = score_qa("Paris, France", ["Paris", "paris france"], "en")
    assert item.score == pytest.approx(1.0)
    assert (item.parsed, item.extra) == ("paris france", {"em": 1.0})
    partial = score_qa("the city of Paris", ["Paris"], "en")
    # pred [city, of, paris] vs [paris]: P = 1/3, R = 1 -> F1 = 0.5
    assert partial.score == pytest.approx(0.5)
    assert partial.extra == {"em": 0.0}
    empty = score_qa("", ["Paris"], "en")
    assert (empty.score, empty.parsed, empty.extra) == (0.0, None, {"em": 0.0})


# ---------------------------------------------------------------------------- QA: normalisation


def test_squad_normalize_is_ascii_punctuation_and_english_articles():
    assert squad_normalize("The  Cat's hat!") == "cats hat"
    assert squad_normalize("Kawann Short’s") == "kawann short’s"  # U+2019 is not in string.punctuation


def test_mlqa_normalize_per_language():
    assert mlqa_normalize("«Die Verteidigung», der Panthers", "de") == "verteidigung panthers"
    assert mlqa_normalize("Los Angeles y la ciudad", "es") == "angeles y ciudad"
    assert mlqa_normalize("những cái bàn của tôi", "vi") == "bàn tôi"
    # Arabic: MLQA replaces every "ال" by a space, also inside words ("المال" -> " م ")
    assert mlqa_normalize("المال", "ar") == "م"
    # zh: each ideograph in [\u4e00-\u9fa5] alone, other runs split on spaces (full-width digits stay a run)
    assert mlqa_normalize("黑豹队 (NFL) ２０１７年", "zh") == "黑 豹 队 nfl ２０１７ 年"
    assert mlqa_normalize("The answer", "hi") == "the answer"  # hi: no articles
    # languages MLQA lacks: no articles; th per character (as MKQA segments it)
    assert mlqa_normalize("«Пэнтерс»", "ru") == "пэнтерс"
    assert mlqa_normalize("กรุง เทพ", "th") == "ก ร ุ ง เ ท พ"


def test_mkqa_normalize_per_language():
    assert mkqa_normalize("3.0", "en") == "30"  # ASCII "." removed: no number handling
    assert mkqa_normalize("保罗·泽丁", "zh") == "保 罗 · 泽 丁"  # "·" (U+00B7) is not ASCII: it stays, per character
    assert mkqa_normalize("iPhone 15", "ja") == "i p h o n e 1 5"  # mixed segmentation = every character
    assert mkqa_normalize("Die Beatles", "de") == "beatles"
    assert mkqa_normalize("O Brasil e a Argentina", "pt") == "brasil e argentina"
    assert mkqa_normalize("lecture", "fr") == "cture"  # the script's fr pattern has no closing \b
    assert mkqa_normalize("서울특별시 입니다", "ko") == "서울특별시 입니다"


# ---------------------------------------------------------------------------- QA: hand-computed F1/EM


@pytest.mark.parametrize(
    ("output", "gold", "lang", "f1", "em"),
    [
        # en, SQuAD v1.1: [panthers, defense, gave, up, 308, points] vs [308, points]:
        # P = 2/6, R = 2/2, F1 = 2·(1/3)·1/(1/3 + 1) = 0.5
        ("The Panthers' defense gave up 308 points.", "308 points", "en", 0.5, 0.0),
        # en: "’" stays in SQuAD's normalisation: [kawann, short’s] vs [kawann, short]: P = R = 1/2 -> 0.5
        ("Kawann Short’s", "Kawann Short", "en", 0.5, 0.0),
        # de, MLQA articles die/der removed: [verteidigung, panthers] vs [panthers]: P = 1/2, R = 1 -> 2/3
        ("Die Verteidigung der Panthers", "der Panthers", "de", 2 / 3, 0.0),
        # ar, MLQA: "ال" removed: [ولايات, متحدة] on both sides -> 1.0, exact
        ("الولايات المتحدة", "ولايات متحدة", "ar", 1.0, 1.0),
        # zh, mixed segmentation: [黑,豹,队,丢,了,308,分] vs [308,分]: P = 2/7, R = 1, F1 = (4/7)/(9/7) = 4/9
        ("黑豹队丢了308分", "308分", "zh", 4 / 9, 0.0),
        # zh: full-width "２０１７" is not "2017" (no NFKC): [２０１７, 年] vs [2017, 年]: P = R = 1/2 -> 0.5
        ("２０１７年", "2017年", "zh", 0.5, 0.0),
        # th, per character (marks are characters too): 7 of pred in gold's 13 -> P = 1, R = 7/13, F1 = 14/20
        ("กรุงเทพ", "กรุงเทพมหานคร", "th", 0.7, 0.0),
        # ru: «» are Unicode punctuation (Pi/Pf), removed -> exact
        ("«Пэнтерс»", "Пэнтерс", "ru", 1.0, 1.0),
    ],
)
def test_xquad_hand_computed(output, gold, lang, f1, em):
    item = score_qa(output, gold, lang, "standard", "XQuAD")
    assert item.score == pytest.approx(f1)
    assert item.extra == {"em": em}


@pytest.mark.parametrize(
    ("output", "golds", "lang", "f1", "em"),
    [
        # en: "3.0" -> "30" and [answer, is, 3] share nothing -> 0; only "3.0" itself matches
        ("The answer is 3.", ["3.0"], "en", 0.0, 0.0),
        ("3.0", ["3.0"], "en", 1.0, 1.0),
        # zh, per character: [保,罗,泽,丁] vs [保,罗,·,泽,丁]: P = 4/4, R = 4/5, F1 = 1.6/1.8 = 8/9
        ("保罗泽丁", ["保罗·泽丁"], "zh", 8 / 9, 0.0),
        # ja, per character: [東,京,タ,ワ,ー,で,す] vs [東,京,タ,ワ,ー]: P = 5/7, R = 1, F1 = (10/7)/(12/7) = 5/6
        ("東京タワーです", ["東京タワー"], "ja", 5 / 6, 0.0),
        # ar: [ولايات, متحدة, أمريكية] vs [ولايات, متحدة]: P = 2/3, R = 1, F1 = (4/3)/(5/3) = 0.8
        ("الولايات المتحدة الأمريكية", ["الولايات المتحدة"], "ar", 0.8, 0.0),
        # ko, whitespace: [서울특별시, 입니다] vs [서울특별시]: P = 1/2, R = 1 -> 2/3
        ("서울특별시 입니다", ["서울특별시"], "ko", 2 / 3, 0.0),
        # de: article "die" removed -> exact; max over golds picks the second
        ("Die Beatles", ["The Rolling Stones", "Beatles"], "de", 1.0, 1.0),
        # th, per character, exact
        ("กรุงเทพ", ["กรุงเทพ"], "th", 1.0, 1.0),
        # no answer: both empty -> F1 1 (MKQA's rule); one side empty -> 0
        ("", [""], "en", 1.0, 1.0),
        ("", ["Paul"], "en", 0.0, 0.0),
        ("x", [""], "en", 0.0, 0.0),
        # yes/no golds are English words in every language: "No." matches, "不是" ([不, 是] vs [n, o]) does not
        ("No.", ["no"], "en", 1.0, 1.0),
        ("不是", ["no"], "zh", 0.0, 0.0),
    ],
)
def test_mkqa_hand_computed(output, golds, lang, f1, em):
    item = score_qa(output, golds, lang, "standard", "MKQA")
    assert item.score == pytest.approx(f1)
    assert item.extra == {"em": em}


def test_score_qa_standard_parsed_tokens_and_errors():
    assert score_qa("The Beatles!", "beatles", "en", "standard", "xquad") == ItemScore(1.0, "beatles", {"em": 1.0})
    assert score_qa("...", "x", "en", "standard", "XQuAD").parsed is None
    assert qa_tokens("黑豹队308分", "zh", "MKQA") == ["黑", "豹", "队", "3", "0", "8", "分"]
    assert qa_tokens("黑豹队308分", "zh", "XQuAD") == ["黑", "豹", "队", "308", "分"]
    with pytest.raises(ValueError, match="valid: XQuAD, MKQA"):
        score_qa("x", ["x"], "en", "standard", "TyDiQA")
    with pytest.raises(ValueError, match="at least one gold"):
        score_qa("x", [], "en", "standard", "MKQA")
