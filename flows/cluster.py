"""Prefect set-up: one machine in one command, or a server for cluster runs; the workers' pull step.

    python -m flows.cluster local       # one machine: server (if none answers), pool `local`, deployments, a worker
    python -m flows.cluster stop        # stops the worker and the server that `local` started

``local`` works from the checkout's root. It uses the server at ``PREFECT_API_URL`` (default
http://127.0.0.1:4200/api) and starts one there (``prefect server start``, in the background, log in
.prefect/server.log) if none answers and the address is this machine's; creates the process work
pool ``local``; registers prefect.yaml's one-machine deployments (``cc-tuning-pipeline/local-tiny``,
``cc-tuning-eval-job/local``); and starts a worker for the pool with ``CC_TUNING_HOME`` set to this
checkout (log in .prefect/worker.log) unless one is online. Running it again starts nothing twice.

For cluster runs (the pipeline's ``deployment`` eval backend), on the services host:

    export PREFECT_API_URL=http://<server>:4200/api
    python -m flows.cluster setup --pool gpu --result-storage s3://cc-tuning/prefect-results \\
        --endpoint-url http://127.0.0.1:9000          # MinIO of docker/compose.yaml
    python -m flows.cluster setup --pool local --result-storage /srv/shared/prefect-results

It creates the process work pool (if missing) and makes a result storage that every node can
read the server's default: evaluation jobs return their predictions and scores as persisted
flow-run results, which the pipeline run (on another node) reads back. A local path suits one
machine (or a shared filesystem); ``s3://`` needs s3fs (installed with dvc-s3) and takes the
credentials from each node's environment (AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY): the block
stores none.
"""

from __future__ import annotations

import argparse
import ipaddress
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from pathlib import Path

from cc_core.redact import redact, strip_userinfo

BLOCK_NAME = "cc-tuning-results"
DEFAULT_API = "http://127.0.0.1:4200/api"
LOCAL_POOL = "local"
LOCAL_DEPLOYMENTS = ("local-tiny", "local")  # prefect.yaml's one-machine deployments (pool `local`)
STATE_DIR = Path(".prefect")  # git-ignored: logs and pids of what `local` started
HOME_VARIABLE = "CC_TUNING_HOME"


class SetupError(RuntimeError):
    """The one-machine set-up cannot go on; the message says why and what to do."""


def enter_checkout(variable: str = HOME_VARIABLE) -> dict[str, str]:
    """prefect.yaml's pull step, run by the worker for each flow run: change into the checkout that
    ``$CC_TUNING_HOME`` names *on the worker, at run time* (a ``{{ $VAR }}`` template would be
    resolved once, where ``prefect deploy`` ran). A worker without it (or with a folder that is not a
    cc-tuning checkout) fails the run with a message naming the variable."""
    value = os.environ.get(variable, "").strip()
    home = Path(value).expanduser()
    if not value:
        problem = (f"{variable} is not set on this worker: start the worker with {variable}=/path/to/cc-tuning "
                   f"(a checkout at the deployment's commit, with its venv), e.g. `{variable}=$PWD prefect "
                   "worker start --pool ...` from the checkout, or use `python -m flows.cluster local`")
    elif not (home / "flows" / "pipeline.py").is_file() or not (home / "dvc.yaml").is_file():
        problem = (f"{variable}={value} on this worker is not a cc-tuning checkout (no flows/pipeline.py and "
                   "dvc.yaml there): set it to the checkout the worker's runs should use")
    else:
        os.chdir(home)
        return {"directory": str(home)}
    _log_to_flow_run(problem)
    raise SetupError(problem)


def _log_to_flow_run(message: str) -> None:
    """Put ``message`` in the flow run's logs (the UI's run page), not only in the worker's output."""
    flow_run_id = os.environ.get("PREFECT__FLOW_RUN_ID")
    if not flow_run_id:
        return
    try:
        from datetime import datetime, timezone

        from prefect.client.orchestration import get_client
        from prefect.client.schemas.actions import LogCreate

        with get_client(sync_client=True) as client:
            client.create_logs([LogCreate(name="flows.cluster", level=40, message=message, flow_run_id=flow_run_id,
                                          timestamp=datetime.now(timezone.utc))])
    except Exception:  # noqa: BLE001 - the error is raised anyway; its copy in the UI is a courtesy
        pass


