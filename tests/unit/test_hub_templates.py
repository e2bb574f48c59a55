"""The per-language hub prompt templates (cc_core/data/hub_templates.py); no network."""

from __future__ import annotations

import string

import pytest

from cc_core.data.benchmarks import BENCHMARKS, HUB_TEMPLATES
from cc_core.data.hub_templates import TEMPLATES, hub_template
from cc_core.scoring.choice import parse_options

OPTION_MARKERS = {
    "XNLI": ("(1) ", "(2) ", "(3) "),
    "XStoryCloze": ("(1) {ending1}", "(2) {ending2}"),
    "MMMLU": ("(A) {A}", "(B) {B}", "(C) {C}", "(D) {D}"),
}
FIRST_LINE_INSTRUCTION = ("XLSum", "XQuAD", "MKQA")

PAIRS = [(name, lang) for name, spec in BENCHMARKS.items() for lang in spec.langs]
ALL_TEMPLATES = [(name, lang) for name, by_lang in TEMPLATES.items() for lang in by_lang]


def _fields(template: str) -> set[str]:
    return {field for _, field, _, _ in string.Formatter().parse(template) if field is not None}


def _fill(template: str) -> str:
    return template.format(**{field: f"<{field} value>" for field in _fields(template)})


def test_same_benchmarks_as_the_spec():
    assert set(TEMPLATES) == set(BENCHMARKS) == set(HUB_TEMPLATES)


@pytest.mark.parametrize("name", list(BENCHMARKS))
def test_english_equals_hub_templates(name):
    assert TEMPLATES[name]["en"] == HUB_TEMPLATES[name]
    assert hub_template(name, "en") == HUB_TEMPLATES[name]


@pytest.mark.parametrize("name,lang", PAIRS)
def test_every_paper_language_has_its_own_template(name, lang):
    assert lang in TEMPLATES[name]
    assert hub_template(name, lang) == TEMPLATES[name][lang]
    if lang != "en":
        assert TEMPLATES[name][lang] != TEMPLATES[name]["en"]


@pytest.mark.parametrize("name,lang", ALL_TEMPLATES)
def test_placeholders_match_english_and_format(name, lang):
    template = TEMPLATES[name][lang]
    assert _fields(template) == _fields(TEMPLATES[name]["en"])
    assert "" not in _fields(template)  # no positional "{}"
    filled = _fill(template)
    for field in _fields(template):
        assert f"<{field} value>" in filled
    assert "{" not in filled and "}" not in filled


@pytest.mark.parametrize("name,lang", [(n, l) for n, l in ALL_TEMPLATES if n in OPTION_MARKERS])
def test_option_markers_and_parse_options(name, lang):
    template = TEMPLATES[name][lang]
    for marker in OPTION_MARKERS[name]:
        assert marker in template
    labels = BENCHMARKS[name].labels
    options = parse_options(_fill(template), labels)
    assert set(options) == set(labels)
    assert all(options.values())


@pytest.mark.parametrize("name,lang", [(n, l) for n, l in ALL_TEMPLATES if n in FIRST_LINE_INSTRUCTION])
def test_instruction_is_a_short_first_line(name, lang):
    first = TEMPLATES[name][lang].split("\n", 1)[0]
    assert first.strip()
    assert len(first) <= 120
    assert not _fields(first)


def test_fallback_to_english():
    assert hub_template("XNLI", "de") == HUB_TEMPLATES["XNLI"]
    assert hub_template("xnli", "AR") == TEMPLATES["XNLI"]["ar"]
    with pytest.raises(KeyError):
        hub_template("NoSuchBench", "en")
