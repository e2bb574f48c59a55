"""The authors' run as options (issue 22): each difference from their code that the paper profile sets.

One section per option, on hand-built token sequences and tiny models; where their behaviour is
deterministic it is reproduced exactly. Their code: YYF-Tommy/CC-Tuning (facts only, no code copied).
"""

from __future__ import annotations

import contextlib
import copy
import json
import random
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from cc_core.config import FitParams, TrainParams, load_params, parse_params
from cc_core.data.records import Record
from cc_core.prompts import AnchorRule, anchor_positions, anchor_rule, encode_prompt, set_chat_template, special_prefix
from cc_core.training.data import CCCollator, PackedCollator, encode_llama_factory, encode_records, infer_seqlen
from cc_helpers import random_cc, random_transform

REPO = Path(__file__).resolve().parents[2]

LLAMA3_SPECIALS = ["<|begin_of_text|>", "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>", "<|end_of_text|>"]
MISTRAL_TEMPLATE = "{{ bos_token }}{% for m in messages %}[INST] {{ m['content'] }} [/INST]{% endfor %}"


@pytest.fixture
def llama3_style(smol_tokenizer):
    """SmolLM2's BPE with Llama-3's special tokens and the llama3-lf template (no Llama-3 tokenizer ships offline)."""
    tok = copy.deepcopy(smol_tokenizer)
    tok.add_special_tokens({"additional_special_tokens": LLAMA3_SPECIALS})
    tok.bos_token, tok.eos_token = "<|begin_of_text|>", "<|end_of_text|>"
    set_chat_template(tok, "llama3-lf")
    return tok


def _adds_bos(tok):
    """Make ``tok(text)`` put its BOS in front, as Llama-3's and Mistral's tokenizers do."""
    from tokenizers import processors

    tok._tokenizer.post_processor = processors.TemplateProcessing(
        single=f"{tok.bos_token} $A", special_tokens=[(tok.bos_token, tok.bos_token_id)])
    return tok


def test_paper_profile_sets_the_authors_behaviour_and_defaults_keep_ours():
    paper = load_params(REPO / "params.paper.yaml")
    assert paper.model.anchor == "authors"
    assert (paper.train.truncation, paper.train.loss_average) == ("llama_factory", "micro_batch")
    assert paper.collect.add_special_tokens and paper.eval.add_special_tokens
    assert (paper.fit.solver, paper.fit.holdout_split) == ("lstsq", "last")
    assert (paper.eval.dtype, paper.eval.stop, paper.eval.seeds) == ("float32", "model_eos", 1)
    assert paper.eval.decision_mode == "gumbel"
    text = (REPO / "params.paper.yaml").read_text()
    for source in ("tag_locate.py", "supervised.py", "mytrainer_connector_mlp.py", "get_vectors.py",
                   "get_matrix.py", "inference_matrix.py"):
        assert source in text, source
    assert "drops examples" not in text  # LLaMA-Factory keeps every example
    defaults = parse_params({})
    assert defaults.model.anchor == "last_prompt_token" and defaults.train.truncation == "keep_prompt"
    assert defaults.train.loss_average == "global_tokens" and defaults.fit.solver == "cholesky"
    assert defaults.fit.holdout_split == "random" and defaults.eval.dtype == "auto"
    assert defaults.eval.stop == "end_of_turn" and not defaults.eval.add_special_tokens
    assert not defaults.collect.add_special_tokens
    for profile in ("params.yaml", "params.tiny.yaml"):
        loaded = load_params(REPO / profile)
        assert loaded.model.anchor == "last_prompt_token" and loaded.eval.stop == "end_of_turn", profile


# --- 1. inference precision (eval.dtype) -----------------------------------------------------------------

@pytest.mark.parametrize(("setting", "dtype"), [("float32", torch.float32), ("bfloat16", torch.bfloat16),
                                                 ("auto", torch.float32)])
