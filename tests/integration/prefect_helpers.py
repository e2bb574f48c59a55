"""Helpers for the integration tests that run real Prefect servers and workers (test_cluster.py,
test_prefect_ui.py, services.py): a copy of the project, a server on a loopback port, workers whose
whole process tree can be killed, and the server's REST API."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent


def env(**extra) -> dict[str, str]:
    out = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_TRACKING", "PREFECT_"))}
    out.update({"PATH": f"{BIN}{os.pathsep}{out['PATH']}", "DO_NOT_TRACK": "1", "MLFLOW_DISABLE_TELEMETRY": "true",
                "PREFECT_SERVER_ANALYTICS_ENABLED": "false", "DVC_NO_ANALYTICS": "1", "HF_HUB_OFFLINE": "1", **extra})
    return out


def run(cmd, cwd, timeout=900, **extra) -> subprocess.CompletedProcess:
    return subprocess.run([str(c) for c in cmd], cwd=cwd, env=env(**extra), capture_output=True, text=True,
                          timeout=timeout)


def check(cmd, cwd, timeout=900, **extra) -> subprocess.CompletedProcess:
    out = run(cmd, cwd, timeout, **extra)
    assert out.returncode == 0, f"{' '.join(map(str, cmd))}: {out.stdout[-3000:]}{out.stderr[-3000:]}"
    return out


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def copy_project(root: Path, params: str | None = "params.tiny.yaml") -> Path:
    """The working tree (tracked + untracked, not ignored) as a fresh git repo with ``params`` as params.yaml
    (None: params.yaml and dvc.lock as they are, as a clone has them)."""
    files = subprocess.run(["git", "ls-files", "-co", "--exclude-standard", "-z"], cwd=REPO, capture_output=True,
                           text=True, check=True).stdout.split("\0")
    for name in filter(None, files):
        source = REPO / name
        if source.is_file():
            (root / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, root / name)
    for path in ("metrics", "reports/summary.md", "reports/summary.csv", "reports/summary.json", "reports/scores.json",
                 *(["dvc.lock"] if params else [])):
        target = root / path
        shutil.rmtree(target, ignore_errors=True) if target.is_dir() else target.unlink(missing_ok=True)
    if params:
        shutil.copy(root / params, root / "params.yaml")
    commit(root, "project")
    return root


def commit(root: Path, message: str) -> None:
    for cmd in (["git", "init", "-q"], ["git", "add", "-A"],
                ["git", "-c", "user.email=t@t", "-c", "user.name=t", "commit", "-qm", message]):
        subprocess.run(cmd, cwd=root, check=True, capture_output=True)


class PrefectServer:
    """``prefect server start`` on a loopback port, with its own PREFECT_HOME and the server settings
    ``server_env`` (tests/integration/services.py gives compose's: PostgreSQL, the auth string, CSRF
    protection, CORS). With an auth string the REST helpers below authenticate, and fetch a CSRF token
    for writes when CSRF protection is on."""

    def __init__(self, home: Path, server_env: dict[str, str], port: int | None = None,
                 command: list[str] | None = None):
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.api = f"{self.url}/api"
        self.home = home
        self.log = home.parent / f"{home.name}-server.log"
        home.mkdir(parents=True, exist_ok=True)
        self.auth_string = server_env.get("PREFECT_SERVER_API_AUTH_STRING")
        self._csrf: dict[str, str] | None = None
        self.command = command or [str(BIN / "prefect"), "server", "start", "--host", "127.0.0.1", "--port",
                                   str(self.port)]
        self._env = env(PREFECT_HOME=str(home), **server_env)
        self.proc = None
        self.start()

    def start(self) -> None:
        self._out = open(self.log, "a")
        self.proc = subprocess.Popen(self.command, cwd=self.home.parent, stdout=self._out, env=self._env,
                                     stderr=subprocess.STDOUT, start_new_session=True)

    def client_env(self, **extra) -> dict[str, str]:
        auth = {"PREFECT_API_AUTH_STRING": self.auth_string} if self.auth_string else {}
        return {"PREFECT_HOME": str(self.home), "PREFECT_API_URL": self.api, **auth, **extra}

    def wait_healthy(self, timeout: float = 180) -> None:
        deadline = time.time() + timeout
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"prefect server exited with {self.proc.returncode}: {self.log.read_text()[-3000:]}")
            try:
                with urllib.request.urlopen(f"{self.api}/health", timeout=2) as response:
                    if response.status == 200:
                        return
            except OSError:
                time.sleep(0.5)
        raise TimeoutError(f"{self.api}/health not healthy after {timeout} s")

    def _headers(self, write: bool = False) -> dict[str, str]:
        import base64

        headers = {"Content-Type": "application/json"}
        if self.auth_string:
            headers["Authorization"] = "Basic " + base64.b64encode(self.auth_string.encode()).decode()
        if write and self._env.get("PREFECT_SERVER_API_CSRF_PROTECTION_ENABLED", "").lower() == "true":
            if self._csrf is None:
                client = "cc-tuning-tests"
                request = urllib.request.Request(f"{self.api}/csrf-token?client={client}", headers=headers)
                with urllib.request.urlopen(request, timeout=30) as response:
                    self._csrf = {"Prefect-Csrf-Token": json.loads(response.read())["token"],
                                  "Prefect-Csrf-Client": client}
            headers.update(self._csrf)
        return headers

    def post(self, path: str, body: dict | None = None):
        request = urllib.request.Request(f"{self.api}{path}", data=json.dumps(body or {}).encode(),
                                         headers=self._headers(write=True), method="POST")
        with urllib.request.urlopen(request, timeout=30) as response:
            return json.loads(response.read() or "null")

    def get(self, path: str):
        request = urllib.request.Request(f"{self.api}{path}", headers=self._headers())
        with urllib.request.urlopen(request, timeout=30) as response:
            return json.loads(response.read() or "null")

    def flow_runs(self, **flow_run_filter) -> list[dict]:
        return self.post("/flow_runs/filter", {"flow_runs": flow_run_filter, "limit": 200})

    def stop(self) -> None:
        stop(self.proc)
        self._out.close()


class Worker:
    """``prefect worker start`` in a checkout of its own (a node), in a session of its own."""

    def __init__(self, server: PrefectServer, checkout: Path, pool: str, name: str, *extra_args: str, **extra_env):
        self.name = name
        self.checkout = checkout
        self.log = checkout.parent / f"{name}.log"
        self._out = open(self.log, "w")
        self.proc = subprocess.Popen(
            [str(BIN / "prefect"), "worker", "start", "--pool", pool, "--name", name, *extra_args], cwd=checkout,
            # extra_env: e.g. the node's S3 and MLflow settings; the worker's own Prefect home wins
            env=env(**{**extra_env, **server.client_env(PREFECT_HOME=str(checkout.parent / f"{name}-prefect-home"),
                                                        CC_TUNING_HOME=str(checkout),
                                                        PREFECT_WORKER_QUERY_SECONDS="2")}),
            stdout=self._out, stderr=subprocess.STDOUT, start_new_session=True)

    def kill_node(self) -> list[int]:
        """SIGKILL the worker and every process it started (its flow runs run in sessions of their
        own, so a process-group kill would miss them): what a node that dies looks like."""
        import psutil

        worker = psutil.Process(self.proc.pid)
        worker.send_signal(signal.SIGSTOP)  # no new children while the tree is collected
        tree = [worker, *worker.children(recursive=True)]
        for proc in tree:
            try:
                proc.send_signal(signal.SIGSTOP)
            except psutil.NoSuchProcess:
                pass
        tree = {p.pid: p for p in [worker, *worker.children(recursive=True), *tree[1:]]}
        for proc in tree.values():
            try:
                proc.send_signal(signal.SIGKILL)
            except psutil.NoSuchProcess:
                pass
        self.proc.wait(timeout=30)
        self._out.close()
        return sorted(tree)

    def stop(self) -> None:
        """SIGINT the worker; then end whatever it started that is still running."""
        import psutil

        try:
            children = psutil.Process(self.proc.pid).children(recursive=True)
        except psutil.NoSuchProcess:
            children = []
        stop(self.proc)
        for child in children:
            try:
                child.kill()
            except psutil.NoSuchProcess:
                pass
        if not self._out.closed:
            self._out.close()


def stop(proc: subprocess.Popen, sig=signal.SIGINT, timeout: float = 30) -> None:
    if proc.poll() is None:
        proc.send_signal(sig)
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL) if proc.pid == os.getpgid(proc.pid) else proc.kill()
            proc.wait()
