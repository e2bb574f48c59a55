"""Real services on the tiny profile, in a temporary copy of the project: DVC (repro, no-op,
partial re-run, kill + resume, metrics/plots/exp) and an MLflow server registry round trip. The
deployed flow on a Prefect server and worker: test_first_hour.py (the guide's one-machine set-up)."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from services import wait_http

pytestmark = pytest.mark.integration
REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent


def _env(**extra) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_TRACKING", "PREFECT_API"))}
    env.update(PATH=f"{BIN}{os.pathsep}{env['PATH']}", DO_NOT_TRACK="1", MLFLOW_DISABLE_TELEMETRY="true",
               PREFECT_SERVER_ANALYTICS_ENABLED="false", DVC_NO_ANALYTICS="1", **extra)
    return env


def _run(cmd, cwd, timeout=900, **env) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, cwd=cwd, env=_env(**env), capture_output=True, text=True, timeout=timeout)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _server(cmd: list[str], cwd: Path, log: Path, **env) -> subprocess.Popen:
    """A service whose output goes to ``log``: never a pipe nobody reads (a server logging every
    request blocks once the 64 KiB pipe buffer is full, and its clients wait forever)."""
    with log.open("w") as out:
        return subprocess.Popen(cmd, cwd=cwd, env=_env(**env), stdout=out, stderr=subprocess.STDOUT)


def _stop(proc: subprocess.Popen, sig=signal.SIGINT) -> None:
    if proc.poll() is None:
        proc.send_signal(sig)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@pytest.fixture(scope="module")
def project(tmp_path_factory) -> Path:
    """A copy of the working tree (tracked + untracked, not ignored) as a fresh git repo, tiny profile."""
    root = tmp_path_factory.mktemp("project") / "cc-tuning"
    files = subprocess.run(["git", "ls-files", "-co", "--exclude-standard", "-z"], cwd=REPO, capture_output=True,
                           text=True, check=True).stdout.split("\0")
    for name in filter(None, files):
        source = REPO / name
        if source.is_file():
            (root / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, root / name)
    for path in ("metrics", "reports/summary.md", "reports/summary.csv", "dvc.lock"):
        target = root / path
        shutil.rmtree(target, ignore_errors=True) if target.is_dir() else target.unlink(missing_ok=True)
    shutil.copy(root / "params.tiny.yaml", root / "params.yaml")
    for cmd in (["git", "init", "-q"], ["git", "add", "-A"],
                ["git", "-c", "user.email=t@t", "-c", "user.name=t", "commit", "-qm", "tiny"]):
        subprocess.run(cmd, cwd=root, check=True)
    return root


def _stages_run(output: str) -> list[str]:
    return [line.split("'")[1] for line in output.splitlines() if line.startswith("Running stage '")]


def test_dvc_repro_tiny_profile(project):
    # 1. a repro killed after training resumes from the last completed stage
    proc = subprocess.Popen([str(BIN / "dvc"), "repro"], cwd=project, env=_env(), stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)
    lock = project / "dvc.lock"
    deadline = time.time() + 600
    while time.time() < deadline and proc.poll() is None:
        if lock.is_file() and "train_sft:" in lock.read_text():
            break
        time.sleep(0.5)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert "train_cc:" in lock.read_text()
    # DVC writes its stage lock file in place: a SIGKILL in the middle of that write leaves it
    # empty, and the next repro refuses to start. The documented remedy (docs/user-guide.md),
    # safe when no other dvc process runs: delete it.
    rwlock = project / ".dvc/tmp/rwlock"
    try:
        json.loads(rwlock.read_text() or "null") if rwlock.is_file() else None
        corrupted = rwlock.is_file() and not rwlock.read_text().strip()
    except json.JSONDecodeError:
        corrupted = True
    if corrupted:
        rwlock.unlink()

    start = time.perf_counter()
    full = _run([str(BIN / "dvc"), "repro"], project)
    wall = time.perf_counter() - start
    assert full.returncode == 0, full.stdout[-3000:] + full.stderr[-3000:]
    ran = _stages_run(full.stdout)
    assert "train_cc" not in ran and "prepare" not in ran, ran  # resumed after the completed stages
    assert {"collect", "fit", "report", "register"} <= set(ran)
    print(f"tiny profile dvc repro (after resume): {wall:.1f} s")
    for path in ("models/cc/cc_tuning.json", "transform/transform.safetensors", "reports/summary.md",
                 "metrics/eval/cc/XNLI.json", "metrics/register.json", "reports/plots/XNLI.png"):
        assert (project / path).is_file(), path

    # 2. a second repro is a no-op, in seconds
    start = time.perf_counter()
    again = _run([str(BIN / "dvc"), "repro"], project)
    assert again.returncode == 0 and _stages_run(again.stdout) == []
    assert time.perf_counter() - start < 60

    # 3. changing an eval.* param re-runs only evaluation and what follows
    text = (project / "params.yaml").read_text().replace("  max_new_tokens: 8", "  max_new_tokens: 6")
    (project / "params.yaml").write_text(text)
    dry = _run([str(BIN / "dvc"), "repro", "--dry"], project)
    planned = set(_stages_run(dry.stdout))
    assert planned and all(s.startswith(("eval", "report", "register")) for s in planned), planned
    assert "eval_cc@XNLI" in planned and "eval@base-XNLI" in planned
    _run(["git", "checkout", "params.yaml"], project)

    # 4. metrics, plots and experiments
    metrics = _run([str(BIN / "dvc"), "metrics", "show", "--json"], project)
    assert metrics.returncode == 0 and "cc-sft_lo" in metrics.stdout and "final_loss" not in metrics.stdout
    plots = _run([str(BIN / "dvc"), "plots", "show", "--json"], project)
    assert plots.returncode == 0 and "train_cc_loss" in plots.stdout
    exp = _run([str(BIN / "dvc"), "exp", "run", "-S", "report.seed=1"], project)
    assert exp.returncode == 0, exp.stderr[-2000:]
    assert _stages_run(exp.stdout) == ["report"]


def _dvc_clean(project: Path) -> None:
    status = _run([str(BIN / "dvc"), "status"], project)
    assert status.returncode == 0 and "Data and pipelines are up to date." in status.stdout, status.stdout[-3000:]
    again = _run([str(BIN / "dvc"), "repro"], project)
    assert again.returncode == 0 and _stages_run(again.stdout) == [], again.stdout[-3000:]


def _set_param(project: Path, old: str, new: str) -> None:
    path = project / "params.yaml"
    text = path.read_text()
    assert old in text, old
    path.write_text(text.replace(old, new, 1))


def test_flow_run_leaves_dvc_clean_and_a_variant_is_an_experiment(project):
    """python -m flows.pipeline runs dvc.yaml's changed stages and records them: dvc status is clean
    and dvc repro has nothing to do. A run of another params file is a DVC experiment: the
    workspace's outputs and dvc.lock are not touched, and dvc checkout needs no --force."""
    if not (project / "dvc.lock").is_file():
        pytest.skip("needs the DVC test's workspace first")
    _run(["git", "checkout", "params.yaml"], project)  # the DVC test's experiment left report.seed=1 applied
    _run([str(BIN / "dvc"), "checkout", "--force"], project)
    # every eval stage and what follows, with the same eval settings hash (batch size is speed only):
    # the registered version stays comparable with the champion, as the gold-answer test below needs
    _set_param(project, "  batch_size: 8                # prompts per generation batch",
               "  batch_size: 4                # prompts per generation batch")
    start = time.perf_counter()
    run = _run([sys.executable, "-m", "flows.pipeline"], project, timeout=1200)
    print(f"flow run (evaluation, report, register): {time.perf_counter() - start:.1f} s")
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    log = run.stdout + run.stderr
    for name in ("eval-cc-XNLI-ar", "eval-base-XLSum-ru", "eval-write-sft-XNLI", "report", "register"):
        assert f"Task run '{name}' - Finished in state Completed()" in log, name
    assert "Task run 'train-cc'" not in log  # up to date: not run again
    _dvc_clean(project)

    variant = project / "params.variant.yaml"
    import yaml

    data = yaml.safe_load((project / "params.yaml").read_text())
    data["report"]["seed"] = 5  # only the report reads it
    variant.write_text(yaml.safe_dump(data))
    lock, report = (project / "dvc.lock").read_bytes(), (project / "metrics/report/mean.json").read_bytes()
    run = _run([sys.executable, "-m", "flows.pipeline", "--params", "params.variant.yaml", "--experiment-name",
                "seed5"], project, timeout=1200)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    log = run.stdout + run.stderr
    assert "Task run 'report' - Finished in state Completed()" in log and "Task run 'eval-" not in log
    assert (project / "dvc.lock").read_bytes() == lock and (project / "metrics/report/mean.json").read_bytes() == report
    _dvc_clean(project)
    checkout = _run([str(BIN / "dvc"), "checkout"], project)
    assert checkout.returncode == 0, checkout.stderr[-2000:]
    shown = _run([str(BIN / "dvc"), "exp", "show", "--json"], project)
    assert shown.returncode == 0 and '"seed5"' in shown.stdout
    assert not list((project / ".dvc/tmp/variants").glob("*"))  # the scratch worktree is gone
    variant.unlink()


