"""The ``eval`` and ``score`` stages: one benchmark × languages → predictions + scores.

    cctune eval --method cc --benchmark xnli                 # eval/cc/XNLI/<lang>.jsonl, metrics/eval/cc/XNLI.json
    cctune eval --method base --benchmark mkqa --langs de ja --limit 20
    cctune score --benchmark xnli --data-dir ../shared/benchmarks --lang zh --predictions preds.jsonl

``score`` scores the outputs of any inference engine with the same code path ``eval`` uses.
Scores are on the paper's 0–100 scale (accuracy, token F1, ROUGE-L; EM as an extra key).
"""

from __future__ import annotations

import logging
import statistics
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from cc_core.config import Params
from cc_core.data.benchmarks import BenchmarkItem, BenchmarkSpec, available_langs, check_lang, get_spec, load_benchmark
from cc_core.io import InputError, atomic_dir, iter_jsonl, write_json, write_jsonl
from cc_core.lineage import combined_sha256, items_sha256, scorer_sha256
from cc_core.generate import Generator
from cc_core.loglik import score_choice_items
from cc_core.metrics import ItemScore, check_protocol, score_item
from cc_core.modeling.transform_matrix import check_fit_record
from cc_core.tracking import Tracker

log = logging.getLogger(__name__)
METHOD_DIRS = {"base": "models/base", "sft": "models/sft", "cc": "models/cc"}  # the CLI's defaults
EVAL_DTYPES = {"auto": None, "float32": torch.float32, "bfloat16": torch.bfloat16}  # auto: bf16 on a GPU, else fp32
PACKAGE = Path(__file__).resolve().parent
# The code that turns outputs into scores, per way of scoring (the dispatch, the task kind's scorer and
# what they share; loglik: option log-likelihoods): its content hash goes into every metrics file
# (scorer_sha256), so a changed scorer never compares with scores of the old one.
SCORING_SOURCES = {kind: ("metrics.py", "scoring/common.py", f"scoring/{kind}.py") for kind in ("choice", "qa", "summary")}
SCORING_SOURCES["loglik"] = ("loglik.py",)


def scoring_identity(spec: BenchmarkSpec, protocol: str, choice_scoring: str) -> str:
    """``scorer_sha256`` of a benchmark's scores: the scoring code that ran and its settings."""
    way = "loglik" if spec.kind == "choice" and choice_scoring == "loglik" else spec.kind
    return scorer_sha256([PACKAGE / name for name in SCORING_SOURCES[way]], scoring=way, protocol=protocol,
                         kind=spec.kind)


def score_output(spec: BenchmarkSpec, item: BenchmarkItem, output: str, protocol: str) -> ItemScore:
    """One model output scored against the item's gold answer, as ``cctune eval`` / ``score`` do."""
    return score_item(spec.kind, protocol, output, item.gold, lang=item.lang, prompt=item.prompt,
                      labels=spec.labels, benchmark=spec.name)


def summarize(spec: BenchmarkSpec, lang: str, scores: list[ItemScore], outputs: list[str],
              protocol: str = "lenient") -> dict[str, Any]:
    """``{"benchmark", "lang", "n", "metric", "protocol", "score", "unparsed", "empty", ["em"]}``, 0–100 scale."""
    n = len(scores)
    summary: dict[str, Any] = {
        "benchmark": spec.name, "lang": lang, "n": n, "metric": spec.metric, "protocol": protocol,
        "score": round(100 * sum(s.score for s in scores) / n, 4) if n else 0.0,
        "unparsed": sum(s.parsed is None for s in scores),
        "empty": sum(not o.strip() for o in outputs),
    }
    if spec.kind == "qa":
        summary["em"] = round(100 * sum(s.extra.get("em", 0.0) for s in scores) / n, 4) if n else 0.0
    return summary


