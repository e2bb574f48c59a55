"""The ``report`` stage: methods × benchmarks × languages, CC − SFT deltas with bootstrap CIs, plots.

    cctune report          # metrics/eval + eval/ → reports/summary.{md,csv,json}, reports/plots/*.png,
                           # reports/scores.json (a DVC plot), metrics/report/<benchmark>.json (DVC metrics)

A delta's 95% interval comes from a paired bootstrap over items (the same items resampled for
both methods, languages pooled per benchmark), so a user can tell a real gain from noise.

DVC metrics stay small and flat, so ``dvc metrics show`` fits a terminal: one file per benchmark
(and ``mean``), each with the same keys (a row each): the methods' averages, ``cc-sft`` and its
interval (``cc-sft_lo``, ``cc-sft_up``), ``items``; two decimals. Everything per language (scores,
deltas, intervals) is in ``reports/summary.json``, ``summary.csv`` and ``summary.md``.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cc_core.config import Params
from cc_core.data.benchmarks import BENCHMARKS, canonical_benchmark
from cc_core.io import atomic_dir, atomic_file, iter_jsonl, read_json, write_json
from cc_core.tracking import Tracker

log = logging.getLogger(__name__)
# modeling.base.TINY_PREFIX (a test keeps them equal): the report needs the name, not the model code
RANDOM_MODEL_PREFIX = "tiny-random-"
METHODS = ("base", "sft", "cc")
# CC-Tuning's published scores (Ye et al., ACL 2025; one setting, as listed publicly, most likely
# Llama-3.1-8B): the paper's 10 languages of each benchmark, English included.
PAPER_SCORES = {"XNLI": 53.06, "XStoryCloze": 80.93, "MMMLU": 49.65, "XQuAD": 64.26, "MKQA": 15.94, "XLSum": 13.05}


def incomplete(data: dict) -> str | None:
    """Why a benchmark's average covers fewer languages than asked (None when it covers them all)."""
    missing = list(data.get("langs_missing") or [])
    failed = data.get("failed_languages") or {}
    missing += [lang for lang in failed if lang not in missing]
    if not missing:
        return None
    asked = data.get("langs_requested") or [*data.get("languages", {}), *missing]
    return f"averaged over {len(asked) - len(missing)} of {len(asked)} languages (missing: {', '.join(missing)})"


def load_scores(metrics_root: Path, benchmarks: list[str] | None = None) -> dict[str, dict[str, dict]]:
    """``{method: {benchmark: metrics json}}`` for the evaluated ones among ``benchmarks`` (all six
    if None; files left over from benchmarks no longer in eval.benchmarks are ignored)."""
    wanted = set(BENCHMARKS) if benchmarks is None else {canonical_benchmark(b) for b in benchmarks}
    found: dict[str, dict[str, dict]] = {}
    for method in METHODS:
        for name in (b for b in BENCHMARKS if b in wanted):
            path = metrics_root / method / f"{name}.json"
            if path.is_file():
                found.setdefault(method, {})[name] = read_json(path)  # a damaged file is named in the error
    return found


def item_scores(eval_root: Path, method: str, benchmark: str) -> dict[str, dict[str, float]]:
    """``{lang: {item id: score}}`` from the predictions files ``<lang>.jsonl`` (0–1 per item)."""
    folder = eval_root / method / benchmark
    return {path.stem: {row["id"]: float(row["score"]) for _, row in iter_jsonl(path)}
            for path in (sorted(folder.glob("*.jsonl")) if folder.is_dir() else [])}


def _pooled(by_lang: dict[str, dict[str, float]]) -> dict[str, float]:
    return {item: score for scores in by_lang.values() for item, score in scores.items()}


def paired_bootstrap(a: dict[str, float], b: dict[str, float], samples: int, confidence: float,
                     seed: int) -> dict[str, float] | None:
    """Mean(a − b) over shared items ×100, with a percentile bootstrap interval."""
    shared = sorted(set(a) & set(b))
    if not shared:
        return None
    diffs = [a[i] - b[i] for i in shared]
    rng = random.Random(seed)
    n = len(diffs)
    means = sorted(sum(diffs[rng.randrange(n)] for _ in range(n)) / n for _ in range(samples))
    tail = (1 - confidence) / 2
    low, high = means[int(tail * (samples - 1))], means[int((1 - tail) * (samples - 1))]
    return {"delta": round(100 * sum(diffs) / n, 3), "low": round(100 * low, 3), "high": round(100 * high, 3),
            "n": n, "significant": low > 0 or high < 0}


