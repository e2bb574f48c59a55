"""Prefect 3 flow ``cc-tuning-pipeline``: the same cc_core stages as ``dvc repro``, scheduled.

    python -m flows.pipeline                                    # local run, Prefect's ephemeral API
    python -m flows.pipeline --params params.tiny.yaml --set eval.limit=1
    python -m flows.pipeline --stages eval report --eval-backend deployment --dvc-remote cluster
    prefect deploy --all && prefect deployment run 'cc-tuning-pipeline/gpu-8x'   # see prefect.yaml

Stages run as tasks in dependency order (``stages`` picks a subset). Training runs in-process,
or through the DeepSpeed launcher / torchrun for multi-GPU (``launcher``, ``num_gpus``,
``hostfile``). Evaluation has two backends:

- ``inprocess`` (a laptop, one node): one task per (method, benchmark, language) on this
  process's thread pool, each on a GPU of its own (:class:`DevicePool`), with retries;
- ``deployment`` (a cluster): one flow run per (method, benchmark, language group) of the
  evaluation deployment (flows/eval_jobs.py), on any worker of its work pool; Prefect bounds
  how many run at once, the flow retries failed ones and re-submits those whose node died.

Either way the per-benchmark outputs are written here (``cc_core.evaluate.write_results``).
A language that still fails is recorded in its benchmark's metrics (``failed_languages``);
a benchmark whose every language failed has its previous outputs removed; the run ends Failed,
naming each failed (method, benchmark, language).

After each stage ``dvc commit`` records what it produced in ``dvc.lock`` (the entry
``dvc repro`` writes), and with ``dvc_remote`` the stage first pulls its inputs from that DVC
remote and then pushes its outputs to it, so nodes share no working tree (flows/dvc_sync.py).
A stage that did not produce its outputs (an incomplete evaluation) is not recorded.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import queue
import shlex
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, is_dataclass
from pathlib import Path
from typing import Annotated, Any, Literal

# Before prefect is imported: a busy 2-core machine needs more than the 20 s default to bring
# up the ephemeral API; and no telemetry.
os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "120")
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("DO_NOT_TRACK", "1")

from prefect import flow, get_run_logger, task, unmapped
from prefect.futures import wait
from prefect.task_runners import ThreadPoolTaskRunner
from pydantic import BaseModel, Field, field_validator

from cc_core.config import Params, load_params

Method = Literal["base", "sft", "cc"]
Stage = Literal["base_model", "prepare", "train", "collect", "fit", "eval", "report", "register"]
METHODS: tuple[str, ...] = ("base", "sft", "cc")
STAGES: tuple[str, ...] = ("base_model", "prepare", "train", "collect", "fit", "eval", "report", "register")


class PipelineParameters(BaseModel):
    """A run's settings as the tasks receive them (built from the flow's parameters)."""

    project_dir: str = Field(".", description="checkout of cc-tuning on the worker (holds params.yaml, dvc.yaml)")
    params_file: str = Field("params.yaml", description="params file, relative to project_dir")
    overrides: list[str] = Field(default_factory=list, description="section.key=value overrides")
    methods: list[Method] = Field(default_factory=lambda: list(METHODS))
    stages: list[Stage] = Field(default_factory=lambda: list(STAGES))
    launcher: Literal["inprocess", "deepspeed", "torchrun"] = Field(
        "inprocess", description="how training runs: in the task's process, or a multi-GPU launcher")
    num_gpus: int = Field(1, ge=1, description="GPUs per node for the training launcher and eval placement")
    num_nodes: int = Field(1, ge=1)
    hostfile: str | None = Field(None, description="DeepSpeed hostfile for multi-node training")
    eval_backend: Literal["inprocess", "deployment"] = "inprocess"
    eval_deployment: str = "cc-tuning-eval-job/gpu"
    eval_langs_per_job: int = Field(0, ge=0)
    job_retries: int = Field(2, ge=0)
    job_heartbeat_timeout_s: int = Field(120, ge=45)
    dvc_remote: str | None = None
    dvc_commit: bool = Field(True, description="record outputs in dvc.lock after each stage")

    @field_validator("overrides")
    @classmethod
    def _valid_overrides(cls, value: list[str]) -> list[str]:
        from cc_core.config import parse_params

        parse_params({}, overrides=value)  # raises with the key named
        return value

    @field_validator("dvc_remote")
    @classmethod
    def _blank_is_none(cls, value: str | None) -> str | None:
        return value.strip() or None if value is not None else None


class EvaluationIncomplete(RuntimeError):
    """Some (method, benchmark, language) evaluations failed after their retries."""


def _result(value: Any) -> Any:
    return asdict(value) if is_dataclass(value) else value


def _params(p: PipelineParameters) -> Params:
    return load_params(Path(p.project_dir) / p.params_file, p.overrides)


def _in_project(p: PipelineParameters):
    os.chdir(p.project_dir)  # stage functions use the project's relative paths (models/, data/, ...)


def recordable(p: PipelineParameters) -> bool:
    """dvc.lock records params.yaml: outputs made with other values must not be committed."""
    return p.dvc_commit and not p.overrides and Path(p.params_file).name == "params.yaml"


def eval_dvc_stage(method: str, benchmark: str) -> str:
    """The dvc.yaml stage that evaluates ``method`` on ``benchmark`` (as named in eval.benchmarks)."""
    return f"eval_cc@{benchmark}" if method == "cc" else f"eval@{method}-{benchmark}"


# ----------------------------------------------------------------------------- DVC around each stage


@task(name="dvc-pull", retries=1, retry_delay_seconds=10)
def dvc_pull_task(p: PipelineParameters, stages: list[str], produced_here: list[str]) -> list[str]:
    """Pull ``stages``' inputs from the DVC remote, except those this flow run produced itself."""
    from flows import dvc_sync

    inputs = dvc_sync.stage_inputs(p.project_dir, stages, strict=False)
    recorded = dvc_sync.recorded_stages(p.project_dir)
    targets = [path for path, producer in inputs.items() if producer not in produced_here and producer in recorded]
    unknown = sorted({producer for producer in inputs.values() if producer not in recorded | set(produced_here)})
    if unknown:  # e.g. the report of a run without sft: eval@sft-* were never run, so there is nothing to pull
        get_run_logger().info("not pulling the outputs of %s: not recorded in dvc.lock", ", ".join(unknown))
    return dvc_sync.pull(p.project_dir, targets, p.dvc_remote, what=f"stage {', '.join(stages)}")