def test_a_changed_scorer_or_gold_answer_is_never_an_old_or_unfair_result(project):
    """Editing a scorer (the standard protocol's QA scorer) makes every eval stage stale; editing one gold answer
    re-evaluates, registers a new version and leaves the champion where it was."""
    if not (project / "metrics/register.json").is_file():
        pytest.skip("needs the DVC test's workspace first")
    scorer = project / "cc_core/scoring/qa.py"  # the standard protocol's extractive-QA scorer
    original = scorer.read_text()
    scorer.write_text(original + "\n# a scorer change\n")
    try:
        status = _run([str(BIN / "dvc"), "status", "--json"], project)
        assert status.returncode == 0, status.stderr
        stale = set(json.loads(status.stdout))
        listed = _run([str(BIN / "dvc"), "stage", "list", "--name-only"], project).stdout.split()
        expected = {name for name in listed if name.startswith("eval")}
        assert expected and expected <= stale, (expected - stale)
        assert not {"train_cc", "train_sft", "collect", "fit", "prepare"} & stale
    finally:
        scorer.write_text(original)

    before = json.loads((project / "metrics/register.json").read_text())
    answers = project / "cc_core/data/bundled/benchmarks/XNLI/ans_sample/ar.json"
    text = answers.read_text(encoding="utf-8")
    lines = text.splitlines()  # one JSON label per line, in the authors' format: "1", "2" or "3"
    lines[0] = '"2"' if lines[0].strip() != '"2"' else '"3"'  # one gold answer changed
    answers.write_text("\n".join(lines) + "\n", encoding="utf-8")
    try:
        repro = _run([str(BIN / "dvc"), "repro", "register"], project, timeout=1200)  # and the cc evaluation it reads
        assert repro.returncode == 0, repro.stdout[-3000:] + repro.stderr[-3000:]
        assert {"eval_cc@XNLI", "register"} <= set(_stages_run(repro.stdout))
        after = json.loads((project / "metrics/register.json").read_text())
        assert int(after["version"]) == int(before["version"]) + 1
        assert after["champion"] == before["champion"] and not after["promoted"]
        check = _run([sys.executable, "-c", _NOT_COMPARED_SCRIPT, after["model_name"], after["version"],
                      before["champion"]], project)
        assert check.returncode == 0, check.stderr[-3000:]
        tags = json.loads(check.stdout.strip().splitlines()[-1])
        assert tags["same_checkpoint"] and "evaluation data differs" in tags["not_compared"]
    finally:
        answers.write_text(text, encoding="utf-8")


