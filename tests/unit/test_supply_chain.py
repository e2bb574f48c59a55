"""Pinned set-up: scripts/setup.sh installs nothing the lock does not pin (setuptools and wheel
included, for the build environments of source packages too), and a registered version carries the
full set of pins of the environment it was registered from.

    pytest tests/unit/test_supply_chain.py
"""

from __future__ import annotations

import importlib.metadata
import re
import shlex
from pathlib import Path

from cc_core.registry import environment_pins, read_constraints, serving_requirements

REPO = Path(__file__).resolve().parents[2]
SETUP = REPO / "scripts" / "setup.sh"


def _normalise(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _setup_installs() -> list[list[str]]:
    """The arguments of every `"${pip[@]}" ...` line of setup.sh."""
    installs = []
    for line in SETUP.read_text().splitlines():
        line = line.strip()
        if "${pip[@]}" in line and not line.startswith("#"):
            words = shlex.split(line.split('"${pip[@]}"', 1)[1].split("#", 1)[0])
            installs.append(words)
    return installs


def test_the_lock_pins_setuptools_and_wheel():
    lock = read_constraints()
    assert "setuptools" in lock and "wheel" in lock


def test_setup_installs_only_what_the_lock_pins():
    lock = read_constraints()
    installs = _setup_installs()
    assert len(installs) >= 3
    named = set()
    for args in installs:
        for word in args:
            if word.startswith("-") or word in (".", "'.[test,lm-eval]'") or word.startswith(".["):
                continue
            name, _, version = word.partition("==")
            named.add(_normalise(name))
            assert _normalise(name) in lock, f"setup.sh installs {word}, which constraints.txt does not pin"
            if version:
                assert version == lock[_normalise(name)][1], f"setup.sh {word}, constraints.txt {lock[_normalise(name)]}"
    assert {"setuptools", "wheel", "torch", "deepspeed"} <= named


def test_setup_constrains_the_build_environments():
    text = SETUP.read_text()
    export = text.index('export PIP_CONSTRAINT="$PWD/constraints.txt"')
    assert export < text.index('"${pip[@]}" torch')  # before the first install


def test_a_version_carries_every_installed_distribution_pinned():
    pins = environment_pins()
    names = {_normalise(p.split("==")[0]): p.split("==")[1] for p in pins}
    assert all(re.fullmatch(r"[A-Za-z0-9._-]+==[^+\s]+", p) for p in pins), pins  # exact, no local tag (+cpu)
    installed = {_normalise(d.metadata["Name"]) for d in importlib.metadata.distributions() if d.metadata["Name"]}
    assert installed - set(names) <= {"cc-tuning"}  # every distribution but the project (it travels as code)
    assert "cc-tuning" not in names
    for transitive in ("sympy", "networkx", "filelock", "regex", "pyarrow", "sqlalchemy"):  # not top-level
        assert transitive in names, transitive
    assert names["torch"] == "2.13.0"
    # the serving requirements are pinned at the same versions, so the two files never disagree
    for requirement in serving_requirements():
        name, version = requirement.split("==")
        assert names[_normalise(name)] == version, requirement
