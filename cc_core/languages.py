"""The 22 languages of the CC-Tuning evaluation (English + 21 others) and their scripts.

Everything language-aware (record validation, benchmark specs, answer extraction, metric
tokenisation) reads this table, so adding a language is one line here.
"""

from __future__ import annotations

# code -> (English name, script). "char" tokenisation is used for scripts written without
# spaces between words (zh, ja, th): word-level F1/ROUGE would treat a sentence as one token.
LANGUAGES: dict[str, tuple[str, str]] = {
    "ar": ("Arabic", "Arabic"),
    "bn": ("Bengali", "Bengali"),
    "de": ("German", "Latin"),
    "el": ("Greek", "Greek"),
    "en": ("English", "Latin"),
    "es": ("Spanish", "Latin"),
    "eu": ("Basque", "Latin"),
    "fr": ("French", "Latin"),
    "hi": ("Hindi", "Devanagari"),
    "id": ("Indonesian", "Latin"),
    "ja": ("Japanese", "Japanese"),
    "ko": ("Korean", "Hangul"),
    "pt": ("Portuguese", "Latin"),
    "ru": ("Russian", "Cyrillic"),
    "sw": ("Swahili", "Latin"),
    "te": ("Telugu", "Telugu"),
    "th": ("Thai", "Thai"),
    "tr": ("Turkish", "Latin"),
    "ur": ("Urdu", "Arabic"),
    "vi": ("Vietnamese", "Latin"),
    "yo": ("Yoruba", "Latin"),
    "zh": ("Chinese", "Han"),
}

ALL_CODES: tuple[str, ...] = tuple(LANGUAGES)
NON_ENGLISH: tuple[str, ...] = tuple(c for c in LANGUAGES if c != "en")
# Languages whose words are not separated by spaces: metrics tokenise them per character.
CHAR_TOKENIZED: frozenset[str] = frozenset({"zh", "ja", "th"})


def check_language(code: str, where: str = "") -> str:
    """Return the normalised code or raise ValueError listing the valid ones."""
    norm = code.strip().lower()
    if norm not in LANGUAGES:
        loc = f"{where}: " if where else ""
        raise ValueError(f"{loc}unknown language code {code!r}; valid codes: {' '.join(ALL_CODES)}")
    return norm
