"""Scoring summaries (XLSum): ROUGE-L F-measure, under either protocol.

    score_summary(output, reference, lang="ar")                        # lenient
    score_summary(output, reference, lang="ar", protocol="standard")   # rouge-score + XL-Sum's tokeniser

- ``lenient``: ROUGE-L over the lenient metric tokens (cc_core.scoring.common; articles kept, no
  stemming), standard library only.
- ``standard``: Google's ``rouge-score`` with csebuetnlp/xl-sum's multilingual tokenisation and
  stemmers (:class:`XLSumTokenizer`), XL-Sum's setting for its reported scores.
"""

from __future__ import annotations

import re
import threading
import unicodedata
from collections.abc import Callable, Sequence
from functools import lru_cache

from cc_core.scoring.common import ItemScore, lang_code, normalize_answer, tokenize


# --- lenient ----------------------------------------------------------------------------------------

def _lcs_length(a: Sequence[str], b: Sequence[str]) -> int:
    """Longest common subsequence length, O(len(a)*len(b)) time, O(len(b)) memory."""
    if len(a) < len(b):
        a, b = b, a
    prev = [0] * (len(b) + 1)
    for x in a:
        cur = [0]
        for j, y in enumerate(b, 1):
            cur.append(prev[j - 1] + 1 if x == y else max(prev[j], cur[j - 1]))
        prev = cur
    return prev[-1]


def rouge_l(prediction: str, reference: str, lang: str) -> float:
    """ROUGE-L F-measure (beta = 1) over :func:`tokenize` tokens (articles kept, as in ROUGE); 0 if either is empty."""
    pred, ref = tokenize(prediction, lang, drop_articles=False), tokenize(reference, lang, drop_articles=False)
    if not pred or not ref:
        return 0.0
    lcs = _lcs_length(pred, ref)
    # F1 = 2PR/(P+R) with P = lcs/|pred|, R = lcs/|ref| simplifies to this.
    return 2 * lcs / (len(pred) + len(ref))


# --- standard: rouge-score with XL-Sum's tokenisation -------------------------------------------

# XL-Sum's language names for the stemmers it ships (multilingual_rouge_scoring/stemmers.py):
# NLTK Snowball for these, its own Hindi suffix stripper for hi. Its Bengali and Turkish
# stemmers come from packages that are not dependencies here (bengali_stemmer, TurkishStemmer),
# so bn and tr are scored unstemmed; every other language has no stemmer in XL-Sum either.
_SNOWBALL = {"ar": "arabic", "da": "danish", "nl": "dutch", "en": "english", "fi": "finnish",
             "fr": "french", "de": "german", "hu": "hungarian", "it": "italian", "no": "norwegian",
             "pt": "portuguese", "ro": "romanian", "ru": "russian", "es": "spanish", "sv": "swedish"}
_MIN_STEM_LENGTH = 3  # XL-Sum's MultiStemmer stems only tokens longer than this

# XL-Sum's HindiStemmer (after Ramanathan & Rao): strip the longest listed suffix of length L
# when the token is longer than L + 1.
_HINDI_SUFFIXES = {
    5: ("ाएंगी", "ाएंगे", "ाऊंगी", "ाऊंगा", "ाइयाँ", "ाइयों", "ाइयां"),
    4: ("ाएगी", "ाएगा", "ाओगी", "ाओगे", "एंगी", "ेंगी", "एंगे", "ेंगे", "ूंगी", "ूंगा", "ातीं", "नाओं",
        "नाएं", "ताओं", "ताएं", "ियाँ", "ियों", "ियां"),
    3: ("ाकर", "ाइए", "ाईं", "ाया", "ेगी", "ेगा", "ोगी", "ोगे", "ाने", "ाना", "ाते", "ाती", "ाता", "तीं",
        "ाओं", "ाएं", "ुओं", "ुएं", "ुआं"),
    2: ("कर", "ाओ", "िए", "ाई", "ाए", "ने", "नी", "ना", "ते", "ीं", "ती", "ता", "ाँ", "ां", "ों", "ें"),
    1: ("ो", "े", "ू", "ु", "ी", "ि", "ा"),
}


def _hindi_stem(token: str) -> str:
    for length in (5, 4, 3, 2, 1):
        if len(token) > length + 1 and token.endswith(_HINDI_SUFFIXES[length]):
            return token[:-length]
    return token


