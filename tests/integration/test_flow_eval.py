"""The Prefect evaluation fan-out (in-process backend): a language that keeps failing is retried,
then reported, and the other languages' results are still written; bad data is not retried; a
benchmark whose every language failed loses its previous outputs (Prefect's local test harness)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration
REPO = Path(__file__).resolve().parents[2]


def test_failing_language_is_retried_then_reported(tmp_path, monkeypatch):
    from prefect.testing.utilities import prefect_test_harness

    import cc_core.evaluate as evaluate
    from flows import pipeline as flow_module

    shutil.copy(REPO / "params.yaml", tmp_path / "params.yaml")
    calls: dict[str, int] = {}

    def fake_language(params, method, benchmark, lang, model_dir=None, transform="transform", device="cpu",
                      generator=None):
        calls[lang] = calls.get(lang, 0) + 1
        if lang == "hi":
            raise RuntimeError("CUDA error: an illegal memory access (simulated)")
        if benchmark == "XLSum":
            raise evaluate.InputError(f"bench/{benchmark}/split_sample/{lang}.json:1: malformed JSON (simulated)")
        summary = {"benchmark": benchmark, "lang": lang, "n": 1, "metric": "accuracy", "score": 100.0,
                   "unparsed": 0, "empty": 0}
        return evaluate.LangResult(lang, summary, [{"id": f"{benchmark}-{lang}-0", "score": 1.0}])

    loads: list[tuple[str, str]] = []

    def fake_generator(params, method, model_dir, transform, device="cpu"):
        loads.append((method, device))
        return object()

    monkeypatch.setattr(evaluate, "evaluate_language", fake_language)
    monkeypatch.setattr(evaluate, "_generator", fake_generator)  # flows/ still calls it by its old name
    monkeypatch.setattr(flow_module.eval_language_task, "retry_delay_seconds", 0)
    pipeline = flow_module.PipelineParameters(project_dir=str(tmp_path), overrides=["tracking.enabled=false"],
                                              methods=["base"])
    (tmp_path / "eval/base/XLSum").mkdir(parents=True)  # a previous run's outputs of a benchmark that now fails
    (tmp_path / "eval/base/XLSum/ar.jsonl").write_text("{}\n")
    (tmp_path / "metrics/eval/base").mkdir(parents=True)
    (tmp_path / "metrics/eval/base/XLSum.json").write_text("{}\n")
    plan = [("base", "XNLI", lang) for lang in ("ar", "hi", "zh")] + [("base", "XLSum", "ru"),
                                                                       ("base", "XStoryCloze", "sw")]
    with prefect_test_harness(server_startup_timeout=180):  # 30 s by default: too short on a busy 2-core machine
        results = flow_module.evaluate_all(pipeline, plan)
    assert calls == {"ar": 1, "hi": 3, "zh": 1, "ru": 1, "sw": 1}  # 1 try + 2 retries; bad data: no retry
    assert loads == [("base", "cpu")]  # the device kept its model: loaded once, not once per task
    xnli = json.loads((tmp_path / "metrics/eval/base/XNLI.json").read_text())
    assert set(xnli["languages"]) == {"ar", "zh"} and "hi" in xnli["failed_languages"]
    assert "illegal memory access" in xnli["failed_languages"]["hi"]
    assert (tmp_path / "eval/base/XNLI/zh.jsonl").is_file() and not (tmp_path / "eval/base/XNLI/hi.jsonl").exists()
    assert json.loads((tmp_path / "metrics/eval/base/XStoryCloze.json").read_text())["languages"]["sw"]["score"] == 100.0
    # every language of XLSum failed: its previous outputs are gone, not left looking current
    assert not (tmp_path / "metrics/eval/base/XLSum.json").exists() and not (tmp_path / "eval/base/XLSum").exists()
    assert set(results["benchmarks"]) == {"base/XNLI", "base/XStoryCloze"} and results["removed"] == ["base/XLSum"]
    assert set(results["failed"]) == {"base/XNLI/hi", "base/XLSum/ru"}
    assert results["complete"] == ["eval@base-XStoryCloze"]  # only these may be recorded in dvc.lock
    assert results["incomplete"] == ["eval@base-XNLI", "eval@base-XLSum"]
