"""Batched greedy generation (cc_core.generate) on tiny random models (CPU, float32, seconds).

The connection at inference must equal the obvious two-pass computation (capture → Transform
Matrix → Decision Maker → connected full forward), whatever the cache strategy; the plain
mode must equal Hugging Face's own greedy ``generate`` token for token.
"""

from __future__ import annotations

import pytest
import torch

from cc_core.generate import Generation, Generator
from cc_core.modeling import CCTuningModel, capture_ffn, connected
from cc_core.modeling.transform_matrix import TransformMatrix, TransformShapeError
from cc_helpers import random_cc, random_transform

ARCHS = ("llama", "qwen2", "mistral", "gemma2")
D = 64  # hidden size of the tiny models

PROMPTS = [
    "Wie heißt die Hauptstadt von Kenia?",
    "東京はどこ？",
    "hi",
    "Explique la photosynthèse en une phrase, s'il te plaît, avec des mots simples.",
]
LANGS = ["de", "ja", "en", "fr"]
LONG = "Die Photosynthese ist ein Prozess, bei dem Pflanzen Licht in chemische Energie umwandeln. " * 6


def _texts(results: list[Generation]) -> list[str]:
    return [r.text for r in results]


# --- transform mode: cache reuse vs the naive two full passes vs a manual computation ----------------

@pytest.mark.parametrize("arch", ARCHS)
def test_transform_prefill_matches_naive_and_manual(lively_factory, arch):
    model, tok = lively_factory(arch)
    cc, matrix = random_cc(model), random_transform()
    reuse = Generator(model, tok, cc, matrix, mode="transform", reuse_cache=True, max_new_tokens=6)
    naive = Generator(model, tok, cc, matrix, mode="transform", reuse_cache=False, max_new_tokens=6)

    logits_reuse, _, mask, choice_reuse, truncated = reuse.prefill(PROMPTS, LANGS)
    logits_naive, _, _, choice_naive, _ = naive.prefill(PROMPTS, LANGS)
    # Same math, different kernels (1-query attention over a cache vs full causal attention):
    # equal up to float32 rounding, amplified by the 49k-row LM head of these large-weight models.
    torch.testing.assert_close(logits_reuse, logits_naive, atol=1e-3, rtol=1e-4)
    assert torch.equal(choice_reuse, choice_naive)
    assert truncated == [False] * len(PROMPTS)

    # manual: capture on the left-padded batch → M → argmax Decision Maker → connected full forward
    ids, mask_m, anchor, _ = reuse.encode(PROMPTS)
    assert torch.equal(mask, mask_m)
    assert (anchor == ids.shape[1] - 1).all()  # left padding: the anchor is the last column
    with torch.no_grad():
        acts, embeds = capture_ffn(model, ids, mask_m, anchor, with_embed=True, paths=cc.paths)
        assert acts.shape == (len(PROMPTS), 2, D)
        vectors, choice = cc.decision_maker.select(matrix.apply(acts, LANGS), embeds, "argmax")
        with connected(model, anchor, vectors, cc.inject_layer, cc.paths):
            manual = model(input_ids=ids, attention_mask=mask_m).logits[:, -1]
    assert torch.equal(choice, choice_reuse)
    assert (choice.sum(-1) == 1).all()
    torch.testing.assert_close(logits_reuse, manual, atol=1e-3, rtol=1e-4)
    # the connection really changes something (else the comparison above proves little)
    with torch.no_grad():
        plain = model(input_ids=ids, attention_mask=mask_m).logits[:, -1]
    assert (logits_reuse - plain).abs().max() > 1e-3

    out_reuse, out_naive = reuse.generate(PROMPTS, LANGS), naive.generate(PROMPTS, LANGS)
    assert _texts(out_reuse) == _texts(out_naive)
    assert [r.new_tokens for r in out_reuse] == [r.new_tokens for r in out_naive]
    assert [r.chosen_layer for r in out_reuse] == [r.chosen_layer for r in out_naive]
    assert all(r.mode == "transform" and r.chosen_layer in (0, 1) for r in out_reuse)
    assert all(1 <= r.new_tokens <= 6 for r in out_reuse)


def test_transform_reuse_cache_recomputes_only_the_anchor(lively_factory):
    model, tok = lively_factory("llama")
    gen = Generator(model, tok, random_cc(model), random_transform(), mode="transform", reuse_cache=True)
    seen = []

    def spy(module, args, kwargs):
        cache = kwargs.get("cache", kwargs.get("past_key_values"))
        seen.append((kwargs["input_ids"].shape[1], cache.get_seq_length() if cache is not None else 0))

    handle = model.register_forward_pre_hook(spy, with_kwargs=True)
    try:
        ids, *_ = gen.encode(PROMPTS[:2])
        gen.prefill(PROMPTS[:2], LANGS[:2])
    finally:
        handle.remove()
    width = ids.shape[1]
    # pass 1 runs on the decoder body; the connected pass must only see the anchor column
    assert seen == [(1, width - 1)]