@lru_cache(maxsize=None)
def _stemmer(lang: str) -> Callable[[str], str] | None:
    """XL-Sum's stemmer for ``lang`` (None: no stemming), applied to tokens longer than 3 characters."""
    if lang == "hi":
        return _hindi_stem
    if lang in _SNOWBALL:
        from nltk.stem.snowball import SnowballStemmer  # why: the standard protocol only; a second to import

        # XL-Sum passes ignore_stopwords=True, which needs NLTK's downloadable stopwords corpus;
        # without it stopwords are stemmed too (identically on both sides, so rarely a change).
        snowball = SnowballStemmer(_SNOWBALL[lang], ignore_stopwords=False)
        return _fresh_arabic(snowball) if lang == "ar" else snowball.stem
    return None


def _fresh_arabic(snowball) -> Callable[[str], str]:
    """NLTK's ArabicStemmer never resets ``suffixes_verb_step1_success`` between words, so a
    word's stem depends on the words stemmed before it (in XL-Sum: on the order of the whole
    evaluation). Resetting it per word gives every word the stem a fresh stemmer gives; the
    lock keeps threads from sharing the stemmer's per-word state (all of it lives on the instance)."""
    arabic, lock = snowball.stemmer, threading.Lock()

    def stem(word: str) -> str:
        with lock:
            arabic.suffixes_verb_step1_success = False
            return arabic.stem(word)

    return stem


def _is_xlsum_punctuation(ch: str) -> bool:
    """BERT's/XL-Sum's rule: every non-alphanumeric ASCII character and every Unicode P* character."""
    cp = ord(ch)
    if 33 <= cp <= 47 or 58 <= cp <= 64 or 91 <= cp <= 96 or 123 <= cp <= 126:
        return True
    return unicodedata.category(ch).startswith("P")


def _xlsum_clean(text: str) -> str:
    """XL-Sum's sanitizer: control/format characters and U+FFFD dropped, whitespace to spaces,
    punctuation removed (it separates tokens), tokens joined by single spaces."""
    chars = []
    for ch in text:
        category = unicodedata.category(ch)
        if ch in "\t\n\r " or category == "Zs":
            chars.append(" ")
        elif ch != "\ufffd" and not category.startswith("C"):
            chars.append(" " if _is_xlsum_punctuation(ch) else ch)
    return " ".join("".join(chars).split())


def _onmt_class(ch: str) -> str:
    """Character class of OpenNMT's "aggressive" pretokenizer: letter, number, mark or other."""
    category = unicodedata.category(ch)[0]
    return {"L": "letter", "N": "number", "M": "mark"}.get(category, "other")


# pyonmttok escapes a space kept inside a token this way: combining marks right after a space
# (orphan diacritics) are glued to that space, giving tokens such as "％0020ٌ".
_ONMT_SPACE = "\uff050020"


def _aggressive(word: str, after_space: bool) -> list[str]:
    """pyonmttok ``Tokenizer("aggressive")`` on a punctuation-free word: letter runs (L*) and
    number runs (N*: "6½", "2²" stay whole) are split apart, every other character (symbols,
    emoji) is a token of its own, and combining marks stay with the character before them; marks
    opening a word that follows a space become "％0020" + marks, as pyonmttok writes them."""
    tokens: list[str] = [_ONMT_SPACE] if after_space and word and _onmt_class(word[0]) == "mark" else []
    previous = None
    for ch in word:
        kind = _onmt_class(ch)
        if kind == "mark" and tokens:
            tokens[-1] += ch
            continue
        if kind in ("letter", "number") and kind == previous:
            tokens[-1] += ch
        else:
            tokens.append(ch)
        previous = kind if kind in ("letter", "number") else None
    return tokens


def _is_cjk_ideograph(ch: str) -> bool:
    """The CJK blocks of BERT's/XL-Sum's ``_is_chinese_char``."""
    cp = ord(ch)
    return (0x4E00 <= cp <= 0x9FFF or 0x3400 <= cp <= 0x4DBF or 0x20000 <= cp <= 0x2A6DF
            or 0x2A700 <= cp <= 0x2B73F or 0x2B740 <= cp <= 0x2B81F or 0x2B820 <= cp <= 0x2CEAF
            or 0xF900 <= cp <= 0xFAFF or 0x2F800 <= cp <= 0x2FA1F)


