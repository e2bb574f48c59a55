"""The registry's alias policy and what it reads (the full round trip against a server is in
tests/integration/test_pipeline.py).

    pytest tests/unit/test_registry.py
"""

from __future__ import annotations

import json

import pytest

from cc_core.config import ConfigError, parse_params
from cc_core.registry import _should_promote, eval_metrics, eval_settings_hash


def _write(metrics_dir, name: str, average: float, **extra) -> None:
    folder = metrics_dir / "eval" / "cc"
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"{name}.json").write_text(json.dumps({"average": average, **extra}))


def test_only_listed_benchmarks_count(tmp_path):
    _write(tmp_path, "XNLI", 40.0)
    _write(tmp_path, "MKQA", 99.0)  # left over from an earlier eval.benchmarks
    assert set(eval_metrics(tmp_path, ["xnli"])) == {"XNLI"}
    assert set(eval_metrics(tmp_path, None)) == {"XNLI", "MKQA"}


def test_eval_settings_hash_ignores_speed_only():
    base = parse_params({})
    assert eval_settings_hash(base) == eval_settings_hash(parse_params({}, overrides=["eval.batch_size=64"]))
    assert eval_settings_hash(base) != eval_settings_hash(parse_params({}, overrides=["eval.limit=50"]))
    assert eval_settings_hash(base) != eval_settings_hash(parse_params({}, overrides=["eval.langs=[zh]"]))


def test_register_metric_is_checked_when_params_load():
    assert parse_params({}, overrides=["register.metric=xquad"]).register.metric == "XQuAD"
    with pytest.raises(ConfigError, match="register.metric"):
        parse_params({}, overrides=["register.metric=bleu"])


class FakeClient:
    def __init__(self, tags: dict[str, str]) -> None:
        self.tags = tags

    def get_model_version(self, name, version):
        return type("Version", (), {"tags": self.tags})()


def test_alias_policy():
    same = {"register_metric": "mean", "eval_settings_sha256": "h1", "metric_value": "50.0"}
    assert _should_promote(FakeClient(same), "m", None, 10.0, "mean", "h1", {}) == (True, "first version")
    assert _should_promote(FakeClient(same), "m", "1", 60.0, "mean", "h1", {})[0]
    promoted, why = _should_promote(FakeClient(same), "m", "1", 40.0, "mean", "h1", {})
    assert not promoted and "does not beat 50.0000" in why
    # a score from another evaluation (other langs / limit / data) or another metric is not comparable
    promoted, why = _should_promote(FakeClient(same), "m", "1", 90.0, "mean", "h2", {})
    assert not promoted and "not comparable with version 1" in why
    assert not _should_promote(FakeClient(same), "m", "1", 90.0, "XNLI", "h1", {})[0]
    # an evaluation with failed languages never takes the champion alias, even as the first version
    promoted, why = _should_promote(FakeClient(same), "m", None, 90.0, "mean", "h1", {"XNLI": ["zh"]})
    assert not promoted and "failed languages" in why