def test_eval_dtype_loads_the_model_in_that_dtype(tiny_factory, tmp_path, setting, dtype):
    from cc_core.evaluate import load_generator

    model, tok = tiny_factory("llama")
    model.save_pretrained(tmp_path / "m")
    tok.save_pretrained(tmp_path / "m")
    params = parse_params({}, overrides=[f"eval.dtype={setting}", "tracking.enabled=false"])
    gen = load_generator(params, "base", tmp_path / "m", "transform")  # auto on a CPU: float32
    assert next(gen.model.parameters()).dtype == dtype
    assert gen.generate(["Wie heißt die Hauptstadt von Kenia?"])[0].new_tokens >= 1


# --- 2. stopping and decoding (eval.stop) ----------------------------------------------------------------

def _scripted(model, tokens: list[int]):
    """The model emits ``tokens`` in order (a large logit added at each step's token), then repeats the last."""
    step = [0]

    def hook(module, args, output):
        bias = torch.zeros(output.shape[-1])
        bias[tokens[min(step[0], len(tokens) - 1)]] = 1e4
        step[0] += 1
        return output + bias.to(output)

    return model.lm_head.register_forward_hook(hook)


def test_model_eos_stops_only_at_the_config_eos_and_keeps_the_text_after_the_end_of_turn(tiny_factory):
    """Llama-3.1 base: config EOS <|end_of_text|>, the template's end of turn <|eot_id|>. Here the config EOS is
    SmolLM2's <|endoftext|> and the end of turn its <|im_end|>: the authors' loop runs past the end of turn."""
    from cc_core.generate import Generator
    from cc_core.generation.decoding import model_eos_ids

    model, tok = tiny_factory("llama")
    end_of_text, end_of_turn = tok.convert_tokens_to_ids("<|endoftext|>"), tok.convert_tokens_to_ids("<|im_end|>")
    model.config.eos_token_id = model.generation_config.eos_token_id = end_of_text
    hello, world = tok(" Hello", add_special_tokens=False).input_ids, tok(" world", add_special_tokens=False).input_ids
    script = hello + [end_of_turn] + world + [end_of_text] + hello
    handle = _scripted(model, script)
    try:
        ours = Generator(model, tok, max_new_tokens=12).generate(["x"])[0]
        handle.remove()
        handle = _scripted(model, script)
        theirs = Generator(model, tok, max_new_tokens=12, stop="model_eos").generate(["x"])[0]
        handle.remove()
        handle = _scripted(model, script)
        capped = Generator(model, tok, max_new_tokens=3, stop="model_eos").generate(["x"])[0]
    finally:
        handle.remove()
    assert model_eos_ids(model) == [end_of_text]
    assert ours.text == "Hello" and ours.new_tokens == len(hello) + 1
    # as their decode(new_tokens, skip_special_tokens=True): the end of turn vanishes, the rest stays, unstripped
    assert theirs.text == tok.decode(hello + [end_of_turn] + world, skip_special_tokens=True) == " Hello world"
    assert theirs.new_tokens == len(script) - len(hello)
    assert capped.new_tokens == 3  # without an EOS, up to the cap (40 in their runs)
    with pytest.raises(ValueError, match="stop='x'"):
        Generator(model, tok, stop="x")


# --- 3. Transform pairs: their draws, in order --------------------------------------------------------------

