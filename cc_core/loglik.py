"""Log-likelihood scoring of the option benchmarks (XNLI, XStoryCloze, MMMLU), as lm-evaluation-harness does.

    cctune eval --method cc --benchmark xnli --choice-scoring loglik

    gen = Generator.from_dirs("models/cc", transform="transform", mode="transform")
    results = score_choice_items(gen, get_spec("xnli"), items)      # one ChoiceResult per item

No generation and no answer parsing: every option's continuation is scored by its summed
log-probability after the chat-formatted prompt, and the best option is the answer.

* ``acc``: the option with the highest summed log-likelihood.
* ``acc_norm``: the highest log-likelihood per character of the continuation (lm-eval's
  ``acc_norm`` divides by ``len(choice)``, characters); ``acc_bytes`` (per UTF-8 byte, lm-eval's
  ``acc_bytes``) is kept too. Ties go to the first option, as ``numpy.argmax`` does.

The continuation of option ``k`` is the answer as the model would write it: ``"(2) Neutral"`` /
``"(B) <option text>"``, built from :func:`cc_core.scoring.choice.parse_options` on the prompt. No
end-of-turn marker is appended (lm-eval does not score one either).

The connection applies exactly as in generation (``cc_core.generate``): the prompts of a batch
are prefilled by the Generator's own prefill for its mode (``transform``: pass 1 capture →
Transform Matrix → Decision Maker → the anchor column recomputed with the vector added;
``parallel``: the English prompt's activations; ``none``: the plain model), and every option's
tokens are then scored on that KV cache, which is repeated along the batch dimension so one
forward serves all options of all prompts in the batch (the prompt is computed once).

Tokenization (:func:`split_continuation`): the prompt ids are exactly those generation feeds
(``encode_prompt``). The continuation ids are the tokens that follow them when prompt text and
continuation are tokenized together, so a tokenizer that writes the first answer token
differently mid-text than at the start of a string (SentencePiece's leading "▁") scores what
the model would produce. If the joint tokenization does not start with the prompt ids (a BPE
merge across the boundary; never the case for a template ending in a special token or a
newline), the continuation is tokenized on its own instead, so the prompt, and with it the
anchor, stays exactly as in generation.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch

from cc_core.generation.decoding import position_ids
from cc_core.prompts import anchor_positions, pad_sequences, render_prompt
from cc_core.scoring.choice import parse_options

log = logging.getLogger(__name__)
SCORINGS = ("generate", "loglik")


class OptionsError(ValueError):
    """A choice item whose options cannot be read from its prompt."""


# --- tokenization -------------------------------------------------------------------------------------

def _ids(tokenizer, text: str) -> list[int]:
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def split_continuation(tokenizer, context: str, continuation: str, context_ids: list[int] | None = None,
                       move_space: bool = False) -> tuple[list[int], list[int]]:
    """(context ids, continuation ids) such that the continuation ids follow the context ids.

    Joint tokenization of ``context + continuation`` when it starts with the context's own ids
    (no merge across the boundary); otherwise, with ``move_space`` (lm-eval's rule, for raw
    contexts like ``"Answer: "``), the context's trailing whitespace moves into the continuation
    and the split is retried; failing that, the continuation is tokenized on its own.
    """
    if not continuation:
        raise ValueError("empty continuation: nothing to score")
    context_ids = list(context_ids) if context_ids is not None else _ids(tokenizer, context)
    whole = _ids(tokenizer, context + continuation)
    n = len(context_ids)
    if whole[:n] == context_ids and len(whole) > n:
        return context_ids, whole[n:]
    stripped = context.rstrip()
    if move_space and stripped != context and stripped:
        moved = _ids(tokenizer, stripped)
        if whole[:len(moved)] == moved and len(whole) > len(moved):
            return moved, whole[len(moved):]
    alone = _ids(tokenizer, continuation)
    if not alone:
        raise ValueError(f"continuation {continuation!r} has no tokens")
    return context_ids, alone


# --- the scorer -----------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Scored:
    """The continuations of one context: summed log-probabilities and whether each is greedy."""

    logliks: list[float]
    greedy: list[bool]
    tokens: list[int]  # continuation lengths in tokens
    chosen_layer: int | None = None  # the Decision Maker's choice (transform / parallel)


def prefill_ids(generator, ids: torch.Tensor, mask: torch.Tensor, anchor: torch.Tensor,
                langs: Sequence[str | None], english_prompts: Sequence[str | None] | None = None,
                connect: bool = True):
    """``Generator.prefill`` on already tokenized, left-padded prompts: (last logits [B, V], cache, choice).

    The same per-mode prefill generation runs (``Generator.prefill_ids``); ``connect=False`` runs the
    plain model whatever the mode (rolling log-likelihoods).
    """
    return generator.prefill_ids(ids, mask, anchor, list(langs), english_prompts, connect=connect)


def _token_logprobs(logits: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """log p(target) and whether target is the argmax, without a second [.., V] tensor."""
    logits = logits.float()
    picked = logits.gather(-1, targets.unsqueeze(-1)).squeeze(-1)
    return picked - logits.logsumexp(-1), logits.argmax(-1) == targets


class LoglikScorer:
    """Scores continuations after contexts with a :class:`cc_core.generate.Generator`'s model and mode.

        scorer = LoglikScorer(Generator.from_dirs("models/cc", transform="transform", mode="transform"))
        scored = scorer.score_ids([prompt_ids], [[option1_ids, option2_ids]], langs=["ar"])
    """

    def __init__(self, generator, batch_size: int | None = None) -> None:
        self.gen = generator
        self.batch_size = batch_size or generator.batch_size

    @torch.no_grad()
    def score_ids(self, contexts: Sequence[Sequence[int]], continuations: Sequence[Sequence[Sequence[int]]],
                  langs: Sequence[str | None] | None = None,
                  english_prompts: Sequence[str | None] | None = None, connect: bool = True,
                  anchors: Sequence[int] | None = None) -> list[Scored]:
        """One :class:`Scored` per context, in input order. Contexts are batched by length
        (``batch_size`` per forward); every batch is independent, so results do not depend on it.
        ``anchors``: each context's anchor index (default: its last token)."""
        if len(contexts) != len(continuations):
            raise ValueError(f"{len(contexts)} contexts but {len(continuations)} continuation lists")
        for index, (context, options) in enumerate(zip(contexts, continuations)):
            if not context:
                raise ValueError(f"context {index} is empty: the first continuation token needs a context token")
            if not options or any(not option for option in options):
                raise ValueError(f"context {index}: every context needs at least one non-empty continuation")
        langs = list(langs) if langs is not None else [None] * len(contexts)
        english = list(english_prompts) if english_prompts is not None else [None] * len(contexts)
        anchors = list(anchors) if anchors is not None else [len(c) - 1 for c in contexts]
        order = sorted(range(len(contexts)), key=lambda i: len(contexts[i]))
        results: list[Scored | None] = [None] * len(contexts)
        for start in range(0, len(order), self.batch_size):
            chunk = order[start:start + self.batch_size]
            scored = self._batch([contexts[i] for i in chunk], [continuations[i] for i in chunk],
                                 [langs[i] for i in chunk], [english[i] for i in chunk], connect,
                                 [anchors[i] for i in chunk])
            for index, result in zip(chunk, scored):
                results[index] = result
        return results  # type: ignore[return-value]

    def _batch(self, contexts, continuations, langs, english, connect, anchors) -> list[Scored]:
        gen = self.gen
        ids, mask = pad_sequences([list(c) for c in contexts], gen.pad_id, "left")
        anchor = anchor_positions([len(c) for c in contexts], ids.shape[1], "left", anchors)
        ids, mask, anchor = ids.to(gen.device), mask.to(gen.device), anchor.to(gen.device)
        logits, cache, choice = prefill_ids(gen, ids, mask, anchor, langs, english, connect)
        rows = [p for p, options in enumerate(continuations) for _ in options]
        flat = [list(option) for options in continuations for option in options]
        row_index = torch.tensor(rows, device=gen.device)
        first = torch.tensor([option[0] for option in flat], device=gen.device)
        total, greedy = _token_logprobs(logits[row_index], first)
        if max(len(option) for option in flat) > 1:
            rest_lp, rest_greedy = self._rest(cache, mask, row_index, flat)
            total, greedy = total + rest_lp, greedy & rest_greedy
        out, k = [], 0
        for p, options in enumerate(continuations):
            n = len(options)
            layer = int(choice[p].argmax()) if choice is not None and choice[p].sum() > 0 else None
            out.append(Scored(total[k:k + n].tolist(), greedy[k:k + n].tolist(), [len(o) for o in options], layer))
            k += n
        return out

    def _rest(self, cache, mask, row_index, flat):
        """Tokens 2.. of every continuation in one forward on the prompt cache, repeated per option."""
        gen = self.gen
        if cache is None:
            raise RuntimeError("the prefill returned no KV cache; loglik scoring needs one")
        cache.reorder_cache(row_index)  # [P, ...] → [N, ...]: row r holds its prompt's keys/values
        inputs, input_mask = pad_sequences([option[:-1] for option in flat], gen.pad_id, "right")
        targets, _ = pad_sequences([option[1:] for option in flat], gen.pad_id, "right")
        inputs, input_mask, targets = inputs.to(gen.device), input_mask.to(gen.device), targets.to(gen.device)
        full_mask = torch.cat([mask[row_index], input_mask], dim=1)
        positions = position_ids(full_mask)[:, -inputs.shape[1]:]
        out = gen.model(input_ids=inputs, attention_mask=full_mask, cache=cache, use_cache=True,
                        position_ids=positions)
        lp, hit = _token_logprobs(out.logits, targets)
        real = input_mask.bool()  # right padding: ignore the pad columns
        return (lp * real).sum(-1), (hit | ~real).all(-1)