def stratified_bootstrap(pairs: list[tuple[dict[str, float], dict[str, float]]], samples: int, confidence: float,
                         seed: int) -> dict[str, float] | None:
    """The mean over benchmarks of their mean(a − b) ×100, with a percentile interval from resampling
    items within each benchmark (the ``mean`` row: every benchmark weighs the same, as in the table)."""
    diffs = [[a[i] - b[i] for i in sorted(set(a) & set(b))] for a, b in pairs]
    diffs = [d for d in diffs if d]
    if not diffs:
        return None
    rng = random.Random(seed)
    means = sorted(sum(sum(d[rng.randrange(len(d))] for _ in d) / len(d) for d in diffs) / len(diffs)
                   for _ in range(samples))
    tail = (1 - confidence) / 2
    low, high = means[int(tail * (samples - 1))], means[int((1 - tail) * (samples - 1))]
    delta = sum(sum(d) / len(d) for d in diffs) / len(diffs)
    return {"delta": round(100 * delta, 3), "low": round(100 * low, 3), "high": round(100 * high, 3),
            "n": sum(len(d) for d in diffs), "significant": low > 0 or high < 0}


def dvc_metrics(scores, deltas, benchmarks, methods, mean_delta) -> dict[str, dict[str, float]]:
    """``{row: {key: value}}`` for ``metrics/report/<row>.json``: a row per benchmark and ``mean``,
    the same flat keys in each (DVC shows files as rows and keys as columns)."""
    rows: dict[str, dict[str, float]] = {}
    for bench in benchmarks:
        row = {m: scores[m][bench]["average"] for m in methods if scores[m].get(bench, {}).get("average") is not None}
        rows[bench] = {**row, **_delta_keys(deltas.get("cc - sft", {}).get(bench))}
    means = {}
    for method in methods:
        values = [scores[method][b]["average"] for b in benchmarks
                  if scores[method].get(b, {}).get("average") is not None]
        if values:
            means[method] = round(sum(values) / len(values), 4)
    rows["mean"] = {**means, **_delta_keys(mean_delta)}
    # two decimals on the 0-100 scale: enough to compare, and the table stays narrow
    return {name: {k: round(v, 2) if isinstance(v, float) else v for k, v in row.items()} for name, row in rows.items()}


def _delta_keys(delta: dict | None) -> dict[str, float]:
    if not delta:
        return {}
    return {"cc-sft": delta["delta"], "cc-sft_lo": delta["low"], "cc-sft_up": delta["high"], "items": delta["n"]}


def random_model_note(base: str) -> str | None:
    """The first line of the summary when the base model is a random smoke-test model."""
    if not base.startswith(RANDOM_MODEL_PREFIX):
        return None
    return (f"> **Smoke run.** `{base}` is a 2-layer model with random weights: its scores are chance level "
            "and its deltas noise. This profile checks that every stage runs and connects (predictions, "
            "scores, intervals, plots, registration), not the method; use params.yaml or params.paper.yaml "
            "for numbers that mean something.")


@dataclass(frozen=True)
class ReportResult:
    out_dir: str
    methods: list[str]
    benchmarks: list[str]
    deltas: dict[str, Any]


def _fmt(value: float | None) -> str:
    return "–" if value is None else f"{value:.2f}"


def decision_text(settings: dict) -> str:
    """How the CC model's Decision Maker chose at inference, as the report states it."""
    mode, seeds = settings.get("decision_mode"), settings.get("gumbel_seeds") or []
    if mode != "gumbel":
        return f"{mode} (deterministic)"
    if len(seeds) == 1:
        return f"one seeded Gumbel draw per prompt (seed {seeds[0]}), as the authors' one draw (theirs unseeded)"
    return f"the mean over {len(seeds)} seeded Gumbel draws per prompt (seeds {', '.join(map(str, seeds))})"


