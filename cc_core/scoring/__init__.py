"""Scorers by task kind, each with the protocol (``lenient`` | ``standard``) as a parameter.

- ``common``: the item score and the lenient protocol's text canonicalisation and tokens.
- ``choice``: option benchmarks (XNLI, XStoryCloze, MMMLU).
- ``qa``: extractive QA (XQuAD, MKQA).
- ``summary``: summarisation (XLSum).

``cc_core.metrics.score_item`` is the one dispatch over them.
"""