# --- mode none: equal to HF generate, stops at EOS -----------------------------------------------

@pytest.mark.parametrize("arch", ARCHS)
def test_mode_none_equals_hf_greedy_generate(lively_factory, arch):
    model, tok = lively_factory(arch)
    gen = Generator(model, tok, max_new_tokens=8)
    ids, mask, _, _ = gen.encode(PROMPTS)
    assert (mask[:, 0] == 0).any() and (mask[:, -1] == 1).all()  # a real left-padded batch
    logits, cache, mask2, choice, _ = gen.prefill(PROMPTS)
    assert choice is None
    rows = gen.decode(logits, cache, mask2)
    with torch.no_grad():
        hf = model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=8, do_sample=False,
                            pad_token_id=gen.pad_id)[:, ids.shape[1]:].tolist()
    results = gen.generate(PROMPTS)
    for row, hf_row, result in zip(rows, hf, results):
        count = gen.new_tokens(row)
        assert row[:count] == hf_row[:count]
        assert result.new_tokens == count
        assert result.text == tok.decode(row[:count], skip_special_tokens=True).strip()
        assert result.chosen_layer is None and result.mode == "none" and not result.prompt_truncated
    assert len({r.text for r in results}) > 1  # varied outputs: the comparison is not vacuous


def test_mode_none_stops_at_eos(lively_factory):
    model, tok = lively_factory("llama")
    plain = Generator(model, tok, max_new_tokens=8)
    logits, cache, mask, _, _ = plain.prefill(PROMPTS)
    rows = plain.decode(logits, cache, mask)
    stop = rows[0][0]  # make the first token greedily produced for prompt 0 an end of sequence
    assert stop not in plain.eos_ids
    model.generation_config.eos_token_id = [*plain.eos_ids, stop]
    gen = Generator(model, tok, max_new_tokens=8)
    assert stop in gen.eos_ids
    results = gen.generate(PROMPTS)
    assert results[0].new_tokens == 1
    for row, result in zip(rows, results):
        hits = [i for i, token in enumerate(row) if token in gen.eos_ids]
        expected = hits[0] + 1 if hits else len(row)
        assert result.new_tokens == expected <= 8
        assert result.text == tok.decode(row[:expected], skip_special_tokens=True).strip()
    assert any(r.new_tokens == 8 for r in results)  # the others still run to max_new_tokens


# --- order and batching ---------------------------------------------------------------------------

def test_generate_returns_input_order_and_batch_size_does_not_matter(lively_factory):
    model, tok = lively_factory("llama")
    prompts = [PROMPTS[3], PROMPTS[2], PROMPTS[0], PROMPTS[1], "Nenda sokoni ukanunue ndizi."]
    one = Generator(model, tok, max_new_tokens=6, batch_size=1)
    four = Generator(model, tok, max_new_tokens=6, batch_size=4)
    by_one = one.generate(prompts)
    assert len(by_one) == len(prompts)
    # each prompt alone gives the same text as in the full list: the list is returned in input order
    singles = [one.generate([p])[0].text for p in prompts]
    assert _texts(by_one) == singles
    assert _texts(four.generate(prompts)) == singles
    assert _texts(four.generate(prompts[::-1])) == singles[::-1]
    assert len(set(singles)) > 1


def test_transform_mode_batch_size_does_not_matter(lively_factory):
    model, tok = lively_factory("qwen2")
    cc, matrix = random_cc(model), random_transform()
    one = Generator(model, tok, cc, matrix, mode="transform", max_new_tokens=5, batch_size=1)
    four = Generator(model, tok, cc, matrix, mode="transform", max_new_tokens=5, batch_size=4)
    a, b = one.generate(PROMPTS, LANGS), four.generate(PROMPTS, LANGS)
    assert _texts(a) == _texts(b)
    assert [r.chosen_layer for r in a] == [r.chosen_layer for r in b]


# --- parallel (oracle) mode -------------------------------------------------------------------------