def inference_lines(scores, methods, benchmarks) -> list[str]:
    """Markdown lines naming the inference settings of the metrics files (older files have none)."""
    lines = []
    for method in methods:
        kinds = {json.dumps(scores[method][b]["inference"], sort_keys=True) for b in benchmarks
                 if "inference" in scores[method].get(b, {})}
        for kind in sorted(kinds):
            settings = json.loads(kind)
            text = (f"Inference ({method}): dtype {settings['dtype']}, stop at {settings['stop']}, "
                    f"tokenizer specials {'added' if settings['add_special_tokens'] else 'not added'}")
            if "decision_mode" in settings:
                text += f"; anchor {settings['anchor']}; Decision Maker: {decision_text(settings)}"
            lines += [text + ".", ""]
    return lines


def _markdown(scores, deltas, benchmarks, methods, confidence, paper: bool = False, note: str | None = None) -> str:
    lines = [note, ""] if note else []
    lines += ["# CC-Tuning evaluation summary", "",
             "Scores on the paper's 0–100 scale (accuracy for XNLI/XStoryCloze/MMMLU, token F1 for XQuAD/MKQA, "
             "ROUGE-L for XLSum), averaged over languages.", ""]
    protocols = sorted({scores[m][b].get("protocol", "lenient") for m in methods for b in benchmarks if b in scores[m]})
    lines += [f"Scoring protocol: {', '.join(protocols)} (lenient = robust option and number parsing, for "
              "CC-vs-SFT deltas; standard = the reference scripts, comparable with published numbers).", ""]
    # how the option benchmarks chose their answer: parsed from generated text, or by log-likelihood
    lines += inference_lines(scores, methods, benchmarks)
    scoring = sorted({scores[m][b].get("choice_scoring", "generate") for m in methods for b in benchmarks
                      if b in scores[m] and BENCHMARKS[b].kind == "choice"})
    if scoring:
        lines += [f"Choice scoring (XNLI/XStoryCloze/MMMLU): {', '.join(scoring)} "
                  "(generate = option parsed from the generated answer; loglik = highest summed "
                  "log-likelihood, as lm-evaluation-harness's acc).", ""]
    lines += ["| method | " + " | ".join(benchmarks) + " | mean |", "|---" * (len(benchmarks) + 2) + "|"]
    notes: list[str] = []
    for method in methods:
        values = [scores[method].get(b, {}).get("average") for b in benchmarks]
        present = [v for v in values if v is not None]
        mean = sum(present) / len(present) if present else None
        cells = []
        for bench, value in zip(benchmarks, values):
            why = incomplete(scores[method].get(bench, {}))
            cells.append(_fmt(value) + (" †" if why else ""))
            if why:
                notes.append(f"† {method} {bench}: {why}")
        lines.append(f"| {method} | " + " | ".join(cells) + f" | {_fmt(mean)} |")
    if notes:
        lines += ["", "**Incomplete averages** (not comparable with complete ones):", ""]
        lines += [f"- {note}" for note in notes]
    lines += ["", "## Averages as the paper reports them", "",
              "The paper's language set of each benchmark (its 10 languages, English included) and the "
              "non-English languages alone, over the languages evaluated here.", "",
              "| benchmark | method | paper-language average | languages | non-English average |"
              + (" paper (CC-Tuning) |" if paper else ""),
              "|---|---|---|---|---|" + ("---|" if paper else "")]
    for bench in benchmarks:
        for method in methods:
            data = scores[method].get(bench)
            if not data:
                continue
            published = f" {PAPER_SCORES[bench]:.2f} |" if paper and method == "cc" else (" |" if paper else "")
            lines.append(f"| {bench} | {method} | {_fmt(data.get('average_paper_langs'))} | "
                         f"{data.get('paper_langs_evaluated', '–')} | {_fmt(data.get('average_non_en'))} |" + published)
    for pair, table in deltas.items():
        lines += ["", f"## {pair} (paired bootstrap, {int(confidence * 100)}% interval over items)", "",
                  "| benchmark | delta | interval | items | beyond noise |", "|---|---|---|---|---|"]
        for bench, d in table.items():
            lines.append(f"| {bench} | {d['delta']:+.2f} | [{d['low']:+.2f}, {d['high']:+.2f}] | {d['n']} | "
                         f"{'yes' if d['significant'] else 'no'} |")
    for bench in benchmarks:
        langs = sorted({lang for m in methods for lang in scores[m].get(bench, {}).get("languages", {})})
        if not langs:
            continue
        lines += ["", f"## {bench} by language", "", "| method | " + " | ".join(langs) + " | unparsed |",
                  "|---" * (len(langs) + 2) + "|"]
        for method in methods:
            per = scores[method].get(bench, {}).get("languages", {})
            lines.append(f"| {method} | " + " | ".join(_fmt(per.get(l, {}).get("score")) for l in langs)
                         + f" | {scores[method].get(bench, {}).get('unparsed', '–')} |")
    return "\n".join(lines) + "\n"