def test_pairs_are_the_authors_draws_and_the_last_ones_are_held_out(tmp_path):
    """get_vectors.py: random.seed(666); random.sample(range(len(data)), k) over their file in file order. Their
    file has far more than ~4,100 records, so a 1100-draw sample starts with their 1000 (and their code's 10)."""
    from cc_core.data.prepare import prepare
    from cc_core.data.records import read_records
    from cc_core.transform import split_ids

    n = 5000
    path = tmp_path / "aya_train_mini_parallel.json"
    path.write_text(json.dumps([{"instruction": f"Frage {i}?", "output": f"Antwort {i}.", "instruction_en": f"Q {i}?"}
                                for i in range(n)]))
    prepare(parse_params({}, overrides=[f"data.source={path}", "data.num_pairs=1100", "data.seed=666",
                                        "data.pairs_from=train"]).data, tmp_path / "prepared")
    pairs = [r.id for r in read_records(tmp_path / "prepared" / "pairs.jsonl")]

    def theirs(k):
        random.seed(666)
        return [f"aya_train_mini_parallel-{i:06d}" for i in random.sample(range(n), k)]

    assert pairs[:1000] == theirs(1000) and pairs[:10] == theirs(10) and pairs == theirs(1100)
    held = split_ids(pairs, 100 / 1100, seed=0, how="last")
    assert held == set(pairs[1000:])  # fitted: exactly their first 1000 draws
    assert len(split_ids(pairs, 100 / 1100, seed=0) & set(pairs[:1000])) > 50  # the random split mixes them
    assert split_ids(pairs[:10], 0.0, seed=0, how="last") == set()  # their code: 10 pairs, nothing held out


# --- 4. two BOS tokens (add_special_tokens) -------------------------------------------------------------------

def test_add_special_tokens_puts_the_tokenizers_bos_before_the_templates(llama3_style, smol_tokenizer):
    tok = _adds_bos(llama3_style)
    bos = tok.convert_tokens_to_ids("<|begin_of_text|>")
    once = encode_prompt(tok, "Quelle est la capitale du Kenya ?")
    twice = encode_prompt(tok, "Quelle est la capitale du Kenya ?", add_special_tokens=True)
    assert once.input_ids[0] == bos and twice.input_ids == [bos] + once.input_ids  # <|begin_of_text|> twice
    assert twice.input_ids == tok(tok.apply_chat_template([{"role": "user", "content": "Quelle est la capitale du "
                                                             "Kenya ?"}], tokenize=False, add_generation_prompt=True)
                                  ).input_ids  # their tokenizer(prompt) call
    assert twice.anchor == len(twice.input_ids) - 1
    authors = anchor_rule(tok, "authors")  # one past the 2nd <|end_header_id|>, counted on the prefixed ids
    assert encode_prompt(tok, "Quelle est la capitale du Kenya ?", add_special_tokens=True, rule=authors) == twice
    cut = encode_prompt(tok, "mot " * 300, max_len=64, add_special_tokens=True, rule=authors)
    assert len(cut.input_ids) <= 64 and cut.input_ids[:2] == [bos, bos] and cut.anchor == len(cut.input_ids) - 1
    assert special_prefix(smol_tokenizer) == []  # SmolLM2 (and Qwen2) add nothing: one BOS either way
    assert encode_prompt(smol_tokenizer, "x", add_special_tokens=True) == encode_prompt(smol_tokenizer, "x")


def test_generator_and_collect_feed_the_prefixed_prompt(tiny_factory):
    """On a tiny model whose tokenizer adds a BOS (<|endoftext|> here): generation, log-likelihood and collection
    all see the prompt the authors fed, the template's tokens after the tokenizer's own."""
    from cc_core.activations import anchor_activations
    from cc_core.data.benchmarks import get_spec, load_benchmark
    from cc_core.generate import Generator
    from cc_core.loglik import score_choice_items
    from cc_core.modeling import capture_ffn

    model, tok = tiny_factory("llama")
    tok = copy.deepcopy(tok)
    tok.bos_token = "<|endoftext|>"
    _adds_bos(tok)
    prompt = "Wie heißt die Hauptstadt von Kenia?"
    gen = Generator(model, tok, add_special_tokens=True, max_new_tokens=3)
    ids, mask, anchor, _ = gen.encode([prompt])
    plain = encode_prompt(tok, prompt).input_ids
    assert ids[0].tolist() == [tok.bos_token_id] + plain and int(anchor[0]) == ids.shape[1] - 1
    item = load_benchmark("XNLI", "zh", "bundled", 1)
    both = [score_choice_items(g, get_spec("XNLI"), item)[0] for g in (Generator(model, tok), gen)]
    assert both[0].tokens == both[1].tokens  # the options are tokenized alike; only the context differs
    acts = anchor_activations(model, tok, [prompt], 4, add_special_tokens=True)
    ids1 = torch.tensor([[tok.bos_token_id] + plain])
    with torch.no_grad():
        manual = capture_ffn(model, ids1, torch.ones_like(ids1), torch.tensor([ids1.shape[1] - 1]))
    torch.testing.assert_close(acts, manual)


