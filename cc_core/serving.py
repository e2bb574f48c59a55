"""What a served CC-Tuning version accepts, and how it says no (used by cc_core/pyfunc_model.py).

Input: one string, a list of strings, a list of ``{"prompt", "lang"}`` records, a dict
``{"prompt": ..., "lang": ...}``, or a DataFrame with a ``prompt`` column (and an optional ``lang``).
Param: ``max_new_tokens`` only (greedy decoding has no temperature).

    curl -s 127.0.0.1:5000/invocations -H 'Content-Type: application/json' \\
      -d '{"inputs": ["Quelle est la capitale du Kenya ?"], "params": {"max_new_tokens": 16}}'

Limits (the version's model config, from ``register.*`` at registration; ``Limits``): prompts per
request, characters per prompt, a request body of at most what those allow, ``max_new_tokens``
within the context left after the longest prompt, and a deadline per request after which generation
stops (checked between batches and between decoding steps). A request over a limit is an HTTP 400
naming the limit (a body over its size, 413); a request still waiting for the model at its deadline
is a 503. Every error is one line: no traceback, no server path.

MLflow's scoring server (3.17) puts the request's data and a newline in front of a model's error
message, turns any other exception into a traceback, and drops parameters the signature does not
declare before the model sees them. When ``mlflow models serve`` loads this model,
``install_request_guard`` wraps the server's ``invocations`` so that unknown parameters are refused,
the body size is checked before anything is parsed twice, and every error leaves as one line.
"""

from __future__ import annotations

import json
import logging
import math
import os
import re
import sys
from dataclasses import dataclass

from mlflow.exceptions import MlflowException
from mlflow.protos import databricks_pb2

log = logging.getLogger(__name__)
PARAMS = ("max_new_tokens",)  # what predict takes; anything else is refused, never silently ignored
BODY_KEYS = {"inputs", "instances", "dataframe_split", "dataframe_records", "params",
             "prompt", "lang", *PARAMS}  # the last three: MLflow's unified LLM form {"prompt": ..., "max_new_tokens": ...}
JSON_BYTES_PER_CHAR = 12  # the most one character can take in JSON (an escaped surrogate pair: \\ud83d\\ude00)
SERVER_TIMEOUT_SHARE = 0.9  # the deadline stays under MLflow's own request timeout, so it answers first


@dataclass(frozen=True)
class Limits:
    max_prompts: int = 64
    max_prompt_chars: int = 8000
    request_timeout_s: float = 50.0

    @classmethod
    def from_config(cls, config: dict) -> Limits:
        """The version's limits (a version registered before they existed gets the defaults)."""
        defaults = cls()
        return cls(int(config.get("max_prompts", defaults.max_prompts)),
                   int(config.get("max_prompt_chars", defaults.max_prompt_chars)),
                   float(config.get("request_timeout_s", defaults.request_timeout_s)))

    @property
    def max_request_bytes(self) -> int:
        """The largest body the prompt limits allow (every character escaped), plus room for the rest."""
        return self.max_prompts * (self.max_prompt_chars * JSON_BYTES_PER_CHAR + 256) + 65536

    def deadline_s(self) -> float:
        """``request_timeout_s``, or less under a scoring server that gives up sooner (``mlflow models
        serve -t``): the model must answer before the server's 504, or abandoned work holds the model."""
        server = os.environ.get("MLFLOW_SCORING_SERVER_REQUEST_TIMEOUT")
        try:
            return min(self.request_timeout_s, SERVER_TIMEOUT_SHARE * float(server)) if server else self.request_timeout_s
        except ValueError:
            return self.request_timeout_s


class ServingError(MlflowException):
    """A refused request: one line for the client (``one_line`` survives the server's rewording)."""

    def __init__(self, message: str, error_code: str = "INVALID_PARAMETER_VALUE") -> None:
        super().__init__(message, error_code=getattr(databricks_pb2, error_code))
        self.one_line = message


def bad_request(message: str) -> ServingError:
    return ServingError(message)  # INVALID_PARAMETER_VALUE: the scoring server answers 400


# --- the input ----------------------------------------------------------------------------------------

def _plain(value):
    """Python values for what MLflow's JSON parsing makes numpy (a string array, a 0-d array, np.str_)."""
    if hasattr(value, "tolist") and not isinstance(value, str):
        return value.tolist()
    return value


def _text(value, what: str, optional: bool = False):
    value = _plain(value)
    if value is None or (isinstance(value, float) and math.isnan(value)):
        if optional:
            return None
        raise bad_request(f"{what} is missing")
    if not isinstance(value, str):
        shown = repr(value) if len(repr(value)) <= 40 else repr(value)[:37] + "..."
        raise bad_request(f"{what} must be a string, got {type(value).__name__} {shown}")
    return str(value)