def read_predictions(path: str | Path, items: list[BenchmarkItem], partial: bool = False) -> list[str | None]:
    """Outputs aligned to ``items``: each line ``{"id": ..., "output": ...}`` or ``{"output": ...}``
    (then the line index is the item index). An item without a prediction is an error that says how
    to score the file (``--limit N`` when it covers the first N items, else ``--partial``); with
    ``partial`` it is None instead."""
    by_id = {item.id: index for index, item in enumerate(items)}
    outputs: list[str | None] = [None] * len(items)
    for position, (number, row) in enumerate(iter_jsonl(path)):
        if not isinstance(row, dict) or not isinstance(row.get("output"), str):
            raise InputError(f"{path}:{number}: expected an object with a string 'output'")
        if "id" in row:
            if row["id"] not in by_id:
                raise InputError(f"{path}:{number}: unknown id {row['id']!r} for this benchmark/language")
            index = by_id[row["id"]]
        else:
            index = position
            if index >= len(items):
                raise InputError(f"{path}:{number}: more predictions than the {len(items)} items")
        outputs[index] = row["output"]
    missing = [i for i, o in enumerate(outputs) if o is None]
    if missing and not partial:
        raise InputError(_missing_message(path, items, missing))
    return outputs


def _missing_message(path, items: list[BenchmarkItem], missing: list[int]) -> str:
    present = len(items) - len(missing)
    message = (f"{path}: no prediction for {len(missing)} of the {len(items)} items "
               f"(first: {items[missing[0]].id})")
    if present and missing[0] == present:  # the first items only, as an eval.limit run writes them
        return (message + f"; the file covers the first {present}: score those with --limit {present}, "
                "or only the items present with --partial")
    if present:
        return message + "; score only the items present with --partial"
    return message + ": is it this benchmark's and language's predictions file?"


def score(benchmark: str, data_dir: str | Path, lang: str, predictions: str | Path, limit: int | None = None,
          output: str | Path | None = None, protocol: str = "lenient", partial: bool = False) -> dict[str, Any]:
    """Score a predictions file against the benchmark's golds. ``partial``: score the items that have a
    prediction (the summary says how many of the benchmark's items that is), not all of them."""
    protocol = check_protocol(protocol)
    spec = get_spec(benchmark)
    items = load_benchmark(spec.name, lang, data_dir, limit)
    outputs = read_predictions(predictions, items, partial)
    scored = [(item, out) for item, out in zip(items, outputs) if out is not None]
    if not scored:
        raise InputError(f"{predictions}: no prediction for any of the {len(items)} items of {spec.name} {lang}")
    summary = summarize(spec, lang, [score_output(spec, i, o, protocol) for i, o in scored], [o for _, o in scored],
                        protocol)
    if partial:
        summary.update(partial=True, items_total=len(items))
    if output:
        write_json(output, summary)
    return summary


@dataclass(frozen=True)
class EvalResult:
    method: str
    benchmark: str
    average: float
    languages: dict[str, float]
    items: int
    unparsed: int
    seconds: float
    metrics_file: str


def resolve_langs(spec: BenchmarkSpec, data_dir, explicit: list[str] | None, configured: list[str]) -> list[str]:
    """``--langs`` must be valid for the benchmark; ``eval.langs`` is intersected with it (it is
    shared by all benchmarks); neither: every non-English language present in ``data_dir``."""
    if explicit:
        return [check_lang(spec, lang) for lang in explicit]
    present = available_langs(spec, data_dir)  # English too: the authors evaluate it (docs/method.md)
    if configured:
        chosen = [lang for lang in present if lang in configured]
        if not chosen:
            raise InputError(f"eval.langs={configured} shares no language with {spec.name} "
                             f"({' '.join(spec.langs)}) in {data_dir}")
        return chosen
    return present


