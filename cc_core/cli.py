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
    cctune merge --model models/cc --out models/cc-merged   # LoRA adapters → a full checkpoint

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
    """Register ``fn(args, params)`` as subcommand ``name``; ``add_args`` adds its options.

    Each ``fn`` imports its stage module inside its body, and only that module: ``cctune --help``
    stays fast, and a stage loads only the code it runs, so dvc.yaml's ``deps`` of a stage can be
    exactly its import closure (tests/unit/test_stage_graph.py computes it from these imports)."""
    def wrap(add_args: Callable[[argparse.ArgumentParser], None]):
        def register(fn: Callable):
            STAGES[name] = (help_text, add_args, fn)
            return fn
        return register
    return wrap


# --- stages ------------------------------------------------------------------------------------

def _base_model_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", default="models/base", help="output directory (default: models/base)")


@stage("base-model", "write model.base as a plain HF directory (safetensors + tokenizer)")(_base_model_args)
def _base_model(args, params):
    from cc_core.modeling.base import build_base_model  # why: a stage loads only its own modules (dvc.yaml deps)

    return build_base_model(params.model, args.out)


def _prepare_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", default="data/prepared", help="output directory (default: data/prepared)")


@stage("prepare", "validate parallel records; write train.jsonl and held-out pairs.jsonl")(_prepare_args)
def _prepare(args, params):
    from cc_core.data.prepare import prepare  # why: a stage loads only its own modules (dvc.yaml deps)

    return prepare(params.data, args.out)


def _train_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--method", required=True, choices=["cc", "sft"], help="cc: CC-Tuning; sft: vanilla SFT baseline")
    p.add_argument("--base", default="models/base", help="base model directory (default: models/base)")
    p.add_argument("--data", default="data/prepared", help="prepared data directory (default: data/prepared)")
    p.add_argument("--out", default=None, help="output directory (default: models/<method>)")
    p.add_argument("--checkpoint-dir", default=None,
                   help="intermediate checkpoints, for --resume (default: .<name>-checkpoints beside --out)")
    p.add_argument("--metrics-dir", default="metrics", help="where train_<method>.json goes (default: metrics)")
    p.add_argument("--resume", action="store_true",
                   help="continue from the last complete checkpoint in --checkpoint-dir if it matches params/data")
    # The deepspeed launcher appends --local_rank=N; LOCAL_RANK in the environment carries the same.
    p.add_argument("--local_rank", "--local-rank", type=int, default=None, help=argparse.SUPPRESS)


@stage("train", "fine-tune with CC-Tuning (--method cc) or the vanilla SFT baseline (--method sft)")(_train_args)
def _train(args, params):
    from cc_core.train import train  # why: a stage loads only its own modules (dvc.yaml deps)

    return train(params, args.method, args.base, args.data, args.out, args.metrics_dir, args.resume,
                 checkpoint_dir=args.checkpoint_dir)


def _collect_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", default="models/cc", help="trained model directory (default: models/cc)")
    p.add_argument("--pairs", default="data/prepared/pairs.jsonl", help="held-out parallel pairs")
    p.add_argument("--out", default="activations", help="output directory (default: activations)")


@stage("collect", "FFN activations at the anchor for held-out parallel pairs → activations/")(_collect_args)
def _collect(args, params):
    from cc_core.activations import collect  # why: a stage loads only its own modules (dvc.yaml deps)

    return collect(params.collect, args.model, args.pairs, args.out, params.collect.max_prompt_len, params.model.anchor)


def _fit_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--activations", default="activations", help="collected activations (default: activations)")
    p.add_argument("--model", default="models/cc",
                   help="model the activations must come from; its MLflow run receives the fit metrics")
    p.add_argument("--out", default="transform", help="output directory (default: transform)")
    p.add_argument("--metrics-dir", default="metrics", help="where transform.json goes (default: metrics)")


@stage("fit", "fit the Transform Matrix (streaming least squares) → transform/")(_fit_args)
def _fit(args, params):
    from cc_core.transform import fit  # why: a stage loads only its own modules (dvc.yaml deps)

    return fit(params.fit, args.activations, args.out, args.metrics_dir, args.model, params.tracking)


