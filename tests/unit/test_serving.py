"""cc_core/serving.py and the pyfunc's predict: the input forms a served version accepts, its limits
(prompts, characters, max_new_tokens within the context, the deadline), and one-line refusals. The
real `mlflow models serve` round trip is tests/integration/test_registry_serving.py.

    pytest tests/unit/test_serving.py
"""

from __future__ import annotations

import json
import sys
import threading
import time

import numpy as np
import pandas as pd
import pytest
from mlflow.exceptions import MlflowException

from cc_core.serving import (
    Limits,
    ServingError,
    check_fits,
    check_params,
    check_prompts,
    check_request,
    install_request_guard,
    max_new_tokens,
    one_line,
    prompts_from,
)

LIMITS = Limits(max_prompts=4, max_prompt_chars=50, request_timeout_s=30)


@pytest.mark.parametrize(("given", "expected"), [
    ("Was ist 2+2?", (["Was ist 2+2?"], None)),
    (["a", "b"], (["a", "b"], None)),
    (np.array("a"), (["a"], None)),  # {"inputs": "a"} through MLflow's JSON parsing
    (np.array(["a", "b"]), (["a", "b"], None)),  # {"inputs": ["a", "b"]}
    (pd.DataFrame({"prompt": ["a", "b"], "lang": ["fr", None]}), (["a", "b"], ["fr", None])),
    (pd.DataFrame({"prompt": ["a"]}), (["a"], None)),
    ([{"prompt": "a", "lang": "de"}, {"prompt": "b"}], (["a", "b"], ["de", None])),
    ([{"prompt": np.array("a"), "lang": np.array("fr")}], (["a"], ["fr"])),
    ({"prompt": np.array(["a", "b"]), "lang": np.array(["fr", "de"])}, (["a", "b"], ["fr", "de"])),
    ({"prompt": ["a", "b"], "lang": "fr"}, (["a", "b"], ["fr", "fr"])),  # one language for all
    ({"prompt": "a"}, (["a"], None)),
])
def test_accepted_input_forms(given, expected):
    assert prompts_from(given) == expected


@pytest.mark.parametrize(("given", "message"), [
    (pd.DataFrame({"text": ["a"]}), "the input needs a 'prompt' column (got columns ['text'])"),
    (pd.DataFrame({"prompt": ["a"], "temperature": [1]}), "unknown column(s) temperature"),
    (pd.DataFrame({"prompt": [3]}), "prompt 0 must be a string, got int 3"),
    (pd.DataFrame({"prompt": [None]}), "prompt 0 is missing"),
    (np.array([1, 2]), "prompt 0 must be a string, got int 1"),
    ([["a", "b"]], "prompt 0 must be a string, got list ['a', 'b']"),
    ({"prompt": "a", "temperature": 0.5}, "unknown field(s) temperature"),
    ({"lang": "fr"}, "the input needs 'prompt'"),
    ([{"prompt": "a", "top_p": 1}], "record 0: unknown field(s) top_p"),
    (3, "unsupported input int"),
])
def test_refused_input_forms_name_the_problem(given, message):
    with pytest.raises(ServingError) as err:
        prompts_from(given)
    assert message in str(err.value) and "\n" not in str(err.value)
    assert err.value.get_http_status_code() == 400


@pytest.mark.parametrize(("prompts", "message"), [
    ([], "the input holds no prompt"),
    (["a"] * 5, "5 prompts in one request: the limit is 4 (max_prompts)"),
    (["a", ""], "prompt 1 is empty"),
    (["a", " \n\t"], "prompt 1 is empty"),
    (["x" * 51], "prompt 0 has 51 characters: the limit is 50 (max_prompt_chars)"),
])
def test_prompt_limits(prompts, message):
    with pytest.raises(ServingError, match=message.replace("(", r"\(").replace(")", r"\)")):
        check_prompts(prompts, None, LIMITS)


def test_prompts_at_the_limits_pass():
    check_prompts(["x" * 50] * 4, ["fr"] * 4, LIMITS)
    with pytest.raises(ServingError, match="2 languages for 3 prompts"):
        check_prompts(["a", "b", "c"], ["fr", "de"], LIMITS)


def test_unknown_params_are_refused_by_name():
    check_params(None)
    check_params({"max_new_tokens": 3})
    with pytest.raises(ServingError) as err:
        check_params({"max_new_tokens": 3, "temperature": 0.7, "top_p": 0.9})
    assert str(err.value) == "unknown parameter(s) temperature, top_p: this model takes max_new_tokens (greedy decoding)"


def test_max_new_tokens_bounds():
    assert max_new_tokens(None, 8, 2048) == 8 and max_new_tokens({"max_new_tokens": 3}, 8, 2048) == 3
    assert max_new_tokens({"max_new_tokens": 2047}, 8, 2048) == 2047
    for bad in (0, -1, 2.5, "x", True, 2048, 5000):
        with pytest.raises(ServingError):
            max_new_tokens({"max_new_tokens": bad}, 8, 2048)


