"""Prefect 3 flow ``cc-tuning-pipeline``: dvc.yaml's stages, run as ``dvc repro`` runs them, scheduled.

    python -m flows.pipeline                                     # params.yaml; Prefect's ephemeral API
    python -m flows.pipeline --stages eval report --eval-backend deployment --dvc-remote cluster
    python -m flows.pipeline --params params.tiny.yaml --set eval.limit=1   # a variant: a DVC experiment
    prefect deploy --all && prefect deployment run 'cc-tuning-pipeline/gpu-8x'   # see prefect.yaml

The stage graph is dvc.yaml's (flows/stage_graph.py reads it; nothing in flows/ knows a path).
Each stage the run selects runs only when ``dvc status`` reports it changed, through the code path
``dvc repro`` takes: its ``cctune`` command, in-process through ``cc_core.cli`` (or training under
the DeepSpeed launcher / torchrun); then ``dvc commit`` records it. After a run, ``dvc status`` is
clean and ``dvc repro`` has nothing to do. Task runs are named after their stage: ``train-cc``,
``collect``, ``eval-cc-XNLI-ar``. Evaluation is the one special case, fanned out per language
(flows/evaluation.py). A run of another params file or with overrides is a DVC experiment that
leaves the workspace untouched (flows/variants.py). With ``dvc_remote`` each stage first pulls its
inputs from that remote and pushes its outputs after, so nodes share no working tree
(flows/dvc_sync.py).

The flow's signature is the one declaration of a run's parameters: the Prefect run form, the
command line of ``python -m flows.pipeline`` (:func:`build_cli`) and the defaults all come from it.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shlex
import subprocess
import sys
import time
from dataclasses import asdict, is_dataclass
from pathlib import Path
from typing import Annotated, Any, Literal

# Before prefect is imported: a busy 2-core machine needs more than the 20 s default to bring
# up the ephemeral API; and no telemetry.
os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "120")
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("DO_NOT_TRACK", "1")

from prefect import flow, get_run_logger, task
from prefect.task_runners import ThreadPoolTaskRunner
from pydantic import Field

from cc_core import cli
from cc_core.redact import redact
from flows import dvc_sync
from flows.evaluation import EVAL_WORKERS, EvalStage, evaluate_stages
from flows.stage_graph import (Method, PipelineStage, RunContext, StageKind, changed, load_stages, select,
                               stage_inputs, user_error_not_retried)
from flows.variants import exclusive, is_variant, variant_workspace


class EvaluationIncomplete(RuntimeError):
    """Some (method, benchmark, language) evaluations failed after their retries."""


class StageFailed(RuntimeError):
    """A stage failed; the message names the stage, its method and why."""


def _result(value: Any) -> Any:
    return asdict(value) if is_dataclass(value) else value


# ----------------------------------------------------------------------------- DVC around each stage


@task(task_run_name="dvc-pull-{label}", retries=1, retry_delay_seconds=10)
def dvc_pull_task(ctx: RunContext, stages: list[str], produced_here: list[str], label: str) -> list[str]:
    """Pull ``stages``' inputs from the DVC remote, except those this flow run produced itself."""
    inputs = stage_inputs(ctx.workspace, stages, strict=False)
    recorded = dvc_sync.recorded_stages(ctx.workspace)
    targets = [path for path, producer in inputs.items() if producer not in produced_here and producer in recorded]
    return dvc_sync.pull(ctx.workspace, targets, ctx.dvc_remote, what=f"stage {', '.join(stages)}")


@task(task_run_name="dvc-commit-{label}", retries=2, retry_delay_seconds=10)
def dvc_commit_task(ctx: RunContext, stages: list[str], label: str) -> str:
    """Record ``stages`` in dvc.lock (the entry `dvc repro` writes) and push their outputs."""
    dvc_sync.commit(ctx.workspace, stages)
    if ctx.dvc_remote:
        dvc_sync.push(ctx.workspace, stages, ctx.dvc_remote, what=f"stage {', '.join(stages)}")
        return f"dvc.lock updated and pushed to {ctx.dvc_remote} for: " + ", ".join(stages)
    return "dvc.lock updated for: " + ", ".join(stages)


# ----------------------------------------------------------------------------- one stage


def launcher_command(ctx: RunContext, argv: list[str]) -> list[str]:
    """The multi-GPU training command: the stage's own cctune arguments under the DeepSpeed launcher
    or torchrun."""
    if ctx.launcher == "deepspeed":
        cmd = ["deepspeed", "--num_gpus", str(ctx.num_gpus), "--num_nodes", str(ctx.num_nodes)]
        if ctx.hostfile:
            cmd += ["--hostfile", ctx.hostfile]
        return cmd + ["--module", "cc_core.cli", *argv]
    return [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(ctx.num_gpus),
            "--nnodes", str(ctx.num_nodes), "-m", "cc_core.cli", *argv]


