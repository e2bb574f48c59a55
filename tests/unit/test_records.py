"""SFT records (cc_core.data.records) and the prepare stage (cc_core.data.prepare)."""

from __future__ import annotations

import json
import re
import time
from collections import Counter
from pathlib import Path

import pytest

import cc_core.data.prepare as prepare_mod
from cc_core.config import DataParams
from cc_core.data.prepare import prepare, split_records
from cc_core.data.records import (
    Record,
    collect_records,
    load_bundled,
    load_file,
    load_hub,
    load_source,
    read_records,
    validate_record,
)
from cc_core.hub import HubUnreachableError
from cc_core.io import InputError
from cc_core.languages import NON_ENGLISH

# --------------------------------------------------------------------------- helpers

LANG_TEXT = {
    "de": ("Frage", "Antwort"),
    "ja": ("質問", "答え"),
    "ar": ("سؤال", "جواب"),
    "ru": ("Вопрос", "Ответ"),
    "zh": ("问题", "答案"),
}


def rec(i: int | str, lang: str = "de", **over) -> dict:
    q, a = LANG_TEXT.get(lang, ("Q", "A"))
    row = {
        "id": f"r{i}-{lang}",
        "lang": lang,
        "instruction": f"{q} {i}",
        "output": f"{a} {i}",
        "instruction_en": f"Question {i}",
    }
    row.update(over)
    return row


def line(row) -> bytes:
    return json.dumps(row, ensure_ascii=False).encode("utf-8")


def write_lines(path: Path, lines: list[bytes]) -> Path:
    path.write_bytes(b"".join(raw + b"\n" for raw in lines))
    return path


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    return write_lines(path, [line(r) for r in rows])


def at(path: Path, number: int) -> str:
    """Regex for the ``file:line:`` prefix of an error message."""
    return re.escape(f"{path}:{number}:")


# --------------------------------------------------------------------------- bundled set

SCRIPTS = {
    "ar": r"[\u0600-\u06ff]",  # Arabic
    "ja": r"[\u3040-\u30ff]",  # hiragana / katakana
    "zh": r"[\u4e00-\u9fff]",  # CJK ideographs
    "ru": r"[\u0400-\u04ff]",  # Cyrillic
    "hi": r"[\u0900-\u097f]",  # Devanagari
    "ko": r"[\uac00-\ud7af]",  # Hangul syllables
}


@pytest.fixture(scope="module")
def bundled():
    return load_bundled()


def test_bundled_size_and_languages(bundled):
    assert bundled.skipped == 0
    assert len(bundled.records) >= 300
    langs = Counter(r.lang for r in bundled.records)
    assert "en" not in langs
    assert set(langs) <= set(NON_ENGLISH)
    assert len(langs) >= 8
    # no language is a token presence
    assert min(langs.values()) >= 10


def test_bundled_ids_unique_and_fields_nonempty(bundled):
    ids = [r.id for r in bundled.records]
    assert len(ids) == len(set(ids))
    for r in bundled.records:
        assert isinstance(r, Record)
        assert r.instruction.strip() and r.output.strip()
        assert r.instruction_en.strip(), r.id
        assert r.instruction_en != r.instruction, r.id


@pytest.mark.parametrize("lang", sorted(SCRIPTS))
def test_bundled_non_latin_scripts(bundled, lang):
    records = [r for r in bundled.records if r.lang == lang]
    if lang in ("ar", "ja", "zh", "ru", "hi"):
        assert records, f"bundled set has no {lang} records"
    if not records:
        pytest.skip(f"no bundled {lang} records")
    pattern = re.compile(SCRIPTS[lang])
    for r in records:
        assert pattern.search(r.instruction), (r.id, r.instruction)
        assert pattern.search(r.output), (r.id, r.output)
        # the English side is really English, not the same script
        assert not pattern.search(r.instruction_en), (r.id, r.instruction_en)


def test_load_source_bundled_language_filter(bundled):
    report = load_source("bundled", ["ja", "zh"])
    assert report.records
    assert {r.lang for r in report.records} == {"ja", "zh"}
    expected = [r for r in bundled.records if r.lang in ("ja", "zh")]
    assert report.records == expected


# --------------------------------------------------------------------------- validate / collect


def test_validate_record_normalises_lang_and_id():
    raw = {**rec(1, "de"), "id": "  r1 ", "lang": " DE "}
    record = validate_record(raw, "somewhere:7")
    assert record == Record("r1", "de", "Frage 1", "Antwort 1", "Question 1")
    assert record.to_dict() == {"id": "r1", "lang": "de", "instruction": "Frage 1",
                                "output": "Antwort 1", "instruction_en": "Question 1"}


