"""The CC-Tuning mechanism on tiny random llama / qwen2 / mistral / gemma2 models (CPU, float32)."""

import copy

import pytest
import torch

from cc_core.modeling import (
    CCTuningModel,
    DecisionMaker,
    arch_paths,
    capture_ffn,
    capturing,
    connected,
    load_cc_checkpoint,
    save_cc_checkpoint,
)
from cc_core.modeling.architectures import UnsupportedArchitectureError, decoder_layers
from cc_core.modeling.checkpoint import NotACCCheckpointError
from cc_core.prompts import (
    anchor_positions,
    encode_example,
    encode_prompt,
    pad_sequences,
)

PROMPTS = ["Wie heißt die Hauptstadt von Kenia?", "東京はどこ？", "Explique la photosynthèse en une phrase."]


def _batch(tokenizer, side):
    prompts = [encode_prompt(tokenizer, p).input_ids for p in PROMPTS]
    ids, mask = pad_sequences(prompts, tokenizer.pad_token_id, side)
    return ids, mask, anchor_positions([len(p) for p in prompts], ids.shape[1], side)


def _hook_count(model):
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules())


def _hidden_size(model):
    return model.config.hidden_size


def test_zero_injection_is_identity(tiny_any):
    model, tok = tiny_any
    ids, mask, anchor = _batch(tok, "right")
    with torch.no_grad():
        plain = model(input_ids=ids, attention_mask=mask).logits
        with connected(model, anchor, torch.zeros(len(PROMPTS), _hidden_size(model))):
            zero = model(input_ids=ids, attention_mask=mask).logits
    torch.testing.assert_close(zero, plain, atol=1e-6, rtol=0)


def test_injection_changes_only_positions_from_anchor(tiny_any):
    model, tok = tiny_any
    ids = torch.tensor([encode_prompt(tok, PROMPTS[2]).input_ids])
    p = 7
    torch.manual_seed(0)
    with torch.no_grad():
        plain = model(input_ids=ids).logits
        with connected(model, torch.tensor([p]), torch.randn(1, _hidden_size(model)), inject_layer=0):
            moved = model(input_ids=ids).logits
    diff = (moved - plain).abs().amax(dim=-1)[0]
    assert diff[:p].max().item() == 0.0
    assert (diff[p:] > 0).all()


def _replay_layers(model, ids, inject_layer, anchor, vector):
    """Manual forward: run the decoder layers one by one, adding ``vector`` to the residual
    stream after layer ``inject_layer`` at ``anchor`` (the layer kwargs: masks and rotary
    embeddings, are recorded from a plain forward; the computation itself is done here)."""
    layers = decoder_layers(model, arch_paths(model))
    recorded = {}
    handles = [layer.register_forward_pre_hook(
        lambda m, a, k, i=i: recorded.__setitem__(i, k), with_kwargs=True) for i, layer in enumerate(layers)]
    with torch.no_grad():
        model(input_ids=ids, use_cache=False)
    for h in handles:
        h.remove()
    with torch.no_grad():
        hidden = model.get_input_embeddings()(ids)
        for i, layer in enumerate(layers):
            out = layer(hidden, **recorded[i])
            hidden = out[0] if isinstance(out, tuple) else out
            if i == inject_layer:
                hidden = hidden.clone()
                hidden[0, anchor] += vector
        logits = model.lm_head(model.model.norm(hidden))
        cap = getattr(model.config, "final_logit_softcapping", None)
        if cap:
            logits = torch.tanh(logits / cap) * cap
    return logits


@pytest.mark.parametrize("inject_layer", [0, 1])
def test_connection_equals_manual_residual_addition(tiny_any, inject_layer):
    model, tok = tiny_any
    ids = torch.tensor([encode_prompt(tok, PROMPTS[0]).input_ids])
    p = ids.shape[1] - 1
    torch.manual_seed(1)
    vector = torch.randn(_hidden_size(model))
    with torch.no_grad(), connected(model, torch.tensor([p]), vector[None], inject_layer=inject_layer):
        hooked = model(input_ids=ids, use_cache=False).logits
    manual = _replay_layers(model, ids, inject_layer, p, vector)
    torch.testing.assert_close(hooked, manual, atol=1e-5, rtol=1e-5)


