"""Parallel SFT records: ``{id, lang, instruction, output, instruction_en}``.

Sources (``data.source`` in params):
- ``bundled``: the set shipped in ``cc_core/data/bundled/sft/<lang>.jsonl`` (320 records,
  10 languages, written for this project);
- a file: JSONL in the record format, or a JSON array in the reference format
  (``instruction``, ``output``, ``instruction_en``; ``lang`` from a key or the file name);
- ``hub:<dataset id>``: a Hugging Face dataset (Bactrian-X style per-language configs joined
  with English by id, or one table whose columns ``data.hub_columns`` maps to the record
  fields, e.g. Aya-style with an English translation column).
"""

from __future__ import annotations

import json
import logging
import os
import unicodedata
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from cc_core.hub import require_hub
from cc_core.io import InputError, iter_jsonl
from cc_core.languages import LANGUAGES, NON_ENGLISH

log = logging.getLogger(__name__)

BUNDLED_SFT_DIR = Path(__file__).parent / "bundled" / "sft"
FIELDS = ("id", "lang", "instruction", "output", "instruction_en")
# ISO 639 "undetermined": the reference format's records need no language (the authors' Aya file has
# none, and Aya spans languages beyond the 22 evaluated). The method does not need it; per-language
# statistics, pair balancing and fit.per_language treat "und" as one more language.
UNDETERMINED = "und"


@dataclass(frozen=True)
class Record:
    id: str
    lang: str
    instruction: str
    output: str
    instruction_en: str

    def to_dict(self) -> dict[str, str]:
        return asdict(self)


@dataclass
class LoadReport:
    """What a loader kept and what it skipped (``on_bad_record: skip``)."""

    records: list[Record] = field(default_factory=list)
    skipped: int = 0
    problems: list[str] = field(default_factory=list)  # first few skip reasons, for the log
    empty_after_normalisation: int = 0  # of ``skipped``: a field of only whitespace / invisible characters


class EmptyFieldError(InputError):
    """A record field holds nothing once normalised (whitespace, a zero-width space, a BOM...)."""


def normalise_text(text: str) -> str:
    """The content of ``text`` for comparison: NFKC, without format characters (zero-width spaces and
    joiners, BOM, soft hyphen, direction marks: Unicode category Cf), whitespace collapsed, case folded.
    Two records whose instruction and answer normalise alike are duplicates; a field that normalises
    to "" is empty."""
    folded = unicodedata.normalize("NFKC", text)
    visible = "".join(ch for ch in folded if unicodedata.category(ch) != "Cf")
    return " ".join(visible.split()).casefold()


def content_key(record: Record) -> tuple[str, str]:
    """What makes two records the same training example, whatever their ids (``prepare`` dedupes on it)."""
    return normalise_text(record.instruction), normalise_text(record.output)


def validate_record(raw: Any, where: str) -> Record:
    """Check one raw record; raise InputError naming ``where`` (``file:line``) and the field."""
    if isinstance(raw, _Unparsable):
        raise InputError(f"{where}: {raw}")
    if not isinstance(raw, dict):
        raise InputError(f"{where}: a record must be a JSON object, got {type(raw).__name__}")
    for key in FIELDS:
        if key not in raw:
            raise InputError(f"{where}: missing field {key!r}")
        value = raw[key]
        if not isinstance(value, str):
            raise InputError(f"{where}: field {key!r} must be a string, got {type(value).__name__}")
        if not value.strip():
            raise EmptyFieldError(f"{where}: field {key!r} is empty")
        if not normalise_text(value):  # str.strip() keeps U+200B and friends: "\u200b" is not an answer
            raise EmptyFieldError(f"{where}: field {key!r} is empty once normalised (only invisible characters: "
                                  f"{', '.join(sorted({f'U+{ord(ch):04X}' for ch in value if not ch.isspace()}))})")
    lang = raw["lang"].strip().lower()
    if lang not in LANGUAGES and lang != UNDETERMINED:
        raise InputError(f"{where}: unknown language code {raw['lang']!r}; valid: {' '.join(NON_ENGLISH)}")
    if lang == "en":
        raise InputError(f"{where}: lang 'en': records must be non-English (the English side is instruction_en)")
    return Record(raw["id"].strip(), lang, raw["instruction"], raw["output"], raw["instruction_en"])