def _strings(values, what: str, optional: bool = False) -> list:
    values = _plain(values)
    if isinstance(values, str) or values is None:
        values = [values]
    if not isinstance(values, list):
        raise bad_request(f"{what} must be a string or a list of strings, got {type(values).__name__}")
    return [_text(v, f"{what} {i}", optional) for i, v in enumerate(values)]


def prompts_from(model_input) -> tuple[list[str], list[str | None] | None]:
    """(prompts, languages or None) from any accepted input form; anything else is a 400."""
    if hasattr(model_input, "columns"):  # a DataFrame
        if "prompt" not in model_input.columns:
            raise bad_request(f"the input needs a 'prompt' column (got columns {[str(c) for c in model_input.columns]})")
        unknown = sorted(str(c) for c in model_input.columns if c not in ("prompt", "lang"))
        if unknown:
            raise bad_request(f"unknown column(s) {', '.join(unknown)}: the input takes 'prompt' and 'lang'")
        prompts = _strings(model_input["prompt"].tolist(), "prompt")
        langs = _strings(model_input["lang"].tolist(), "lang", optional=True) if "lang" in model_input.columns else None
        return prompts, langs
    if isinstance(model_input, dict):
        unknown = sorted(str(k) for k in model_input if k not in ("prompt", "prompts", "lang", *PARAMS))
        if unknown:
            raise bad_request(f"unknown field(s) {', '.join(unknown)}: the input takes 'prompt' and 'lang'")
        if "prompt" not in model_input and "prompts" not in model_input:
            raise bad_request("the input needs 'prompt': a string or a list of strings")
        prompts = _strings(model_input.get("prompt", model_input.get("prompts")), "prompt")
        langs = model_input.get("lang")
        langs = None if langs is None else _strings(langs, "lang", optional=True)
        if langs is not None and len(langs) == 1 and len(prompts) > 1:
            langs = langs * len(prompts)  # one language for every prompt
        return prompts, langs
    model_input = _plain(model_input)
    if isinstance(model_input, list) and model_input and all(isinstance(r, dict) for r in model_input):
        for i, record in enumerate(model_input):
            unknown = sorted(str(k) for k in record if k not in ("prompt", "lang"))
            if unknown:
                raise bad_request(f"record {i}: unknown field(s) {', '.join(unknown)}: records take 'prompt' and 'lang'")
        return ([_text(r.get("prompt"), f"prompt {i}") for i, r in enumerate(model_input)],
                [_text(r.get("lang"), f"lang {i}", optional=True) for i, r in enumerate(model_input)])
    if isinstance(model_input, (str, list)):
        return _strings(model_input, "prompt"), None
    raise bad_request(f"unsupported input {type(model_input).__name__}: send a string, a list of strings "
                      "or a DataFrame with a 'prompt' column")


def check_prompts(prompts: list[str], langs: list | None, limits: Limits) -> None:
    """Count, emptiness and length of every prompt, before anything is tokenised."""
    if not prompts:
        raise bad_request("the input holds no prompt")
    if len(prompts) > limits.max_prompts:
        raise bad_request(f"{len(prompts)} prompts in one request: the limit is {limits.max_prompts} "
                          "(max_prompts); send them in several requests")
    if langs is not None and len(langs) != len(prompts):
        raise bad_request(f"{len(langs)} languages for {len(prompts)} prompts: give one per prompt, or one for all")
    for i, prompt in enumerate(prompts):
        if not prompt.strip():
            raise bad_request(f"prompt {i} is empty")
        if len(prompt) > limits.max_prompt_chars:
            raise bad_request(f"prompt {i} has {len(prompt)} characters: the limit is {limits.max_prompt_chars} "
                              "(max_prompt_chars)")


def check_params(params: dict | None) -> None:
    unknown = sorted(str(k) for k in (params or {}) if k not in PARAMS)
    if unknown:
        raise bad_request(f"unknown parameter(s) {', '.join(unknown)}: this model takes {', '.join(PARAMS)} "
                          "(greedy decoding)")


def max_new_tokens(params: dict | None, default: int, context_len: int | None) -> int:
    """``params.max_new_tokens``: a positive integer that leaves room for at least one prompt token."""
    value = (params or {}).get("max_new_tokens", default)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value != int(value) or value < 1:
        raise bad_request(f"params.max_new_tokens must be a positive integer, got {value!r}")
    value = int(value)
    if context_len and value > context_len - 1:
        raise bad_request(f"params.max_new_tokens={value} does not fit the model's context of {context_len} tokens")
    return value


