"""The ``eval`` and ``score`` stages (cc_core.evaluate); the report is tests/unit/test_report.py."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import pytest

from cc_core.config import parse_params
from cc_core.data.benchmarks import get_spec, load_benchmark
from cc_core.evaluate import evaluate, read_predictions, resolve_langs, score, summarize
from cc_core.metrics import score_item
from cc_core.io import InputError
from cc_core.scoring.common import tokenize

REPO = Path(__file__).resolve().parents[2]

# benchmark → (a language of the bundled fixture, how a correct answer is written)
BUNDLED_CASES = {
    "XNLI": ("zh", lambda gold: f"({gold})"),
    "XStoryCloze": ("ar", lambda gold: f"答案是{gold}"),
    "MMMLU": ("ko", lambda gold: f"答案是{gold}"),
    "XQuAD": ("de", lambda gold: gold),
    "MKQA": ("ja", lambda gold: gold[0]),
    "XLSum": ("sw", lambda gold: gold),
}
BASE_KEYS = {"benchmark", "lang", "n", "metric", "score", "unparsed"}


def _write_jsonl(path: Path, rows) -> Path:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r, ensure_ascii=False)) + "\n" for r in rows),
                    encoding="utf-8")
    return path


def _wrong(spec, gold) -> str:
    """A parseable but wrong answer."""
    if spec.kind == "choice":
        other = next(label for label in spec.labels if label != gold)
        return f"({other})"
    return "zzz qqq xxx"


def _params(*overrides: str):
    return parse_params({}, overrides=["tracking.enabled=false", *overrides])


# --- score(): the bundled fixture, all six benchmarks --------------------------------------------

@pytest.mark.parametrize("benchmark", list(BUNDLED_CASES))
def test_score_gold_predictions_score_100(tmp_path, benchmark):
    lang, answer = BUNDLED_CASES[benchmark]
    spec = get_spec(benchmark)
    items = load_benchmark(benchmark, lang, "bundled")
    assert len(items) >= 4
    preds = _write_jsonl(tmp_path / "preds.jsonl", [{"id": i.id, "output": answer(i.gold)} for i in items])
    out = tmp_path / "out" / "score.json"
    summary = score(benchmark.lower(), "bundled", lang, preds, output=out)
    assert summary["score"] == 100.0
    assert summary["unparsed"] == 0 and summary["empty"] == 0
    assert summary["n"] == len(items)
    written = json.loads(out.read_text(encoding="utf-8"))
    assert written == summary
    assert BASE_KEYS <= set(written)
    assert written["benchmark"] == spec.name and written["lang"] == lang and written["metric"] == spec.metric
    assert ("em" in written) == (spec.kind == "qa")
    if spec.kind == "qa":
        assert written["em"] == 100.0


@pytest.mark.parametrize("benchmark", list(BUNDLED_CASES))
def test_score_wrong_and_empty_outputs_lower_the_score(tmp_path, benchmark):
    lang, answer = BUNDLED_CASES[benchmark]
    spec = get_spec(benchmark)
    items = load_benchmark(benchmark, lang, "bundled")[:4]
    outputs = [answer(items[0].gold), _wrong(spec, items[1].gold), "", "   "]
    preds = _write_jsonl(tmp_path / "p.jsonl", [{"output": o} for o in outputs])  # keyed by line order
    summary = score(benchmark, "bundled", lang, preds, limit=4)
    assert summary["n"] == 4
    assert summary["score"] == 25.0  # on the 0–100 scale
    assert summary["empty"] == 2
    assert summary["unparsed"] == 2  # the wrong answer is parsed, just wrong
    if spec.kind == "qa":
        assert summary["em"] == 25.0
    garbage = _write_jsonl(tmp_path / "g.jsonl", [{"output": "zzz"} for _ in items])
    worse = score(benchmark, "bundled", lang, garbage, limit=4)
    assert worse["score"] == 0.0 and worse["empty"] == 0
    if spec.kind == "choice":
        assert worse["unparsed"] == 4


def test_score_by_id_in_any_order_equals_by_line_order(tmp_path):
    items = load_benchmark("XNLI", "ar", "bundled")
    outputs = [f"({i.gold})" if k % 2 == 0 else "(9)" for k, i in enumerate(items)]
    by_line = _write_jsonl(tmp_path / "line.jsonl", [{"output": o} for o in outputs])
    by_id = _write_jsonl(tmp_path / "id.jsonl",
                         [{"id": i.id, "output": o} for i, o in reversed(list(zip(items, outputs)))])
    assert read_predictions(by_line, items) == outputs
    assert read_predictions(by_id, items) == outputs
    assert score("XNLI", "bundled", "ar", by_line) == score("XNLI", "bundled", "ar", by_id)
    assert score("XNLI", "bundled", "ar", by_id)["score"] == 50.0


def test_score_input_errors_name_file_and_line(tmp_path):
    items = load_benchmark("MMMLU", "ko", "bundled")
    ok = {"output": "(A)"}

    malformed = _write_jsonl(tmp_path / "bad.jsonl", [ok, '{"output": "(B)"'])
    with pytest.raises(InputError, match=r"bad\.jsonl:2\b.*malformed"):
        score("MMMLU", "bundled", "ko", malformed)

    no_output = _write_jsonl(tmp_path / "noout.jsonl", [ok, ok, {"id": items[2].id, "text": "(C)"}])
    with pytest.raises(InputError, match=r"noout\.jsonl:3\b.*output"):
        score("MMMLU", "bundled", "ko", no_output)

    not_string = _write_jsonl(tmp_path / "num.jsonl", [{"output": 3}])
    with pytest.raises(InputError, match=r"num\.jsonl:1\b"):
        score("MMMLU", "bundled", "ko", not_string)

    unknown = _write_jsonl(tmp_path / "unknown.jsonl", [{"id": items[0].id, **ok}, {"id": "MMMLU-ko-99999", **ok}])
    with pytest.raises(InputError, match=r"unknown\.jsonl:2\b.*MMMLU-ko-99999"):
        score("MMMLU", "bundled", "ko", unknown)

    too_many = _write_jsonl(tmp_path / "many.jsonl", [ok] * (len(items) + 1))
    with pytest.raises(InputError, match=rf"many\.jsonl:{len(items) + 1}\b.*more predictions"):
        score("MMMLU", "bundled", "ko", too_many)

    too_few = _write_jsonl(tmp_path / "few.jsonl", [ok] * (len(items) - 1))
    with pytest.raises(InputError, match=rf"few\.jsonl.*no prediction for 1 of the {len(items)} items.*{items[-1].id}"
                                         rf".*--limit {len(items) - 1}\b.*--partial"):
        score("MMMLU", "bundled", "ko", too_few)

    missing_ids = _write_jsonl(tmp_path / "ids.jsonl", [{"id": items[1].id, **ok}])
    with pytest.raises(InputError, match=rf"no prediction for {len(items) - 1} of the {len(items)} items.*{items[0].id}"):
        score("MMMLU", "bundled", "ko", missing_ids)

    with pytest.raises(InputError, match="not found"):
        score("MMMLU", "bundled", "ko", tmp_path / "absent.jsonl")


def test_score_limit_and_blank_lines(tmp_path):
    items = load_benchmark("XQuAD", "zh", "bundled", limit=2)
    preds = _write_jsonl(tmp_path / "p.jsonl", [{"output": items[0].gold}, "", {"output": items[1].gold}, ""])
    summary = score("xquad", "bundled", "zh", preds, limit=2)
    assert summary["n"] == 2 and summary["score"] == 100.0 and summary["em"] == 100.0


def test_summarize_and_score_item_scale():
    spec = get_spec("MKQA")
    item = load_benchmark("MKQA", "de", "bundled")[0]
    right, wrong = (score_item(spec.kind, "lenient", output, item.gold, lang=item.lang, benchmark=spec.name)
                    for output in (item.gold[-1], ""))
    assert right.score == 1.0 and right.extra["em"] == 1.0
    assert wrong.score == 0.0 and wrong.parsed is None
    summary = summarize(spec, "de", [right, wrong, right], [item.gold[-1], "", item.gold[-1]])
    assert summary["score"] == pytest.approx(200 / 3, abs=1e-3)
    assert summary["em"] == pytest.approx(200 / 3, abs=1e-3)
    assert summary["unparsed"] == 1 and summary["empty"] == 1 and summary["n"] == 3
    assert summarize(spec, "de", [], [])["score"] == 0.0


# --- score(): the real benchmark samples -----------------------------------------------------------

@pytest.mark.parametrize("benchmark,lang", [("XNLI", "zh"), ("MMMLU", "ko"), ("MKQA", "de"), ("XLSum", "sw"),
                                            ("XQuAD", "zh"), ("XStoryCloze", "sw")])
def test_score_real_samples_gold_predictions(tmp_path, shared_benchmarks, benchmark, lang):
    spec = get_spec(benchmark)
    if not (shared_benchmarks / spec.name / spec.prompt_dir / f"{lang}.json").is_file():
        pytest.skip(f"{spec.name}/{lang} not in the shared samples")
    items = load_benchmark(benchmark, lang, shared_benchmarks)
    assert len(items) >= 50

    def gold_text(item):
        if spec.kind == "choice":
            return f"({item.gold})"
        return item.gold[0] if isinstance(item.gold, list) else item.gold

    preds = _write_jsonl(tmp_path / "gold.jsonl", [{"id": i.id, "output": gold_text(i)} for i in items])
    summary = score(benchmark, shared_benchmarks, lang, preds, output=tmp_path / "s.json")
    scorable = [i for i in items if tokenize(gold_text(i), lang)]  # golds that normalise to nothing score 0
    expected = 100.0 * len(scorable) / len(items)
    assert summary["score"] == pytest.approx(expected, abs=1e-3)
    assert summary["n"] == len(items)
    if spec.kind == "choice":
        assert summary["score"] == 100.0 and summary["unparsed"] == 0
    if spec.kind == "qa":
        assert summary["em"] == pytest.approx(expected, abs=1e-3)
    # line-order predictions: the same result
    by_line = _write_jsonl(tmp_path / "line.jsonl", [{"output": gold_text(i)} for i in items])
    assert score(benchmark, shared_benchmarks, lang, by_line) == summary
    # all-empty predictions: zero, everything empty and unparsed
    empty = _write_jsonl(tmp_path / "empty.jsonl", [{"output": ""} for _ in items])
    nothing = score(benchmark, shared_benchmarks, lang, empty)
    assert nothing["score"] == 0.0 and nothing["empty"] == len(items) == nothing["unparsed"]


# --- evaluate(): a real tiny model, and a fake generator ----------------------------------------------

@dataclass
class FakeGeneration:
    text: str
    new_tokens: int
    prompt_truncated: bool
    chosen_layer: int | None = None


class FakeGenerator:
    """Answers gold in the ``right`` languages and garbage elsewhere."""

    mode = "none"

    def __init__(self, benchmark: str, data_dir, right: set[str], answer) -> None:
        self.gold: dict[tuple[str, str], object] = {}
        spec = get_spec(benchmark)
        for lang in spec.langs:
            try:
                for item in load_benchmark(benchmark, lang, data_dir):
                    self.gold[(lang, item.prompt)] = item.gold
            except InputError:
                continue
        self.right, self.answer = right, answer
        self.calls: list[tuple[list, list, list]] = []

    def generate(self, prompts, langs, english):
        self.calls.append((list(prompts), list(langs), list(english)))
        return [FakeGeneration(self.answer(self.gold[(lang, p)]) if lang in self.right else "zzz", 3, False)
                for p, lang in zip(prompts, langs)]


def test_evaluate_with_a_fake_generator_scores_exactly(tmp_path):
    params = _params("eval.langs=[zh, ar]")
    fake = FakeGenerator("xnli", "bundled", {"zh"}, lambda gold: f"答案是({gold})")
    result = evaluate(params, "sft", "xnli", out_root=tmp_path / "eval", metrics_root=tmp_path / "metrics",
                      generator=fake)
    assert result.languages == {"ar": 0.0, "zh": 100.0}
    assert result.average == 50.0
    n_zh, n_ar = len(load_benchmark("XNLI", "zh")), len(load_benchmark("XNLI", "ar"))
    assert result.items == n_zh + n_ar
    assert result.unparsed == n_ar  # "zzz" names no option
    assert len(fake.calls) == 1  # one stream over all languages
    prompts, langs, english = fake.calls[0]
    assert sorted(set(langs)) == ["ar", "zh"] and all(e for e in english)  # the English parallels are passed
    report_json = json.loads((tmp_path / "metrics" / "sft" / "XNLI.json").read_text(encoding="utf-8"))
    assert report_json["average"] == 50.0 and report_json["unparsed"] == n_ar
    assert report_json["method"] == "sft" and report_json["mode"] == "none" and report_json["metric"] == "accuracy"
    assert report_json["languages"]["zh"]["score"] == 100.0 and report_json["languages"]["ar"]["score"] == 0.0
    assert report_json["languages"]["zh"]["new_tokens"] == 3 * n_zh
    assert result.metrics_file == str(tmp_path / "metrics" / "sft" / "XNLI.json")
    rows = [json.loads(line) for line in (tmp_path / "eval" / "sft" / "XNLI" / "zh.jsonl").read_text().splitlines()]
    assert [r["score"] for r in rows] == [1.0] * n_zh
    assert [r["parsed"] for r in rows] == [r["gold"] for r in rows]
    ar_rows = [json.loads(line) for line in (tmp_path / "eval" / "sft" / "XNLI" / "ar.jsonl").read_text().splitlines()]
    assert all(r["score"] == 0.0 and r["parsed"] is None and r["output"] == "zzz" for r in ar_rows)


def test_evaluate_qa_rows_carry_exact_match(tmp_path):
    params = _params("eval.limit=3")
    fake = FakeGenerator("mkqa", "bundled", {"de"}, lambda gold: gold[0])
    result = evaluate(params, "cc", "mkqa", langs=["de", "ja"], out_root=tmp_path / "eval",
                      metrics_root=tmp_path / "m", generator=fake)
    assert result.languages == {"de": 100.0, "ja": 0.0} and result.items == 6
    metrics = json.loads((tmp_path / "m" / "cc" / "MKQA.json").read_text(encoding="utf-8"))
    assert metrics["languages"]["de"]["em"] == 100.0 and metrics["languages"]["ja"]["em"] == 0.0
    rows = [json.loads(x) for x in (tmp_path / "eval" / "cc" / "MKQA" / "de.jsonl").read_text().splitlines()]
    assert len(rows) == 3 and all(r["em"] == 1.0 and isinstance(r["gold"], list) for r in rows)
    # a per-benchmark limit: MKQA named (1 item per language), a benchmark not named gets all
    params = _params("eval.limit={MKQA: 1, XQuAD: 2}")
    result = evaluate(params, "cc", "mkqa", langs=["de", "ja"], out_root=tmp_path / "eval",
                      metrics_root=tmp_path / "m", generator=fake)
    assert result.items == 2


def test_evaluate_with_a_tiny_model(tmp_path, tiny_factory):
    model, tokenizer = tiny_factory("llama")
    model_dir = tmp_path / "model"
    model.save_pretrained(model_dir)
    tokenizer.save_pretrained(model_dir)
    params = _params("eval.limit=2", "eval.max_new_tokens=4", "eval.langs=[zh, ar]")
    result = evaluate(params, "base", "xnli", model_dir=model_dir, out_root=tmp_path / "eval",
                      metrics_root=tmp_path / "metrics")
    assert result.benchmark == "XNLI" and result.method == "base"
    assert set(result.languages) == {"ar", "zh"} and result.items == 4
    folder = tmp_path / "eval" / "base" / "XNLI"
    assert sorted(p.name for p in folder.iterdir()) == ["ar.jsonl", "zh.jsonl"]
    for lang in ("ar", "zh"):
        rows = [json.loads(line) for line in (folder / f"{lang}.jsonl").read_text(encoding="utf-8").splitlines()]
        assert len(rows) == 2
        for row in rows:
            assert {"id", "prompt", "output", "parsed", "gold", "score"} <= set(row)
            assert row["id"].startswith(f"XNLI-{lang}-") and row["score"] in (0.0, 1.0)
            assert row["chosen_layer"] is None
    metrics = json.loads((tmp_path / "metrics" / "base" / "XNLI.json").read_text(encoding="utf-8"))
    assert {"languages", "average", "unparsed"} <= set(metrics)
    assert set(metrics["languages"]) == {"ar", "zh"}
    assert metrics["average"] == pytest.approx(sum(v["score"] for v in metrics["languages"].values()) / 2, abs=1e-3)
    assert all(0 <= v["new_tokens"] <= 2 * 4 for v in metrics["languages"].values())
    assert metrics["mode"] == "none"
    assert not any(p.name.startswith(".") for p in (tmp_path / "eval" / "base").iterdir())  # no temp leftovers


def test_evaluate_rejects_an_unknown_method(tmp_path):
    with pytest.raises(ValueError, match="base, sft, cc"):
        evaluate(_params(), "oracle", "xnli", out_root=tmp_path, metrics_root=tmp_path, generator=object())


def test_resolve_langs():
    spec = get_spec("XNLI")
    # English too when the data has it: the authors evaluate it (and the paper's averages include it)
    assert resolve_langs(spec, "bundled", None, []) == [lang for lang in spec.langs]
    assert resolve_langs(spec, "bundled", None, ["zh", "ar", "de"]) == ["ar", "zh"]  # intersected, spec order
    assert resolve_langs(spec, "bundled", ["ZH", "en"], ["ar"]) == ["zh", "en"]  # explicit wins
    with pytest.raises(ValueError, match="de") as err:
        resolve_langs(spec, "bundled", ["zh", "de"], [])
    assert "ar el hi" in str(err.value)  # lists the valid languages
    with pytest.raises(InputError, match="shares no language with XNLI"):
        resolve_langs(spec, "bundled", None, ["de", "ja"])


def test_evaluate_language_errors(tmp_path):
    fake = FakeGenerator("xnli", "bundled", set(), str)
    with pytest.raises(ValueError, match="valid:"):
        evaluate(_params(), "base", "xnli", langs=["ja"], out_root=tmp_path, metrics_root=tmp_path, generator=fake)
    with pytest.raises(InputError, match="eval.langs"):
        evaluate(_params("eval.langs=[ja, ko]"), "base", "xnli", out_root=tmp_path, metrics_root=tmp_path,
                 generator=fake)
    assert fake.calls == []
    assert not (tmp_path / "base").exists()


def test_write_results_records_lineage_protocol_and_the_paper_averages(tmp_path):
    from cc_core.evaluate import LangResult, write_results

    def result(lang, score, checkpoint="a" * 64):
        summary = {"benchmark": "XNLI", "lang": lang, "n": 2, "metric": "accuracy", "protocol": "standard",
                   "score": score, "unparsed": 0, "empty": 0, "checkpoint_sha256": checkpoint}
        return LangResult(lang, summary, [{"id": f"XNLI-{lang}-00000", "score": score / 100}])

    params = _params("tracking.enabled=false")
    results = {"en": result("en", 80.0), "zh": result("zh", 40.0), "ar": result("ar", 60.0)}
    write_results(params, "sft", "XNLI", results, "none", 1.0, tmp_path / "eval", tmp_path / "m",
                  requested=["en", "zh", "ar", "sw"], failed={"sw": "worker lost"})
    saved = json.loads((tmp_path / "m" / "sft" / "XNLI.json").read_text())
    assert saved["checkpoint_sha256"] == "a" * 64 and saved["protocol"] == "standard"
    assert saved["average"] == 60.0 and saved["average_non_en"] == 50.0
    assert saved["average_paper_langs"] == 60.0 and saved["paper_langs_evaluated"] == "3/10"
    assert saved["langs_missing"] == ["sw"] and saved["failed_languages"] == {"sw": "worker lost"}
    # languages evaluated with two different checkpoints never mix into one average
    results["ar"] = result("ar", 60.0, checkpoint="b" * 64)
    with pytest.raises(InputError, match="different checkpoints"):
        write_results(params, "sft", "XNLI", results, "none", 1.0, tmp_path / "eval", tmp_path / "m")


def test_every_score_records_the_content_of_its_data_and_its_scorer(tmp_path, monkeypatch):
    """An edited gold answer, another protocol or a changed scorer each give another identity (the
    registry compares a champion only with equal ones); the same items give the same one."""
    import shutil

    import cc_core.evaluate as evaluate
    from cc_core.data.benchmarks import load_benchmark
    from cc_core.lineage import items_sha256

    data = tmp_path / "bench"
    shutil.copytree(REPO / "cc_core" / "data" / "bundled" / "benchmarks", data)
    items = load_benchmark("XNLI", "ar", data, 2)
    before = items_sha256(items)
    assert items_sha256(load_benchmark("XNLI", "ar", data, 2)) == before
    answers = data / "XNLI" / "ans_sample" / "ar.json"
    text = answers.read_text(encoding="utf-8")
    gold = str(items[0].gold)
    other = next(label for label in ("entailment", "neutral", "contradiction") if label != gold)
    answers.write_text(text.replace(f'"{gold}"', f'"{other}"', 1), encoding="utf-8")
    assert items_sha256(load_benchmark("XNLI", "ar", data, 2)) != before

    def written(protocol="lenient", scoring=None) -> dict:
        summary = {"benchmark": "XNLI", "lang": "ar", "n": 1, "metric": "accuracy", "protocol": protocol,
                   "score": 50.0, "unparsed": 0, "empty": 0, "data_sha256": before,
                   **({"choice_scoring": scoring} if scoring else {})}
        results = {"ar": evaluate.LangResult("ar", summary, [{"id": "XNLI-ar-00000", "score": 0.5}])}
        evaluate.write_results(_params("tracking.enabled=false"), "cc", "XNLI", results, "transform", 1.0,
                               tmp_path / "eval", tmp_path / "m")
        return json.loads((tmp_path / "m" / "cc" / "XNLI.json").read_text())

    lenient = written()
    assert len(lenient["eval_data_sha256"]) == 64 and lenient["languages"]["ar"]["data_sha256"] == before
    assert written()["scorer_sha256"] == lenient["scorer_sha256"]
    assert written("standard")["scorer_sha256"] != lenient["scorer_sha256"]
    assert written(scoring="loglik")["scorer_sha256"] != lenient["scorer_sha256"]
    # a changed scorer file changes the identity of every score it makes
    copy = tmp_path / "choice.py"
    copy.write_text((REPO / "cc_core" / "scoring" / "choice.py").read_text() + "\n# changed\n")
    monkeypatch.setattr(evaluate, "SCORING_SOURCES", {**evaluate.SCORING_SOURCES, "choice": ("metrics.py", copy)})
    assert written()["scorer_sha256"] != lenient["scorer_sha256"]


def test_results_are_written_only_under_the_benchmarks_languages(tmp_path):
    from cc_core.evaluate import LangResult, write_results

    summary = {"benchmark": "XNLI", "lang": "../../x", "n": 1, "metric": "accuracy", "score": 1.0, "unparsed": 0,
               "empty": 0}
    with pytest.raises(ValueError, match="XNLI has no language '../../x'"):
        write_results(_params("tracking.enabled=false"), "cc", "XNLI", {"../../x": LangResult("../../x", summary, [])},
                      "transform", 1.0, tmp_path / "eval", tmp_path / "m")
    assert not (tmp_path / "x.jsonl").exists() and not any(tmp_path.rglob("*.jsonl"))


def test_score_a_partial_predictions_file_says_how_then_scores_it(tmp_path, capsys):
    """The tiny run's predictions (eval.limit items per language) against the whole benchmark: the
    error names --limit N; --limit N and --partial both score them; a file with gaps gets --partial."""
    from cc_core.cli import main

    items = load_benchmark("XNLI", "zh", "bundled")
    first = _write_jsonl(tmp_path / "zh.jsonl", [{"id": items[0].id, "output": f"({items[0].gold})"}])
    args = ["score", "--benchmark", "xnli", "--data-dir", "bundled", "--lang", "zh", "--predictions", str(first)]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert err.startswith("cctune score: error: ") and len(err.strip().splitlines()) == 1
    assert f"no prediction for {len(items) - 1} of the {len(items)} items (first: {items[1].id})" in err
    assert "score those with --limit 1, or only the items present with --partial" in err
    assert main([*args, "--limit", "1"]) == 0
    limited = json.loads(capsys.readouterr().out)
    assert limited["n"] == 1 and limited["score"] == 100.0
    assert main([*args, "--partial"]) == 0
    partial = json.loads(capsys.readouterr().out)
    assert {k: partial[k] for k in ("n", "score", "partial", "items_total")} == {
        "n": 1, "score": 100.0, "partial": True, "items_total": len(items)}

    gaps = _write_jsonl(tmp_path / "gaps.jsonl", [{"id": items[2].id, "output": "(1)"}])
    with pytest.raises(InputError, match=r"no prediction for \d+ of the \d+ items.*only the items present with --partial"):
        score("XNLI", "bundled", "zh", gaps)
    assert score("XNLI", "bundled", "zh", gaps, partial=True)["n"] == 1