# --- 5. truncation as LLaMA-Factory ---------------------------------------------------------------------------

@pytest.mark.parametrize(("source", "target", "cutoff", "kept"), [
    (900, 100, 1024, (900, 100)),  # fits
    (1500, 100, 1024, (924, 100)),  # short response kept whole, the prompt cut
    (300, 900, 1024, (300, 724)),  # short prompt kept, the response cut
    (1200, 800, 1024, (615, 409)),  # both long: in proportion, int(1024 * 800 / 2000) = 409
    (80, 0, 0, (0, 0)),  # the English prompt when x + y fill the cutoff: nothing
    (80, 0, 50, (50, 0)),  # the English prompt gets what is left, cut from the right
])
def test_infer_seqlen_is_llama_factorys_arithmetic(source, target, cutoff, kept):
    assert infer_seqlen(source, target, cutoff) == kept


def test_llama_factory_truncation_on_the_llama3_template(llama3_style):
    """A prompt over the cutoff loses its end (the assistant header): no 2nd <|end_header_id|>, anchor -1; the
    English prompt gets nothing; keep_prompt drops such an example instead."""
    tok, authors = llama3_style, anchor_rule(llama3_style, "authors")
    long = "mot " * 200
    made = encode_llama_factory(tok, long, "Oui.", "Yes?", 64, authors)
    prompt_len = len(encode_prompt(tok, long).input_ids)
    response = tok("Oui.", add_special_tokens=False).input_ids + [tok.convert_tokens_to_ids("<|eot_id|>")]
    assert made.example.input_ids == encode_prompt(tok, long).input_ids[:64 - len(response)] + response
    assert made.example.prompt_truncated and not made.example.response_truncated and prompt_len > 64
    assert made.example.anchor == -1 and made.english_kept == 0 and made.english == [tok.pad_token_id]
    short = encode_llama_factory(tok, "Bonjour ?", "Salut.", "Hello? " * 30, 80, authors)
    xy = len(short.example.input_ids)
    english = encode_prompt(tok, "Hello? " * 30).input_ids
    assert short.english == english[:80 - xy] and short.english_total == len(english)  # cut from the right
    assert short.example.anchor == len(encode_prompt(tok, "Bonjour ?").input_ids) - 1  # the header survived
    assert authors.locate(short.english) == -1  # the English prompt lost its header: their -1
    records = [Record("a", "fr", long, "Oui.", "Yes?"), Record("b", "fr", "Bonjour ?", "Salut.", "Hello?")]
    _, ours = encode_records(records, tok, 64, "cc", rule=authors)
    _, theirs = encode_records(records, tok, 64, "cc", truncation="llama_factory", rule=authors)
    assert (ours.kept, ours.dropped_truncated) == (1, 1)
    assert (theirs.kept, theirs.prompt_truncated, theirs.anchor_lost, theirs.english_emptied) == (2, 1, 1, 1)


def test_collators_put_a_lost_anchor_where_the_authors_did():
    """-1: the padded batch's last column (their hidden_states[k, -1]); packed, the example's last token."""
    features = [{"input_ids": [5, 6, 7], "labels": [-100, 6, 7], "anchor": -1, "en_input_ids": [1, 2], "en_anchor": -1},
                {"input_ids": [5, 6, 7, 8, 9], "labels": [-100, -100, 7, 8, 9], "anchor": 1,
                 "en_input_ids": [1, 2, 3, 4], "en_anchor": 3}]
    padded = CCCollator(0)(features)
    assert padded["anchor"].tolist() == [4, 1] and padded["en_anchor"].tolist() == [3, 3]
    packed = PackedCollator(0, 100)(features)  # one row: [5, 6, 7 | 5, 6, 7, 8, 9], English [1, 2 | 1, 2, 3, 4]
    assert packed["anchor"].tolist() == [2, 3 + 1] and packed["en_anchor"].tolist() == [1, 2 + 3]


