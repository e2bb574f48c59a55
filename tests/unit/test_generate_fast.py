"""The fast generation path (cc_core.generate): static KV cache, compiled decoding, length-sorted
batches, ``batch_size="auto"``. Correctness is the bar: on tiny random models (CPU, float32) every
option gives exactly the tokens of the plain dynamic-cache path, in all three modes.
"""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
import torch
from transformers import StaticCache

from cc_core.generate import Generator
from cc_core.generation import batching, decoding
from cc_core.generation.batching import batch_from_memory, batch_order, fixed_batches, padding_fraction, plan_batches
from cc_helpers import random_cc, random_transform

ARCHS = ("llama", "qwen2", "mistral", "gemma2")
D = 64

# different lengths in one batch: left padding of several widths
PROMPTS = [
    "Wie heißt die Hauptstadt von Kenia?",
    "東京はどこ？",
    "hi",
    "Explique la photosynthèse en une phrase, s'il te plaît, avec des mots simples.",
    "Nenda sokoni ukanunue ndizi.",
]
LANGS = ["de", "ja", "en", "fr", "sw"]
ENGLISH = ["What is the capital of Kenya?", None, "hi", "Explain photosynthesis in one sentence, please.",
           "Go to the market and buy bananas."]
REPO = Path(__file__).resolve().parents[2]
LONG = "Die Photosynthese ist ein Prozess, bei dem Pflanzen Licht in chemische Energie umwandeln. " * 3


def _generators(model, tok, mode: str, **kwargs) -> Generator:
    cc = random_cc(model) if mode != "none" else None
    matrix = random_transform() if mode == "transform" else None
    return Generator(model, tok, cc, matrix, mode=mode, **kwargs)


def _run(generator, prompts=PROMPTS, langs=LANGS, english=ENGLISH):
    return generator.generate(prompts, langs, english)


def _same(a, b) -> None:
    assert [r.token_ids for r in a] == [r.token_ids for r in b]
    assert [r.text for r in a] == [r.text for r in b]
    assert [r.new_tokens for r in a] == [r.new_tokens for r in b]
    assert [r.chosen_layer for r in a] == [r.chosen_layer for r in b]


# --- static cache == dynamic cache, token for token -------------------------------------------------

@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("mode", ("none", "transform", "parallel"))
def test_static_cache_gives_the_dynamic_tokens(lively_factory, arch, mode):
    model, tok = lively_factory(arch)
    # 20 new tokens: gemma2's 64-token sliding window is crossed while decoding (prompts ~50 tokens)
    kwargs = dict(max_new_tokens=20, batch_size=8)
    dynamic = _run(_generators(model, tok, mode, cache="dynamic", **kwargs))
    static_gen = _generators(model, tok, mode, cache="static", **kwargs)
    static = _run(static_gen)
    _same(static, dynamic)
    assert len({tuple(r.token_ids) for r in dynamic}) > 1  # varied: the comparison is not vacuous
    if mode != "none":
        assert {r.chosen_layer for r in dynamic} - {None}
    logits, cache, *_ = static_gen.prefill(PROMPTS, LANGS, ENGLISH)
    assert isinstance(cache, StaticCache)


def test_static_prefill_logits_equal_dynamic(lively_factory):
    model, tok = lively_factory("qwen2")
    for mode in ("none", "transform", "parallel"):
        a = _generators(model, tok, mode, cache="dynamic").prefill(PROMPTS, LANGS, ENGLISH)
        b = _generators(model, tok, mode, cache="static").prefill(PROMPTS, LANGS, ENGLISH)
        torch.testing.assert_close(b[0], a[0], atol=1e-4, rtol=1e-5)
        assert torch.equal(a[2], b[2])  # the same left-padded mask
        if mode != "none":
            assert torch.equal(a[3], b[3])  # the same chosen layers


def test_static_transform_recomputes_only_the_anchor_over_its_slot(lively_factory):
    """Pass 1 fills slots 0..p of the static cache; the connected pass runs the anchor column alone,
    with the cache's write position moved back to p (no copy, no reallocation)."""
    model, tok = lively_factory("llama")
    gen = _generators(model, tok, "transform", cache="static", max_new_tokens=5)
    seen = []

    def spy(module, args, kwargs):
        cache = kwargs.get("cache", kwargs.get("past_key_values"))
        seen.append((kwargs["input_ids"].shape[1], int(cache.get_seq_length()), id(cache)))

    ids, *_ = gen.encode(PROMPTS[:3])
    handle = model.register_forward_pre_hook(spy, with_kwargs=True)
    try:
        logits, cache, *_ = gen.prefill(PROMPTS[:3], LANGS[:3])
    finally:
        handle.remove()
    width = ids.shape[1]
    assert seen == [(1, width - 1, id(cache))]  # pass 1 ran on the decoder body, into this same cache
    assert int(cache.get_seq_length()) == width
    assert cache.get_max_length() == gen.decoder.cache_len(width, gen.max_new_tokens) == width + 5  # eager: no slot to spare


