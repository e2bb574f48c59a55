"""``mlflow models serve`` of a registered version for a test, and stopping a server's process group.

    with served("models:/cc-test@champion", folder, env) as server:
        post(server.url, ...)            # server.url: .../invocations; server.log: its output
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace

BIN = Path(sys.executable).parent


def stop_group(proc: subprocess.Popen) -> None:
    """SIGTERM to the server's process group (it started its own session), SIGKILL after 60 s."""
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


@contextlib.contextmanager
def served(model_uri: str, folder: Path, env: dict[str, str], timeout_s: float = 300) -> Iterator[SimpleNamespace]:
    """The scoring server of ``model_uri`` (one worker, the local environment) on a free loopback port,
    answering /ping; stopped on exit."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    log_file = folder / "serve.log"
    with log_file.open("w") as log:
        proc = subprocess.Popen(
            [str(BIN / "mlflow"), "models", "serve", "-m", model_uri, "--env-manager", "local",
             "--host", "127.0.0.1", "--port", str(port), "--workers", "1"],
            cwd=folder, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + timeout_s
        while True:
            assert proc.poll() is None, log_file.read_text()[-3000:]
            try:
                with urllib.request.urlopen(f"{base}/ping", timeout=2) as response:
                    if response.status == 200:
                        break
            except OSError:
                pass
            assert time.time() < deadline, f"scoring server not up after {timeout_s:g} s: " + log_file.read_text()[-3000:]
            time.sleep(1)
        yield SimpleNamespace(url=f"{base}/invocations", log=log_file)
    finally:
        stop_group(proc)
        assert proc.returncode is not None
