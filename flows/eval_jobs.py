"""Evaluation jobs as flow runs of their own, on a Prefect work pool (the pipeline's ``deployment`` backend).

    prefect deploy --name cc-tuning-eval-job/gpu        # prefect.yaml: this flow on the `gpu` pool
    # then a pipeline run with eval_backend=deployment submits one flow run per job

One job is one method × one benchmark × a group of languages. The pipeline's flow submits every
job with ``run_deployment`` (it returns at once), so any worker on any node takes jobs; how many
run at once is Prefect's business: the evaluation deployment's concurrency limit (one slot per GPU
in the cluster) and each worker's ``--limit`` (its node's GPUs). On its node a job takes a GPU
no other job holds (:func:`gpu_slot`).

A job pulls what it reads (the method's model, the Transform Matrix) from the project's DVC
remote into the worker's own checkout, at the versions the pipeline run recorded (it receives
their dvc.lock entries), evaluates, and returns its predictions and scores as its flow-run
result (persisted as JSON in Prefect's result storage: the server's default result storage
block, shared by the nodes). The parent writes the per-benchmark outputs, so a job that runs
twice (a retry after its worker vanished) cannot duplicate anything.

The parent watches its jobs (:func:`run_jobs`): a failed or crashed run is submitted again (to
any live worker) up to ``retries`` times; a run whose flow-run heartbeats stop (its node died:
SIGKILL, power, network) is marked Crashed after ``heartbeat_timeout_s`` and submitted again.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any, Literal
from uuid import UUID

from prefect import flow, get_run_logger
from prefect.serializers import Serializer

GPU_WAIT_LOG_S = 60
MAX_API_ERRORS = 12  # consecutive failed polls of the server (about a minute) before the parent gives up


@contextlib.contextmanager
def gpu_slot(lock_dir: str | Path | None = None, poll_s: float = 2.0) -> Iterator[str]:
    """A device no other job on this node holds: ``cuda:i`` under an exclusive lock on that GPU
    (a file lock the kernel releases if the job dies), or ``cpu`` without CUDA.

    With one worker per GPU (``CUDA_VISIBLE_DEVICES=i``, ``--limit 1``) the job simply gets that
    GPU; with one worker for several GPUs (``--limit N``) each job takes a free one. Locks are
    named by the physical GPU (its entry in CUDA_VISIBLE_DEVICES), so workers that see different
    subsets of a node's GPUs still never share one."""
    import torch

    if not torch.cuda.is_available():
        yield "cpu"
        return
    count = torch.cuda.device_count()
    visible = [v.strip() for v in os.environ.get("CUDA_VISIBLE_DEVICES", "").split(",") if v.strip()]
    physical = (visible or [str(i) for i in range(count)])[:count]
    folder = Path(lock_dir or os.environ.get("CC_TUNING_GPU_LOCK_DIR") or tempfile.gettempdir())
    folder.mkdir(parents=True, exist_ok=True)
    waited_since = time.monotonic()
    logged = 0.0
    while True:
        for index, name in enumerate(physical):
            handle = open(folder / f"cc-tuning-gpu-{name}.lock", "w")
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                handle.close()
                continue
            try:
                yield f"cuda:{index}"
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)
                handle.close()
            return
        waited = time.monotonic() - waited_since
        if waited - logged >= GPU_WAIT_LOG_S:
            logged = waited
            print(f"all {len(physical)} GPUs of this node are held by other jobs; waiting "
                  f"({waited:.0f} s so far; is the worker's --limit above its GPU count?)")
        time.sleep(poll_s)


def git_revision(project: str | Path) -> str | None:
    """The checkout's commit (None outside a git repository, e.g. the container image)."""
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=project, capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout.strip() if out.returncode == 0 else None


class PlainJSON(Serializer):
    """Job results as plain JSON: Prefect's own JSON serializer rebuilds objects named in the data
    (``{"__class__": "module.Name"}`` imports ``module``), so a result that someone wrote into the
    shared result storage could make the pipeline import code. This one only ever yields dicts,
    lists, strings and numbers (what :func:`accept_result` then checks)."""

    type: Literal["cc-tuning-plain-json"] = "cc-tuning-plain-json"

    def dumps(self, obj: Any) -> bytes:
        return json.dumps(obj, ensure_ascii=False).encode("utf-8")

    def loads(self, blob: bytes) -> Any:
        return json.loads(blob)