def load_generator(params: Params, method: str, model_dir: str | Path | None, transform: str | Path,
                   device: str = "cpu"):
    """The Generator ``eval`` uses for ``method`` (its model directory unless ``model_dir`` is given),
    set up from ``eval.*``; for cc, in ``eval.cc_mode`` with the Transform Matrix of ``transform``."""
    mode = params.eval.cc_mode if method == "cc" else "none"
    if mode == "transform":
        check_fit_record(transform)  # before the model loads: the matrix must be the one `cctune fit` wrote
    return Generator.from_dirs(model_dir or METHOD_DIRS[method], transform=transform, mode=mode, device=device,
                               dtype=EVAL_DTYPES[params.eval.dtype], decision_mode=params.eval.decision_mode,
                               max_new_tokens=params.eval.max_new_tokens, batch_size=params.eval.batch_size,
                               max_prompt_len=params.eval.max_prompt_len, on_long_prompt=params.eval.on_long_prompt,
                               seed=params.eval.seed, cache=params.eval.cache, compile=params.eval.compile,
                               stop=params.eval.stop, add_special_tokens=params.eval.add_special_tokens,
                               anchor=params.model.anchor)


def inference_settings(params: Params, mode: str) -> dict[str, Any]:
    """What produced the outputs besides the model: recorded in every metrics file, named by the report
    (one seeded Gumbel draw per prompt, or the mean over several seeds; the dtype; the stopping rule)."""
    ep = params.eval
    settings: dict[str, Any] = {"dtype": ep.dtype, "stop": ep.stop, "add_special_tokens": ep.add_special_tokens}
    if mode != "none":
        seeds = list(range(ep.seed, ep.seed + ep.seeds)) if ep.decision_mode == "gumbel" else []
        settings.update(decision_mode=ep.decision_mode, gumbel_seeds=seeds, anchor=params.model.anchor)
    return settings


# flows/ calls it by its old private name until the flows rewrite merges; drop this alias then.


@dataclass
class LangResult:
    """One language of one benchmark: its summary and its prediction rows."""

    lang: str
    summary: dict[str, Any]
    rows: list[dict[str, Any]]


def run_items(generator, spec: BenchmarkSpec, items: list[BenchmarkItem],
              choice_scoring: str = "generate", protocol: str = "lenient") -> dict[str, LangResult]:
    """Generate for ``items`` (all languages in one length-sorted stream) and score them.
    ``choice_scoring="loglik"`` scores the option benchmarks by log-likelihood instead (cc_core.loglik)."""
    check = getattr(generator, "check_prompt_lengths", None)
    if check is not None:  # eval.on_long_prompt=error: fail before generating anything
        check([i.prompt for i in items], [i.id for i in items])
    if spec.kind == "choice" and choice_scoring == "loglik":
        return _stamp_lineage(generator, run_loglik_items(generator, spec, items))
    generations = generator.generate([i.prompt for i in items], [i.lang for i in items],
                                     [i.prompt_en for i in items])
    results: dict[str, LangResult] = {}
    for lang in dict.fromkeys(i.lang for i in items):
        picked = [(item, gen) for item, gen in zip(items, generations) if item.lang == lang]
        outputs = [gen.text for _, gen in picked]
        scores = [score_output(spec, item, out, protocol) for (item, _), out in zip(picked, outputs)]
        summary = summarize(spec, lang, scores, outputs, protocol)
        summary["prompts_truncated"] = sum(gen.prompt_truncated for _, gen in picked)
        summary["new_tokens"] = sum(gen.new_tokens for _, gen in picked)
        if spec.kind == "choice":
            summary["choice_scoring"] = "generate"
        rows = [{"id": item.id, "prompt": item.prompt, "output": out, "parsed": sc.parsed, "gold": item.gold,
                 "score": sc.score, **({"em": sc.extra["em"]} if "em" in sc.extra else {}),
                 "chosen_layer": gen.chosen_layer, "prompt_truncated": gen.prompt_truncated}
                for (item, gen), out, sc in zip(picked, outputs, scores)]
        results[lang] = LangResult(lang, summary, rows)
        log.info("%s %s: %s %.2f (n=%d, unparsed %d)", spec.name, lang, spec.metric, summary["score"],
                 summary["n"], summary["unparsed"])
    return _stamp_lineage(generator, results)