def test_generate_inside_connection_equals_manual_two_step_decode(tiny_any):
    model, tok = tiny_any
    ids, mask, anchor = _batch(tok, "left")
    torch.manual_seed(2)
    vectors = torch.randn(len(PROMPTS), _hidden_size(model)) * 3
    steps = 6
    with torch.no_grad():
        with connected(model, anchor, vectors):
            generated = model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=steps, do_sample=False,
                                       min_new_tokens=steps, pad_token_id=tok.pad_token_id)
            prefill = model(input_ids=ids, attention_mask=mask, use_cache=True)
        # plain decoding from the connected prefill's cache: the connection must not touch these steps
        cache, tokens, attn = prefill.cache, [prefill.logits[:, -1].argmax(-1)], mask
        positions = mask.sum(1) - 1
        for _ in range(steps - 1):
            attn = torch.cat([attn, torch.ones_like(attn[:, :1])], dim=1)
            positions = positions + 1
            out = model(input_ids=tokens[-1][:, None], attention_mask=attn, cache=cache,
                        position_ids=positions[:, None], use_cache=True)
            cache = out.cache
            tokens.append(out.logits[:, -1].argmax(-1))
    manual = torch.stack(tokens, dim=1)
    assert torch.equal(generated[:, ids.shape[1]:], manual)
    # and the connection mattered: plain generation differs
    with torch.no_grad():
        plain = model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=steps, do_sample=False,
                               min_new_tokens=steps, pad_token_id=tok.pad_token_id)
    assert not torch.equal(plain, generated)


def _manual_ffn_at(model, ids, mask, anchor):
    """Re-run each layer's MLP on its recorded normed input and read the anchor rows."""
    paths = arch_paths(model)
    layers = decoder_layers(model, paths)
    gemma = paths.ffn == "post_feedforward_layernorm"
    norm_name = "pre_feedforward_layernorm" if gemma else "post_attention_layernorm"
    normed = {}
    handles = [getattr(layer, norm_name).register_forward_hook(lambda m, a, o, i=i: normed.__setitem__(i, o))
               for i, layer in enumerate(layers)]
    with torch.no_grad():
        model(input_ids=ids, attention_mask=mask, use_cache=False)
    for h in handles:
        h.remove()
    rows = torch.arange(ids.shape[0])
    out = []
    with torch.no_grad():
        for i, layer in enumerate(layers):
            ffn = layer.mlp(normed[i])
            if gemma:
                ffn = layer.post_feedforward_layernorm(ffn)
            out.append(ffn[rows, anchor])
    return torch.stack(out, dim=1)


@pytest.mark.parametrize("side", ["right", "left"])
def test_capture_equals_manual_mlp(tiny_any, side):
    model, tok = tiny_any
    ids, mask, anchor = _batch(tok, side)
    with torch.no_grad():
        acts, embeds = capture_ffn(model, ids, mask, anchor, with_embed=True)
    assert acts.shape == (len(PROMPTS), model.config.num_hidden_layers, _hidden_size(model))
    torch.testing.assert_close(acts, _manual_ffn_at(model, ids, mask, anchor), atol=1e-6, rtol=1e-6)
    expected_embeds = model.get_input_embeddings()(ids[torch.arange(len(PROMPTS)), anchor])
    torch.testing.assert_close(embeds, expected_embeds)


def test_capture_with_cache_reads_the_anchor_chunk(tiny_factory):
    model, tok = tiny_factory("llama")
    ids, mask, anchor = _batch(tok, "left")
    with torch.no_grad():
        full = capture_ffn(model, ids, mask, anchor)
        prefix = model(input_ids=ids[:, :-1], attention_mask=mask[:, :-1], use_cache=True)
        with capturing(model, anchor) as cap:
            model(input_ids=ids[:, -1:], attention_mask=mask, cache=prefix.cache, use_cache=True)
            chunked = cap.vectors()
    torch.testing.assert_close(chunked, full, atol=1e-5, rtol=1e-5)


def test_hooks_removed_after_context_and_after_exception(tiny_factory):
    model, tok = tiny_factory("qwen2")
    ids, mask, anchor = _batch(tok, "right")
    before = _hook_count(model)
    with connected(model, anchor, torch.zeros(3, 64)):
        assert _hook_count(model) == before + 2
    assert _hook_count(model) == before
    with pytest.raises(RuntimeError, match="boom"):
        with connected(model, anchor, torch.zeros(3, 64)), capturing(model, anchor):
            raise RuntimeError("boom")
    assert _hook_count(model) == before
    capture_ffn(model, ids, mask, anchor)
    assert _hook_count(model) == before