@task(name="dvc-commit", retries=2, retry_delay_seconds=10)
def dvc_commit_task(p: PipelineParameters, stages: list[str]) -> str:
    """Record ``stages`` in dvc.lock (the state `dvc repro` would leave) and push their outputs."""
    from flows import dvc_sync

    dvc_sync.commit(p.project_dir, stages)
    if p.dvc_remote:
        dvc_sync.push(p.project_dir, stages, p.dvc_remote, what=f"stage {', '.join(stages)}")
        return f"dvc.lock updated and pushed to {p.dvc_remote} for: " + ", ".join(stages)
    return "dvc.lock updated for: " + ", ".join(stages)


# ----------------------------------------------------------------------------- stages


@task(name="base-model", retries=1)
def base_model_task(p: PipelineParameters) -> dict:
    from cc_core.modeling.base import build_base_model

    _in_project(p)
    return _result(build_base_model(_params(p).model, "models/base"))


@task(name="prepare", retries=1)
def prepare_task(p: PipelineParameters) -> dict:
    from cc_core.data.prepare import prepare

    _in_project(p)
    return _result(prepare(_params(p).data, "data/prepared"))


def launcher_command(p: PipelineParameters, method: str) -> list[str]:
    """The multi-GPU training command (the same CLI, under the DeepSpeed launcher or torchrun)."""
    cli = ["train", "--method", method, "--resume", "--params", p.params_file]
    for item in p.overrides:
        cli += ["--set", item]
    if p.launcher == "deepspeed":
        cmd = ["deepspeed", "--num_gpus", str(p.num_gpus), "--num_nodes", str(p.num_nodes)]
        if p.hostfile:
            cmd += ["--hostfile", p.hostfile]
        return cmd + ["--module", "cc_core.cli"] + cli
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(p.num_gpus),
           "--nnodes", str(p.num_nodes)]
    return cmd + ["-m", "cc_core.cli"] + cli