def test_parallel_mode_without_english_is_plain_and_with_english_is_connected(lively_factory):
    model, tok = lively_factory("mistral")
    cc = random_cc(model)
    english = [None, "Where is Tokyo?", None, "Explain photosynthesis in one sentence, please, in simple words."]
    parallel = Generator(model, tok, cc, mode="parallel", max_new_tokens=6)
    plain = Generator(model, tok, max_new_tokens=6)
    out_par, out_plain = parallel.generate(PROMPTS, LANGS, english), plain.generate(PROMPTS, LANGS)
    for en, par, base in zip(english, out_par, out_plain):
        assert par.mode == "parallel"
        if en is None:
            assert par.text == base.text and par.new_tokens == base.new_tokens
            assert par.chosen_layer is None
        else:
            assert par.chosen_layer in (0, 1)
    # the prefill logits: untouched rows equal the plain model, connected rows do not
    logits_par, *_ = parallel.prefill(PROMPTS, LANGS, english)
    logits_plain, *_ = plain.prefill(PROMPTS, LANGS)
    for i, en in enumerate(english):
        if en is None:
            torch.testing.assert_close(logits_par[i], logits_plain[i], atol=1e-5, rtol=0)
        else:
            assert (logits_par[i] - logits_plain[i]).abs().max() > 1e-3
    # no English at all: the plain model exactly
    assert _texts(parallel.generate(PROMPTS, LANGS)) == _texts(out_plain)


def test_parallel_mode_equals_manual_connection(lively_factory):
    model, tok = lively_factory("llama")
    cc = random_cc(model)
    english = ["What is the capital of Kenya?", "Where is Tokyo?"]
    gen = Generator(model, tok, cc, mode="parallel", max_new_tokens=4)
    logits, *_ = gen.prefill(PROMPTS[:2], LANGS[:2], english)
    ids, mask, anchor, _ = gen.encode(PROMPTS[:2])
    en_ids, en_mask, en_anchor, _ = gen.encode(english)
    with torch.no_grad():
        acts = capture_ffn(model, en_ids, en_mask, en_anchor, paths=cc.paths)
        vectors, _ = cc.decision_maker.select(acts, cc.anchor_embeds(ids, anchor), "argmax")
        with connected(model, anchor, vectors, 0, cc.paths):
            manual = model(input_ids=ids, attention_mask=mask).logits[:, -1]
    torch.testing.assert_close(logits, manual, atol=1e-5, rtol=0)


# --- determinism and truncation ------------------------------------------------------------------

def test_argmax_decisions_are_deterministic(lively_factory):
    model, tok = lively_factory("gemma2")
    gen = Generator(model, tok, random_cc(model), random_transform(), mode="transform", max_new_tokens=4)
    first, second = gen.generate(PROMPTS, LANGS), gen.generate(PROMPTS, LANGS)
    assert [r.chosen_layer for r in first] == [r.chosen_layer for r in second]
    assert _texts(first) == _texts(second)
    assert all(r.chosen_layer is not None for r in first)
    _, _, _, choice_a, _ = gen.prefill(PROMPTS, LANGS)
    _, _, _, choice_b, _ = gen.prefill(PROMPTS, LANGS)
    assert torch.equal(choice_a, choice_b)


def test_long_prompts_are_cut_from_the_left_and_flagged(lively_factory):
    model, tok = lively_factory("llama")
    gen = Generator(model, tok, max_new_tokens=3, max_prompt_len=48)
    ids, mask, _, truncated = gen.encode([LONG, "hi"])
    assert truncated == [True, False]
    assert ids.shape[1] <= 48 and int(mask[0].sum()) <= 48
    kept = tok.decode(ids[0][mask[0].bool()].tolist())
    assert "umwandeln." in kept  # the end of the user text survives
    assert "Die Photosynthese ist ein Prozess, bei dem Pflanzen Licht in chemische Energie umwandeln. " * 2 \
        not in kept  # the beginning was cut
    results = gen.generate([LONG, "hi"])
    assert [r.prompt_truncated for r in results] == [True, False]
    roomy = Generator(model, tok, max_new_tokens=3, max_prompt_len=1024)
    assert [r.prompt_truncated for r in roomy.generate([LONG, "hi"])] == [False, False]


# --- clear errors --------------------------------------------------------------------------------

def test_transform_mode_without_transform_is_an_error(tiny_factory):
    model, tok = tiny_factory("llama")
    with pytest.raises(ValueError, match="Transform Matrix"):
        Generator(model, tok, random_cc(model), None, mode="transform")


def test_cc_modes_without_checkpoint_are_errors(tiny_factory):
    model, tok = tiny_factory("llama")
    for mode in ("transform", "parallel"):
        with pytest.raises(ValueError, match="CC checkpoint"):
            Generator(model, tok, None, random_transform(), mode=mode)


def test_unknown_mode_is_an_error(tiny_factory):
    model, tok = tiny_factory("llama")
    with pytest.raises(ValueError, match="bogus") as err:
        Generator(model, tok, mode="bogus")
    assert "none" in str(err.value) and "transform" in str(err.value) and "parallel" in str(err.value)