def test_decision_maker_modes():
    torch.manual_seed(0)
    dm = DecisionMaker(8, 4)
    acts, emb = torch.randn(5, 4, 8), torch.randn(5, 8)
    v1, c1 = dm.select(acts, emb, "argmax")
    v2, c2 = dm.select(acts, emb, "argmax")
    assert torch.equal(v1, v2) and torch.equal(c1, c2)
    assert torch.equal(c1.sum(-1), torch.ones(5))
    chosen = c1.argmax(-1)
    torch.testing.assert_close(v1, acts[torch.arange(5), chosen])
    assert torch.equal(chosen, dm.proj(acts.mean(1) + emb).argmax(-1))
    _, g = dm.select(acts, emb, "gumbel")
    assert set(g.unique().tolist()) <= {0.0, 1.0} and torch.equal(g.sum(-1), torch.ones(5))
    _, s = dm.select(acts, emb, "soft")
    torch.testing.assert_close(s.sum(-1), torch.ones(5))
    with pytest.raises(ValueError, match="unknown decision mode"):
        dm.select(acts, emb, "random")


def _cc_batch(tokenizer):
    pairs = [("Was ist 2+2?", "Vier.", "What is 2+2?"), ("日本の首都は？", "東京です。", "What is the capital of Japan?")]
    examples = [encode_example(tokenizer, x, y, 256) for x, y, _ in pairs]
    ids, mask = pad_sequences([e.input_ids for e in examples], tokenizer.pad_token_id, "right")
    labels, _ = pad_sequences([e.labels for e in examples], -100, "right")
    en = [encode_prompt(tokenizer, x_en).input_ids for _, _, x_en in pairs]
    en_ids, en_mask = pad_sequences(en, tokenizer.pad_token_id, "right")
    return dict(input_ids=ids, attention_mask=mask, labels=labels, anchor=torch.tensor([e.anchor for e in examples]),
                en_input_ids=en_ids, en_attention_mask=en_mask, en_anchor=torch.tensor([len(e) - 1 for e in en]))


def test_training_and_inference_read_the_same_anchor_embedding(tiny_any):
    """Training looks the anchor token up in the embedding module; inference reads the hidden state
    entering layer 0. The Decision Maker must see the same input both ways (Gemma scales inside
    its embedding module, which is why that works there)."""
    model, tok = tiny_any
    batch = _cc_batch(tok)
    cc = CCTuningModel(model.eval())
    with torch.no_grad():
        looked_up = cc.anchor_embeds(batch["input_ids"], batch["anchor"])
        _, entering_layer0 = capture_ffn(model, batch["input_ids"], batch["attention_mask"], batch["anchor"],
                                         with_embed=True)
    torch.testing.assert_close(looked_up, entering_layer0, rtol=1e-6, atol=1e-6)


def test_gumbel_training_step_reaches_decision_maker_and_english_pass(tiny_any):
    base, tok = tiny_any
    batch = _cc_batch(tok)
    runs = {}
    for detach in (False, True):
        model = copy.deepcopy(base).train()
        torch.manual_seed(0)  # same Decision Maker init and the same Gumbel noise in both runs
        cc = CCTuningModel(model, decision_mode="gumbel", detach_english=detach)
        seen = {}
        english_activations = cc.english_activations

        def spy(*args, _seen=seen, _inner=english_activations, **kwargs):
            acts = _inner(*args, **kwargs)
            if acts.requires_grad:
                acts.retain_grad()
            _seen["acts"] = acts
            return acts

        cc.english_activations = spy
        out = cc(**batch)
        assert torch.isfinite(out.loss) and out.choice.shape == (2, model.config.num_hidden_layers)
        out.loss.backward()
        assert cc.decision_maker.proj.weight.grad is not None and cc.decision_maker.proj.weight.grad.abs().sum() > 0
        runs[detach] = (seen["acts"], {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None})
    # the gradient reaches the captured English activations ...
    acts, grads = runs[False]
    assert acts.grad is not None and acts.grad.abs().sum() > 0
    # ... and through them the weights: the English pass adds to the gradient that detaching leaves out
    detached_acts, detached_grads = runs[True]
    assert not detached_acts.requires_grad
    assert any(not torch.allclose(grads[n], detached_grads.get(n, torch.zeros_like(grads[n]))) for n in grads)


