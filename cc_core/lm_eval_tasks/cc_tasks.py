"""Docs and scoring for the offline lm-eval tasks ``cc_<benchmark>`` (this folder; cc_core/lm_eval_backend.py).

Each task reads one benchmark × language from ``eval.data_dir``: ``--metadata '{"data_dir": DIR}'``
if given, else params.yaml's ``eval.data_dir`` in the current directory, else the fixture bundled
with the package. A doc holds the prompt exactly as ``cctune eval`` sees it (the user turn: run
lm-eval with ``--apply_chat_template``) and, for XNLI / XStoryCloze / MMMLU, the options as
``cctune eval --choice-scoring loglik`` scores them (``"(2) <option text>"`` after the prompt), so
acc / acc_norm equal its ``score`` / ``acc_norm``. XQuAD / MKQA / XLSum generate and are scored by
``cc_core.evaluate.score_output`` under ``eval.protocol`` (or ``--metadata '{"protocol": ...}'``).
"""

from __future__ import annotations

import json
from pathlib import Path

import datasets

from cc_core.config import load_params
from cc_core.data.benchmarks import get_spec, load_benchmark
from cc_core.loglik import option_continuations
from cc_core.metrics import score_item


def _project_setting(key: str, given, default):
    """``given`` (from --metadata), else params.yaml's ``eval.<key>`` in the current directory, else ``default``."""
    if given not in (None, ""):
        return given
    if Path("params.yaml").is_file():
        return getattr(load_params("params.yaml").eval, key)
    return default


def load_docs(benchmark: str, lang: str, data_dir: str | None = None, protocol: str | None = None, **unused):
    """``{"test": Dataset}`` of the items of ``benchmark`` × ``lang`` in the data directory; each doc
    carries the scoring protocol of the generative benchmarks."""
    spec = get_spec(benchmark)
    protocol = _project_setting("protocol", protocol, "lenient")
    rows = []
    for item in load_benchmark(spec.name, lang, _project_setting("data_dir", data_dir, "bundled")):
        row = {"id": item.id, "benchmark": spec.name, "lang": lang, "instruction": item.prompt,
               "gold_json": json.dumps(item.gold), "protocol": protocol}
        if spec.kind == "choice":
            labels, choices = option_continuations(spec, item)
            row.update(choices=choices, gold=labels.index(str(item.gold).strip()))
        rows.append(row)
    return {"test": datasets.Dataset.from_list(rows)}


def process_results(doc: dict, results: list[str]) -> dict[str, float]:
    """A generated answer scored as ``cctune eval`` / ``cctune score`` score it (0–100)."""
    spec = get_spec(doc["benchmark"])
    scored = score_item(spec.kind, doc["protocol"], results[0], json.loads(doc["gold_json"]), lang=doc["lang"],
                        prompt=doc["instruction"], labels=spec.labels, benchmark=spec.name)
    return {"score": 100 * scored.score}
