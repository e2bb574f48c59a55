"""Credentials never written down: a tiny pipeline run (the Prefect flow, CC from training to
registration) against an MLflow server behind its basic-auth app, with the password in MLFLOW_TRACKING_URI
(http://user:password@host:port). Afterwards the password is in no file under the project, the
tracking store (backend database, artifacts, the auth database) or any log, in plain text or as the
base64 of a Basic authorization header; and the runs and the registered version are there.

    pytest -m integration tests/integration/test_credentials.py -s
"""

from __future__ import annotations

import base64
import os
import secrets
import shutil
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from serving_helpers import stop_group

pytestmark = pytest.mark.integration
REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
USER = "pipeline-admin"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _env(**extra) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "PREFECT_API"))}
    env.update(PATH=f"{BIN}{os.pathsep}{env['PATH']}", DO_NOT_TRACK="1", MLFLOW_DISABLE_TELEMETRY="true",
               DVC_NO_ANALYTICS="1", TOKENIZERS_PARALLELISM="false", HF_HUB_OFFLINE="1", **extra)
    return env


def _copy_project(root: Path) -> None:
    """The working tree (tracked + untracked, not ignored) as a fresh git repository, tiny profile."""
    files = subprocess.run(["git", "ls-files", "-co", "--exclude-standard", "-z"], cwd=REPO, capture_output=True,
                           text=True, check=True).stdout.split("\0")
    for name in filter(None, files):
        source = REPO / name
        if source.is_file():
            (root / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, root / name)
    for path in ("metrics", "reports/summary.md", "reports/summary.csv", "dvc.lock"):
        target = root / path
        shutil.rmtree(target, ignore_errors=True) if target.is_dir() else target.unlink(missing_ok=True)
    # tracking.on_unavailable=fail: a store that refused the credentials would stop the run, not skip tracking
    text = (root / "params.tiny.yaml").read_text()
    assert "  on_unavailable: skip" in text
    (root / "params.yaml").write_text(text.replace("  on_unavailable: skip", "  on_unavailable: fail", 1))
    for cmd in (["git", "init", "-q"], ["git", "add", "-A"],
                ["git", "-c", "user.email=t@t", "-c", "user.name=t", "commit", "-qm", "tiny"]):
        subprocess.run(cmd, cwd=root, check=True)


def _status(url: str, auth: str | None = None) -> int:
    request = urllib.request.Request(url, headers={"Authorization": f"Basic {auth}"} if auth else {})
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status
    except urllib.error.HTTPError as err:
        return err.code


@pytest.fixture(scope="module")
def auth_server(tmp_path_factory):
    """`mlflow server --app-name basic-auth`, its stores and log outside the project."""
    store = tmp_path_factory.mktemp("auth-store")
    password = "pw-" + secrets.token_hex(12)
    config = store / "basic_auth.ini"
    config.write_text(f"[mlflow]\ndefault_permission = READ\ndatabase_uri = sqlite:///{store}/basic_auth.db\n"
                      f"admin_username = {USER}\nauthorization_function = "
                      "mlflow.server.auth:authenticate_request_basic_auth\n")
    port = _free_port()
    log = store / "server.log"
    env = _env(MLFLOW_AUTH_CONFIG_PATH=str(config), MLFLOW_AUTH_ADMIN_PASSWORD=password,
               MLFLOW_FLASK_SERVER_SECRET_KEY=secrets.token_hex(16))
    with log.open("w") as out:
        proc = subprocess.Popen(
            [str(BIN / "mlflow"), "server", "--app-name", "basic-auth", "--host", "127.0.0.1", "--port", str(port),
             "--backend-store-uri", f"sqlite:///{store}/mlflow.db", "--artifacts-destination", str(store / "artifacts"),
             "--workers", "1"], cwd=store, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + 180
        while _status_or_none(f"{base}/health") != 200:
            assert proc.poll() is None, log.read_text()[-3000:]
            assert time.time() < deadline, "basic-auth server not up: " + log.read_text()[-3000:]
            time.sleep(1)
        yield {"base": base, "port": port, "password": password, "store": store, "log": log}
    finally:
        stop_group(proc)


def _status_or_none(url: str) -> int | None:
    try:
        return _status(url)
    except OSError:
        return None


def test_pipeline_with_a_credentialed_tracking_uri_writes_no_password(auth_server, tmp_path):
    password, base = auth_server["password"], auth_server["base"]
    basic = base64.b64encode(f"{USER}:{password}".encode()).decode()
    search = f"{base}/api/2.0/mlflow/experiments/search?max_results=5"
    assert _status(search) == 401 and _status(search, basic) == 200  # the server refuses anonymous clients

    project = tmp_path / "cc-tuning"
    _copy_project(project)
    uri = f"http://{USER}:{password}@127.0.0.1:{auth_server['port']}"
    logs = tmp_path / "logs"
    logs.mkdir()
    started = time.perf_counter()
    # the flow with the cc method only: every stage that logs to MLflow (train, fit, eval, report,
    # register) runs, in half the time of the whole repro
    with (logs / "flow.out").open("w") as out, (logs / "flow.err").open("w") as err:
        flow = subprocess.run([sys.executable, "-m", "flows.pipeline", "--methods", "cc"], cwd=project, stdout=out,
                              stderr=err, timeout=1800, env=_env(MLFLOW_TRACKING_URI=uri))
    print(f"\ntiny pipeline (cc) against the basic-auth server: {time.perf_counter() - started:.0f} s")
    assert flow.returncode == 0, (logs / "flow.err").read_text()[-3000:] + (logs / "flow.out").read_text()[-3000:]

    # the runs and the version are in the authenticated store
    import mlflow

    os.environ["MLFLOW_TRACKING_USERNAME"], os.environ["MLFLOW_TRACKING_PASSWORD"] = USER, password
    try:
        client = mlflow.MlflowClient(base)
        runs = client.search_runs([e.experiment_id for e in client.search_experiments()])
        versions = client.search_model_versions()
    finally:
        os.environ.pop("MLFLOW_TRACKING_USERNAME")
        os.environ.pop("MLFLOW_TRACKING_PASSWORD")
    names = {run.info.run_name for run in runs}
    assert {"train-cc"} <= names, names
    assert versions and versions[0].tags["checkpoint_sha256"]

    # nowhere on disk: the project (outputs, dvc.lock, .dvc/, the checkpoints' run file, models/, metrics/, reports/),
    # the tracking store (backend database, artifacts with the registered model config, auth database), the logs
    needles = [password.encode(), basic.encode()]
    searched, found = 0, []
    for root in (project, auth_server["store"], logs):
        for path in root.rglob("*"):
            if path.is_file() and not path.is_symlink():
                searched += 1
                data = path.read_bytes()
                found += [str(path) for needle in needles if needle in data]
    print(f"searched {searched} files for the password: found in {len(found)}")
    assert searched > 50 and found == [], found
