"""Unit tests for cc_core.metrics_standard: the ``standard`` scoring protocol.

Every expected number is worked out by hand from the official scripts' algorithms; the comment
next to it shows the tokens and the arithmetic. Sources: SQuAD v1.1 ``evaluate-v1.1.py``
(English XQuAD), facebookresearch/MLQA ``mlqa_evaluation_v1.py`` (other XQuAD languages),
apple/ml-mkqa ``mkqa_eval_util.py`` (MKQA), csebuetnlp/xl-sum ``multilingual_rouge_scoring``
(XLSum tokenisation and stemming; ROUGE-L itself comes from the rouge-score package).
For ROUGE-L, F = 2PR/(P+R) with P = LCS/|prediction|, R = LCS/|reference|, i.e. 2·LCS/(|p|+|r|).
Snowball stems quoted in comments are NLTK's outputs for those words.
"""

from __future__ import annotations

import json
import re

import pytest

from cc_core import metrics
from cc_core.metrics import ItemScore
from cc_core.metrics_standard import (
    PROTOCOLS,
    XLSumTokenizer,
    check_protocol,
    extract_choice_standard,
    mkqa_normalize,
    mlqa_normalize,
    qa_tokens,
    rouge_l_standard,
    score_choice_standard,
    score_item,
    score_qa_standard,
    score_summary_standard,
    squad_normalize,
)

NLI = ("1", "2", "3")
MC = ("A", "B", "C", "D")


# ---------------------------------------------------------------------------- strict choice extraction


@pytest.mark.parametrize(
    ("output", "labels", "expected"),
    [
        ("(2)", NLI, "2"),
        ("2", NLI, "2"),
        ("B", MC, "B"),
        ("(B)", MC, "B"),
        ("Answer: B", MC, "B"),
        ("The answer is (B).", MC, "B"),
        ("**B**", MC, "B"),
        ("B) 4", MC, "B"),
        ("[C]", MC, "C"),
        ("答案：B", MC, "B"),  # "：" is punctuation, so B stands alone
        ("答案是（B）", MC, "B"),  # full-width brackets are fine, the label itself is ASCII
        ("(B)입니다", MC, "B"),
        ("الإجابة هي (2)", NLI, "2"),
        ("उत्तर: (2)", NLI, "2"),
        ("Jibu lako litakuwa: (3)", NLI, "3"),
        ("(1) is wrong, (2) is right", NLI, "1"),  # first label wins, no answer-marker priority
        ("The answer is not 1, it is 2", NLI, "1"),  # no negation handling
        ("A cat is sleeping", MC, "A"),  # a standalone capital A is the label A
        ("The value is 2.5, so 3", NLI, "3"),  # "2" and "5" belong to the number 2.5
        ("2.", NLI, "2"),  # a sentence-final period is not a decimal point
    ],
)
def test_extract_choice_standard_accepts_standalone_labels(output, labels, expected):
    assert extract_choice_standard(output, labels) == expected


@pytest.mark.parametrize(
    ("output", "labels"),
    [
        ("", NLI),
        ("Neutral", NLI),  # option words are not read
        ("中立", NLI),
        ("option two", NLI),
        ("b", MC),  # lowercase letters are not labels
        ("The answer is b.", MC),
        ("答案是B", MC),  # glued to a CJK letter: not standalone
        ("B입니다", MC),  # glued to Hangul
        ("（２）", NLI),  # full-width digit: no Unicode normalisation
        ("Ответ: \u0412", MC),  # Cyrillic Ve, a look-alike of B
        ("الإجابة هي (٢)", NLI),  # Arabic-Indic digit
        ("उत्तर: (२)", NLI),  # Devanagari digit
        ("The value is 2.5", NLI),
        ("I became a fan in 2011", NLI),
        ("Take B12 vitamins", MC),
        ("Abstain. Decide later.", MC),
        ("2nd option", NLI),
    ],
)
def test_extract_choice_standard_rejects_everything_else(output, labels):
    assert extract_choice_standard(output, labels) is None


def test_score_choice_standard_values():
    assert score_choice_standard("The answer is (B).", "B", "en", "", MC) == ItemScore(1.0, "B", {})
    assert score_choice_standard("(3) Contradict", " 2 ", "en", "", NLI) == ItemScore(0.0, "3", {})
    assert score_choice_standard("Neutral", "2", "en", "", NLI) == ItemScore(0.0, None, {})
    assert score_choice_standard(None, "2", "en", "", NLI) == ItemScore(0.0, None, {})  # type: ignore[arg-type]


def test_standard_and_lenient_disagree_where_documented():
    prompt = ("前提：P\n假设：H\n\n你认为前提和假设之间的关系是什么？\n\n(1) 蕴涵\n(2) 中立\n(3) 矛盾\n\n"
              "如果你必须选择其中一个选项，你的答案是：")
    for output in ("中立", "答案是2", "（２）"):
        assert metrics.score_choice(output, "2", "zh", prompt, NLI).score == 1.0
        assert score_choice_standard(output, "2", "zh", prompt, NLI).score == 0.0


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
    item = score_qa_standard(output, gold, lang, "XQuAD")
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
    item = score_qa_standard(output, golds, lang, "MKQA")
    assert item.score == pytest.approx(f1)
    assert item.extra == {"em": em}