@flow(name="cc-tuning-eval-job", persist_result=True, result_serializer=PlainJSON(), log_prints=True)
def eval_job(method: Literal["base", "sft", "cc"], benchmark: str, langs: list[str], params: dict[str, Any],
             model_dir: str | None = None, transform: str = "transform",
             dvc_remote: str | None = None, dvc_inputs: list[str] | None = None,
             dvc_lock: dict[str, Any] | None = None, code_version: str | None = None,
             project_dir: str = ".") -> dict[str, Any]:
    """One evaluation job: one method × one benchmark × a group of languages, submitted by the
    pipeline flow (eval_backend=deployment); not meant to be started by hand.

    Args:
        method: which model: base, sft or cc (with the Transform Matrix).
        benchmark: benchmark name, e.g. XNLI.
        langs: the languages of this job.
        params: the pipeline run's resolved parameters (every section of params.yaml).
        model_dir: the model directory, as the eval stage's command names it (default: models/<method>).
        transform: the Transform Matrix directory, as the eval stage's command names it (cc only).
        dvc_remote: DVC remote to pull the model (and Transform Matrix) from; none = use the checkout as is.
        dvc_inputs: DVC-tracked paths to pull, e.g. models/cc and transform (from the eval stage's inputs in dvc.yaml).
        dvc_lock: the dvc.lock entries of the stages that produced them (the versions to pull).
        code_version: the git commit of the pipeline run; this worker's checkout must be at it.
        project_dir: the worker's checkout (relative to the deployment's working directory).
    """
    from cc_core.config import parse_params
    from cc_core.data.benchmarks import get_spec
    from cc_core.evaluate import evaluate_languages, load_generator
    from cc_core.io import InputError
    from flows import dvc_sync

    logger = get_run_logger()
    project = Path(project_dir).resolve()
    os.chdir(project)  # the stage functions use the project's relative paths (models/, transform/)
    here = git_revision(project)
    if code_version and here and here != code_version:
        raise RuntimeError(f"this worker's checkout {project} is at commit {here[:12]}, the pipeline run at "
                           f"{code_version[:12]}: update the worker's checkout (git pull) so both run the same code")
    if dvc_remote and dvc_inputs:
        dvc_sync.adopt_lock_entries(project, dvc_lock or {})
        dvc_sync.pull(project, list(dvc_inputs), dvc_remote, what=f"eval job {method}/{benchmark}")
        logger.info("pulled %s from DVC remote %s", ", ".join(dvc_inputs), dvc_remote)
    run_params = parse_params(params, source="the pipeline run's params")
    spec = get_spec(benchmark)
    started = time.perf_counter()
    results: dict[str, Any] = {}
    failed: dict[str, str] = {}
    with gpu_slot() as device:
        try:
            generator = load_generator(run_params, method, model_dir, transform, device)  # one model load per job
        except InputError as err:  # e.g. a Transform Matrix of another checkpoint: every language fails
            generator, failed = None, {lang: f"{type(err).__name__}: {err}" for lang in langs}
        for lang in langs if generator is not None else []:  # the same unit as the in-process backend's tasks
            try:
                result = evaluate_languages(run_params, method, spec.name, [lang], generator)[lang]
            except InputError as err:  # bad data is not retried: it would fail the same way
                failed[lang] = f"{type(err).__name__}: {err}"
                continue
            results[lang] = {"summary": result.summary, "rows": result.rows, "mode": generator.mode}
    for lang, message in failed.items():
        logger.error("%s %s %s: %s", method, spec.name, lang, message)
    return {"method": method, "benchmark": spec.name, "langs": list(langs), "results": results, "failed": failed,
            "seconds": round(time.perf_counter() - started, 2), "device": device, "host": socket.gethostname(),
            "worker": os.environ.get("PREFECT__WORKER_NAME"), "workspace": str(project)}


