"""The cluster's services started with the project's settings (tests/integration/services.py:
docker/compose.yaml, prefect-server.env, mlflow-auth.ini, minio-policy.json) let in only whom
they should: the Prefect server refuses a request without the auth string, a write without a CSRF
token and a foreign origin; MLflow's users do their part only; the project's S3 user reaches its
bucket only; wrong S3 credentials fail a DVC pull in one line that names the remote and the
credential variables, without printing a secret.

    pytest -m integration tests/integration/test_services.py -s
"""

from __future__ import annotations

import base64
import json
import subprocess
import sys
import urllib.error
import urllib.request

import pytest

from prefect_helpers import BIN, check, commit, run

pytestmark = pytest.mark.integration


def _status(url: str, method: str = "GET", headers: dict | None = None, body: dict | None = None):
    """(HTTP status, headers) of one request; an error status is an answer, not an exception."""
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(url, data=data, method=method, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, response.headers
    except urllib.error.HTTPError as err:
        return err.code, err.headers


def _basic(credentials: str) -> dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(credentials.encode()).decode()}


def test_prefect_server_refuses_no_auth_no_csrf_token_and_a_foreign_origin(services):
    prefect = services.prefect
    auth = _basic(prefect.auth_string)
    json_body = {"Content-Type": "application/json"}
    # no auth string, or a wrong one: refused (401; a write is refused first for its missing CSRF token);
    # the health probe stays open
    assert _status(f"{prefect.api}/admin/settings")[0] == 401
    assert _status(f"{prefect.api}/admin/settings", headers=_basic("admin:guess"))[0] == 401
    assert _status(f"{prefect.api}/flows/filter", "POST", json_body, {})[0] in (401, 403)
    assert _status(f"{prefect.api}/csrf-token?client=intruder")[0] == 401  # no token without the auth string
    assert _status(f"{prefect.api}/health")[0] == 200
    # the auth string without a CSRF token (what a form on another site could send): 403 for writes
    assert _status(f"{prefect.api}/flows/filter", "POST", {**json_body, **auth}, {})[0] == 403
    assert _status(f"{prefect.api}/admin/settings", headers=auth)[0] == 200
    assert prefect.post("/flows/filter", {}) is not None  # with the token (prefect_helpers fetches it)
    # CORS: a browser's preflight from a foreign origin is refused; the UI's origin is allowed
    ui_origin = prefect.url
    preflight = {"Access-Control-Request-Method": "POST", "Access-Control-Request-Headers": "authorization"}
    status, headers = _status(f"{prefect.api}/flows/filter", "OPTIONS", {**preflight, "Origin": "http://evil.example"})
    assert status == 400 and headers.get("access-control-allow-origin") is None, (status, dict(headers))
    status, headers = _status(f"{prefect.api}/flows/filter", "OPTIONS", {**preflight, "Origin": ui_origin})
    assert status == 200 and headers.get("access-control-allow-origin") == ui_origin
    status, headers = _status(f"{prefect.api}/admin/settings", headers={**auth, "Origin": "http://evil.example"})
    assert headers.get("access-control-allow-origin") is None  # a foreign page cannot read the answer
    # Prefect's own client and CLI: with PREFECT_API_AUTH_STRING they work, without it they are refused
    client = services.client_env()
    check([BIN / "prefect", "work-pool", "ls"], services.root, **client)
    refused = run([BIN / "prefect", "work-pool", "ls"], services.root,
                  **{**client, "PREFECT_API_AUTH_STRING": "admin:guess"})
    assert refused.returncode != 0 and "401" in refused.stdout + refused.stderr


def test_mlflow_users_do_their_part_only(services):
    """`pipeline` creates and registers; `serving` reads and loads but cannot move an alias or add a
    version; nobody gets in without a user."""
    code = r"""
import json, sys
import mlflow
import requests
from mlflow import MlflowClient
from mlflow.exceptions import MlflowException
client = MlflowClient()
def attempt(fn):
    try:
        fn()
        return "ok"
    except MlflowException as err:
        return err.error_code
    except requests.HTTPError as err:  # an artifact request (mlflow-artifacts:/ through the server)
        return f"HTTP {err.response.status_code}"
if sys.argv[1] == "pipeline":
    experiment = client.create_experiment("permissions-check")
    run = client.create_run(experiment)
    client.log_text(run.info.run_id, "hello", "note.txt")
    client.create_registered_model("permissions-check")
    version = client.create_model_version("permissions-check", f"runs:/{run.info.run_id}/note.txt", run.info.run_id)
    client.set_registered_model_alias("permissions-check", "champion", version.version)
    print(json.dumps({"run": run.info.run_id, "artifact_uri": run.info.artifact_uri}))
else:
    run_id = sys.argv[2]
    print(json.dumps({
        "read": mlflow.artifacts.load_text(f"runs:/{run_id}/note.txt"),
        "alias": attempt(lambda: client.set_registered_model_alias("permissions-check", "champion", "1")),
        "version": attempt(lambda: client.create_model_version("permissions-check", f"runs:/{run_id}/note.txt", run_id)),
        "write": attempt(lambda: client.log_text(run_id, "x", "other.txt")),
    }))
"""
    base = {key: value for key, value in services.client_env().items() if not key.startswith("AWS_")}  # no S3 keys
    made = check([sys.executable, "-c", code, "pipeline"], services.root, **{**base, **services.mlflow_env("pipeline")})
    made = json.loads(made.stdout.strip().splitlines()[-1])
    assert made["artifact_uri"].startswith("mlflow-artifacts:/")  # proxied by the server
    assert [key for key in services.s3.keys("mlflow/") if key.endswith("note.txt")]  # ... into the bucket
    seen = check([sys.executable, "-c", code, "serving", made["run"]], services.root,
                 **{**base, **services.mlflow_env("serving")})
    seen = json.loads(seen.stdout.strip().splitlines()[-1])
    assert seen == {"read": "hello", "alias": "PERMISSION_DENIED", "version": "PERMISSION_DENIED",
                    "write": "HTTP 403"}, seen
    assert _status(f"{services.mlflow.url}/api/2.0/mlflow/experiments/search?max_results=1")[0] == 401
    wrong = _basic("serving:guess")
    assert _status(f"{services.mlflow.url}/api/2.0/mlflow/experiments/search?max_results=1", headers=wrong)[0] == 401
    assert _status(f"{services.mlflow.url}/health")[0] == 200


