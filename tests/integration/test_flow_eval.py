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
    from prefect import flow
    from prefect.testing.utilities import prefect_test_harness

    import cc_core.evaluate as evaluate
    from cc_core.config import load_params
    from flows import evaluation as flow_module
    from flows.stage_graph import RunContext

    shutil.copy(REPO / "params.yaml", tmp_path / "params.yaml")
    monkeypatch.chdir(tmp_path)
    calls: dict[str, int] = {}

    def fake_languages(params, method, benchmark, langs, generator, limit=None, choice_scoring=None):
        (lang,) = langs
        calls[lang] = calls.get(lang, 0) + 1
        if lang == "hi":
            raise RuntimeError("CUDA error: an illegal memory access (simulated)")
        if benchmark == "XLSum":
            raise evaluate.InputError(f"bench/{benchmark}/split_sample/{lang}.json:1: malformed JSON (simulated)")
        summary = {"benchmark": benchmark, "lang": lang, "n": 1, "metric": "accuracy", "score": 100.0,
                   "unparsed": 0, "empty": 0, "data_sha256": "d" * 64}
        return {lang: evaluate.LangResult(lang, summary, [{"id": f"{benchmark}-{lang}-0", "score": 1.0}])}

    loads: list[tuple[str, str]] = []

    class FakeGenerator:
        mode = "none"

    def fake_generator(params, method, model_dir, transform, device="cpu"):
        loads.append((method, model_dir, device))
        return FakeGenerator()

    monkeypatch.setattr(evaluate, "evaluate_languages", fake_languages)
    monkeypatch.setattr(evaluate, "load_generator", fake_generator)
    monkeypatch.setattr(flow_module.eval_language_task, "retry_delay_seconds", 0)
    params = load_params(tmp_path / "params.yaml", ["tracking.enabled=false"])
    (tmp_path / "eval/base/XLSum").mkdir(parents=True)  # a previous run's outputs of a benchmark that now fails
    (tmp_path / "eval/base/XLSum/ar.jsonl").write_text("{}\n")
    (tmp_path / "metrics/eval/base").mkdir(parents=True)
    (tmp_path / "metrics/eval/base/XLSum.json").write_text("{}\n")

    def stage(name, benchmark, langs):
        return flow_module.EvalStage(name, "base", benchmark, "models/base", "transform", "eval", "metrics/eval",
                                     tuple(langs))

    jobs = [(stage("eval@base-XNLI", "XNLI", ["ar", "hi", "zh"]), params),
            (stage("eval@base-XLSum", "XLSum", ["ru"]), params),
            (stage("eval@base-XStoryCloze", "XStoryCloze", ["sw"]), params)]
    ctx = RunContext(str(tmp_path))

    @flow
    def evaluation():
        return flow_module.evaluate_stages(ctx, jobs, "inprocess", "", 0, 2, 120)

    with prefect_test_harness(server_startup_timeout=180):  # 30 s by default: too short on a busy 2-core machine
        results = evaluation()
    assert calls == {"ar": 1, "hi": 3, "zh": 1, "ru": 1, "sw": 1}  # 1 try + 2 retries; bad data: no retry
    assert loads == [("base", "models/base", "cpu")]  # the device kept its model: loaded once, not once per task
    xnli = json.loads((tmp_path / "metrics/eval/base/XNLI.json").read_text())
    assert set(xnli["languages"]) == {"ar", "zh"} and "hi" in xnli["failed_languages"]
    assert "illegal memory access" in xnli["failed_languages"]["hi"]
    assert (tmp_path / "eval/base/XNLI/zh.jsonl").is_file() and not (tmp_path / "eval/base/XNLI/hi.jsonl").exists()
    assert json.loads((tmp_path / "metrics/eval/base/XStoryCloze.json").read_text())["languages"]["sw"]["score"] == 100.0
    # every language of XLSum failed: its previous outputs are gone, not left looking current
    assert not (tmp_path / "metrics/eval/base/XLSum.json").exists() and not (tmp_path / "eval/base/XLSum").exists()
    assert set(results["stages"]) == {"eval@base-XNLI", "eval@base-XStoryCloze"}
    assert results["removed"] == ["base/XLSum"]
    assert set(results["failed"]) == {"base/XNLI/hi", "base/XLSum/ru"}
    assert results["complete"] == ["eval@base-XStoryCloze"]  # only these may be recorded in dvc.lock
    assert results["incomplete"] == ["eval@base-XNLI", "eval@base-XLSum"]
