"""Concurrent ``cctune register`` processes on one SQLite store: the aliases and their history follow the
order of registration (issue 21, point 2).

    pytest -m integration tests/integration/test_registry_concurrency.py
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration
REPO = Path(__file__).resolve().parents[2]

# Each process registers through the real CLI; after the store has given it a version number it waits
# until every process has one, so all of them decide their aliases at the same moment (before the fix
# they then read alias_history together and each wrote back its own copy: a lost alias move).
DRIVER = """
import os, sys, time
from pathlib import Path
from mlflow import MlflowClient

barrier, parties = Path(sys.argv[1]), int(sys.argv[2])
real = MlflowClient.create_model_version

def create_then_wait(self, *args, **kwargs):
    version = real(self, *args, **kwargs)
    (barrier / str(os.getpid())).touch()
    deadline = time.time() + 240
    while len(list(barrier.iterdir())) < parties and time.time() < deadline:
        time.sleep(0.02)
    return version

MlflowClient.create_model_version = create_then_wait
from cc_core.cli import main
sys.exit(main(sys.argv[3:]))
"""


def _fake_project(root: Path) -> dict:
    """A CC checkpoint's files, a Transform Matrix fitted for it (with fit's record), no model loaded."""
    import torch
    from safetensors.torch import save_file

    from cc_core.io import write_json
    from cc_core.lineage import checkpoint_sha256
    from cc_core.modeling.checkpoint import FORMAT_VERSION
    from cc_core.modeling.transform_matrix import TransformMatrix

    model = root / "models" / "cc"
    model.mkdir(parents=True)
    save_file({"w": torch.arange(4.0)}, str(model / "model.safetensors"))
    save_file({"proj.weight": torch.zeros(2, 2)}, str(model / "decision_maker.safetensors"))
    write_json(model / "cc_tuning.json", {"format_version": FORMAT_VERSION, "hidden_size": 2, "num_layers": 2,
                                          "inject_layer": 0, "gumbel_tau": 1.0, "decision_mode_train": "gumbel",
                                          "detach_english": False, "arch_map": {}})
    (model / "config.json").write_text("{}")
    (root / "transform").mkdir()
    digest = TransformMatrix(torch.eye(2), None, {}, {"model_sha256": checkpoint_sha256(model)}).save(
        root / "transform" / "transform.safetensors")
    return {"model": model, "transform": root / "transform", "checkpoint": checkpoint_sha256(model),
            "transform_sha256": digest}


def _replay(averages: list[float]) -> tuple[str, list[tuple[str, str | None]]]:
    """The alias policy applied in version order: (final champion, [(champion version, previous)])."""
    champion, moves = None, []
    for number, value in enumerate(averages, start=1):
        if champion is None or value > averages[int(champion) - 1]:
            moves.append((str(number), champion))
            champion = str(number)
    return champion, moves


def test_concurrent_registrations_keep_aliases_and_history_in_registration_order(tmp_path):
    """Before: versions 1, 2, 3 existed but challenger pointed to 2, alias_history had no entry for 3 and
    metrics/register.json said 2."""
    import mlflow

    from cc_core.io import write_json

    project = _fake_project(tmp_path)
    (tmp_path / "params.yaml").write_text(
        "eval:\n  benchmarks: [XNLI]\nregister:\n  model_name: race\ntracking:\n"
        f"  uri: sqlite:///{tmp_path}/mlflow.db\n  artifact_location: {tmp_path}/mlartifacts\n")
    mlflow.MlflowClient(f"sqlite:///{tmp_path}/mlflow.db").search_experiments()  # the store exists first
    scores = {"A": 50.0, "B": 60.0, "C": 55.0, "D": 58.0}
    barrier = tmp_path / "barrier"
    barrier.mkdir()
    procs = {}
    for name, average in scores.items():
        metrics = tmp_path / f"metrics-{name}"
        write_json(metrics / "eval" / "cc" / "XNLI.json",
                   {"average": average, "checkpoint_sha256": project["checkpoint"],
                    "transform_sha256": project["transform_sha256"],  # scored alike: comparable
                    "eval_data_sha256": "d" * 64, "scorer_sha256": "s" * 64})
        cmd = [sys.executable, "-c", DRIVER, str(barrier), str(len(scores)), "register", "--model", "models/cc",
               "--transform", "transform", "--metrics-dir", str(metrics)]
        log = (tmp_path / f"{name}.log").open("w")
        procs[name] = (subprocess.Popen(cmd, cwd=tmp_path, env={**os.environ, "PYTHONPATH": str(REPO)},
                                        stdout=log, stderr=subprocess.STDOUT), log)
    for name, (proc, log) in procs.items():
        assert proc.wait(timeout=600) == 0, (tmp_path / f"{name}.log").read_text()[-3000:]
        log.close()

    client = mlflow.MlflowClient(f"sqlite:///{tmp_path}/mlflow.db")
    versions = {str(v.version): v for v in client.search_model_versions("name='race'")}
    assert sorted(versions, key=int) == ["1", "2", "3", "4"]
    averages = [float(versions[str(n)].tags["metric_value"]) for n in range(1, 5)]
    assert sorted(averages) == sorted(scores.values())
    assert all(v.tags["alias_state"] == "settled" for v in versions.values())
    model = client.get_registered_model("race")
    history = json.loads(model.tags["alias_history"])
    challenger_moves = [(h["version"], h["previous"]) for h in history if h["alias"] == "challenger"]
    assert challenger_moves == [("1", None), ("2", "1"), ("3", "2"), ("4", "3")]
    champion, champion_moves = _replay(averages)
    assert [(h["version"], h["previous"]) for h in history if h["alias"] == "champion"] == champion_moves
    assert {k: str(v) for k, v in model.aliases.items()} == {"challenger": "4", "champion": champion}
    # each process's metrics/register.json names its own version and the champion as of its turn
    for name, average in scores.items():
        record = json.loads((tmp_path / f"metrics-{name}" / "register.json").read_text())
        number = int(record["version"])
        assert averages[number - 1] == average
        assert record["champion"] == _replay(averages[:number])[0]
