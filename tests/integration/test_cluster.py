"""Beyond one node, for real: a Prefect server on a free loopback port, one process work pool, two
workers in two separate git clones (two "nodes") that share nothing but a local DVC remote and the
server's result storage; the tiny profile's evaluation jobs run as flow runs of the evaluation
deployment, one node is killed (SIGKILL of its worker and everything the worker started) while it
runs a job, and the final metrics are complete, with nothing lost or duplicated.

Also, on the same workspace: a DVC remote that cannot be reached fails the stage and leaves the
workspace as it was; a benchmark whose every language fails (broken data) ends the flow Failed,
removes the benchmark's previous outputs and records nothing in dvc.lock for it.

    pytest -m integration tests/integration/test_cluster.py -s     # -s shows the wall times
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
from types import SimpleNamespace

import pytest
import yaml

from prefect_helpers import BIN, PrefectServer, Worker, check, commit, copy_project, env, free_port, run

pytestmark = pytest.mark.integration
DVC = BIN / "dvc"
PYTHON = sys.executable
EXPECTED = {("base", "XNLI"): ["ar", "ru", "zh"], ("base", "XLSum"): ["ar", "ru"],
            ("cc", "XNLI"): ["ar", "ru", "zh"], ("cc", "XLSum"): ["ar", "ru"]}


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    """The head node's project with trained tiny models pushed to a local DVC remote, two clones of it
    (without its dvc.lock: the nodes learn the versions from the pipeline run), a Prefect server with
    a process pool, a shared result storage and the evaluation deployment."""
    started = time.perf_counter()
    root = tmp_path_factory.mktemp("cluster")
    head = copy_project(root / "head")
    server = PrefectServer(root / "prefect-home", head)  # boots while DVC trains
    try:
        check([DVC, "remote", "add", "-d", "cluster", root / "dvc-remote"], head)
        commit(head, "the cluster's DVC remote")
        check([DVC, "repro", "fit"], head, timeout=1500)
        check([DVC, "push", "--remote", "cluster"], head)
        for node in ("node-a", "node-b"):
            check(["git", "clone", "-q", head, root / node], root)
        server.wait_healthy()
        check([PYTHON, "-m", "flows.cluster", "setup", "--pool", "local", "--result-storage", root / "results"], head,
              **server.client_env())
        check([BIN / "prefect", "--no-prompt", "deploy", "--name", "local"], head, **server.client_env())
        print(f"\ncluster fixture (dvc repro fit, push, two clones, server, pool, deployment): "
              f"{time.perf_counter() - started:.0f} s")
        yield SimpleNamespace(root=root, head=head, server=server)
    finally:
        server.stop()


def _state(run: dict) -> str:
    return run["state"]["type"] if run.get("state") else "NONE"


def _worker(run: dict) -> str | None:
    return (run.get("labels") or {}).get("prefect.worker.name")


def _job(run: dict) -> str:
    params = run["parameters"]
    return f"{params['method']}/{params['benchmark']}/{'+'.join(params['langs'])}"


def test_eval_jobs_spread_over_two_nodes_and_survive_a_killed_one(cluster):
    server, head, root = cluster.server, cluster.head, cluster.root
    workers = [Worker(server, root / node, "local", node, "--limit", "1") for node in ("node-a", "node-b")]
    parent_log = root / "pipeline.log"
    started = time.perf_counter()
    killed = None
    try:
        with open(parent_log, "w") as out:
            parent = subprocess.Popen(
                [PYTHON, "-m", "flows.pipeline", "--methods", "base", "cc", "--stages", "eval", "report",
                 "--eval-backend", "deployment", "--eval-deployment", "cc-tuning-eval-job/local",
                 "--dvc-remote", "cluster", "--job-heartbeat-timeout", "75"],
                cwd=head, env=env(**server.client_env()), stdout=out, stderr=subprocess.STDOUT)
            deadline = time.time() + 1200
            while parent.poll() is None and time.time() < deadline:
                if killed is None:
                    on_b = [r for r in server.flow_runs(tags={"all_": ["cc-eval"]}) if _worker(r) == "node-b"]
                    running = [r for r in on_b if _state(r) == "RUNNING"]
                    if running and any(_state(r) == "COMPLETED" for r in on_b):  # node-b did a job, is on another
                        pids = workers[1].kill_node()
                        killed = {"run": running[0], "pids": pids, "after_s": time.perf_counter() - started}
                time.sleep(1)
            if parent.poll() is None:
                parent.kill()
            parent.wait()
    finally:
        for worker in workers:
            worker.stop()
    wall = time.perf_counter() - started
    log = parent_log.read_text()
    assert parent.returncode == 0, log[-6000:]
    assert killed is not None, "node-b never held a job after finishing one: the kill did not happen\n" + log[-4000:]

    runs = server.flow_runs(tags={"all_": ["cc-eval"]})
    by_job: dict[str, list[dict]] = {}
    for run_ in runs:
        by_job.setdefault(_job(run_), []).append(run_)
    assert set(by_job) == {f"{m}/{b}/{'+'.join(langs)}" for (m, b), langs in EXPECTED.items()}
    # every job completed exactly once: nothing lost, nothing done twice
    assert all(sum(_state(r) == "COMPLETED" for r in job_runs) == 1 for job_runs in by_job.values()), \
        {job: [(r["name"], _state(r), _worker(r)) for r in rs] for job, rs in by_job.items()}
    completed_by = [_worker(r) for r in runs if _state(r) == "COMPLETED"]
    assert "node-a" in completed_by and "node-b" in completed_by  # the jobs spread over both nodes
    # the killed node's job: marked Crashed by the pipeline run (no heartbeat), then done by node-a
    lost = next(r for r in runs if r["id"] == killed["run"]["id"])
    assert _state(lost) == "CRASHED" and "no heartbeat" in lost["state"]["message"], lost["state"]
    redone = [r for r in by_job[_job(lost)] if _state(r) == "COMPLETED"]
    assert [_worker(r) for r in redone] == ["node-a"]

    # the final metrics and predictions: every language of every benchmark, each item once
    limits = yaml.safe_load((head / "params.yaml").read_text())["eval"]["limit"]
    for (method, bench), langs in EXPECTED.items():
        limit = limits[bench] if isinstance(limits, dict) else limits
        metrics = json.loads((head / f"metrics/eval/{method}/{bench}.json").read_text())
        assert sorted(metrics["languages"]) == langs and "failed_languages" not in metrics, metrics
        assert metrics["items"] == limit * len(langs)
        for lang in langs:
            lines = (head / f"eval/{method}/{bench}/{lang}.jsonl").read_text().splitlines()
            rows = [json.loads(line) for line in lines]
            assert len(rows) == limit and len({row["id"] for row in rows}) == limit
        written = sorted(p.name for p in (head / f"eval/{method}/{bench}").iterdir())
        assert written == [f"{lang}.jsonl" for lang in langs]

    # the same versioned state as dvc repro: dvc.lock up to date for what ran, everything pushed
    stages = [f"eval@base-{b}" for b in ("XNLI", "XLSum")] + [f"eval_cc@{b}" for b in ("XNLI", "XLSum")] + ["report"]
    status = check([DVC, "status", "--json", *stages], head)
    assert json.loads(status.stdout or "{}") == {}, status.stdout
    cloud = check([DVC, "status", "--cloud", "--remote", "cluster", "--json", *stages], head)
    assert json.loads(cloud.stdout or "{}") == {}, cloud.stdout  # the eval outputs are in the remote
    # the nodes pulled exactly the versions the pipeline run named (its dvc.lock entries)
    head_lock = yaml.safe_load((head / "dvc.lock").read_text())["stages"]
    adopted = set()
    for node in ("node-a", "node-b"):
        node_lock = yaml.safe_load((root / node / "dvc.lock").read_text())["stages"]
        assert node_lock and all(node_lock[s]["outs"] == head_lock[s]["outs"] for s in node_lock), node
        adopted |= set(node_lock)
    assert adopted == {"base_model", "train_cc", "fit"}
    print(f"cluster evaluation: {len(runs)} flow runs for {len(by_job)} jobs, node-b killed after "
          f"{killed['after_s']:.0f} s (pids {killed['pids']}); pipeline run {wall:.0f} s")


def test_unreachable_dvc_remote_fails_the_stage_and_leaves_the_workspace_as_is(cluster):
    server, head, root = cluster.server, cluster.head, cluster.root
    node = root / "node-c"
    check(["git", "clone", "-q", head, node], root)
    shutil.copy(head / "dvc.lock", node / "dvc.lock")  # the versions to pull, as a head node would hand them on
    url = f"http://127.0.0.1:{free_port()}/dvc"  # nothing listens there
    check([DVC, "remote", "add", "--local", "broken", url], node)
    def listing() -> list[str]:
        return sorted(p.relative_to(node).as_posix() for p in node.rglob("*")
                      if not {".git", ".dvc", "__pycache__"} & set(p.parts))

    before = listing()
    lock = (node / "dvc.lock").read_text()
    started = time.perf_counter()
    out = run([PYTHON, "-m", "flows.pipeline", "--methods", "cc", "--stages", "eval", "--dvc-remote", "broken"],
              node, **server.client_env())
    text = out.stdout + out.stderr
    assert out.returncode == 1, text[-4000:]
    assert f"dvc pull from remote 'broken' ({url}) failed" in text and "ERROR: failed to pull data" in text, \
        text[-4000:]
    assert "cannot connect to 127.0.0.1" in text
    assert listing() == before  # no models/, transform/, eval/ or metrics/ half-written
    assert (node / "dvc.lock").read_text() == lock
    print(f"unreachable remote: failed in {time.perf_counter() - started:.0f} s")


def test_a_benchmark_whose_every_language_fails_fails_the_flow_and_is_not_recorded(cluster):
    """'{broken' in XLSum's data files, then `python -m flows.pipeline --methods base` (the in-process
    path): the flow ends Failed naming the failures, XLSum's previous outputs are gone, and dvc.lock
    keeps XLSum's last good entry (the broken data's hash is not recorded beside old outputs)."""
    server, head = cluster.server, cluster.head
    data = head / "cc_core/data/bundled/benchmarks/XLSum"
    assert (head / "metrics/eval/base/XLSum.json").is_file()  # from the cluster run
    recorded = yaml.safe_load((head / "dvc.lock").read_text())["stages"]["eval@base-XLSum"]
    started = time.perf_counter()
    try:
        for path in data.rglob("*.json"):
            path.write_text("{broken\n")
        out = run([PYTHON, "-m", "flows.pipeline", "--methods", "base"], head, timeout=1200, **server.client_env())
        text = out.stdout + out.stderr
        assert out.returncode != 0, text[-4000:]
        assert "base/XLSum/ar" in text and "base/XLSum/ru" in text and "malformed JSON" in text
        assert not (head / "metrics/eval/base/XLSum.json").exists() and not (head / "eval/base/XLSum").exists()
        lock = yaml.safe_load((head / "dvc.lock").read_text())["stages"]
        assert lock["eval@base-XLSum"] == recorded
        status = run([DVC, "status", "--json", "eval@base-XLSum"], head)
        assert "eval@base-XLSum" in json.loads(status.stdout or "{}"), status.stdout  # not "up to date"
        # XNLI was fine: written and recorded
        assert json.loads((head / "metrics/eval/base/XNLI.json").read_text())["items"] == 4 * 3
        assert json.loads(run([DVC, "status", "--json", "eval@base-XNLI"], head).stdout or "{}") == {}
    finally:
        subprocess.run(["git", "checkout", "--", str(data)], cwd=head, check=True)
    print(f"broken benchmark: flow failed as it should in {time.perf_counter() - started:.0f} s")
