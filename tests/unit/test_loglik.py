"""Log-likelihood scoring of option benchmarks (cc_core.loglik) on tiny random models (CPU, float32).

The batched scorer (left-padded prompts, one prefill, the KV cache repeated per option, right-padded
options) must equal the obvious computation: one unpadded forward of prompt + continuation per
option; in transform mode with the connection applied at the anchor as the Decision Maker chose.

    .venv/bin/python -m pytest tests/unit/test_loglik.py -q
"""

from __future__ import annotations

import json

import pytest
import torch

from cc_core.config import parse_params
from cc_core.data.benchmarks import BenchmarkItem, get_spec, load_benchmark
from cc_core.evaluate import evaluate
from cc_core.generate import Generator
from cc_core.loglik import (LoglikScorer, OptionsError, choose, option_continuations, score_choice_items,
                            split_continuation)
from cc_core.modeling import capture_ffn, connected
from cc_core.prompts import encode_prompt
from cc_core.report import report
from cc_helpers import random_cc, random_transform

ARCHS = ("llama", "qwen2", "mistral", "gemma2")
D = 64  # hidden size of the tiny models
PROMPTS = [
    "Premise: a man reads.\nHypothesis: he waits.\n\n(1) Entail\n(2) Neutral\n(3) Contradict\n\nAnswer:",
    "東京はどこ？",
    "hi",
    "Explique la photosynthèse en une phrase, s'il te plaît, avec des mots simples et précis.",
]
LANGS = ["en", "ja", "en", "fr"]
OPTIONS = [
    ["(1) Entail", "(2) Neutral", "(3) Contradict"],
    ["日本", "(B) 関東地方の南部にある大きな都市"],
    ["!", "Hello there, how are you doing today?", "(C) x", "(D) y z"],  # "!" is one token
    ["(A) La lumière devient énergie.", "(B) Non."],
]


def _encode(tok, max_len: int = 1024):
    contexts = [encode_prompt(tok, p, max_len).input_ids for p in PROMPTS]
    conts = [[tok(o, add_special_tokens=False)["input_ids"] for o in opts] for opts in OPTIONS]
    return contexts, conts


@torch.no_grad()
def _reference(model, context, continuation, vector=None, cc=None) -> float:
    """One unpadded forward of context + continuation (with ``vector`` added at the anchor)."""
    ids = torch.tensor([context + continuation])
    anchor = torch.tensor([len(context) - 1])
    if vector is None:
        logits = model(input_ids=ids).logits[0]
    else:
        with connected(model, anchor, vector[None], cc.inject_layer, cc.paths):
            logits = model(input_ids=ids).logits[0]
    logp = torch.log_softmax(logits.float(), -1)
    n = len(context)
    return float(sum(logp[n - 1 + j, token] for j, token in enumerate(continuation)))


# --- exactness: batched + cached == one plain forward per option --------------------------------------

