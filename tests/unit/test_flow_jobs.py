"""The deployment backend's bookkeeping without a server: jobs planned from the evaluation plan,
submitted, retried when they fail or crash, re-submitted when their heartbeats stop, given up
after their retries, not retried when cancelled; a GPU per job on a node.

    pytest tests/unit/test_flow_jobs.py
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from datetime import datetime, timedelta, timezone
from types import SimpleNamespace

import pytest
import torch
from prefect import states

from flows import eval_jobs
from flows.eval_jobs import Job, gpu_slot, plan_jobs, run_jobs

LOG = logging.getLogger("test")


def test_plan_jobs_groups_languages_per_method_and_benchmark():
    plan = [("base", "XNLI", lang) for lang in ("ar", "ru", "zh")] + [("cc", "XLSum", "ar"), ("cc", "XLSum", "ru")]
    assert [j.key for j in plan_jobs(plan)] == ["base/XNLI/ar+ru+zh", "cc/XLSum/ar+ru"]
    assert [j.key for j in plan_jobs(plan, 2)] == ["base/XNLI/ar+ru", "base/XNLI/zh", "cc/XLSum/ar+ru"]
    assert [j.key for j in plan_jobs(plan, 1)][:3] == ["base/XNLI/ar", "base/XNLI/ru", "base/XNLI/zh"]
    assert plan_jobs([]) == []


class FakeServer:
    """run_deployment + the few client calls run_jobs makes; each job's runs follow a script."""

    def __init__(self, scripts: dict[str, list[str]]):
        self.scripts = scripts  # job key → outcome of each successive run: done | fail | crash | lost | cancel
        self.runs: dict[uuid.UUID, SimpleNamespace] = {}
        self.forced: list[tuple[uuid.UUID, str]] = []
        self.submitted: list[str] = []
        self.lock = threading.Lock()

    # prefect.deployments.run_deployment
    def run_deployment(self, name, parameters, timeout, flow_run_name, tags, idempotency_key):
        assert timeout == 0 and name == "cc-tuning-eval-job/test" and "cc-eval" in tags
        key = f"{parameters['method']}/{parameters['benchmark']}/{'+'.join(parameters['langs'])}"
        attempt = sum(k == key for k in self.submitted)
        self.submitted.append(key)
        outcome = self.scripts[key][attempt]
        run = SimpleNamespace(id=uuid.uuid4(), name=flow_run_name, key=key, outcome=outcome, polls=0,
                              labels={"prefect.worker.name": f"worker-{attempt % 2}"},
                              state=states.Scheduled())
        self.runs[run.id] = run
        return run

    def _advance(self, run) -> None:
        run.polls += 1
        if run.polls == 1:
            run.state = states.Running()
            return
        if run.state.is_final():
            return
        old = datetime.now(timezone.utc) - timedelta(hours=1)
        if run.outcome == "done":
            langs = run.key.split("/")[2].split("+")
            result = {"results": {lang: {"summary": {"score": 1.0}, "rows": []} for lang in langs}, "failed": {},
                      "seconds": 1.0, "worker": run.labels["prefect.worker.name"]}
            run.state = states.Completed(data=result)
        elif run.outcome == "fail":
            run.state = states.Failed(message="CUDA error: out of memory (simulated)")
        elif run.outcome == "crash":
            run.state = states.Crashed(message="Flow run process exited with code -9")
        elif run.outcome == "cancel":
            run.state = states.Cancelled(message="cancelled from the UI")
        elif run.outcome == "lost":  # Running since long ago, no heartbeat: its node died
            run.state = states.Running(timestamp=old)

    # the client
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False

    def read_flow_runs(self, flow_run_filter, limit):
        wanted = flow_run_filter.id.any_
        for run_id in wanted:
            self._advance(self.runs[run_id])
        return [self.runs[run_id] for run_id in wanted]

    def read_events(self, filter, limit):
        assert limit <= 50  # the server's maximum
        events = [SimpleNamespace(resource=SimpleNamespace(id=rid), occurred=datetime.now(timezone.utc))
                  for rid in filter.resource.id if self.runs[uuid.UUID(rid.rsplit(".", 1)[-1])].outcome != "lost"]
        return SimpleNamespace(events=events, next_page=None)

    def set_flow_run_state(self, run_id, state, force=False):
        self.forced.append((run_id, state.type.value))
        self.runs[run_id].state = state


@pytest.fixture
def fake(monkeypatch):
    import prefect.client.orchestration
    import prefect.deployments

    def install(scripts):
        server = FakeServer(scripts)
        monkeypatch.setattr(prefect.deployments, "run_deployment", server.run_deployment)
        monkeypatch.setattr(prefect.client.orchestration, "get_client", lambda sync_client=True: server)
        return server

    return install


def _params(job: Job) -> dict:
    return {"method": job.method, "benchmark": job.benchmark, "langs": job.langs}