def test_static_cache_without_reuse_equals_reuse(lively_factory):
    model, tok = lively_factory("mistral")
    reuse = _generators(model, tok, "transform", cache="static", max_new_tokens=8)
    naive = _generators(model, tok, "transform", cache="static", max_new_tokens=8, reuse_cache=False)
    _same(_run(reuse), _run(naive))


# --- gemma2: sliding window and the crop fallback ----------------------------------------------------

def test_gemma2_prompt_past_the_window_falls_back_to_a_full_recompute(lively_factory, caplog):
    model, tok = lively_factory("gemma2")
    prompts, langs = [LONG, PROMPTS[0]], ["de", "de"]
    gen = _generators(model, tok, "transform", cache="static", max_new_tokens=6)
    ids, *_ = gen.encode(prompts)
    assert ids.shape[1] > model.config.sliding_window  # the sliding layers dropped states in pass 1
    with caplog.at_level(logging.WARNING, logger="cc_core.generation.decoding"):
        static = gen.generate(prompts, langs)
    assert "cannot drop the anchor" in caplog.text
    dynamic = _generators(model, tok, "transform", cache="dynamic", max_new_tokens=6).generate(prompts, langs)
    naive = _generators(model, tok, "transform", cache="dynamic", max_new_tokens=6,
                        reuse_cache=False).generate(prompts, langs)
    _same(static, dynamic)
    _same(static, naive)
    # within the window the static cache is cropped in place (no fallback)
    short = _generators(model, tok, "transform", cache="static", max_new_tokens=6)
    _, cache, *_ = short.prefill(PROMPTS[:2], LANGS[:2])
    assert decoding.static_croppable(cache)


# --- compiled decoding -------------------------------------------------------------------------------

@pytest.mark.parametrize("mode", ("none", "transform", "parallel"))
def test_compiled_decoding_gives_the_dynamic_tokens(lively_factory, mode):
    """torch.compile of the decoding step (backend aot_eager: dynamo's graph, no code generation, so
    the test stays fast); a second call reuses the kept cache (reset) and the compiled step."""
    torch._dynamo.reset()
    model, tok = lively_factory("llama")
    kwargs = dict(max_new_tokens=8, batch_size=8)
    dynamic = _run(_generators(model, tok, mode, cache="dynamic", **kwargs))
    compiled = _generators(model, tok, mode, cache="static", compile=True, compile_backend="aot_eager", **kwargs)
    first = _run(compiled)
    _same(first, dynamic)
    assert compiled.decoder._step is not None and len(compiled.decoder._caches) == 1
    (batch, length), kept = next(iter(compiled.decoder._caches.items()))
    assert batch == len(PROMPTS) and length % decoding.CACHE_BUCKET == 0  # compiled: bucketed lengths
    _same(_run(compiled), dynamic)  # the kept cache, reset: same tokens again
    assert next(iter(compiled.decoder._caches.values())) is kept


@pytest.mark.integration
def test_inductor_compiled_decoding_gives_the_dynamic_tokens(lively_factory):
    """The real thing on CPU (inductor code generation: a minute or two the first time)."""
    torch._dynamo.reset()
    model, tok = lively_factory("llama")
    for mode in ("none", "transform"):
        dynamic = _run(_generators(model, tok, mode, cache="dynamic", max_new_tokens=6))
        compiled = _run(_generators(model, tok, mode, cache="static", compile=True, max_new_tokens=6))
        _same(compiled, dynamic)


# --- batching ----------------------------------------------------------------------------------------

def test_batches_are_sorted_by_token_count_longest_first():
    lengths = [5, 9, 2, 9, 7, 1, 3]
    order = batch_order(lengths)
    assert [lengths[i] for i in order] == [9, 9, 7, 5, 3, 2, 1]
    assert order[:2] == [1, 3]  # ties keep input order
    assert padding_fraction(lengths, fixed_batches(order, 2)) < padding_fraction(lengths, fixed_batches(range(7), 2))
    assert padding_fraction([4, 4, 4], [[0, 1], [2]]) == 0.0


def _partitions(n: int, size: int, count: int):
    """Every way to cut n ordered items into ``count`` runs of 1..size items (the sizes)."""
    if count == 0:
        if n == 0:
            yield []
        return
    for first in range(1, min(size, n) + 1):
        for rest in _partitions(n - first, size, count - 1):
            yield [first, *rest]