@pytest.mark.parametrize(
    ("raw", "pattern"),
    [
        ([1, 2], r"must be a JSON object, got list"),
        ({k: v for k, v in rec(1).items() if k != "instruction_en"}, r"missing field 'instruction_en'"),
        (rec(1, output=""), r"field 'output' is empty"),
        (rec(1, instruction=" \n\t"), r"field 'instruction' is empty"),
        (rec(1, output=3), r"field 'output' must be a string, got int"),
        (rec(1, id=None), r"field 'id' must be a string, got NoneType"),
        (rec(1, lang="xx"), r"unknown language code 'xx'"),
        (rec(1, lang="en"), r"lang 'en'"),
        (rec(1, lang="EN"), r"lang 'en'"),
    ],
)
def test_validate_record_rejects(raw, pattern):
    with pytest.raises(InputError, match=r"^here:3: .*" + pattern):
        validate_record(raw, "here:3")


def test_unknown_language_lists_valid_codes():
    with pytest.raises(InputError) as info:
        validate_record(rec(1, lang="klingon"), "f:1")
    message = str(info.value)
    for code in ("ar", "de", "ja", "zh", "sw"):
        assert code in message.split("valid:")[1].split()


def test_collect_records_error_mode_raises_first_problem():
    items = [("a:1", rec(1)), ("a:2", rec(2, output=5)), ("a:3", {"nope": 1})]
    with pytest.raises(InputError, match=r"^a:2: field 'output'"):
        collect_records(items)


def test_collect_records_skip_mode_counts_and_caps_problems():
    items = [(f"a:{i}", rec(i) if i % 2 == 0 else {"id": str(i)}) for i in range(60)]
    report = collect_records(items, on_bad_record="skip")
    assert [r.id for r in report.records] == [f"r{i}-de" for i in range(0, 60, 2)]
    assert report.skipped == 30
    assert len(report.problems) == 20  # only the first few reasons are kept
    assert report.problems[0] == "a:1: missing field 'lang'"


def test_collect_records_duplicate_names_both_places():
    items = [("x:1", rec(1)), ("x:2", rec(2)), ("x:9", rec(1, output="other"))]
    with pytest.raises(InputError, match=r"^x:9: duplicate id 'r1-de' \(first at x:1\)"):
        collect_records(items)
    report = collect_records(items, on_bad_record="skip")
    assert [r.id for r in report.records] == ["r1-de", "r2-de"]
    assert report.records[0].output == "Antwort 1"  # the first occurrence wins
    assert report.skipped == 1


# --------------------------------------------------------------------------- JSONL files


def test_good_jsonl_file(tmp_path):
    path = tmp_path / "good.jsonl"
    rows = [rec(1, "de"), rec(2, "ja"), {**rec(3, "ar"), "lang": "AR"}]
    write_lines(path, [line(rows[0]), b"", b"   ", line(rows[1]), line(rows[2])])
    report = load_file(path)
    assert report.skipped == 0
    assert [r.id for r in report.records] == ["r1-de", "r2-ja", "r3-ar"]
    assert [r.lang for r in report.records] == ["de", "ja", "ar"]
    assert report.records[1].instruction == "質問 2"
    assert report.records[1].output == "答え 2"
    assert report.records[2].instruction_en == "Question 3"


def test_missing_file_is_an_input_error(tmp_path):
    with pytest.raises(InputError, match="not found"):
        load_file(tmp_path / "absent.jsonl")


def test_unsupported_extension(tmp_path):
    path = tmp_path / "data.csv"
    path.write_text("id,lang\n")
    with pytest.raises(InputError, match=r"data\.csv: unsupported data file type"):
        load_file(path)


BAD_LINES = {
    "missing field": (line({k: v for k, v in rec(2).items() if k != "output"}), r"missing field 'output'"),
    "empty field": (line(rec(2, instruction="   ")), r"field 'instruction' is empty"),
    "wrong type": (line(rec(2, output=42)), r"field 'output' must be a string, got int"),
    "invalid utf-8": (b'{"id": "r2", "lang": "de", "instruction": "Fr\xc3\x28ge"}', r"not valid UTF-8"),
    "malformed json": (b'{"id": "r2", "lang": "de",', r"malformed JSON"),
    "not an object": (b'["r2", "de"]', r"must be a JSON object"),
    "unknown language": (line(rec(2, lang="xx")), r"unknown language code 'xx'"),
    "english": (line(rec(2, lang="en")), r"lang 'en'"),
}


@pytest.mark.parametrize("kind", sorted(BAD_LINES))
def test_bad_record_names_file_and_line(tmp_path, kind):
    bad, pattern = BAD_LINES[kind]
    path = write_lines(tmp_path / "data.jsonl", [line(rec(1)), bad, line(rec(3))])
    with pytest.raises(InputError, match=at(path, 2) + ".*" + pattern):
        load_file(path)


def test_duplicate_id_names_line_and_first_occurrence(tmp_path):
    path = write_jsonl(tmp_path / "dup.jsonl", [rec(1), rec(2), rec(1, output="again")])
    with pytest.raises(InputError) as info:
        load_file(path)
    message = str(info.value)
    assert message.startswith(f"{path}:3:")
    assert "duplicate id 'r1-de'" in message
    assert f"first at {path}:1" in message