@pytest.mark.parametrize("max_new", [8162, 8170, 8191])
def test_max_new_tokens_must_leave_room_for_the_prompt(max_new):
    """The 8162..8191 case of SmolLM2 (context 8192): a prompt of 31 tokens leaves room for 8161."""
    with pytest.raises(ServingError) as err:
        check_fits([12, 31, 20], max_new, 8192)
    assert str(err.value) == (f"params.max_new_tokens={max_new} does not fit: prompt 1 takes 31 of the model's "
                              "8192 context tokens, leaving room for 8161 new tokens")
    check_fits([12, 31, 20], 8161, 8192)


def test_deadline_stays_under_the_scoring_server_timeout(monkeypatch):
    monkeypatch.delenv("MLFLOW_SCORING_SERVER_REQUEST_TIMEOUT", raising=False)
    assert Limits(request_timeout_s=50).deadline_s() == 50
    monkeypatch.setenv("MLFLOW_SCORING_SERVER_REQUEST_TIMEOUT", "10")  # mlflow models serve -t 10
    assert Limits(request_timeout_s=50).deadline_s() == 9
    assert Limits(request_timeout_s=5).deadline_s() == 5


def test_limits_from_a_model_config():
    assert Limits.from_config({}) == Limits()  # a version registered before the limits existed
    assert Limits.from_config({"max_prompts": 2, "max_prompt_chars": 10, "request_timeout_s": 1}) == Limits(2, 10, 1.0)
    assert Limits(2, 10, 1).max_request_bytes == 2 * (10 * 12 + 256) + 65536


def test_one_line_drops_the_echoed_data_and_paths():
    message = ("Failed to predict data '   prompt\n0  hi\n1  there'. \nError: Invalid parameters found: "
               "{('max_new_tokens', 'cannot convert')}")
    assert one_line(message) == "Invalid parameters found: {('max_new_tokens', 'cannot convert')}"
    assert one_line("cannot read /srv/venv/lib/python3.11/site-packages/x.py\nTraceback ...") == "cannot read <path>"
    assert one_line("see http://h/x") == "see http://h/x"


def test_check_request():
    assert check_request(json.dumps({"inputs": ["a"], "params": {"max_new_tokens": 2}}).encode(), "application/json",
                         LIMITS) is None
    big = check_request(b"x" * (LIMITS.max_request_bytes + 1), "application/json", LIMITS)
    assert big.status == 413 and "the limit is" in json.loads(big.response)["message"]
    for body, message in [
        (b"not json", "the request body is not valid JSON: Expecting value (line 1, column 1)"),
        (b'["a"]', "the request body must be a JSON object"),
        (b'{"inputs": ["a"], "params": {"temperature": 1}}', "unknown parameter(s) temperature"),
        (b'{"inputs": ["a"], "params": [1]}', "params must be a JSON object, got list"),
        (b'{"inputs": ["a"], "stream": true}', "unknown field(s) stream in the request"),
        (b'{"prompt": "a", "temperature": 1}', "unknown field(s) temperature in the request"),
    ]:
        with pytest.raises(ServingError) as err:
            check_request(body, "application/json; charset=utf-8", LIMITS)
        assert str(err.value).startswith(message), str(err.value)
    assert check_request(b"prompt\na\n", "text/csv", LIMITS) is None


def test_guard_turns_every_error_into_one_line(monkeypatch):
    """The guard as `mlflow models serve` gets it: installed only while the scoring server app loads."""
    from mlflow.protos.databricks_pb2 import INVALID_PARAMETER_VALUE
    from mlflow.pyfunc import scoring_server

    calls = []

    def original(data, content_type, model, input_schema):
        calls.append(data)
        if data == b'{"inputs": ["mlflow"]}':
            raise MlflowException("Failed to predict data '  x\n0 y'. \nError: Invalid parameters found: x",
                                  error_code=INVALID_PARAMETER_VALUE)
        if data == b'{"inputs": ["ours"]}':
            error = ServingError("prompt 0 is empty")
            error.message = f"Failed to predict data 'ours'. \nError: {error.message}"  # as the server rewords it
            raise error
        if data == b'{"inputs": ["crash"]}':
            raise RuntimeError("CUDA out of memory at /opt/venv/lib/torch/x.py")
        return "ok"

    monkeypatch.setattr(scoring_server, "invocations", original)
    assert install_request_guard(LIMITS) is False  # not inside the scoring server: nothing patched
    assert scoring_server.invocations is original
    monkeypatch.setitem(sys.modules, "mlflow.pyfunc.scoring_server.app", object())
    assert install_request_guard(LIMITS) is True and install_request_guard(LIMITS) is True
    guarded = scoring_server.invocations
    assert guarded is not original and guarded.cc_tuning_guard
    assert guarded(b'{"inputs": ["a"]}', "application/json", None, None) == "ok"
    for body, status, message in [
        (b'{"inputs": ["a"], "params": {"temperature": 0.2}}', 400, "unknown parameter(s) temperature"),
        (b'{"inputs": ["mlflow"]}', 400, "Invalid parameters found: x"),
        (b'{"inputs": ["ours"]}', 400, "prompt 0 is empty"),
        (b'{"inputs": ["crash"]}', 500, "internal error while serving the request"),
    ]:
        with pytest.raises(ServingError) as err:
            guarded(body, "application/json", None, None)
        payload = json.loads(err.value.serialize_as_json())
        assert err.value.get_http_status_code() == status and payload["message"].startswith(message), payload
        assert "\n" not in payload["message"] and "/opt/" not in payload["message"] and "stack_trace" not in payload
    assert b'{"inputs": ["a"], "params": {"temperature": 0.2}}' not in calls  # refused before MLflow parsed it


