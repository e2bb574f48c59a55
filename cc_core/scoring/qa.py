"""Scoring extractive QA (XQuAD, MKQA): token F1 as the score and exact match in ``extra["em"]``,
max over the gold answers, under either protocol.

    score_qa(output, ["Paul Zerdin"], lang="de")                                       # lenient
    score_qa(output, ["Paul Zerdin"], lang="de", protocol="standard", benchmark="MKQA")

- ``lenient``: SQuAD-style normalisation with language-aware tokens (cc_core.scoring.common) and
  one spelling per number (MKQA's "3.0" = "3", "1,000" = "1000").
- ``standard``: the official scripts' normalisation: SQuAD v1.1 for English XQuAD, MLQA
  (facebookresearch/MLQA ``mlqa_evaluation_v1.py``) for its other languages, apple/ml-mkqa's
  ``mkqa_eval_util.py`` for MKQA.
"""

from __future__ import annotations

import re
import string
import unicodedata
from collections import Counter
from collections.abc import Callable, Sequence

from cc_core.scoring.common import ItemScore, lang_code, normalize_answer, tokenize

QA_BENCHMARKS = ("XQuAD", "MKQA")


# --- lenient ----------------------------------------------------------------------------------------

def _as_list(golds: Sequence[str] | str) -> list[str]:
    """Accept a bare string as one gold answer (XQuAD) rather than a list of characters."""
    return [golds] if isinstance(golds, str) else list(golds)


def _token_f1(pred: list[str], gold: list[str]) -> float:
    """Bag-of-tokens F1 (SQuAD's, MLQA's and MKQA's alike when both sides have tokens)."""
    common = Counter(pred) & Counter(gold)
    same = sum(common.values())
    if same == 0:
        return 0.0
    precision, recall = same / len(pred), same / len(gold)
    return 2 * precision * recall / (precision + recall)


def qa_f1(prediction: str, golds: Sequence[str], lang: str) -> float:
    """Bag-of-tokens F1 against the best-matching gold; 0 for an empty prediction."""
    pred = tokenize(prediction, lang)
    if not pred:
        return 0.0
    return max((_token_f1(pred, tokenize(g, lang)) for g in _as_list(golds)), default=0.0)


def qa_exact_match(prediction: str, golds: Sequence[str], lang: str) -> float:
    """1.0 if the normalised prediction equals some normalised gold, else 0.0.

    Token lists are compared so spacing inside zh/ja/th answers does not matter.
    """
    pred = tokenize(prediction, lang)
    if not pred:
        return 0.0
    return 1.0 if any(pred == tokenize(g, lang) for g in _as_list(golds)) else 0.0


# --- standard: SQuAD v1.1 (English XQuAD), MLQA (other XQuAD languages), MKQA ------------------------

_ASCII_PUNCT = frozenset(string.punctuation)


def _is_mlqa_punct(ch: str) -> bool:
    """MLQA's PUNCT set: every Unicode punctuation character (category P*) plus ASCII
    ``string.punctuation`` (which adds the ASCII symbols $ + < = > ^ ` | ~). Tested per
    character rather than built as the script's 1.1M-entry set at import."""
    return ch in _ASCII_PUNCT or unicodedata.category(ch).startswith("P")