def run_items_seeds(generator, spec: BenchmarkSpec, items: list[BenchmarkItem], choice_scoring: str,
                    protocol: str, seeds: int) -> dict[str, LangResult]:
    """:func:`run_items` under ``seeds`` Gumbel seeds (eval.seed, +1, ...) when the Decision Maker samples
    (decision_mode gumbel, as the reference): every score is the mean over seeds, with the per-seed
    values and their standard deviation beside it. Other modes are deterministic: one run."""
    if seeds <= 1 or getattr(generator, "decision_mode", "argmax") != "gumbel" or generator.mode == "none":
        return run_items(generator, spec, items, choice_scoring, protocol)
    first_seed, runs = generator.seed, []
    try:
        for k in range(seeds):
            generator.seed = first_seed + k
            runs.append(run_items(generator, spec, items, choice_scoring, protocol))
    finally:
        generator.seed = first_seed
    merged: dict[str, LangResult] = {}
    for lang, first in runs[0].items():
        per_seed = [run[lang].summary["score"] for run in runs]
        summary = {**first.summary, "score": round(sum(per_seed) / seeds, 4),
                   "score_by_seed": {str(first_seed + k): v for k, v in enumerate(per_seed)},
                   "seed_std": round(statistics.pstdev(per_seed), 4)}
        rows = [{**row, "score": sum(run[lang].rows[i]["score"] for run in runs) / seeds,
                 "score_by_seed": [run[lang].rows[i]["score"] for run in runs]}
                for i, row in enumerate(first.rows)]
        merged[lang] = LangResult(lang, summary, rows)
    return merged


def _stamp_lineage(generator, results: dict[str, LangResult]) -> dict[str, LangResult]:
    """Every language's summary names the checkpoint (and Transform Matrix) that produced it, so
    results gathered from several workers can be checked to come from the same model."""
    for result in results.values():
        result.summary.update(getattr(generator, "lineage", {}) or {})
    return results


LINEAGE_KEYS = ("checkpoint_sha256", "transform_sha256")


def _lineage(benchmark: str, per_lang: dict[str, dict]) -> dict[str, str]:
    """The one checkpoint (and matrix) behind all languages; results of different models never mix."""
    lineage = {}
    for key in LINEAGE_KEYS:
        values = {v[key] for v in per_lang.values() if key in v}
        if len(values) > 1:
            raise InputError(f"{benchmark}: languages were evaluated with different {key.split('_')[0]}s "
                             f"({', '.join(sorted(x[:12] for x in values))}): re-run the evaluation")
        if values:
            lineage[key] = values.pop()
    return lineage


def run_loglik_items(generator, spec: BenchmarkSpec, items: list[BenchmarkItem]) -> dict[str, LangResult]:
    """Score every option of ``items`` by log-likelihood (cc_core.loglik); ``parsed`` = the acc choice."""
    scored = score_choice_items(generator, spec, items)
    results: dict[str, LangResult] = {}
    for lang in dict.fromkeys(i.lang for i in items):
        picked = [(item, r) for item, r in zip(items, scored) if item.lang == lang]
        gold = [str(item.gold).strip() for item, _ in picked]
        scores = [ItemScore(float(r.chosen == g), r.chosen) for (_, r), g in zip(picked, gold)]
        outputs = [r.continuations[r.labels.index(r.chosen)] for _, r in picked]
        summary = summarize(spec, lang, scores, outputs)
        n = len(picked)

        def percent(hits) -> float:
            return round(100 * sum(hits) / n, 4) if n else 0.0

        summary["acc_norm"] = percent(r.chosen_norm == g for (_, r), g in zip(picked, gold))  # lm-eval acc_norm
        summary["acc_bytes"] = percent(r.chosen_bytes == g for (_, r), g in zip(picked, gold))
        summary["choice_scoring"] = "loglik"
        summary["prompts_truncated"] = sum(r.prompt_truncated for _, r in picked)
        rows = [{"id": item.id, "prompt": item.prompt, "output": out, "parsed": r.chosen, "gold": item.gold,
                 "score": sc.score, "score_norm": float(r.chosen_norm == g), "parsed_norm": r.chosen_norm,
                 "loglik": dict(zip(r.labels, r.logliks)), "option_tokens": dict(zip(r.labels, r.tokens)),
                 "chosen_layer": r.chosen_layer, "prompt_truncated": r.prompt_truncated}
                for (item, r), out, sc, g in zip(picked, outputs, scores, gold)]
        results[lang] = LangResult(lang, summary, rows)
        log.info("%s %s: loglik acc %.2f, acc_norm %.2f (n=%d)", spec.name, lang, summary["score"],
                 summary["acc_norm"], n)
    return results