_NOT_COMPARED_SCRIPT = """
import json, sys, mlflow
client = mlflow.MlflowClient("sqlite:///mlflow.db")
name, new, champion = sys.argv[1:]
new_tags, old_tags = client.get_model_version(name, new).tags, client.get_model_version(name, champion).tags
print(json.dumps({"not_compared": new_tags.get("not_compared", ""),
                  "same_checkpoint": new_tags["checkpoint_sha256"] == old_tags["checkpoint_sha256"]}))
"""


def test_mlflow_server_registry_round_trip(project, tmp_path):
    if not (project / "transform/transform.safetensors").is_file():
        pytest.skip("needs the DVC test's workspace first")
    port = _free_port()
    uri = f"http://127.0.0.1:{port}"
    server_log = tmp_path / "mlflow-server.log"
    server = _server([str(BIN / "mlflow"), "server", "--host", "127.0.0.1", "--port", str(port),
                      "--backend-store-uri", f"sqlite:///{tmp_path}/registry.db",
                      "--artifacts-destination", str(tmp_path / "artifacts"), "--workers", "1"], tmp_path, server_log)
    try:
        wait_http(f"{uri}/health", "mlflow server", server, server_log, timeout=120)
        cli = [sys.executable, "-m", "cc_core.cli", "register", "--set", f"tracking.uri={uri}",
               "--set", "register.model_name=cc-test"]
        metrics_file = project / "metrics/eval/cc/XNLI.json"
        original = metrics_file.read_text()

        def register_with(average: float) -> dict:
            data = json.loads(original)
            data["average"] = average
            metrics_file.write_text(json.dumps(data))
            out = _run(cli, project)
            assert out.returncode == 0, out.stderr[-3000:]
            return json.loads(out.stdout[out.stdout.index("{"):])

        try:
            first, worse, better = register_with(50.0), register_with(10.0), register_with(90.0)
        finally:
            metrics_file.write_text(original)
        assert (first["version"], first["champion"], first["promoted"]) == ("1", "1", True)
        assert (worse["version"], worse["champion"], worse["promoted"]) == ("2", "1", False)
        assert (better["version"], better["champion"], better["promoted"]) == ("3", "3", True)
        check = _run([sys.executable, "-c", _REGISTRY_SCRIPT.replace("URI", uri)], tmp_path)
        assert check.returncode == 0, check.stderr[-3000:]
        result = json.loads(check.stdout.strip().splitlines()[-1])
        assert result["versions"] == ["1", "2", "3"]  # nothing overwritten or deleted
        assert result["aliases"] == {"champion": "3", "challenger": "3"}
        assert [(h["alias"], h["version"]) for h in result["history"]] == [
            ("challenger", "1"), ("champion", "1"), ("challenger", "2"), ("challenger", "3"), ("champion", "3")]
        assert result["tags"]["git_commit"] and result["tags"]["avg_XNLI"] == "90.0000"
        assert result["tags"]["storage"] == "artifacts" and len(result["tags"]["checkpoint_sha256"]) == 64
        assert isinstance(result["prediction"], list) and len(result["prediction"]) == 2
        # a model without evaluation metrics is refused
        empty = tmp_path / "no-metrics"
        (empty / "eval" / "cc").mkdir(parents=True)
        refused = _run(cli + ["--metrics-dir", str(empty)], project)
        assert refused.returncode == 2 and "no evaluation metrics" in refused.stderr
    finally:
        _stop(server)


_REGISTRY_SCRIPT = """
import json, mlflow
import pandas as pd
mlflow.set_tracking_uri("URI")
client = mlflow.MlflowClient()
versions = sorted(v.version for v in client.search_model_versions("name='cc-test'"))
model = client.get_registered_model("cc-test")
latest = client.get_model_version("cc-test", "3")
loaded = mlflow.pyfunc.load_model("models:/cc-test@champion")   # a fresh process
prediction = loaded.predict(pd.DataFrame({"prompt": ["Quelle est la capitale du Kenya ?", "Was ist 2+2?"],
                                          "lang": ["fr", "de"]}))
print(json.dumps({"versions": versions, "aliases": dict(model.aliases), "history": json.loads(model.tags["alias_history"]),
                  "tags": dict(latest.tags), "prediction": list(prediction)}))
"""
