"""A newcomer's first hour, from a fresh clone on a machine without a GPU: the README's commands as
written (in one shell, in order), then what they produced looked at as a person would (the tiny
report's first line and its chance-level scores, visible generated text, `dvc metrics show` fitting a
terminal, `dvc plots show`'s page rendered in Chromium, the MLflow UI), then the user guide's
one-machine Prefect set-up (`python -m flows.cluster local`, the deployment run, a second set-up that
starts nothing twice, a worker without a checkout, `stop`) with telemetry off by the project's own
Prefect settings.

Not run, on purpose: `make setup` (the clone uses this venv: set-up excepted), `make test` (this
suite) and the default profile's `dvc repro` (~18 min on 2 cores; its run is recorded in
docs/benchmarks.md); the test checks these lines are still the README's, so the list cannot go stale.
Services get free loopback ports (`PREFECT_API_URL` for Prefect, `--port` for `mlflow ui`).

    pytest -m integration tests/integration/test_first_hour.py -s     # -s prints the wall times
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from browser_helpers import launch, serve_offline
from prefect_helpers import BIN, copy_project, free_port, stop
from services import wait_http

pytestmark = pytest.mark.integration
NOT_RUN = {
    "make setup": "set-up: the clone uses this venv",
    "git checkout params.yaml && dvc repro": "the default profile, ~18 min on 2 cores",
    "make test": "the test suite itself",
}
TERMINAL = 100  # columns: what `dvc metrics show` must fit


def readme_commands(readme: str) -> list[str]:
    """The README's first bash block, one command a line (comments dropped)."""
    block = re.search(r"```bash\n(.*?)```", readme, re.S).group(1)
    return [line.split("  #")[0].strip() for line in block.splitlines() if line.strip()]


def _env(home: Path, api: str, clone: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("MLFLOW_TRACKING", "PREFECT_", "VIRTUAL_ENV")) and k not in ("DO_NOT_TRACK",)}
    # no PREFECT_SERVER_ANALYTICS_ENABLED / DO_NOT_TRACK: telemetry must be off by the project's settings
    env.update(PREFECT_HOME=str(home), PREFECT_API_URL=api, PYTHONPATH=str(clone), HF_HUB_OFFLINE="1",
               MLFLOW_DISABLE_TELEMETRY="true", DVC_NO_ANALYTICS="1")
    return env


def _sections(output: str) -> dict[str, str]:
    parts = re.split(r"^### (.*)$", output, flags=re.M)
    return {parts[i]: parts[i + 1] for i in range(1, len(parts) - 1, 2)}


def _get(url: str):
    with urllib.request.urlopen(url, timeout=30) as response:
        return json.loads(response.read())


def _post(url: str, body: dict):
    request = urllib.request.Request(url, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=30) as response:
        return json.loads(response.read())


@pytest.fixture(scope="module")
def clone(tmp_path_factory):
    root = tmp_path_factory.mktemp("first-hour")
    source = copy_project(root / "source", params=None)  # the working tree as a repository
    subprocess.run(["git", "clone", "-q", str(source), str(root / "cc-tuning")], check=True)
    clone = root / "cc-tuning"
    (clone / ".venv").symlink_to(sys.prefix)  # set-up excepted: this venv
    return clone