def test_s3_project_user_reaches_its_bucket_only(services):
    from botocore.exceptions import ClientError

    s3 = services.s3
    admin = s3.client("s3", *s3.admin_keys)
    admin.create_bucket(Bucket="someone-else")
    worker = s3.client("s3", *s3.worker_keys)
    worker.put_object(Bucket=services.bucket, Key="dvc/probe", Body=b"1")
    assert worker.get_object(Bucket=services.bucket, Key="dvc/probe")["Body"].read() == b"1"
    worker.delete_object(Bucket=services.bucket, Key="dvc/probe")
    refused = {
        "another bucket": lambda: worker.list_objects_v2(Bucket="someone-else"),
        "write there": lambda: worker.put_object(Bucket="someone-else", Key="x", Body=b"1"),
        "list buckets": worker.list_buckets,
        "create a bucket": lambda: worker.create_bucket(Bucket="new-one"),
        "delete the bucket": lambda: worker.delete_bucket(Bucket=services.bucket),
        "change its policy": lambda: worker.put_bucket_policy(Bucket=services.bucket, Policy="{}"),
    }
    for what, call in refused.items():
        with pytest.raises(ClientError) as err:
            call()
        assert err.value.response["Error"]["Code"] in ("AccessDenied", "403"), what


def test_wrong_s3_credentials_fail_in_one_line_naming_the_remote_and_the_variables(services, tmp_path, monkeypatch):
    from flows import dvc_sync
    from flows.s3_errors import s3_reason

    project = tmp_path / "project"
    project.mkdir()
    (project / "README").write_text("a DVC project\n")
    commit(project, "project")
    client = services.client_env()
    dvc = [sys.executable, "-m", "dvc"]
    check([*dvc, "init", "-q"], project)
    (project / "data").mkdir()
    (project / "data" / "table.csv").write_text("a,b\n1,2\n")
    check([*dvc, "remote", "add", "-d", "cluster", f"s3://{services.bucket}/dvc"], project)
    check([*dvc, "add", "-q", "data"], project)
    check([*dvc, "push", "--remote", "cluster"], project, **client)
    subprocess.run(["git", "add", "-A"], cwd=project, check=True)
    for key, value in client.items():
        monkeypatch.setenv(key, value)
    wrong = {"the secret": {"AWS_SECRET_ACCESS_KEY": "not-the-secret-" + "x" * 24},
             "the key id": {"AWS_ACCESS_KEY_ID": "AKIANOTAKEY000000000"},
             "no keys": {"AWS_ACCESS_KEY_ID": None, "AWS_SECRET_ACCESS_KEY": None}}
    for case, change in wrong.items():
        subprocess.run(["rm", "-rf", str(project / ".dvc" / "cache"), str(project / "data")], check=True)
        for key, value in change.items():
            monkeypatch.delenv(key) if value is None else monkeypatch.setenv(key, value)
        with pytest.raises(dvc_sync.DvcError) as err:
            dvc_sync.pull(project, ["data"], "cluster")
        message = str(err.value)
        reason = s3_reason(f"s3://{services.bucket}/dvc", message)
        for text in (message, reason):
            assert text and "\n" not in text, (case, text)
            assert not any(secret in text for secret in services.secrets() + ["not-the-secret"]), (case, text)
        assert f"remote 'cluster' (s3://{services.bucket}/dvc)" in message, (case, message)
        assert "AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY" in reason, (case, reason)
        assert f"[{reason}]" in message, (case, message)  # the one line says what to check
        assert not (project / "data").exists()  # nothing half-pulled
        for key, value in client.items():
            monkeypatch.setenv(key, value)
    dvc_sync.pull(project, ["data"], "cluster")  # the right keys: the data comes back
    assert (project / "data" / "table.csv").read_text() == "a,b\n1,2\n"
