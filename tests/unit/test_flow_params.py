"""What a person sees on the Prefect run form, and what prefect.yaml deploys: flat, typed, described
flow parameters; deployments whose parameters are valid for their flow; the command line maps onto
the same parameters; the DVC helpers' scoping and error messages.

    pytest tests/unit/test_flow_params.py
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import jsonschema
import pytest
import yaml
from prefect.utilities.callables import parameter_schema_from_entrypoint

from flows import dvc_sync, pipeline
from flows.stage_graph import load_stages

REPO = Path(__file__).resolve().parents[2]
ENTRYPOINTS = {"cc-tuning-pipeline": "flows/pipeline.py:cc_tuning_pipeline",
               "cc-tuning-eval-job": "flows/eval_jobs.py:eval_job"}


def _schema(entrypoint: str) -> dict:
    """The schema `prefect deploy` registers (read from the source, as the deploy command does)."""
    import os

    cwd = os.getcwd()
    os.chdir(REPO)
    try:
        return parameter_schema_from_entrypoint(entrypoint).model_dump_for_openapi()
    finally:
        os.chdir(cwd)


def test_every_pipeline_parameter_is_a_typed_described_form_field():
    props = _schema(ENTRYPOINTS["cc-tuning-pipeline"])["properties"]
    assert "pipeline" not in props  # not one opaque object
    assert list(props)[:8] == ["params_file", "overrides", "methods", "stages", "launcher", "num_gpus", "num_nodes",
                               "hostfile"]
    for name, prop in props.items():
        assert prop.get("description", "").strip(), f"{name} has no description on the run form"
    assert props["methods"]["items"]["enum"] == ["base", "sft", "cc"]
    from flows.stage_graph import STAGE_KINDS

    assert props["stages"]["default"] == list(STAGE_KINDS)
    assert props["eval_backend"]["enum"] == ["inprocess", "deployment"]
    assert props["launcher"]["enum"] == ["inprocess", "deepspeed", "torchrun"]
    assert props["num_gpus"]["minimum"] == 1 and props["job_heartbeat_timeout_s"]["minimum"] == 45
    # what a live import of the flow reports is the same
    from prefect.utilities.callables import parameter_schema

    assert parameter_schema(pipeline.cc_tuning_pipeline).model_dump_for_openapi()["properties"] == props


def test_prefect_yaml_deployments_are_valid_for_their_flows():
    config = yaml.safe_load((REPO / "prefect.yaml").read_text())
    names = [d["name"] for d in config["deployments"]]
    assert len(names) == len(set(names))  # `prefect deploy --name X` is unambiguous
    by_flow: dict[str, list[str]] = {}
    for deployment in config["deployments"]:
        flow_name = next(f for f, e in ENTRYPOINTS.items() if e == deployment["entrypoint"])
        by_flow.setdefault(flow_name, []).append(deployment["name"])
        schema = _schema(deployment["entrypoint"])
        params = deployment.get("parameters") or {}
        assert set(params) <= set(schema["properties"]), deployment["name"]
        jsonschema.validate(params, {**schema, "required": []})
        if flow_name == "cc-tuning-eval-job":  # jobs: bounded by Prefect, and heard from while they run
            assert deployment["concurrency_limit"] >= 1
            env = deployment["work_pool"]["job_variables"]["env"]
            assert 30 <= int(env["PREFECT_FLOWS_HEARTBEAT_FREQUENCY"]) < 45  # under the smallest timeout
        if params.get("eval_backend") == "deployment":
            assert params.get("dvc_remote"), deployment["name"]
            eval_deployment = params.get("eval_deployment", "cc-tuning-eval-job/gpu")
            assert eval_deployment.split("/")[1] in by_flow.get("cc-tuning-eval-job", []) + [
                d["name"] for d in config["deployments"] if d["entrypoint"] == ENTRYPOINTS["cc-tuning-eval-job"]]
    assert {"cluster", "local-tiny"} <= set(by_flow["cc-tuning-pipeline"])
    assert {"gpu", "local"} <= set(by_flow["cc-tuning-eval-job"])


def test_the_command_line_is_made_from_the_flow_signature(monkeypatch):
    seen = {}

    class Done:
        def is_completed(self):
            return True

    def fake_flow(**kwargs):
        seen.update(kwargs)
        return Done()

    monkeypatch.setattr(pipeline, "cc_tuning_pipeline", fake_flow)
    props = _schema(ENTRYPOINTS["cc-tuning-pipeline"])["properties"]
    assert pipeline.main([]) == 0  # no option: exactly the run form's defaults
    assert {k: v for k, v in seen.items() if k not in ("return_state", "project_dir")} == \
        {k: p.get("default") for k, p in props.items() if k != "project_dir"}
    seen.clear()
    assert pipeline.main(["--params", "params.tiny.yaml", "--set", "eval.limit=2", "--set", "eval.seeds=2",
                          "--methods", "base", "cc", "--stages", "eval", "report", "--eval-backend", "deployment",
                          "--dvc-remote", "cluster", "--eval-langs-per-job", "2",
                          "--job-heartbeat-timeout-s", "90"]) == 0
    assert set(seen) - {"return_state"} == set(props)
    assert seen["params_file"] == "params.tiny.yaml" and seen["overrides"] == ["eval.limit=2", "eval.seeds=2"]
    assert seen["methods"] == ["base", "cc"] and seen["stages"] == ["eval", "report"]
    assert seen["eval_backend"] == "deployment" and seen["dvc_remote"] == "cluster"
    assert seen["eval_langs_per_job"] == 2 and seen["job_heartbeat_timeout_s"] == 90
    parser = pipeline.build_cli()
    for bad in (["--methods", "gpt"], ["--eval-backend", "slurm"], ["--num-gpus", "two"]):
        with pytest.raises(SystemExit):
            parser.parse_args(bad)


def test_only_runs_of_params_yaml_as_is_are_recorded_in_the_workspace():
    assert not pipeline.is_variant("params.yaml", [])
    assert pipeline.is_variant("params.yaml", ["eval.limit=2"])
    assert pipeline.is_variant("params.tiny.yaml", [])


def test_stage_inputs_are_the_cached_outputs_of_other_stages():
    from flows.stage_graph import stage_inputs

    # not source files, not params, not metrics files (in git): what another stage produces and DVC caches
    assert stage_inputs(REPO, ["eval_cc@XNLI"]) == {"models/cc": "train_cc", "transform": "fit"}
    # a stage's output read by another stage of the same set is not an input of the set
    inputs = stage_inputs(REPO, ["eval_cc@XNLI", "train_cc"])
    assert "models/cc" not in inputs and inputs["transform"] == "fit"
    assert inputs["models/base"] == "base_model" and inputs["data/prepared/train.jsonl"] == "prepare"
    assert stage_inputs(REPO, ["eval@base-XNLI"]) == {"models/base": "base_model"}
    with pytest.raises(ValueError, match="no stage nope"):
        stage_inputs(REPO, ["nope"])


def test_the_flow_runs_dvc_yaml_stages_named_after_what_they_are():
    from flows.stage_graph import load_stages, methods_of, select

    stages = load_stages(REPO)
    names = [s.name for s in stages]
    assert names.index("train_cc") < names.index("collect") < names.index("fit") < names.index("eval_cc@XNLI") \
        < names.index("report") < names.index("register")
    labels = {s.name: s.label for s in stages}
    assert labels["train_cc"] == "train-cc" and labels["train_sft"] == "train-sft"
    assert labels["eval_cc@XNLI"] == "eval-cc-XNLI" and labels["base_model"] == "base-model"
    served = methods_of(stages)
    assert served["collect"] == {"cc"} and served["report"] == {"base", "sft", "cc"} and not served["prepare"]
    assert [s.name for s in select(stages, ["train", "collect", "report"], ["sft"])] == ["train_sft", "report"]
    # the flow has no path of its own: every path it uses comes from dvc.yaml
    for module in ("pipeline", "evaluation", "variants", "stage_graph", "eval_jobs"):
        source = (REPO / "flows" / f"{module}.py").read_text()
        for path in ("models/", "data/prepared", "activations", "transform/", "metrics/", "eval/"):
            assert f'"{path}' not in source, (module, path)


def test_lock_entries_move_between_checkouts(tmp_path):
    head, node = tmp_path / "head", tmp_path / "node"
    head.mkdir(), node.mkdir()
    entry = {"cmd": "cctune fit", "outs": [{"path": "transform", "hash": "md5", "md5": "abc.dir"}]}
    (head / "dvc.lock").write_text(yaml.safe_dump({"schema": "2.0", "stages": {"fit": entry, "other": {"cmd": "x"}}}))
    assert dvc_sync.lock_entries(head, ["fit"]) == {"fit": entry}
    with pytest.raises(dvc_sync.DvcError, match="train_cc not recorded"):
        dvc_sync.lock_entries(head, ["train_cc"])
    (node / "dvc.lock").write_text(yaml.safe_dump({"schema": "2.0", "stages": {"base_model": {"cmd": "b"}}}))
    dvc_sync.adopt_lock_entries(node, {"fit": entry})
    assert yaml.safe_load((node / "dvc.lock").read_text())["stages"] == {"base_model": {"cmd": "b"}, "fit": entry}
    assert dvc_sync.recorded_stages(node) == {"base_model", "fit"}


def test_an_unreachable_remote_is_named_with_the_reason(tmp_path):
    assert dvc_sync.probe(str(tmp_path)) is None
    assert "is not a directory" in dvc_sync.probe(str(tmp_path / "missing"))
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]  # bound, not listening: connections are refused
        assert "cannot connect to 127.0.0.1" in dvc_sync.probe(f"http://127.0.0.1:{port}/dvc")
    assert dvc_sync.probe("s3://bucket/prefix") is None  # not checked here: DVC's own error says it


def test_a_failed_pull_leaves_the_workspace_as_it_was(tmp_path):
    """A DVC repository with one tracked folder and an HTTP remote nobody listens on."""
    repo = tmp_path / "repo"
    repo.mkdir()
    dvc = [sys.executable, "-m", "dvc"]
    for cmd in (["git", "init", "-q"], [*dvc, "init", "-q"]):
        subprocess.run(cmd, cwd=repo, check=True, capture_output=True)
    (repo / "models" / "cc").mkdir(parents=True)
    (repo / "models" / "cc" / "w.bin").write_bytes(b"weights")
    subprocess.run([*dvc, "add", "-q", "models/cc"], cwd=repo, check=True, capture_output=True)
    subprocess.run([*dvc, "remote", "add", "broken", "http://127.0.0.1:9/dvc"], cwd=repo, check=True,
                   capture_output=True)
    import shutil

    # a fresh node: the .dvc file at the top (as a committed checkout would have it), no models/ folder
    spec = yaml.safe_load((repo / "models" / "cc.dvc").read_text())
    spec["outs"][0]["path"] = "models/cc"
    (repo / "cc.dvc").write_text(yaml.safe_dump(spec))
    shutil.rmtree(repo / "models")
    shutil.rmtree(repo / ".dvc" / "cache")
    with pytest.raises(dvc_sync.DvcError) as err:
        dvc_sync.pull(repo, ["models/cc"], "broken", what="stage eval_cc@XNLI")
    message = str(err.value)
    assert message.startswith("stage eval_cc@XNLI: dvc pull from remote 'broken' (http://127.0.0.1:9/dvc) failed")
    assert "ERROR: failed to pull data" in message and "cannot connect to 127.0.0.1:9" in message
    assert not (repo / "models").exists()  # not even the empty folder DVC made for the checkout


def test_a_variant_of_some_stages_is_saved_with_the_stages_that_have_outputs(tmp_path):
    """`dvc exp save` commits every stage and stops at the first missing output: a variant run of
    the prepare stage alone (nothing else cached or run) names the stages whose outputs exist."""
    from flows.variants import _stages_with_outputs

    for name in ("dvc.yaml", "params.yaml"):
        shutil.copy(REPO / name, tmp_path / name)
    shutil.copytree(REPO / ".dvc", tmp_path / ".dvc", ignore=shutil.ignore_patterns("tmp", "cache"))
    subprocess.run(["git", "init", "-q"], cwd=tmp_path, check=True)
    names = [s.name for s in load_stages(tmp_path)]
    prepare = next(s for s in load_stages(tmp_path) if s.name == "prepare")
    for out in prepare.outs:
        (tmp_path / out).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / out).write_text("{}")
    assert _stages_with_outputs(tmp_path) == ["prepare"]
    for stage in load_stages(tmp_path):
        for out in stage.outs:
            (tmp_path / out).parent.mkdir(parents=True, exist_ok=True)
            if not (tmp_path / out).exists():
                (tmp_path / out).write_text("{}")
    assert _stages_with_outputs(tmp_path) == [] and len(names) > 1  # all: no target, DVC's default