@task(name="train", retries=1, retry_delay_seconds=10)
def train_task(p: PipelineParameters, method: str) -> dict:
    import json

    _in_project(p)
    if p.launcher == "inprocess":
        from cc_core.train import train

        return _result(train(_params(p), method, resume=True))
    cmd = launcher_command(p, method)
    get_run_logger().info("launching: %s", shlex.join(cmd))
    subprocess.run(cmd, check=True)
    return json.loads(Path(f"metrics/train_{method}.json").read_text())


@task(name="collect", retries=1)
def collect_task(p: PipelineParameters) -> dict:
    from cc_core.activations import collect

    _in_project(p)
    params = _params(p)
    return _result(collect(params.collect, "models/cc", "data/prepared/pairs.jsonl", "activations",
                           params.collect.max_prompt_len))


@task(name="fit", retries=1)
def fit_task(p: PipelineParameters) -> dict:
    from cc_core.transform import fit

    _in_project(p)
    params = _params(p)
    return _result(fit(params.fit, "activations", "transform", "metrics", "models/cc", params.tracking))


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


def _retry_unless_bad_input(task, task_run, state) -> bool:
    """Bad benchmark data fails the same way every time: do not retry it."""
    from cc_core.io import InputError

    return not isinstance(state.data, InputError)


@task(name="eval-language", retries=2, retry_delay_seconds=5, tags=["cc-eval"],
      retry_condition_fn=_retry_unless_bad_input)
def eval_language_task(p: PipelineParameters, method: str, benchmark: str, lang: str) -> dict:
    from cc_core.evaluate import _generator, evaluate_language

    _in_project(p)
    params = _params(p)
    started = time.perf_counter()
    with DEVICES.device(p.num_gpus) as device:
        key = (method, params.section_hash("eval"), params.section_hash("model"))
        generator = DEVICES.generator(device, key, lambda: _generator(params, method, None, "transform", device))
        result = evaluate_language(params, method, benchmark, lang, device=device, generator=generator)
    return {"lang": lang, "summary": result.summary, "rows": result.rows, "seconds": time.perf_counter() - started,
            "device": device}


@task(name="eval-write", retries=1)
def eval_write_task(p: PipelineParameters, method: str, benchmark: str, done: list[dict],
                    failed: dict[str, str], mode: str) -> dict:
    from cc_core.evaluate import LangResult, write_results

    _in_project(p)
    results = {d["lang"]: LangResult(d["lang"], d["summary"], d["rows"]) for d in done}
    seconds = sum(d["seconds"] for d in done)
    return _result(write_results(_params(p), method, benchmark, results, mode, seconds, failed=failed))


@task(name="eval-clear")
def eval_clear_task(p: PipelineParameters, method: str, benchmark: str, failed: dict[str, str]) -> list[str]:
    """Every language of a benchmark failed: remove its previous outputs, so nothing stale looks current."""
    from cc_core.data.benchmarks import get_spec

    _in_project(p)
    name = get_spec(benchmark).name
    removed = []
    for path in (Path("metrics/eval") / method / f"{name}.json", Path("eval") / method / name):
        if path.is_dir():
            aside = path.with_name(f".{path.name}.removed-{os.getpid()}")
            os.replace(path, aside)  # gone at once; deleted after
            shutil.rmtree(aside, ignore_errors=True)
            removed.append(str(path))
        elif path.exists():
            path.unlink()
            removed.append(str(path))
    get_run_logger().error("%s %s: every language failed (%s); removed the previous outputs: %s", method, name,
                           "; ".join(f"{k}: {v}" for k, v in failed.items()), ", ".join(removed) or "none")
    return removed


@task(name="report")
def report_task(p: PipelineParameters) -> dict:
    from cc_core.report import report

    _in_project(p)
    return _result(report(_params(p)))


@task(name="register")
def register_task(p: PipelineParameters) -> dict:
    from cc_core.registry import register

    _in_project(p)
    return _result(register(_params(p)))


