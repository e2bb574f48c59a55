"""The `cctune` front door: every stage and option is described, and user errors are one line.

    pytest tests/unit/test_cli.py
"""

from __future__ import annotations

import argparse

import pytest

from cc_core.cli import STAGES, build_parser, main


def _subparsers(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    action = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return dict(action.choices)


def test_every_stage_and_option_has_help():
    parser = build_parser()
    stages = _subparsers(parser)
    assert set(stages) == set(STAGES)
    for name, sub in stages.items():
        assert sub.description, name
        for action in sub._actions:
            if isinstance(action, argparse._HelpAction) or action.dest == "local_rank":
                continue  # --local_rank: set by the deepspeed launcher, hidden on purpose
            assert action.help and action.help != argparse.SUPPRESS, f"cctune {name} {action.option_strings}"


@pytest.mark.parametrize("stage", [None, *STAGES])
def test_help_prints_and_exits_zero(stage, capsys):
    with pytest.raises(SystemExit) as info:
        main(([stage] if stage else []) + ["--help"])
    assert info.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith("usage: cctune")
    if stage:
        assert "--params" in out and "--set" in out


def test_bad_param_is_one_line_naming_the_key(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "params.yaml").write_text("train:\n  learning_rat: 1.0e-5\n")
    assert main(["prepare"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("cctune prepare: error:") and "train.learning_rat" in err
    assert "Traceback" not in err and len(err.splitlines()) == 1
    assert main(["prepare", "--params", "nowhere.yaml"]) == 2
    assert "nowhere.yaml" in capsys.readouterr().err


def test_eval_flags_replace_eval_params_in_one_place():
    """`cctune eval` and the flow's per-language fan-out of an eval stage evaluate with the same params."""
    from cc_core.cli import eval_params, parse
    from cc_core.config import parse_params

    params = parse_params({"eval": {"protocol": "lenient", "limit": 5, "data_dir": "bundled"}})
    args = parse(["eval", "--method", "cc", "--benchmark", "xnli", "--protocol", "standard", "--limit", "2",
                  "--data-dir", "../shared/benchmarks", "--choice-scoring", "loglik", "--seeds", "3"])
    settings = eval_params(args, params).eval
    assert (settings.protocol, settings.limit, settings.data_dir, settings.choice_scoring, settings.seeds) == \
        ("standard", 2, "../shared/benchmarks", "loglik", 3)
    assert params.eval.protocol == "lenient" and params.eval.limit == 5  # the loaded params are not changed
    unchanged = eval_params(parse(["eval", "--method", "cc", "--benchmark", "xnli"]), params).eval
    assert unchanged.model_dump(exclude={"benchmarks"}) == params.eval.model_dump(exclude={"benchmarks"})


def test_a_stage_loads_only_its_own_modules():
    """`cctune prepare` never imports training, generation or tracking code (dvc.yaml deps stay exact)."""
    import subprocess
    import sys

    code = ("import sys; from cc_core import cli; args = cli.parse(['prepare', '--out', 'x']); "
            "import cc_core.data.prepare; print(sorted(m for m in sys.modules if m.startswith('cc_core')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    for heavy in ("cc_core.train", "cc_core.generate", "cc_core.tracking", "cc_core.evaluate", "cc_core.registry"):
        assert f"'{heavy}'" not in out, heavy
