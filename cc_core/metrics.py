"""Scoring benchmark items: the one dispatch, by task kind and protocol.

    score_item("choice", "lenient", output, "2", lang="zh", prompt=prompt, labels=("1", "2", "3"))
    score_item("qa", "standard", output, ["Paul Zerdin"], lang="de", benchmark="MKQA")
    score_item("summary", "standard", output, reference, lang="ar")

A benchmark's ``kind`` (``BenchmarkSpec.kind``) picks the scorer, each in its own module with the
protocol as a parameter: ``choice`` (XNLI, XStoryCloze, MMMLU: accuracy; cc_core.scoring.choice),
``qa`` (XQuAD, MKQA: token F1 and exact match; cc_core.scoring.qa), ``summary`` (XLSum: ROUGE-L;
cc_core.scoring.summary). Protocols:

- ``lenient``: reads option words, look-alike letters and native digits, canonicalises numbers,
  scores zh/ja/th per character; standard library only. Good for CC-vs-SFT deltas.
- ``standard``: the benchmarks' reference scripts reimplemented (strict labels, SQuAD v1.1 / MLQA,
  MKQA, rouge-score with XL-Sum's tokenisation), so numbers are comparable with published ones.

Scores are in [0, 1]; ``cc_core.evaluate`` reports them on the paper's 0-100 scale.
"""

from __future__ import annotations

from collections.abc import Sequence

from cc_core.scoring.choice import score_choice
from cc_core.scoring.common import ItemScore
from cc_core.scoring.qa import score_qa
from cc_core.scoring.summary import score_summary

__all__ = ["KINDS", "PROTOCOLS", "ItemScore", "check_protocol", "score_item"]

PROTOCOLS = ("lenient", "standard")
KINDS = ("choice", "qa", "summary")  # cc_core.data.benchmarks.BenchmarkSpec.kind


def check_protocol(protocol: str) -> str:
    """``protocol`` if it is one of :data:`PROTOCOLS`, else ``ValueError`` listing them."""
    if protocol not in PROTOCOLS:
        raise ValueError(f"unknown scoring protocol {protocol!r}; valid: {', '.join(PROTOCOLS)}")
    return protocol


def score_item(kind: str, protocol: str, output: str, gold, *, lang: str, prompt: str = "",
               labels: Sequence[str] = (), benchmark: str = "") -> ItemScore:
    """Score one benchmark item under ``protocol``.

    ``kind`` "choice" needs ``prompt`` and ``labels`` (``gold`` the label); "qa" takes ``gold`` as a
    string or a list of strings ("standard" needs ``benchmark`` = "XQuAD" or "MKQA"); "summary" takes
    the reference. Unknown ``protocol`` or ``kind`` raise ``ValueError`` listing the valid ones."""
    check_protocol(protocol)
    if kind == "choice":
        return score_choice(output, str(gold), lang, prompt, labels, protocol)
    if kind == "qa":
        return score_qa(output, [gold] if isinstance(gold, str) else list(gold), lang, protocol, benchmark)
    if kind == "summary":
        return score_summary(output, str(gold), lang, protocol)
    raise ValueError(f"unknown benchmark kind {kind!r}; valid: {', '.join(KINDS)}")