def test_skip_mode_keeps_good_records_after_bad_lines(tmp_path):
    path = write_lines(tmp_path / "mixed.jsonl", [
        line(rec(1)),
        line({k: v for k, v in rec(2).items() if k != "lang"}),  # missing field
        line(rec(3, "ja")),
        b"{this is not json",  # malformed, in the middle
        line(rec(5, "ar")),
        b'{"id": "r6", "output": "\xff\xfe"}',  # invalid UTF-8, in the middle
        line(rec(7, "ru")),
        line(rec(1, output="dup")),  # duplicate of line 1
        line(rec(9, "zh")),
    ])
    with pytest.raises(InputError, match=at(path, 2)):
        load_file(path)
    report = load_file(path, on_bad_record="skip")
    assert [r.id for r in report.records] == ["r1-de", "r3-ja", "r5-ar", "r7-ru", "r9-zh"]
    assert report.records[0].output == "Antwort 1"
    assert report.skipped >= 4
    assert any(p.startswith(f"{path}:4:") for p in report.problems)
    assert any(p.startswith(f"{path}:6:") for p in report.problems)


def test_skip_mode_counts_record_errors_exactly(tmp_path):
    path = write_lines(tmp_path / "mixed.jsonl", [
        line(rec(1)),
        line(rec(2, output=7)),
        line(rec(3, lang="en")),
        line(rec(4)),
        line(rec(1)),
    ])
    report = load_file(path, on_bad_record="skip")
    assert [r.id for r in report.records] == ["r1-de", "r4-de"]
    assert report.skipped == 3
    assert [p.split(": ")[0] for p in report.problems] == [f"{path}:2", f"{path}:3", f"{path}:5"]


def test_skip_mode_counts_each_bad_line_once(tmp_path):
    path = write_lines(tmp_path / "mixed.jsonl", [
        line(rec(1)),
        line(rec(2, output=7)),  # bad record before the malformed line
        b"{this is not json",  # malformed
        line(rec(4)),
        b'{"id": "\xff"}',  # invalid UTF-8
        line(rec(6)),
    ])
    report = load_file(path, on_bad_record="skip")
    assert [r.id for r in report.records] == ["r1-de", "r4-de", "r6-de"]
    assert report.skipped == 3  # lines 2, 3 and 5
    assert not any("duplicate id" in p for p in report.problems)


def test_directory_of_jsonl_files(tmp_path):
    folder = tmp_path / "records"
    folder.mkdir()
    write_jsonl(folder / "b_ja.jsonl", [rec(1, "ja"), rec(2, "ja")])
    write_jsonl(folder / "a_de.jsonl", [rec(1, "de"), rec(2, "de"), rec(3, "de")])
    write_jsonl(folder / "c_ru.jsonl", [rec(1, "ru")])
    (folder / "README.txt").write_text("not data")
    report = load_file(folder)
    # files are read in sorted order, lines in file order; other files are ignored
    assert [r.id for r in report.records] == ["r1-de", "r2-de", "r3-de", "r1-ja", "r2-ja", "r1-ru"]
    assert load_source(str(folder)).records == report.records


def test_directory_duplicate_across_files_names_first_file(tmp_path):
    folder = tmp_path / "records"
    folder.mkdir()
    write_jsonl(folder / "a.jsonl", [rec(1), rec(2)])
    write_jsonl(folder / "b.jsonl", [rec(3), rec(2)])
    with pytest.raises(InputError) as info:
        load_file(folder)
    message = str(info.value)
    assert message.startswith(f"{folder / 'b.jsonl'}:2:")
    assert f"first at {folder / 'a.jsonl'}:2" in message


def test_empty_directory_is_an_error(tmp_path):
    (tmp_path / "notes.txt").write_text("x")
    with pytest.raises(InputError, match="no .json/.jsonl files"):
        load_file(tmp_path)


def test_load_source_language_filter_on_file(tmp_path):
    path = write_jsonl(tmp_path / "d.jsonl", [rec(1, "de"), rec(1, "ja"), rec(2, "ja"), rec(1, "ar")])
    report = load_source(str(path), ["ja"])
    assert [r.id for r in report.records] == ["r1-ja", "r2-ja"]
    assert [r.id for r in load_source(str(path), ["de", "ar"]).records] == ["r1-de", "r1-ar"]
    assert len(load_source(str(path)).records) == 4
    assert load_source(str(path), ["zh"]).records == []


# --------------------------------------------------------------------------- reference format (JSON array)


def ref_item(i: int, **over) -> dict:
    item = {"instruction": f"Frage {i}", "output": f"Antwort {i}", "instruction_en": f"Question {i}"}
    item.update(over)
    return item


