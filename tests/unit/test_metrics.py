"""Unit tests for cc_core.metrics: option extraction, QA F1/EM and ROUGE-L.

Expected values are hand-computed; prompts are copied from the benchmark samples so the
tests need no data files.
"""

from __future__ import annotations

import dataclasses

import pytest

from cc_core.metrics import (
    ItemScore,
    extract_choice,
    normalize_answer,
    parse_options,
    qa_exact_match,
    qa_f1,
    rouge_l,
    score_choice,
    score_qa,
    score_summary,
    tokenize,
)

NLI = ["1", "2", "3"]
STORY = ["1", "2"]
MC = ["A", "B", "C", "D"]

XNLI_EN = (
    "Premise: They told me that, uh, that I would be called in a guy at the end for me to meet.\n"
    "Hypothesis: I was never told anything about meeting anyone.\n\n"
    "What do you think is the relationship between the premise and the hypothesis?\n\n"
    "(1) Entail \n(2) Neutral\n(3) Contradict\n\n"
    "If you have to choose one of these options, your answer would be:"
)
XNLI_ZH = (
    "前提：他们告诉我，呃，我最后会被叫到一个人那里去见面。\n假设：我从来没有被告知任何与任何人会面。\n\n"
    "你认为前提和假设之间的关系是什么？\n\n(1) 蕴涵\n(2) 中立\n(3) 矛盾\n\n"
    "如果你必须选择其中一个选项，你的答案是："
)
XNLI_AR = (
    "المقدمة: أخبروني ،إيه، أنه سيتم استدعائي من قبل شاب في النهاية سيقابلني .\n"
    "الفرضية: لم يتم إخباري أبداً بأي شيء عن مقابلة أي شخص.\n\n"
    "ما هي العلاقة التي تعتقد أنها بين المقدمة والفرضية؟\n\n(1) يستلزم\n(2) محايد\n(3) يتناقض\n\n"
    "إذا كان عليك اختيار أحد هذه الخيارات، فإن إجابتك ستكون:"
)
MMMLU_KO = (
    "다음의 객관식 질문에 답하세요.\n\n곱셈군 {1, -1, i, -i}에서 -i의 역원은 무엇입니까?\n"
    "(A) 1\n(B) -1\n(C) i\n(D)  -i\n\n"
    "만약 여러분이 이러한 옵션 중 하나를 선택해야 한다면, 답은 다음과 같습니다."
)
MMMLU_EN = (
    "Please answer the following multiple choice question.\n\n"
    "Find the degree for the given field extension Q(sqrt(2) + sqrt(3)) over Q.\n"
    "(A) 0\n(B) 4\n(C) 2\n(D) 6\n\n"
    "If you have to choose one of these options, your answer would be:"
)
STORY_EN = (
    "I became a Law and Order fan in 2011.I was recovering from a stroke.When I got home I tried "
    "to watch every episode.It was hard trying to binge watch 20 Year's of a show.\n"
    "(1) I think Law and Order is one of the worst shows ever made.\n"
    "(2) Eventually I watched them all.\n\n"
    "Which of the two options is more likely to be the ending of the given story.\nYour answer:"
)


# ---------------------------------------------------------------------------- parse_options


def test_parse_options_xnli_zh() -> None:
    assert parse_options(XNLI_ZH, NLI) == {"1": "蕴涵", "2": "中立", "3": "矛盾"}


def test_parse_options_strips_trailing_space() -> None:
    assert parse_options(XNLI_EN, NLI) == {"1": "Entail", "2": "Neutral", "3": "Contradict"}


def test_parse_options_mmmlu() -> None:
    assert parse_options(MMMLU_KO, MC) == {"A": "1", "B": "-1", "C": "i", "D": "-i"}
    assert parse_options(MMMLU_EN, MC) == {"A": "0", "B": "4", "C": "2", "D": "6"}


def test_parse_options_story_and_missing_labels_omitted() -> None:
    opts = parse_options(STORY_EN, ["1", "2", "3"])
    assert opts == {
        "1": "I think Law and Order is one of the worst shows ever made.",
        "2": "Eventually I watched them all.",
    }


def test_parse_options_full_width_prompt() -> None:
    assert parse_options("問題\n（1） 含意\n（2） 中立", STORY) == {"1": "含意", "2": "中立"}


# ---------------------------------------------------------------------------- extract_choice


