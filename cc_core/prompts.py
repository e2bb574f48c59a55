"""Chat-formatting and the anchor position (docs/method.md, Notation).

The anchor p is the last token of the chat-formatted prompt, i.e. the token right before
the first response token. It is computed by tokenizing the prompt rendered with the
tokenizer's own chat template (with the generation prompt), never from hard-coded token
ids, so any chat model works:

    encoded = encode_prompt(tokenizer, "Was ist die Hauptstadt von Kenia?")
    encoded.anchor == len(encoded.input_ids) - 1          # before padding

``model.anchor: authors`` places it as the authors' ``tag_locate.py`` did, per template
(``anchor_rule(tokenizer, "authors")``): Llama-3 one past the 2nd ``<|end_header_id|>`` (the
last prompt token), Mistral one before the first ``[/INST]``, Qwen2 one past the 3rd
``<|im_start|>`` (the ``assistant`` token). ``add_special_tokens=True`` tokenizes the rendered
prompt as their ``tokenizer(prompt)`` call did: the tokenizer's own BOS goes before the
template's (two BOS tokens for Llama-3 and Mistral).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch


class ChatTemplateError(ValueError):
    """The tokenizer has no chat template and none was given in params (model.chat_template)."""


# Named templates for ``model.chat_template``. ``llama3-lf`` is LLaMA-Factory's ``llama3`` template,
# which the CC-Tuning authors trained and evaluated with: BOS, then user/assistant turns with
# Llama-3's header tokens, no system turn unless one is given. Llama-3.1's own tokenizer template
# differs: it always inserts a "Cutting Knowledge Date ... Today Date ..." system block.
NAMED_TEMPLATES: dict[str, str] = {
    "llama3-lf": (
        "{{ bos_token }}"
        "{% for message in messages %}"
        "<|start_header_id|>{{ message['role'] }}<|end_header_id|>\n\n{{ message['content'] }}<|eot_id|>"
        "{% endfor %}"
        "{% if add_generation_prompt %}<|start_header_id|>assistant<|end_header_id|>\n\n{% endif %}"
    ),
}


def _looks_like_name(value: str) -> bool:
    return "/" not in value and "\\" not in value and "." not in value


def set_chat_template(tokenizer, template: str | None) -> None:
    """Install ``template`` (a name from NAMED_TEMPLATES, a Jinja string, or a path to a .jinja file)
    or check that the tokenizer has one."""
    if template:
        # A template string has Jinja tags; a known name is a named template; anything else a path.
        if template in NAMED_TEMPLATES:
            template = NAMED_TEMPLATES[template]
        elif "{{" not in template and "{%" not in template:
            path = Path(template).expanduser()
            if not path.is_file():
                if _looks_like_name(template):
                    raise ChatTemplateError(f"model.chat_template: unknown template name {template!r}; valid: "
                                            f"{', '.join(NAMED_TEMPLATES)} (or a Jinja string, or a .jinja file)")
                raise ChatTemplateError(f"model.chat_template: file not found: {path} "
                                        "(a template string must contain '{{' or '{%')")
            template = path.read_text(encoding="utf-8")
        tokenizer.chat_template = template
    if not getattr(tokenizer, "chat_template", None):
        raise ChatTemplateError(
            "the tokenizer has no chat template; set model.chat_template in params.yaml "
            "to a Jinja template string or a .jinja file"
        )


def render_prompt(tokenizer, instruction: str) -> str:
    """The user turn rendered with the model's template, ending with the generation prompt."""
    if not getattr(tokenizer, "chat_template", None):
        set_chat_template(tokenizer, None)  # raises the clear error
    return tokenizer.apply_chat_template(
        [{"role": "user", "content": instruction}], tokenize=False, add_generation_prompt=True
    )


def render_response(tokenizer, instruction: str, response: str, prompt_text: str | None = None) -> str:
    """The text the template appends after the generation prompt for ``response``.

    Includes the template's own end-of-turn marker (``<|im_end|>``, ``<|eot_id|>``...), so the
    model learns to stop. Falls back to ``response + eos`` for templates whose full render
    does not extend the prompt render.
    """
    prompt_text = prompt_text if prompt_text is not None else render_prompt(tokenizer, instruction)
    full = tokenizer.apply_chat_template(
        [{"role": "user", "content": instruction}, {"role": "assistant", "content": response}],
        tokenize=False,
    )
    if full.startswith(prompt_text) and len(full) > len(prompt_text):
        return full[len(prompt_text):]
    return response + (tokenizer.eos_token or "")


def end_of_turn_ids(tokenizer) -> list[int]:
    """The special token(s) that end an assistant turn under the tokenizer's template (``<|eot_id|>``,
    ``<|im_end|>``...): generation must stop there even when the model's EOS is another token
    (Llama-3.1 base: EOS <|end_of_text|>, but the llama3 template ends turns with <|eot_id|>)."""
    if not getattr(tokenizer, "chat_template", None):
        return []
    marker = "\x00RESPONSE\x00"
    try:
        suffix = render_response(tokenizer, "x", marker)
    except Exception:  # noqa: BLE001 - a template that cannot render a reply has no end-of-turn to learn
        return []
    if marker not in suffix:
        return []
    tail = suffix.split(marker, 1)[1]
    ids = _ids(tokenizer, tail)[:1] if tail.strip() else []
    special = set(getattr(tokenizer, "all_special_ids", []) or [])
    added = {i for i in getattr(tokenizer, "added_tokens_decoder", {})}
    return [i for i in ids if i in special or i in added]