def test_reference_format_lang_from_file_name(tmp_path):
    path = tmp_path / "aya_de.json"
    path.write_text(json.dumps([ref_item(0), ref_item(1)]), encoding="utf-8")
    report = load_file(path)
    assert report.records == [
        Record("aya_de-000000", "de", "Frage 0", "Antwort 0", "Question 0"),
        Record("aya_de-000001", "de", "Frage 1", "Antwort 1", "Question 1"),
    ]


def test_reference_format_lang_key_and_id_key(tmp_path):
    path = tmp_path / "reference.json"
    items = [
        ref_item(0, lang="ja", instruction="質問", output="答え"),
        ref_item(1, lang="ru", id="custom-1"),
    ]
    path.write_text(json.dumps(items, ensure_ascii=False), encoding="utf-8")
    report = load_file(path)
    assert [(r.id, r.lang) for r in report.records] == [("reference-000000", "ja"), ("custom-1", "ru")]
    assert report.records[0].instruction == "質問"


def test_reference_lang_key_overrides_file_name(tmp_path):
    path = tmp_path / "aya_de.json"
    path.write_text(json.dumps([ref_item(0, lang="fr"), ref_item(1)]), encoding="utf-8")
    assert [r.lang for r in load_file(path).records] == ["fr", "de"]


def test_reference_bad_record_names_file_and_index(tmp_path):
    path = tmp_path / "aya_ja.json"
    path.write_text(json.dumps([ref_item(0), ref_item(1, output=3)]), encoding="utf-8")
    with pytest.raises(InputError, match=re.escape(f"{path}:1 (record 1): field 'output' must be a string")):
        load_file(path)
    # pretty-printed, the error names the line the record starts on
    path.write_text(json.dumps([ref_item(0), ref_item(1, output=3)], indent=2, ensure_ascii=False), encoding="utf-8")
    with pytest.raises(InputError, match=re.escape(f"{path}:7 (record 1): field 'output' must be a string")):
        load_file(path)
    report = load_file(path, on_bad_record="skip")
    assert [r.id for r in report.records] == ["aya_ja-000000"]
    assert report.skipped == 1


def test_reference_english_file_is_rejected(tmp_path):
    path = tmp_path / "aya_en.json"
    path.write_text(json.dumps([ref_item(0)]), encoding="utf-8")
    with pytest.raises(InputError, match=re.escape(f"{path}:1 (record 0): lang 'en'")):
        load_file(path)


def test_reference_not_an_array(tmp_path):
    path = tmp_path / "aya_de.json"
    path.write_text(json.dumps({"instruction": "x"}), encoding="utf-8")
    with pytest.raises(InputError, match="expected a JSON array"):
        load_file(path)


def test_reference_malformed_json_names_line(tmp_path):
    path = tmp_path / "aya_de.json"
    path.write_text('[\n  {"instruction": "a",\n  oops\n]\n', encoding="utf-8")
    with pytest.raises(InputError, match=re.escape(f"{path}:3: malformed JSON")):
        load_file(path)


def test_reference_invalid_utf8(tmp_path):
    path = tmp_path / "aya_de.json"
    path.write_bytes(b'[{"instruction": "\xff"}]')
    with pytest.raises(InputError, match=re.escape(f"{path}: not valid UTF-8")):
        load_file(path)


def test_directory_mixing_jsonl_and_reference(tmp_path):
    write_jsonl(tmp_path / "a.jsonl", [rec(1, "ja")])
    (tmp_path / "aya_de.json").write_text(json.dumps([ref_item(0)]), encoding="utf-8")
    report = load_file(tmp_path)
    assert [(r.id, r.lang) for r in report.records] == [("r1-ja", "ja"), ("aya_de-000000", "de")]


# --------------------------------------------------------------------------- hub


