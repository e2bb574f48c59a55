"""``cctune``: one subcommand per pipeline stage (DVC and the Prefect flows call the same functions).

    cctune base-model                      # models/base/
    cctune prepare                         # data/prepared/{train,pairs}.jsonl
    cctune train --method cc|sft           # models/<method>/
    cctune collect                         # activations/
    cctune fit                             # transform/
    cctune eval --method cc --benchmark xnli
    cctune score --benchmark xnli --data-dir DIR --lang zh --predictions preds.jsonl
    cctune report                          # reports/
    cctune register                        # MLflow Model Registry

Every stage takes ``--params FILE`` (default params.yaml) and ``--set section.key=value``.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from collections.abc import Callable
from dataclasses import asdict, is_dataclass
from pathlib import Path

log = logging.getLogger("cctune")

STAGES: dict[str, tuple[str, Callable[[argparse.ArgumentParser], None], Callable]] = {}


def stage(name: str, help_text: str):
    """Register ``fn(args, params)`` as subcommand ``name``; ``add_args`` adds its options."""
    def wrap(add_args: Callable[[argparse.ArgumentParser], None]):
        def register(fn: Callable):
            STAGES[name] = (help_text, add_args, fn)
            return fn
        return register
    return wrap


def _no_args(parser: argparse.ArgumentParser) -> None:
    pass


# --- stages ------------------------------------------------------------------------------------

def _base_model_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", default="models/base", help="output directory (default: models/base)")


@stage("base-model", "write model.base as a plain HF directory (safetensors + tokenizer)")(_base_model_args)
def _base_model(args, params):
    from cc_core.modeling.base import build_base_model

    return build_base_model(params.model, args.out)


def _prepare_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", default="data/prepared", help="output directory (default: data/prepared)")


@stage("prepare", "validate parallel records; write train.jsonl and held-out pairs.jsonl")(_prepare_args)
def _prepare(args, params):
    from cc_core.data.prepare import prepare

    return prepare(params.data, args.out)


def _train_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--method", required=True, choices=["cc", "sft"], help="cc: CC-Tuning; sft: vanilla SFT baseline")
    p.add_argument("--base", default="models/base", help="base model directory (default: models/base)")
    p.add_argument("--data", default="data/prepared", help="prepared data directory (default: data/prepared)")
    p.add_argument("--out", default=None, help="output directory (default: models/<method>)")
    p.add_argument("--metrics-dir", default="metrics", help="where train_<method>.json goes (default: metrics)")
    p.add_argument("--resume", action="store_true",
                   help="continue from the last checkpoint in models/.<method>-checkpoints if it matches params/data")
    # The deepspeed launcher appends --local_rank=N; LOCAL_RANK in the environment carries the same.
    p.add_argument("--local_rank", "--local-rank", type=int, default=None, help=argparse.SUPPRESS)


@stage("train", "fine-tune with CC-Tuning (--method cc) or the vanilla SFT baseline (--method sft)")(_train_args)
def _train(args, params):
    from cc_core.train import train

    return train(params, args.method, args.base, args.data, args.out, args.metrics_dir, args.resume)


# --- entry point ---------------------------------------------------------------------------------

def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="cctune", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="stage", metavar="STAGE", required=True)
    for name, (help_text, add_args, _fn) in STAGES.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        p.add_argument("--params", default="params.yaml", help="params file (default: params.yaml)")
        p.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.KEY=VALUE",
                       help="override a param, e.g. --set train.max_steps=4 (repeatable)")
        add_args(p)
    return parser


def _quiet_libraries() -> None:
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    os.environ.setdefault("DO_NOT_TRACK", "1")
    try:
        import transformers

        transformers.utils.logging.set_verbosity_error()
        transformers.utils.logging.disable_progress_bar()
    except ImportError:  # pragma: no cover
        pass


def _print_result(result) -> None:
    if result is None:
        return
    data = asdict(result) if is_dataclass(result) else result
    print(json.dumps(data, indent=2, default=str, ensure_ascii=False))


def user_errors() -> tuple[type[BaseException], ...]:
    """Exceptions that are the user's input, printed as one clear line instead of a traceback."""
    from cc_core.config import ConfigError
    from cc_core.hub import HubUnreachableError
    from cc_core.io import InputError
    from cc_core.modeling.architectures import UnsupportedArchitectureError
    from cc_core.modeling.base import ModelSourceError
    from cc_core.modeling.checkpoint import NotACCCheckpointError
    from cc_core.prompts import ChatTemplateError
    from cc_core.tracking import TrackingUnavailableError

    return (ConfigError, InputError, HubUnreachableError, ModelSourceError, ChatTemplateError,
            NotACCCheckpointError, UnsupportedArchitectureError, TrackingUnavailableError, FileNotFoundError)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    _quiet_libraries()
    from cc_core.config import load_params

    errors = user_errors()
    try:
        params = load_params(args.params, args.overrides)
        result = STAGES[args.stage][2](args, params)
    except errors as err:
        print(f"cctune {args.stage}: error: {err}", file=sys.stderr)
        return 2
    _print_result(result)
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