def _plots(plot_dir: Path, scores, benchmarks, methods, metrics_dir: Path) -> list[str]:
    # why: only the plots need matplotlib (a second to import), and its Agg backend must be chosen
    # before pyplot loads
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    written = []
    for bench in benchmarks:
        langs = sorted({lang for m in methods for lang in scores[m].get(bench, {}).get("languages", {})})
        if not langs:
            continue
        fig, ax = plt.subplots(figsize=(max(6, len(langs) * 0.9), 3.5))
        width = 0.8 / max(len(methods), 1)
        for k, method in enumerate(methods):
            per = scores[method].get(bench, {}).get("languages", {})
            ax.bar([i + k * width for i in range(len(langs))], [per.get(l, {}).get("score", 0) for l in langs],
                   width, label=method)
        ax.set_xticks([i + width * (len(methods) - 1) / 2 for i in range(len(langs))], langs)
        ax.set_ylabel(BENCHMARKS[bench].metric)
        ax.set_title(bench)
        ax.legend()
        fig.tight_layout()
        fig.savefig(plot_dir / f"{bench}.png", dpi=100)
        plt.close(fig)
        written.append(f"{bench}.png")
    train_cc = metrics_dir / "train_cc.json"
    counts = json.loads(train_cc.read_text()).get("layer_choice_counts", {}) if train_cc.is_file() else {}
    if counts:
        fig, ax = plt.subplots(figsize=(7, 3))
        ax.bar([int(k.split("_")[1]) for k in counts], list(counts.values()))
        ax.set_xlabel("layer")
        ax.set_ylabel("times chosen in training")
        ax.set_title("Decision Maker layer choice")
        fig.tight_layout()
        fig.savefig(plot_dir / "decision_maker_layers.png", dpi=100)
        plt.close(fig)
        written.append("decision_maker_layers.png")
    per_layer = metrics_dir / "transform_per_layer.json"
    if per_layer.is_file():
        rows = json.loads(per_layer.read_text())
        split = "heldout" if any(r["split"] == "heldout" for r in rows) else "fit"
        fig, ax = plt.subplots(figsize=(7, 3))
        for name in ("transform", "identity"):
            pts = [(r["layer"], r["cosine"]) for r in rows if r["split"] == split and r["map"] == name]
            ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=name)
        ax.set_xlabel("layer")
        ax.set_ylabel(f"cosine(BM, A), {split}")
        ax.set_title("Transform Matrix fit per layer")
        ax.legend()
        fig.tight_layout()
        fig.savefig(plot_dir / "transform_fit.png", dpi=100)
        plt.close(fig)
        written.append("transform_fit.png")
    return written


