"""lm-evaluation-harness on tiny checkpoints, offline: the ``cc-tuning`` backend against ``cctune eval``.

The tasks (tests/fixtures/lm_eval/xnli_cc_*.yaml) read the bundled XNLI fixture from local files and
score the same options as ``cctune eval --choice-scoring loglik``, so every item's per-option
log-likelihood from lm-eval must equal the project's own, connection included.

    .venv/bin/python -m pytest -m integration tests/integration/test_lm_eval_backend.py -q
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest
import torch

lm_eval = pytest.importorskip("lm_eval", reason="the lm-eval extra: pip install -c constraints.txt -e '.[lm-eval]'")

from cc_core.config import parse_params  # noqa: E402
from cc_core.evaluate import evaluate  # noqa: E402

pytestmark = pytest.mark.integration
FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "lm_eval"
LANGS = ("ar", "ru", "zh")
LIMIT = 3


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory, lively_factory):
    """A tiny CC checkpoint + random Transform Matrix, and the same weights as a plain HF directory."""
    from cc_core.lineage import checkpoint_sha256
    from cc_core.modeling import CCTuningModel
    from cc_core.modeling.checkpoint import save_cc_checkpoint
    from cc_core.modeling.transform_matrix import TransformMatrix

    root = tmp_path_factory.mktemp("lm_eval")
    model, tok = lively_factory("llama")
    cc = CCTuningModel(model, inject_layer=0).eval()
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        cc.decision_maker.proj.weight.copy_(torch.randn(cc.decision_maker.proj.weight.shape, generator=gen))
    save_cc_checkpoint(cc, root / "cc", tok)
    d = model.config.hidden_size
    # lineage: the matrix records the checkpoint it was fitted on (Generator.from_dirs checks it)
    meta = {"test": True, "model_sha256": checkpoint_sha256(root / "cc")}
    TransformMatrix(torch.randn(d, d, generator=gen) * 0.3, None, {}, meta).save(root / "transform.safetensors")
    model.save_pretrained(root / "plain")
    tok.save_pretrained(root / "plain")
    return root


def _cctune_rows(root: Path, method: str, model_dir: Path, mode: str) -> dict[str, dict]:
    """``cctune eval --choice-scoring loglik`` on the same items → {item id: row}."""
    params = parse_params({}, overrides=["tracking.enabled=false", f"eval.limit={LIMIT}", f"eval.cc_mode={mode}",
                                         f"eval.langs=[{', '.join(LANGS)}]"])
    evaluate(params, method, "xnli", model_dir=model_dir, transform=root / "transform.safetensors",
             out_root=root / f"eval-{mode}", metrics_root=root / f"metrics-{mode}", choice_scoring="loglik")
    rows = {}
    for lang in LANGS:
        for line in (root / f"eval-{mode}" / method / "XNLI" / f"{lang}.jsonl").read_text(encoding="utf-8").splitlines():
            row = json.loads(line)
            rows[row["id"]] = row
    return rows


@pytest.fixture(scope="module")
def task_manager():
    """Only the fixture tasks: indexing lm-eval's ~14k built-in task files takes minutes on 2 cores."""
    from lm_eval.tasks import TaskManager

    return TaskManager(include_path=str(FIXTURES), include_defaults=False)


def _run_lm_eval(model: str, model_args: dict, task_manager, monkeypatch) -> dict:
    import cc_core.lm_eval_backend  # noqa: F401  (registers "cc-tuning")

    monkeypatch.setenv("CC_LM_EVAL_LIMIT", str(LIMIT))
    return lm_eval.simple_evaluate(model=model, model_args=model_args, tasks=[f"xnli_cc_{lang}" for lang in LANGS],
                                   task_manager=task_manager, apply_chat_template=True, log_samples=True,
                                   batch_size=4, device="cpu")


def _sample_logliks(results: dict) -> dict[str, list[float]]:
    """{item id: per-option log-likelihoods} from lm-eval's logged samples."""
    out = {}
    for lang in LANGS:
        for sample in results["samples"][f"xnli_cc_{lang}"]:
            out[sample["doc"]["id"]] = [float(resp[0]) for resp in sample["filtered_resps"]]
    return out


def test_cc_tuning_backend_equals_cctune_eval_with_the_connection(checkpoints, task_manager, monkeypatch):
    root = checkpoints
    rows = _cctune_rows(root, "cc", root / "cc", "transform")
    results = _run_lm_eval("cc-tuning", {"checkpoint": str(root / "cc"), "mode": "transform",
                                         "transform": str(root / "transform.safetensors")}, task_manager,
                           monkeypatch)
    logliks = _sample_logliks(results)
    assert set(logliks) == set(rows) and len(rows) == LIMIT * len(LANGS)
    for item_id, row in rows.items():
        torch.testing.assert_close(torch.tensor(logliks[item_id]), torch.tensor(list(row["loglik"].values())),
                                   atol=1e-4, rtol=0)
    for lang in LANGS:  # lm-eval's acc / acc_norm are cctune's score / score_norm
        task = results["results"][f"xnli_cc_{lang}"]
        mine = [r for r in rows.values() if r["id"].startswith(f"XNLI-{lang}-")]
        assert task["acc,none"] == pytest.approx(sum(r["score"] for r in mine) / len(mine))
        assert task["acc_norm,none"] == pytest.approx(sum(r["score_norm"] for r in mine) / len(mine))
    # the connection changed the numbers (else the comparison proves little)
    plain = _cctune_rows(root, "cc", root / "cc", "none")
    assert max(abs(a - b) for item_id in rows for a, b in zip(rows[item_id]["loglik"].values(),
                                                              plain[item_id]["loglik"].values())) > 1e-2


