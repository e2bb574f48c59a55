"""cc_core.report: the tables, the CC − SFT deltas with paired-bootstrap intervals, the plots, and
the flags on incomplete evaluations."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

from cc_core.config import parse_params
from cc_core.io import InputError
from cc_core.report import paired_bootstrap, report


def _write_jsonl(path: Path, rows) -> Path:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r, ensure_ascii=False)) + "\n" for r in rows),
                    encoding="utf-8")
    return path


def _params(*overrides: str):
    return parse_params({}, overrides=["tracking.enabled=false", *overrides])


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


def test_the_report_knows_the_random_models_by_the_name_modeling_gives_them():
    from cc_core.modeling.base import TINY_PREFIX
    from cc_core.report import RANDOM_MODEL_PREFIX

    assert RANDOM_MODEL_PREFIX == TINY_PREFIX