@pytest.mark.parametrize(
    ("output", "labels", "expected"),
    [
        # en: the accepted surface forms
        ("(2)", NLI, "2"),
        ("2", NLI, "2"),
        ("2.", NLI, "2"),
        ("option 2", NLI, "2"),
        ("Answer: B", MC, "B"),
        ("B)", MC, "B"),
        ("(B) 4", MC, "B"),
        ("b", MC, "B"),
        ("The answer is b.", MC, "B"),
        ("**B**", MC, "B"),
        ("The correct answer is A because 4 = 2 * 2.", MC, "A"),
        ("Your answer would be: (3) Contradict", NLI, "3"),
        # zh
        ("答案是B", MC, "B"),
        ("答案：（B）", MC, "B"),
        ("正确答案是 2", NLI, "2"),
        ("我选择(3)。", NLI, "3"),
        # ar: Eastern Arabic digits
        ("الإجابة هي (٢)", NLI, "2"),
        ("الإجابة الصحيحة هي ٣", NLI, "3"),
        # ja: full-width forms
        ("（２）", NLI, "2"),
        ("答えは（２）です", NLI, "2"),
        # hi: Devanagari digits
        ("उत्तर: (२)", NLI, "2"),
        ("सही उत्तर ३ है", NLI, "3"),
        # ko: label glued to a particle
        ("정답은 (B)입니다", MC, "B"),
        ("정답은 B입니다", MC, "B"),
        ("답은 다음과 같습니다. (D)", MC, "D"),
        # ru: Cyrillic look-alike letter after an answer marker
        ("Ответ: 3", NLI, "3"),
        ("Правильный ответ — \u0412", MC, "B"),
        # sw
        ("Jibu ni (B)", MC, "B"),
        ("Jibu lako litakuwa: (2)", NLI, "2"),
        # th / bn digits
        ("คำตอบคือ (๒)", NLI, "2"),
        ("উত্তর হল (১)", NLI, "1"),
        # other languages' markers
        ("La respuesta es (C)", MC, "C"),
        ("A resposta correta é B", MC, "B"),
        ("Die Antwort ist 3", NLI, "3"),
        ("Đáp án là C", MC, "C"),
    ],
)
def test_extract_choice_forms(output: str, labels: list[str], expected: str) -> None:
    assert extract_choice(output, labels, "en") == expected


@pytest.mark.parametrize(
    ("output", "expected"),
    [
        ("(1) is wrong, (2) is right", "2"),  # an answer-marked label beats earlier mentions
        ("Option 1 is wrong; the answer is option 2", "2"),
        ("(2)正确", "2"),
        ("I think (1) fits better than (3).", "1"),  # no marker: first label occurring
        ("(3) rather than 2", "3"),  # a parenthesised label beats a bare one
    ],
)
def test_extract_choice_several_labels(output: str, expected: str) -> None:
    assert extract_choice(output, NLI, "en") == expected


def test_extract_choice_full_option_list_is_none() -> None:
    assert extract_choice("(1) Entail\n(2) Neutral\n(3) Contradict", NLI, "en") is None
    assert extract_choice("A) 0 B) 4 C) 2 D) 6", MC, "en") is None


def test_extract_choice_echoed_prompt_then_answer() -> None:
    assert extract_choice(XNLI_ZH, NLI, "zh") is None
    assert extract_choice(XNLI_ZH + "(2) 中立", NLI, "zh") == "2"
    assert extract_choice(MMMLU_KO + " (D)", MC, "ko") == "D"


@pytest.mark.parametrize(
    ("output", "prompt", "lang", "expected"),
    [
        ("Neutral", XNLI_EN, "en", "2"),
        ("The relationship is neutral.", XNLI_EN, "en", "2"),
        ("ＣＯＮＴＲＡＤＩＣＴ", XNLI_EN, "en", "3"),
        ("中立", XNLI_ZH, "zh", "2"),
        ("我认为是矛盾的关系", XNLI_ZH, "zh", "3"),
        ("محايد", XNLI_AR, "ar", "2"),
        ("4", MMMLU_EN, "en", "B"),  # the option text of (B), no letter in the output
        ("Eventually I watched them all", STORY_EN, "en", "2"),  # final period dropped
    ],
)
def test_extract_choice_option_text(output: str, prompt: str, lang: str, expected: str) -> None:
    labels = STORY if prompt is STORY_EN else MC if prompt is MMMLU_EN else NLI
    assert extract_choice(output, labels, lang, parse_options(prompt, labels)) == expected