def test_readme_commands_as_written_then_the_guides_prefect_setup(clone, tmp_path):
    timings: dict[str, float] = {}
    readme = (clone / "README.md").read_text(encoding="utf-8")
    commands = readme_commands(readme)
    assert set(NOT_RUN) <= set(commands), f"the README's commands changed: {commands}"
    script = ["set -euo pipefail"]
    for command in commands:
        if command not in NOT_RUN:
            script += [f"echo '### {command}'", command]
    api = f"http://127.0.0.1:{free_port()}/api"
    env = _env(tmp_path / "prefect-home", api, clone)
    started = time.perf_counter()
    done = subprocess.run(["bash", "-c", "\n".join(script)], cwd=clone, env=env, capture_output=True, text=True,
                          timeout=1800)
    timings["README commands"] = time.perf_counter() - started
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-4000:]
    out = _sections(done.stdout)

    # cctune check: the default profile has what it needs on this GPU-less machine
    assert "everything this profile needs is here" in out["cctune check"]
    assert "[note] GPUs: none: training and evaluation run on the CPU" in out["cctune check"]

    # the tiny report says what it is, option benchmarks are scored by log-likelihood at chance level
    # (not unparsed zeros), and generation yields visible text
    summary = (clone / "reports/summary.md").read_text(encoding="utf-8")
    assert summary.splitlines()[0].startswith("> **Smoke run.** `tiny-random-llama` is a 2-layer model with random")
    xnli = json.loads((clone / "metrics/report/XNLI.json").read_text())
    assert {"base", "sft", "cc"} <= set(xnli) and all(0 <= xnli[m] <= 100 for m in ("base", "sft", "cc"))
    assert any(xnli[m] > 0 for m in ("base", "sft", "cc")), xnli
    for method in ("base", "sft", "cc"):
        metrics = json.loads((clone / f"metrics/eval/{method}/XNLI.json").read_text())
        assert metrics["choice_scoring"] == "loglik" and metrics["unparsed"] == 0
        for path in (clone / f"eval/{method}/XLSum").glob("*.jsonl"):
            rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]
            assert rows and all(row["output"].strip() for row in rows), (path, rows)

    # dvc metrics show fits a terminal: a row per benchmark and the mean, a few flat columns
    table = out["dvc metrics show"].strip().splitlines()
    assert max(map(len, table)) <= TERMINAL, "\n".join(table)
    assert table[0].split() == ["Path", "base", "cc", "cc-sft", "cc-sft_lo", "cc-sft_up", "items", "sft"]
    assert [row.split()[0] for row in table[1:]] == [f"metrics/report/{b}.json" for b in ("XLSum", "XNLI", "mean")]

    # dvc plots show: the page, in a browser, draws CC's and SFT's training loss and the scores
    page_file = clone / "dvc_plots/index.html"
    assert page_file.as_uri() in out["dvc plots show"]
    _render_plots(page_file, tmp_path)

    # the MLflow UI on the runs and the registry the tiny run made
    port = free_port()
    with open(tmp_path / "mlflow-ui.log", "w") as log:
        ui = subprocess.Popen(["mlflow", "ui", "--backend-store-uri", "sqlite:///mlflow.db", "--port", str(port)],
                              cwd=clone, env={**env, "PATH": f"{BIN}{os.pathsep}{env['PATH']}"}, stdout=log,
                              stderr=subprocess.STDOUT, start_new_session=True)
    try:
        wait_http(f"http://127.0.0.1:{port}/health", "mlflow ui", ui, tmp_path / "mlflow-ui.log")
        experiments = _get(f"http://127.0.0.1:{port}/api/2.0/mlflow/experiments/search?max_results=50")
        assert "cc-tuning-tiny" in {e["name"] for e in experiments["experiments"]}
        models = _get(f"http://127.0.0.1:{port}/api/2.0/mlflow/registered-models/search")
        assert [m["name"] for m in models["registered_models"]] == ["cc-tuning-tiny-random-llama"]
    finally:
        stop(ui)

    timings |= _prefect_on_one_machine(clone, env, api, tmp_path)
    print("\nfirst hour: " + ", ".join(f"{k} {v:.0f} s" for k, v in timings.items()))


def _render_plots(page_file: Path, tmp_path: Path) -> None:
    from playwright.sync_api import sync_playwright

    html = page_file.read_text(encoding="utf-8")
    specs = {m.group(1): json.loads(m.group(2)) for m in
             re.finditer(r'<div id = "([^"]+)">\s*<script type = "text/javascript">\s*var spec = (\{.*?\});\n', html, re.S)}
    loss = next(spec for name, spec in specs.items() if name.startswith("Training_loss"))
    assert {row["filename"] for row in loss["data"]["values"]} == {"train_cc_loss.json", "train_sft_loss.json"}
    scores = next(spec for name, spec in specs.items() if name.startswith("Score_per_benchmark"))
    assert {row["bar"] for row in scores["data"]["values"]} == {f"{b} {m}" for b in ("XNLI", "XLSum")
                                                                for m in ("base", "sft", "cc")}
    with sync_playwright() as playwright:
        browser = launch(playwright)
        page = browser.new_page(viewport={"width": 1400, "height": 1000})
        errors: list[str] = []
        page.on("pageerror", lambda err: errors.append(str(err)))
        serve_offline(page, html)
        page.goto(page_file.as_uri())
        for name in specs:  # vega-embed draws each plot into a canvas of a real size
            page.wait_for_function("(id) => { const c = document.getElementById(id)?.querySelector('canvas');"
                                   " return c && c.width > 100 && c.height > 100; }", arg=name, timeout=60_000)
        page.screenshot(path=str(tmp_path / "dvc-plots.png"), full_page=True)
        browser.close()
    assert not errors, errors