# --- the pyfunc on a tiny model ------------------------------------------------------------------------

@pytest.fixture(scope="module")
def served():
    from cc_core.generate import Generator
    from cc_core.modeling.base import build_tiny
    from cc_core.pyfunc_model import CCTuningPyfunc

    model, tokenizer = build_tiny("llama")
    pyfunc = CCTuningPyfunc()
    pyfunc.generator = Generator(model, tokenizer, max_new_tokens=4, batch_size=2)
    pyfunc.context_len = 2048
    pyfunc.default_max_new_tokens = 4
    pyfunc.limits = Limits(max_prompts=8, max_prompt_chars=2000, request_timeout_s=30)
    pyfunc._lock = threading.Lock()
    return pyfunc


def test_predict_answers_every_input_form_alike(served):
    as_list = served.predict(None, ["Was ist 2+2?", "Hello"], {"max_new_tokens": 3})
    assert len(as_list) == 2 and all(isinstance(text, str) for text in as_list)
    assert served.predict(None, "Was ist 2+2?", {"max_new_tokens": 3}) == as_list[:1]
    assert served.predict(None, pd.DataFrame({"prompt": ["Was ist 2+2?", "Hello"]}), {"max_new_tokens": 3}) == as_list
    assert served.generator.max_new_tokens == 4 and served.generator.should_stop is None  # nothing leaks


def test_predict_refuses_a_prompt_that_leaves_no_room(served):
    with pytest.raises(ServingError, match=r"params.max_new_tokens=2040 does not fit: prompt 0 takes \d+ of the "
                                           r"model's 2048 context tokens"):
        served.predict(None, ["Was ist 2+2?"], {"max_new_tokens": 2040})


def test_predict_stops_at_the_deadline_and_frees_the_model(served):
    served.limits = Limits(max_prompts=8, max_prompt_chars=2000, request_timeout_s=0.5)
    slow_steps = []

    def slow(*args, **kwargs):  # every decoding step takes 0.2 s: 40 steps would take 8 s
        slow_steps.append(1)
        time.sleep(0.2)
        return original(*args, **kwargs)

    original = served.generator.decoder.forward
    served.generator.decoder.forward = slow
    try:
        started = time.monotonic()
        with pytest.raises(ServingError) as err:
            served.predict(None, ["Was ist 2+2?"] * 3, {"max_new_tokens": 40})
        elapsed = time.monotonic() - started
    finally:
        del served.generator.decoder.forward
        served.limits = Limits(max_prompts=8, max_prompt_chars=2000, request_timeout_s=30)
    assert str(err.value).startswith("the request ran past the deadline of 0.5 s (request_timeout_s) and was stopped")
    assert len(slow_steps) < 40 and elapsed < 5
    assert not served._lock.locked() and served.generator.should_stop is None
    assert len(served.predict(None, ["Hello"], {"max_new_tokens": 2})) == 1  # the next request is served


def test_a_request_waiting_past_its_deadline_is_told_the_model_is_busy(served):
    served.limits = Limits(max_prompts=8, max_prompt_chars=2000, request_timeout_s=0.2)
    served._lock.acquire()  # another request holds the model
    try:
        with pytest.raises(ServingError) as err:
            served.predict(None, ["Hello"], None)
    finally:
        served._lock.release()
        served.limits = Limits(max_prompts=8, max_prompt_chars=2000, request_timeout_s=30)
    assert err.value.get_http_status_code() == 503 and "busy" in str(err.value)


def test_generator_should_stop_hook():
    from cc_core.generate import GenerationStopped, Generator
    from cc_core.modeling.base import build_tiny

    model, tokenizer = build_tiny("llama")
    generator = Generator(model, tokenizer, max_new_tokens=6)
    asked = []
    generator.should_stop = lambda: asked.append(1) or len(asked) > 3
    with pytest.raises(GenerationStopped):
        generator.generate(["Hello", "Was ist 2+2?"])
    assert len(asked) == 4  # before the batch, then before each decoding step
    generator.should_stop = None
    assert len(generator.generate(["Hello"])) == 1