def write_results(params: Params, method: str, benchmark: str, results: dict[str, LangResult], mode: str,
                  seconds: float, out_root: str | Path = "eval", metrics_root: str | Path = "metrics/eval",
                  model_dir: str | Path | None = None, failed: dict[str, str] | None = None,
                  requested: list[str] | None = None) -> EvalResult:
    """Write ``eval/<method>/<benchmark>/<lang>.jsonl`` and ``metrics/eval/<method>/<benchmark>.json``
    (atomically) and log the scores to the method's MLflow run. ``failed``: languages that
    could not be evaluated (e.g. a task that failed after its retries), recorded, not fatal.
    ``requested``: the languages asked for (default: the evaluated and failed ones); the metrics
    file says when the average covers fewer, and the report flags it."""
    spec = get_spec(benchmark)
    for lang, result in results.items():  # file names below come from these keys: only real languages
        check_lang(spec, lang)
        if result.lang != lang:
            raise InputError(f"{spec.name}: the result filed under {lang!r} is for {result.lang!r}")
    per_lang = {lang: r.summary for lang, r in results.items()}
    average = _mean([v["score"] for v in per_lang.values()])
    requested = list(requested or [*per_lang, *(failed or {})])
    paper_langs = [lang for lang in spec.langs if lang in per_lang]
    protocols = {v.get("protocol", "lenient") for v in per_lang.values()}
    report = {"benchmark": spec.name, "method": method, "metric": spec.metric, "mode": mode,
              "protocol": protocols.pop() if len(protocols) == 1 else "mixed",
              "inference": inference_settings(params, mode),
              **_lineage(spec.name, per_lang),
              "average": average, "unparsed": sum(v["unparsed"] for v in per_lang.values()),
              "items": sum(v["n"] for v in per_lang.values()), "seconds": round(seconds, 2),
              "langs_requested": requested, "langs_missing": [lang for lang in requested if lang not in per_lang],
              # the paper's table averages its 10 languages, English included; and without English
              "average_paper_langs": _mean([per_lang[lang]["score"] for lang in paper_langs]),
              "paper_langs_evaluated": f"{len(paper_langs)}/{len(spec.langs)}",
              "average_non_en": _mean([v["score"] for lang, v in per_lang.items() if lang != "en"]),
              "languages": per_lang, **({"failed_languages": failed} if failed else {})}
    # What the score was computed on and with: comparable only with scores of equal hashes.
    data_hashes = {lang: v["data_sha256"] for lang, v in per_lang.items() if "data_sha256" in v}
    report["eval_data_sha256"] = combined_sha256(data_hashes) if len(data_hashes) == len(per_lang) else None
    choice_ways = {v.get("choice_scoring", "generate") for v in per_lang.values()}
    report["scorer_sha256"] = scoring_identity(spec, report["protocol"], choice_ways.pop()) \
        if len(choice_ways) == 1 else None
    scoring = {v["choice_scoring"] for v in per_lang.values() if "choice_scoring" in v}
    if scoring:  # option benchmarks: how the option was chosen (and loglik's length-normalised accuracy)
        report["choice_scoring"] = scoring.pop() if len(scoring) == 1 else "mixed"
        if all("acc_norm" in v for v in per_lang.values()):
            report["acc_norm"] = round(sum(v["acc_norm"] for v in per_lang.values()) / len(per_lang), 4)
    with atomic_dir(Path(out_root) / method / spec.name) as tmp:
        for lang, result in results.items():
            write_jsonl(tmp / f"{lang}.jsonl", result.rows)
    metrics_file = Path(metrics_root) / method / f"{spec.name}.json"
    write_json(metrics_file, report)
    _log_to_run(params, method, model_dir, report)
    return EvalResult(method, spec.name, average, {k: v["score"] for k, v in per_lang.items()}, report["items"],
                      report["unparsed"], round(seconds, 2), str(metrics_file))