def _split_ideographs(token: str) -> list[str]:
    """XL-Sum's fallback for CJK: a space on each side of every ideograph, then whitespace split
    (so a combining mark after an ideograph starts the next token, as there)."""
    return "".join(f" {ch} " if _is_cjk_ideograph(ch) else ch for ch in token).split()


def _split_script(token: str, pattern: re.Pattern[str]) -> list[str]:
    """Characters matching ``pattern`` become tokens of their own, with the combining marks after them."""
    out: list[str] = []
    alone = False  # the last piece is a split character that may still take marks
    for ch in token:
        mark = unicodedata.category(ch)[0] == "M"
        if pattern.match(ch) and not (mark and out):
            out.append(ch)
            alone = True
        elif out and (mark or not alone):
            out[-1] += ch
        else:
            out.append(ch)
            alone = False
    return out


# Scripts written without spaces that XL-Sum segments with a word segmenter (jieba, fugashi,
# pythainlp): not dependencies here, so Thai and kana are split per character instead (CJK
# ideographs already are, by XL-Sum's own fallback).
_THAI_OR_KANA = re.compile("[\u0e00-\u0e7f\u3040-\u30ff\u31f0-\u31ff\uff66-\uff9f]")


class XLSumTokenizer:
    """Tokenizer object for ``rouge_score.rouge_scorer.RougeScorer(..., tokenizer=XLSumTokenizer(lang))``.

    ``tokenize(text)`` follows csebuetnlp/xl-sum's ``multilingual_rouge_scoring`` for a language
    without a word segmenter: lowercase; drop control/format characters and all punctuation
    (ASCII non-alphanumerics and Unicode P*), which separate tokens; OpenNMT "aggressive"
    pretokenisation (letter/number runs apart, symbols alone); every CJK ideograph a token;
    then, if ``stem``, XL-Sum's stemmer for the language on tokens longer than 3 characters.
    Deviations, for lack of dependencies: no word segmenter for zh/ja/th (ideographs, kana and
    Thai characters are single tokens instead of words), no Bengali/Turkish stemmer, Snowball
    without its stopword list. Unlike rouge-score's default tokenizer, nothing outside
    [a-z0-9] is deleted, so Arabic, Hindi, Cyrillic... text is scored.
    """

    def __init__(self, lang: str, stem: bool = True) -> None:
        self.lang = lang_code(lang)
        self._stem = _stemmer(self.lang) if stem else None
        self._per_character = self.lang in ("th", "ja")  # see _THAI_OR_KANA

    def tokenize(self, text: str) -> list[str]:
        tokens: list[str] = []
        for index, word in enumerate(_xlsum_clean(text.lower()).split()):
            for piece in _aggressive(word, after_space=index > 0):
                for token in _split_ideographs(piece):
                    tokens.extend(_split_script(token, _THAI_OR_KANA) if self._per_character else [token])
        if self._stem:
            tokens = [self._stem(t) if len(t) > _MIN_STEM_LENGTH else t for t in tokens]
        return [t for t in tokens if t]



@lru_cache(maxsize=64)
def _rouge_scorer(lang: str, stem: bool):
    from rouge_score import rouge_scorer  # why: the standard protocol only

    return rouge_scorer.RougeScorer(["rougeL"], tokenizer=XLSumTokenizer(lang, stem))


def rouge_l_standard(prediction: str, reference: str, lang: str, stem: bool = True) -> float:
    """ROUGE-L F-measure from ``rouge-score`` with :class:`XLSumTokenizer`; 0.0 when either side has no token.

    ``stem=True`` is XL-Sum's setting for its reported scores (``calculate_rouge(use_stemmer=True)``
    with the language's stemmer).
    """
    return _rouge_scorer(lang_code(lang), stem).score(reference, prediction)["rougeL"].fmeasure


def score_summary(output: str, reference: str, lang: str, protocol: str = "lenient", stem: bool = True) -> ItemScore:
    """Summary item score: ROUGE-L F as ``score``. ``parsed``: the normalised output (lenient) or its
    XL-Sum tokens joined by spaces (standard); None when nothing is left. ``stem``: standard only."""
    if protocol == "standard":
        tokens = XLSumTokenizer(lang, stem).tokenize(output or "")
        score = rouge_l_standard(output or "", reference, lang, stem) if tokens else 0.0
        return ItemScore(score=score, parsed=" ".join(tokens) or None, extra={})
    parsed = normalize_answer(output or "", lang) or None
    return ItemScore(score=rouge_l(output or "", reference, lang), parsed=parsed, extra={})