def _ids(tokenizer, text: str) -> list[int]:
    # The template already contains BOS/EOS where the model wants them.
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def special_prefix(tokenizer) -> list[int]:
    """The tokens ``tokenizer(text)`` puts before a text by itself (``add_special_tokens=True``): Llama-3's
    and Mistral's BOS, nothing for Qwen2 or SmolLM2. The authors tokenized their rendered prompts so,
    on top of the template's own BOS. A tokenizer that also appends tokens is refused (the anchor
    is the prompt's end)."""
    probe = "a"
    plain = _ids(tokenizer, probe)
    full = tokenizer(probe, add_special_tokens=True)["input_ids"]
    if len(full) < len(plain) or full[len(full) - len(plain):] != plain:
        raise ValueError("add_special_tokens: this tokenizer appends special tokens after the text; only "
                         "tokenizers that prepend them (a BOS) are supported")
    return full[: len(full) - len(plain)]


ANCHORS = ("last_prompt_token", "authors")
# The authors' anchors (LLaMA_Factory/train_utils/tag_locate.py): (marker token, its occurrence, offset). Their
# code selects by template name and hard-codes the ids (128007, 4, 151644); the marker tokens name them here.
AUTHORS_MARKERS = (("<|end_header_id|>", 2, 1),  # llama3: one past the 2nd end-of-header, the last prompt token
                   ("[/INST]", 1, -1),  # mistral: one before the first [/INST]
                   ("<|im_start|>", 3, 1))  # qwen2: one past the 3rd <|im_start|>, the "assistant" token


@dataclass(frozen=True)
class AnchorRule:
    """Where the anchor sits in a tokenized sequence: the last prompt token (no marker), or the token
    ``offset`` away from the ``occurrence``-th ``marker`` token (the authors' rules)."""

    marker: int | None = None
    occurrence: int = 1
    offset: int = 0
    name: str = "last_prompt_token"

    def locate(self, ids: list[int], prompt_len: int | None = None) -> int:
        """The anchor's index in ``ids`` (a prompt, or prompt + response with ``prompt_len``); -1 where the
        marker does not occur often enough (their "no match": the last column of the batch)."""
        if self.marker is None:
            return (len(ids) if prompt_len is None else prompt_len) - 1
        seen = [i for i, token in enumerate(ids) if token == self.marker]
        if len(seen) < self.occurrence:
            return -1
        index = seen[self.occurrence - 1] + self.offset
        return index if 0 <= index < len(ids) else -1


def anchor_rule(tokenizer, anchor: str = "last_prompt_token") -> AnchorRule:
    """``model.anchor``: ``last_prompt_token`` (any template) | ``authors``: their rule for the template the
    tokenizer renders (the first of Llama-3's, Mistral's, Qwen2's marker tokens found in its generation prompt)."""
    if anchor == "last_prompt_token":
        return AnchorRule()
    if anchor != "authors":
        raise ValueError(f"model.anchor={anchor!r}; valid: {', '.join(ANCHORS)}")
    probe = _ids(tokenizer, render_prompt(tokenizer, "x"))
    for token, occurrence, offset in AUTHORS_MARKERS:
        marker = tokenizer.convert_tokens_to_ids(token)
        if isinstance(marker, int) and marker in probe and marker != getattr(tokenizer, "unk_token_id", None):
            return AnchorRule(marker, occurrence, offset, f"authors:{token}")
    raise ValueError("model.anchor=authors: the chat template has none of the authors' marker tokens "
                     f"({', '.join(t for t, _, _ in AUTHORS_MARKERS)}: Llama-3, Mistral, Qwen2); "
                     "use model.anchor=last_prompt_token")


@dataclass(frozen=True)
class EncodedPrompt:
    input_ids: list[int]
    truncated: bool  # the user text was cut from the left to fit max_len
    anchor: int = -1  # the anchor's index; -1: the last token (resolved here)

    def __post_init__(self) -> None:
        if self.anchor < 0:
            object.__setattr__(self, "anchor", len(self.input_ids) - 1)


def encode_prompt(tokenizer, instruction: str, max_len: int | None = None, add_special_tokens: bool = False,
                  rule: AnchorRule | None = None) -> EncodedPrompt:
    """Tokenize chat(instruction); if it is longer than ``max_len``, cut the user text from the left.

    The chat template is always kept, and so is the user text's first line when it is short
    (at most a quarter of the room): that is where benchmark prompts put their instruction
    ("Please summarise the following in one sentence.", "Please answer ... based on the
    given context."). The cut then falls on the start of the passage, so the question and
    options at the end survive too. ``add_special_tokens``: the tokenizer's own specials go in
    front (``special_prefix``), as the authors' ``tokenizer(prompt)``. ``rule``: where the anchor
    is (default: the last token; a rule's "no match" is the last token too, the last column of the
    authors' one-prompt batches).
    """
    prefix = special_prefix(tokenizer) if add_special_tokens else []
    encoded = _encode_prompt(tokenizer, instruction, None if max_len is None else max_len - len(prefix))
    ids = prefix + encoded.input_ids
    return EncodedPrompt(ids, encoded.truncated, (rule or AnchorRule()).locate(ids))