def collect_records(items: Iterable[tuple[str, Any]], on_bad_record: str = "error") -> LoadReport:
    """Validate ``(where, raw)`` pairs, rejecting duplicates; skip-and-count when asked."""
    report = LoadReport()
    seen: dict[str, str] = {}
    for where, raw in items:
        try:
            record = validate_record(raw, where)
            if record.id in seen:
                raise InputError(f"{where}: duplicate id {record.id!r} (first at {seen[record.id]})")
        except InputError as err:
            if on_bad_record == "error":
                raise
            report.skipped += 1
            report.empty_after_normalisation += isinstance(err, EmptyFieldError)
            if len(report.problems) < 20:
                report.problems.append(str(err))
            continue
        seen[record.id] = where
        report.records.append(record)
    return report


def _jsonl_items(path: Path, on_bad_record: str) -> Iterator[tuple[str, Any]]:
    """Yield raw records; with ``skip``, a malformed line becomes a bad record instead of an error."""
    if on_bad_record == "error":
        for number, raw in iter_jsonl(path):
            yield f"{path}:{number}", raw
        return
    with path.open("rb") as handle:
        for number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                raw = json.loads(line.decode("utf-8"))
            except UnicodeDecodeError as err:
                raw = _Unparsable(f"not valid UTF-8 ({err.reason})")
            except json.JSONDecodeError as err:
                raw = _Unparsable(f"malformed JSON: {err.msg}")
            yield f"{path}:{number}", raw


class _Unparsable(str):
    """A line that did not parse; validate_record reports the reason it carries."""


def _reference_items(path: Path) -> Iterator[tuple[str, Any]]:
    """The reference format: a JSON array of {instruction, output, instruction_en[, lang, id]}."""
    try:
        text = path.read_text(encoding="utf-8")
        data = json.loads(text)
    except UnicodeDecodeError as err:
        raise InputError(f"{path}: not valid UTF-8 ({err.reason} at byte {err.start})") from None
    except json.JSONDecodeError as err:
        raise InputError(f"{path}:{err.lineno}: malformed JSON: {err.msg}") from None
    if not isinstance(data, list):
        raise InputError(f"{path}: expected a JSON array of records (reference format)")
    stem_lang = path.stem.lower().split("_")[-1]
    for index, (line, raw) in enumerate(zip(_element_lines(text), data)):
        where = f"{path}:{line} (record {index})"
        if isinstance(raw, dict):
            raw = dict(raw)
            if "lang" not in raw:
                # a language from the file name (aya_de.json), else undetermined (the authors' file)
                raw["lang"] = stem_lang if stem_lang in LANGUAGES else UNDETERMINED
            raw.setdefault("id", f"{path.stem}-{index:06d}")
        yield where, raw


def _element_lines(text: str) -> Iterator[int]:
    """The line on which each element of a (valid) top-level JSON array starts."""
    decoder = json.JSONDecoder()
    position, line = text.index("[") + 1, text.count("\n", 0, text.index("[")) + 1

    def skip(i: int) -> int:
        while i < len(text) and text[i] in " \t\r\n,":
            i += 1
        return i

    start = skip(position)
    while start < len(text) and text[start] != "]":
        line += text.count("\n", position, start)
        yield line
        _, end = decoder.raw_decode(text, start)
        position, start = start, skip(end)


AUTHORS_REPO = "git clone https://github.com/YYF-Tommy/CC-Tuning external/CC-Tuning"


