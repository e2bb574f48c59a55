"""The tiny profile with LoRA adapters (train.peft: lora), end to end: `dvc repro` in a scratch copy of
the project trains adapter checkpoints, collects, fits, evaluates and registers an adapter version;
the version is at least 10× smaller than a full one, a second registration reuses the logged base
model, and `mlflow models serve` of the version answers with the adapter checkpoint's own outputs.
One training serves every assertion (module-scoped fixtures).

    pytest -m integration tests/integration/test_lora_pipeline.py -s
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from serving_helpers import served

pytestmark = pytest.mark.integration
REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
PROMPTS = ["Quelle est la capitale du Kenya ?", "Was ist 2+2?"]
LANGS = ["fr", "de"]


def _env(uri: str | None = None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "PREFECT_API"))}
    env.update(PATH=f"{BIN}{os.pathsep}{env['PATH']}", DO_NOT_TRACK="true", MLFLOW_DISABLE_TELEMETRY="true",
               DVC_NO_ANALYTICS="1", TOKENIZERS_PARALLELISM="false", HF_HUB_OFFLINE="1")
    if uri:
        env["MLFLOW_TRACKING_URI"] = uri
    return env


def _bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())


def _lively_base(folder: Path) -> Path:
    """tiny-random-llama with larger random weights (as tests/conftest.py's lively models): its greedy
    outputs are varied text, so comparing served answers is not comparing empty strings."""
    import torch

    from cc_core.modeling.base import build_tiny

    model, tokenizer = build_tiny("llama")
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for param in model.parameters():
            if param.dim() >= 2:
                param.copy_(torch.randn(param.shape, generator=gen) * 0.15)
    model.save_pretrained(folder, safe_serialization=True)
    tokenizer.save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    """A copy of the working tree as a fresh git repo, the tiny profile with train.peft: lora (its
    2-layer llama with livelier random weights, as a local model.base), reproduced."""
    root = tmp_path_factory.mktemp("lora-project") / "cc-tuning"
    base = _lively_base(root.parent / "tiny-lively-llama")
    files = subprocess.run(["git", "ls-files", "-co", "--exclude-standard", "-z"], cwd=REPO, capture_output=True,
                           text=True, check=True).stdout.split("\0")
    for name in filter(None, files):
        if (REPO / name).is_file():
            (root / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO / name, root / name)
    for path in ("metrics", "dvc.lock"):
        target = root / path
        shutil.rmtree(target, ignore_errors=True) if target.is_dir() else target.unlink(missing_ok=True)
    tiny = (root / "params.tiny.yaml").read_text()
    assert tiny.count("\n  peft: none\n") == 1 and tiny.count("\n  base: tiny-random-llama\n") == 1
    (root / "params.yaml").write_text(tiny.replace("\n  peft: none\n", "\n  peft: lora\n")
                                      .replace("\n  base: tiny-random-llama\n", f"\n  base: {base}\n"))
    for cmd in (["git", "init", "-q"], ["git", "add", "-A"],
                ["git", "-c", "user.email=t@t", "-c", "user.name=t", "commit", "-qm", "tiny lora"]):
        subprocess.run(cmd, cwd=root, check=True)
    started = time.perf_counter()
    repro = subprocess.run([str(BIN / "dvc"), "repro"], cwd=root, env=_env(), capture_output=True, text=True,
                           timeout=1500)
    assert repro.returncode == 0, repro.stdout[-3000:] + repro.stderr[-3000:]
    print(f"\ntiny profile with train.peft=lora, dvc repro: {time.perf_counter() - started:.1f} s")
    return root


def test_dvc_repro_trains_adapters_and_registers_an_adapter_version(project):
    import mlflow

    for method in ("cc", "sft"):
        folder = project / f"models/{method}"
        assert (folder / "cc_adapter.json").is_file() and (folder / "adapter_model.safetensors").is_file()
        assert not (folder / "model.safetensors").exists()
    register = json.loads((project / "metrics/register.json").read_text())
    client = mlflow.MlflowClient(f"sqlite:///{project}/mlflow.db")
    version = client.get_model_version(register["model_name"], register["version"])
    assert version.tags["adapter"] == "lora" and version.tags["storage"] == "artifacts"
    base_sha = json.loads((project / "models/cc/cc_adapter.json").read_text())["base_model"]["sha256"]
    assert version.tags["base_model_sha256"] == base_sha
    lock = (project / "dvc.lock").read_text()
    assert "train_cc:" in lock and "register:" in lock
    again = subprocess.run([str(BIN / "dvc"), "repro"], cwd=project, env=_env(), capture_output=True, text=True,
                           timeout=300)
    assert again.returncode == 0 and "Running stage" not in again.stdout  # up to date


def test_the_adapter_version_is_ten_times_smaller_than_a_full_one_and_shares_its_base(project):
    """A full version logs the same code, pins and matrix plus the full checkpoint: the merged one's files."""
    import mlflow

    from cc_core.registry_files import checkpoint_files

    register = json.loads((project / "metrics/register.json").read_text())
    client = mlflow.MlflowClient(f"sqlite:///{project}/mlflow.db")
    version = client.get_model_version(register["model_name"], register["version"])
    logged = Path(client.get_logged_model(version.tags["logged_model_id"]).artifact_location.removeprefix("file://"))
    adapter_version = _bytes(logged)
    weights = logged / "artifacts" / "model"
    merge = subprocess.run([str(BIN / "cctune"), "merge", "--model", "models/cc", "--out", "models/cc-merged"],
                           cwd=project, env=_env(), capture_output=True, text=True, timeout=300)
    assert merge.returncode == 0, merge.stderr[-2000:]
    merged = project / "models/cc-merged"
    full_version = adapter_version - _bytes(weights) + sum((merged / f).stat().st_size for f in checkpoint_files(merged))
    print(f"\nadapter version {adapter_version / 1e6:.2f} MB, a full version {full_version / 1e6:.2f} MB "
          f"({full_version / adapter_version:.1f}x)")
    assert adapter_version * 10 <= full_version
    assert not (weights / "tokenizer.json").exists()  # the base's own tokenizer travels with the base

    # registering again (the same checkpoint) reuses the logged base model instead of logging it twice
    reg = subprocess.run([str(BIN / "cctune"), "register", "--model", "models/cc", "--transform", "transform",
                          "--metrics-dir", "metrics"], cwd=project, env=_env(), capture_output=True, text=True,
                         timeout=300)
    assert reg.returncode == 0, reg.stderr[-2000:]
    second = json.loads((project / "metrics/register.json").read_text())
    v2 = client.get_model_version(second["model_name"], second["version"])
    assert second["version"] != register["version"] and v2.tags["base_model_id"] == version.tags["base_model_id"]
    bases = client.search_logged_models(experiment_ids=[client.get_logged_model(v2.tags["base_model_id"]).experiment_id],
                                        filter_string="name = 'cc_tuning_base'")
    assert len(bases) == 1


@pytest.fixture(scope="module")
def server(project, tmp_path_factory):
    uri = f"sqlite:///{project}/mlflow.db"
    name = json.loads((project / "metrics/register.json").read_text())["model_name"]
    with served(f"models:/{name}@champion", tmp_path_factory.mktemp("lora-serve"), _env(uri)) as running:
        yield running


def test_mlflow_models_serve_answers_with_the_adapter_checkpoints_outputs(project, server, monkeypatch):
    from cc_core.generate import Generator

    monkeypatch.chdir(project)  # the adapter names its base as models/base, relative to the project
    generator = Generator.from_dirs("models/cc", transform="transform", mode="transform", max_new_tokens=8)
    expected = [g.text for g in generator.generate(PROMPTS, LANGS)]
    body = {"dataframe_split": {"columns": ["prompt", "lang"], "data": [list(p) for p in zip(PROMPTS, LANGS)]},
            "params": {"max_new_tokens": 8}}
    request = urllib.request.Request(server.url, data=json.dumps(body).encode(),
                                     headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=120) as response:
        status, answer = response.status, json.loads(response.read())
    print(f"\nPOST /invocations → HTTP {status} {json.dumps(answer, ensure_ascii=False)}")
    assert status == 200 and answer == {"predictions": expected}
    assert all(len(text.split()) >= 2 for text in expected), expected  # real text, not empty answers
