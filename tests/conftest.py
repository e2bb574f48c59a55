"""Shared fixtures: tiny models of four architectures, SmolLM2's tokenizer, the shared benchmarks.

Tests that build a torch model carry the ``model`` marker: every test that uses a tiny-model fixture
(directly or through another fixture) gets it here, and the few that build one by hand are marked
where they are written. The pure-Python tests alone:

    python -m pytest -q -m "not integration and not model"
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

# Tests never reach a hub; the "hub unreachable" paths are tested explicitly.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
os.environ.setdefault("DO_NOT_TRACK", "1")
os.environ.setdefault("DS_ACCELERATOR", "cpu")

REPO = Path(__file__).resolve().parents[1]
SHARED_BENCHMARKS = REPO.parent / "shared" / "benchmarks"
TINY_ARCHS = ("llama", "qwen2", "mistral", "gemma2")
MODEL_FIXTURES = {"tiny_factory", "lively_factory", "tiny_any"}


def pytest_collection_modifyitems(config, items):
    for item in items:
        if MODEL_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.model)


@pytest.fixture(scope="session")
def smol_tokenizer():
    from cc_core.modeling.base import smollm2_tokenizer

    return smollm2_tokenizer()


@pytest.fixture(scope="session")
def tiny_factory(smol_tokenizer):
    """``tiny_factory(arch)`` → a fresh (model, tokenizer) in eval mode, float32, seeded."""
    from cc_core.modeling.base import build_tiny

    def make(arch: str = "llama", seed: int = 0):
        model, tokenizer = build_tiny(arch, seed=seed)
        return model.eval(), tokenizer

    return make


def _lively(model, arch: str, seed: int):
    """Tiny random models at the default init (std 0.02) often repeat one token forever, which
    makes "same text" checks vacuous and gives options near-equal scores; larger random weights
    give varied greedy continuations and clearly different scores. gemma2 is already varied at
    its default init (larger weights saturate its soft-capping)."""
    import torch

    if arch == "gemma2":
        return model
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for param in model.parameters():
            if param.dim() >= 2:
                param.copy_(torch.randn(param.shape, generator=gen) * 0.15)
    return model


@pytest.fixture(scope="session")
def lively_factory(tiny_factory):
    """``lively_factory(arch, seed)`` → ``tiny_factory``'s model with larger random weights (``_lively``)."""
    def make(arch: str = "llama", seed: int = 0):
        model, tokenizer = tiny_factory(arch, seed)
        return _lively(model, arch, seed), tokenizer
    return make


@pytest.fixture(params=TINY_ARCHS)
def tiny_any(request, tiny_factory):
    return tiny_factory(request.param)


@pytest.fixture(scope="session")
def shared_benchmarks() -> Path:
    if not SHARED_BENCHMARKS.is_dir():
        pytest.skip(f"real benchmark samples not found at {SHARED_BENCHMARKS} (../shared/benchmarks)")
    return SHARED_BENCHMARKS


@pytest.fixture
def read_only():
    """``read_only(path)``: make a file really read-only for this test (mode 0444; as root, who ignores
    modes, also the immutable flag via ``chattr +i``), restored afterwards. Skips where neither holds."""
    import shutil
    import stat
    import subprocess

    made: list[Path] = []

    def make(path: Path) -> Path:
        path = Path(path)
        path.chmod(stat.S_IRUSR | stat.S_IRGRP | stat.S_IROTH)
        made.append(path)
        if os.geteuid() == 0:
            if not shutil.which("chattr") or subprocess.run(["chattr", "+i", str(path)],
                                                             capture_output=True).returncode != 0:
                pytest.skip("running as root without chattr +i: no way to make a file read-only here")
        assert not os.access(path, os.W_OK), f"{path} is still writable"
        return path

    yield make
    for path in made:
        if os.geteuid() == 0:
            subprocess.run(["chattr", "-i", str(path)], capture_output=True)
        path.chmod(0o644)