def test_option_text_longest_wins_and_ties_are_none() -> None:
    nested = {"1": "Neutral", "2": "Not neutral"}
    assert extract_choice("Not neutral", STORY, "en", nested) == "2"
    assert extract_choice("Neutral", STORY, "en", nested) == "1"
    assert extract_choice("Neutral", STORY, "en", {"1": "Neutral", "2": "neutral"}) is None


def test_option_text_needs_options_and_rejects_full_list() -> None:
    opts = parse_options(XNLI_EN, NLI)
    assert extract_choice("Neutral", NLI, "en") is None
    assert extract_choice("Entail, Neutral, Contradict", NLI, "en", opts) is None


@pytest.mark.parametrize(
    ("output", "labels"),
    [
        ("", NLI),
        ("   \n", MC),
        ("I'm sorry, but I cannot answer that question.", NLI),
        ("asdf qwerty zxcv", MC),
        ("a cat sat on the mat", MC),  # lowercase "a" inside text
        ("A cat is sleeping", MC),  # sentence-initial article
        ("I think so", [*MC, "I"]),  # pronoun "I" is not option I
        ("As an AI model I can't decide", MC),
        ("Abstain. Decide later.", MC),  # letters inside words
        ("I became a fan in 2011", NLI),  # digits inside larger numbers
        ("There were 12 episodes", NLI),
        ("The value is 2.5", NLI),
        ("Take B12 vitamins", MC),
        ("lo siento, no puedo responder", NLI),
        ("抱歉，我无法回答这个问题。", MC),
    ],
)
def test_extract_choice_unparseable_is_none(output: str, labels: list[str]) -> None:
    assert extract_choice(output, labels, "en", parse_options(XNLI_EN, NLI)) is None


def test_extract_choice_long_whitespace_is_fast() -> None:
    # Guards against regex backtracking blow-up (this took seconds before the fix).
    assert extract_choice("The answer" + " " * 5000 + "is unclear", MC, "en") is None


# ---------------------------------------------------------------------------- score_choice


def test_score_choice_correct_wrong_and_unparseable() -> None:
    right = score_choice("答案是：（2）", "2", "zh", XNLI_ZH, NLI)
    wrong = score_choice("(3) 矛盾", "2", "zh", XNLI_ZH, NLI)
    none = score_choice("我不知道", "2", "zh", XNLI_ZH, NLI)
    assert right == ItemScore(score=1.0, parsed="2", extra={})
    assert (wrong.score, wrong.parsed) == (0.0, "3")
    assert (none.score, none.parsed) == (0.0, None)


def test_score_choice_uses_prompt_options_and_normalises_gold() -> None:
    assert score_choice("中立", " 2 ", "zh", XNLI_ZH, NLI).score == 1.0
    assert score_choice("The answer is (B).", " b", "en", MMMLU_EN, MC).score == 1.0
    assert score_choice("Eventually I watched them all.", "2", "en", STORY_EN, STORY).parsed == "2"


# ---------------------------------------------------------------------------- normalisation


@pytest.mark.parametrize(
    ("text", "lang", "expected"),
    [
        ("The  Cat, sat!", "en", "cat sat"),
        ("An apple a day", "en", "apple day"),
        ("The Beatles", "de", "the beatles"),  # articles are dropped for English only
        ("$5 or 5€", "en", "$5 or 5€"),  # currency symbols stay
        ("C++ & C#", "en", "c c"),  # other symbols go
        ("ＡＢＣ　１２３", "en", "abc 123"),  # NFKC full-width
        ("في عام ١٩٩٩؟", "ar", "في عام 1999"),  # Arabic question mark, Eastern digits
        ("الولايات، المتحدة", "ar", "الولايات المتحدة"),  # Arabic comma
        ("保罗·泽丁", "zh", "保罗泽丁"),
        ("Straße", "de", "strasse"),  # casefold, not lower
    ],
)
def test_normalize_answer(text: str, lang: str, expected: str) -> None:
    assert normalize_answer(text, lang) == expected


def test_tokenize_char_languages_keep_ascii_runs() -> None:
    assert tokenize("我爱iPhone 15！", "zh") == ["我", "爱", "iphone", "15"]
    assert tokenize("東京タワー", "ja") == ["東", "京", "タ", "ワ", "ー"]
    # Thai: a consonant keeps its vowel and tone marks ("รุ", "วิ่"); they are not tokens of their own
    assert tokenize("กรุงเทพ", "th") == ["ก", "รุ", "ง", "เ", "ท", "พ"]
    assert tokenize("วิ่ง", "th") == ["วิ่", "ง"]
    assert tokenize("ราคา 3.5 บาท", "th")[4] == "3.5"


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