def accept_result(job: Job) -> tuple[dict[str, dict], dict[str, str]]:
    """(results, failed) of a finished job, checked as every other input is: the job's own method,
    benchmark and languages only (a language key becomes a file name), each result a summary and rows."""
    from cc_core.data.benchmarks import check_lang, get_spec
    from cc_core.io import InputError

    data = job.result
    where = f"eval job {job.key} (flow run {job.run_name})"
    if not isinstance(data, dict):
        raise InputError(f"{where}: its result is {type(data).__name__}, not an object")
    if data.get("method") != job.method or data.get("benchmark") != get_spec(job.benchmark).name:
        raise InputError(f"{where}: its result is for {data.get('method')!r}/{data.get('benchmark')!r}")
    results, failed = data.get("results"), data.get("failed")
    if not isinstance(results, dict) or not isinstance(failed, dict) or not isinstance(data.get("seconds"), (int, float)):
        raise InputError(f"{where}: its result lacks results/failed/seconds")
    spec = get_spec(job.benchmark)
    for lang in [*results, *failed]:
        if not isinstance(lang, str) or lang not in job.langs:
            raise InputError(f"{where}: its result has language {lang!r}, not one of the job's {job.langs}")
        check_lang(spec, lang)
    for lang, result in results.items():
        if not isinstance(result, dict) or not isinstance(result.get("summary"), dict) \
                or not isinstance(result.get("rows"), list):
            raise InputError(f"{where}: its result for {lang} is not a summary with rows")
    return results, {lang: str(message) for lang, message in failed.items()}


# ----------------------------------------------------------------------------- the parent's side


@dataclass
class Job:
    """One job of a pipeline run and what became of its flow runs."""

    method: str
    benchmark: str
    langs: list[str]
    attempts: int = 0
    run_id: UUID | None = None
    run_name: str | None = None
    status: Literal["waiting", "done", "failed"] = "waiting"
    errors: list[str] = field(default_factory=list)
    result: dict[str, Any] | None = None
    runs: list[dict[str, Any]] = field(default_factory=list)  # every flow run submitted for it

    @property
    def key(self) -> str:
        return f"{self.method}/{self.benchmark}/{'+'.join(self.langs)}"


def plan_jobs(plan: list[tuple[str, str, str]], langs_per_job: int = 0) -> list[Job]:
    """Group (method, benchmark, language) triples into jobs of ``langs_per_job`` languages
    (0: one job per method × benchmark)."""
    grouped: dict[tuple[str, str], list[str]] = {}
    for method, bench, lang in plan:
        grouped.setdefault((method, bench), []).append(lang)
    jobs = []
    for (method, bench), langs in grouped.items():
        size = langs_per_job or len(langs)
        jobs += [Job(method, bench, langs[i:i + size]) for i in range(0, len(langs), size)]
    return jobs


def _heartbeats(client, run_ids: list[UUID], since: datetime) -> dict[UUID, datetime]:
    """The latest ``prefect.flow-run.heartbeat`` event of each run since ``since``."""
    from prefect.events.filters import EventFilter, EventNameFilter, EventOccurredFilter, EventResourceFilter

    if not run_ids:
        return {}
    latest: dict[UUID, datetime] = {}
    page = client.read_events(filter=EventFilter(
        occurred=EventOccurredFilter(since=since),
        event=EventNameFilter(name=["prefect.flow-run.heartbeat"]),
        resource=EventResourceFilter(id=[f"prefect.flow-run.{run_id}" for run_id in run_ids])), limit=50)
    while True:
        for event in page.events:
            run_id = UUID(event.resource.id.rsplit(".", 1)[-1])
            if run_id not in latest or event.occurred > latest[run_id]:
                latest[run_id] = event.occurred
        if not page.next_page:
            return latest
        page = client.read_events_page(page.next_page)


def _worker(run) -> str | None:
    return (run.labels or {}).get("prefect.worker.name")