def test_score_qa_standard_parsed_tokens_and_errors():
    assert score_qa_standard("The Beatles!", "beatles", "en", "xquad") == ItemScore(1.0, "beatles", {"em": 1.0})
    assert score_qa_standard("...", "x", "en", "XQuAD").parsed is None
    assert qa_tokens("黑豹队308分", "zh", "MKQA") == ["黑", "豹", "队", "3", "0", "8", "分"]
    assert qa_tokens("黑豹队308分", "zh", "XQuAD") == ["黑", "豹", "队", "308", "分"]
    with pytest.raises(ValueError, match="valid: XQuAD, MKQA"):
        score_qa_standard("x", ["x"], "en", "TyDiQA")
    with pytest.raises(ValueError, match="at least one gold"):
        score_qa_standard("x", [], "en", "MKQA")


# ---------------------------------------------------------------------------- XLSum: tokenizer and ROUGE-L


def test_xlsum_tokenizer_rules():
    tok = XLSumTokenizer("sw", stem=False)  # sw: no stemmer in XL-Sum
    # lowercase; punctuation separates and disappears; letters and digits split apart
    assert tok.tokenize("Covid19: watu 2,000 wamekufa!") == ["covid", "19", "watu", "2", "000", "wamekufa"]
    # numbers keep their N* characters ("6½"); symbols are tokens; format characters vanish
    assert tok.tokenize("6½ €5 a\u200cb") == ["6½", "€", "5", "ab"]
    # combining marks after a space: pyonmttok's escaped space
    assert tok.tokenize("ab \u0301c") == ["ab", "\uff050020\u0301", "c"]
    assert XLSumTokenizer("zh").tokenize("我爱iPhone 15！") == ["我", "爱", "iphone", "15"]
    assert XLSumTokenizer("ja").tokenize("東京タワーは2020年") == ["東", "京", "タ", "ワ", "ー", "は", "2020", "年"]
    # th: one token per character, vowel/tone marks kept with their consonant
    assert XLSumTokenizer("th").tokenize("วิ่ง") == ["วิ่", "ง"]
    # stemming only for tokens longer than 3 characters: "rues" -> "ru", "rue" stays
    assert XLSumTokenizer("fr").tokenize("la rue, les rues") == ["la", "rue", "les", "ru"]


def test_xlsum_tokenizer_arabic_stems_do_not_depend_on_order():
    tok = XLSumTokenizer("ar")
    alone = tok.tokenize("يدعو")
    tok.tokenize("تدعو الحكومة")  # NLTK's ArabicStemmer would carry a flag from these words
    assert tok.tokenize("يدعو") == alone


@pytest.mark.parametrize(
    ("prediction", "reference", "lang", "stem", "expected"),
    [
        # en, Snowball: pred [the, polic, were, arrest, a, man, on, friday] (8),
        # ref [polic, arrest, the, man, on, friday] (6); LCS polic-arrest-man-on-friday = 5 -> 10/14
        ("The police were arresting a man on Friday", "Police arrested the man on Friday.", "en", True, 10 / 14),
        # same without stemming: LCS police-man-on-friday = 4 -> 8/14
        ("The police were arresting a man on Friday", "Police arrested the man on Friday.", "en", False, 8 / 14),
        # ar: pred [أسعار, النفط, ارتفعت, بشكل, كبير] (5), ref [ارتفعت, أسعار, النفط, اليوم] (4);
        # LCS أسعار-النفط = 2 -> 4/9. Stemmed (اسعار, نفط, ارتفع, شكل, كبير / ارتفع, اسعار, نفط, يوم) the same
        ("أسعار النفط ارتفعت بشكل كبير", "ارتفعت أسعار النفط اليوم", "ar", False, 4 / 9),
        ("أسعار النفط ارتفعت بشكل كبير", "ارتفعت أسعار النفط اليوم", "ar", True, 4 / 9),
        # hi, XL-Sum's Hindi stemmer: कहानियों -"ियों"-> कहान, कहानियाँ -"ियाँ"-> कहान, सुनती -"ती"-> सुन,
        # हैं and को are too short; [कहान, को, सुन] vs [कहान, सुन, हैं]: LCS 2 -> 4/6
        ("कहानियों को सुनती", "कहानियाँ सुनती हैं", "hi", True, 4 / 6),
        # unstemmed only सुनती is shared: LCS 1 -> 2/6
        ("कहानियों को सुनती", "कहानियाँ सुनती हैं", "hi", False, 2 / 6),
        # ru, Snowball: цена/цены -> цен, нефти/нефть -> нефт, выросла/выросли -> выросл;
        # [цен, нефт, выросл] vs [цен, на, нефт, выросл]: LCS 3 -> 6/7; unstemmed nothing is shared
        ("Цена нефти выросла", "Цены на нефть выросли", "ru", True, 6 / 7),
        ("Цена нефти выросла", "Цены на нефть выросли", "ru", False, 0.0),
        # zh, one token per ideograph: [我,爱,吃,苹,果] vs [我,喜,欢,吃,苹,果]: LCS 4 -> 8/11
        ("我爱吃苹果", "我喜欢吃苹果", "zh", True, 8 / 11),
        # ja, per character: [東,京,タ,ワ,ー,へ,行,っ,た] (9) vs [東,京,タ,ワ,ー,に,行,き,ま,し,た] (11);
        # LCS 東京タワー + 行 + た = 7 -> 14/20
        ("東京タワーへ行った", "東京タワーに行きました", "ja", True, 14 / 20),
        # th, per character with marks: [แ,ม,ว,น,อ,น,บ,น,โ,ต๊,ะ] vs [แ,ม,ว,น,อ,น,บ,น,เ,สื่,อ]: LCS 8 -> 16/22
        ("แมวนอนบนโต๊ะ", "แมวนอนบนเสื่อ", "th", True, 16 / 22),
        # sw, no stemmer: [rais, amefika, nairobi, leo] vs [rais, amewasili, nairobi]: LCS 2 -> 4/7
        ("Rais amefika Nairobi leo", "Rais amewasili Nairobi", "sw", True, 4 / 7),
        # fr, Snowball: [les, joueur, dorm, dan, la, rue] vs [les, joueur, ont, dorm, dan, les, ru]:
        # LCS les-joueur-dorm-dan = 4 -> 8/13 ("rue" is too short to stem, "rues" -> "ru")
        ("Les joueurs dormaient dans la rue", "Les joueurs ont dormi dans les rues", "fr", True, 8 / 13),
    ],
)
def test_rouge_l_standard_hand_computed(prediction, reference, lang, stem, expected):
    assert rouge_l_standard(prediction, reference, lang, stem=stem) == pytest.approx(expected)


