"""Prefect 3 flow ``cc-tuning-pipeline``: the same cc_core stages as ``dvc repro``, scheduled.

    python -m flows.pipeline                                    # local run, Prefect's ephemeral API
    python -m flows.pipeline --params params.tiny.yaml --set eval.limit=1
    prefect deploy --all && prefect deployment run 'cc-tuning-pipeline/gpu'   # see prefect.yaml

Stages run as tasks in dependency order; evaluation fans out as mapped tasks per
(method, benchmark, language) with retries, and a failed language is reported without
losing the others. Training runs in-process, or through the DeepSpeed launcher / torchrun
for multi-GPU (``launcher``, ``num_gpus``, ``hostfile``). At the end ``dvc commit`` records
the produced outputs in ``dvc.lock``, so a Prefect run versions the same artifacts as
``dvc repro``. Task results are the stages' result objects (paths, metrics).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import queue
import shlex
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, is_dataclass
from pathlib import Path
from typing import Any, Literal

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

METHODS = ("base", "sft", "cc")


class PipelineParameters(BaseModel):
    """What a run of the flow takes (validated by Prefect from the UI or the CLI)."""

    project_dir: str = Field(".", description="checkout of cc-tuning on the worker (holds params.yaml, dvc.yaml)")
    params_file: str = Field("params.yaml", description="params file, relative to project_dir")
    overrides: list[str] = Field(default_factory=list, description="section.key=value overrides")
    methods: list[Literal["base", "sft", "cc"]] = Field(default_factory=lambda: list(METHODS))
    launcher: Literal["inprocess", "deepspeed", "torchrun"] = Field(
        "inprocess", description="how training runs: in the task's process, or a multi-GPU launcher")
    num_gpus: int = Field(1, ge=1, description="GPUs per node for the training launcher and eval placement")
    num_nodes: int = Field(1, ge=1)
    hostfile: str | None = Field(None, description="DeepSpeed hostfile for multi-node training")
    dvc_commit: bool = Field(True, description="record outputs in dvc.lock at the end")

    @field_validator("overrides")
    @classmethod
    def _valid_overrides(cls, value: list[str]) -> list[str]:
        from cc_core.config import parse_params

        parse_params({}, overrides=value)  # raises with the key named
        return value


def _result(value: Any) -> Any:
    return asdict(value) if is_dataclass(value) else value


def _params(p: PipelineParameters) -> Params:
    return load_params(Path(p.project_dir) / p.params_file, p.overrides)


def _in_project(p: PipelineParameters):
    os.chdir(p.project_dir)  # stage functions use the project's relative paths (models/, data/, ...)


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
    """One device per running eval task: a task takes a free GPU when it starts and gives it back
    when it ends (so no two tasks share a GPU while another idles), and each device keeps the
    model it last loaded, so the tasks of one method load it once per GPU, not once per language.
    Without CUDA there is one "cpu" slot: tasks take turns (hooks on a shared model must not overlap)."""

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


@task(name="eval-language", retries=2, retry_delay_seconds=5, tags=["cc-eval"])
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


@task(name="dvc-commit")
def dvc_commit_task(p: PipelineParameters, stages: list[str]) -> str:
    """Record what the flow produced in dvc.lock (the same state `dvc repro` would leave)."""
    _in_project(p)
    out = subprocess.run(["dvc", "commit", "--force", *stages], capture_output=True, text=True)
    if out.returncode:
        raise RuntimeError(f"dvc commit failed: {out.stderr.strip()}")
    return "dvc.lock updated for: " + ", ".join(stages)


def eval_plan(params: Params, methods: list[str]) -> list[tuple[str, str, str]]:
    """(method, benchmark, language) triples that the evaluation fans out over."""
    from cc_core.data.benchmarks import get_spec
    from cc_core.evaluate import resolve_langs

    return [(method, bench, lang) for method in methods for bench in params.eval.benchmarks
            for lang in resolve_langs(get_spec(bench), params.eval.data_dir, None, params.eval.langs)]


# Concurrent evaluation tasks on this worker: one per GPU on a GPU node (each loads its model).
EVAL_WORKERS = int(os.environ.get("CC_TUNING_EVAL_WORKERS", "2"))


@flow(name="cc-tuning-eval", log_prints=True, task_runner=ThreadPoolTaskRunner(max_workers=EVAL_WORKERS))
def evaluate_all(pipeline: PipelineParameters, plan: list[tuple[str, str, str]]) -> dict:
    """Fan out one task per (method, benchmark, language); a language that still fails after
    its retries is recorded as failed and the rest of its benchmark is written anyway."""
    logger = get_run_logger()
    params = _params(pipeline)
    methods_, benches, langs = (list(column) for column in zip(*plan)) if plan else ([], [], [])
    futures = eval_language_task.map(unmapped(pipeline), methods_, benches, langs)
    wait(futures)
    evaluations: dict[str, Any] = {}
    for method, bench in dict.fromkeys((m, b) for m, b, _ in plan):
        done, failed = [], {}
        for (m, b, lang), future in zip(plan, futures):
            if (m, b) != (method, bench):
                continue
            state = future.state
            if state.is_completed():
                done.append(future.result())
            else:
                failed[lang] = str(state.message or state.name)
                logger.error("eval %s %s %s failed after retries: %s", m, b, lang, failed[lang])
        if done:
            mode = params.eval.cc_mode if method == "cc" else "none"
            evaluations[f"{method}/{bench}"] = eval_write_task(pipeline, method, bench, done, failed, mode)
    return evaluations


@flow(name="cc-tuning-pipeline", log_prints=True, task_runner=ThreadPoolTaskRunner(max_workers=EVAL_WORKERS))
def cc_tuning_pipeline(pipeline: PipelineParameters = PipelineParameters()) -> dict:
    """base model → prepare → train (cc, sft) → collect → fit → eval (fan-out) → report → register."""
    logger = get_run_logger()
    params = _params(pipeline)
    results: dict[str, Any] = {"base_model": base_model_task(pipeline), "prepare": prepare_task(pipeline)}
    trained = [m for m in ("cc", "sft") if m in pipeline.methods]
    for method in trained:  # sequential: each training run uses every GPU
        results[f"train_{method}"] = train_task(pipeline, method)
    if "cc" in pipeline.methods:
        results["collect"] = collect_task(pipeline)
        results["fit"] = fit_task(pipeline)
    results["eval"] = evaluate_all(pipeline, eval_plan(params, pipeline.methods))
    results["report"] = report_task(pipeline)
    if "cc" in pipeline.methods:
        results["register"] = register_task(pipeline)
    if pipeline.dvc_commit and (pipeline.overrides or Path(pipeline.params_file).name != "params.yaml"):
        # dvc.lock records params.yaml: committing outputs made with other values would lie.
        logger.warning("not running dvc commit: this run used %s with overrides %s, not params.yaml as is",
                       pipeline.params_file, pipeline.overrides)
    elif pipeline.dvc_commit:
        stages = ["base_model", "prepare", *[f"train_{m}" for m in trained]]
        stages += ["collect", "fit"] if "cc" in pipeline.methods else []
        stages += [f"eval@{m}-{b}" for m in pipeline.methods if m != "cc" for b in params.eval.benchmarks]
        stages += [f"eval_cc@{b}" for b in params.eval.benchmarks] if "cc" in pipeline.methods else []
        stages += ["report"] + (["register"] if "cc" in pipeline.methods else [])
        results["dvc_commit"] = dvc_commit_task(pipeline, stages)
    return results


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Run the cc-tuning pipeline as a Prefect flow (ephemeral API).")
    parser.add_argument("--project-dir", default=".")
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.KEY=VALUE")
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS)
    parser.add_argument("--no-dvc-commit", action="store_true")
    args = parser.parse_args(argv)
    pipeline = PipelineParameters(project_dir=os.path.abspath(args.project_dir), params_file=args.params,
                                  overrides=args.overrides, methods=args.methods, dvc_commit=not args.no_dvc_commit)
    cc_tuning_pipeline(pipeline)


if __name__ == "__main__":
    main()