def test_load_hub_offline_fails_fast(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    start = time.monotonic()
    with pytest.raises(HubUnreachableError) as info:
        load_hub("some/dataset", ["de"])
    assert time.monotonic() - start < 5
    message = str(info.value)
    assert "some/dataset" in message
    assert ".jsonl" in message and "bundled" in message  # the local alternative


def test_load_source_hub_prefix_offline(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    start = time.monotonic()
    with pytest.raises(HubUnreachableError, match=r"some/dataset.*data\.source"):
        load_source("hub:some/dataset", ["ja"])
    assert time.monotonic() - start < 5


class FakeTable(list):
    """What ``datasets.load_dataset(..., split=...)`` returns, as far as the loader uses it."""

    @property
    def column_names(self) -> list[str]:
        return list(self[0]) if self else []


@pytest.fixture
def fake_hub(monkeypatch):
    """A stand-in for the hub: ``tables[(dataset, config)]`` are the rows of that config's train split."""
    import datasets

    import cc_core.hub

    tables: dict[tuple[str, str | None], list[dict]] = {}
    monkeypatch.setattr(cc_core.hub, "hub_reachable", lambda timeout=3.0: True)
    monkeypatch.setattr(datasets, "get_dataset_config_names",
                        lambda name: sorted({c for (d, c) in tables if d == name and c}) or ["default"])

    def load_dataset(name, config=None, split="train"):
        if (name, config) not in tables:
            raise ValueError(f"no config {config!r}")
        return FakeTable(tables[(name, config)])

    monkeypatch.setattr(datasets, "load_dataset", load_dataset)
    return tables


def test_hub_per_language_configs_join_english_by_id(fake_hub, caplog):
    fake_hub[("MBZUAI/Bactrian-X", "en")] = [
        {"id": "1", "instruction": "Translate to French", "input": "good morning", "output": "bonjour"},
        {"id": "2", "instruction": "Name a colour", "input": "", "output": "red"}]
    fake_hub[("MBZUAI/Bactrian-X", "de")] = [
        {"id": "1", "instruction": "Übersetze ins Französische", "input": "guten Morgen", "output": "bonjour"},
        {"id": "2", "instruction": "Nenne eine Farbe", "input": "", "output": "rot"},
        {"id": "9", "instruction": "Ohne englisches Gegenstück", "input": "", "output": "x"}]
    report = load_source("hub:MBZUAI/Bactrian-X", ["de", "yo"])
    assert [r.to_dict() for r in report.records] == [
        {"id": "1-de", "lang": "de", "instruction": "Übersetze ins Französische\n\nguten Morgen", "output": "bonjour",
         "instruction_en": "Translate to French\n\ngood morning"},
        {"id": "2-de", "lang": "de", "instruction": "Nenne eine Farbe", "output": "rot",
         "instruction_en": "Name a colour"}]
    assert "no config for yo" in caplog.text and "1 rows have no English row" in caplog.text


def test_hub_per_language_bad_rows_name_the_row_or_are_counted(fake_hub):
    fake_hub[("x/bx", "en")] = [{"id": "1", "instruction": "Q", "input": "", "output": "A"}]
    fake_hub[("x/bx", "ru")] = [{"id": "1", "instruction": "В", "input": "", "output": ""}]
    with pytest.raises(InputError, match=r"hub:x/bx/ru\[0\]: field 'output' is empty"):
        load_source("hub:x/bx", ["ru"])
    assert load_source("hub:x/bx", ["ru"], on_bad_record="skip").skipped == 1
    with pytest.raises(InputError, match=r"hub:x/bx: none of the languages sw is a config"):
        load_source("hub:x/bx", ["sw"])


def test_hub_single_table_with_a_translation_column(fake_hub):
    fake_hub[("aya/translated", None)] = [
        {"inputs": "ما هي عاصمة فرنسا؟", "targets": "باريس.", "inputs_en": "What is the capital of France?",
         "language_code": "arb"},
        {"inputs": "法国的首都是哪里？", "targets": "巴黎。", "inputs_en": "What is the capital of France?",
         "language_code": "zho"},
        {"inputs": "Quelle est la capitale ?", "targets": "Paris.", "inputs_en": "What is the capital?",
         "language_code": "fra"}]
    columns = {"instruction": "inputs", "output": "targets", "instruction_en": "inputs_en", "lang": "language_code"}
    report = load_source("hub:aya/translated", ["ar", "zh"], hub_columns=columns)
    assert [(r.id, r.lang, r.output) for r in report.records] == [
        ("translated-0000000", "ar", "باريس."), ("translated-0000001", "zh", "巴黎。")]
    assert report.records[0].instruction_en == "What is the capital of France?"
    # a column that is not there is named, with the columns that are
    with pytest.raises(InputError, match=r"no column for instruction_en ← 'english'.*columns: inputs, targets"):
        load_source("hub:aya/translated", [], hub_columns={**columns, "instruction_en": "english"})
    # a row without its English side is a bad record, named by row
    fake_hub[("aya/translated", None)].append({"inputs": "Was?", "targets": "Nichts.", "inputs_en": "",
                                                 "language_code": "deu"})
    with pytest.raises(InputError, match=r"hub:aya/translated\[3\]: field 'instruction_en' is empty"):
        load_source("hub:aya/translated", [], hub_columns=columns)


def test_hub_columns_param_names_record_fields():
    from cc_core.config import ConfigError, parse_params

    with pytest.raises(ConfigError, match="data.hub_columns"):
        parse_params({}, overrides=["data.hub_columns={prompt: inputs}"])


# --------------------------------------------------------------------------- prepare

PREP_LANGS = ("ar", "de", "ja", "ru", "zh")


@pytest.fixture
def source(tmp_path) -> Path:
    """60 records: 12 per language in 5 languages."""
    rows = [rec(i, lang) for lang in PREP_LANGS for i in range(12)]
    return write_jsonl(tmp_path / "source.jsonl", rows)


def read_ids(path: Path) -> list[str]:
    return [json.loads(raw)["id"] for raw in path.read_text(encoding="utf-8").splitlines()]


def test_prepare_writes_train_pairs_stats(source, tmp_path):
    out = tmp_path / "prepared"
    result = prepare(DataParams(source=str(source), num_pairs=10, seed=1), out)
    assert sorted(p.name for p in out.iterdir()) == ["pairs.jsonl", "stats.json", "train.jsonl"]
    train = read_records(out / "train.jsonl")
    pairs = read_records(out / "pairs.jsonl")
    assert len(pairs) == 10 == result.pairs
    assert len(train) == 50 == result.train
    assert result.skipped == 0
    assert result.out_dir == out
    train_ids, pair_ids = {r.id for r in train}, {r.id for r in pairs}
    assert not train_ids & pair_ids
    all_ids = {r.id for r in load_file(source).records}
    assert train_ids | pair_ids == all_ids
    stats = json.loads((out / "stats.json").read_text(encoding="utf-8"))
    assert stats["train"] == 50 and stats["pairs"] == 10
    assert stats["skipped_bad_records"] == 0
    assert stats["train_per_language"] == dict(sorted(Counter(r.lang for r in train).items()))
    assert stats["pairs_per_language"] == dict(sorted(Counter(r.lang for r in pairs).items()))
    assert result.languages == dict(Counter(r.lang for r in train))
    # records survive the round trip unchanged
    original = {r.id: r for r in load_file(source).records}
    assert all(original[r.id] == r for r in train + pairs)


@pytest.mark.parametrize("num_pairs", [1, 5, 12, 23])
def test_prepare_pairs_spread_over_languages(source, tmp_path, num_pairs):
    out = tmp_path / "prepared"
    prepare(DataParams(source=str(source), num_pairs=num_pairs, seed=3), out)
    pairs = read_records(out / "pairs.jsonl")
    assert len(pairs) == num_pairs
    counts = Counter(r.lang for r in pairs)
    per_lang = [counts.get(lang, 0) for lang in PREP_LANGS]
    assert max(per_lang) - min(per_lang) <= 1, counts
    assert sum(per_lang) == num_pairs


def test_prepare_same_seed_is_byte_identical(source, tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    prepare(DataParams(source=str(source), num_pairs=8, seed=7), a)
    prepare(DataParams(source=str(source), num_pairs=8, seed=7), b)
    for name in ("train.jsonl", "pairs.jsonl", "stats.json"):
        assert (a / name).read_bytes() == (b / name).read_bytes(), name


def test_prepare_different_seed_different_split(source, tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    prepare(DataParams(source=str(source), num_pairs=8, seed=7), a)
    prepare(DataParams(source=str(source), num_pairs=8, seed=8), b)
    assert set(read_ids(a / "pairs.jsonl")) != set(read_ids(b / "pairs.jsonl"))
    assert (a / "train.jsonl").read_bytes() != (b / "train.jsonl").read_bytes()


def test_prepare_max_train_records(source, tmp_path):
    out = tmp_path / "prepared"
    result = prepare(DataParams(source=str(source), num_pairs=5, seed=0, max_train_records=7), out)
    assert result.train == 7
    assert len(read_ids(out / "train.jsonl")) == 7
    assert len(read_ids(out / "pairs.jsonl")) == 5
    assert json.loads((out / "stats.json").read_text())["train"] == 7


def test_prepare_languages_filter(source, tmp_path):
    out = tmp_path / "prepared"
    prepare(DataParams(source=str(source), languages=["de", "JA"], num_pairs=4, seed=0), out)
    train, pairs = read_records(out / "train.jsonl"), read_records(out / "pairs.jsonl")
    assert {r.lang for r in train + pairs} == {"de", "ja"}
    assert len(train) + len(pairs) == 24
    assert Counter(r.lang for r in pairs) == {"de": 2, "ja": 2}


def test_prepare_num_pairs_too_large(source, tmp_path):
    out = tmp_path / "prepared"
    with pytest.raises(InputError, match=r"data\.num_pairs \(now 60\)"):
        prepare(DataParams(source=str(source), num_pairs=60), out)
    with pytest.raises(InputError, match=r"data\.num_pairs"):
        prepare(DataParams(source=str(source), num_pairs=1000), out)
    assert not out.exists()
    # 59 pairs leaves one record for training
    result = prepare(DataParams(source=str(source), num_pairs=59), out)
    assert (result.train, result.pairs) == (1, 59)


def test_prepare_empty_source(tmp_path):
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    out = tmp_path / "prepared"
    with pytest.raises(InputError, match=re.escape(str(empty))):
        prepare(DataParams(source=str(empty)), out)
    assert not out.exists()


def test_prepare_skip_records_reported(tmp_path):
    rows = [line(rec(i, lang)) for lang in ("de", "ja") for i in range(5)]
    rows.insert(3, line(rec(99, output=1)))
    source = write_lines(tmp_path / "s.jsonl", rows)
    out = tmp_path / "prepared"
    with pytest.raises(InputError, match=at(source, 4)):
        prepare(DataParams(source=str(source), num_pairs=2), out)
    result = prepare(DataParams(source=str(source), num_pairs=2, on_bad_record="skip"), out)
    assert result.skipped == 1
    stats = json.loads((out / "stats.json").read_text())
    assert stats["skipped_bad_records"] == 1
    assert stats["skip_reasons"][0].startswith(f"{source}:4:")
    assert stats["train"] + stats["pairs"] == 10


def test_prepare_failure_leaves_no_partial_output(source, tmp_path, monkeypatch):
    real = prepare_mod.write_jsonl
    calls = []

    def flaky(path, rows):
        calls.append(path)
        if len(calls) > 1:
            raise OSError("disk full")
        return real(path, rows)

    monkeypatch.setattr(prepare_mod, "write_jsonl", flaky)
    parent = tmp_path / "data"
    parent.mkdir()
    out = parent / "prepared"
    with pytest.raises(OSError, match="disk full"):
        prepare(DataParams(source=str(source), num_pairs=5), out)
    assert len(calls) == 2
    assert not out.exists()
    assert list(parent.iterdir()) == []  # no temp dirs left behind


def test_prepare_failure_keeps_previous_output(source, tmp_path, monkeypatch):
    out = tmp_path / "prepared"
    prepare(DataParams(source=str(source), num_pairs=5, seed=1), out)
    before = {p.name: p.read_bytes() for p in out.iterdir()}

    def boom(path, rows):
        raise OSError("disk full")

    monkeypatch.setattr(prepare_mod, "write_jsonl", boom)
    with pytest.raises(OSError):
        prepare(DataParams(source=str(source), num_pairs=5, seed=2), out)
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["prepared", "source.jsonl"]


def test_prepare_overwrites_previous_output(source, tmp_path):
    out = tmp_path / "prepared"
    out.mkdir()
    (out / "stale.txt").write_text("old")
    prepare(DataParams(source=str(source), num_pairs=5), out)
    assert sorted(p.name for p in out.iterdir()) == ["pairs.jsonl", "stats.json", "train.jsonl"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["prepared", "source.jsonl"]


# --------------------------------------------------------------------------- split_records


def make_records(counts: dict[str, int]) -> list[Record]:
    return [Record(f"{lang}-{i:03d}", lang, f"{lang} q{i}", f"a{i}", f"en{i}")
            for lang, n in counts.items() for i in range(n)]


def test_split_records_partition_and_determinism():
    records = make_records({"de": 10, "ja": 10, "zh": 10})
    train, pairs = split_records(records, 9, seed=5)
    assert len(pairs) == 9 and len(train) == 21
    assert sorted(r.id for r in train + pairs) == sorted(r.id for r in records)
    assert Counter(r.lang for r in pairs) == {"de": 3, "ja": 3, "zh": 3}
    # input order does not matter, the seed does
    again = split_records(list(reversed(records)), 9, seed=5)
    assert again == (train, pairs)
    other = split_records(records, 9, seed=6)
    assert other != (train, pairs)


def test_split_records_uneven_languages_still_fills_pairs():
    records = make_records({"de": 1, "ja": 10, "zh": 10})
    train, pairs = split_records(records, 9, seed=0)
    assert len(pairs) == 9
    assert Counter(r.lang for r in pairs) == {"de": 1, "ja": 4, "zh": 4}
    assert len(train) == 12


def test_split_records_zero_pairs_and_too_many():
    records = make_records({"de": 3, "ja": 2})
    train, pairs = split_records(records, 0, seed=0)
    assert pairs == [] and sorted(r.id for r in train) == sorted(r.id for r in records)
    train, pairs = split_records(records, 100, seed=0)
    assert train == [] and len(pairs) == 5


def test_hub_check_does_not_hang_on_a_stuck_resolver(monkeypatch):
    import socket

    from cc_core.hub import hub_reachable

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(socket, "getaddrinfo", lambda *a, **k: time.sleep(5))
    start = time.monotonic()
    assert hub_reachable(timeout=0.3) is False
    assert time.monotonic() - start < 2


def test_prepare_pairs_from_train_as_the_reference(source, tmp_path):
    """pairs_from=train: the Transform pairs are a seeded sample of the training records, which stay in training."""
    out = tmp_path / "prepared"
    result = prepare(DataParams(source=str(source), num_pairs=10, seed=666, pairs_from="train"), out)
    train, pairs = read_records(out / "train.jsonl"), read_records(out / "pairs.jsonl")
    assert result.train == len(train) == 60 and len(pairs) == 10
    assert {r.id for r in pairs} <= {r.id for r in train}
    again = tmp_path / "again"
    prepare(DataParams(source=str(source), num_pairs=10, seed=666, pairs_from="train"), again)
    assert (again / "pairs.jsonl").read_bytes() == (out / "pairs.jsonl").read_bytes()


def test_the_authors_training_file_needs_no_language(tmp_path):
    """Their Training/data/aya_train_mini_parallel.json: a JSON array of instruction/output/instruction_en,
    no lang field, a file name without a language code: records get the undetermined language 'und'."""
    path = tmp_path / "aya_train_mini_parallel.json"
    path.write_text(json.dumps([
        {"instruction": "Quelle est la capitale du Kenya ?", "output": "Nairobi.",
         "instruction_en": "What is the capital of Kenya?"},
        {"instruction": "Wie spät ist es?", "output": "Zwölf.", "instruction_en": "What time is it?"},
    ], ensure_ascii=False, indent=2))
    records = load_file(path).records
    assert [r.lang for r in records] == ["und", "und"]
    assert [r.id for r in records] == ["aya_train_mini_parallel-000000", "aya_train_mini_parallel-000001"]
    out = tmp_path / "prepared"
    result = prepare(DataParams(source=str(path), num_pairs=1, seed=666, pairs_from="train"), out)
    assert result.train == 2 and result.languages == {"und": 2}


# --- issue 21, point 3: data that leaks ---------------------------------------------------------------

def _copies_of_the_first_40_bundled(tmp_path: Path) -> Path:
    """The issue's reproduction: the first 40 bundled records, then the same 40 again under new ids."""
    records = load_bundled().records[:40]
    rows = [r.to_dict() for r in records] + [{**r.to_dict(), "id": f"{r.id}-copy"} for r in records]
    rows[41]["output"] = "  " + rows[41]["output"].upper() + "\u200b"  # normalises alike: still a duplicate
    source = tmp_path / "copies.jsonl"
    source.write_text("".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows), encoding="utf-8")
    return source


def test_prepare_drops_content_duplicates_and_pairs_never_overlap_training(tmp_path):
    """Before: exit 0 with 6 of the 24 held-out pairs also in train.jsonl and 7 duplicates in training."""
    from cc_core.data.records import content_key, normalise_text

    out = tmp_path / "prepared"
    result = prepare(DataParams(source=str(_copies_of_the_first_40_bundled(tmp_path)), num_pairs=24, seed=42), out)
    train, pairs = read_records(out / "train.jsonl"), read_records(out / "pairs.jsonl")
    stats = json.loads((out / "stats.json").read_text(encoding="utf-8"))
    assert stats["duplicates_dropped"] == 40 and len(stats["duplicates"]) == 20
    assert stats["duplicates"][0].endswith("-copy duplicates " + stats["duplicates"][0].split("-copy")[0])
    assert len(train) + len(pairs) == 40 == result.train + result.pairs and len(pairs) == 24
    keys = [content_key(r) for r in train + pairs]
    assert len(set(keys)) == len(keys)  # no example twice
    assert not {normalise_text(r.instruction) for r in pairs} & {normalise_text(r.instruction) for r in train}
    assert not any(r.id.endswith("-copy") for r in train + pairs)  # the first occurrence is the one kept


def test_a_held_out_pair_never_shares_its_instruction_with_training(tmp_path):
    """Same instruction, another answer: not a duplicate (both train), but never a held-out pair."""
    records = load_bundled().records[:12]
    rows = [r.to_dict() for r in records] + [{**records[0].to_dict(), "id": "alt", "output": "Another answer."}]
    source = tmp_path / "alt.jsonl"
    source.write_text("".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows), encoding="utf-8")
    for seed in range(6):
        out = tmp_path / f"p{seed}"
        prepare(DataParams(source=str(source), num_pairs=6, seed=seed), out)
        pair_ids = set(read_ids(out / "pairs.jsonl"))
        assert not pair_ids & {records[0].id, "alt"} and len(pair_ids) == 6
        assert {records[0].id, "alt"} <= set(read_ids(out / "train.jsonl"))


@pytest.mark.parametrize("invisible", ["\u200b", " \u200b\ufeff ", "\u2060\u200d"])
def test_an_answer_empty_once_normalised_is_an_error_or_dropped_and_counted(tmp_path, invisible):
    """Before: an answer made only of a zero-width space was trained on."""
    rows = [r.to_dict() for r in load_bundled().records[:6]]
    rows[3]["output"] = invisible
    source = tmp_path / "zw.jsonl"
    source.write_text("".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows), encoding="utf-8")
    with pytest.raises(InputError, match=rf"zw\.jsonl:4: field 'output' is empty"):
        prepare(DataParams(source=str(source), num_pairs=1), tmp_path / "strict")  # data.on_bad_record: error
    out = tmp_path / "lenient"
    result = prepare(DataParams(source=str(source), num_pairs=1, on_bad_record="skip"), out)
    stats = json.loads((out / "stats.json").read_text(encoding="utf-8"))
    assert result.skipped == 1 and stats["empty_after_normalisation"] == 1 and stats["skipped_bad_records"] == 1
    assert rows[3]["id"] not in read_ids(out / "train.jsonl") + read_ids(out / "pairs.jsonl")
    assert result.train + result.pairs == 5
