"""Prefect set-up pieces that need no server: the workers' pull step and the project's Prefect settings.
(A real server and workers: tests/integration/test_first_hour.py.)

    .venv/bin/python -m pytest tests/unit/test_prefect_setup.py -q
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def test_pull_step_enters_the_workers_checkout_or_names_the_variable(tmp_path, monkeypatch):
    """prefect.yaml's pull step reads CC_TUNING_HOME on the worker when the run starts."""
    import pytest

    from flows.cluster import SetupError, enter_checkout

    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("CC_TUNING_HOME", raising=False)
    monkeypatch.delenv("PREFECT__FLOW_RUN_ID", raising=False)
    with pytest.raises(SetupError, match="CC_TUNING_HOME is not set on this worker"):
        enter_checkout()
    monkeypatch.setenv("CC_TUNING_HOME", str(tmp_path))
    with pytest.raises(SetupError, match=f"CC_TUNING_HOME={tmp_path} on this worker is not a cc-tuning checkout"):
        enter_checkout()
    checkout = tmp_path / "checkout"
    (checkout / "flows").mkdir(parents=True)
    (checkout / "flows" / "pipeline.py").write_text("")
    (checkout / "dvc.yaml").write_text("stages: {}\n")
    monkeypatch.setenv("CC_TUNING_HOME", str(checkout))
    assert enter_checkout() == {"directory": str(checkout)}
    assert Path.cwd() == checkout



def test_the_projects_prefect_settings_turn_telemetry_off():
    """Any Prefect command run from the checkout (server, worker, deploy) reads pyproject's [tool.prefect]."""
    env = {k: v for k, v in os.environ.items() if k not in ("PREFECT_SERVER_ANALYTICS_ENABLED", "DO_NOT_TRACK")}
    code = "from prefect.settings import get_current_settings; print(get_current_settings().server.analytics_enabled)"
    inside = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert inside.returncode == 0, inside.stderr
    assert inside.stdout.strip() == "False"