def test_a_lost_anchor_trains_as_plain_sft_padded_and_packed(tiny_factory):
    """Where the prompt lost its anchor, the injection lands on a column no label depends on, in the authors'
    padded batch and in our packed rows alike: that example's loss is the plain model's."""
    from cc_core.modeling import CCTuningModel

    model, tok = tiny_factory("llama", seed=3)
    model.config.use_cache = False
    authors = anchor_rule(tok, "authors")  # SmolLM2's ChatML: one past the 3rd <|im_start|>
    records = [Record("a", "de", "Was ist 2+2?", "Vier.", "What is 2+2?"),
               Record("b", "de", "Erkläre " * 80, "Gut.", "Explain."),
               Record("c", "fr", "Quelle heure est-il ?", "Midi.", "What time is it?")]
    from cc_core.prompts import encode_pair

    # room for the short examples and their English prompts; the long prompt alone is over it
    cutoff = max(sum(map(len, encode_pair(tok, r.instruction, r.output))) + len(encode_prompt(tok, r.instruction_en)
                                                                                  .input_ids)
                 for r in (records[0], records[2]))
    assert len(encode_prompt(tok, records[1].instruction).input_ids) > cutoff
    features, stats = encode_records(records, tok, cutoff, "cc", truncation="llama_factory", rule=authors)
    assert stats.anchor_lost == 1 and features[1]["anchor"] == -1 and features[0]["anchor"] >= 0
    assert stats.english_anchor_lost == 1  # only the cut example's (emptied) English prompt

    def per_example(batch, spans):
        torch.manual_seed(0)
        cc = CCTuningModel(copy.deepcopy(model), decision_mode="gumbel")
        out = cc(**{k: v for k, v in batch.items() if not k.endswith("token_count")})
        return torch.stack([F.cross_entropy(out.logits[r, s:s + n - 1], batch["labels"][r, s + 1:s + n],
                                            ignore_index=-100) for r, s, n in spans])

    padded = CCCollator(tok.pad_token_id)(features)
    losses_padded = per_example(padded, [(i, 0, len(f["input_ids"])) for i, f in enumerate(features)])
    packed = PackedCollator(tok.pad_token_id, None)(features)
    spans = [(int(packed["anchor_row"][i]), int(packed["anchor"][i]) - (f["anchor"] % len(f["input_ids"])),
              len(f["input_ids"])) for i, f in enumerate(features)]
    losses_packed = per_example(packed, spans)
    torch.testing.assert_close(losses_padded, losses_packed, rtol=1e-5, atol=1e-5)
    ids = torch.tensor([features[1]["input_ids"]])
    with torch.no_grad():
        plain = model(input_ids=ids, labels=torch.tensor([features[1]["labels"]])).loss
    torch.testing.assert_close(losses_padded[1], plain, rtol=1e-5, atol=1e-5)


# --- 6. loss normalisation -----------------------------------------------------------------------------------