# MLQA's remove_articles, per answer language (hi and zh: none). The Arabic pattern is the
# script's own: its first alternative can never match, so every "ال" (also inside words) goes.
_MLQA_ARTICLES = {
    "en": r"\b(a|an|the)\b",
    "es": r"\b(un|una|unos|unas|el|la|los|las)\b",
    "vi": r"\b(của|là|cái|chiếc|những)\b",
    "de": r"\b(ein|eine|einen|einem|eines|einer|der|die|das|den|dem|des)\b",
    "ar": r"\sال^|ال",
}
# MKQA's ARTICLE_REGEX_BY_LANG, verbatim (fr and it have no closing \b, as in the script).
_MKQA_ARTICLES = {
    "en": r"\b(a|an|the)\b",
    "es": r"\b(un|una|unos|unas|el|la|los|las)\b",
    "vi": r"\b(của|là|cái|chiếc|những)\b",
    "de": r"\b(ein|eine|einen|einem|eines|einer|der|die|das|den|dem|des)\b",
    "ar": r"\sال^|ال",
    "nl": r"\b(de|het|een|des|der|den)\b",
    "sv": r"\b(en|ett)\b",
    "da": r"\b(en|et)\b",
    "no": r"\b(en|et|ei)\b",
    "fr": r"\b(le|la|l'|les|du|de|d'|des|un|une|des)",
    "pt": r"\b(o|a|os|as|um|uma|uns|umas)\b",
    "it": r"\b(il|lo|la|l'|i|gli|le|del|dello|della|dell'|dei|degli|degl'|delle|un'|uno|una|un)",
    "fi": r"\b(se|yks|yksi)\b",
    "hu": r"\b(a|az|egy)\b",
}
# MKQA language codes differ from ours for Chinese.
_MKQA_CODES = {"zh": "zh_cn"}
_MKQA_MIXED = frozenset({"zh_cn", "zh_hk", "zh_tw", "ja", "th", "km"})

# The CJK range of MLQA's mixed_segmentation ([\u4e00-\u9fa5]): exactly the script's.
_MLQA_CJK = re.compile("[\u4e00-\u9fa5]")
# XQuAD languages outside MLQA's seven that are written without spaces: segmented per
# character like MKQA does for them (MLQA itself has no rule and would raise).
_PER_CHARACTER = frozenset({"th", "ja", "km"})


def _articles(text: str, pattern: str | None) -> str:
    return re.sub(pattern, " ", text) if pattern else text


def squad_normalize(text: str) -> str:
    """SQuAD v1.1 ``normalize_answer``: lowercase, drop ASCII punctuation, drop a/an/the, single spaces."""
    text = "".join(ch for ch in text.lower() if ch not in _ASCII_PUNCT)
    return " ".join(_articles(text, _MLQA_ARTICLES["en"]).split())


def _mlqa_mixed_segmentation(text: str) -> list[str]:
    """MLQA: each CJK ideograph (or punctuation character) is a token; other runs split on whitespace."""
    tokens, run = [], ""
    for ch in text:
        if _MLQA_CJK.match(ch) or _is_mlqa_punct(ch):
            tokens.extend(run.split())
            run = ""
            tokens.append(ch)
        else:
            run += ch
    return tokens + run.split()


def _per_character(text: str) -> list[str]:
    """Every non-space character a token (MKQA's segmentation for zh/ja/th/km, in effect)."""
    return [ch for ch in text if not ch.isspace()]


def mlqa_normalize(text: str, lang: str) -> str:
    """MLQA ``normalize_answer``: lowercase, drop Unicode+ASCII punctuation, drop the language's
    articles, then whitespace tokens (zh: mixed segmentation), joined by single spaces.

    Languages MLQA does not cover (its script raises for them): no article list; whitespace
    tokens, except th/ja/km, written without spaces, which are split per character as MKQA does.
    """
    lang = lang_code(lang)
    text = "".join(ch for ch in text.lower() if not _is_mlqa_punct(ch))
    text = _articles(text, _MLQA_ARTICLES.get(lang))
    if lang == "zh":
        tokens = _mlqa_mixed_segmentation(text)
    elif lang in _PER_CHARACTER:
        tokens = _per_character(text)
    else:
        tokens = text.split()
    return " ".join(t for t in tokens if t.strip())