@pytest.mark.parametrize("arch", ARCHS)
def test_none_mode_equals_full_forward_per_option(lively_factory, arch):
    model, tok = lively_factory(arch)
    contexts, conts = _encode(tok)
    assert len({len(c) for c in contexts}) == len(contexts)  # different lengths: real left padding
    scored = LoglikScorer(Generator(model, tok, batch_size=8)).score_ids(contexts, conts, LANGS)
    for context, options, result in zip(contexts, conts, scored):
        assert result.chosen_layer is None and result.tokens == [len(o) for o in options]
        expected = [_reference(model, context, o) for o in options]
        torch.testing.assert_close(torch.tensor(result.logliks), torch.tensor(expected), atol=2e-4, rtol=0)
    # a different batching gives the same numbers
    single = LoglikScorer(Generator(model, tok, batch_size=1)).score_ids(contexts, conts, LANGS)
    for a, b in zip(scored, single):
        torch.testing.assert_close(torch.tensor(a.logliks), torch.tensor(b.logliks), atol=2e-4, rtol=0)


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("reuse_cache", [True, False])
def test_transform_mode_equals_full_forward_with_the_connection(lively_factory, arch, reuse_cache):
    model, tok = lively_factory(arch)
    cc, matrix = random_cc(model), random_transform()
    gen = Generator(model, tok, cc, matrix, mode="transform", batch_size=3, reuse_cache=reuse_cache)
    contexts, conts = _encode(tok)
    scored = LoglikScorer(gen).score_ids(contexts, conts, LANGS)
    plain = LoglikScorer(Generator(model, tok)).score_ids(contexts, conts, LANGS)
    moved = 0.0
    for context, options, lang, result, base in zip(contexts, conts, LANGS, scored, plain):
        with torch.no_grad():
            anchor = torch.tensor([len(context) - 1])
            acts, embeds = capture_ffn(model, torch.tensor([context]), None, anchor, with_embed=True, paths=cc.paths)
            vectors, choice = cc.decision_maker.select(matrix.apply(acts, [lang]), embeds, "argmax")
        assert result.chosen_layer == int(choice[0].argmax())
        expected = [_reference(model, context, o, vectors[0], cc) for o in options]
        torch.testing.assert_close(torch.tensor(result.logliks), torch.tensor(expected), atol=2e-4, rtol=0)
        moved = max(moved, max(abs(a - b) for a, b in zip(result.logliks, base.logliks)))
    assert moved > 1e-2  # the connection changes the scores (else the check above proves little)


def test_parallel_mode_without_english_is_the_plain_model(lively_factory):
    model, tok = lively_factory("llama")
    contexts, conts = _encode(tok)
    par = LoglikScorer(Generator(model, tok, random_cc(model), mode="parallel")).score_ids(contexts, conts, LANGS)
    plain = LoglikScorer(Generator(model, tok)).score_ids(contexts, conts, LANGS)
    for a, b in zip(par, plain):
        torch.testing.assert_close(torch.tensor(a.logliks), torch.tensor(b.logliks), atol=2e-4, rtol=0)


def test_parallel_mode_with_english_equals_full_forward_with_the_english_activations(lively_factory):
    model, tok = lively_factory("llama")
    cc = random_cc(model)
    contexts, conts = _encode(tok)
    english = ["Where is Tokyo?", None, "hello", "Explain photosynthesis in one simple sentence."]
    scored = LoglikScorer(Generator(model, tok, cc, mode="parallel", batch_size=4)).score_ids(
        contexts, conts, LANGS, english)
    for context, options, en, result in zip(contexts, conts, english, scored):
        if en is None:  # no parallel: the plain model
            expected = [_reference(model, context, o) for o in options]
        else:
            en_ids = encode_prompt(tok, en).input_ids
            with torch.no_grad():
                acts = capture_ffn(model, torch.tensor([en_ids]), None, torch.tensor([len(en_ids) - 1]), paths=cc.paths)
                vectors, _ = cc.decision_maker.select(acts, cc.anchor_embeds(torch.tensor([context]),
                                                                             torch.tensor([len(context) - 1])), "argmax")
            expected = [_reference(model, context, o, vectors[0], cc) for o in options]
        torch.testing.assert_close(torch.tensor(result.logliks), torch.tensor(expected), atol=2e-4, rtol=0)


def test_greedy_flag_marks_the_argmax_continuation(lively_factory):
    model, tok = lively_factory("llama")
    contexts, _ = _encode(tok)
    gen = Generator(model, tok)
    logits, *_ = gen.prefill(PROMPTS[:1])
    top = int(logits[0].argmax())
    other = (top + 1) % logits.shape[-1]
    scored = LoglikScorer(gen).score_ids(contexts[:1], [[[top], [other]]])
    assert scored[0].greedy == [True, False]


def test_score_ids_input_errors(lively_factory):
    model, tok = lively_factory("llama")
    scorer = LoglikScorer(Generator(model, tok))
    with pytest.raises(ValueError, match="empty"):
        scorer.score_ids([[]], [[[1]]])
    with pytest.raises(ValueError, match="non-empty continuation"):
        scorer.score_ids([[1, 2]], [[[1], []]])
    with pytest.raises(ValueError, match="2 contexts but 1"):
        scorer.score_ids([[1], [2]], [[[1]]])


