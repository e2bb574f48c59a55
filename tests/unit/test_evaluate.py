"""The ``eval``, ``score`` and ``report`` stages (cc_core.evaluate, cc_core.report)."""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass
from pathlib import Path

import pytest

from cc_core.config import parse_params
from cc_core.data.benchmarks import get_spec, load_benchmark
from cc_core.evaluate import evaluate, read_predictions, resolve_langs, score, score_item, summarize
from cc_core.io import InputError
from cc_core.metrics import tokenize
from cc_core.report import paired_bootstrap, report

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
    right, wrong = score_item(spec, item, item.gold[-1]), score_item(spec, item, "")
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


# --- report --------------------------------------------------------------------------------------

def _method_files(metrics_dir: Path, eval_root: Path, method: str, scores: list[float]) -> None:
    n = len(scores)
    average = round(100 * sum(scores) / n, 4)
    (metrics_dir / "eval" / method).mkdir(parents=True, exist_ok=True)
    (metrics_dir / "eval" / method / "XNLI.json").write_text(json.dumps({
        "benchmark": "XNLI", "method": method, "metric": "accuracy", "mode": "none", "average": average,
        "unparsed": 1, "items": n, "seconds": 1.0,
        "languages": {"zh": {"benchmark": "XNLI", "lang": "zh", "n": n, "metric": "accuracy", "score": average,
                             "unparsed": 1, "empty": 0}},
    }))
    folder = eval_root / method / "XNLI"
    folder.mkdir(parents=True, exist_ok=True)
    _write_jsonl(folder / "zh.jsonl", [{"id": f"XNLI-zh-{i:05d}", "prompt": "p", "output": "o", "parsed": "1",
                                        "gold": "1", "score": s} for i, s in enumerate(scores)])