@task(task_run_name="{label}", retries=1, retry_delay_seconds=10, retry_condition_fn=user_error_not_retried)
def stage_task(ctx: RunContext, label: str, argv: list[str]) -> Any:
    """Run one dvc.yaml stage's command (``cctune ARGV``) as ``dvc repro`` would."""
    if argv[0] == "train" and ctx.launcher != "inprocess":
        cmd = launcher_command(ctx, argv)
        get_run_logger().info("launching: %s", redact(shlex.join(cmd)))  # --set values may hold a URI with a login
        subprocess.run(cmd, check=True, cwd=ctx.workspace)
        return {"launched": redact(shlex.join(cmd))}
    return _result(cli.run(cli.parse(argv)))


# ----------------------------------------------------------------------------- the flow


def _flow_run_name() -> str:
    from prefect.runtime import flow_run

    return flow_run.name or f"run-{int(time.time())}"


@flow(name="cc-tuning-pipeline", log_prints=True, task_runner=ThreadPoolTaskRunner(max_workers=EVAL_WORKERS))
def cc_tuning_pipeline(
    params_file: str = "params.yaml",
    overrides: list[str] = [],  # noqa: B006 - a Prefect parameter default (shown on the run form), never mutated
    methods: list[Method] = ["base", "sft", "cc"],  # noqa: B006
    stages: list[StageKind] = ["base_model", "prepare", "train", "collect", "fit", "eval", "report",  # noqa: B006
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
    experiment_name: str | None = None,
    project_dir: str = ".",
) -> dict:
    """base model → prepare → train (cc, sft) → collect → fit → eval → report → register, as dvc.yaml declares.

    Args:
        params_file: The params file, relative to the project directory. params.yaml runs in the
            workspace and is recorded in dvc.lock; any other file (params.tiny.yaml, params.paper.yaml)
            runs as a DVC experiment and leaves the workspace untouched.
        overrides: Changes to the params file for this run, one section.key=value per line, e.g.
            eval.limit=20. A run with overrides runs as a DVC experiment.
        methods: Which models to train and evaluate: base (no training), sft (vanilla fine-tuning),
            cc (CC-Tuning with the Transform Matrix).
        stages: Which stages to run, in pipeline order; a stage runs only if `dvc status` says it
            changed; a stage left out uses the outputs already there (or pulled from the DVC remote).
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
        experiment_name: The name a variant run (another params file, or overrides) is saved under
            as a DVC experiment (default: this flow run's name).
        project_dir: The cc-tuning checkout on the worker, relative to the deployment's working
            directory ($CC_TUNING_HOME).
    """
    logger = get_run_logger()
    project = Path(project_dir).resolve()
    dvc_remote = (dvc_remote or "").strip() or None
    if eval_backend == "deployment" and "eval" in stages and not dvc_remote:
        raise ValueError("eval_backend=deployment needs dvc_remote: the evaluation jobs run in other checkouts "
                         "and pull the models from that DVC remote")
    variant = is_variant(params_file, list(overrides))
    name = experiment_name or _flow_run_name()
    where = variant_workspace(project, params_file, list(overrides), name) if variant else contextlib.nullcontext(project)
    previous_cwd = os.getcwd()
    with exclusive(project) if not variant else contextlib.nullcontext(), where as workspace:
        if variant:
            logger.info("variant run (%s%s): a DVC experiment named %s, in %s", params_file,
                        redact("".join(f" --set {o}" for o in overrides)), name, workspace)
        os.chdir(workspace)  # the stages' commands use paths relative to the project root, as under dvc repro
        try:
            ctx = RunContext(str(workspace), launcher, num_gpus, num_nodes, hostfile, dvc_remote)
            results = run_graph(ctx, list(dict.fromkeys(methods)), list(dict.fromkeys(stages)), eval_backend,
                                eval_deployment, eval_langs_per_job, job_retries, job_heartbeat_timeout_s)
        finally:
            os.chdir(previous_cwd)
    if variant:
        results["experiment"] = name
    return results


PIPELINE_FLOW = cc_tuning_pipeline  # its signature is the one declaration of the run's parameters


def run_graph(ctx: RunContext, methods: list[str], kinds: list[str], eval_backend: str, eval_deployment: str,
              eval_langs_per_job: int, job_retries: int, job_heartbeat_timeout_s: int) -> dict:
    """Run the selected stages of ``ctx.workspace``'s dvc.yaml that `dvc status` reports changed."""
    logger = get_run_logger()
    graph = load_stages(ctx.workspace)
    chosen = select(graph, kinds, methods)
    evals = [s for s in chosen if s.kind == "eval"]
    after_eval = {s.name for s in graph if any(e.name in s.upstream for e in graph if e.kind == "eval")}
    before = [s for s in chosen if s.kind != "eval" and s.name not in after_eval]
    after = [s for s in chosen if s.kind != "eval" and s.name in after_eval]
    results: dict[str, Any] = {"ran": [], "up_to_date": []}
    produced: list[str] = []

    def prepare_inputs(names: list[str], label: str) -> None:
        if ctx.dvc_remote:
            dvc_pull_task(ctx, names, list(produced), label)

    def run_one(stage: PipelineStage, commit: bool = True) -> None:
        prepare_inputs([stage.name], stage.label)
        if not changed(ctx.workspace, [stage.name])[stage.name]:
            results["up_to_date"].append(stage.name)
            return
        state = stage_task.with_options(name=stage.label)(ctx, stage.label, list(stage.argv), return_state=True)
        if not state.is_completed():
            error = state.result(raise_on_failure=False)
            raise StageFailed(f"stage {stage.name}{f' (method {stage.method})' if stage.method else ''} failed: "
                              + redact(str(error if isinstance(error, BaseException) else state.message)))
        results[stage.name] = state.result()
        results["ran"].append(stage.name)
        produced.append(stage.name)
        if ctx.record and commit:
            results.setdefault("dvc", []).append(dvc_commit_task(ctx, [stage.name], stage.label))

    for stage in before:
        run_one(stage)
    failed: dict[str, str] = {}
    evaluation: dict[str, Any] = {}
    if evals:
        prepare_inputs([s.name for s in evals], "eval")
        todo = [s for s in evals if changed(ctx.workspace, [s.name])[s.name]]
        results["up_to_date"] += [s.name for s in evals if s not in todo]
        if todo:
            params = ctx.params()
            jobs = [EvalStage.parse(stage, params) for stage in todo]
            evaluation = evaluate_stages(ctx, jobs, eval_backend, eval_deployment, eval_langs_per_job, job_retries,
                                         job_heartbeat_timeout_s)
            results["eval"] = evaluation
            failed = evaluation["failed"]
            results["ran"] += [job.name for job, _ in jobs]
            produced.extend(job.name for job, _ in jobs)
            if ctx.record and evaluation["complete"]:
                results.setdefault("dvc", []).append(dvc_commit_task(ctx, evaluation["complete"], "eval"))
    cc_failed = [key for key in failed if key.startswith("cc/")]
    for stage in after:
        if stage.kind == "register" and cc_failed:
            logger.error("not registering: the cc evaluation is incomplete (%s)", ", ".join(cc_failed))
            continue
        run_one(stage, commit=not failed)  # the report shows what is there; recorded only when complete
    if failed:
        not_recorded = evaluation["incomplete"] + [s.name for s in after if s.name in results["ran"]]
        raise EvaluationIncomplete(
            f"{len(failed)} evaluation(s) failed after their retries: "
            + "; ".join(f"{key}: {message}" for key, message in failed.items())
            + (f". Every language failed, previous outputs removed: {', '.join(evaluation['removed'])}"
               if evaluation["removed"] else "")
            + f". Not recorded in dvc.lock: {', '.join(not_recorded)}. The other results are written.")
    return results


# ----------------------------------------------------------------------------- command line


def build_cli() -> argparse.ArgumentParser:
    """``python -m flows.pipeline``'s options, made from the flow's signature (its parameter schema:
    the same names, types, choices, defaults and descriptions as the Prefect run form)."""
    from prefect.utilities.callables import parameter_schema

    schema = parameter_schema(PIPELINE_FLOW).model_dump_for_openapi()
    parser = argparse.ArgumentParser(description="Run the cc-tuning pipeline as a Prefect flow (ephemeral API "
                                                 "unless PREFECT_API_URL names a server).")
    aliases = {"params_file": ["--params"], "overrides": ["--set"]}  # the cctune spellings, too
    for name, prop in schema["properties"].items():
        flags = [f"--{name.replace('_', '-')}", *aliases.get(name, [])]
        kind = prop.get("type") or next((p["type"] for p in prop.get("anyOf", []) if p.get("type") != "null"), "string")
        options: dict[str, Any] = {"dest": name, "default": prop.get("default"),
                                   "help": " ".join(prop.get("description", "").split())}
        if kind == "array":
            items = prop.get("items", {})
            options.update(nargs="+", choices=items.get("enum")) if name != "overrides" else \
                options.update(action="append", default=[], metavar="SECTION.KEY=VALUE")
        elif kind == "boolean":
            options["action"] = argparse.BooleanOptionalAction
        else:
            options.update(type=int if kind == "integer" else str, choices=prop.get("enum"))
        parser.add_argument(*flags, **options)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = vars(build_cli().parse_args(argv))
    args["project_dir"] = os.path.abspath(args["project_dir"])
    state = cc_tuning_pipeline(**args, return_state=True)
    if not state.is_completed():
        error = state.result(raise_on_failure=False)
        print(f"cc-tuning-pipeline ended {state.name}: "
              + redact(str(error if isinstance(error, BaseException) else state.message)), file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