def _prefect_on_one_machine(clone: Path, env: dict[str, str], api: str, tmp_path: Path) -> dict[str, float]:
    """The guide's one-machine set-up as written, its deployment run, then what can go wrong."""
    timings = {}
    python = str(BIN / "python")
    prefect = str(BIN / "prefect")

    def run(*cmd, cwd=clone, timeout=900, **extra):
        return subprocess.run([str(c) for c in cmd], cwd=cwd, env={**env, **extra}, capture_output=True, text=True,
                              timeout=timeout)

    started = time.perf_counter()
    setup = run(python, "-m", "flows.cluster", "local")
    timings["flows.cluster local"] = time.perf_counter() - started
    server_log = clone / ".prefect/server.log"
    try:
        assert setup.returncode == 0, setup.stdout + setup.stderr
        assert f"prefect server at {api.removesuffix('/api')}: started" in setup.stdout
        assert "work pool local: created" in setup.stdout
        assert "deployments: cc-tuning-pipeline/local-tiny, cc-tuning-eval-job/local" in setup.stdout
        assert re.search(r"worker \S+: started \(pid \d+, CC_TUNING_HOME=" + re.escape(str(clone)), setup.stdout)
        # prefect deploy ran without CC_TUNING_HOME: the pull step names the variable, not a path
        deployment = _post(f"{api}/deployments/filter", {"deployments": {"name": {"any_": ["local-tiny"]}}})[0]
        assert deployment["pull_steps"] == [{"flows.cluster.enter_checkout": {"variable": "CC_TUNING_HOME"}}]

        # the README's dvc repro left every stage up to date: give the deployment run work (evaluation on)
        params_file = clone / "params.yaml"
        params_file.write_text(params_file.read_text().replace("  max_new_tokens: 8", "  max_new_tokens: 6", 1))
        started = time.perf_counter()
        flow = run(prefect, "deployment", "run", "cc-tuning-pipeline/local-tiny", "--watch", timeout=1500)
        timings["deployment run (evaluation on)"] = time.perf_counter() - started
        assert flow.returncode == 0 and "Completed" in flow.stdout, flow.stdout[-4000:] + flow.stderr[-3000:]
        tasks = _post(f"{api}/task_runs/filter", {"limit": 200})
        names = {task["name"]: task["state"]["type"] for task in tasks}
        assert all(state == "COMPLETED" for state in names.values()), names
        evals = [name for name in names if name.startswith("eval-") and not name.startswith("eval-write")]
        assert len(evals) == 3 * 5, evals  # 3 methods × (XNLI: ar ru zh + XLSum: ar ru), each named for what it is
        assert {"eval-cc-XNLI-ar", "eval-sft-XLSum-ru", "eval-write-base-XNLI", "report", "register",
                "dvc-commit-eval"} <= set(names), names
        assert not any(name.startswith(("train-", "collect", "fit", "prepare")) for name in names)  # up to date
        # the run recorded what it made: DVC sees nothing to do
        status = run(BIN / "dvc", "status")
        assert "Data and pipelines are up to date." in status.stdout, status.stdout[-3000:]
        repro = run(BIN / "dvc", "repro")
        assert repro.returncode == 0 and "Running stage" not in repro.stdout, repro.stdout[-3000:]

        again = run(python, "-m", "flows.cluster", "local")  # nothing started twice
        assert again.returncode == 0, again.stderr
        assert ": running" in again.stdout and "work pool local: exists" in again.stdout and " online" in again.stdout

        # a worker without a checkout (no CC_TUNING_HOME, started elsewhere): the run fails naming the variable
        stop_worker = int((clone / ".prefect/worker.pid").read_text())
        os.kill(stop_worker, 2)
        _wait_gone(stop_worker)
        (clone / ".prefect/worker.pid").unlink()
        bare = tmp_path / "bare"
        bare.mkdir()
        with open(tmp_path / "bare-worker.log", "w") as log:
            worker = subprocess.Popen([prefect, "worker", "start", "--pool", "local", "--name", "bare"], cwd=bare,
                                      env={**env, "PREFECT_WORKER_QUERY_SECONDS": "2"}, stdout=log,
                                      stderr=subprocess.STDOUT, start_new_session=True)
        try:
            failed = run(prefect, "deployment", "run", "cc-tuning-pipeline/local-tiny", "--watch", "--param",
                         'stages=["prepare"]', timeout=600)
        finally:
            stop(worker)
        assert "Crashed" in failed.stdout, failed.stdout[-3000:]
        runs = _post(f"{api}/flow_runs/filter", {"flow_runs": {"state": {"type": {"any_": ["CRASHED"]}}}})
        logs = _post(f"{api}/logs/filter", {"logs": {"flow_run_id": {"any_": [runs[0]["id"]]}}})
        assert any("CC_TUNING_HOME is not set on this worker" in entry["message"] for entry in logs), logs
        assert "CC_TUNING_HOME is not set on this worker" in (tmp_path / "bare-worker.log").read_text()
    finally:
        stopped = run(python, "-m", "flows.cluster", "stop")
    assert stopped.returncode == 0 and "server (pid" in stopped.stdout, stopped.stdout + stopped.stderr
    text = server_log.read_text()
    assert "telemetry" not in text.lower() and not re.search(r"\|\s*ERROR\s*\|", text), text[-3000:]
    return timings


def _wait_gone(pid: int, timeout: float = 30) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.5)
    raise TimeoutError(f"process {pid} still running")