def test_failed_crashed_and_lost_runs_are_submitted_again_until_done(fake):
    server = fake({"base/XNLI/ar": ["done"], "base/XNLI/ru": ["fail", "done"], "cc/XNLI/ar": ["crash", "done"],
                   "cc/XNLI/ru": ["lost", "done"]})
    jobs = plan_jobs([("base", "XNLI", "ar"), ("base", "XNLI", "ru"), ("cc", "XNLI", "ar"), ("cc", "XNLI", "ru")], 1)
    done = run_jobs(jobs, "cc-tuning-eval-job/test", _params, retries=2, heartbeat_timeout_s=60, poll_s=0,
                    logger=LOG)
    assert [(j.key, j.status, j.attempts) for j in done] == [
        ("base/XNLI/ar", "done", 1), ("base/XNLI/ru", "done", 2), ("cc/XNLI/ar", "done", 2), ("cc/XNLI/ru", "done", 2)]
    assert all(set(j.result["results"]) == set(j.langs) for j in done)
    # the lost run (no heartbeat for an hour) was marked Crashed by the parent, and only that one
    lost = [run for run in server.runs.values() if run.outcome == "lost"]
    assert server.forced == [(lost[0].id, "CRASHED")] and "no heartbeat" in lost[0].state.message
    assert "no heartbeat" in next(j for j in done if j.key == "cc/XNLI/ru").errors[0]
    assert "out of memory" in next(j for j in done if j.key == "base/XNLI/ru").errors[0]


def test_a_job_that_keeps_failing_is_reported_and_a_cancelled_one_is_not_retried(fake):
    server = fake({"base/XLSum/ar": ["fail", "crash", "fail"], "base/XLSum/ru": ["cancel"],
                   "sft/XLSum/ar": ["done"]})
    jobs = plan_jobs([("base", "XLSum", "ar"), ("base", "XLSum", "ru"), ("sft", "XLSum", "ar")], 1)
    done = run_jobs(jobs, "cc-tuning-eval-job/test", _params, retries=2, heartbeat_timeout_s=60, poll_s=0,
                    logger=LOG)
    assert [(j.key, j.status, j.attempts) for j in done] == [
        ("base/XLSum/ar", "failed", 3), ("base/XLSum/ru", "failed", 1), ("sft/XLSum/ar", "done", 1)]
    assert len(done[0].errors) == 3 and "attempt 3" in done[0].errors[2]
    assert "cancelled" in done[1].errors[0]
    assert server.submitted.count("base/XLSum/ar") == 3 and server.submitted.count("base/XLSum/ru") == 1


def test_gpu_slot_gives_each_job_a_gpu_of_its_own(monkeypatch, tmp_path):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "3,5")  # this worker sees the node's GPUs 3 and 5
    busy: set[str] = set()
    used: list[str] = []
    clash = threading.Event()
    lock = threading.Lock()

    def job() -> None:
        with gpu_slot(tmp_path, poll_s=0.01) as device:
            with lock:
                clash.set() if device in busy else None
                busy.add(device)
                used.append(device)
            time.sleep(0.05)
            with lock:
                busy.discard(device)

    threads = [threading.Thread(target=job) for _ in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not clash.is_set() and sorted(set(used)) == ["cuda:0", "cuda:1"] and len(used) == 6
    # locks are named by the physical GPU, so a worker that sees the same GPU under another index waits for it
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cc-tuning-gpu-3.lock", "cc-tuning-gpu-5.lock"]


def test_gpu_slot_without_cuda_is_the_cpu(monkeypatch, tmp_path):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with gpu_slot(tmp_path) as device:
        assert device == "cpu"
    assert list(tmp_path.iterdir()) == []


def test_code_version_is_the_checkout_commit(tmp_path):
    assert eval_jobs.git_revision(tmp_path) is None  # not a git repository (e.g. the container image)


def _finished(result) -> Job:
    job = Job("cc", "XNLI", ["ar", "zh"], run_name="cc-XNLI-ar-zh-try1")
    job.result = result
    return job


def _result(**changes) -> dict:
    good = {"method": "cc", "benchmark": "XNLI", "langs": ["ar", "zh"], "seconds": 1.0, "failed": {"zh": "boom"},
            "results": {"ar": {"summary": {"score": 50.0}, "rows": [{"id": "XNLI-ar-00000"}]}}}
    return {**good, **changes}


def test_a_job_result_is_accepted_only_for_the_jobs_own_languages():
    results, failed = eval_jobs.accept_result(_finished(_result()))
    assert list(results) == ["ar"] and failed == {"zh": "boom"}
    for bad, named in [
        (_result(results={"../../../../x/pwned": {"summary": {}, "rows": []}}), "../../../../x/pwned"),
        (_result(failed={"hi": "x"}), "'hi'"),          # a real language, but not this job's
        (_result(method="sft"), "'sft'"),
        (_result(results={"ar": "not a summary"}), "for ar"),
        ("a string", "not an object"),
    ]:
        with pytest.raises(ValueError, match="eval job cc/XNLI/ar\\+zh") as err:
            eval_jobs.accept_result(_finished(bad))
        assert named in str(err.value)


def test_job_results_are_plain_json_never_objects_named_by_the_data():
    serializer = eval_jobs.PlainJSON()
    blob = b'{"__class__": "os.system", "data": "echo pwned"}'
    assert serializer.loads(blob) == {"__class__": "os.system", "data": "echo pwned"}  # a dict, nothing imported
    assert serializer.loads(serializer.dumps(_result())) == _result()
    path = b'{"__class__": "pathlib.PurePosixPath", "data": "/etc"}'
    assert serializer.loads(path) == {"__class__": "pathlib.PurePosixPath", "data": "/etc"}
    # Prefect's own JSON serializer imports the module the data names and builds the object
    from pathlib import PurePosixPath

    from prefect.serializers import JSONSerializer

    assert JSONSerializer().loads(path) == PurePosixPath("/etc")