def test_micro_batch_loss_is_the_micro_batch_mean_global_is_over_the_step(tiny_factory, tmp_path):
    """global_tokens: sum of token losses / the step's token count on all devices (num_items_in_batch); micro_batch:
    the micro-batch's own mean (their Trainer passed no count), so each device weighs the same, whatever its tokens."""
    from cc_core.training.data import FeatureDataset
    from cc_core.training.trainer import CCTrainer, training_arguments

    model, tok = tiny_factory("llama")
    records = [Record("a", "de", "Was ist 2+2?", "Vier.", "What is 2+2?"),
               Record("b", "fr", "Quelle heure est-il ?", "Il est midi, plus ou moins.", "What time is it?")]
    features, _ = encode_records(records, tok, 256, "sft")
    batch = CCCollator(tok.pad_token_id)(features)
    batch.pop("token_count")
    tokens = int((batch["labels"][:, 1:] != -100).sum())
    args = training_arguments(TrainParams(), tmp_path, None)
    results = {}
    for mode in ("global_tokens", "micro_batch"):
        net = copy.deepcopy(model)
        trainer = CCTrainer(model=net, args=args, train_dataset=FeatureDataset(features), processing_class=tok,
                            data_collator=CCCollator(tok.pad_token_id), loss_average=mode)
        trainer.current_gradient_accumulation_steps = 1  # set by the Trainer's loop, which this test skips
        net.zero_grad()
        # as if another device's micro-batch held three times as many label tokens
        loss = trainer.training_step(net, dict(batch), num_items_in_batch=torch.tensor(4 * tokens))
        results[mode] = (float(loss), net.lm_head.weight.grad.clone())
    with torch.no_grad():
        mean = float(model(**batch).loss)
    assert results["micro_batch"][0] == pytest.approx(mean, rel=1e-5)
    assert results["global_tokens"][0] == pytest.approx(mean / 4, rel=1e-5)
    torch.testing.assert_close(results["global_tokens"][1] * 4, results["micro_batch"][1], rtol=1e-4, atol=1e-7)
    with pytest.raises(ValueError, match="loss_average"):
        CCTrainer(model=model, args=args, loss_average="x")


# --- 7. anchors of other templates ---------------------------------------------------------------------------

def test_authors_anchor_rules_on_token_sequences():
    """tag_locate.py find_occurrence, on hand-built ids (their Llama-3/Mistral/Qwen2 ids)."""
    llama3 = AnchorRule(128007, 2, 1)
    seq = [128000, 128006, 882, 128007, 271, 9906, 128009, 128006, 78191, 128007, 271]
    assert llama3.locate(seq) == 10 == len(seq) - 1  # the "\n\n" after the assistant header
    assert llama3.locate(seq + [40, 41], prompt_len=len(seq)) == 10  # in a training sequence too
    assert llama3.locate(seq[:6]) == -1  # the header cut away: their -1
    mistral = AnchorRule(4, 1, -1)
    seq = [1, 3, 1010, 1011, 1012, 4]
    assert mistral.locate(seq) == 4  # one before [/INST], not [/INST] itself
    qwen2 = AnchorRule(151644, 3, 1)
    seq = [151644, 8948, 198, 2610, 151645, 198, 151644, 872, 198, 9707, 151645, 198, 151644, 77091, 198]
    assert qwen2.locate(seq) == 13 == len(seq) - 2  # the "assistant" token, not the last "\n"
    assert qwen2.locate(seq[:12]) == -1
    assert AnchorRule().locate(seq) == len(seq) - 1 and AnchorRule().locate(seq + [1], prompt_len=15) == 14


def test_anchor_rule_follows_the_tokenizers_template(llama3_style, smol_tokenizer):
    assert anchor_rule(llama3_style, "authors").marker == llama3_style.convert_tokens_to_ids("<|end_header_id|>")
    chatml = anchor_rule(smol_tokenizer, "authors")
    assert chatml.marker == smol_tokenizer.convert_tokens_to_ids("<|im_start|>") and chatml.occurrence == 3
    ids = encode_prompt(smol_tokenizer, "Hallo", rule=chatml)
    starts = [i for i, t in enumerate(ids.input_ids) if t == chatml.marker]
    assert len(starts) == 3 and ids.anchor == starts[2] + 1  # "ass" of "assistant" (one token in Qwen2's vocabulary)
    assert smol_tokenizer.decode(ids.input_ids[ids.anchor:]) == "assistant\n"
    mistral = copy.deepcopy(smol_tokenizer)
    mistral.add_special_tokens({"additional_special_tokens": ["[INST]", "[/INST]"]})
    set_chat_template(mistral, MISTRAL_TEMPLATE)
    rule = anchor_rule(mistral, "authors")
    encoded = encode_prompt(mistral, "Bonjour le monde", rule=rule)
    assert encoded.input_ids[encoded.anchor + 1] == mistral.convert_tokens_to_ids("[/INST]")
    assert encoded.anchor == len(encoded.input_ids) - 2
    plain = copy.deepcopy(smol_tokenizer)
    set_chat_template(plain, "{% for m in messages %}User: {{ m['content'] }}\n{% endfor %}Assistant:")
    with pytest.raises(ValueError, match="none of the authors' marker tokens"):
        anchor_rule(plain, "authors")
    assert anchor_rule(plain, "last_prompt_token") == AnchorRule()


