"""Beyond one node, for real, on the cluster's services as docker/compose.yaml runs them
(tests/integration/services.py: Prefect and MLflow on PostgreSQL, an S3 server for the DVC remote,
Prefect's results and MLflow's artifacts; every client with the compose worker's settings and
credentials): one process work pool, two workers in two separate git clones (two "nodes") that share
nothing but the DVC remote s3://cc-tuning/dvc and the result storage s3://cc-tuning/prefect-results;
the tiny profile's evaluation jobs run as flow runs of the evaluation deployment, one node is killed
(SIGKILL of its worker and everything the worker started) while it runs a job, and the final metrics
are complete, with nothing lost or duplicated; register logs the version through the MLflow server
into S3, a fresh checkout pulls everything dvc.lock names, and the champion loads elsewhere through
the MLflow server alone.

Also, on the same workspace: a DVC remote that cannot be reached fails the stage and leaves the
workspace as it was; a benchmark whose every language fails (broken data) ends the flow Failed,
removes the benchmark's previous outputs and records nothing in dvc.lock for it. Faults of the
services: the MLflow server down at registration (before and during it), the S3 server stopped
during a dvc push, PostgreSQL stopped during a pipeline run.

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

from prefect_helpers import BIN, Worker, check, commit, copy_project, env, free_port, run

pytestmark = pytest.mark.integration
DVC = BIN / "dvc"
PYTHON = sys.executable
EXPECTED = {("base", "XNLI"): ["ar", "ru", "zh"], ("base", "XLSum"): ["ar", "ru"],
            ("cc", "XNLI"): ["ar", "ru", "zh"], ("cc", "XLSum"): ["ar", "ru"]}


@pytest.fixture(scope="module")
def cluster(services, tmp_path_factory):
    """The head node's project with trained tiny models (tracked by the MLflow server) pushed to the
    S3 remote, two clones of it (without its dvc.lock: the nodes learn the versions from the pipeline
    run), the process pool, the S3 result storage and the evaluation deployment."""
    started = time.perf_counter()
    root = tmp_path_factory.mktemp("cluster")
    head = copy_project(root / "head")
    client = services.client_env()
    remote = f"s3://{services.bucket}/dvc"
    check([DVC, "remote", "add", "-d", "cluster", remote], head)
    commit(head, "the cluster's DVC remote")
    check([DVC, "repro", "fit"], head, timeout=1500, **client)
    check([DVC, "push", "--remote", "cluster"], head, **client)
    for node in ("node-a", "node-b"):
        check(["git", "clone", "-q", head, root / node], root)
    check([PYTHON, "-m", "flows.cluster", "setup", "--pool", "local", "--result-storage",
           f"s3://{services.bucket}/prefect-results"], head, **client)
    check([BIN / "prefect", "--no-prompt", "deploy", "--name", "local"], head, **client)
    print(f"\ncluster fixture (dvc repro fit, push to S3, two clones, pool, result storage, deployment): "
          f"{time.perf_counter() - started:.0f} s")
    yield SimpleNamespace(root=root, head=head, server=services.prefect, services=services, client=client,
                          remote=remote)


def _state(run: dict) -> str:
    return run["state"]["type"] if run.get("state") else "NONE"


def _worker(run: dict) -> str | None:
    return (run.get("labels") or {}).get("prefect.worker.name")


def _job(run: dict) -> str:
    params = run["parameters"]
    return f"{params['method']}/{params['benchmark']}/{'+'.join(params['langs'])}"


def test_eval_jobs_spread_over_two_nodes_and_survive_a_killed_one(cluster):
    server, head, root, services = cluster.server, cluster.head, cluster.root, cluster.services
    workers = [Worker(server, root / node, "local", node, "--limit", "1", **cluster.client)
               for node in ("node-a", "node-b")]
    parent_log = root / "pipeline.log"
    started = time.perf_counter()
    killed = None
    try:
        with open(parent_log, "w") as out:
            parent = subprocess.Popen(
                [PYTHON, "-m", "flows.pipeline", "--methods", "base", "cc", "--stages", "eval", "report", "register",
                 "--eval-backend", "deployment", "--eval-deployment", "cc-tuning-eval-job/local",
                 "--dvc-remote", "cluster", "--job-heartbeat-timeout", "75"],
                cwd=head, env=env(**cluster.client), stdout=out, stderr=subprocess.STDOUT)
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
    cloud = check([DVC, "status", "--cloud", "--remote", "cluster", "--json", *stages], head, **cluster.client)
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

    # what the run left in the stores: DVC's objects, the jobs' persisted results, the version's files
    assert services.s3.keys("dvc/files/md5/")
    assert len(services.s3.keys("prefect-results/")) >= len(by_job)
    registered = json.loads((head / "metrics/register.json").read_text())
    assert registered["champion"] == registered["version"], registered  # the first version
    version_files = services.s3.keys("mlflow/")
    assert any(key.endswith("/MLmodel") for key in version_files) and any(
        key.endswith(".safetensors") for key in version_files), version_files
    started = time.perf_counter()
    _fresh_checkout_pulls_everything(cluster)
    _champion_loads_elsewhere_through_the_server(cluster, registered["model_name"])
    print(f"fresh checkout pulled everything, champion loaded elsewhere: {time.perf_counter() - started:.0f} s")


def _fresh_checkout_pulls_everything(cluster) -> None:
    """The head's run committed (dvc.lock and the metrics, which git holds), a clone of it pulls every
    output dvc.lock names from the S3 remote (nothing local: its own DVC cache starts empty)."""
    head, root = cluster.head, cluster.root
    commit(head, "the run's versions")
    fresh = root / "fresh"
    check(["git", "clone", "-q", head, fresh], root)
    recorded = list(yaml.safe_load((fresh / "dvc.lock").read_text())["stages"])  # (not sft's: never run here)
    check([DVC, "pull", "--remote", "cluster", *recorded], fresh, timeout=600, **cluster.client)
    status = check([DVC, "status", "--json", *recorded], fresh)
    assert json.loads(status.stdout or "{}") == {}, status.stdout
    for stage in recorded:
        for out in yaml.safe_load((fresh / "dvc.lock").read_text())["stages"][stage].get("outs", []):
            assert (fresh / out["path"]).exists(), (stage, out["path"])


def _champion_loads_elsewhere_through_the_server(cluster, model_name: str) -> None:
    """In an empty folder, as MLflow's `serving` user, with no S3 keys: load models:/NAME@champion and
    generate (the artifacts come through the MLflow server alone)."""
    elsewhere = cluster.root / "serving-host"
    elsewhere.mkdir()
    code = ("import sys, mlflow, pandas as pd; model = mlflow.pyfunc.load_model(sys.argv[1]); "
            "print(model.predict(pd.DataFrame({'prompt': ['Quelle est la capitale du Kenya ?'], 'lang': ['fr']}), "
            "params={'max_new_tokens': 3}))")
    serving = {key: value for key, value in cluster.client.items()
               if key.startswith("MLFLOW_ENABLE_PROXY")}  # the serving host's settings: no S3, no Prefect
    out = check([PYTHON, "-c", code, f"models:/{model_name}@champion"], elsewhere, timeout=600,
                **serving, **cluster.services.mlflow_env("serving"), PYTHONPATH="")
    assert out.stdout.strip(), out.stderr[-2000:]
    assert not list(elsewhere.iterdir())  # nothing written where it loaded from


def test_unreachable_dvc_remote_fails_the_stage_and_leaves_the_workspace_as_is(cluster):
    head, root = cluster.head, cluster.root
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
              node, **cluster.client)
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
    head = cluster.head
    data = head / "cc_core/data/bundled/benchmarks/XLSum"
    assert (head / "metrics/eval/base/XLSum.json").is_file()  # from the cluster run
    recorded = yaml.safe_load((head / "dvc.lock").read_text())["stages"]["eval@base-XLSum"]
    started = time.perf_counter()
    try:
        for path in data.rglob("*.json"):
            path.write_text("{broken\n")
        out = run([PYTHON, "-m", "flows.pipeline", "--methods", "base"], head, timeout=1200, **cluster.client)
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


# ----------------------------------------------------------------------------- faults of the services


def _versions(cluster, name: str) -> dict[str, list[str]]:
    """{version: aliases} of the registered model, read as the MLflow admin."""
    code = ("import json, sys; from mlflow import MlflowClient; c = MlflowClient(); "
            "m = c.get_registered_model(sys.argv[1]); "
            "vs = {v.version: [] for v in c.search_model_versions(f\"name='{sys.argv[1]}'\")}; "
            "[vs[v].append(a) for a, v in m.aliases.items()]; print(json.dumps(vs))")
    out = check([PYTHON, "-c", code, name], cluster.root, **cluster.services.mlflow_env("admin"))
    return json.loads(out.stdout.strip().splitlines()[-1])


def _kill(proc: subprocess.Popen) -> None:
    """SIGKILL a service's whole process group (a server that dies, not one that shuts down)."""
    import os
    import signal

    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(timeout=60)