def _eval_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--method", required=True, choices=["base", "sft", "cc"], help="which model to evaluate")
    p.add_argument("--benchmark", required=True, help="xnli | xstorycloze | mmmlu | xquad | mkqa | xlsum")
    p.add_argument("--langs", nargs="+", default=None, help="languages (default: eval.langs, or all but English)")
    p.add_argument("--limit", type=int, default=None, help="at most N items per language (default: eval.limit)")
    p.add_argument("--model", default=None, help="model directory (default: models/<method>)")
    p.add_argument("--transform", default="transform", help="Transform Matrix for cc (default: transform/)")
    p.add_argument("--data-dir", default=None,
                   help="benchmark data: a directory | bundled | hub (default: eval.data_dir)")
    p.add_argument("--out", default="eval", help="predictions root (default: eval)")
    p.add_argument("--metrics-dir", default="metrics/eval", help="scores root (default: metrics/eval)")
    p.add_argument("--seeds", type=int, default=None, metavar="K",
                   help="with eval.decision_mode=gumbel: evaluate under K Gumbel seeds and report their spread "
                        "(default: eval.seeds)")
    p.add_argument("--protocol", choices=["lenient", "standard"], default=None,
                   help="how generated text is scored: lenient (robust parsing, for deltas) | standard (the "
                        "reference scripts, comparable with published numbers) (default: eval.protocol)")
    p.add_argument("--choice-scoring", choices=["generate", "loglik"], default=None,
                   help="XNLI/XStoryCloze/MMMLU: parse generated text, or score options by log-likelihood "
                        "(default: eval.choice_scoring)")


@stage("eval", "generate and score one benchmark for one method → eval/, metrics/eval/")(_eval_args)
def _eval(args, params):
    from cc_core.evaluate import evaluate  # why: a stage loads only its own modules (dvc.yaml deps)

    return evaluate(eval_params(args, params), args.method, args.benchmark, args.langs, None, args.model,
                    args.transform, args.out, args.metrics_dir)


def eval_params(args: argparse.Namespace, params):
    """The params ``cctune eval ARGS`` evaluates with: its flags replace eval.* values (the one place
    that says so: the Prefect flow's per-language fan-out of an eval stage uses it too)."""
    flags = {"protocol": args.protocol, "seeds": args.seeds, "data_dir": args.data_dir,
             "choice_scoring": args.choice_scoring, "limit": args.limit}
    section = params.eval.model_dump()
    section.update({key: value for key, value in flags.items() if value is not None})
    return params.model_copy(update={"eval": type(params.eval).model_validate(section)})


def _score_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--benchmark", required=True, help="xnli | xstorycloze | mmmlu | xquad | mkqa | xlsum")
    p.add_argument("--data-dir", default=None, help="benchmark data: bundled | a directory | hub (default: eval.data_dir)")
    p.add_argument("--lang", required=True, help="language code")
    p.add_argument("--predictions", required=True, help='JSONL: {"id" or line order, "output"} per line')
    p.add_argument("--limit", type=int, default=None, help="score only the first N items")
    p.add_argument("--partial", action="store_true",
                   help="score only the items that have a prediction (default: every item needs one)")
    p.add_argument("--output", default=None, help="write the summary JSON here")
    p.add_argument("--protocol", choices=["lenient", "standard"], default=None,
                   help="lenient (robust parsing, for deltas) | standard (the reference scripts) (default: eval.protocol)")


@stage("score", "score a predictions file from any inference engine against a benchmark's golds")(_score_args)
def _score(args, params):
    from cc_core.evaluate import score  # why: a stage loads only its own modules (dvc.yaml deps)

    return score(args.benchmark, args.data_dir or params.eval.data_dir, args.lang, args.predictions, args.limit,
                 args.output, args.protocol or params.eval.protocol, args.partial)


