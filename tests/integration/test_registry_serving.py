"""Registry versions that cannot change under you, and a champion that serves anywhere.

On a tiny CC checkpoint (2-layer random llama, a random Transform Matrix fitted "for" it):
register version 1 (weights logged into the artifact store, the default) and version 2 (by
reference), then retrain in place (models/cc and transform/ replaced by other weights), and check
(a) in a fresh process, version 1 still predicts its original outputs; (b) version 2 is refused,
naming the version and the changed file with both hashes; (c) `mlflow models serve` of the
champion answers POST /invocations, rejects malformed requests with HTTP 400 and MLflow's error
body, keeps serving, and stops on SIGTERM.

    pytest -m integration tests/integration/test_registry_serving.py -s
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from types import SimpleNamespace

import pytest

pytestmark = pytest.mark.integration
BIN = Path(sys.executable).parent
PROMPTS = ["Quelle est la capitale du Kenya ?", "Was ist 2+2?"]
LANGS = ["fr", "de"]
MAX_NEW_TOKENS = 8


def _env(uri: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
    env.update(PATH=f"{BIN}{os.pathsep}{env['PATH']}", MLFLOW_TRACKING_URI=uri, MLFLOW_DISABLE_TELEMETRY="true",
               DO_NOT_TRACK="true", TOKENIZERS_PARALLELISM="false", HF_HUB_OFFLINE="1")
    return env


def _build(root: Path, seed: int) -> str:
    """(Re)write models/cc, transform/ and metrics/eval/cc/XNLI.json as a train → fit → eval would."""
    import torch

    from cc_core.io import file_sha256, write_json
    from cc_core.lineage import checkpoint_sha256
    from cc_core.modeling import CCTuningModel
    from cc_core.modeling.base import build_tiny
    from cc_core.modeling.checkpoint import save_cc_checkpoint
    from cc_core.modeling.transform_matrix import TransformMatrix

    model, tokenizer = build_tiny("llama", seed=seed)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():  # larger random weights than the default init: varied greedy outputs
        for param in model.parameters():
            if param.dim() >= 2:
                param.copy_(torch.randn(param.shape, generator=gen) * 0.15)
    cc = CCTuningModel(model.eval(), inject_layer=0).eval()
    with torch.no_grad():
        cc.decision_maker.proj.weight.normal_(generator=gen)
    for folder in ("models/cc", "transform"):
        shutil.rmtree(root / folder, ignore_errors=True)
    save_cc_checkpoint(cc, root / "models/cc", tokenizer)
    checkpoint = checkpoint_sha256(root / "models/cc")
    (root / "transform").mkdir()
    meta = {"model_sha256": checkpoint, "num_layers": 2, "hidden_size": 64}
    TransformMatrix(torch.randn(64, 64, generator=gen) * 0.3, None, {}, meta).save(root / "transform/transform.safetensors")
    write_json(root / "transform/transform.json", meta)
    write_json(root / "metrics/eval/cc/XNLI.json",
               {"benchmark": "XNLI", "average": 50.0, "checkpoint_sha256": checkpoint,
                "transform_sha256": file_sha256(root / "transform/transform.safetensors")})
    return checkpoint


def _generate(root: Path) -> list[str]:
    from cc_core.generate import Generator

    generator = Generator.from_dirs(root / "models/cc", transform=root / "transform/transform.safetensors",
                                    mode="transform", max_new_tokens=MAX_NEW_TOKENS)
    return [g.text for g in generator.generate(PROMPTS, LANGS)]


def _register(root: Path, uri: str, log_weights: bool):
    from cc_core.config import parse_params
    from cc_core.registry import register

    params = parse_params({}, overrides=[
        "eval.benchmarks=[XNLI]", f"eval.max_new_tokens={MAX_NEW_TOKENS}", f"tracking.uri={uri}",
        f"tracking.artifact_location={root}/mlartifacts", "register.model_name=cc-test",
        f"register.log_weights={str(log_weights).lower()}"])
    return register(params, root / "models/cc", root / "transform", root / "metrics", root / "dvc.lock")


@pytest.fixture(scope="module")
def registry(tmp_path_factory):
    started = time.perf_counter()
    root = tmp_path_factory.mktemp("registry") / "checkout"
    root.mkdir()
    uri = f"sqlite:///{root.parent}/mlflow.db"  # the store lives outside the checkout
    first = _build(root, seed=0)
    original = _generate(root)
    logged = _register(root, uri, log_weights=True)
    referenced = _register(root, uri, log_weights=False)
    # the same scores: a tie never moves the champion
    assert (logged.version, logged.promoted, logged.storage) == ("1", True, "artifacts")
    assert (referenced.version, referenced.champion, referenced.promoted, referenced.storage) == \
        ("2", "1", False, "reference")
    second = _build(root, seed=1)  # retrained in place: models/cc and transform/ now hold other weights
    retrained = _generate(root)
    assert second != first and retrained != original
    print(f"\nbuilt, registered twice and retrained in {time.perf_counter() - started:.1f} s")
    return SimpleNamespace(root=root, uri=uri, original=original, retrained=retrained, first=first)


_LOAD_SCRIPT = """
import json, sys
import mlflow, pandas as pd
out = {}
model = mlflow.pyfunc.load_model("models:/cc-test/1")
frame = pd.DataFrame({"prompt": PROMPTS, "lang": LANGS})
out["v1"] = list(model.predict(frame, params={"max_new_tokens": MAX_NEW_TOKENS}))
import cc_core
out["code"] = cc_core.__file__
try:
    mlflow.pyfunc.load_model("models:/cc-test/2")
    out["v2"] = "loaded"