def test_detach_english_blocks_english_gradients(tiny_factory):
    model, tok = tiny_factory("llama")
    cc = CCTuningModel(model.train(), decision_mode="soft", detach_english=True)
    batch = _cc_batch(tok)
    acts = cc.english_activations(batch["en_input_ids"], batch["en_attention_mask"], batch["en_anchor"])
    assert not acts.requires_grad


@pytest.mark.parametrize("arch", ["llama", "qwen2", "mistral", "gemma2"])
def test_gradient_checkpointing_gives_same_loss_and_grads(tiny_factory, arch):
    batch = None
    results = []
    for checkpointing in (False, True):
        model, tok = tiny_factory(arch, seed=3)
        cc = CCTuningModel(model.train(), decision_mode="soft")
        if checkpointing:
            cc.gradient_checkpointing_enable()
        batch = batch or _cc_batch(tok)
        out = cc(**batch)
        out.loss.backward()
        results.append((out.loss.detach(), {n: p.grad.clone() for n, p in cc.named_parameters() if p.grad is not None}))
    (loss_a, grads_a), (loss_b, grads_b) = results
    torch.testing.assert_close(loss_a, loss_b)
    assert grads_a.keys() == grads_b.keys()
    for name in grads_a:
        torch.testing.assert_close(grads_a[name], grads_b[name], atol=1e-5, rtol=1e-4, msg=name)


def test_bf16_training_step(tiny_factory):
    model, tok = tiny_factory("llama")
    cc = CCTuningModel(model.to(torch.bfloat16).train(), decision_mode="gumbel")
    assert cc.decision_maker.proj.weight.dtype == torch.bfloat16
    out = cc(**_cc_batch(tok))
    assert out.logits.dtype == torch.bfloat16 and torch.isfinite(out.loss.float())
    out.loss.backward()
    grads = [p.grad for p in cc.parameters() if p.grad is not None]
    assert cc.decision_maker.proj.weight.grad is not None and cc.decision_maker.proj.weight.grad.dtype == torch.bfloat16
    assert grads and all(torch.isfinite(g.float()).all() for g in grads)


def test_checkpoint_round_trip(tmp_path, tiny_any):
    from transformers import AutoModelForCausalLM

    model, tok = tiny_any
    cc = CCTuningModel(model, inject_layer=1).eval()
    torch.nn.init.normal_(cc.decision_maker.proj.weight)
    batch = _cc_batch(tok)
    with torch.no_grad():
        before = cc(**batch, decision_mode="argmax")
    save_cc_checkpoint(cc, tmp_path / "cc", tok)
    loaded, tok2 = load_cc_checkpoint(tmp_path / "cc")
    assert loaded.inject_layer == 1 and tok2.chat_template == tok.chat_template
    with torch.no_grad():
        after = loaded(**batch, decision_mode="argmax")
    torch.testing.assert_close(after.logits, before.logits)
    assert torch.equal(after.choice, before.choice)
    plain = AutoModelForCausalLM.from_pretrained(tmp_path / "cc")  # usable without CC
    assert plain.config.model_type == model.config.model_type


def test_loading_a_plain_directory_is_a_clear_error(tmp_path, tiny_factory):
    model, tok = tiny_factory("llama")
    model.save_pretrained(tmp_path / "plain")
    with pytest.raises(ValueError, match="not a CC-Tuning checkpoint"):
        load_cc_checkpoint(tmp_path / "plain")


def test_unsupported_architecture_lists_supported_and_param(tiny_factory):
    model, _ = tiny_factory("llama")
    model.config.model_type = "mystery"
    with pytest.raises(UnsupportedArchitectureError, match=r"supported: .*llama.*model.arch_map"):
        arch_paths(model)
    paths = arch_paths(model, {"layers": "model.layers", "ffn": "mlp"})
    assert len(decoder_layers(model, paths)) == 2
    with pytest.raises(UnsupportedArchitectureError, match="no submodule 'model.blocks'"):
        decoder_layers(model, arch_paths(model, {"layers": "model.blocks", "ffn": "mlp"}))