def where_from(path: str | Path, kind: str = "data") -> str:
    """Where a missing ``data.source`` (``kind="data"``) or ``eval.data_dir`` (``"eval"``) comes from."""
    if "CC-Tuning" in str(path):  # params.paper.yaml's: the authors' files, not redistributed here
        return (f"the authors' {'training data' if kind == 'data' else 'benchmark files'}, from their repository: "
                f"{AUTHORS_REPO} (docs/user-guide.md, 'Reproduce the paper')")
    if kind == "eval":
        return ("a copy of the authors' benchmark folder (<BENCH>/<split>/<lang>.json), e.g. "
                f"{AUTHORS_REPO} then eval.data_dir: external/CC-Tuning/Inference/data; or eval.data_dir: bundled")
    return ("your parallel SFT data: a .jsonl of {id, lang, instruction, output, instruction_en} records or a "
            "reference-format JSON array (docs/user-guide.md, 'Real data'); or data.source: bundled")


def load_file(path: str | Path, on_bad_record: str = "error") -> LoadReport:
    path = Path(path)
    if not path.exists():
        raise InputError(f"{path}: data file not found (data.source); it is {where_from(path)}")
    if path.is_dir():
        files = sorted(p for p in path.iterdir() if p.suffix in (".jsonl", ".json"))
        if not files:
            raise InputError(f"{path}: no .json/.jsonl files in this directory")
        return collect_records(_items_of(files, on_bad_record), on_bad_record)
    return collect_records(_items_of([path], on_bad_record), on_bad_record)


def _items_of(files: list[Path], on_bad_record: str) -> Iterator[tuple[str, Any]]:
    for file in files:
        if file.suffix == ".jsonl":
            yield from _jsonl_items(file, on_bad_record)
        elif file.suffix == ".json":
            yield from _reference_items(file)
        else:
            raise InputError(f"{file}: unsupported data file type (use .jsonl or .json)")


def load_bundled(on_bad_record: str = "error") -> LoadReport:
    return load_file(BUNDLED_SFT_DIR, on_bad_record)


# ISO 639-3 / name spellings some hub datasets use (Aya: "arb", "zho", ...) → our codes.
ISO3 = {"ara": "ar", "arb": "ar", "ben": "bn", "deu": "de", "ger": "de", "ell": "el", "gre": "el", "spa": "es",
        "eus": "eu", "baq": "eu", "fra": "fr", "fre": "fr", "hin": "hi", "ind": "id", "jpn": "ja", "kor": "ko",
        "por": "pt", "rus": "ru", "swa": "sw", "swh": "sw", "tel": "te", "tha": "th", "tur": "tr", "urd": "ur",
        "vie": "vi", "yor": "yo", "zho": "zh", "cmn": "zh", "chi": "zh", "eng": "en"}


def normalize_lang(code: Any) -> Any:
    """A hub dataset's language code in our two-letter form ("arb" → "ar", "zh-CN" → "zh")."""
    if not isinstance(code, str):
        return code
    short = code.strip().lower().replace("_", "-").split("-")[0]
    return ISO3.get(short, short)