# --- the choice benchmarks ------------------------------------------------------------------------------

@dataclass
class ChoiceResult:
    """One item: its options, their log-likelihoods, and the choices acc / acc_norm / acc_bytes make."""

    labels: list[str]
    continuations: list[str]
    logliks: list[float]
    tokens: list[int]
    chosen: str  # acc
    chosen_norm: str  # acc_norm: per character
    chosen_bytes: str  # acc_bytes: per UTF-8 byte
    chosen_layer: int | None = None
    prompt_truncated: bool = False
    extra: dict = field(default_factory=dict)


def option_continuations(spec, item) -> tuple[list[str], list[str]]:
    """(labels, continuations "(label) text") of a choice item; a clear error if any option is missing."""
    options = parse_options(item.prompt, spec.labels)
    missing = [label for label in spec.labels if not options.get(label, "").strip()]
    if missing:
        raise OptionsError(f"{spec.name} {item.lang} item {item.id}: option(s) {', '.join(missing)} not found in "
                           f"the prompt (expected lines like '({spec.labels[0]}) <text>' for each of "
                           f"{', '.join(spec.labels)})")
    labels = list(spec.labels)
    return labels, [f"({label}) {options[label]}" for label in labels]


def pick(logliks: Sequence[float], lengths: Sequence[float]) -> int:
    """Index of the best ``loglik / length`` (first on ties, like numpy.argmax)."""
    values = [ll / length for ll, length in zip(logliks, lengths)]
    return max(range(len(values)), key=lambda i: (values[i], -i))


