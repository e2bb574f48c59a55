"""Registry versions that cannot change under you, and a champion that serves anywhere.

On a tiny CC checkpoint (2-layer random llama, a random Transform Matrix fitted "for" it):
register version 1 (weights logged into the artifact store, the default) and version 2 (by
reference), then retrain in place (models/cc and transform/ replaced by other weights), and check
(a) in a fresh process, version 1 still predicts its original outputs; (b) version 2 is refused,
naming the version and the changed file with both hashes; (c) `mlflow models serve` of the
champion answers POST /invocations in every input form, refuses malformed requests and requests
over a limit (prompts, characters, body size, max_new_tokens beyond the context, unknown params)
with a one-line HTTP 400/413 naming the limit, stops a request at its deadline, answers the next
request normally, and stops on SIGTERM; (d) the version pins every distribution of the
environment it was registered from.

    pytest -m integration tests/integration/test_registry_serving.py -s
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from types import SimpleNamespace

import pytest

from serving_helpers import served

pytestmark = pytest.mark.integration
BIN = Path(sys.executable).parent
PROMPTS = ["Quelle est la capitale du Kenya ?", "Was ist 2+2?"]
LANGS = ["fr", "de"]
MAX_NEW_TOKENS = 8
MAX_PROMPTS, MAX_CHARS, DEADLINE_S = 16, 2000, 4  # the serving limits registered with the test versions


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
    # save() writes transform/transform.json too (the record `cctune fit` leaves: the file's sha256)
    TransformMatrix(torch.randn(64, 64, generator=gen) * 0.3, None, {}, meta).save(root / "transform/transform.safetensors")
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
        f"register.log_weights={str(log_weights).lower()}", f"register.max_prompts={MAX_PROMPTS}",
        f"register.max_prompt_chars={MAX_CHARS}", f"register.request_timeout_s={DEADLINE_S}"])
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
    # issue 21, point 7: the error names the version (before: "registered model cc-test (run ...")
    assert error.startswith("ModelFilesError: registered model cc-test version 2 (run "), error
    assert f"logged model {version.tags['logged_model_id']}," in error and "weights by reference" in error
    assert version.tags["logged_model_id"] in version.source  # the id names this version's logged model
    # the first changed file in name order (every weight file of the retrain differs)
    changed = re.search(r": (/\S+): sha256 is ([0-9a-f]{64}), registered ([0-9a-f]{64}): ", error)
    assert changed, error
    assert Path(changed.group(1)).parent == weights.parent and changed.group(1).endswith(".safetensors")
    assert changed.group(2) == file_sha256(changed.group(1)) != changed.group(3)
    assert "the file changed after registration" in error
    assert version.tags["storage"] == "reference" and version.tags["checkpoint_sha256"] == registry.first


def _post(url: str, body: dict | str | bytes) -> tuple[int, dict]:
    data = body if isinstance(body, bytes) else body.encode() if isinstance(body, str) else json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=120) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read())


def _refused(status: int, body: dict, expected_status: int, *names: str) -> str:
    """An error the client sees: the status, one line naming the limit, no traceback, no server path."""
    message = body["message"]
    assert status == expected_status, (status, body)
    assert "stack_trace" not in body and set(body) <= {"error_code", "message", "sqlstate", "error_class"}, body
    assert "\n" not in message and "Traceback" not in message and not re.search(r"(^|[\s'(])/\w+/", message), message
    for name in names:
        assert name in message, (name, message)
    return message


def _words(seed: int, chars: int) -> str:
    import random

    rng = random.Random(seed)
    words = "la maison rouge der Hund läuft 東京 el río azul what is the capital of".split()
    text = ""
    while len(text) < chars:
        text += rng.choice(words) + " "
    return text[:chars].strip()


@pytest.fixture(scope="module")
def server(registry, tmp_path_factory):
    with served("models:/cc-test@champion", tmp_path_factory.mktemp("serve"), _env(registry.uri)) as running:
        yield running


def test_champion_serves_over_http(registry, server):
    url = server.url
    good = {"dataframe_split": {"columns": ["prompt", "lang"], "data": [list(p) for p in zip(PROMPTS, LANGS)]},
            "params": {"max_new_tokens": MAX_NEW_TOKENS}}
    status, body = _post(url, good)
    print(f"\nPOST /invocations {json.dumps(good, ensure_ascii=False)}\n→ HTTP {status} {json.dumps(body, ensure_ascii=False)}")
    assert status == 200 and body == {"predictions": registry.original}  # the champion, not the checkout

    status, body = _post(url, {"inputs": [{"prompt": PROMPTS[0], "lang": "fr"}], "params": {"max_new_tokens": 3}})
    assert status == 200 and len(body["predictions"]) == 1
    assert registry.original[0].startswith(body["predictions"][0])  # greedy: a prefix of the 8-token answer

    # a bare string, a list of strings, records and a dict of columns: the same model, the same answers
    status, as_list = _post(url, {"inputs": PROMPTS, "params": {"max_new_tokens": MAX_NEW_TOKENS}})
    assert status == 200 and len(as_list["predictions"]) == 2
    status, as_string = _post(url, {"inputs": PROMPTS[1], "params": {"max_new_tokens": MAX_NEW_TOKENS}})
    assert status == 200 and as_string["predictions"] == as_list["predictions"][1:]
    status, as_columns = _post(url, {"inputs": {"prompt": PROMPTS, "lang": LANGS},
                                     "params": {"max_new_tokens": MAX_NEW_TOKENS}})
    assert status == 200 and as_columns["predictions"] == registry.original

    refusals = [
        ({"dataframe_split": {"columns": ["text"], "data": [["hi"]]}}, 400, ["the input needs a 'prompt' column"]),
        ({"dataframe_split": {"columns": ["prompt"], "data": [[3]]}}, 400, ["prompt 0 must be a string, got int 3"]),
        ({"dataframe_records": [{"prompt": "hi"}], "params": {"max_new_tokens": "many"}}, 400, ["max_new_tokens"]),
        ("not json", 400, ["not valid JSON"]),
        ({"inputs": ["hi"], "params": {"temperature": 0.7}}, 400, ["unknown parameter(s) temperature"]),
        ({"inputs": ["hi", ""]}, 400, ["prompt 1 is empty"]),
        ({"inputs": ["hi"] * (MAX_PROMPTS + 1)}, 400, [f"limit is {MAX_PROMPTS} (max_prompts)"]),
        ({"inputs": ["hi"] * 10000}, 400, [f"10000 prompts in one request: the limit is {MAX_PROMPTS} (max_prompts)"]),
        ({"inputs": ["x" * (MAX_CHARS + 1)]}, 400, [f"{MAX_CHARS + 1} characters: the limit is {MAX_CHARS} "
                                                    "(max_prompt_chars)"]),
        ({"inputs": ["x" * 10_000_000]}, 413, ["the request body has", "(max_prompts x max_prompt_chars)"]),
        # the tiny model's context is 2048 tokens: 2030..2047 passed the old check and then failed in
        # prompt encoding with a traceback (8162..8191 on SmolLM2)
        ({"inputs": [PROMPTS[0]], "params": {"max_new_tokens": 2040}}, 400,
         ["params.max_new_tokens=2040 does not fit: prompt 0 takes", "2048 context tokens"]),
        ({"inputs": [PROMPTS[0]], "params": {"max_new_tokens": 2048}}, 400, ["does not fit the model's context"]),
    ]
    for request, expected, names in refusals:
        started = time.perf_counter()
        status, body = _post(url, request)
        message = _refused(status, body, expected, *names)
        print(f"{json.dumps(request)[:60]}... → HTTP {status} {message} ({time.perf_counter() - started:.2f} s)")

    status, body = _post(url, good)  # still serving after the bad requests
    assert status == 200 and body == {"predictions": registry.original}


def test_a_request_past_its_deadline_is_stopped_and_the_next_one_served(registry, server):
    """Within every limit but too much work: stopped at the registered deadline (not MLflow's 504 at
    60 s, with the generation going on and holding the model), and the next request is answered."""
    import concurrent.futures

    heavy = {"inputs": [_words(seed, 600) for seed in range(MAX_PROMPTS)], "params": {"max_new_tokens": 1400}}
    small = {"inputs": [PROMPTS[0]], "params": {"max_new_tokens": 3}}
    with concurrent.futures.ThreadPoolExecutor(2) as pool:
        started = time.perf_counter()
        first = pool.submit(_post, server.url, heavy)
        time.sleep(0.5)
        meanwhile = pool.submit(_post, server.url, small)  # waits for the model, within its own deadline
        status, body = first.result()
        heavy_s = time.perf_counter() - started
        waiting_status, waiting_body = meanwhile.result()
        waited_s = time.perf_counter() - started
    message = _refused(status, body, 400, f"ran past the deadline of {DEADLINE_S} s (request_timeout_s)")
    print(f"\nheavy request → HTTP {status} {message} after {heavy_s:.1f} s; the one sent meanwhile → "
          f"HTTP {waiting_status} after {waited_s:.1f} s")
    assert DEADLINE_S <= heavy_s < 30  # stopped at its deadline, long before MLflow's 60 s
    assert waiting_status == 200 or (waiting_status == 503 and "busy" in waiting_body["message"]), waiting_body
    assert waited_s < 2 * DEADLINE_S + 10
    started = time.perf_counter()
    status, body = _post(server.url, small)
    assert status == 200 and registry.original[0].startswith(body["predictions"][0])
    print(f"the next request → HTTP 200 in {time.perf_counter() - started:.2f} s")


def test_version_pins_its_whole_environment(registry):
    """requirements.txt: the serving packages, exact; constraints.txt: every distribution installed where
    it was registered, so nothing floats when a serving host builds the environment."""
    import importlib.metadata

    import mlflow

    client = mlflow.MlflowClient(registry.uri)
    version = client.get_model_version("cc-test", "1")
    location = client.get_logged_model(version.tags["logged_model_id"]).artifact_location
    folder = Path(location.removeprefix("file://"))
    requirements = (folder / "requirements.txt").read_text().split()
    constraints = dict(line.split("==") for line in (folder / "constraints.txt").read_text().split())
    assert "-c" in requirements and "constraints.txt" in requirements
    assert all("==" in r for r in requirements if not r.startswith("-") and r != "constraints.txt")
    installed = {d.metadata["Name"] for d in importlib.metadata.distributions() if d.metadata["Name"]}
    assert len(constraints) >= len(installed) - 1 > 100
    for name in ("mlflow", "torch", "sympy", "networkx", "SQLAlchemy", "setuptools"):
        key = next(k for k in constraints if k.lower() == name.lower())
        assert constraints[key] == importlib.metadata.version(name).split("+")[0], name
    config = json.loads(json.dumps(mlflow.models.Model.load(folder).flavors["python_function"]["config"]))
    assert (config["max_prompts"], config["max_prompt_chars"], config["request_timeout_s"]) == \
        (MAX_PROMPTS, MAX_CHARS, DEADLINE_S)