@pytest.mark.parametrize("cache", ["dynamic", "static"])
def test_transform_prefill_with_the_authors_anchor_before_the_last_column(lively_factory, cache):
    """ChatML under the authors' rule anchors on "assistant" (SmolLM2: its first piece "ass", 3 before the prompt's
    end): the prefill recomputes from there and equals capture → matrix → Decision Maker → connected forward."""
    from cc_core.generate import Generator
    from cc_core.modeling import capture_ffn, connected

    model, tok = lively_factory("llama")
    cc, matrix = random_cc(model), random_transform()
    prompts, langs = ["Wie heißt die Hauptstadt von Kenia?", "hi", "東京はどこ？"], ["de", "en", "ja"]
    gen = Generator(model, tok, cc, matrix, mode="transform", anchor="authors", cache=cache, max_new_tokens=4)
    naive = Generator(model, tok, cc, matrix, mode="transform", anchor="authors", reuse_cache=False, max_new_tokens=4)
    logits, _, _, choice, _ = gen.prefill(prompts, langs)
    ids, mask, anchor, _ = gen.encode(prompts)
    assert (anchor == ids.shape[1] - 3).all()  # "ass", "istant", "\n"
    with torch.no_grad():
        acts, embeds = capture_ffn(model, ids, mask, anchor, with_embed=True, paths=cc.paths)
        vectors, manual_choice = cc.decision_maker.select(matrix.apply(acts, langs), embeds, "argmax")
        with connected(model, anchor, vectors, cc.inject_layer, cc.paths):
            manual = model(input_ids=ids, attention_mask=mask).logits[:, -1]
        last = Generator(model, tok, cc, matrix, mode="transform", max_new_tokens=4).prefill(prompts, langs)[0]
    assert torch.equal(choice, manual_choice)
    torch.testing.assert_close(logits, manual, atol=1e-3, rtol=1e-4)
    torch.testing.assert_close(naive.prefill(prompts, langs)[0], manual, atol=1e-3, rtol=1e-4)
    assert (logits - last).abs().max() > 1e-3  # another anchor, another computation
    assert [g.new_tokens for g in gen.generate(prompts, langs)] == [g.new_tokens for g in naive.generate(prompts, langs)]


def test_anchor_positions_with_own_anchors():
    assert anchor_positions([3, 5], 5, "left", [1, 3]).tolist() == [3, 3]
    assert anchor_positions([3, 5], 5, "right", [1, 3]).tolist() == [1, 3]
    assert anchor_positions([3, 5], 5, "left").tolist() == [4, 4]


# --- 8. one Gumbel draw, and the report says so -----------------------------------------------------------------