def evaluate_languages(params: Params, method: str, benchmark: str, langs: list[str], generator,
                       limit: int | None = None, choice_scoring: str | None = None) -> dict[str, LangResult]:
    """Generate for and score ``langs`` of ``benchmark`` with ``generator`` (their items in one
    length-sorted stream). The one evaluation unit of every front door: ``cctune eval`` (every
    language), the flow's per-language tasks, the cluster's evaluation jobs (a group of languages).
    Each language's summary records the content hash of the items it was scored on (``data_sha256``)."""
    spec = get_spec(benchmark)
    limit = limit or params.eval.limit_for(spec.name)
    items = [item for lang in langs for item in load_benchmark(spec.name, lang, params.eval.data_dir, limit)]
    results = run_items_seeds(generator, spec, items, choice_scoring or params.eval.choice_scoring,
                              params.eval.protocol, params.eval.seeds)
    for lang, result in results.items():
        result.summary["data_sha256"] = items_sha256(item for item in items if item.lang == lang)
    return results


def evaluate(params: Params, method: str, benchmark: str, langs: list[str] | None = None, limit: int | None = None,
             model_dir: str | Path | None = None, transform: str | Path = "transform", out_root: str | Path = "eval",
             metrics_root: str | Path = "metrics/eval", generator=None, choice_scoring: str | None = None) -> EvalResult:
    """Generate for every language of ``benchmark`` and score; outputs written atomically.
    ``choice_scoring`` (default ``eval.choice_scoring``): ``generate`` | ``loglik`` for XNLI/XStoryCloze/MMMLU."""
    if method not in METHOD_DIRS:
        raise ValueError(f"--method must be one of {', '.join(METHOD_DIRS)}, not {method!r}")
    spec = get_spec(benchmark)
    langs = resolve_langs(spec, params.eval.data_dir, langs, params.eval.langs)
    generator = generator or load_generator(params, method, model_dir, transform)
    started = time.perf_counter()
    results = evaluate_languages(params, method, spec.name, langs, generator, limit, choice_scoring)
    return write_results(params, method, spec.name, results, generator.mode, time.perf_counter() - started,
                         out_root, metrics_root, model_dir, requested=langs)


def _mean(values: list[float]) -> float | None:
    return round(sum(values) / len(values), 4) if values else None


def _log_to_run(params: Params, method: str, model_dir, report: dict) -> None:
    """Scores go into the method's training run (the base model gets a run of its own)."""
    tracker = Tracker(params.tracking)
    run_id = tracker.training_run_id(report.get("checkpoint_sha256")) if method != "base" else None
    name = report["benchmark"]
    with tracker.run(f"eval-{method}", run_id=run_id or base_run_id(tracker, params),
                     tags={"method": method}) as run:
        run.log_metrics({f"eval_{name}_avg": report["average"], f"eval_{name}_unparsed": report["unparsed"],
                         **{f"eval_{name}_{lang}": v["score"] for lang, v in report["languages"].items()}})


def base_run_id(tracker, params: Params) -> str | None:
    """The newest run tagged method=base for this base model (created on first use)."""
    return tracker.find_or_create_run("base", {"method": "base", "base_model": params.model.base})