def test_planned_batches_are_the_least_padded_of_the_fewest():
    gen = torch.Generator().manual_seed(0)
    for trial in range(40):
        n, size = int(torch.randint(1, 14, (1,), generator=gen)), int(torch.randint(1, 6, (1,), generator=gen))
        lengths = torch.randint(1, 60, (n,), generator=gen).tolist()
        batches = plan_batches(lengths, size)
        assert sorted(i for b in batches for i in b) == list(range(n))  # every prompt once
        assert len(batches) == -(-n // size) and all(1 <= len(b) <= size for b in batches)
        assert [i for b in batches for i in b] == batch_order(lengths)  # runs of the longest-first order
        order = batch_order(lengths)
        best = min(sum(lengths[order[sum(sizes[:g])]] * s for g, s in enumerate(sizes))
                   for sizes in _partitions(n, size, len(batches)))
        assert sum(max(lengths[i] for i in b) * len(b) for b in batches) == best


def test_planned_batches_pad_less_than_before_on_the_fixture(smol_tokenizer):
    """Measured on the bundled fixture (240 prompts, SmolLM2 tokens): padding share of the prompt
    columns 0.395 → 0.045 at batch 8, 0.511 → 0.162 at batch 32 (before: batches of the order by
    characters)."""
    from cc_core.data.benchmarks import available_langs, get_spec, load_benchmark
    from cc_core.prompts import encode_prompt

    prompts = []
    for name in ("XNLI", "XStoryCloze", "MMMLU", "XQuAD", "MKQA", "XLSum"):
        for lang in available_langs(get_spec(name), "bundled"):
            prompts += [item.prompt for item in load_benchmark(name, lang, "bundled")]
    lengths = [len(encode_prompt(smol_tokenizer, p, 1024).input_ids) for p in prompts]
    by_chars = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))  # the order before
    for size in (8, 32):
        before = padding_fraction(lengths, fixed_batches(by_chars, size))
        now = padding_fraction(lengths, plan_batches(lengths, size))
        assert now <= padding_fraction(lengths, fixed_batches(batch_order(lengths), size))
        assert now < 0.5 * before


def test_results_do_not_depend_on_the_batch_size(lively_factory):
    model, tok = lively_factory("llama")
    prompts, langs = PROMPTS + [LONG], LANGS + ["de"]
    outs = [_generators(model, tok, "transform", cache="static", max_new_tokens=6, batch_size=size)
            .generate(prompts, langs) for size in (1, 2, 8, "auto")]
    for out in outs[1:]:
        _same(out, outs[0])


# --- batch_size="auto" ---------------------------------------------------------------------------------

def test_auto_batch_size_is_a_positive_int(lively_factory):
    model, tok = lively_factory("llama")
    gen = Generator(model, tok, batch_size="auto", cache="static")
    assert gen.batch_size_setting == "auto"
    size = gen.batch_size  # what other code (loglik, lm-eval) reads: an int
    assert isinstance(size, int) and size >= 1
    assert gen.auto_batch_size(300) == batching.AUTO_BATCH_CPU  # off an accelerator: fixed
    gen.batch_size = 3
    assert gen.batch_size == 3
    for bad in (0, -1, "big", 2.5):
        with pytest.raises(ValueError, match="batch_size"):
            Generator(model, tok, batch_size=bad)


def test_auto_batch_rule():
    gib = 2**30
    assert batch_from_memory(10 * gib, gib) == int(10 * batching.AUTO_MEMORY_FRACTION)
    assert batch_from_memory(0.5 * gib, gib) == 1  # never below one
    assert batch_from_memory(1000 * gib, 1) == batching.AUTO_BATCH_MAX  # never above the cap
    assert batch_from_memory(gib, 0) == batching.AUTO_BATCH_MAX


# --- options and wiring -------------------------------------------------------------------------------

def test_option_errors(tiny_factory):
    model, tok = tiny_factory("llama")
    with pytest.raises(ValueError, match="unknown cache 'paged'"):
        Generator(model, tok, cache="paged")
    with pytest.raises(ValueError, match="compile=True needs cache='static'"):
        Generator(model, tok, cache="dynamic", compile=True)


def test_eval_params_reach_the_generator(monkeypatch):
    from cc_core import evaluate
    from cc_core.config import load_params

    seen = {}
    monkeypatch.setattr(Generator, "from_dirs", classmethod(lambda cls, *a, **kw: seen.update(kw) or "gen"))
    params = load_params(REPO / "params.yaml", overrides=["eval.batch_size=auto", "eval.cache=static",
                                                    "eval.compile=true"])
    assert evaluate.load_generator(params, "base", "models/base", "transform") == "gen"
    assert (seen["batch_size"], seen["cache"], seen["compile"]) == ("auto", "static", True)
    defaults = load_params(REPO / "params.yaml")
    assert defaults.eval.cache in ("static", "dynamic") and defaults.eval.compile is False