def test_transform_of_wrong_hidden_size_is_an_error(tiny_factory):
    model, tok = tiny_factory("llama")
    with pytest.raises(TransformShapeError, match="32"):
        Generator(model, tok, random_cc(model), random_transform(d=32), mode="transform")


# --- the paper's inference: seeded Gumbel, float32 choice, no truncation ------------------------------

def test_gumbel_inference_is_seeded_per_prompt_and_batch_independent(lively_factory):
    model, tok = lively_factory("llama")
    cc, matrix = random_cc(model), random_transform()
    with torch.no_grad():
        cc.decision_maker.proj.weight.mul_(1e-4)  # near-equal scores: the Gumbel noise decides

    def choices(seed: int, batch_size: int) -> list[int]:
        gen = Generator(model, tok, cc, matrix, mode="transform", decision_mode="gumbel", seed=seed,
                        batch_size=batch_size, max_new_tokens=2)
        return [g.chosen_layer for g in gen.generate(PROMPTS * 4, LANGS * 4)]

    first = choices(seed=7, batch_size=16)
    assert choices(seed=7, batch_size=3) == first  # reproducible, whatever the batching
    assert first[:4] == first[4:8]  # the same prompt under the same seed: the same noise
    others = [choices(seed=s, batch_size=16) for s in (8, 9, 10)]
    assert any(o != first for o in others)  # the noise really depends on the seed
    argmax = [g.chosen_layer for g in Generator(model, tok, cc, matrix, mode="transform",
                                                max_new_tokens=2).generate(PROMPTS * 4, LANGS * 4)]
    assert argmax[:4] == argmax[4:8]


def test_choice_is_float32_under_a_bf16_model(tiny_factory, tmp_path):
    """The matrix and the Decision Maker run in float32 whatever the model's dtype: on this fixture
    bf16 arithmetic (the Decision Maker cast to the model's dtype, as before) picks the other layer."""
    from cc_core.modeling import load_cc_checkpoint, save_cc_checkpoint

    model, tok = tiny_factory("llama")
    cc = CCTuningModel(model)
    with torch.no_grad():  # scores s0 - s1 = (1.0039 - 1.0) - (1.00395 - 1.0037) > 0 in float32;
        weight = torch.zeros_like(cc.decision_maker.proj.weight)  # bf16 rounds 1.0039 -> 1.0, 1.00395 -> 1.0078
        weight[0, :2] = torch.tensor([1.0039, 1.00395])
        weight[1, :2] = torch.tensor([1.0, 1.0037])
        cc.decision_maker.proj.weight.copy_(weight)
    save_cc_checkpoint(cc, tmp_path / "cc", tok)
    loaded, _ = load_cc_checkpoint(tmp_path / "cc", dtype=torch.bfloat16)
    assert next(loaded.model.parameters()).dtype == torch.bfloat16
    assert loaded.decision_maker.proj.weight.dtype == torch.float32
    acts = torch.zeros(1, 2, D, dtype=torch.bfloat16)
    acts[0, :, 0], acts[0, :, 1] = 1.0, -1.0
    embeds = torch.zeros(1, D, dtype=torch.bfloat16)
    identity = TransformMatrix(torch.eye(D), None, {}, {})
    # precondition: the old bf16 path flips the choice
    bf16_dm = torch.nn.Linear(D, 2, bias=False).to(torch.bfloat16)
    bf16_dm.weight.data.copy_(weight.to(torch.bfloat16))
    assert int(bf16_dm((acts @ identity.matrix.to(torch.bfloat16)).mean(1) + embeds).argmax()) == 1
    reference = int((((acts.float() @ identity.matrix).mean(1) + embeds.float()) @ weight.T).argmax())
    assert reference == 0
    generator = Generator(loaded.model, tok, loaded, identity, mode="transform")
    _, choice = generator.select(identity.apply(acts.float(), ["de"]), embeds)
    assert int(choice.argmax()) == reference


def test_prompt_over_the_context_is_an_error_naming_the_item(lively_factory):
    from cc_core.generate import PromptTooLongError

    model, tok = lively_factory("llama")
    strict = Generator(model, tok, max_prompt_len=None, on_long_prompt="error", max_new_tokens=40)
    context = model.config.max_position_embeddings
    assert strict.max_prompt_len == context - 40  # no max_prompt_len: the model's context
    strict.check_prompt_lengths(PROMPTS, ["a", "b", "c", "d"])  # short prompts pass
    huge = "word " * (context + 10)
    with pytest.raises(PromptTooLongError, match=r"^XLSum-ar-00007: the prompt has \d+ tokens, over the limit of 2008"):
        strict.check_prompt_lengths(["ok", huge], ["XLSum-ar-00006", "XLSum-ar-00007"])
    with pytest.raises(ValueError, match="valid: truncate, error"):
        Generator(model, tok, on_long_prompt="cut")
