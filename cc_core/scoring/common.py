"""What every scorer shares: the item score, and the text canonicalisation of the lenient protocol.

``canonical`` is NFKC + native decimal digits → ASCII + no invisible format characters;
``normalize_answer`` / ``tokenize`` are the lenient protocol's SQuAD-style normal form and metric
tokens (characters with their combining marks for zh/ja/th, words otherwise), used by its QA and
summary scorers. Standard library only.
"""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass, field

from cc_core.languages import CHAR_TOKENIZED


@dataclass(frozen=True)
class ItemScore:
    """The score of one benchmark item."""

    score: float  # in [0, 1]: accuracy 0/1, token F1 or ROUGE-L F
    parsed: str | None  # extracted label / normalised answer; None = unparseable or empty output
    extra: dict[str, float] = field(default_factory=dict)  # e.g. {"em": 1.0} for QA


def lang_code(lang: str) -> str:
    return lang.strip().lower()


_TATWEEL = "\u0640"  # Arabic elongation stroke: typographic only, never changes the word


def canonical(text: str) -> str:
    """NFKC, native decimal digits -> ASCII, invisible format characters removed.

    NFKC turns full-width forms ("（２）", "Ｂ", "：") into ASCII; digits of other scripts
    (Arabic-Indic, Devanagari, Bengali, Thai, ...) are mapped with ``unicodedata.digit`` so
    "(٢)" and "(2)" are the same label. Format characters (RTL marks, zero-width spaces)
    are dropped because models sprinkle them into Arabic/Urdu output.
    """
    text = unicodedata.normalize("NFKC", text)
    if text.isascii():
        return text
    out = []
    for ch in text:
        if ch.isascii():
            out.append(ch)
            continue
        cat = unicodedata.category(ch)
        if cat == "Nd":
            out.append(str(unicodedata.digit(ch)))
        elif cat != "Cf":
            out.append(ch)
    return "".join(out)


def collapse_ws(text: str) -> str:
    return " ".join(text.split())


_EN_ARTICLES = frozenset({"a", "an", "the"})


def _is_removed(ch: str) -> bool:
    """Punctuation (P*) and non-currency symbols (S* but Sc) are dropped by normalisation."""
    cat = unicodedata.category(ch)
    return cat[0] == "P" or (cat[0] == "S" and cat != "Sc")


# A number with separators: "3", "3.0", "1,234", "1.234,5", "0.125".
_NUMBER = re.compile(r"\d+(?:[.,]\d+)*")


def _canonical_number(number: str) -> str:
    """One spelling per number, so "3.0" = "3", "1,000" = "1000", "2,5" = "2.5".

    The last separator is the decimal mark unless every group after the first has exactly
    three digits and only one kind of separator occurs more than once or is a comma ("1,000",
    "1.000.000"); the others are thousands separators. Trailing decimal zeros are dropped.
    """
    separators = [ch for ch in number if ch in ".,"]
    if not separators:
        return number
    groups = re.split(r"[.,]", number)
    thousands_only = all(len(g) == 3 for g in groups[1:]) and len(set(separators)) == 1 and (
        len(separators) > 1 or separators[0] == ",")
    if thousands_only:
        return "".join(groups)
    whole, fraction = "".join(groups[:-1]), groups[-1].rstrip("0")
    return f"{whole}.{fraction}" if fraction else whole


def _is_decimal_point(text: str, i: int) -> bool:
    return text[i] == "." and 0 < i < len(text) - 1 and text[i - 1].isdigit() and text[i + 1].isdigit()


def normalize_answer(text: str, lang: str, drop_articles: bool = True) -> str:
    """SQuAD-style normal form: NFKC, casefold, no punctuation/symbols, single spaces.

    Also maps native digits to ASCII and drops format characters and Arabic tatweel (none
    changes the word). English articles are removed for ``lang == "en"`` only (QA, as in
    SQuAD; not for ROUGE: ``drop_articles=False``); there is no stemming.
    """
    text = canonical(text).casefold().replace(_TATWEEL, "")
    text = text.replace("\u066b", ".").replace("\u066c", ",")  # Arabic decimal and thousands separators
    text = _NUMBER.sub(lambda m: _canonical_number(m.group()), text)
    # Punctuation goes, except a decimal point inside a number ("3.5" must not become "35").
    text = "".join(ch for i, ch in enumerate(text) if not _is_removed(ch) or _is_decimal_point(text, i))
    tokens = text.split()
    if drop_articles and lang_code(lang) == "en":
        tokens = [t for t in tokens if t not in _EN_ARTICLES]
    return " ".join(tokens)


# A run of ASCII letters/digits ("ipad", "2019", "3.5") stays one token inside zh/ja/th text;
# otherwise one character plus the combining marks that follow it (Thai vowels and tone marks
# above and below a consonant are part of its character, not tokens of their own).
_CHAR_TOKEN = re.compile(r"[a-z0-9]+(?:\.[0-9]+)?|\S[\u0300-\u036f\u0e31\u0e34-\u0e3a\u0e47-\u0e4e]*")


def tokenize(text: str, lang: str, drop_articles: bool = True) -> list[str]:
    """Metric tokens: characters (with their combining marks) for zh/ja/th, words otherwise."""
    norm = normalize_answer(text, lang, drop_articles)
    if lang_code(lang) in CHAR_TOKENIZED:
        return _CHAR_TOKEN.findall(norm)
    return norm.split()