def test_mlflow_server_down_at_registration_is_one_line_and_creates_no_version(cluster):
    """`cctune register` with the MLflow server stopped, then killed while the version's files are
    being uploaded: each time one line naming the server (exit 2), no secret, and the registry as it
    was (no new version, the aliases where they were)."""
    services, head = cluster.services, cluster.head
    name = json.loads((head / "metrics/register.json").read_text())["model_name"]
    before = _versions(cluster, name)
    # short HTTP retries: MLflow's default retries a refused connection for minutes
    client = {**cluster.client, "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "1", "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1"}
    expected = f"cctune register: error: MLflow tracking store {services.mlflow.url} is unavailable: "
    started = time.perf_counter()
    services.mlflow.stop()
    try:
        down = run([BIN / "cctune", "register"], head, **client)
    finally:
        services.mlflow.start()
    killed_at = None
    uploaded = set(services.s3.keys("mlflow/"))
    with open(cluster.root / "register-killed.log", "w") as log:
        proc = subprocess.Popen([str(BIN / "cctune"), "register"], cwd=head, env=env(**client), stdout=log,
                                stderr=subprocess.STDOUT)
        try:
            deadline = time.time() + 600
            while proc.poll() is None and time.time() < deadline and killed_at is None:
                if set(services.s3.keys("mlflow/")) - uploaded:  # the first file of the new version arrived
                    _kill(services.mlflow.proc)
                    killed_at = time.perf_counter() - started
                time.sleep(0.1)
            proc.wait(timeout=600)
        finally:
            if proc.poll() is None:
                proc.kill()
            services.mlflow.start()
    midway = (cluster.root / "register-killed.log").read_text()
    for out, text in ((down, down.stdout + down.stderr), (proc, midway)):
        assert out.returncode == 2, text[-4000:]
        errors = [line for line in text.splitlines() if "error:" in line]
        assert len(errors) == 1 and errors[0].startswith(expected), text[-4000:]
        assert "Traceback" not in text and not any(secret in text for secret in services.secrets())
    assert "the server is unreachable" in down.stderr
    assert killed_at is not None, "the server was never killed: no file of the new version reached S3\n" + midway
    assert _versions(cluster, name) == before  # nothing half-created, the aliases untouched
    print(f"MLflow down at registration: one line, no version ({time.perf_counter() - started:.0f} s, "
          f"killed {killed_at:.0f} s in)")


def test_s3_server_stopped_during_dvc_push_fails_naming_the_remote_and_changes_nothing(cluster, tmp_path):
    """A second S3 server (same bucket and user set-up) as the remote `spare`, killed as soon as the first
    object of a `dvc push` of every recorded stage lands: the push fails naming the remote, its URL and
    the endpoint that went away, in one line; the workspace and dvc.lock are as they were."""
    from flows.dvc_sync import recorded_stages
    from services import S3Server

    head = cluster.head
    spare = S3Server(tmp_path, cluster.services.bucket, "cc-worker")
    check([DVC, "remote", "add", "--local", "spare", cluster.remote], head)
    node_env = {**cluster.client, "AWS_ENDPOINT_URL": spare.endpoint, "AWS_ACCESS_KEY_ID": spare.worker_keys[0],
                "AWS_SECRET_ACCESS_KEY": spare.worker_keys[1]}
    code = ("import json, sys\nfrom flows import dvc_sync\nfrom flows.s3_errors import s3_reason\n"
            "try:\n    dvc_sync.push('.', sys.argv[1:], 'spare')\n    print(json.dumps({'error': None}))\n"
            "except dvc_sync.DvcError as err:\n"
            "    print(json.dumps({'error': str(err), 'reason': s3_reason(dvc_sync.remote_url('.', 'spare'), str(err))}))")

    def listing() -> dict[str, int]:
        return {p.relative_to(head).as_posix(): p.stat().st_mtime_ns for p in head.rglob("*")
                if p.is_file() and not {".git", ".dvc", "__pycache__"} & set(p.parts)}

    before, lock = listing(), (head / "dvc.lock").read_text()
    started = time.perf_counter()
    try:
        proc = subprocess.Popen([PYTHON, "-c", code, *sorted(recorded_stages(head))], cwd=head, env=env(**node_env),
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        killed = False
        deadline = time.time() + 300
        while proc.poll() is None and time.time() < deadline:
            if spare.keys("dvc/"):
                _kill(spare.proc)
                killed = True
                break
            time.sleep(0.05)
        stdout, stderr = proc.communicate(timeout=600)
    finally:
        spare.stop()
        check([DVC, "remote", "remove", "--local", "spare"], head)
    assert killed, f"the push ended before the server was stopped: {stdout}{stderr[-2000:]}"
    result = json.loads(stdout.strip().splitlines()[-1])
    assert result["error"] and "\n" not in result["error"], result
    assert f"dvc push to remote 'spare' ({cluster.remote}) failed" in result["error"], result
    assert result["reason"].startswith(f"cannot connect to the S3 endpoint 127.0.0.1:{spare.port}: "), result
    assert f"[cannot connect to the S3 endpoint 127.0.0.1:{spare.port}: " in result["error"], result
    assert not any(secret in stdout + stderr for secret in [*spare.worker_keys[1:], *cluster.services.secrets()])
    assert listing() == before and (head / "dvc.lock").read_text() == lock  # nothing in the workspace changed
    print(f"S3 stopped during dvc push: failed in {time.perf_counter() - started:.0f} s")


def test_postgres_stopped_during_a_pipeline_run_fails_naming_the_prefect_api_and_a_rerun_completes(cluster):
    """PostgreSQL (Prefect's and MLflow's database) stopped while a pipeline run evaluates: the run
    fails naming the Prefect API it lost; with the database back, the same command completes and
    records its outputs."""
    services, head, server = cluster.services, cluster.head, cluster.server
    command = [PYTHON, "-m", "flows.pipeline", "--methods", "base", "--stages", "eval"]
    seen = {r["id"] for r in server.flow_runs()}
    started = time.perf_counter()
    stopped_at = None
    with open(cluster.root / "pipeline-pg-stopped.log", "w") as log:
        proc = subprocess.Popen(command, cwd=head, env=env(**cluster.client), stdout=log, stderr=subprocess.STDOUT)
        try:
            deadline = time.time() + 600
            while proc.poll() is None and time.time() < deadline:
                if any(r["id"] not in seen and r["state"]["type"] == "RUNNING" for r in server.flow_runs()):
                    time.sleep(3)  # into its first task
                    services.postgres.stop()
                    stopped_at = time.perf_counter() - started
                    break
                time.sleep(0.5)
            proc.wait(timeout=900)
        finally:
            if proc.poll() is None:
                proc.kill()
            if not services.postgres.running():
                services.postgres.start()
    text = (cluster.root / "pipeline-pg-stopped.log").read_text()
    assert stopped_at is not None, "the run never showed as Running\n" + text[-4000:]
    assert proc.returncode != 0, text[-4000:]
    assert f"{server.api}/" in text and "500 Internal Server Error" in text, text[-4000:]
    rerun = run(command, head, timeout=1200, **cluster.client)
    assert rerun.returncode == 0, (rerun.stdout + rerun.stderr)[-4000:]
    status = check([DVC, "status", "--json", "eval@base-XNLI", "eval@base-XLSum"], head)
    assert json.loads(status.stdout or "{}") == {}, status.stdout
    print(f"PostgreSQL stopped {stopped_at:.0f} s into a run: it failed; the rerun completed "
          f"({time.perf_counter() - started:.0f} s in all)")