# --- acc / acc_norm / acc_bytes ----------------------------------------------------------------------

def test_choose_acc_norm_and_bytes_on_a_constructed_case():
    labels = ["1", "2", "3"]
    conts = ["(1) ab", "(2) a much longer answer", "(3) кот"]  # 6, 24, 7 chars; "кот" = 6 bytes → 10 bytes
    logliks = [-3.0, -6.0, -3.2]
    acc, norm, per_byte = choose(labels, conts, logliks)
    assert acc == "1"  # highest sum
    assert norm == "2"  # -0.25 per char beats -0.5 and -0.457
    assert per_byte == "2"
    # same bytes, fewer characters: per character the ASCII option wins, per byte (and by sum) the other
    assert choose(["1", "3"], ["(1) abcdef", "(3) кот"], [-5.0, -4.0]) == ("3", "1", "3")
    # ties go to the first option, as numpy.argmax does
    assert choose(["A", "B"], ["(A) x", "(B) y"], [-1.0, -1.0]) == ("A", "A", "A")


# --- options and tokenization -------------------------------------------------------------------------

def test_option_continuations_from_the_bundled_prompts():
    for name, lang in (("XNLI", "ar"), ("XStoryCloze", "hi"), ("MMMLU", "ko")):
        spec = get_spec(name)
        item = load_benchmark(name, lang, "bundled")[0]
        labels, conts = option_continuations(spec, item)
        assert labels == list(spec.labels)
        assert all(c.startswith(f"({label}) ") and len(c) > 4 for label, c in zip(labels, conts))


def test_missing_options_name_benchmark_language_and_item():
    spec = get_spec("xnli")
    item = BenchmarkItem("XNLI-de-00007", "de", "Premise: x\n(1) Ja\n(2) Vielleicht\n\nAntwort:", "1", None)
    with pytest.raises(OptionsError) as err:
        option_continuations(spec, item)
    assert "XNLI" in str(err.value) and "de" in str(err.value) and "XNLI-de-00007" in str(err.value)
    assert "3" in str(err.value)
    empty = BenchmarkItem("XNLI-de-00008", "de", "(1) Ja\n(2) \n(3) Nein", "1", None)
    with pytest.raises(OptionsError, match="XNLI-de-00008.*2"):
        option_continuations(spec, empty)


def test_split_continuation_at_a_chat_prompt_and_at_a_merging_boundary(smol_tokenizer):
    tok = smol_tokenizer
    prompt = tok.apply_chat_template([{"role": "user", "content": "Q?"}], tokenize=False, add_generation_prompt=True)
    ctx, cont = split_continuation(tok, prompt, "(2) Neutral")
    assert ctx == tok(prompt, add_special_tokens=False)["input_ids"]  # the prompt (and its anchor) intact
    assert ctx + cont == tok(prompt + "(2) Neutral", add_special_tokens=False)["input_ids"]
    # "Answer: " + "Paris": BPE glues the space to the word, so the joint ids do not start with the context's
    whole = tok("Answer: Paris", add_special_tokens=False)["input_ids"]
    ctx, cont = split_continuation(tok, "Answer: ", "Paris")
    assert ctx == tok("Answer: ", add_special_tokens=False)["input_ids"]
    assert cont == tok("Paris", add_special_tokens=False)["input_ids"]  # context kept, continuation alone
    ctx, cont = split_continuation(tok, "Answer: ", "Paris", move_space=True)  # lm-eval's rule
    assert ctx == tok("Answer:", add_special_tokens=False)["input_ids"] and ctx + cont == whole
    with pytest.raises(ValueError, match="empty continuation"):
        split_continuation(tok, "a", "")


# --- wired into evaluate ------------------------------------------------------------------------------