def ensure_work_pool(name: str) -> bool:
    """Create a process work pool ``name``; False if it exists already."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import WorkPoolCreate
    from prefect.exceptions import ObjectAlreadyExists, ObjectNotFound

    with get_client(sync_client=True) as client:
        try:
            client.read_work_pool(name)
            return False
        except ObjectNotFound:
            pass
        try:
            client.create_work_pool(WorkPoolCreate(name=name, type="process"))
        except ObjectAlreadyExists:
            return False
    return True


def set_result_storage(location: str, endpoint_url: str | None = None, block_name: str = BLOCK_NAME) -> str:
    """Save a file-system block for ``location`` and make it the server's default result storage."""
    from prefect.client.orchestration import get_client
    from prefect.filesystems import LocalFileSystem, RemoteFileSystem

    if "://" in location and not location.startswith("file://"):
        settings = {"client_kwargs": {"endpoint_url": endpoint_url}} if endpoint_url else {}
        block = RemoteFileSystem(basepath=location, settings=settings)
        slug = f"remote-file-system/{block_name}"
    else:
        block = LocalFileSystem(basepath=location.removeprefix("file://"))
        slug = f"local-file-system/{block_name}"
    block_id = block.save(block_name, overwrite=True)
    with get_client(sync_client=True) as client:
        client.update_server_default_result_storage(block_id)
    return slug


def _healthy(api: str, timeout: float = 2.0) -> bool:
    try:
        with urllib.request.urlopen(f"{api}/health", timeout=timeout) as response:
            return response.status == 200
    except OSError:
        return False


def _loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _prefect() -> list[str]:
    return [sys.executable, "-m", "prefect"]


def _start(cmd: list[str], name: str, env: dict[str, str]) -> int:
    """Start ``cmd`` in the background, in a session of its own (it outlives this command); its output
    goes to .prefect/<name>.log and its pid to .prefect/<name>.pid (for ``stop``)."""
    STATE_DIR.mkdir(exist_ok=True)
    with open(STATE_DIR / f"{name}.log", "a") as log:
        proc = subprocess.Popen(cmd, env=env, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                start_new_session=True)
    (STATE_DIR / f"{name}.pid").write_text(f"{proc.pid}\n")
    return proc.pid


def ensure_server(api: str, env: dict[str, str], timeout: float = 180) -> str:
    """The server at ``api``: ``running`` if it answers, else started here (loopback addresses only)."""
    if _healthy(api):
        return "running"
    url = urllib.parse.urlsplit(api)
    if not _loopback(url.hostname or ""):
        raise SetupError(f"no Prefect server answers at {api}: start it on {url.hostname} (or unset "
                         "PREFECT_API_URL to run one on this machine)")
    port = str(url.port or 4200)
    pid = _start([*_prefect(), "server", "start", "--host", url.hostname, "--port", port], "server",
                 {**env, "PREFECT_UI_API_URL": api})
    deadline = time.time() + timeout
    while time.time() < deadline:
        if _healthy(api):
            return f"started (pid {pid}, log {STATE_DIR / 'server.log'})"
        if not _alive(pid):
            raise SetupError(f"prefect server exited at start: see {STATE_DIR / 'server.log'}")
        time.sleep(1)
    raise SetupError(f"prefect server not healthy at {api} after {timeout:.0f} s: see {STATE_DIR / 'server.log'}")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _online_workers(pool: str) -> list[str]:
    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as client:
        return [w.name for w in client.read_workers_for_work_pool(pool) if str(w.status).upper().endswith("ONLINE")]