except Exception as err:
    out["v2"] = f"{type(err).__name__}: {err}"
print("RESULT " + json.dumps(out))
"""


@pytest.fixture(scope="module")
def fresh_process(registry):
    """Load versions 1 and 2 in a new Python process started outside the checkout."""
    script = (_LOAD_SCRIPT.replace("PROMPTS", json.dumps(PROMPTS)).replace("LANGS", json.dumps(LANGS))
              .replace("MAX_NEW_TOKENS", str(MAX_NEW_TOKENS)))
    out = subprocess.run([sys.executable, "-c", script], cwd=registry.root.parent, env=_env(registry.uri),
                         capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    line = next(line for line in out.stdout.splitlines() if line.startswith("RESULT "))
    return json.loads(line[len("RESULT "):])


def test_logged_version_keeps_its_outputs_after_a_retrain(registry, fresh_process):
    assert fresh_process["v1"] == registry.original
    assert fresh_process["v1"] != registry.retrained
    # the model's own copy of cc_core ran (code_paths), not the checkout's
    assert "/models/m-" in fresh_process["code"] and fresh_process["code"].endswith("code/cc_core/__init__.py")


def test_tampered_by_reference_version_is_refused(registry, fresh_process):
    import mlflow

    from cc_core.io import file_sha256

    version = mlflow.MlflowClient(registry.uri).get_model_version("cc-test", "2")
    error = fresh_process["v2"]
    weights = registry.root / "models/cc/model.safetensors"
    assert error.startswith("ModelFilesError: registered model cc-test (run "), error
    assert f"logged model {version.tags['logged_model_id']}," in error and "weights by reference" in error
    assert version.tags["logged_model_id"] in version.source  # the id names this version's logged model
    # the first changed file in name order (every weight file of the retrain differs)
    changed = re.search(r": (/\S+): sha256 is ([0-9a-f]{64}), registered ([0-9a-f]{64}): ", error)
    assert changed, error
    assert Path(changed.group(1)).parent == weights.parent and changed.group(1).endswith(".safetensors")
    assert changed.group(2) == file_sha256(changed.group(1)) != changed.group(3)
    assert "the file changed after registration" in error
    assert version.tags["storage"] == "reference" and version.tags["checkpoint_sha256"] == registry.first


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _post(url: str, body: dict | str) -> tuple[int, dict]:
    data = body.encode() if isinstance(body, str) else json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=120) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read())


def test_champion_serves_over_http(registry, tmp_path):
    port = _free_port()
    log_file = tmp_path / "serve.log"
    with log_file.open("w") as log:
        server = subprocess.Popen(
            [str(BIN / "mlflow"), "models", "serve", "-m", "models:/cc-test@champion", "--env-manager", "local",
             "--host", "127.0.0.1", "--port", str(port), "--workers", "1"],
            cwd=tmp_path, env=_env(registry.uri), stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + 300
        while True:
            assert server.poll() is None, log_file.read_text()[-3000:]
            try:
                with urllib.request.urlopen(f"{base}/ping", timeout=2) as response:
                    if response.status == 200:
                        break
            except OSError:
                pass
            assert time.time() < deadline, "scoring server not up after 300 s: " + log_file.read_text()[-3000:]
            time.sleep(1)

        good = {"dataframe_split": {"columns": ["prompt", "lang"], "data": [list(p) for p in zip(PROMPTS, LANGS)]},
                "params": {"max_new_tokens": MAX_NEW_TOKENS}}
        status, body = _post(f"{base}/invocations", good)
        print(f"\nPOST /invocations {json.dumps(good, ensure_ascii=False)}\n→ HTTP {status} {json.dumps(body, ensure_ascii=False)}")
        assert status == 200 and body == {"predictions": registry.original}  # the champion, not the checkout

        status, body = _post(f"{base}/invocations", {"inputs": [{"prompt": PROMPTS[0], "lang": "fr"}],
                                                    "params": {"max_new_tokens": 3}})
        assert status == 200 and len(body["predictions"]) == 1
        assert registry.original[0].startswith(body["predictions"][0])  # greedy: a prefix of the 8-token answer

        status, body = _post(f"{base}/invocations", {"dataframe_split": {"columns": ["text"], "data": [["hi"]]}})
        print(f"no prompt column → HTTP {status} {json.dumps(body)[:300]}")
        assert status == 400 and body["error_code"] == "INVALID_PARAMETER_VALUE"
        assert "Model is missing inputs ['prompt']" in body["message"]

        status, body = _post(f"{base}/invocations", {"dataframe_split": {"columns": ["prompt"], "data": [[3]]}})
        assert status == 400 and body["error_code"] == "INVALID_PARAMETER_VALUE"
        assert "prompt 0 must be a string, got int 3" in body["message"]

        status, body = _post(f"{base}/invocations", {"dataframe_records": [{"prompt": "hi"}],
                                                    "params": {"max_new_tokens": "many"}})
        assert status == 400 and "max_new_tokens" in body["message"]

        status, body = _post(f"{base}/invocations", "not json")
        assert status == 400 and body["error_code"] == "BAD_REQUEST"

        status, body = _post(f"{base}/invocations", good)  # still serving after the bad requests
        assert status == 200 and body == {"predictions": registry.original}
    finally:
        if server.poll() is None:
            os.killpg(server.pid, signal.SIGTERM)
            try:
                server.wait(timeout=60)
            except subprocess.TimeoutExpired:
                os.killpg(server.pid, signal.SIGKILL)
                server.wait()
    assert server.returncode is not None
