"""The flow's last word on bad input: the run ends Failed with a message naming the stage, its method
and the file, and the bad-input task is not retried (it would fail the same way).

    pytest -m integration tests/integration/test_flow_faults.py
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration
REPO = Path(__file__).resolve().parents[2]


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_TRACKING", "PREFECT_API"))}
    env.update(PATH=f"{Path(sys.executable).parent}{os.pathsep}{env['PATH']}", DO_NOT_TRACK="1",
               PREFECT_SERVER_ANALYTICS_ENABLED="false", DVC_NO_ANALYTICS="1", MLFLOW_DISABLE_TELEMETRY="true")
    return env


def test_malformed_training_data_fails_the_flow_naming_stage_method_and_file(tmp_path):
    project = tmp_path / "cc-tuning"
    files = subprocess.run(["git", "ls-files", "-co", "--exclude-standard", "-z"], cwd=REPO, capture_output=True,
                           text=True, check=True).stdout.split("\0")
    for name in filter(None, files):
        if (REPO / name).is_file() and not name.startswith(("tests/", "docs/", "bench/")):
            (project / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO / name, project / name)
    shutil.copy(project / "params.tiny.yaml", project / "params.yaml")
    for cmd in (["git", "init", "-q"], ["git", "add", "-A"],
                ["git", "-c", "user.email=t@t", "-c", "user.name=t", "commit", "-qm", "tiny"]):
        subprocess.run(cmd, cwd=project, check=True)
    run = subprocess.run([sys.executable, "-m", "flows.pipeline", "--stages", "base_model", "prepare"], cwd=project,
                         env=_env(), capture_output=True, text=True, timeout=900)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    train = project / "data/prepared/train.jsonl"
    lines = train.read_text(encoding="utf-8").splitlines()
    train.write_text("\n".join(lines[:2] + ['{"id": "broken", "instruction": '] + lines[2:]) + "\n", encoding="utf-8")

    run = subprocess.run([sys.executable, "-m", "flows.pipeline", "--stages", "train", "--methods", "cc"],
                         cwd=project, env=_env(), capture_output=True, text=True, timeout=900)
    assert run.returncode == 1
    # the flow's last word (Prefect's ephemeral server logs its own shutdown after it)
    last = next(line for line in run.stderr.splitlines()[::-1] if line.startswith("cc-tuning-pipeline ended"))
    assert last.startswith("cc-tuning-pipeline ended Failed: stage train_cc (method cc) failed: "), last
    assert "data/prepared/train.jsonl:3" in last, last
    log = run.stdout + run.stderr
    assert log.count("Task run 'train-cc' - Finished in state Failed") == 1  # bad input: no retry
    assert "Retrying" not in log and "AwaitingRetry" not in log