def eval_plan(params: Params, methods: list[str]) -> list[tuple[str, str, str]]:
    """(method, benchmark, language) triples that the evaluation fans out over."""
    from cc_core.data.benchmarks import get_spec
    from cc_core.evaluate import resolve_langs

    return [(method, bench, lang) for method in methods for bench in params.eval.benchmarks
            for lang in resolve_langs(get_spec(bench), params.eval.data_dir, None, params.eval.langs)]


# Concurrent evaluation tasks on this worker (in-process backend): one per GPU on a GPU node.
EVAL_WORKERS = int(os.environ.get("CC_TUNING_EVAL_WORKERS", "2"))

Outcomes = dict[tuple[str, str], dict[str, Any]]  # (method, benchmark) → {"done": [...], "failed": {lang: msg}}


def _evaluate_in_process(pipeline: PipelineParameters, plan: list[tuple[str, str, str]]) -> Outcomes:
    methods_, benches, langs = (list(column) for column in zip(*plan)) if plan else ([], [], [])
    futures = eval_language_task.map(unmapped(pipeline), methods_, benches, langs)
    wait(futures)
    outcomes: Outcomes = {}
    for (method, bench, lang), future in zip(plan, futures):
        outcome = outcomes.setdefault((method, bench), {"done": [], "failed": {}})
        state = future.state
        if state.is_completed():
            outcome["done"].append(future.result())
        else:
            outcome["failed"][lang] = str(state.message or state.name)
    return outcomes


@task(name="eval-inputs")
def eval_inputs_task(p: PipelineParameters, methods: list[str], benchmark: str) -> dict[str, dict]:
    """Per method: the DVC-tracked paths an evaluation job pulls, the dvc.lock entries naming their
    versions, and a push of them to the remote (a no-op for what is there already)."""
    from flows import dvc_sync

    out = {}
    for method in methods:
        stage = eval_dvc_stage(method, benchmark)
        inputs = dvc_sync.stage_inputs(p.project_dir, [stage])
        producers = list(dict.fromkeys(inputs.values()))
        entries = dvc_sync.lock_entries(p.project_dir, producers)
        dvc_sync.push(p.project_dir, producers, p.dvc_remote, what=f"inputs of {stage}")
        out[method] = {"inputs": list(inputs), "lock": entries}
    return out


def _evaluate_on_deployment(pipeline: PipelineParameters, params: Params,
                            plan: list[tuple[str, str, str]]) -> tuple[Outcomes, list]:
    from flows.eval_jobs import git_revision, plan_jobs, run_jobs

    logger = get_run_logger()
    methods = list(dict.fromkeys(m for m, _, _ in plan))
    inputs = eval_inputs_task(pipeline, methods, params.eval.benchmarks[0]) if plan else {}
    code_version = git_revision(pipeline.project_dir)
    dirty = subprocess.run(["git", "status", "--porcelain", "--", "cc_core", "flows"], cwd=pipeline.project_dir,
                           capture_output=True, text=True).stdout.strip() if code_version else ""
    if dirty:
        logger.warning("uncommitted changes in cc_core/ or flows/ are not seen by the workers, which run commit "
                       "%s:\n%s", code_version[:12], dirty)
    run_params = params.model_dump(mode="json")

    def parameters(job) -> dict[str, Any]:
        return {"method": job.method, "benchmark": job.benchmark, "langs": job.langs, "params": run_params,
                "dvc_remote": pipeline.dvc_remote, "dvc_inputs": inputs[job.method]["inputs"],
                "dvc_lock": inputs[job.method]["lock"], "code_version": code_version}

    jobs = run_jobs(plan_jobs(plan, pipeline.eval_langs_per_job), pipeline.eval_deployment, parameters,
                    retries=pipeline.job_retries, heartbeat_timeout_s=pipeline.job_heartbeat_timeout_s,
                    logger=logger)
    outcomes: Outcomes = {}
    for job in jobs:
        outcome = outcomes.setdefault((job.method, job.benchmark), {"done": [], "failed": {}})
        if job.status == "done":
            share = job.result["seconds"] / max(1, len(job.langs))
            outcome["done"] += [{"lang": lang, "summary": r["summary"], "rows": r["rows"], "seconds": share}
                                for lang, r in job.result["results"].items()]
            outcome["failed"].update(job.result["failed"])
        else:
            for lang in job.langs:
                outcome["failed"][lang] = " | ".join(job.errors) or "failed"
    summary = [{"job": job.key, "status": job.status, "attempts": job.attempts, "runs": job.runs,
                "worker": (job.result or {}).get("worker"), "errors": job.errors} for job in jobs]
    return outcomes, summary