def _report_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--metrics-dir", default="metrics", help="metrics root (default: metrics)")
    p.add_argument("--eval-dir", default="eval", help="predictions root (default: eval)")
    p.add_argument("--out", default="reports", help="output directory (default: reports)")


@stage("report", "summary tables (CC - SFT deltas with bootstrap CIs) and plots → reports/")(_report_args)
def _report(args, params):
    from cc_core.report import report  # why: a stage loads only its own modules (dvc.yaml deps)

    return report(params, args.metrics_dir, args.eval_dir, args.out)


def _register_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", default="models/cc", help="CC checkpoint (default: models/cc)")
    p.add_argument("--transform", default="transform", help="Transform Matrix directory (default: transform)")
    p.add_argument("--metrics-dir", default="metrics", help="metrics root with eval/cc/*.json (default: metrics)")


@stage("register", "register the CC checkpoint in the MLflow Model Registry; move champion if it wins")(_register_args)
def _register(args, params):
    from cc_core.registry import register  # why: a stage loads only its own modules (dvc.yaml deps)

    return register(params, args.model, args.transform, args.metrics_dir)


def _merge_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", default="models/cc", help="adapter checkpoint, CC or SFT (default: models/cc)")
    p.add_argument("--out", required=True, help="where the merged full checkpoint goes")
    p.add_argument("--base", default=None,
                   help="the base model directory (default: the one the adapter records; its hash is checked)")


@stage("merge", "merge a LoRA adapter checkpoint into its base model → a full checkpoint of the same kind")(_merge_args)
def _merge(args, params):
    from cc_core.modeling.loading import merge_checkpoint  # why: a stage loads only its own modules (dvc.yaml deps)

    return {"merged": str(merge_checkpoint(args.model, args.out, args.base))}


def _no_args(p: argparse.ArgumentParser) -> None:
    pass


# The preflight (cc_core/preflight.py): not a pipeline stage; it reads params and builds nothing.
@stage("check", "list what the params file needs (model, data, GPUs, disk) and whether it is there")(_no_args)
def _check(args, params):
    from cc_core.preflight import check  # why: a command loads only its own modules

    check(params, args.params)  # prints its own lines; a missing need is the one-line error


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
        import transformers  # why: heavy; only once a stage runs, not for --help

        transformers.utils.logging.set_verbosity_error()
        transformers.utils.logging.disable_progress_bar()
    except ImportError:  # pragma: no cover
        pass


def _print_result(result) -> None:
    if result is None:
        return
    data = asdict(result) if is_dataclass(result) else result
    print(json.dumps(data, indent=2, default=str, ensure_ascii=False))


def is_user_error(err: BaseException) -> bool:
    """The user's input (a bad param, file, model or store), printed as one line instead of a traceback:
    ValueError (every input check raises one: ConfigError, InputError, ...), OSError (a missing or
    unreadable file, a full disk: the message names it), and the few RuntimeErrors that mark
    themselves ``user_error = True`` (an unreachable hub or tracking store, diverged training).
    Checked by type, not by importing the error classes: a stage loads only its own modules."""
    return isinstance(err, (ValueError, OSError)) or bool(getattr(type(err), "user_error", False))


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    return build_parser().parse_args(argv)


def run(args: argparse.Namespace):
    """Run the stage ``args`` name and return its result; errors propagate (the Prefect flow runs
    dvc.yaml's commands through here, in-process, exactly as ``cctune`` would)."""
    from cc_core.config import load_params, parse_params  # why: pydantic schema; not needed for --help

    if args.stage == "score" and args.params == "params.yaml" and not Path("params.yaml").is_file():
        params = parse_params({}, overrides=args.overrides)  # scoring needs no project: run it anywhere
    else:
        params = load_params(args.params, args.overrides)
    return STAGES[args.stage][2](args, params)


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    _quiet_libraries()
    try:
        result = run(args)
    except Exception as err:
        if args.verbose or not is_user_error(err):
            raise
        print(f"cctune {args.stage}: error: {err}", file=sys.stderr)
        return 2
    _print_result(result)
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
