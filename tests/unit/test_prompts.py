import copy

import pytest
import torch

from cc_core.prompts import (
    ChatTemplateError, anchor_positions, encode_example, encode_prompt, pad_sequences, render_prompt,
    set_chat_template,
)

LLAMA3_TEMPLATE = (
    "{{- bos_token }}{% for message in messages %}{{ '<|start_header_id|>' + message['role'] + "
    "'<|end_header_id|>\\n\\n' + message['content'] | trim + '<|eot_id|>' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}{% endif %}"
)
QWEN2_TEMPLATE = (
    "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\\nYou are a helpful assistant.<|im_end|>\\n' }}{% endif %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)
GENERATION_PROMPT_END = {"smollm2": "assistant\n", "llama3": "<|end_header_id|>\n\n", "qwen2": "assistant\n"}

EXAMPLES = [("Quelle est la capitale du Kenya ?", "Nairobi."),
            ("日本の首都はどこですか？", "東京です。"),
            ("ما هي عاصمة مصر؟ أجب بكلمة واحدة من فضلك.", "القاهرة")]


@pytest.fixture(params=["smollm2", "llama3", "qwen2"])
def templated(request, smol_tokenizer):
    tokenizer = copy.deepcopy(smol_tokenizer)
    if request.param == "llama3":
        set_chat_template(tokenizer, LLAMA3_TEMPLATE)
    elif request.param == "qwen2":
        set_chat_template(tokenizer, QWEN2_TEMPLATE)
    return request.param, tokenizer


def test_prompt_ends_with_generation_prompt(templated):
    name, tokenizer = templated
    text = render_prompt(tokenizer, "Hallo")
    assert text.endswith(GENERATION_PROMPT_END[name])
    ids = encode_prompt(tokenizer, "Hallo").input_ids
    assert tokenizer.decode(ids).endswith(GENERATION_PROMPT_END[name])


def test_example_anchor_is_last_prompt_token(templated):
    name, tokenizer = templated
    for instruction, response in EXAMPLES:
        prompt = encode_prompt(tokenizer, instruction).input_ids
        ex = encode_example(tokenizer, instruction, response, cutoff_len=512)
        assert ex.anchor == len(prompt) - 1
        assert ex.input_ids[: ex.anchor + 1] == prompt
        assert all(label == -100 for label in ex.labels[: ex.anchor + 1])
        assert ex.labels[ex.anchor + 1] == ex.input_ids[ex.anchor + 1]  # first response token is trained
        assert response in tokenizer.decode(ex.input_ids[ex.anchor + 1:])


@pytest.mark.parametrize("side", ["right", "left"])
def test_anchor_under_padding(templated, side):
    name, tokenizer = templated
    prompts = [encode_prompt(tokenizer, instruction).input_ids for instruction, _ in EXAMPLES]
    ids, mask = pad_sequences(prompts, tokenizer.pad_token_id, side)
    anchor = anchor_positions([len(p) for p in prompts], ids.shape[1], side)
    for row, prompt in enumerate(prompts):
        assert ids[row, anchor[row]].item() == prompt[-1]
        assert mask[row, anchor[row]].item() == 1
        # the anchor is the last real token: nothing real after it in a prompt-only batch
        assert mask[row, anchor[row] + 1:].sum().item() == 0
    assert torch.equal(mask.sum(1), torch.tensor([len(p) for p in prompts]))


def test_truncation_keeps_anchor_and_drops_empty_responses(smol_tokenizer):
    instruction, response = "Fasse zusammen: " + "Das Wetter ist schön. " * 20, "Schönes Wetter. " * 10
    prompt_len = len(encode_prompt(smol_tokenizer, instruction).input_ids)
    ex = encode_example(smol_tokenizer, instruction, response, cutoff_len=prompt_len + 3)
    assert ex.response_truncated and len(ex.input_ids) == prompt_len + 3 and ex.anchor == prompt_len - 1
    assert encode_example(smol_tokenizer, instruction, response, cutoff_len=prompt_len) is None


def test_long_prompt_is_cut_from_the_left_keeping_the_template(smol_tokenizer):
    text = "Wort " * 400 + "Ende der Frage"
    full = encode_prompt(smol_tokenizer, text)
    assert not full.truncated
    cut = encode_prompt(smol_tokenizer, text, max_len=64)
    assert cut.truncated and len(cut.input_ids) <= 64
    decoded = smol_tokenizer.decode(cut.input_ids)
    assert decoded.startswith("<|im_start|>system") and decoded.endswith("Ende der Frage<|im_end|>\n<|im_start|>assistant\n")


def test_long_prompt_keeps_its_instruction_line(smol_tokenizer):
    # XLSum puts the instruction first: the cut falls on the passage, not on the instruction
    instruction = "Veuillez résumer le contenu suivant en une phrase."
    text = instruction + "\n" + " ".join(f"mot{i}" for i in range(600)) + " fin de l'article"
    cut = encode_prompt(smol_tokenizer, text, max_len=128)
    assert cut.truncated and len(cut.input_ids) <= 128
    user = smol_tokenizer.decode(cut.input_ids).split("<|im_start|>user\n")[1]
    assert user.startswith(instruction + "\n") and "fin de l'article<|im_end|>" in user
    assert "mot0 " not in user  # the passage's start is what was cut
    # a first line longer than a quarter of the room is passage, not instruction: plain left cut
    long_first = " ".join(f"mot{i}" for i in range(600)) + "\nQuestion?"
    cut = encode_prompt(smol_tokenizer, long_first, max_len=128)
    assert smol_tokenizer.decode(cut.input_ids).endswith("Question?<|im_end|>\n<|im_start|>assistant\n")


def test_missing_template_is_a_clear_error(smol_tokenizer):
    tokenizer = copy.deepcopy(smol_tokenizer)
    tokenizer.chat_template = None
    with pytest.raises(ChatTemplateError, match="model.chat_template"):
        render_prompt(tokenizer, "hi")
    set_chat_template(tokenizer, QWEN2_TEMPLATE)
    assert render_prompt(tokenizer, "hi").endswith("<|im_start|>assistant\n")


def test_template_from_file(tmp_path, smol_tokenizer):
    tokenizer = copy.deepcopy(smol_tokenizer)
    path = tmp_path / "t.jinja"
    path.write_text(LLAMA3_TEMPLATE)
    set_chat_template(tokenizer, str(path))
    assert render_prompt(tokenizer, "x").endswith("<|end_header_id|>\n\n")
    with pytest.raises(ChatTemplateError, match="file not found"):
        set_chat_template(tokenizer, str(tmp_path / "missing.jinja"))
    # any suffix is a file, and a path that does not exist is never installed as the template text
    other = tmp_path / "llama3.jinja2"
    other.write_text(LLAMA3_TEMPLATE)
    set_chat_template(tokenizer, str(other))
    assert render_prompt(tokenizer, "x").endswith("<|end_header_id|>\n\n")
    with pytest.raises(ChatTemplateError, match="file not found"):
        set_chat_template(tokenizer, "templates/missing.tmpl")


LLAMA3_SPECIALS = ["<|begin_of_text|>", "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>", "<|end_of_text|>"]


@pytest.fixture
def llama3_style(smol_tokenizer):
    """SmolLM2's BPE with Llama-3's special tokens added (no Llama-3 tokenizer ships offline); the
    template's structure is what is tested: specials split the text, so every piece is encoded alone."""
    tok = copy.deepcopy(smol_tokenizer)
    tok.add_special_tokens({"additional_special_tokens": LLAMA3_SPECIALS})
    tok.bos_token, tok.eos_token = "<|begin_of_text|>", "<|end_of_text|>"
    from cc_core.prompts import set_chat_template

    set_chat_template(tok, "llama3-lf")
    return tok


def test_llama3_lf_prompt_is_the_authors_token_sequence(llama3_style):
    from cc_core.prompts import encode_example, encode_prompt, render_prompt

    tok = llama3_style
    content = "Quelle est la capitale du Kenya ?"
    special = {name: tok.convert_tokens_to_ids(name) for name in LLAMA3_SPECIALS}

    def piece(text):
        return tok(text, add_special_tokens=False)["input_ids"]

    # LLaMA-Factory's llama3 template, as the authors' Inference/inference_matrix.py writes it out
    assert render_prompt(tok, content) == ("<|begin_of_text|><|start_header_id|>user<|end_header_id|>\n\n"
                                           f"{content}<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n")
    expected = ([special["<|begin_of_text|>"], special["<|start_header_id|>"]] + piece("user")
                + [special["<|end_header_id|>"]] + piece("\n\n" + content) + [special["<|eot_id|>"]]
                + [special["<|start_header_id|>"]] + piece("assistant") + [special["<|end_header_id|>"]]
                + piece("\n\n"))
    encoded = encode_prompt(tok, content)
    assert encoded.input_ids == expected
    assert encoded.anchor == len(expected) - 1  # the anchor: the "\n\n" after the assistant header
    assert "Cutting Knowledge" not in render_prompt(tok, content)  # no Llama-3.1 system block
    # training: the response ends with <|eot_id|>, which the model learns to emit (and generation stops at)
    example = encode_example(tok, content, "Nairobi.", 256)
    assert example.input_ids[: len(expected)] == expected
    assert example.input_ids[len(expected):] == piece("Nairobi.") + [special["<|eot_id|>"]]
    from cc_core.prompts import end_of_turn_ids

    assert end_of_turn_ids(tok) == [special["<|eot_id|>"]]


def test_unknown_template_name_lists_the_valid_ones(smol_tokenizer):
    from cc_core.prompts import ChatTemplateError, set_chat_template

    tok = copy.deepcopy(smol_tokenizer)
    with pytest.raises(ChatTemplateError, match=r"unknown template name 'llama3-lff'; valid: llama3-lf"):
        set_chat_template(tok, "llama3-lff")
    with pytest.raises(ChatTemplateError, match="file not found"):
        set_chat_template(tok, "templates/missing.jinja")