def report(params: Params, metrics_dir: str | Path = "metrics", eval_root: str | Path = "eval",
           out_dir: str | Path = "reports") -> ReportResult:
    metrics_dir, eval_root, out_dir = Path(metrics_dir), Path(eval_root), Path(out_dir)
    scores = load_scores(metrics_dir / "eval", params.eval.benchmarks)
    methods = [m for m in METHODS if m in scores]
    benchmarks = [b for b in BENCHMARKS if any(b in scores[m] for m in methods)]
    rp = params.report
    items = {(m, bench): item_scores(eval_root, m, bench) for m in methods for bench in benchmarks}  # read once

    def bootstrap(a: dict[str, float], b: dict[str, float]) -> dict[str, float] | None:
        return paired_bootstrap(a, b, rp.bootstrap_samples, rp.confidence, rp.seed)

    deltas: dict[str, dict[str, Any]] = {}
    for a, b in (("cc", "sft"), ("cc", "base"), ("sft", "base")):
        if a in scores and b in scores:
            table = {}
            for bench in benchmarks:
                mine, theirs = items[(a, bench)], items[(b, bench)]
                d = bootstrap(_pooled(mine), _pooled(theirs))
                if d:
                    langs = scores[a].get(bench, {}).get("languages", {})
                    per_lang = {lang: bootstrap(mine.get(lang, {}), theirs.get(lang, {})) for lang in langs}
                    table[bench] = {**d, "languages": {k: v for k, v in per_lang.items() if v}}
            deltas[f"{a} - {b}"] = table
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    # Score rows per method, then delta rows ("cc - sft") with their bootstrap interval.
    writer.writerow(["method", "benchmark", "lang", "metric", "score", "n", "unparsed", "low", "high", "significant",
                     "protocol", "note"])
    for method in methods:
        for bench in benchmarks:
            data = scores[method].get(bench)
            if not data:
                continue
            protocol = data.get("protocol", "lenient")
            for lang, v in data["languages"].items():
                writer.writerow([method, bench, lang, data["metric"], v["score"], v["n"], v["unparsed"], "", "", "",
                                 protocol, ""])
            writer.writerow([method, bench, "avg", data["metric"], data["average"], data["items"], data["unparsed"],
                             "", "", "", protocol, incomplete(data) or ""])
            for key in ("average_paper_langs", "average_non_en"):
                writer.writerow([method, bench, key, data["metric"], data.get(key), "", "", "", "", "", protocol, ""])
    for pair, table in deltas.items():
        for bench, d in table.items():
            metric = next(scores[m][bench]["metric"] for m in methods if bench in scores[m])
            for lang, dl in d["languages"].items():
                writer.writerow([pair, bench, lang, f"delta {metric}", dl["delta"], dl["n"], "", dl["low"], dl["high"],
                                 dl["significant"], "", ""])
            writer.writerow([pair, bench, "avg", f"delta {metric}", d["delta"], d["n"], "", d["low"], d["high"],
                             d["significant"], "", ""])
    mean_delta = None
    if "cc" in scores and "sft" in scores:
        mean_delta = stratified_bootstrap([(_pooled(items[("cc", b)]), _pooled(items[("sft", b)])) for b in benchmarks],
                                          rp.bootstrap_samples, rp.confidence, rp.seed)
    plots_dir = out_dir / "plots"
    with atomic_dir(plots_dir) as tmp:
        _plots(tmp, scores, benchmarks, methods, metrics_dir)
    with atomic_file(out_dir / "summary.csv") as handle:
        handle.write(buffer.getvalue())
    with atomic_file(out_dir / "summary.md") as handle:
        handle.write(_markdown(scores, deltas, benchmarks, methods, rp.confidence, rp.paper_reference,
                               random_model_note(params.model.base)))
    means = {m: {b: scores[m][b]["average"] for b in scores[m]} for m in methods}
    flagged = {f"{m}/{b}": why for m in methods for b in scores[m] if (why := incomplete(scores[m][b]))}
    # per-language detail: a plain JSON output, not a DVC metric (it would make hundreds of columns)
    write_json(out_dir / "summary.json", {"averages": means, "deltas": deltas, "mean_delta_cc_sft": mean_delta,
                                          "incomplete": flagged,
                                          "protocols": sorted({scores[m][b].get("protocol", "lenient")
                                                               for m in methods for b in scores[m]})})
    # the DVC plot of scores per benchmark: one bar per (benchmark, method)
    write_json(out_dir / "scores.json", [{"benchmark": b, "method": m, "bar": f"{b} {m}",
                                          "score": scores[m][b]["average"]}
                                         for b in benchmarks for m in methods
                                         if scores[m].get(b, {}).get("average") is not None])
    with atomic_dir(metrics_dir / "report") as tmp:
        for row, values in dvc_metrics(scores, deltas, benchmarks, methods, mean_delta).items():
            write_json(tmp / f"{row}.json", values)
    _log_report(params, out_dir, metrics_dir)
    return ReportResult(str(out_dir), methods, benchmarks, deltas)


def _log_report(params: Params, out_dir: Path, metrics_dir: Path) -> None:
    """The report goes into the CC model's training run (found by the checkpoint its scores name)."""
    evaluated = sorted((metrics_dir / "eval" / "cc").glob("*.json"))
    checkpoint = read_json(evaluated[0]).get("checkpoint_sha256") if evaluated else None
    tracker = Tracker(params.tracking)
    run_id = tracker.training_run_id(checkpoint)
    if not run_id:
        return
    with tracker.run("report", run_id=run_id) as run:
        run.log_artifacts(out_dir, "report")