def load_hub(dataset_id: str, languages: list[str], on_bad_record: str = "error",
             columns: dict[str, str] | None = None, split: str = "train") -> LoadReport:
    """A Hugging Face dataset, in one of two layouts:

    - per-language configs that share ids with an ``en`` config (Bactrian-X): each language's
      rows joined with the English row of the same id (``instruction`` + ``input``, ``output``);
    - one table with a column per record field (Aya-style, with an English translation column):
      ``columns`` maps our fields to its columns, e.g. ``{instruction: inputs, output: targets,
      instruction_en: inputs_en, lang: language_code}``; unmapped fields keep their names and a
      missing ``id`` becomes the row index. Language codes are normalised ("arb" → "ar").
    """
    require_hub(f"dataset {dataset_id!r}", "set data.source to a local .jsonl/.json file or 'bundled'")
    import datasets  # why: seconds to import, and only the hub path needs it

    try:
        configs = datasets.get_dataset_config_names(dataset_id)
    except Exception as err:  # noqa: BLE001 - the hub's errors vary by version; say which dataset
        raise InputError(f"hub:{dataset_id}: cannot read the dataset's configurations ({type(err).__name__}: "
                         f"{str(err)[:300]})") from None
    if "en" in configs and not columns:
        return _load_per_language_configs(datasets, dataset_id, configs, languages, on_bad_record, split)
    rows = datasets.load_dataset(dataset_id, split=split)
    mapping = {field: (columns or {}).get(field, field) for field in FIELDS}
    absent = [f"{field} ← {column!r}" for field, column in mapping.items()
              if column not in rows.column_names and field != "id"]
    if absent:
        raise InputError(f"hub:{dataset_id}: no column for {', '.join(absent)} (columns: "
                         f"{', '.join(rows.column_names)}); map them with data.hub_columns")

    def items() -> Iterator[tuple[str, Any]]:
        for index, row in enumerate(rows):
            raw = {field: row.get(column) for field, column in mapping.items()}
            raw["lang"] = normalize_lang(raw["lang"])
            if raw["id"] is None:
                raw["id"] = f"{dataset_id.split('/')[-1]}-{index:07d}"
            if languages and raw["lang"] not in languages:
                continue
            yield f"hub:{dataset_id}[{index}]", raw

    return collect_records(items(), on_bad_record)


def _load_per_language_configs(datasets, dataset_id: str, configs: list[str], languages: list[str],
                               on_bad_record: str, split: str) -> LoadReport:
    wanted = languages or list(NON_ENGLISH)
    langs = [lang for lang in wanted if lang in configs]
    missing = [lang for lang in wanted if lang not in configs]
    if missing:
        log.warning("hub:%s has no config for %s: those languages are skipped", dataset_id, " ".join(missing))
    if not langs:
        raise InputError(f"hub:{dataset_id}: none of the languages {' '.join(wanted)} is a config of this "
                         f"dataset (configs: {' '.join(sorted(configs)[:40])})")
    english = datasets.load_dataset(dataset_id, "en", split=split)
    by_id = {row["id"]: _join_input(row) for row in english if row.get("id") is not None and row.get("instruction")}
    items: list[tuple[str, Any]] = []
    unmatched = 0
    for lang in langs:
        for index, row in enumerate(datasets.load_dataset(dataset_id, lang, split=split)):
            where = f"hub:{dataset_id}/{lang}[{index}]"
            if row.get("id") not in by_id:
                unmatched += 1  # no English parallel: not usable for CC-Tuning
                continue
            instruction = _join_input(row) if isinstance(row.get("instruction"), str) else row.get("instruction")
            items.append((where, {"id": f"{row['id']}-{lang}", "lang": lang, "instruction": instruction,
                                  "output": row.get("output"), "instruction_en": by_id[row["id"]]}))
    if unmatched:
        log.warning("hub:%s: %d rows have no English row with the same id and were left out", dataset_id, unmatched)
    return collect_records(items, on_bad_record)


def _join_input(row: dict[str, Any]) -> str:
    # Alpaca-style rows split the task into instruction + optional input.
    extra = (row.get("input") or "").strip()
    return f"{row['instruction']}\n\n{extra}" if extra else row["instruction"]


def load_source(source: str, languages: list[str] | None = None, on_bad_record: str = "error",
                hub_columns: dict[str, str] | None = None) -> LoadReport:
    """Dispatch on ``data.source``; filter to ``languages`` when given."""
    if source == "bundled":
        report = load_bundled(on_bad_record)
    elif source.startswith("hub:"):
        report = load_hub(source[4:], languages or [], on_bad_record, hub_columns)
    else:
        report = load_file(os.path.expanduser(source), on_bad_record)
    if languages:
        report.records = [r for r in report.records if r.lang in languages]
    return report


def read_records(path: str | Path) -> list[Record]:
    """Read a prepared JSONL file (``data/prepared/train.jsonl``, ``pairs.jsonl``) back; strict:
    errors name file:line."""
    return load_file(path).records
