"""The ``prepare`` stage: records → ``data/prepared/{train,pairs}.jsonl`` + ``stats.json``.

    cctune prepare --params params.yaml          # reads data.*

``pairs.jsonl`` is a seeded held-out set of parallel pairs for the Transform Matrix,
disjoint from ``train.jsonl`` and spread evenly over languages.

Content, not ids, decides what a record is (``records.normalise_text``: NFKC, no zero-width or other
format characters, whitespace collapsed, case folded): records whose instruction and answer normalise
alike are one example (the first in source order is kept; ``stats.json`` counts the rest as
``duplicates_dropped``), and a held-out pair never shares its normalised instruction with a training
record (``data.pairs_from: heldout``). A field that is empty once normalised (a lone U+200B) is a bad
record: an error naming file:line under ``data.on_bad_record: error``, dropped and counted
(``empty_after_normalisation``) under ``skip``.
"""

from __future__ import annotations

import logging
import random
from collections import Counter, defaultdict
from dataclasses import dataclass
from pathlib import Path

from cc_core.config import DataParams
from cc_core.data.records import Record, content_key, load_source, normalise_text
from cc_core.io import InputError, atomic_dir, write_json, write_jsonl

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class PrepareResult:
    out_dir: Path
    train: int
    pairs: int
    skipped: int
    languages: dict[str, int]


def dedupe(records: list[Record]) -> tuple[list[Record], list[str]]:
    """(records without content duplicates, "id duplicates id" for each one dropped); the first
    occurrence in source order is kept."""
    first: dict[tuple[str, str], str] = {}
    kept, dropped = [], []
    for record in records:
        key = content_key(record)
        if key in first:
            dropped.append(f"{record.id} duplicates {first[key]}")
            continue
        first[key] = record.id
        kept.append(record)
    return kept, dropped


def split_records(records: list[Record], num_pairs: int, seed: int) -> tuple[list[Record], list[Record]]:
    """Seeded split into (train, pairs); pairs are drawn round-robin over languages, only among records
    whose normalised instruction no other record has (a pair's activations are its instruction's: a
    training record with the same instruction would make the pair a training example)."""
    rng = random.Random(seed)
    seen = Counter(normalise_text(r.instruction) for r in records)
    shared = [r for r in records if seen[normalise_text(r.instruction)] > 1]
    by_lang: dict[str, list[Record]] = defaultdict(list)
    for record in sorted(records, key=lambda r: r.id):
        if seen[normalise_text(record.instruction)] == 1:
            by_lang[record.lang].append(record)
    for bucket in by_lang.values():
        rng.shuffle(bucket)
    pairs: list[Record] = []
    langs = sorted(by_lang)
    cursor = 0
    while len(pairs) < num_pairs and any(by_lang[lang] for lang in langs):
        bucket = by_lang[langs[cursor % len(langs)]]
        if bucket:
            pairs.append(bucket.pop())
        cursor += 1
    train = [record for lang in langs for record in by_lang[lang]] + sorted(shared, key=lambda r: r.id)
    rng.shuffle(train)
    if len(pairs) < num_pairs and shared:
        log.warning("only %d of data.num_pairs=%d held-out pairs: %d records share their instruction with "
                    "another record and stay in training", len(pairs), num_pairs, len(shared))
    return train, pairs


def sample_pairs_from_train(records: list[Record], num_pairs: int, seed: int) -> tuple[list[Record], list[Record]]:
    """The reference's Transform pairs: a seeded sample *of the training set* (they stay in it), drawn as
    their ``TransformMatrix/get_vectors.py`` draws: ``random.seed(666); random.sample(range(n), k)`` over
    the file in its order, pairs in draw order. For n over ~4,100 ``random.sample`` draws one index at a
    time, so the first k of a longer sample are exactly the k-sample: the first 1000 of 1100 are their
    1000 (their code took the first 10)."""
    rng = random.Random(seed)
    ordered = list(records)  # file order: their indices are positions in the file
    pairs = [ordered[i] for i in rng.sample(range(len(ordered)), min(num_pairs, len(ordered)))]
    train = sorted(ordered, key=lambda r: r.id)
    rng.shuffle(train)
    return train, pairs


def prepare(params: DataParams, out_dir: str | Path = "data/prepared") -> PrepareResult:
    report = load_source(params.source, params.languages, params.on_bad_record, params.hub_columns)
    if report.skipped:
        log.warning("skipped %d bad records (data.on_bad_record=skip); first: %s",
                    report.skipped, "; ".join(report.problems[:3]))
    if not report.records:
        raise InputError(f"{params.source}: no usable records (languages filter: {params.languages or 'all'})")
    records, duplicates = dedupe(report.records)
    if duplicates:
        log.warning("dropped %d records whose instruction and answer repeat an earlier record's (first: %s)",
                    len(duplicates), "; ".join(duplicates[:3]))
    if params.pairs_from == "train":
        train, pairs = sample_pairs_from_train(records, params.num_pairs, params.seed)
    else:
        train, pairs = split_records(records, params.num_pairs, params.seed)
    if params.max_train_records:
        train = train[: params.max_train_records]
    if not train:
        raise InputError(
            f"{params.source}: all {len(records)} records went to pairs.jsonl; "
            f"lower data.num_pairs (now {params.num_pairs})"
        )
    langs = Counter(r.lang for r in train)
    stats = {
        "source": params.source,
        "train": len(train),
        "pairs": len(pairs),
        "skipped_bad_records": report.skipped,
        "empty_after_normalisation": report.empty_after_normalisation,
        "skip_reasons": report.problems,
        "duplicates_dropped": len(duplicates),
        "duplicates": duplicates[:20],
        "train_per_language": dict(sorted(langs.items())),
        "pairs_per_language": dict(sorted(Counter(r.lang for r in pairs).items())),
    }
    with atomic_dir(out_dir) as tmp:
        write_jsonl(tmp / "train.jsonl", (r.to_dict() for r in train))
        write_jsonl(tmp / "pairs.jsonl", (r.to_dict() for r in pairs))
        write_json(tmp / "stats.json", stats)
    log.info("prepared %d train records and %d pairs over %d languages", len(train), len(pairs), len(langs))
    return PrepareResult(Path(out_dir), len(train), len(pairs), report.skipped, dict(langs))
