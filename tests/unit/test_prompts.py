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