def test_report_tables_delta_and_plots(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # the report looks for models/cc/mlflow_run.json relative to the cwd
    metrics_dir, eval_root, out_dir = tmp_path / "metrics", tmp_path / "eval", tmp_path / "reports"
    cc = [1.0] * 18 + [0.0] * 2
    sft = [0.0] * 16 + [1.0] * 4
    _method_files(metrics_dir, eval_root, "cc", cc)
    _method_files(metrics_dir, eval_root, "sft", sft)
    params = _params("report.bootstrap_samples=500")
    # a benchmark left over from an earlier eval.benchmarks list is not reported
    (metrics_dir / "eval" / "cc" / "MKQA.json").write_text(json.dumps({"average": 99.0, "languages": {}}))
    params = _params("report.bootstrap_samples=500", "eval.benchmarks=[XNLI, XLSum]")
    result = report(params, metrics_dir, eval_root, out_dir)
    assert result.methods == ["sft", "cc"] and result.benchmarks == ["XNLI"]
    delta = result.deltas["cc - sft"]["XNLI"]
    assert delta["delta"] == pytest.approx(100 * (sum(cc) - sum(sft)) / 20)  # +70
    assert delta["n"] == 20 and delta["significant"] and delta["low"] > 0 and delta["high"] >= delta["delta"]

    summary = (out_dir / "summary.md").read_text(encoding="utf-8")
    assert "| method | XNLI | mean |" in summary
    assert "| sft | 20.00 | 20.00 |" in summary and "| cc | 90.00 | 90.00 |" in summary
    assert "cc - sft" in summary
    assert f"| XNLI | +70.00 | [{delta['low']:+.2f}, {delta['high']:+.2f}] | 20 | yes |" in summary
    assert "XNLI by language" in summary

    with (out_dir / "summary.csv").open(encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    assert {(r["method"], r["benchmark"], r["lang"]) for r in rows} == {
        ("sft", "XNLI", "zh"), ("sft", "XNLI", "avg"), ("cc", "XNLI", "zh"), ("cc", "XNLI", "avg"),
        ("cc - sft", "XNLI", "zh"), ("cc - sft", "XNLI", "avg"),
        *{(m, "XNLI", key) for m in ("sft", "cc") for key in ("average_paper_langs", "average_non_en")}}
    assert {r["protocol"] for r in rows if r["method"] in ("cc", "sft")} == {"lenient"}
    zh_cc = next(r for r in rows if r["method"] == "cc" and r["lang"] == "zh")
    assert float(zh_cc["score"]) == 90.0 and zh_cc["n"] == "20" and zh_cc["metric"] == "accuracy"
    # the CSV carries the deltas and their intervals too, per language and pooled
    avg_delta = next(r for r in rows if r["method"] == "cc - sft" and r["lang"] == "avg")
    assert float(avg_delta["score"]) == pytest.approx(70.0) and avg_delta["metric"] == "delta accuracy"
    assert float(avg_delta["low"]) == pytest.approx(delta["low"]) and avg_delta["significant"] == "True"
    assert delta["languages"]["zh"]["delta"] == pytest.approx(70.0)

    plot = out_dir / "plots" / "XNLI.png"
    assert plot.is_file() and plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    saved = json.loads((out_dir / "summary.json").read_text(encoding="utf-8"))
    assert saved["averages"] == {"sft": {"XNLI": 20.0}, "cc": {"XNLI": 90.0}}
    assert saved["deltas"]["cc - sft"]["XNLI"] == delta  # per language too: not a DVC metric
    # the DVC metrics: a flat row per benchmark and the mean, the same keys in each
    rows = {p.stem: json.loads(p.read_text()) for p in (metrics_dir / "report").glob("*.json")}
    assert set(rows) == {"XNLI", "mean"}
    assert rows["XNLI"] == {"sft": 20.0, "cc": 90.0, "cc-sft": round(delta["delta"], 2),
                            "cc-sft_lo": round(delta["low"], 2), "cc-sft_up": round(delta["high"], 2), "items": 20}
    assert rows["mean"]["cc-sft"] == pytest.approx(70.0) and rows["mean"]["cc"] == 90.0
    assert all(not isinstance(v, (dict, list)) for row in rows.values() for v in row.values())
    bars = json.loads((out_dir / "scores.json").read_text())
    assert {(b["benchmark"], b["method"], b["score"]) for b in bars} == {("XNLI", "sft", 20.0), ("XNLI", "cc", 90.0)}
    assert not summary.startswith("> **Smoke run.**")  # a real base model: no random-model note


def test_paired_bootstrap():
    ids = [f"i{k}" for k in range(30)]
    same = {i: float(k % 2) for k, i in enumerate(ids)}
    flat = paired_bootstrap(same, dict(same), samples=200, confidence=0.95, seed=0)
    assert flat == {"delta": 0.0, "low": 0.0, "high": 0.0, "n": 30, "significant": False}

    better = {i: 1.0 if k < 27 else 0.0 for k, i in enumerate(ids)}
    worse = {i: 1.0 if k < 6 else 0.0 for k, i in enumerate(ids)}
    gain = paired_bootstrap(better, worse, samples=1000, confidence=0.95, seed=7)
    assert gain["delta"] == 70.0 and gain["n"] == 30
    assert gain["significant"] and 0 < gain["low"] <= gain["delta"] <= gain["high"] <= 100
    again = paired_bootstrap(better, worse, samples=1000, confidence=0.95, seed=7)
    assert again == gain  # seeded
    loss = paired_bootstrap(worse, better, samples=1000, confidence=0.95, seed=7)
    assert loss["delta"] == -70.0 and loss["significant"] and loss["high"] < 0

    # only shared items count; nothing shared → None
    partial = paired_bootstrap({"a": 1.0, "b": 0.0}, {"b": 1.0, "c": 1.0}, samples=50, confidence=0.9, seed=0)
    assert partial["n"] == 1 and partial["delta"] == -100.0
    assert paired_bootstrap({"a": 1.0}, {"b": 1.0}, samples=50, confidence=0.9, seed=0) is None

    # noise: mixed small differences are not significant
    noisy_a = {i: float(k % 2) for k, i in enumerate(ids)}
    noisy_b = {i: float((k + 1) % 2) if k < 2 else float(k % 2) for k, i in enumerate(ids)}
    noise = paired_bootstrap(noisy_a, noisy_b, samples=1000, confidence=0.95, seed=1)
    assert not noise["significant"] and noise["low"] <= 0 <= noise["high"]


def test_report_flags_incomplete_averages_and_sets_the_paper_beside_ours(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    metrics_dir, eval_root, out_dir = tmp_path / "metrics", tmp_path / "eval", tmp_path / "reports"
    _method_files(metrics_dir, eval_root, "cc", [1.0, 0.0])
    _method_files(metrics_dir, eval_root, "sft", [0.0, 0.0])
    path = metrics_dir / "eval" / "cc" / "XNLI.json"
    data = json.loads(path.read_text())
    data.update(langs_requested=["ar", "zh", "en"], langs_missing=["ar"], failed_languages={"en": "killed"},
                average_paper_langs=50.0, paper_langs_evaluated="1/10", average_non_en=50.0, protocol="standard")
    path.write_text(json.dumps(data))
    report(_params("report.bootstrap_samples=100", "report.paper_reference=true", "eval.benchmarks=[XNLI]"),
           metrics_dir, eval_root, out_dir)
    summary = (out_dir / "summary.md").read_text(encoding="utf-8")
    assert "| cc | 50.00 † | 50.00 |" in summary  # flagged in the table, not only in the metrics file
    assert "† cc XNLI: averaged over 1 of 3 languages (missing: ar, en)" in summary
    assert "| XNLI | cc | 50.00 | 1/10 | 50.00 | 53.06 |" in summary  # the paper's published score beside ours
    assert "Scoring protocol: lenient, standard" in summary
    saved = json.loads((out_dir / "summary.json").read_text())
    assert saved["incomplete"] == {"cc/XNLI": "averaged over 1 of 3 languages (missing: ar, en)"}
    # a damaged metrics file is named
    path.write_text('{"benchmark": "XNLI", "av')
    with pytest.raises(InputError, match=r"XNLI.json:1: malformed JSON"):
        report(_params("eval.benchmarks=[XNLI]"), metrics_dir, eval_root, out_dir)


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


def test_report_of_a_random_tiny_model_says_so_on_its_first_line(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    metrics_dir, eval_root, out_dir = tmp_path / "metrics", tmp_path / "eval", tmp_path / "reports"
    _method_files(metrics_dir, eval_root, "cc", [1.0, 0.0, 1.0])
    _method_files(metrics_dir, eval_root, "sft", [0.0, 0.0, 1.0])
    report(_params("model.base=tiny-random-llama", "eval.benchmarks=[XNLI]", "report.bootstrap_samples=50"),
           metrics_dir, eval_root, out_dir)
    first = (out_dir / "summary.md").read_text(encoding="utf-8").splitlines()[0]
    assert first.startswith("> **Smoke run.** `tiny-random-llama` is a 2-layer model with random weights")
    assert "checks that every stage runs" in first


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
