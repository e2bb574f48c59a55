"""Benchmark specs and loaders (cc_core.data.benchmarks): bundled fixture, real samples, errors."""

from __future__ import annotations

import json
import re
import shutil
import time
from pathlib import Path

import pytest

from cc_core.data.benchmarks import (
    BENCHMARKS,
    BUNDLED_BENCHMARKS_DIR,
    BenchmarkItem,
    available_langs,
    canonical_benchmark,
    check_lang,
    get_spec,
    load_benchmark,
)
from cc_core.hub import HubUnreachableError
from cc_core.io import InputError
from cc_core.languages import LANGUAGES

NAMES = ("XNLI", "XStoryCloze", "MMMLU", "XQuAD", "MKQA", "XLSum")


def read_instructions(path: Path) -> list[str]:
    return [json.loads(raw)["instruction"] for raw in path.read_text(encoding="utf-8").splitlines() if raw.strip()]


def write_lines(path: Path, lines: list[str | bytes]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    data = b"".join((raw if isinstance(raw, bytes) else raw.encode("utf-8")) + b"\n" for raw in lines)
    path.write_bytes(data)
    return path


def prompt_line(text: str) -> str:
    return json.dumps({"instruction": text}, ensure_ascii=False)


def make_layout(root: Path, name: str, lang: str, prompts: list[str], answers: list,
                en_prompts: list[str] | None = None) -> tuple[Path, Path]:
    """Write ``<root>/<name>/<prompt_dir>/<lang>.json`` and the answer file; return both paths."""
    spec = get_spec(name)
    prompt_file = write_lines(root / spec.name / spec.prompt_dir / f"{lang}.json", [prompt_line(p) for p in prompts])
    answer_file = write_lines(root / spec.name / spec.answer_dir / f"{lang}.json",
                              [json.dumps(a, ensure_ascii=False) for a in answers])
    if en_prompts is not None:
        en_dir = spec.en_prompt_dir or spec.prompt_dir
        en_name = f"{lang}.json" if spec.en_prompt_dir else "en.json"
        write_lines(root / spec.name / en_dir / en_name, [prompt_line(p) for p in en_prompts])
    return prompt_file, answer_file


# --------------------------------------------------------------------------- specs


def test_six_benchmarks_with_ten_languages_each():
    assert tuple(BENCHMARKS) == NAMES
    for name, spec in BENCHMARKS.items():
        assert spec.name == name
        assert len(spec.langs) == 10 and len(set(spec.langs)) == 10
        assert spec.langs[0] == "en"
        assert set(spec.langs) <= set(LANGUAGES)
        if spec.kind == "choice":
            assert spec.metric == "accuracy" and spec.labels
        else:
            assert spec.labels == ()
    assert {n for n, s in BENCHMARKS.items() if s.en_prompt_dir} == {"XLSum"}


@pytest.mark.parametrize(
    ("given", "expected"),
    [("xnli", "XNLI"), ("XNLI", "XNLI"), ("xstorycloze", "XStoryCloze"), ("XSTORYCLOZE", "XStoryCloze"),
     (" mmmlu ", "MMMLU"), ("xQuAD", "XQuAD"), ("mkqa", "MKQA"), ("xlsum", "XLSum")],
)
def test_canonical_benchmark_is_case_insensitive(given, expected):
    assert canonical_benchmark(given) == expected
    assert get_spec(given) is BENCHMARKS[expected]


@pytest.mark.parametrize("bad", ["xnli2", "", "squad", "XL-Sum"])
def test_unknown_benchmark_lists_valid_names(bad):
    with pytest.raises(ValueError) as info:
        canonical_benchmark(bad)
    message = str(info.value)
    assert repr(bad) in message
    for name in NAMES:
        assert name in message
    with pytest.raises(ValueError, match="unknown benchmark"):
        get_spec(bad)
    with pytest.raises(ValueError, match="unknown benchmark"):
        load_benchmark(bad, "en")


def test_spec_details():
    assert get_spec("xnli").labels == ("1", "2", "3")
    assert get_spec("xstorycloze").labels == ("1", "2")
    assert get_spec("mmmlu").labels == ("A", "B", "C", "D")
    assert (get_spec("xquad").kind, get_spec("xquad").metric) == ("qa", "f1")
    assert (get_spec("mkqa").kind, get_spec("mkqa").metric) == ("qa", "f1")
    assert (get_spec("xlsum").kind, get_spec("xlsum").metric) == ("summary", "rouge_l")
    assert get_spec("xlsum").en_prompt_dir == "split_sample_en"


def test_check_lang():
    spec = get_spec("xnli")
    assert check_lang(spec, " AR ") == "ar"
    assert check_lang(spec, "en") == "en"
    with pytest.raises(ValueError) as info:
        check_lang(spec, "de")  # a real language, but not one of XNLI's
    message = str(info.value)
    assert "XNLI" in message and "'de'" in message
    assert message.split("valid:")[1].split() == list(spec.langs)
    with pytest.raises(ValueError, match="no language 'de'"):
        load_benchmark("xnli", "de")


# --------------------------------------------------------------------------- bundled fixture


@pytest.mark.parametrize("name", NAMES)
def test_bundled_has_all_spec_languages(name):
    spec = get_spec(name)
    assert available_langs(spec, "bundled") == list(spec.langs)


@pytest.mark.parametrize("name", NAMES)
def test_bundled_items(name):
    spec = get_spec(name)
    english = load_benchmark(name, "en", "bundled")
    for lang in spec.langs:
        items = load_benchmark(name, lang, "bundled")
        assert len(items) == 4, (name, lang)
        assert all(isinstance(item, BenchmarkItem) for item in items)
        assert [item.id for item in items] == [f"{spec.name}-{lang}-{i:05d}" for i in range(4)]
        assert all(item.lang == lang for item in items)
        assert all(isinstance(item.prompt, str) and item.prompt.strip() for item in items)
        assert len({item.prompt for item in items}) == 4
        for index, item in enumerate(items):
            assert isinstance(item.prompt_en, str) and item.prompt_en.strip(), (name, lang, index)
            if spec.kind == "choice":
                assert item.gold in spec.labels, (name, lang, index, item.gold)
            elif name == "MKQA":
                assert isinstance(item.gold, list) and item.gold
                assert all(isinstance(g, str) and g.strip() for g in item.gold)
            else:
                assert isinstance(item.gold, str) and item.gold.strip()
            if name != "XLSum":
                # line i of en.json is the parallel of line i in every language
                assert item.prompt_en == english[index].prompt
        if lang == "en" and name != "XLSum":
            assert [i.prompt_en for i in items] == [i.prompt for i in items]
        if lang != "en":
            assert [i.prompt for i in items] != [i.prompt for i in english]


@pytest.mark.parametrize("name", ["XNLI", "XStoryCloze", "MMMLU"])
def test_bundled_choice_golds_are_parallel(name):
    """A choice item's answer does not depend on the language it is asked in."""
    spec = get_spec(name)
    golds = {lang: [item.gold for item in load_benchmark(name, lang)] for lang in spec.langs}
    assert all(g == golds["en"] for g in golds.values())


def test_bundled_xlsum_prompt_en_from_split_sample_en():
    spec = get_spec("xlsum")
    for lang in spec.langs:
        items = load_benchmark("XLSum", lang, "bundled")
        expected = read_instructions(BUNDLED_BENCHMARKS_DIR / "XLSum" / "split_sample_en" / f"{lang}.json")
        assert [item.prompt_en for item in items] == expected[: len(items)]
        if lang != "en":
            assert all(item.prompt_en != item.prompt for item in items)


@pytest.mark.parametrize(("name", "lang", "pattern"), [
    ("XNLI", "ar", r"[\u0600-\u06ff]"),
    ("XNLI", "zh", r"[\u4e00-\u9fff]"),
    ("XNLI", "ru", r"[\u0400-\u04ff]"),
    ("XNLI", "hi", r"[\u0900-\u097f]"),
    ("MKQA", "ja", r"[\u3040-\u30ff]"),
    ("MMMLU", "ko", r"[\uac00-\ud7af]"),
    ("XQuAD", "th", r"[\u0e00-\u0e7f]"),
])
def test_bundled_prompts_are_in_their_language(name, lang, pattern):
    items = load_benchmark(name, lang, "bundled")
    assert all(re.search(pattern, item.prompt) for item in items)
    assert not any(re.search(pattern, item.prompt_en) for item in items)


def test_bundled_limit():
    full = load_benchmark("mkqa", "ja", "bundled")
    assert load_benchmark("mkqa", "ja", "bundled", limit=2) == full[:2]
    assert load_benchmark("mkqa", "ja", "bundled", limit=1)[0].id == "MKQA-ja-00000"
    assert load_benchmark("mkqa", "ja", "bundled", limit=100) == full
    assert load_benchmark("mkqa", "ja", "bundled", limit=None) == full


def test_bundled_is_the_default_and_a_path_works_too():
    default = load_benchmark("xquad", "de")
    assert default == load_benchmark("xquad", "de", "bundled")
    assert default == load_benchmark("xquad", "de", BUNDLED_BENCHMARKS_DIR)
    assert default == load_benchmark("xquad", "de", str(BUNDLED_BENCHMARKS_DIR))


# --------------------------------------------------------------------------- real samples (../shared/benchmarks)


@pytest.mark.parametrize("name", NAMES)
def test_shared_samples_load(shared_benchmarks, name):
    spec = get_spec(name)
    langs = available_langs(spec, shared_benchmarks)
    assert "en" in langs and len(langs) >= 5
    assert set(langs) <= set(spec.langs)
    expected = 100 if name == "XLSum" else 200
    english = load_benchmark(name, "en", shared_benchmarks)
    for lang in langs:
        items = load_benchmark(name, lang, shared_benchmarks)
        assert len(items) == expected, (name, lang)
        assert len({item.id for item in items}) == expected
        assert all(item.lang == lang and item.prompt.strip() for item in items)
        assert all(isinstance(item.prompt_en, str) and item.prompt_en.strip() for item in items)
        if spec.kind == "choice":
            assert {item.gold for item in items} <= set(spec.labels), (name, lang)
        elif name == "MKQA":
            assert all(isinstance(item.gold, list) and item.gold for item in items)
            assert all(isinstance(g, str) for item in items for g in item.gold)
        else:
            assert all(isinstance(item.gold, str) and item.gold.strip() for item in items)
        if name == "XLSum":
            en_file = shared_benchmarks / "XLSum" / "split_sample_en" / f"{lang}.json"
            assert [item.prompt_en for item in items] == read_instructions(en_file)
        else:
            assert [item.prompt_en for item in items] == [item.prompt for item in english]


def test_shared_choice_labels_all_occur(shared_benchmarks):
    """200 real items use every option label (a loader that mangles golds would not)."""
    for name in ("XNLI", "MMMLU", "XStoryCloze"):
        spec = get_spec(name)
        golds = {item.gold for item in load_benchmark(name, "en", shared_benchmarks)}
        assert golds == set(spec.labels), name


def test_shared_absent_language_is_an_input_error(shared_benchmarks):
    spec = get_spec("xnli")
    missing = [lang for lang in spec.langs if lang not in available_langs(spec, shared_benchmarks)]
    assert missing, "the samples hold a subset of the paper languages"
    with pytest.raises(InputError, match=re.escape(f"{missing[0]}.json") + ".*not found"):
        load_benchmark("XNLI", missing[0], shared_benchmarks)


def test_shared_limit(shared_benchmarks):
    items = load_benchmark("XQuAD", "zh", shared_benchmarks, limit=5)
    assert len(items) == 5
    assert items == load_benchmark("XQuAD", "zh", shared_benchmarks)[:5]


def test_shared_answers_with_trailing_blank_lines(shared_benchmarks, tmp_path):
    spec = get_spec("xnli")
    for sub in (spec.prompt_dir, spec.answer_dir):
        (tmp_path / "XNLI" / sub).mkdir(parents=True)
        for lang in ("en", "ar"):
            shutil.copy(shared_benchmarks / "XNLI" / sub / f"{lang}.json", tmp_path / "XNLI" / sub / f"{lang}.json")
    answer_file = tmp_path / "XNLI" / spec.answer_dir / "ar.json"
    answer_file.write_bytes(answer_file.read_bytes().rstrip(b"\n") + b"\n\n\n")
    items = load_benchmark("XNLI", "ar", tmp_path)
    assert items == load_benchmark("XNLI", "ar", shared_benchmarks)


# --------------------------------------------------------------------------- synthetic layouts: accepted input


def test_trailing_blank_lines_accepted(tmp_path):
    prompt_file, answer_file = make_layout(tmp_path, "XNLI", "en", ["p1", "p2"], ["1", "3"])
    answer_file.write_bytes(answer_file.read_bytes() + b"\n\n  \n")
    items = load_benchmark("xnli", "en", tmp_path)
    assert [(i.prompt, i.gold, i.prompt_en) for i in items] == [("p1", "1", "p1"), ("p2", "3", "p2")]


def test_missing_english_file_means_no_parallel(tmp_path):
    make_layout(tmp_path, "MKQA", "de", ["frage"], [["antwort", "Antwort"]])
    items = load_benchmark("mkqa", "de", tmp_path)
    assert len(items) == 1
    assert items[0].gold == ["antwort", "Antwort"]
    assert items[0].prompt_en is None


def test_short_english_file_means_no_parallel(tmp_path):
    make_layout(tmp_path, "XNLI", "ar", ["a1", "a2", "a3"], ["1", "2", "3"], en_prompts=["e1", "e2"])
    make_layout(tmp_path, "XNLI", "en", ["e1", "e2"], ["1", "2"])
    assert all(item.prompt_en is None for item in load_benchmark("xnli", "ar", tmp_path))
    make_layout(tmp_path, "XNLI", "ar", ["a1", "a2"], ["1", "2"], en_prompts=["e1", "e2"])
    assert [i.prompt_en for i in load_benchmark("xnli", "ar", tmp_path)] == ["e1", "e2"]


def test_xlsum_english_comes_from_split_sample_en(tmp_path):
    make_layout(tmp_path, "XLSum", "fr", ["résumez A", "résumez B"], ["a", "b"], en_prompts=["sum A", "sum B"])
    # an en.json in split_sample is not the parallel of XLSum's French articles
    make_layout(tmp_path, "XLSum", "en", ["other 1", "other 2"], ["x", "y"])
    items = load_benchmark("xlsum", "fr", tmp_path)
    assert [i.prompt_en for i in items] == ["sum A", "sum B"]
    assert [i.gold for i in items] == ["a", "b"]


# --------------------------------------------------------------------------- synthetic layouts: errors


def test_count_mismatch_names_answer_file(tmp_path):
    prompt_file, answer_file = make_layout(tmp_path, "XNLI", "en", ["p1", "p2", "p3"], ["1", "2"])
    with pytest.raises(InputError) as info:
        load_benchmark("xnli", "en", tmp_path)
    message = str(info.value)
    assert message.startswith(f"{answer_file}:")
    assert "2 answers" in message and "3 prompts" in message and str(prompt_file) in message


def test_more_answers_than_prompts(tmp_path):
    _, answer_file = make_layout(tmp_path, "XQuAD", "de", ["p1"], ["a", "b"])
    with pytest.raises(InputError, match=re.escape(str(answer_file))):
        load_benchmark("xquad", "de", tmp_path)


def test_malformed_prompt_line_names_file_and_line(tmp_path):
    prompt_file, _ = make_layout(tmp_path, "XNLI", "en", ["p1", "p2", "p3"], ["1", "2", "3"])
    lines = prompt_file.read_text().splitlines()
    lines[1] = '{"instruction": "p2"'
    write_lines(prompt_file, lines)
    with pytest.raises(InputError, match=re.escape(f"{prompt_file}:2: malformed JSON")):
        load_benchmark("xnli", "en", tmp_path)


def test_malformed_answer_line_names_file_and_line(tmp_path):
    _, answer_file = make_layout(tmp_path, "MMMLU", "en", ["p1", "p2", "p3"], ["A", "B", "C"])
    write_lines(answer_file, ['"A"', '"B"', '"C'])
    with pytest.raises(InputError, match=re.escape(f"{answer_file}:3: malformed JSON")):
        load_benchmark("mmmlu", "en", tmp_path)


def test_invalid_utf8_names_file_and_line(tmp_path):
    prompt_file, _ = make_layout(tmp_path, "XNLI", "en", ["p1", "p2"], ["1", "2"])
    write_lines(prompt_file, [prompt_line("p1"), b'{"instruction": "\xff\xfe"}'])
    with pytest.raises(InputError, match=re.escape(f"{prompt_file}:2: not valid UTF-8")):
        load_benchmark("xnli", "en", tmp_path)


@pytest.mark.parametrize("bad", ['{"prompt": "p2"}', '{"instruction": 5}', '"just a string"', "[1, 2]"])
def test_prompt_without_instruction_names_file_and_line(tmp_path, bad):
    prompt_file, _ = make_layout(tmp_path, "XNLI", "en", ["p1", "p2"], ["1", "2"])
    write_lines(prompt_file, [prompt_line("p1"), bad])
    with pytest.raises(InputError, match=re.escape(f"{prompt_file}:2:") + ".*'instruction'"):
        load_benchmark("xnli", "en", tmp_path)


def test_english_prompt_file_is_validated_too(tmp_path):
    make_layout(tmp_path, "XNLI", "ar", ["a1"], ["1"])
    en_file = write_lines(tmp_path / "XNLI" / "split_sample" / "en.json", ['{"text": "e1"}'])
    with pytest.raises(InputError, match=re.escape(f"{en_file}:1:")):
        load_benchmark("xnli", "ar", tmp_path)


@pytest.mark.parametrize("bad", [3, None, [], [1], {"text": "a"}])
def test_bad_answer_value_names_file_and_line(tmp_path, bad):
    _, answer_file = make_layout(tmp_path, "MKQA", "en", ["q1", "q2"], [["a"], bad])
    with pytest.raises(InputError, match=re.escape(f"{answer_file}:2:") + ".*string or a list of strings"):
        load_benchmark("mkqa", "en", tmp_path)


def test_data_dir_without_benchmark_folder(tmp_path):
    (tmp_path / "XQuAD" / "split").mkdir(parents=True)  # some other benchmark is there
    folder = tmp_path / "XNLI" / "split_sample"
    with pytest.raises(InputError, match=re.escape(str(folder)) + ".*benchmark folder not found"):
        available_langs(get_spec("xnli"), tmp_path)
    with pytest.raises(InputError, match=re.escape(str(folder))):
        load_benchmark("xnli", "en", tmp_path)
    with pytest.raises(InputError, match=re.escape(str(tmp_path / "nowhere" / "XNLI"))):
        load_benchmark("xnli", "en", tmp_path / "nowhere")


def test_available_langs_lists_present_files_in_spec_order(tmp_path):
    for lang in ("zh", "en", "ar"):
        make_layout(tmp_path, "XNLI", lang, ["p"], ["1"])
    (tmp_path / "XNLI" / "split_sample" / "de.json").write_text(prompt_line("not an XNLI language") + "\n")
    assert available_langs(get_spec("xnli"), tmp_path) == ["en", "ar", "zh"]


# --------------------------------------------------------------------------- hub


def test_hub_offline(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    start = time.monotonic()
    with pytest.raises(HubUnreachableError) as info:
        load_benchmark("xnli", "ar", "hub")
    assert time.monotonic() - start < 5
    message = str(info.value)
    assert "XNLI" in message and "facebook/xnli" in message
    assert "bundled" in message  # the local alternative
    with pytest.raises(HubUnreachableError):
        load_benchmark("mkqa", "en", "hub", limit=3)


def test_hub_checks_language_first(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ValueError, match="no language 'de'") as info:
        load_benchmark("xnli", "de", "hub")
    assert not isinstance(info.value, HubUnreachableError)


def test_hub_available_langs_are_the_spec_languages():
    for name in NAMES:
        assert available_langs(get_spec(name), "hub") == list(get_spec(name).langs)


class _HubStub:
    """Canned rows for ``datasets.load_dataset``; records every call."""

    def __init__(self, tables: dict) -> None:
        self.tables, self.calls = tables, []

    def __call__(self, name, config=None, split=None, revision=None):
        self.calls.append((name, config, split, revision))
        return self.tables[(name, config)]


@pytest.fixture
def hub_stub(monkeypatch):
    import datasets

    import cc_core.hub

    monkeypatch.setattr(cc_core.hub, "hub_reachable", lambda timeout=3.0: True)
    stub = _HubStub({})
    monkeypatch.setattr(datasets, "load_dataset", stub)
    return stub


def test_hub_xnli_uses_each_languages_template_and_the_english_parallel(hub_stub):
    from cc_core.data.hub_templates import hub_template
    from cc_core.scoring.choice import parse_options

    row = {"premise": "P", "hypothesis": "H", "label": 2}
    hub_stub.tables[("facebook/xnli", "zh")] = [{**row, "premise": "前提"}]
    hub_stub.tables[("facebook/xnli", "en")] = [row]
    (item,) = load_benchmark("xnli", "zh", "hub")
    assert item.prompt == hub_template("XNLI", "zh").format(premise="前提", hypothesis="H")
    assert item.gold == "3" and item.prompt_en == hub_template("XNLI", "en").format(premise="P", hypothesis="H")
    assert set(parse_options(item.prompt, ("1", "2", "3"))) == {"1", "2", "3"}


def test_hub_mmmlu_english_comes_from_mmlu(hub_stub):
    hub_stub.tables[("cais/mmlu", "all")] = [{"question": "2+2?", "choices": ["1", "2", "3", "4"], "answer": 3}]
    hub_stub.tables[("openai/MMMLU", "SW_KE")] = [{"Question": "2+2?", "A": "1", "B": "2", "C": "3", "D": "4",
                                                   "Answer": "D"}]
    (item,) = load_benchmark("MMMLU", "sw", "hub")
    assert item.gold == "D" and "(D) 4" in item.prompt and "(D) 4" in item.prompt_en
    assert ("cais/mmlu", "all", "test", None) in hub_stub.calls


def test_hub_mkqa_and_xstorycloze_read_the_parquet_conversion(hub_stub):
    hub_stub.tables[("apple/mkqa", None)] = [
        {"queries": {"zh_cn": "谁写了哈姆雷特？", "en": "who wrote hamlet"},
         "answers": {"zh_cn": [{"text": "莎士比亚"}, {"text": "威廉·莎士比亚"}], "en": [{"text": "Shakespeare"}]}}]
    (item,) = load_benchmark("mkqa", "zh", "hub")
    assert item.gold == ["莎士比亚", "威廉·莎士比亚"] and "谁写了哈姆雷特？" in item.prompt
    assert all(call[3] == "refs/convert/parquet" for call in hub_stub.calls)
    story = {f"input_sentence_{i}": f"s{i}." for i in range(1, 5)}
    hub_stub.tables[("juletxara/xstory_cloze", "sw")] = [{**story, "sentence_quiz1": "a", "sentence_quiz2": "b",
                                                          "answer_right_ending": 2}]
    hub_stub.tables[("juletxara/xstory_cloze", "en")] = hub_stub.tables[("juletxara/xstory_cloze", "sw")]
    (item,) = load_benchmark("XStoryCloze", "sw", "hub")
    assert item.gold == "2" and "s1.s2.s3.s4." in item.prompt  # joined as the authors do
    assert hub_stub.calls[-1][3] == "refs/convert/parquet"


def test_hub_xlsum_has_no_english_parallel(hub_stub):
    hub_stub.tables[("csebuetnlp/xlsum", "swahili")] = [{"title": "T", "text": "Makala.", "summary": "Muhtasari."}]
    (item,) = load_benchmark("XLSum", "sw", "hub")
    assert item.gold == "Muhtasari." and item.prompt_en is None and "Makala." in item.prompt
    assert [c[0] for c in hub_stub.calls] == ["csebuetnlp/xlsum"]
