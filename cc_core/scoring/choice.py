"""Scoring option benchmarks (XNLI, XStoryCloze, MMMLU): accuracy of the option label read from
free model text, under either protocol.

    score_choice(output, gold="2", lang="zh", prompt=prompt, labels=("1", "2", "3"))                 # lenient
    score_choice(output, gold="2", lang="zh", prompt=prompt, labels=("1", "2", "3"), protocol="standard")

- ``lenient`` (:func:`extract_choice`): answer-marker words of all 22 languages, look-alike letters,
  native digits, negated labels rejected, Chinese ordinals, and the option's text when no label is
  written ("Neutral", "中立"); good for CC-vs-SFT deltas.
- ``standard`` (:func:`extract_choice_standard`): the first standalone label as written, in the
  spirit of lm-evaluation-harness's regex filters; comparable with published numbers.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import lru_cache

from cc_core.scoring.common import ItemScore, canonical, collapse_ws


# --- lenient: option extraction from free text ----------------------------------------------

# Characters of space-separated alphabets (Latin incl. Vietnamese/Yoruba, Greek, Cyrillic)
# and ASCII digits. A label must not touch one of these, so the "A" of "AI", the "B" of
# "B12" and the "1" of "2011" are never labels. CJK, Hangul, Arabic, Indic and Thai letters
# are deliberately absent: "答案是B" and "B입니다" glue the label to the text.
_W = "A-Za-z0-9\u00c0-\u024f\u0300-\u036f\u0370-\u03ff\u0400-\u04ff\u1e00-\u1eff"

# Uppercase Cyrillic/Greek look-alikes models emit for Latin labels ("Ответ: В"). Only
# trusted in explicit contexts; a bare Cyrillic "В"/"С" is the Russian preposition.
_HOMOGLYPHS: dict[str, str] = {
    "A": "\u0410\u0391",
    "B": "\u0412\u0392",
    "C": "\u0421\u03f9",
    "E": "\u0415\u0395",
}

# Single uppercase letters that are also words (English "A"/"I", Portuguese/Spanish "A"/"O"/
# "E"/"Y", Yoruba "A"): a bare one followed by another word is not a label ("A cat ...").
_LETTER_WORDS = frozenset("AEIOY")

# Words introducing an answer, in the 22 languages (models often switch to English, so all
# are tried whatever the item's language).
_STRONG_MARKERS = [
    r"answer", r"ans",  # en
    "正确答案", "正確答案", "正确选项", "正確選項", "答案", "回答", "答え", "正解", "答",  # zh ja
    "정답", "답변", "답",  # ko
    "(?:ال)?[اأإ]جاب[ةت]\\w*", "(?:ال)?جواب",  # ar ur
    "उत्तर", "जवाब", "উত্তর", "సమాధానం", "జవాబు", "คำตอบ",  # hi bn te th
    r"ответ(?:ом)?", r"antwort", r"respuesta", r"resposta", r"r[ée]ponse",  # ru de es pt fr
    r"απάντηση", r"erantzuna", r"jawaban(?:nya)?", r"jibu", r"(?:cevab|yan[ıi]t)[ıi]?",
    r"đáp án", r"câu trả lời", r"[iì]d[aá]h[uù]n",  # el eu id sw tr vi yo
]

# Words naming an option; weaker evidence than an answer word ("option 1 is wrong").
_WEAK_MARKERS = [
    r"option", r"choice", r"choose", r"chose", r"select(?:ed)?", r"pick(?:ed)?",  # en
    "选项", "選項", "选择", "選擇", "選択肢", "選択", "选", "選",  # zh ja
    "선택지", "선택", "옵션", "보기",  # ko
    "(?:ال)?خيار", "(?:ال)?اختيار", "آپشن", "انتخاب", "اختیار",  # ar ur
    "विकल्प", "বিকল্প", "ఎంపిక", "ตัวเลือก", "ข้อ",  # hi bn te th
    r"вариант(?:ом)?", r"выбор", r"wahl", r"auswahl", r"opci[óo]n", r"op[çc][ãa]o",
    r"alternativa", r"choix", r"επιλογή", r"aukera", r"pilihan", r"opsi", r"chaguo",
    r"se[çc]ene(?:k|ği)", r"şık", r"lựa chọn", r"phương án", r"àṣàyàn",
]

# Words allowed between a marker and its label ("answer would be: (2)",
# "الإجابة الصحيحة هي", "jibu lako litakuwa:"). A closed list keeps "answer the question
# about 2 cars" from reading as an answer.
_FILLER_WORDS = [
    r"is", r"would", r"will", r"should", r"be", r"probably", r"likely", r"most", r"the",
    r"correct", r"right", r"best", r"final", r"my", r"your", r"number", r"here", r"thus",
    r"therefore", r"so",  # en
    "应该是", "應該是", "应为", "應為", "就是", "是", "为", "為", "的", "应", "應",  # zh
    "は", "が", "です", "の",  # ja
    "은", "는", "이", "가", "다음과 같습니다\\.?",  # ko ("답은 다음과 같습니다. (B)")
    "هي", "هو", "الصحيحة", "الصحيح", "ستكون", "تكون", "يكون", "رقم",  # ar
    "ہے", "نمبر", "کا", "صحیح", "درست",  # ur
    "है", "होगा", "सही", "का", "संख्या", "হল", "হলো", "হবে", "সঠিক",  # hi bn
    "คือ", "ที่ถูกต้อง", "ข้อ",  # th
    r"это", r"будет", r"правильный", r"верный", r"номер",  # ru
    r"ist", r"lautet", r"wäre", r"die", r"richtige", r"nummer",  # de
    r"es", r"sería", r"la", r"correcta", r"número", r"é", r"seria", r"a", r"correta",
    r"est", r"serait", r"bonne", r"numéro",  # es pt fr
    r"είναι", r"η", r"σωστή", r"da", r"zuzena", r"adalah", r"ialah", r"yang", r"benar",
    r"nomor", r"ni", r"sahihi", r"lako", r"langu", r"litakuwa", r"namba", r"doğru",
    r"olan", r"là", r"đúng", r"số",  # el eu id sw tr vi
] + _WEAK_MARKERS

# Verbs/particles/articles between a label and a "correct" word ("(2) is correct", "B가 정답").
_POST_LINKS = [
    r"is", r"would be", r"es", r"est", r"ist", r"é", r"ni", r"adalah", r"là", r"da",
    r"είναι", r"это", "—", "-", ":",
    "是", "为", "為", "が", "は", "이", "가", "은", "는", "هي", "هو", "है", "হল", "คือ",
]
_POST_ARTICLES = [r"the", r"la", r"a", r"el", r"o", r"die", r"der", r"das", r"le"]
_POST_WORDS = [
    r"correct", r"right", r"answer", r"correcta", r"correcto", r"correta", r"correto",
    r"correcte", r"bonne", r"richtig", r"korrekt", r"правильн\w*", r"верн\w*",
    "正确", "正確", "正解", "正しい", "정답", "صحيح\\w*", "الصحيح\\w*", "सही", "সঠিক",
    "ถูก", r"doğru", r"đúng", r"benar", r"sahihi", r"σωστ\w*", r"zuzena",
]
# Label glued to these means "correct" without a verb ("(2)正确").
_POST_GLUED = ["正确", "正確", "正解"]

_OPEN = "(\\[【「『〔<"
_CLOSE = ")\\]】」』〕>"
_PUNCT_FILL = ":=\\-–—,،;*\"'“”«»「」『』#№"
# Sentence punctuation trimmed from the end of an option text before matching it.
_PUNCTUATION_CHARS = ".。．!！?？؟,，、;；:：۔।॥"
_CLAUSE_END = r"(?=\s*(?:$|[.,;:!?)\]。，、！？]))"


def _words(words: Sequence[str]) -> str:
    """Case-insensitive alternation; Latin-script words must end at a word boundary."""
    alts = sorted((unicodedata.normalize("NFKC", w) for w in words), key=len, reverse=True)
    return rf"(?i:(?:{'|'.join(alts)})(?![{_W}]))"


@dataclass(frozen=True)
class _LabelPatterns:
    """Compiled extraction regexes for one label set, by evidence strength."""

    variants: dict[str, str]  # surface form -> canonical label
    strong: tuple[re.Pattern[str], ...]  # answer-marked: "Answer: B", "(2) is correct"
    marked: tuple[re.Pattern[str], ...]  # "(B)", "B)", "option 2", line-initial "2."
    bare: re.Pattern[str]  # a standalone "B" / "2"


def _canonical_label(label: str) -> str:
    """Gold/label normal form: stripped, NFKC, letters uppercased ("b" -> "B")."""
    return canonical(label).strip().upper()


def _alt(forms: Sequence[str]) -> str:
    return "|".join(re.escape(f) for f in sorted(forms, key=len, reverse=True))


@lru_cache(maxsize=64)
def _label_patterns(labels: tuple[str, ...]) -> _LabelPatterns:
    """Build the regexes for ``labels`` (cached: called once per benchmark item)."""
    variants: dict[str, str] = {}
    strict: list[str] = []  # uppercase / digits, trusted bare
    look: list[str] = []  # Cyrillic/Greek homoglyphs, trusted only when marked
    lower: list[str] = []  # lowercase letters, trusted only when marked or alone
    for label in labels:
        variants[label] = label
        strict.append(label)
        for glyph in _HOMOGLYPHS.get(label, ""):
            variants[glyph] = label
            look.append(glyph)
        if label.lower() != label:
            variants[label.lower()] = label
            lower.append(label.lower())

    num_guard = r"(?<!\d[.,])"  # the "5" of "2.5" or "1,5" is not a label
    end = rf"(?![{_W}])(?![.,]\d)"
    start = rf"(?<![{_W}]){num_guard}"
    any_form = _alt(strict + look + lower)
    explicit = _alt(strict + look)
    bracketed = rf"(?<![{_W}])[{_OPEN}]\s*(?P<lab_b>{any_form})\s*[{_CLOSE}]"
    # In marked contexts: "(B)", "B", "В", and lowercase "b" only when it ends the clause.
    marked_label = rf"(?:{bracketed}|{start}(?P<lab_s>{explicit}){end}"
    marked_label += rf"|{start}(?P<lab_l>{_alt(lower)}){_CLAUSE_END})" if lower else ")"
    # Separator runs only between filler words: nesting "\s+" in a repeat backtracks
    # exponentially on long whitespace.
    sep = rf"[\s{_PUNCT_FILL}]*"
    fill = rf"(?:{sep}{_words(_FILLER_WORDS)}){{0,6}}?{sep}"

    def after(markers: Sequence[str]) -> re.Pattern[str]:
        marker = rf"(?<![{_W}]){_words(markers)}"
        return re.compile(rf"{marker}{fill}{marked_label}")

    label_first = rf"(?:{bracketed}|{start}(?P<lab_s>{explicit}){end})"
    post = (
        rf"{label_first}\s*{_words(_POST_LINKS)}\s*(?:{_words(_POST_ARTICLES)}\s*)?"
        rf"{_words(_POST_WORDS)}"
    )
    glued = rf"{label_first}\s*{_words(_POST_GLUED)}"
    strong = (after(_STRONG_MARKERS), re.compile(post), re.compile(glued))

    # "B)", "2)"; not the "2)" of "sqrt(2)" (an opening bracket before is someone else's).
    closing = rf"(?<![{_W}{_OPEN}]){num_guard}(?P<lab_s>{any_form})\s*[{_CLOSE}]"
    line_initial = rf"(?m)^[ \t*]*(?P<lab_s>{explicit})[ \t]*[.:、](?!\d)"  # "2. Neutral"
    marked = (
        re.compile(bracketed),
        re.compile(closing),
        re.compile(line_initial),
        after(_WEAK_MARKERS),
    )
    bare = re.compile(rf"{start}(?P<lab_s>{_alt(strict)}){end}")
    return _LabelPatterns(variants, strong, marked, bare)


# A negation right before a label rejects it: "not (1), it is 2", "neither A nor B", "不是B".
_NEGATED = re.compile(
    r"(?i:(?<![\w])(?:not|never|neither|nor|isn't|nicht|keine?|pas|no es|não é|não|не|нет)"
    r"|n't|不是|不选|不|非)\s*[(\[【「]?\s*$")


def _negated(text: str, position: int) -> bool:
    return bool(_NEGATED.search(text[max(0, position - 16):position]))


def _found(
    patterns: Sequence[re.Pattern[str]], text: str, variants: Mapping[str, str]
) -> list[tuple[int, str]]:
    """(position, canonical label) of every match of ``patterns``, in text order (negated ones left out)."""
    hits = []
    for pattern in patterns:
        for m in pattern.finditer(text):
            name, form = next((k, v) for k, v in m.groupdict().items() if v is not None)
            if not _negated(text, m.start(name)) and not _negated(text, m.start()):
                hits.append((m.start(name), variants[form]))
    return sorted(hits)


def _bare_labels(text: str, pats: _LabelPatterns) -> list[str]:
    """Standalone uppercase/digit labels, skipping letters used as words ("A cat", "I think")."""
    out = []
    for m in pats.bare.finditer(text):
        form = m.group("lab_s")
        if form in _LETTER_WORDS and re.match(r"\s+\w", text[m.end():]):
            continue
        if _negated(text, m.start("lab_s")):
            continue
        out.append(pats.variants[form])
    return out


def _pick(candidates: Sequence[str], labels: Sequence[str]) -> str | None:
    """First candidate, unless the text just enumerates every option (then None)."""
    if not candidates:
        return None
    if len(labels) > 1 and set(candidates) >= set(labels):
        return None
    return candidates[0]


def _fold(text: str) -> str:
    """Matching form for option texts: canonical, case-folded, single-spaced."""
    return collapse_ws(canonical(text).casefold())


def _phrase_spans(haystack: str, phrase: str) -> list[tuple[int, int]]:
    """Where ``phrase`` occurs in ``haystack`` not glued to letters/digits of its own kind.

    A one-word option of five or more letters also matches as a word's stem, so the option
    "Entail" is found in "Entailment" and "Contradict" in "contradicts"; negated mentions
    ("not entailment") do not count.
    """
    pattern = re.escape(phrase)
    if re.match(rf"[{_W}]", phrase[0]):
        pattern = rf"(?<![{_W}])(?<!\d[.,])" + pattern
    if re.match(rf"[{_W}]", phrase[-1]):
        stem = len(phrase) >= 5 and phrase.isalpha() and " " not in phrase
        pattern += (rf"[{_W}]*" if stem else "") + rf"(?![{_W}])(?![.,]\d)"
    return [m.span() for m in re.finditer(pattern, haystack) if not _negated(haystack, m.start())]


def _match_option_text(text: str, options: Mapping[str, str], labels: Sequence[str]) -> str | None:
    """Label whose option text occurs in ``text``; the longest wins, ties give None."""
    folded = _fold(text)
    phrases: dict[str, str] = {}
    for label, option in options.items():
        # Trailing punctuation ("... شاهدتهم جميعًا.") is often dropped when quoted.
        phrase = _fold(option).rstrip(_PUNCTUATION_CHARS).strip()
        if phrase and _canonical_label(label) in labels:
            phrases[_canonical_label(label)] = phrase
    found = {label: _phrase_spans(folded, phrase) for label, phrase in phrases.items()}

    def inside_longer(label: str, span: tuple[int, int]) -> bool:
        # "neutral" within a matched "not neutral" is part of that option, not a mention.
        return any(
            len(phrases[other]) > len(phrases[label]) and a <= span[0] and span[1] <= b
            for other, spans in found.items()
            for a, b in spans
        )

    hits = [
        label
        for label, spans in found.items()
        if any(not inside_longer(label, span) for span in spans)
    ]
    if not hits or (len(phrases) > 1 and len(hits) == len(phrases)):
        return None  # nothing, or an echo of the whole option list
    best = max(len(phrases[label]) for label in hits)
    winners = [label for label in hits if len(phrases[label]) == best]
    return winners[0] if len(winners) == 1 else None


_ZH_NUMERALS = {ch: str(i) for i, ch in enumerate("一二三四五六七八九", start=1)}
_ZH_ORDINAL = re.compile(r"第\s*([一二三四五六七八九\d])\s*(?:个|個)?\s*(?:选项|選項|项|項|个|個|答案)")
_ZH_OPTION = re.compile(r"(选项|選項)\s*([一二三四五六七八九])")


def _chinese_ordinals(text: str) -> str:
    """"第二个选项" / "选项二" → "选项2" (numbered options written with Chinese numerals)."""
    text = _ZH_ORDINAL.sub(lambda m: "选项" + _ZH_NUMERALS.get(m.group(1), m.group(1)), text)
    return _ZH_OPTION.sub(lambda m: m.group(1) + _ZH_NUMERALS[m.group(2)], text)


def extract_choice(
    output: str,
    labels: Sequence[str],
    lang: str,
    options: Mapping[str, str] | None = None,
) -> str | None:
    """Extract the chosen option label (one of ``labels``) from free model text.

    Evidence is tried from strongest to weakest, the first occurrence winning in each:
    an answer-marked label ("Answer: B", "答案是B", "الإجابة هي (٢)", "(2) is correct"), then
    a parenthesised/option-marked label ("(B) 4", "B)", "option 2"), then a bare one ("2",
    "B"); text that only enumerates every label gives None. Without any label, an option's
    text (``options``) is matched instead, the longest winning ("Neutral", "中立").
    ``lang`` is accepted for symmetry: markers of all 22 languages are always tried, since
    models often answer in English whatever the prompt language.
    """
    del lang  # see docstring
    canon = [_canonical_label(label) for label in labels]
    if not output or not output.strip() or not canon:
        return None
    text = canonical(output)
    if all(label.isdigit() for label in canon):
        text = _chinese_ordinals(text)
    pats = _label_patterns(tuple(canon))

    strong = _found(pats.strong, text, pats.variants)
    if strong:
        return strong[0][1]
    marked = [label for _, label in _found(pats.marked, text, pats.variants)]
    if marked:
        return _pick(marked, canon)
    bare = _bare_labels(text, pats)
    if bare:
        return _pick(bare, canon)
    alone = text.strip(" \t\r\n.,;:!?()[]*\"'")
    if alone in pats.variants:  # a lone lowercase "b"
        return pats.variants[alone]
    if options:
        return _match_option_text(text, options, canon)
    return None


def parse_options(prompt: str, labels: Sequence[str]) -> dict[str, str]:
    """Option texts listed in ``prompt`` as lines "(1) Entail" / "(B) 4", keyed by label.

    The last listing of a label wins (options follow the passage); labels without a
    non-empty line are omitted.
    """
    text = canonical(prompt)
    options: dict[str, str] = {}
    for label in labels:
        canon = _canonical_label(label)
        pattern = rf"(?m)^[ \t]*\([ \t]*{re.escape(canon)}[ \t]*\)[ \t]*(\S.*?)\s*$"
        found = re.findall(pattern, text)
        if found:
            options[canon] = found[-1].strip()
    return options


# --- standard: strict label extraction --------------------------------------------------------

def _is_word_char(ch: str) -> bool:
    """Letters, digits and combining marks of any script: what a standalone label may not touch."""
    return unicodedata.category(ch)[0] in "LNM"


def _standalone(text: str, start: int, end: int) -> bool:
    """``text[start:end]`` is a token of its own: no letter/digit/mark on either side, and not
    part of a number such as "2.5" or "1,2" (a digit followed or preceded by ``[.,]digit``)."""
    before, after = text[start - 1:start], text[end:end + 1]
    if (before and _is_word_char(before)) or (after and _is_word_char(after)):
        return False
    number_before = start >= 2 and text[start - 1] in ".," and text[start - 2].isdigit()
    number_after = text[end:end + 1] in (".", ",") and text[end + 1:end + 2].isdigit()
    return not (number_before or number_after)


def extract_choice_standard(output: str, labels: Sequence[str]) -> str | None:
    """The first option label written as a standalone token in ``output``, else ``None``.

    Exactly: a label is one of ``labels`` as given (uppercase letters, ASCII digits), matched
    case-sensitively and without any Unicode normalisation, so full-width "Ｂ"/"２", Cyrillic
    "В" or Arabic-Indic "٢" are not labels, and neither is a lowercase "b" (the article "a"
    would otherwise be an answer). It is standalone when the characters next to it are not
    letters, digits or combining marks of any script (brackets, "*", ":", ".", spaces and
    line ends are fine) and, for digits, when it is not part of a number ("2.5", "1,2",
    "2011"). The leftmost such label wins; there are no answer markers, option words, option
    texts, negation or "the output lists every option" rules. So "(2)", "2", "B", "(B)",
    "Answer: B", "The answer is (B).", "**B**", "答案：B" and "(B)입니다" give the label, while
    "答案是B" and "B입니다" (label glued to CJK/Hangul letters) give ``None``, and
    "A cat ..." gives "A", as an lm-evaluation-harness-style ``\\b``-anchored regex would.
    """
    if not output:
        return None
    # Longest first so a multi-character label is not read as its first character.
    alternation = "|".join(re.escape(label) for label in sorted(set(labels), key=len, reverse=True))
    if not alternation:
        return None
    for match in re.finditer(alternation, output):
        if _standalone(output, match.start(), match.end()):
            return match.group()
    return None


def score_choice(output: str, gold: str, lang: str, prompt: str, labels: Sequence[str],
                 protocol: str = "lenient") -> ItemScore:
    """Accuracy (0/1) of a multiple-choice answer; ``parsed`` is the extracted label (None: none found).

    ``lenient``: :func:`extract_choice` with the option texts of ``prompt``; the gold is compared in
    its canonical form. ``standard``: :func:`extract_choice_standard`, which reads neither the prompt
    nor language-specific markers; the gold is compared after stripping surrounding whitespace
    (answer files hold "2" / "C")."""
    if protocol == "standard":
        parsed = extract_choice_standard(output or "", labels)
        correct = parsed is not None and parsed == str(gold).strip()
    else:
        parsed = extract_choice(output, labels, lang, parse_options(prompt, labels))
        correct = parsed is not None and parsed == _canonical_label(gold)
    return ItemScore(score=1.0 if correct else 0.0, parsed=parsed, extra={})