def check_fits(prompt_tokens: list[int], max_new: int, context_len: int | None) -> None:
    """The longest prompt (as it will be encoded) and ``max_new`` new tokens fit the context together."""
    if not context_len or not prompt_tokens:
        return
    longest = max(range(len(prompt_tokens)), key=prompt_tokens.__getitem__)
    if prompt_tokens[longest] + max_new > context_len:
        room = context_len - prompt_tokens[longest]
        raise bad_request(f"params.max_new_tokens={max_new} does not fit: prompt {longest} takes "
                          f"{prompt_tokens[longest]} of the model's {context_len} context tokens, leaving room "
                          f"for {max(room, 0)} new tokens")


# --- the scoring server's error path ------------------------------------------------------------------

_ABSOLUTE_PATH = re.compile(r"(?<![\w:/])/(?:[\w.\-]+/)+[\w.\-]*")


def one_line(message: str) -> str:
    """An error message as one line, without the data MLflow echoes or any absolute path."""
    text = str(message)
    if "\nError: " in text:  # "Failed to predict data '<the whole input>'. \nError: <the reason>"
        text = text.rsplit("\nError: ", 1)[1]
    text = next((line.strip() for line in text.splitlines() if line.strip()), "the request was refused")
    text = _ABSOLUTE_PATH.sub("<path>", text)
    return text if len(text) <= 300 else text[:297] + "..."


def check_request(data, content_type: str | None, limits: Limits):
    """What the guard checks before MLflow parses the body: its size, its JSON, unknown fields and params.
    Returns a ready response (413) or None; raises ServingError for a 400."""
    # why: the scoring server (Flask/FastAPI app) loads only under `mlflow models serve`
    from mlflow.pyfunc.scoring_server import InvocationsResponse

    size = len(data or b"")
    if size > limits.max_request_bytes:
        body = {"error_code": "BAD_REQUEST", "message": f"the request body has {size} bytes: the limit is "
                f"{limits.max_request_bytes} (max_prompts x max_prompt_chars)"}
        return InvocationsResponse(json.dumps(body), 413, "application/json")
    if (content_type or "").split(";")[0].strip() != "application/json":
        return None  # CSV and Parquet carry no params; MLflow answers other types with a one-line 415
    try:
        body = json.loads(data)
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        where = f" (line {err.lineno}, column {err.colno})" if isinstance(err, json.JSONDecodeError) else ""
        raise bad_request(f"the request body is not valid JSON: {getattr(err, 'msg', 'not UTF-8')}{where}") from None
    if not isinstance(body, dict):
        raise bad_request("the request body must be a JSON object: {\"inputs\": [...], \"params\": {...}} "
                          "or {\"dataframe_split\": ...}")
    unknown = sorted(k for k in body if k not in BODY_KEYS)
    if unknown:
        raise bad_request(f"unknown field(s) {', '.join(unknown)} in the request: it takes inputs, instances, "
                          "dataframe_split or dataframe_records, and params")
    params = body.get("params")
    if params is not None and not isinstance(params, dict):
        raise bad_request(f"params must be a JSON object, got {type(params).__name__}")
    check_params(params)
    return None


def install_request_guard(limits: Limits) -> bool:
    """Wrap the scoring server's ``invocations`` (only when ``mlflow models serve`` is loading this
    model). True when the guard is in place."""
    if "mlflow.pyfunc.scoring_server.app" not in sys.modules:
        return False  # loaded by mlflow.pyfunc.load_model in some process: no server to guard
    # why: the scoring server (Flask/FastAPI app) loads only under `mlflow models serve`
    from mlflow.pyfunc import scoring_server

    original = getattr(scoring_server, "invocations", None)
    if original is None:
        log.warning("mlflow.pyfunc.scoring_server has no invocations(): requests are served unguarded")
        return False
    if getattr(original, "cc_tuning_guard", False):
        return True

    def guarded(data, content_type, model, input_schema):
        try:
            return check_request(data, content_type, limits) or original(data, content_type, model, input_schema)
        except ServingError as err:
            raise ServingError(err.one_line, _code_name(err)) from None
        except MlflowException as err:  # MLflow's own refusal (a parameter of the wrong type, ...)
            raise ServingError(one_line(err.message), _code_name(err)) from None
        except Exception:  # noqa: BLE001 - the client gets one line, the server's log the traceback
            log.exception("unexpected error while serving a request")
            raise ServingError("internal error while serving the request (the server's log has the details)",
                               "INTERNAL_ERROR") from None

    guarded.cc_tuning_guard = True
    scoring_server.invocations = guarded
    return True


def _code_name(err: MlflowException) -> str:
    code = err.error_code
    return code if isinstance(code, str) and code else "BAD_REQUEST"