def test_metrics_and_report_name_the_inference_settings(tmp_path, monkeypatch):
    from cc_core.evaluate import LangResult, inference_settings, write_results
    from cc_core.report import report

    monkeypatch.chdir(tmp_path)
    paper = parse_params({}, overrides=["tracking.enabled=false", "eval.decision_mode=gumbel", "eval.seeds=1",
                                        "eval.dtype=float32", "eval.stop=model_eos", "eval.add_special_tokens=true",
                                        "model.anchor=authors", "eval.benchmarks=[XNLI]"])
    assert inference_settings(paper, "transform") == {
        "dtype": "float32", "stop": "model_eos", "add_special_tokens": True, "decision_mode": "gumbel",
        "gumbel_seeds": [0], "anchor": "authors"}
    assert inference_settings(paper, "none") == {"dtype": "float32", "stop": "model_eos", "add_special_tokens": True}
    for method, mode, params in (("cc", "transform", paper), ("sft", "none", paper)):
        summary = {"benchmark": "XNLI", "lang": "zh", "n": 1, "metric": "accuracy", "protocol": "standard",
                   "score": 100.0, "unparsed": 0, "empty": 0}
        write_results(params, method, "XNLI", {"zh": LangResult("zh", summary, [{"id": "XNLI-zh-00000", "score": 1.0}])},
                      mode, 1.0, tmp_path / "eval", tmp_path / "metrics" / "eval")
    saved = json.loads((tmp_path / "metrics" / "eval" / "cc" / "XNLI.json").read_text())
    assert saved["inference"]["gumbel_seeds"] == [0]
    report(paper, tmp_path / "metrics", tmp_path / "eval", tmp_path / "reports")
    text = (tmp_path / "reports" / "summary.md").read_text()
    assert "one seeded Gumbel draw per prompt (seed 0)" in text and "dtype float32, stop at model_eos" in text
    three = parse_params({}, overrides=["eval.decision_mode=gumbel", "eval.seeds=3", "eval.seed=5"])
    from cc_core.report import decision_text

    assert decision_text(inference_settings(three, "transform")) == \
        "the mean over 3 seeded Gumbel draws per prompt (seeds 5, 6, 7)"


# --- 9. the authors' solver ----------------------------------------------------------------------------------

def _acts(tmp_path, n, num_layers=3, d=8, seed=0):
    from test_transform import write_acts

    gen = np.random.default_rng(seed)
    b = gen.normal(size=(n, num_layers, d))
    a = b @ gen.normal(size=(d, d)) + 0.3 * gen.normal(size=(n, num_layers, d))
    return write_acts(tmp_path / f"acts{n}", b, a, sizes=[n]), b.reshape(-1, d).astype(np.float32), a.reshape(-1, d).astype(np.float32)


@pytest.mark.parametrize("n", [40, 2])  # 120 rows for d=8; and 6 rows: underdetermined, the minimum-norm solution
def test_lstsq_solver_is_numpys_lstsq_on_the_stacked_rows(tmp_path, n):
    from cc_core.transform import fit_transform

    path, b, a = _acts(tmp_path, n)
    transform, report = fit_transform(FitParams(holdout_fraction=0.0, solver="lstsq"), path)
    theirs = np.linalg.lstsq(b, a, rcond=None)[0]  # get_matrix.py on their float32 .npy arrays
    np.testing.assert_allclose(transform.matrix.numpy(), theirs, rtol=1e-5, atol=1e-6)
    assert report["summary"]["solver"] == "lstsq" and transform.meta["solver"] == "lstsq"
    with pytest.warns(RuntimeWarning, match="pseudo-inverse") if n == 2 else contextlib.nullcontext():
        chol, _ = fit_transform(FitParams(holdout_fraction=0.0), path)
    np.testing.assert_allclose(chol.matrix.numpy(), theirs, rtol=1e-4, atol=1e-5)


def test_lstsq_solver_with_ridge_and_bias_equals_the_normal_equations(tmp_path):
    from cc_core.transform import fit_transform

    path, _, _ = _acts(tmp_path, 30)
    for options in ({"ridge": 2.0}, {"bias": True}, {"per_layer": True, "ridge": 0.5, "bias": True}):
        mine, _ = fit_transform(FitParams(holdout_fraction=0.0, **options), path)
        theirs, _ = fit_transform(FitParams(holdout_fraction=0.0, solver="lstsq", **options), path)
        torch.testing.assert_close(mine.matrix, theirs.matrix, rtol=1e-4, atol=1e-5)
        if options.get("bias"):
            torch.testing.assert_close(mine.bias, theirs.bias, rtol=1e-4, atol=1e-5)

