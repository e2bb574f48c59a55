"""cc_core.scoring.common: the lenient protocol's normal form and metric tokens (language-aware
tokens, one spelling per number)."""

from __future__ import annotations

import pytest

from cc_core.scoring.common import normalize_answer, tokenize


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


def test_tokenize_word_languages_split_on_whitespace() -> None:
    assert tokenize("Der  Hund, bellt.", "de") == ["der", "hund", "bellt"]
    assert tokenize("Я читаю книги", "ru") == ["я", "читаю", "книги"]
