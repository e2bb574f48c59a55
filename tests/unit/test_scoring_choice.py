"""cc_core.scoring.choice: option labels read from free model text (XNLI, XStoryCloze, MMMLU), under
the lenient protocol (answer markers, option texts, negation, look-alike letters) and the standard one
(the first standalone label). Prompts are copied from the benchmark samples, so no data files are needed.
"""

from __future__ import annotations

import pytest

from cc_core.metrics import ItemScore
from cc_core.scoring.choice import extract_choice, extract_choice_standard, parse_options, score_choice


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
    assert score_choice("The answer is (B).", "B", "en", "", MC, "standard") == ItemScore(1.0, "B", {})
    assert score_choice("(3) Contradict", " 2 ", "en", "", NLI, "standard") == ItemScore(0.0, "3", {})
    assert score_choice("Neutral", "2", "en", "", NLI, "standard") == ItemScore(0.0, None, {})
    assert score_choice(None, "2", "en", "", NLI, "standard") == ItemScore(0.0, None, {})  # type: ignore[arg-type]


def test_standard_and_lenient_disagree_where_documented():
    prompt = ("前提：P\n假设：H\n\n你认为前提和假设之间的关系是什么？\n\n(1) 蕴涵\n(2) 中立\n(3) 矛盾\n\n"
              "如果你必须选择其中一个选项，你的答案是：")
    for output in ("中立", "答案是2", "（２）"):
        assert score_choice(output, "2", "zh", prompt, NLI).score == 1.0
        assert score_choice(output, "2", "zh", prompt, NLI, "standard").score == 0.0