def setup_local(env: dict[str, str], start_worker: bool = True, timeout: float = 120) -> list[str]:
    """Everything one machine needs to run prefect.yaml's one-machine deployments; returns what it did."""
    if not Path("prefect.yaml").is_file() or not Path("flows/pipeline.py").is_file():
        raise SetupError("run it from the root of the cc-tuning checkout (where prefect.yaml is)")
    api = env["PREFECT_API_URL"]
    done = [f"prefect server at {api.removesuffix('/api')}: {ensure_server(api, env)}"]
    from prefect.settings import PREFECT_API_URL, temporary_settings

    with temporary_settings({PREFECT_API_URL: api}):
        done.append(f"work pool {LOCAL_POOL}: {'created' if ensure_work_pool(LOCAL_POOL) else 'exists'}")
        names = [arg for name in LOCAL_DEPLOYMENTS for arg in ("--name", name)]
        deploy = subprocess.run([*_prefect(), "--no-prompt", "deploy", *names], env=env, capture_output=True,
                                text=True, timeout=600)
        if deploy.returncode:
            raise SetupError(f"prefect deploy failed: {(deploy.stdout + deploy.stderr)[-2000:]}")
        done.append("deployments: cc-tuning-pipeline/local-tiny, cc-tuning-eval-job/local")
        online = _online_workers(LOCAL_POOL)
        if online:
            done.append(f"worker: {', '.join(online)} online")
        elif start_worker:
            name = f"{socket.gethostname()}-local"
            pid = _start([*_prefect(), "worker", "start", "--pool", LOCAL_POOL, "--name", name], "worker",
                         {**env, HOME_VARIABLE: str(Path.cwd())})
            deadline = time.time() + timeout
            while not _online_workers(LOCAL_POOL):
                if not _alive(pid) or time.time() > deadline:
                    raise SetupError(f"the worker did not come online: see {STATE_DIR / 'worker.log'}")
                time.sleep(1)
            done.append(f"worker {name}: started (pid {pid}, {HOME_VARIABLE}={Path.cwd()}, "
                        f"log {STATE_DIR / 'worker.log'})")
    return done


def stop_local() -> list[str]:
    """SIGINT the worker, then the server, that ``local`` started (their recorded pids), waiting for each."""
    done = []
    for name in ("worker", "server"):
        pid_file = STATE_DIR / f"{name}.pid"
        if not pid_file.is_file():
            continue
        pid = int(pid_file.read_text().strip() or 0)
        pid_file.unlink()
        if not pid or not _alive(pid) or b"prefect" not in Path(f"/proc/{pid}/cmdline").read_bytes():
            continue  # gone already (or the pid now belongs to another program)
        os.kill(pid, signal.SIGINT)
        deadline = time.time() + 30
        while _alive(pid) and time.time() < deadline:
            time.sleep(0.5)
        if _alive(pid):
            os.killpg(pid, signal.SIGKILL)  # its own session: the process and its children
        done.append(f"{name} (pid {pid}) stopped")
    return done or ["nothing to stop"]


def _api_url() -> str:
    """PREFECT_API_URL from the environment or the active Prefect profile, else the default local server."""
    from prefect.settings import get_current_settings

    return os.environ.get("PREFECT_API_URL") or get_current_settings().api.url or DEFAULT_API


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Set up Prefect for cc-tuning: one machine, or a cluster's server.")
    sub = parser.add_subparsers(dest="command", required=True)
    local = sub.add_parser("local", help="one machine: server (if none runs), pool `local`, deployments, a worker")
    local.add_argument("--no-worker", action="store_true", help="do not start a worker (start your own)")
    sub.add_parser("stop", help="stop the worker and server that `local` started")
    setup = sub.add_parser("setup", help="create the work pool and the shared result storage")
    setup.add_argument("--pool", default="gpu", help="process work pool for pipelines and evaluation jobs")
    setup.add_argument("--result-storage", required=True,
                       help="where flow-run results go, readable from every node: a path or s3://bucket/prefix")
    setup.add_argument("--endpoint-url", default=None, help="S3 endpoint (MinIO), e.g. http://127.0.0.1:9000")
    args = parser.parse_args(argv)
    if args.command in ("local", "stop"):
        try:
            if args.command == "stop":
                lines = stop_local()
            else:
                api = _api_url()
                lines = setup_local({**os.environ, "PREFECT_API_URL": api}, not args.no_worker)
                lines += ["", "next:", f"  export PREFECT_API_URL={api}",
                          "  prefect deployment run 'cc-tuning-pipeline/local-tiny' --watch   # or in the UI, "
                          + api.removesuffix("/api"),
                          "  python -m flows.cluster stop" + " " * 38 + "# stops what this started"]
        except SetupError as err:
            print(f"flows.cluster {args.command}: error: {redact(str(err))}", file=sys.stderr)
            return 2
        print("\n".join(lines))
        return 0
    created = ensure_work_pool(args.pool)
    print(f"work pool {args.pool}: {'created' if created else 'exists'}")
    slug = set_result_storage(args.result_storage, args.endpoint_url)
    print(f"default result storage: {slug} ({strip_userinfo(args.result_storage)})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