def run_jobs(jobs: list[Job], deployment: str, parameters: Callable[[Job], dict[str, Any]], retries: int = 2,
             heartbeat_timeout_s: float = 120, poll_s: float = 3.0, logger=None) -> list[Job]:
    """Submit every job as a flow run of ``deployment`` and wait for all of them.

    A run that fails or crashes is submitted again (a fresh flow run, which any worker may take)
    up to ``retries`` times; a Running/Pending run without a heartbeat for ``heartbeat_timeout_s``
    (its worker's node is gone) is marked Crashed first. A cancelled run is not retried. Each
    job ends ``done`` (with its result) or ``failed`` (with the error of every attempt)."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId
    from prefect.context import FlowRunContext
    from prefect.deployments import run_deployment
    from prefect.states import Crashed

    log = logger or get_run_logger()
    context = FlowRunContext.get()
    parent = str(context.flow_run.id) if context and context.flow_run else None

    def submit(job: Job) -> None:
        job.attempts += 1
        name = f"{job.method}-{job.benchmark}-{'-'.join(job.langs)}-try{job.attempts}"
        run = run_deployment(deployment, parameters=parameters(job), timeout=0, flow_run_name=name,
                             tags=["cc-eval", f"method:{job.method}", f"benchmark:{job.benchmark}"],
                             idempotency_key=f"{parent}/{job.key}/{job.attempts}" if parent else None)
        job.run_id, job.run_name, job.status = run.id, run.name, "waiting"
        job.runs.append({"id": str(run.id), "name": run.name, "state": "SCHEDULED", "worker": None})
        log.info("eval job %s: submitted flow run %s (attempt %d of %d)", job.key, run.name, job.attempts,
                 retries + 1)

    def attempt_failed(job: Job, message: str, retry: bool = True) -> None:
        job.errors.append(f"attempt {job.attempts} ({job.run_name}): {message}")
        if retry and job.attempts <= retries:
            log.warning("eval job %s: %s; submitting it again", job.key, message)
            submit(job)
        else:
            job.status = "failed"
            log.error("eval job %s failed after %d attempt(s): %s", job.key, job.attempts, message)

    for job in jobs:
        submit(job)
    last_progress = time.monotonic()
    api_errors = 0
    with get_client(sync_client=True) as client:
        while True:
            active = [job for job in jobs if job.status == "waiting"]
            if not active:
                break
            try:
                runs = {run.id: run for run in client.read_flow_runs(
                    flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[job.run_id for job in active])),
                    limit=len(active))}
                api_errors = 0
            except Exception as err:  # noqa: BLE001 - a busy or restarting server: ask again, for a while
                api_errors += 1
                if api_errors > MAX_API_ERRORS:
                    raise
                log.warning("could not read the jobs' states (%s: %s); asking again", type(err).__name__, err)
                time.sleep(max(poll_s, 5.0))
                continue
            now = datetime.now(timezone.utc)
            live = [job.run_id for job in active
                    if job.run_id in runs and runs[job.run_id].state and runs[job.run_id].state.type.value
                    in ("RUNNING", "PENDING")]
            try:
                beats = _heartbeats(client, live, now - timedelta(seconds=heartbeat_timeout_s)) if live else {}
            except Exception as err:  # noqa: BLE001 - without heartbeats, mark nothing as lost this round
                log.warning("could not read the jobs' heartbeats (%s: %s); checking again in %s s",
                            type(err).__name__, err, poll_s)
                beats = None
            for job in active:
                run = runs.get(job.run_id)
                if run is None or run.state is None:
                    continue
                state = run.state
                job.runs[-1].update(state=state.type.value, worker=_worker(run))
                if state.is_completed():
                    try:
                        job.result = state.result()
                    except Exception as err:  # noqa: BLE001 - reported with the job
                        attempt_failed(job, f"its result could not be read ({type(err).__name__}: {err}); is a "
                                            "result storage shared by all nodes set (prefect result-storage set)?")
                        continue
                    job.status = "done"
                    log.info("eval job %s: done by worker %s in %s s", job.key, _worker(run),
                             job.result.get("seconds"))
                elif state.is_cancelled():
                    attempt_failed(job, f"cancelled: {state.message or state.name}", retry=False)
                elif state.is_final():  # Failed, Crashed
                    attempt_failed(job, f"{state.name}: {state.message or 'no message'}"
                                        f" (worker {_worker(run) or 'unknown'})")
                elif state.type.value in ("RUNNING", "PENDING") and beats is not None:
                    alive = max([t for t in (state.timestamp, beats.get(job.run_id)) if t is not None])
                    silent = (now - alive).total_seconds()
                    if silent > heartbeat_timeout_s:
                        message = (f"no heartbeat for {silent:.0f} s from worker {_worker(run) or 'unknown'} "
                                   "(its node is gone?); marked Crashed by the pipeline run")
                        client.set_flow_run_state(job.run_id, Crashed(message=message), force=True)
                        log.warning("eval job %s: flow run %s %s", job.key, job.run_name, message)
            if time.monotonic() - last_progress >= 60:
                last_progress = time.monotonic()
                counts = {s: sum(j.status == s for j in jobs) for s in ("done", "failed", "waiting")}
                log.info("eval jobs: %(done)d done, %(failed)d failed, %(waiting)d submitted and not finished",
                         counts)
            if any(job.status == "waiting" for job in jobs):
                time.sleep(poll_s)
    return jobs