def choose(labels: list[str], continuations: list[str], logliks: list[float]) -> tuple[str, str, str]:
    """(acc choice, acc_norm choice, acc_bytes choice) labels."""
    ones = [1.0] * len(logliks)
    chars = [float(len(c)) for c in continuations]
    utf8 = [float(len(c.encode("utf-8"))) for c in continuations]
    return labels[pick(logliks, ones)], labels[pick(logliks, chars)], labels[pick(logliks, utf8)]


def score_choice_items(generator, spec, items, batch_size: int | None = None) -> list[ChoiceResult]:
    """Score every option of every item (one forward per batch of items, options included)."""
    if spec.kind != "choice":
        raise ValueError(f"{spec.name} is not an option-choice benchmark: loglik scoring needs options")
    prompt_ids, option_ids, truncated, labelled, anchors = [], [], [], [], []
    prefix = len(getattr(generator, "prompt_prefix", []))  # the tokenizer's own specials (eval.add_special_tokens)
    for item in items:
        labels, continuations = option_continuations(spec, item)
        encoded = generator.encode_prompt(item.prompt)
        templated = encoded.input_ids[prefix:]  # what the template rendered
        # The prompt text the ids came from; a cut prompt is decoded (the split checks the round trip).
        text = (generator.tokenizer.decode(templated, skip_special_tokens=False) if encoded.truncated
                else render_prompt(generator.tokenizer, item.prompt))
        ids = [split_continuation(generator.tokenizer, text, c, templated)[1] for c in continuations]
        prompt_ids.append(encoded.input_ids)
        anchors.append(encoded.anchor)
        option_ids.append(ids)
        truncated.append(encoded.truncated)
        labelled.append((labels, continuations))
    scored = LoglikScorer(generator, batch_size).score_ids(prompt_ids, option_ids, [i.lang for i in items],
                                                           [i.prompt_en for i in items], anchors=anchors)
    results = []
    for (labels, continuations), result, cut in zip(labelled, scored, truncated):
        acc, norm, per_byte = choose(labels, continuations, result.logliks)
        results.append(ChoiceResult(labels, continuations, result.logliks, result.tokens, acc, norm, per_byte,
                                    result.chosen_layer, cut))
    return results