def test_evaluate_with_loglik_scoring_on_a_tiny_cc_model(tmp_path, lively_factory, monkeypatch):
    from cc_core.lineage import checkpoint_sha256
    from cc_core.modeling.checkpoint import save_cc_checkpoint

    model, tok = lively_factory("llama")
    cc = random_cc(model)
    save_cc_checkpoint(cc, tmp_path / "cc", tok)
    matrix = random_transform()
    matrix.meta["model_sha256"] = checkpoint_sha256(tmp_path / "cc")  # lineage: fitted on this checkpoint
    matrix.save(tmp_path / "transform.safetensors")
    params = parse_params({}, overrides=["tracking.enabled=false", "eval.limit=3", "eval.langs=[zh, ar]",
                                         "eval.batch_size=2"])
    assert params.eval.choice_scoring == "generate"  # the default, for now
    result = evaluate(params, "cc", "xnli", model_dir=tmp_path / "cc", transform=tmp_path / "transform.safetensors",
                      out_root=tmp_path / "eval", metrics_root=tmp_path / "metrics" / "eval", choice_scoring="loglik")
    metrics = json.loads((tmp_path / "metrics" / "eval" / "cc" / "XNLI.json").read_text(encoding="utf-8"))
    assert metrics["choice_scoring"] == "loglik" and metrics["mode"] == "transform" and "acc_norm" in metrics
    assert set(result.languages) == {"ar", "zh"} and result.unparsed == 0
    gen = Generator.from_dirs(tmp_path / "cc", transform=tmp_path / "transform.safetensors", mode="transform")
    spec = get_spec("xnli")
    for lang in ("ar", "zh"):
        summary = metrics["languages"][lang]
        assert summary["choice_scoring"] == "loglik" and {"acc_norm", "acc_bytes"} <= set(summary)
        rows = [json.loads(x) for x in (tmp_path / "eval" / "cc" / "XNLI" / f"{lang}.jsonl").read_text().splitlines()]
        items = load_benchmark("XNLI", lang, "bundled", 3)
        direct = score_choice_items(gen, spec, items)
        assert len(rows) == 3
        for row, item, ref in zip(rows, items, direct):
            assert row["id"] == item.id and row["gold"] == item.gold
            assert set(row["loglik"]) == {"1", "2", "3"}
            assert row["parsed"] == max(row["loglik"], key=row["loglik"].get)  # the acc choice
            assert row["score"] == float(row["parsed"] == item.gold)
            assert row["chosen_layer"] in (0, 1)
            torch.testing.assert_close(torch.tensor(list(row["loglik"].values())), torch.tensor(ref.logliks),
                                       atol=1e-4, rtol=1e-5)
        assert summary["score"] == pytest.approx(100 * sum(r["score"] for r in rows) / 3, abs=1e-3)
        assert summary["acc_norm"] == pytest.approx(100 * sum(r["score_norm"] for r in rows) / 3, abs=1e-3)
    # the report says which choice scoring produced the numbers
    monkeypatch.chdir(tmp_path)
    report(params, tmp_path / "metrics", tmp_path / "eval", tmp_path / "reports")
    assert "Choice scoring (XNLI/XStoryCloze/MMMLU): loglik" in (tmp_path / "reports" / "summary.md").read_text()


def test_loglik_scoring_leaves_generative_benchmarks_alone(tmp_path, tiny_factory):
    model, tok = tiny_factory("llama")
    model.save_pretrained(tmp_path / "m")
    tok.save_pretrained(tmp_path / "m")
    params = parse_params({}, overrides=["tracking.enabled=false", "eval.limit=1", "eval.max_new_tokens=2",
                                         "eval.choice_scoring=loglik"])
    evaluate(params, "base", "mkqa", langs=["de"], model_dir=tmp_path / "m", out_root=tmp_path / "eval",
             metrics_root=tmp_path / "metrics")
    metrics = json.loads((tmp_path / "metrics" / "base" / "MKQA.json").read_text(encoding="utf-8"))
    assert "choice_scoring" not in metrics and metrics["languages"]["de"]["new_tokens"] >= 1


def test_choice_scoring_param_is_validated():
    with pytest.raises(Exception, match="eval.choice_scoring"):
        parse_params({}, overrides=["eval.choice_scoring=vote"])