def test_hf_backend_on_a_plain_directory_agrees_up_to_the_moved_newline(checkpoints, task_manager, monkeypatch):
    """``--model hf`` still works; it scores the chat prompt's final "\\n" as part of every option
    (lm-eval moves trailing whitespace into the continuation), a constant per item, so option
    differences equal cc-tuning's in mode none."""
    root = checkpoints
    hf = _sample_logliks(_run_lm_eval("hf", {"pretrained": str(root / "plain"), "dtype": "float32"}, task_manager,
                                      monkeypatch))
    ours = _sample_logliks(_run_lm_eval("cc-tuning", {"checkpoint": str(root / "plain")}, task_manager, monkeypatch))
    assert set(hf) == set(ours) and len(hf) == LIMIT * len(LANGS)
    for item_id in hf:
        a, b = torch.tensor(hf[item_id]), torch.tensor(ours[item_id])
        assert (a < b).all()  # hf's continuation has one more token
        torch.testing.assert_close(a - a[0], b - b[0], atol=1e-3, rtol=0)


def test_cctune_lm_eval_is_lm_evals_cli():
    """``cctune-lm-eval`` runs lm-eval's own CLI (with cc-tuning registered by the import of its module).
    A full CLI run is not tested here: the CLI indexes every built-in task first (minutes on 2 cores)."""
    import subprocess

    script = Path(sys.executable).with_name("cctune-lm-eval")
    if not script.is_file():
        pytest.skip("cctune-lm-eval not installed (pip install -c constraints.txt -e '.[lm-eval]')")
    done = subprocess.run([str(script), "run", "--help"], capture_output=True, text=True, timeout=300,
                          env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert done.returncode == 0, done.stderr
    assert "--model" in done.stdout and "--include_path" in done.stdout


CHOICE = ("XNLI", "XStoryCloze", "MMMLU")


def test_cli_runs_the_packaged_tasks_offline_on_cpu_and_equals_cctune_eval(checkpoints, tmp_path):
    """The documented command, through lm-eval's real CLI, on a CPU: lm-eval asks for cuda:0, the
    backend falls back to the CPU with hf's messages; the packaged cc_<benchmark> tasks read the
    bundled fixture (no params.yaml here) offline; every option benchmark's per-item log-likelihoods,
    per-language acc / acc_norm and group mean equal ``cctune eval --choice-scoring loglik`` on the
    same items; a generative task runs and scores its outputs as ``cctune score`` does."""
    import subprocess

    from cc_core.data.benchmarks import get_spec, load_benchmark
    from cc_core.evaluate import score_output

    root, limit = checkpoints, 2
    script = Path(sys.executable).with_name("cctune-lm-eval")
    if not script.is_file():
        pytest.skip("cctune-lm-eval not installed (pip install -c constraints.txt -e '.[lm-eval]')")
    tasks = [f"cc_{b.lower()}" for b in CHOICE] + ["cc_mkqa"]
    cmd = [str(script), "--model", "cc-tuning", "--model_args",
           f"checkpoint={root / 'cc'},transform={root / 'transform.safetensors'}", "--tasks", ",".join(tasks),
           "--apply_chat_template", "--limit", str(limit), "--batch_size", "4", "--log_samples",
           "--output_path", str(tmp_path / "out")]
    done = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=1200,
                          env={**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1",
                               "CUDA_VISIBLE_DEVICES": ""})
    assert done.returncode == 0, done.stderr[-4000:]
    assert "Device not specified" in done.stderr and "Cuda Available? False" in done.stderr
    results = json.loads(next((tmp_path / "out").rglob("results_*.json")).read_text())["results"]
    samples = {}
    for path in (tmp_path / "out").rglob("samples_*.jsonl"):
        for line in path.read_text(encoding="utf-8").splitlines():
            sample = json.loads(line)
            samples[sample["doc"]["id"]] = sample
    for bench in CHOICE:
        spec = get_spec(bench)
        # lm-eval keeps whole prompts (up to the model's context): so does eval.max_prompt_len null
        params = parse_params({}, overrides=["tracking.enabled=false", "eval.cc_mode=transform",
                                             "eval.max_prompt_len=null"])
        evaluate(params, "cc", bench, langs=list(spec.langs), limit=limit, model_dir=root / "cc",
                 transform=root / "transform.safetensors", out_root=tmp_path / "eval",
                 metrics_root=tmp_path / "metrics", choice_scoring="loglik")
        mine = json.loads((tmp_path / "metrics" / "cc" / f"{bench}.json").read_text())
        for lang in spec.langs:
            rows = [json.loads(r) for r in (tmp_path / "eval/cc" / bench / f"{lang}.jsonl").read_text().splitlines()]
            assert len(rows) == limit and not any(row["prompt_truncated"] for row in rows)
            for row in rows:
                theirs = [float(resp[0]) for resp in samples[row["id"]]["filtered_resps"]]
                torch.testing.assert_close(torch.tensor(theirs), torch.tensor(list(row["loglik"].values())),
                                           atol=1e-4, rtol=0)
            task = results[f"cc_{bench.lower()}_{lang}"]
            assert 100 * task["acc,none"] == pytest.approx(mine["languages"][lang]["score"])
            assert 100 * task["acc_norm,none"] == pytest.approx(mine["languages"][lang]["acc_norm"])
        assert 100 * results[f"cc_{bench.lower()}"]["acc,none"] == pytest.approx(mine["average"])
    spec = get_spec("MKQA")
    for lang in spec.langs:
        for item in load_benchmark("MKQA", lang, "bundled", limit):
            sample = samples[item.id]
            output = sample["filtered_resps"][0] if isinstance(sample["filtered_resps"][0], str) \
                else sample["filtered_resps"][0][0]
            assert sample["score"] == pytest.approx(100 * score_output(spec, item, output, "lenient").score)