def test_damaged_cc_metadata_is_a_clear_error(tmp_path, tiny_factory):
    model, tok = tiny_factory("llama")
    out = save_cc_checkpoint(CCTuningModel(model), tmp_path / "ckpt", tok)
    meta = out / "cc_tuning.json"
    good = meta.read_text()
    meta.write_text("{not json")
    with pytest.raises(NotACCCheckpointError, match=r"cc_tuning\.json: not valid JSON"):
        load_cc_checkpoint(out)
    meta.write_text(good.replace('"inject_layer"', '"inject"'))
    with pytest.raises(NotACCCheckpointError, match=r"cc_tuning\.json: missing key\(s\) inject_layer"):
        load_cc_checkpoint(out)
    meta.unlink()  # a write cut short leaves no marker: the directory is not a checkpoint
    with pytest.raises(NotACCCheckpointError, match="not a CC-Tuning checkpoint"):
        load_cc_checkpoint(out)


def _loss_and_grads(cc, batch, seed: int):
    torch.manual_seed(seed)  # the same Gumbel noise in every run compared
    out = cc(**batch)
    out.loss.backward()
    grads = {n: p.grad.clone() for n, p in cc.named_parameters() if p.grad is not None}
    return out.loss.detach(), out.choice, grads


@pytest.mark.parametrize("arch", ["llama", "qwen2"])
def test_detached_default_equals_the_authors_reentrant_checkpointing(tiny_factory, arch):
    """docs/method.md, Training step 1: the authors' code does not detach the English pass, but their
    reentrant gradient checkpointing runs it without autograd. Our default (detach_english=True,
    no checkpointing) must give their loss and gradients; letting gradients flow must differ."""
    base, tok = tiny_factory(arch, seed=5)
    batch = _cc_batch(tok)
    runs = {}
    for name, detach, reentrant in (("default", True, False), ("authors", False, True), ("flowing", False, False)):
        model = copy.deepcopy(base).train()
        torch.manual_seed(1)  # the same Decision Maker init in every run
        cc = CCTuningModel(model, decision_mode="gumbel", detach_english=detach)
        if reentrant:
            cc.gradient_checkpointing_enable({"use_reentrant": True})
            assert all(layer.gradient_checkpointing for layer in decoder_layers(model, cc.paths))
        runs[name] = _loss_and_grads(cc, batch, seed=2)
    (loss_d, choice_d, grads_d), (loss_a, choice_a, grads_a) = runs["default"], runs["authors"]
    torch.testing.assert_close(choice_d, choice_a)
    torch.testing.assert_close(loss_d, loss_a, rtol=1e-6, atol=1e-6)
    assert grads_d.keys() == grads_a.keys() and len(grads_d) > 10
    for name in grads_d:
        torch.testing.assert_close(grads_d[name], grads_a[name], rtol=1e-5, atol=1e-6, msg=name)
    # the option: the same loss (the forward is the same), but the English pass adds gradient
    loss_f, _, grads_f = runs["flowing"]
    torch.testing.assert_close(loss_f, loss_d, rtol=1e-6, atol=1e-6)
    differing = [n for n in grads_d if not torch.allclose(grads_d[n], grads_f[n], rtol=1e-4, atol=1e-7)]
    assert differing, "gradients through the English pass changed nothing"


def test_decision_maker_init_matches_the_reference_model_init(tiny_factory):
    """The reference's Decision Maker weight is missing from the base checkpoint, so the model's
    _init_weights draws it from normal(0, initializer_range); nn.Linear's default is narrower."""
    import math

    model, _ = tiny_factory("llama")
    model.config.initializer_range = 0.02
    big = DecisionMaker(4096, 32, init_std=0.02)
    assert abs(big.proj.weight.std().item() - 0.02) < 0.0005
    assert abs(big.proj.weight.mean().item()) < 0.0005
    linear = DecisionMaker(4096, 32)  # nn.Linear: uniform(±1/sqrt(d)), std = 1/sqrt(3d)
    assert abs(linear.proj.weight.std().item() - 1 / math.sqrt(3 * 4096)) < 0.0005
    torch.manual_seed(0)
    cc = CCTuningModel(model)  # default: the model's own initializer_range
    std = cc.decision_maker.proj.weight.std().item()
    assert 0.015 < std < 0.025, std
    torch.manual_seed(0)
    narrow = CCTuningModel(model, decision_maker_init="linear").decision_maker.proj.weight.std().item()
    assert abs(narrow - 1 / math.sqrt(3 * model.config.hidden_size)) < 0.02
    with pytest.raises(ValueError, match="valid: model, linear"):
        CCTuningModel(model, decision_maker_init="xavier")