@flow(name="cc-tuning-eval", log_prints=True, task_runner=ThreadPoolTaskRunner(max_workers=EVAL_WORKERS))
def evaluate_all(pipeline: PipelineParameters, plan: list[tuple[str, str, str]]) -> dict:
    """Evaluate every (method, benchmark, language) of ``plan`` on the chosen backend and write each
    benchmark's outputs. A language that still fails after its retries is recorded as failed and
    the rest of its benchmark is written anyway; a benchmark whose every language failed has its
    previous outputs removed. Returns what was written, what failed, and which dvc.yaml eval
    stages are complete (only those may be recorded in dvc.lock)."""
    logger = get_run_logger()
    params = _params(pipeline)
    if pipeline.eval_backend == "deployment":
        outcomes, jobs = _evaluate_on_deployment(pipeline, params, plan)
    else:
        outcomes, jobs = _evaluate_in_process(pipeline, plan), []
    written: dict[str, Any] = {}
    failed: dict[str, str] = {}
    complete, incomplete, removed = [], [], []
    for (method, bench), outcome in outcomes.items():
        for lang, message in outcome["failed"].items():
            failed[f"{method}/{bench}/{lang}"] = message
            logger.error("eval %s %s %s failed: %s", method, bench, lang, message)
        if outcome["done"]:
            mode = params.eval.cc_mode if method == "cc" else "none"
            written[f"{method}/{bench}"] = eval_write_task(pipeline, method, bench, outcome["done"],
                                                           outcome["failed"], mode)
        else:
            eval_clear_task(pipeline, method, bench, outcome["failed"])
            removed.append(f"{method}/{bench}")
        (incomplete if outcome["failed"] else complete).append(eval_dvc_stage(method, bench))
    return {"benchmarks": written, "failed": failed, "removed": removed, "complete": complete,
            "incomplete": incomplete, "jobs": jobs}