def mkqa_normalize(text: str, lang: str) -> str:
    """MKQA ``normalize_answer_by_language``: lowercase, drop ASCII punctuation only (Unicode
    punctuation such as "·" or "。" stays), drop the language's articles, then whitespace tokens
    or, for zh/ja/th/km, one token per character (the script's mixed_segmentation never fills
    its buffer, so it yields every character; whitespace tokens are dropped)."""
    code = _MKQA_CODES.get(lang_code(lang), lang_code(lang))
    text = "".join(ch for ch in text.lower() if ch not in _ASCII_PUNCT)
    text = _articles(text, _MKQA_ARTICLES.get(code))
    tokens = _per_character(text) if code in _MKQA_MIXED else text.split()
    return " ".join(t for t in tokens if t.strip())


def _normalizer(benchmark: str, lang: str) -> Callable[[str], str]:
    name = _qa_benchmark(benchmark)
    if name == "MKQA":
        return lambda text: mkqa_normalize(text, lang)
    if lang_code(lang) == "en":
        return squad_normalize
    return lambda text: mlqa_normalize(text, lang)


def _qa_benchmark(benchmark: str) -> str:
    by_lower = {name.lower(): name for name in QA_BENCHMARKS}
    name = by_lower.get(benchmark.strip().lower())
    if name is None:
        raise ValueError(f"no standard QA scoring for benchmark {benchmark!r}; valid: {', '.join(QA_BENCHMARKS)}")
    return name


def qa_tokens(text: str, lang: str, benchmark: str) -> list[str]:
    """The tokens F1 counts for ``benchmark`` (XQuAD or MKQA) in ``lang``: normalised text split on spaces."""
    return _normalizer(benchmark, lang)(text).split()


def _f1(pred: list[str], gold: list[str], benchmark: str) -> float:
    """SQuAD/MLQA F1; MKQA's differs only when a side is empty: 1.0 if both are (no answer), else 0."""
    if benchmark == "MKQA" and (not pred or not gold):
        return float(pred == gold)
    return _token_f1(pred, gold)


def _score_qa_standard(output: str, golds: Sequence[str] | str, lang: str, benchmark: str) -> ItemScore:
    """Token F1 (``score``) and exact match (``extra["em"]``), max over ``golds``, as the official scripts.

    ``benchmark`` is "XQuAD" (English: SQuAD v1.1's normalisation; others: MLQA's, see
    :func:`mlqa_normalize`) or "MKQA" (:func:`mkqa_normalize`); case-insensitive. A bare string
    is one gold. ``parsed`` is the normalised output, ``None`` when nothing is left of it.
    The prediction is the raw output (no first-line cut, no answer-phrase stripping), as the
    scripts receive it. MKQA's no-answer threshold search and its separate ``binary_answer``
    field are not reproduced: a generative model gives neither, so scores are the scripts'
    per-item values at threshold 0 and a yes/no question is matched on the output text
    against the gold "yes"/"no".
    """
    name = _qa_benchmark(benchmark)
    normalize = _normalizer(name, lang)
    gold_list = [golds] if isinstance(golds, str) else list(golds)
    if not gold_list:
        raise ValueError(f"{name} {lang}: an item needs at least one gold answer (got none)")
    pred = normalize(output or "")
    gold_norms = [normalize(g) for g in gold_list]
    f1 = max(_f1(pred.split(), g.split(), name) for g in gold_norms)
    em = float(any(pred == g for g in gold_norms))
    return ItemScore(score=f1, parsed=pred or None, extra={"em": em})


def score_qa(output: str, golds: Sequence[str] | str, lang: str, protocol: str = "lenient",
             benchmark: str = "") -> ItemScore:
    """QA item score: F1 as ``score``, exact match in ``extra["em"]``; ``parsed`` is the normalised output
    (None when nothing is left of it). A bare string is one gold. ``standard`` needs ``benchmark``
    ("XQuAD" or "MKQA", case-insensitive)."""
    if protocol == "standard":
        return _score_qa_standard(output, golds, lang, benchmark)
    golds = _as_list(golds)
    parsed = normalize_answer(output or "", lang) or None
    return ItemScore(score=qa_f1(output or "", golds, lang), parsed=parsed,
                     extra={"em": qa_exact_match(output or "", golds, lang)})