def _encode_prompt(tokenizer, instruction: str, max_len: int | None) -> EncodedPrompt:
    ids = _ids(tokenizer, render_prompt(tokenizer, instruction))
    if max_len is None or len(ids) <= max_len:
        return EncodedPrompt(ids, False)
    text_ids = _ids(tokenizer, instruction)
    overhead = len(ids) - len(text_ids)
    budget = max_len - overhead - 1
    if budget <= 0:
        raise ValueError(f"max_len={max_len} is shorter than the chat template itself ({overhead} tokens)")
    head, _, body = instruction.partition("\n")
    head_ids = _ids(tokenizer, head + "\n") if body else []
    if not body or len(head_ids) > budget // 4:
        head, head_ids = "", []
    else:
        head += "\n"
        text_ids = _ids(tokenizer, body)
    room = budget - len(head_ids)
    while room > 0:
        shortened = head + tokenizer.decode(text_ids[-room:], skip_special_tokens=True)
        ids = _ids(tokenizer, render_prompt(tokenizer, shortened))
        if len(ids) <= max_len:
            return EncodedPrompt(ids, True)
        room -= max(1, len(ids) - max_len)
    raise ValueError(f"cannot fit the prompt into max_len={max_len}")


@dataclass(frozen=True)
class EncodedExample:
    input_ids: list[int]
    labels: list[int]  # -100 on prompt tokens
    anchor: int  # index of the anchor (the last prompt token by default); -1: no anchor found
    response_truncated: bool
    prompt_truncated: bool = False  # the prompt was cut from the right (train.truncation: llama_factory)


def encode_pair(tokenizer, instruction: str, response: str) -> tuple[list[int], list[int]]:
    """(prompt ids, response ids) of one training example: chat(instruction) with the generation
    prompt, and what the template appends for the response (its end-of-turn marker included)."""
    prompt_text = render_prompt(tokenizer, instruction)
    return _ids(tokenizer, prompt_text), _ids(tokenizer, render_response(tokenizer, instruction, response, prompt_text))


def encode_example(tokenizer, instruction: str, response: str, cutoff_len: int,
                   rule: AnchorRule | None = None) -> EncodedExample | None:
    """chat(instruction) + response, labels masked on the prompt; None if no response token fits.

    Truncation keeps the whole prompt (so the anchor stays inside) and cuts the response.
    """
    prompt_ids, response_ids = encode_pair(tokenizer, instruction, response)
    room = cutoff_len - len(prompt_ids)
    if room <= 0 or not response_ids:
        return None
    kept = response_ids[:room]
    return EncodedExample(
        input_ids=prompt_ids + kept,
        labels=[-100] * len(prompt_ids) + kept,
        anchor=(rule or AnchorRule()).locate(prompt_ids + kept, len(prompt_ids)),
        response_truncated=len(kept) < len(response_ids),
    )


def pad_sequences(
    seqs: list[list[int]], pad_value: int, side: str = "right"
) -> tuple[torch.Tensor, torch.Tensor]:
    """Pad to a batch; returns (tensor [B, T], attention_mask [B, T])."""
    if side not in ("left", "right"):
        raise ValueError(f"padding side must be 'left' or 'right', not {side!r}")
    width = max(len(s) for s in seqs)
    out = torch.full((len(seqs), width), pad_value, dtype=torch.long)
    mask = torch.zeros((len(seqs), width), dtype=torch.long)
    for row, seq in enumerate(seqs):
        if side == "right":
            out[row, : len(seq)] = torch.tensor(seq, dtype=torch.long)
            mask[row, : len(seq)] = 1
        else:
            out[row, width - len(seq):] = torch.tensor(seq, dtype=torch.long)
            mask[row, width - len(seq):] = 1
    return out, mask


def anchor_positions(prompt_lengths: list[int] | torch.Tensor, width: int, side: str,
                     anchors: list[int] | None = None) -> torch.Tensor:
    """Anchor column per example after padding to ``width`` (right: len-1; left: width-1). ``anchors``:
    each prompt's own anchor index (default: its last token)."""
    lengths = torch.as_tensor(prompt_lengths, dtype=torch.long)
    index = lengths - 1 if anchors is None else torch.as_tensor(anchors, dtype=torch.long)
    if side == "right":
        return index
    if side == "left":
        return width - lengths + index
    raise ValueError(f"padding side must be 'left' or 'right', not {side!r}")


def pad_token_id(tokenizer) -> int:
    """The pad id, falling back to EOS for tokenizers (like many base models') that have none."""
    if tokenizer.pad_token_id is not None:
        return tokenizer.pad_token_id
    if tokenizer.eos_token_id is not None:
        return tokenizer.eos_token_id
    return 0