@flow(name="cc-tuning-pipeline", log_prints=True, task_runner=ThreadPoolTaskRunner(max_workers=EVAL_WORKERS))
def cc_tuning_pipeline(
    params_file: str = "params.yaml",
    overrides: list[str] = [],  # noqa: B006 - a Prefect parameter default (shown on the run form), never mutated
    methods: list[Method] = ["base", "sft", "cc"],  # noqa: B006
    stages: list[Stage] = ["base_model", "prepare", "train", "collect", "fit", "eval", "report",  # noqa: B006
                           "register"],
    launcher: Literal["inprocess", "deepspeed", "torchrun"] = "inprocess",
    num_gpus: Annotated[int, Field(ge=1)] = 1,
    num_nodes: Annotated[int, Field(ge=1)] = 1,
    hostfile: str | None = None,
    eval_backend: Literal["inprocess", "deployment"] = "inprocess",
    eval_deployment: str = "cc-tuning-eval-job/gpu",
    eval_langs_per_job: Annotated[int, Field(ge=0)] = 0,
    job_retries: Annotated[int, Field(ge=0)] = 2,
    job_heartbeat_timeout_s: Annotated[int, Field(ge=45)] = 120,
    dvc_remote: str | None = None,
    dvc_commit: bool = True,
    project_dir: str = ".",
) -> dict:
    """base model → prepare → train (cc, sft) → collect → fit → eval → report → register.

    Args:
        params_file: The params file, relative to the project directory: params.yaml (what dvc.lock
            records), or another profile such as params.tiny.yaml or params.paper.yaml.
        overrides: Changes to the params file for this run, one section.key=value per line, e.g.
            eval.limit=20. A run with overrides (or another params file) is not recorded in dvc.lock.
        methods: Which models to train and evaluate: base (no training), sft (vanilla fine-tuning),
            cc (CC-Tuning with the Transform Matrix).
        stages: Which stages to run, in pipeline order; a stage left out uses the outputs already
            in the workspace (or, with a DVC remote, pulled from it).
        launcher: How training runs: inprocess (in the worker's process), deepspeed or torchrun
            (multi-GPU and multi-node).
        num_gpus: GPUs per node for the training launcher (and for in-process evaluation).
        num_nodes: Nodes for multi-node training (with a DeepSpeed hostfile).
        hostfile: DeepSpeed hostfile for multi-node training (node1 slots=8, one line per node).
        eval_backend: Where evaluation runs: inprocess (on this worker's GPUs) or deployment (one
            flow run per method × benchmark × language group on any worker of the evaluation
            deployment's work pool, across nodes; needs dvc_remote).
        eval_deployment: The evaluation deployment the deployment backend submits jobs to
            (flow/deployment, see prefect.yaml).
        eval_langs_per_job: Languages per evaluation job with the deployment backend (0: one job
            per method × benchmark).
        job_retries: How many times a failed or lost evaluation job is submitted again.
        job_heartbeat_timeout_s: An evaluation job silent this long (no flow-run heartbeat: its node
            died) is marked Crashed and submitted again. Jobs send one every 30 s (prefect.yaml).
        dvc_remote: DVC remote (a name in .dvc/config) that each stage pulls its inputs from and
            pushes its outputs to; empty on a single machine. The deployment backend needs one.
        dvc_commit: Record each stage's outputs in dvc.lock when it finishes (only for params.yaml
            without overrides: dvc.lock records params.yaml).
        project_dir: The cc-tuning checkout on the worker, relative to the deployment's working
            directory ($CC_TUNING_HOME).
    """
    logger = get_run_logger()
    p = PipelineParameters(project_dir=str(Path(project_dir).resolve()), params_file=params_file,
                           overrides=list(overrides), methods=list(dict.fromkeys(methods)),
                           stages=list(dict.fromkeys(stages)), launcher=launcher, num_gpus=num_gpus,
                           num_nodes=num_nodes, hostfile=hostfile, eval_backend=eval_backend,
                           eval_deployment=eval_deployment, eval_langs_per_job=eval_langs_per_job,
                           job_retries=job_retries, job_heartbeat_timeout_s=job_heartbeat_timeout_s,
                           dvc_remote=dvc_remote, dvc_commit=dvc_commit)
    params = _params(p)
    record = recordable(p)
    if p.eval_backend == "deployment" and "eval" in p.stages:
        if not p.dvc_remote:
            raise ValueError("eval_backend=deployment needs dvc_remote: the evaluation jobs run in other "
                             "checkouts and pull the models from that DVC remote")
        if not record:
            raise ValueError(f"eval_backend=deployment shares the models through dvc.lock, which records "
                             f"params.yaml; this run uses {p.params_file} with overrides {p.overrides} "
                             f"(dvc_commit={p.dvc_commit}): put the values in params.yaml instead")
    if p.dvc_commit and not record:
        logger.warning("not running dvc commit: this run used %s with overrides %s, not params.yaml as is%s",
                       p.params_file, p.overrides, "; nothing is pushed to the DVC remote" if p.dvc_remote else "")
    results: dict[str, Any] = {}
    produced: list[str] = []  # dvc.yaml stages this run produced (not pulled: they are here already)

    def run_stage(dvc_stages: list[str], key: str, call: Callable[[], Any], commit: bool = True) -> None:
        if p.dvc_remote:
            dvc_pull_task(p, dvc_stages, list(produced))
        results[key] = call()
        produced.extend(dvc_stages)
        if record and commit:
            results.setdefault("dvc", []).append(dvc_commit_task(p, dvc_stages))

    if "base_model" in p.stages:
        run_stage(["base_model"], "base_model", lambda: base_model_task(p))
    if "prepare" in p.stages:
        run_stage(["prepare"], "prepare", lambda: prepare_task(p))
    trained = [m for m in ("cc", "sft") if m in p.methods]
    if "train" in p.stages:
        for method in trained:  # sequential: each training run uses every GPU
            run_stage([f"train_{method}"], f"train_{method}", lambda m=method: train_task(p, m))
    if "cc" in p.methods and "collect" in p.stages:
        run_stage(["collect"], "collect", lambda: collect_task(p))
    if "cc" in p.methods and "fit" in p.stages:
        run_stage(["fit"], "fit", lambda: fit_task(p))
    failed: dict[str, str] = {}
    incomplete: list[str] = []
    if "eval" in p.stages:
        eval_stages = [eval_dvc_stage(m, b) for m in p.methods for b in params.eval.benchmarks]
        if p.dvc_remote:  # the models, here too: write_results names their MLflow runs
            dvc_pull_task(p, eval_stages, list(produced))
        evaluation = evaluate_all(p, eval_plan(params, p.methods))
        results["eval"] = evaluation
        failed, incomplete = evaluation["failed"], evaluation["incomplete"]
        produced.extend(eval_stages)
        if record and evaluation["complete"]:
            results.setdefault("dvc", []).append(dvc_commit_task(p, evaluation["complete"]))
    if "report" in p.stages:  # also when evaluations failed: the report shows what is there
        run_stage(["report"], "report", lambda: report_task(p), commit=not failed)
    cc_failed = [key for key in failed if key.startswith("cc/")]
    if "register" in p.stages and "cc" in p.methods:
        if cc_failed:
            logger.error("not registering: the cc evaluation is incomplete (%s)", ", ".join(cc_failed))
        else:
            run_stage(["register"], "register", lambda: register_task(p))
    if failed:
        not_recorded = incomplete + (["report"] if "report" in p.stages else []) + \
            (["register"] if cc_failed and "register" in p.stages and "cc" in p.methods else [])
        raise EvaluationIncomplete(
            f"{len(failed)} evaluation(s) failed after their retries: "
            + "; ".join(f"{key}: {message}" for key, message in failed.items())
            + (f". Every language failed, previous outputs removed: {', '.join(evaluation['removed'])}"
               if evaluation["removed"] else "")
            + f". Not recorded in dvc.lock: {', '.join(not_recorded)}. The other results are written.")
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Run the cc-tuning pipeline as a Prefect flow (ephemeral API "
                                                 "unless PREFECT_API_URL names a server).")
    parser.add_argument("--project-dir", default=".")
    parser.add_argument("--params", default="params.yaml", help="params file (default: params.yaml)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.KEY=VALUE")
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS)
    parser.add_argument("--stages", nargs="+", default=list(STAGES), choices=STAGES)
    parser.add_argument("--launcher", default="inprocess", choices=["inprocess", "deepspeed", "torchrun"])
    parser.add_argument("--num-gpus", type=int, default=1)
    parser.add_argument("--num-nodes", type=int, default=1)
    parser.add_argument("--hostfile", default=None)
    parser.add_argument("--eval-backend", default="inprocess", choices=["inprocess", "deployment"])
    parser.add_argument("--eval-deployment", default="cc-tuning-eval-job/gpu")
    parser.add_argument("--eval-langs-per-job", type=int, default=0)
    parser.add_argument("--job-retries", type=int, default=2)
    parser.add_argument("--job-heartbeat-timeout", type=int, default=120, dest="job_heartbeat_timeout_s")
    parser.add_argument("--dvc-remote", default=None, help="DVC remote to pull inputs from and push outputs to")
    parser.add_argument("--no-dvc-commit", action="store_true")
    args = parser.parse_args(argv)
    state = cc_tuning_pipeline(
        params_file=args.params, overrides=args.overrides, methods=args.methods, stages=args.stages,
        launcher=args.launcher, num_gpus=args.num_gpus, num_nodes=args.num_nodes, hostfile=args.hostfile,
        eval_backend=args.eval_backend, eval_deployment=args.eval_deployment,
        eval_langs_per_job=args.eval_langs_per_job, job_retries=args.job_retries,
        job_heartbeat_timeout_s=args.job_heartbeat_timeout_s, dvc_remote=args.dvc_remote,
        dvc_commit=not args.no_dvc_commit, project_dir=os.path.abspath(args.project_dir), return_state=True)
    if not state.is_completed():
        print(f"cc-tuning-pipeline ended {state.name}: {state.message}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
