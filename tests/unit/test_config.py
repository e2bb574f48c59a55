from pathlib import Path

import pytest

from cc_core.config import ConfigError, Params, load_params, parse_params
from cc_core.data.benchmarks import get_spec

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("name", sorted(path.name for path in REPO.glob("params*.yaml")))
def test_every_params_file_in_the_repository_loads_and_names_real_benchmarks(name):
    """Each profile a user can copy to params.yaml validates, and what the eval and register stages look
    up by name exists: every benchmark has a spec, every per-benchmark limit and the register metric
    name a benchmark being evaluated."""
    params = load_params(REPO / name)
    assert [get_spec(bench).name for bench in params.eval.benchmarks] == params.eval.benchmarks
    if isinstance(params.eval.limit, dict):
        assert set(params.eval.limit) <= set(params.eval.benchmarks)
    assert params.register.metric == "mean" or params.register.metric in params.eval.benchmarks


def test_every_default_key_is_commented_in_params_yaml():
    text = (REPO / "params.yaml").read_text()
    defaults = Params().model_dump()
    for section, keys in defaults.items():
        assert f"\n{section}:" in text, section
        for key in keys:
            line_index = next(i for i, line in enumerate(text.splitlines()) if line.strip().startswith(f"{key}:"))
            above = text.splitlines()[line_index - 1].strip()
            assert above.startswith("#") or "#" in text.splitlines()[line_index], f"{section}.{key} has no comment"


def test_unknown_key_is_named(tmp_path):
    path = tmp_path / "p.yaml"
    path.write_text("train:\n  learnin_rate: 1e-5\n")
    with pytest.raises(ConfigError, match=r"p.yaml: train.learnin_rate: unknown key"):
        load_params(path)


def test_unknown_section_is_named(tmp_path):
    path = tmp_path / "p.yaml"
    path.write_text("trian:\n  epochs: 1\n")
    with pytest.raises(ConfigError, match=r"trian: unknown key"):
        load_params(path)


def test_wrong_type_names_key_and_value(tmp_path):
    path = tmp_path / "p.yaml"
    path.write_text("train:\n  per_device_batch_size: many\n")
    with pytest.raises(ConfigError, match=r"train.per_device_batch_size: .*integer.*'many'"):
        load_params(path)


def test_missing_file_and_bad_yaml(tmp_path):
    with pytest.raises(ConfigError, match="params file not found"):
        load_params(tmp_path / "absent.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("train: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_params(bad)


def test_overrides_parse_yaml_scalars_and_validate():
    params = parse_params({}, overrides=["train.max_steps=4", "train.bf16=true", "eval.benchmarks=[xnli, MkQa]",
                                          "model.chat_template=null"])
    assert params.train.max_steps == 4 and params.train.bf16 is True
    assert params.eval.benchmarks == ["XNLI", "MKQA"]
    with pytest.raises(ConfigError, match="not of the form"):
        parse_params({}, overrides=["train.max_steps"])
    with pytest.raises(ConfigError, match="train.nonsense: unknown key"):
        parse_params({}, overrides=["train.nonsense=1"])


def test_domain_validation():
    with pytest.raises(ConfigError, match="unknown benchmark 'xnlx'"):
        parse_params({"eval": {"benchmarks": ["xnlx"]}})
    with pytest.raises(ConfigError, match="unknown language code 'xx'"):
        parse_params({"data": {"languages": ["xx"]}})
    with pytest.raises(ConfigError, match="decision_mode"):
        parse_params({"train": {"decision_mode": "random"}})


def test_flat_and_hash_are_stable():
    a, b = Params(), Params()
    assert a.flat()["train.learning_rate"] == 1e-5
    assert a.section_hash("train") == b.section_hash("train")
    assert a.section_hash("train") != parse_params({"train": {"seed": 1}}).section_hash("train")


def test_paper_profile_sets_every_key_with_its_source():
    """params.paper.yaml: the same schema as params.yaml, every key present and commented."""
    import yaml

    from cc_core.config import load_params

    path = REPO / "params.paper.yaml"
    params = load_params(path)
    raw = yaml.safe_load(path.read_text())
    from cc_core.config import parse_params

    for section, keys in parse_params({}).model_dump().items():
        assert set(raw[section]) == set(keys), section  # nothing left to a default
    lines = path.read_text().splitlines()
    for line in lines:
        if line.startswith("  ") and not line.strip().startswith("#") and ":" in line:
            assert "#" in line or lines[lines.index(line) + 1].strip().startswith("#"), line
    assert params.model.chat_template == "llama3-lf" and params.train.detach_english
    assert params.train.deepspeed == "zero3" and params.train.bf16 and params.train.gradient_checkpointing
    assert params.eval.protocol == "standard" and params.eval.on_long_prompt == "error"
    assert params.eval.max_prompt_len is None and params.eval.limit is None and params.eval.langs == []
    assert params.eval.decision_mode == "gumbel" and params.report.paper_reference
    assert round(params.data.num_pairs * params.fit.holdout_fraction) == 100  # 1000 pairs fitted


def test_eval_limit_per_benchmark():
    params = parse_params({}, overrides=["eval.limit={xquad: 1, XLSum: 2}"])
    assert params.eval.limit == {"XQuAD": 1, "XLSum": 2}
    assert (params.eval.limit_for("XQuAD"), params.eval.limit_for("xlsum"), params.eval.limit_for("XNLI")) == (1, 2, None)
    assert parse_params({}, overrides=["eval.limit=3"]).eval.limit_for("XNLI") == 3
    with pytest.raises(ConfigError, match=r"eval.limit.*unknown benchmark 'foo'"):
        parse_params({}, overrides=["eval.limit={foo: 1}"])
    with pytest.raises(ConfigError, match=r"eval.limit"):
        parse_params({}, overrides=["eval.limit={XNLI: 0}"])