def test_rouge_score_default_tokenizer_would_score_arabic_zero():
    # Why XL-Sum's tokenizer: rouge-score's default deletes every non-[a-z0-9] character.
    from rouge_score import rouge_scorer

    ref, pred = "ارتفعت أسعار النفط اليوم", "ارتفعت أسعار النفط اليوم"
    assert rouge_scorer.RougeScorer(["rougeL"]).score(ref, pred)["rougeL"].fmeasure == 0.0
    assert rouge_l_standard(pred, ref, "ar") == 1.0


def test_score_summary_standard():
    item = score_summary_standard("Цена нефти выросла", "Цены на нефть выросли", "ru")
    assert item == ItemScore(score=pytest.approx(6 / 7), parsed="цен нефт выросл", extra={})
    assert score_summary_standard("...", "Цены", "ru") == ItemScore(0.0, None, {})


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
    assert score_item("summary", "lenient", "x y", "x y", lang="de") == metrics.score_summary("x y", "x y", "de")


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
    words = [metrics.parse_options(prompt, NLI)[gold] for prompt, gold in items]
    lenient = [metrics.score_choice(w, g, "zh", p, NLI).score for w, (p, g) in zip(words, items)]
    standard = [score_choice_standard(w, g, "zh", p, NLI) for w, (p, g) in zip(words, items)]
    assert sum(lenient) == 200
    assert [s.parsed for s in standard] == [None] * 200
    assert sum(score_choice_standard(f"({g})", g, "zh", p, NLI).score for p, g in items) == 200


def test_real_xquad_and_mkqa_items(shared_benchmarks):
    (prompt, gold), *_ = _items(shared_benchmarks, "XQuAD", "split", "ans", "en")
    assert gold == "308" and "gave up just 308 points, ranking sixth in the league" in prompt
    # [panthers, defense, gave, up, just, 308, points, ranking, sixth, in, league] (both "the" dropped)
    # vs [308]: P = 1/11, R = 1, F1 = (2/11)/(12/11) = 1/6
    sentence = "The Panthers defense gave up just 308 points, ranking sixth in the league"
    assert score_qa_standard(sentence, gold, "en", "XQuAD").score == pytest.approx(1 / 6)
    mkqa_zh = _items(shared_benchmarks, "MKQA", "split_sample", "ans_sample", "zh")
    assert mkqa_zh[2][1] == ["保罗·泽丁"]
    assert score_qa_standard("保罗泽丁", mkqa_zh[2][1], "zh", "MKQA").score == pytest.approx(8 / 9)
    assert metrics.score_qa("保罗泽丁", mkqa_zh[2][1], "zh").score == 1.0  # lenient drops "·"


def test_real_mkqa_numbers_are_strict(shared_benchmarks):
    # 10 of the 200 English items have a single-number gold written "N.0" ("3.0", "114194.0", ...):
    # answering the integer is exact for lenient (numbers canonicalised) and 0 for MKQA's script.
    items = _items(shared_benchmarks, "MKQA", "split_sample", "ans_sample", "en")
    numeric = [golds for _, golds in items if golds[0].endswith(".0") and golds[0][:-2].isdigit()]
    assert len(numeric) == 10
    for golds in numeric:
        integer = golds[0][:-2]
        assert score_qa_standard(integer, golds, "en", "MKQA").extra["em"] == 0.0
        assert metrics.score_qa(integer, golds, "en").extra["em"] == 1.0


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
