"""The evaluation fan-out of a pipeline run: the one stage that does not run as its command.

The changed eval stages of dvc.yaml fan out per (method, benchmark, language): in-process (one task
per language on a free GPU of this node, :class:`DevicePool`) or as flow runs of the evaluation
deployment on any node (flows/eval_jobs.py). Each stage's outputs are then written exactly as its
command would write them (``cc_core.evaluate.write_results``, with the paths its command spells).

    results = evaluate_stages(ctx, [(EvalStage.parse(stage, params), params)], "inprocess", ...)
"""

from __future__ import annotations

import contextlib
import os
import queue
import shutil
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field, is_dataclass
from pathlib import Path
from typing import Any

from prefect import get_run_logger, task
from prefect.futures import wait

from cc_core import cli
from cc_core.config import Params
from flows import dvc_sync
from flows.stage_graph import PipelineStage, RunContext, stage_inputs, user_error_not_retried

# Concurrent evaluation tasks on this worker (in-process backend): one per GPU on a GPU node.
EVAL_WORKERS = int(os.environ.get("CC_TUNING_EVAL_WORKERS", "2"))


def _result(value: Any) -> Any:
    return asdict(value) if is_dataclass(value) else value


class DevicePool:
    """One device per running eval task (the in-process backend): a task takes a free GPU when it
    starts and gives it back when it ends (so no two tasks share a GPU while another idles), and
    each device keeps the model it last loaded, so the tasks of one method load it once per GPU,
    not once per language. Without CUDA there is one "cpu" slot: tasks take turns (hooks on a
    shared model must not overlap). On a cluster, the deployment backend replaces it: Prefect
    bounds the jobs and each job takes a GPU of its node (flows/eval_jobs.py)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._free: queue.Queue[str] | None = None
        self._loaded: dict[str, tuple[tuple, Any]] = {}  # device → (key, generator)

    @contextlib.contextmanager
    def device(self, num_gpus: int) -> Iterator[str]:
        import torch

        with self._lock:
            if self._free is None:
                self._free = queue.Queue()
                count = min(num_gpus, torch.cuda.device_count()) if torch.cuda.is_available() else 0
                for name in [f"cuda:{i}" for i in range(count)] or ["cpu"]:
                    self._free.put(name)
        name = self._free.get()
        try:
            yield name
        finally:
            self._free.put(name)

    def generator(self, device: str, key: tuple, load: Callable[[], Any]) -> Any:
        """The generator for ``key`` on ``device`` (the device is held by the caller)."""
        held = self._loaded.get(device)
        if held is None or held[0] != key:
            self._loaded.pop(device, None)  # free the previous model before loading the next
            self._loaded[device] = (key, load())
        return self._loaded[device][1]


DEVICES = DevicePool()  # per process: a worker runs each flow run in a process of its own


@dataclass(frozen=True)
class EvalStage:
    """An eval stage of dvc.yaml as its command spells it (parsed by cctune's own parser)."""

    name: str
    method: str
    benchmark: str
    model: str
    transform: str
    out: str
    metrics_dir: str
    langs: tuple[str, ...] = field(default=())

    @classmethod
    def parse(cls, stage: PipelineStage, params: Params) -> tuple[EvalStage, Params]:
        """The stage as its command spells it, and the params that command evaluates with."""
        from cc_core.data.benchmarks import get_spec
        from cc_core.evaluate import METHOD_DIRS, resolve_langs

        args = cli.parse(list(stage.argv))
        params = cli.eval_params(args, params)
        spec = get_spec(args.benchmark)
        langs = resolve_langs(spec, params.eval.data_dir, args.langs, params.eval.langs)
        return cls(stage.name, args.method, spec.name, args.model or METHOD_DIRS[args.method], args.transform,
                   args.out, args.metrics_dir, tuple(langs)), params


@task(task_run_name="eval-{job.method}-{job.benchmark}-{lang}", retries=2, retry_delay_seconds=5,
      tags=["cc-eval"], retry_condition_fn=user_error_not_retried)
def eval_language_task(ctx: RunContext, job: EvalStage, params: Params, lang: str) -> dict:
    from cc_core.evaluate import evaluate_languages, load_generator

    started = time.perf_counter()
    with DEVICES.device(ctx.num_gpus) as device:
        key = (job.method, job.model, job.transform, params.section_hash("eval"), params.section_hash("model"))
        generator = DEVICES.generator(
            device, key, lambda: load_generator(params, job.method, job.model, job.transform, device))
        result = evaluate_languages(params, job.method, job.benchmark, [lang], generator)[lang]
    return {"lang": lang, "summary": result.summary, "rows": result.rows, "seconds": time.perf_counter() - started,
            "device": device, "mode": generator.mode}


@task(task_run_name="eval-write-{job.method}-{job.benchmark}", retries=1)
def eval_write_task(ctx: RunContext, job: EvalStage, params: Params, done: list[dict],
                    failed: dict[str, str]) -> dict:
    from cc_core.evaluate import LangResult, write_results

    results = {d["lang"]: LangResult(d["lang"], d["summary"], d["rows"]) for d in done}
    mode = done[0].get("mode") or (params.eval.cc_mode if job.method == "cc" else "none")
    seconds = sum(d["seconds"] for d in done)
    return _result(write_results(params, job.method, job.benchmark, results, mode, seconds, job.out, job.metrics_dir,
                                 job.model, failed=failed, requested=list(job.langs)))


@task(task_run_name="eval-clear-{job.method}-{job.benchmark}")
def eval_clear_task(ctx: RunContext, job: EvalStage, failed: dict[str, str]) -> list[str]:
    """Every language of a benchmark failed: remove its previous outputs, so nothing stale looks current."""
    removed = []
    for path in (Path(job.metrics_dir) / job.method / f"{job.benchmark}.json", Path(job.out) / job.method / job.benchmark):
        if path.is_dir():
            aside = path.with_name(f".{path.name}.removed-{os.getpid()}")
            os.replace(path, aside)  # gone at once; deleted after
            shutil.rmtree(aside, ignore_errors=True)
            removed.append(str(path))
        elif path.exists():
            path.unlink()
            removed.append(str(path))
    get_run_logger().error("%s %s: every language failed (%s); removed the previous outputs: %s", job.method,
                           job.benchmark, "; ".join(f"{k}: {v}" for k, v in failed.items()), ", ".join(removed) or "none")
    return removed


Outcomes = dict[str, dict[str, Any]]  # eval stage name → {"done": [...], "failed": {lang: message}}


def _evaluate_in_process(ctx: RunContext, jobs: list[tuple[EvalStage, Params]]) -> Outcomes:
    plan = [(job, params, lang) for job, params in jobs for lang in job.langs]
    futures = [eval_language_task.submit(ctx, job, params, lang) for job, params, lang in plan]
    wait(futures)
    outcomes: Outcomes = {job.name: {"done": [], "failed": {}} for job, _ in jobs}
    for (job, _, lang), future in zip(plan, futures):
        state = future.state
        if state.is_completed():
            outcomes[job.name]["done"].append(future.result())
        else:
            outcomes[job.name]["failed"][lang] = str(state.message or state.name)
    return outcomes


def _evaluate_on_deployment(ctx: RunContext, jobs: list[tuple[EvalStage, Params]], deployment: str,
                            langs_per_job: int, retries: int, heartbeat_timeout_s: int) -> tuple[Outcomes, list]:
    from flows.eval_jobs import Job, accept_result, git_revision, plan_jobs, run_jobs

    logger = get_run_logger()
    by_key = {(job.method, job.benchmark): (job, params) for job, params in jobs}
    inputs = {}
    for job, _ in jobs:  # what each job pulls, and the dvc.lock entries naming those versions
        paths = stage_inputs(ctx.workspace, [job.name])
        producers = list(dict.fromkeys(paths.values()))
        dvc_sync.push(ctx.workspace, producers, ctx.dvc_remote, what=f"inputs of {job.name}")
        inputs[job.name] = {"inputs": list(paths), "lock": dvc_sync.lock_entries(ctx.workspace, producers)}
    code_version = git_revision(ctx.workspace)
    dirty = subprocess.run(["git", "status", "--porcelain", "--", "cc_core", "flows"], cwd=ctx.workspace,
                           capture_output=True, text=True).stdout.strip() if code_version else ""
    if dirty:
        logger.warning("uncommitted changes in cc_core/ or flows/ are not seen by the workers, which run commit "
                       "%s:\n%s", code_version[:12], dirty)

    def parameters(job: Job) -> dict[str, Any]:
        stage, params = by_key[(job.method, job.benchmark)]
        return {"method": job.method, "benchmark": job.benchmark, "langs": job.langs,
                "params": params.model_dump(mode="json"), "model_dir": stage.model, "transform": stage.transform,
                "dvc_remote": ctx.dvc_remote, "dvc_inputs": inputs[stage.name]["inputs"],
                "dvc_lock": inputs[stage.name]["lock"], "code_version": code_version}

    planned = plan_jobs([(job.method, job.benchmark, lang) for job, _ in jobs for lang in job.langs], langs_per_job)
    finished = run_jobs(planned, deployment, parameters, retries=retries, heartbeat_timeout_s=heartbeat_timeout_s,
                        logger=logger)
    outcomes: Outcomes = {job.name: {"done": [], "failed": {}} for job, _ in jobs}
    for job in finished:
        outcome = outcomes[by_key[(job.method, job.benchmark)][0].name]
        if job.status == "done":
            results, failed = accept_result(job)  # only this job's languages, as plain data
            share = job.result["seconds"] / max(1, len(job.langs))
            outcome["done"] += [{"lang": lang, "summary": r["summary"], "rows": r["rows"], "seconds": share,
                                 "mode": r.get("mode")} for lang, r in results.items()]
            outcome["failed"].update(failed)
        else:
            for lang in job.langs:
                outcome["failed"][lang] = " | ".join(job.errors) or "failed"
    summary = [{"job": job.key, "status": job.status, "attempts": job.attempts, "runs": job.runs,
                "worker": (job.result or {}).get("worker"), "errors": job.errors} for job in finished]
    return outcomes, summary


def evaluate_stages(ctx: RunContext, jobs: list[tuple[EvalStage, Params]], backend: str, deployment: str,
                    langs_per_job: int, retries: int, heartbeat_timeout_s: int) -> dict:
    """Evaluate every language of every eval stage in ``jobs`` on the chosen backend and write each
    stage's outputs. Returns what was written, what failed, and which eval stages are complete
    (only those may be recorded in dvc.lock)."""
    logger = get_run_logger()
    if backend == "deployment":
        outcomes, summary = _evaluate_on_deployment(ctx, jobs, deployment, langs_per_job, retries, heartbeat_timeout_s)
    else:
        outcomes, summary = _evaluate_in_process(ctx, jobs), []
    written: dict[str, Any] = {}
    failed: dict[str, str] = {}
    complete, incomplete, removed = [], [], []
    for job, params in jobs:
        outcome = outcomes[job.name]
        for lang, message in outcome["failed"].items():
            failed[f"{job.method}/{job.benchmark}/{lang}"] = message
            logger.error("eval %s %s %s failed: %s", job.method, job.benchmark, lang, message)
        if outcome["done"]:
            written[job.name] = eval_write_task(ctx, job, params, outcome["done"], outcome["failed"])
        else:
            eval_clear_task(ctx, job, outcome["failed"])
            removed.append(f"{job.method}/{job.benchmark}")
        (incomplete if outcome["failed"] else complete).append(job.name)
    return {"stages": written, "failed": failed, "removed": removed, "complete": complete, "incomplete": incomplete,
            "jobs": summary}