def test_tokenize_word_languages_split_on_whitespace() -> None:
    assert tokenize("Der  Hund, bellt.", "de") == ["der", "hund", "bellt"]
    assert tokenize("Я читаю книги", "ru") == ["я", "читаю", "книги"]


# ---------------------------------------------------------------------------- QA F1 / EM


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


# ---------------------------------------------------------------------------- ROUGE-L


def test_rouge_l_english_hand_computed() -> None:
    # [police, arrested, the, man, on, friday] vs [the, man, was, arrested, by, police, on, friday]
    # LCS = 4 (the man on friday): P = 4/6, R = 4/8, F = 2PR/(P+R) = 8/14
    pred = "Police arrested the man on Friday."
    ref = "The man was arrested by police on Friday."
    assert rouge_l(pred, ref, "en") == pytest.approx(8 / 14)


def test_rouge_l_is_order_sensitive_and_asymmetric_counts() -> None:
    assert rouge_l("cat sat", "sat cat", "de") == pytest.approx(0.5)  # LCS 1 of 2 and 2
    # LCS 2: P = 2/2, R = 2/4 -> F = 2/3
    assert rouge_l("x y", "x y z w", "de") == pytest.approx(2 / 3)


def test_rouge_l_chinese_character_level() -> None:
    # [我,喜,欢,吃,苹,果] vs [我,爱,吃,苹,果]: LCS 我吃苹果 = 4, P = 4/6, R = 4/5, F = 8/11
    assert rouge_l("我喜欢吃苹果", "我爱吃苹果", "zh") == pytest.approx(8 / 11)


def test_rouge_l_russian_no_stemming() -> None:
    # "книги" != "книга": LCS 2 of 3 and 3 -> F = 2/3
    assert rouge_l("Я читаю книги", "я читаю книга", "ru") == pytest.approx(2 / 3)


def test_rouge_l_identical_disjoint_and_empty() -> None:
    text = "Car-free Sundays in Bristol's city centre will start in June."
    assert rouge_l(text, text, "en") == pytest.approx(1.0)
    assert rouge_l("alpha beta", "gamma delta", "en") == 0.0
    assert rouge_l("", text, "en") == 0.0
    assert rouge_l(text, "...", "en") == 0.0


def test_score_summary() -> None:
    item = score_summary("Я читаю книги", "я читаю книга", "ru")
    assert item.score == pytest.approx(2 / 3)
    assert item.parsed == "я читаю книги"
    assert item.extra == {}
    assert score_summary("  ", "я читаю", "ru") == ItemScore(score=0.0, parsed=None, extra={})


def test_item_score_is_frozen() -> None:
    item = ItemScore(score=1.0, parsed="2", extra={})
    with pytest.raises(dataclasses.FrozenInstanceError):
        item.score = 0.0  # type: ignore[misc]


XNLI_OPTIONS = {"1": "Entail", "2": "Neutral", "3": "Contradict"}


@pytest.mark.parametrize(
    ("output", "expected"),
    [
        ("Entailment", "1"),  # the option word's stem: "Entail" in "Entailment"
        ("Contradiction.", "3"),
        ("The hypothesis contradicts the premise", "3"),
        ("Not entailment, it's neutral", "2"),  # a negated option text does not count
        ("The answer is not 1, it is 2", "2"),  # a negated label does not count
        ("neither 1 nor 2", None),
        ("不是1，是3", "3"),
        ("选项二", "2"),  # Chinese numerals for numbered options
        ("第三个选项", "3"),
    ],
)
def test_extract_choice_negation_stems_and_chinese_numerals(output, expected) -> None:
    assert extract_choice(output, ("1", "2", "3"), "en", XNLI_OPTIONS) == expected


def test_extract_choice_negated_letters() -> None:
    assert extract_choice("The answer is not A, it is B", ("A", "B", "C", "D"), "en") == "B"
    assert extract_choice("The answer: neither A nor B", ("A", "B", "C", "D"), "en") is None


def test_rouge_l_keeps_english_articles() -> None:
    # ROUGE counts every word: "the" is a token of the summary (QA's SQuAD normalisation drops it)
    assert rouge_l("the cat sat", "a cat sat", "en") == pytest.approx(2 * 2 / 6)
    assert qa_f1("the cat", ["a cat"], "en") == 1.0
