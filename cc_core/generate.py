"""Batched greedy generation with or without the connection (docs/method.md, Inference).

    gen = Generator.from_dirs("models/cc", transform="transform", mode="transform")
    outputs = gen.generate(["Quelle est la capitale du Kenya ?"], langs=["fr"])

Modes: ``none`` (the plain model), ``transform`` (the method: the CC prefill with the Transform
Matrix), ``parallel`` (oracle: the real parallel English prompt's activations). The ``Generator``
puts four pieces together:

- loading: ``cc_core.modeling.loading.load_for_inference`` (model, Decision Maker, Transform Matrix,
  each checked against the checkpoint);
- batch planning: ``cc_core.generation.batching`` (batches are left-padded, so every prompt's anchor
  is the last column; prompts sorted by length, batch sizes that pad least; ``batch_size="auto"``);
- the CC prefill: ``cc_core.generation.prefill``;
- the decoding loop and its KV caches (``cache="static"``, ``compile=True``):
  ``cc_core.generation.decoding``. Static and dynamic caches, compiled or not, give the same tokens
  under greedy decoding (tested).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

import torch

from cc_core.generation.batching import (AUTO_BATCH_CPU, AUTO_PROBE_ROWS, batch_from_memory, free_accelerator_memory,
                                         plan_batches, probe_memory)
from cc_core.generation.decoding import STOPS, Decoder, eos_ids, model_eos_ids, new_token_count
from cc_core.generation.prefill import parallel_prefill, select_layer, transform_prefill
from cc_core.modeling.loading import load_for_inference
from cc_core.modeling.transform_matrix import TransformShapeError
from cc_core.prompts import (AnchorRule, EncodedPrompt, anchor_positions, anchor_rule, encode_prompt, pad_sequences,
                             pad_token_id, special_prefix)

log = logging.getLogger(__name__)
MODES = ("none", "transform", "parallel")


class GenerationStopped(RuntimeError):
    """``Generator.should_stop`` said stop (e.g. a serving deadline passed); nothing is returned."""


class PromptTooLongError(ValueError):
    """A prompt does not fit the model's context and truncation is not allowed (eval.on_long_prompt=error)."""


@dataclass
class Generation:
    text: str
    new_tokens: int
    prompt_truncated: bool
    chosen_layer: int | None = None  # the Decision Maker's choice (transform / parallel)
    mode: str = "none"
    token_ids: list[int] = field(default_factory=list, repr=False)  # the new tokens, up to the first EOS


def _check_batch_size(value) -> None:
    if not (value == "auto" or (isinstance(value, int) and value >= 1)):
        raise ValueError(f"batch_size={value!r}; valid: a positive integer or 'auto'")


class Generator:
    def __init__(self, model, tokenizer, cc=None, transform=None, mode: str = "none", decision_mode: str = "argmax",
                 max_new_tokens: int = 40, batch_size: int | str = 8, max_prompt_len: int | None = 1024,
                 reuse_cache: bool = True, seed: int = 0, on_long_prompt: str = "truncate",
                 cache: str = "dynamic", compile: bool = False, compile_mode: str | None = None,
                 compile_backend: str = "inductor", stop: str = "end_of_turn", add_special_tokens: bool = False,
                 anchor: str = "last_prompt_token") -> None:
        """``max_prompt_len`` None: the model's context (minus ``max_new_tokens``). ``on_long_prompt``:
        ``truncate`` (cut the user text from the left, counted) | ``error`` (the paper never truncates).
        ``seed``: the Gumbel noise of ``decision_mode="gumbel"`` (the reference samples at inference);
        each prompt draws its own noise from (seed, prompt), so results do not depend on batching.
        ``batch_size``: prompts per batch, or ``"auto"`` (``auto_batch_size``). ``cache``: ``static`` |
        ``dynamic`` (transformers' default, grown by concatenation). ``compile``: torch.compile the
        decoding step (static cache only); ``compile_mode`` None: ``reduce-overhead`` on CUDA, else
        ``default``; ``compile_backend``: ``inductor``, or e.g. ``aot_eager`` (no code generation).
        ``stop``: ``end_of_turn`` (the model's EOS, the tokenizer's and the template's end of turn; the text
        stripped) | ``model_eos`` (only ``model.config.eos_token_id``, the text as decoded: the authors'
        loop). ``add_special_tokens``: the tokenizer's own specials before each prompt (the authors: a
        second BOS). ``anchor``: ``last_prompt_token`` | ``authors`` (``cc_core.prompts.anchor_rule``)."""
        if mode not in MODES:
            raise ValueError(f"unknown generation mode {mode!r}; valid: {', '.join(MODES)}")
        self.decoder = Decoder(model, cache, compile, compile_mode, compile_backend)  # checks cache and compile
        # Optional: called before every batch and every decoding step; True raises GenerationStopped.
        self.should_stop = None
        _check_batch_size(batch_size)
        if mode != "none" and cc is None:
            raise ValueError(f"mode {mode!r} needs a CC checkpoint (cc_tuning.json + decision_maker.safetensors)")
        if mode == "transform" and transform is None:
            raise ValueError("mode 'transform' needs a Transform Matrix (run `cctune fit`)")
        if on_long_prompt not in ("truncate", "error"):
            raise ValueError(f"on_long_prompt={on_long_prompt!r}; valid: truncate, error")
        if stop not in STOPS:
            raise ValueError(f"stop={stop!r}; valid: {', '.join(STOPS)}")
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.cc = cc
        self.transform = transform
        self.mode = mode
        self.decision_mode = decision_mode
        self.max_new_tokens = max_new_tokens
        self.batch_size_setting = batch_size  # an int, or "auto"
        self._auto_batch: dict[int, int] = {}  # batch_size="auto": prompt width -> batch size
        # The prompt and the generated tokens must fit the model's context together.
        context = getattr(model.config.get_text_config(), "max_position_embeddings", None)
        room = context - max_new_tokens if context else None
        limits = [x for x in (max_prompt_len, room) if x is not None]
        self.max_prompt_len = min(limits) if limits else None
        self.on_long_prompt = on_long_prompt
        self.seed = seed
        self.reuse_cache = reuse_cache
        self.pad_id = pad_token_id(tokenizer)
        self.stop = stop
        self.eos_ids = eos_ids(model, tokenizer) if stop == "end_of_turn" else model_eos_ids(model)
        self.add_special_tokens = add_special_tokens
        self.prompt_prefix = special_prefix(tokenizer) if add_special_tokens else []
        # the plain model has no anchor: an anchor rule the template does not support must not stop it
        self.rule = anchor_rule(tokenizer, anchor) if mode != "none" else AnchorRule()
        self.lineage: dict[str, str] = {}  # checkpoint (and Transform Matrix) hashes, set by from_dirs
        if transform is not None and cc is not None and transform.hidden_size != cc.decision_maker.proj.in_features:
            raise TransformShapeError(f"Transform Matrix is for d={transform.hidden_size}, the model has "
                                      f"d={cc.decision_maker.proj.in_features}")

    @classmethod
    def from_dirs(cls, model_dir: str | Path, transform: str | Path | None = None, mode: str = "none",
                  device: str = "cpu", dtype: torch.dtype | None = None, base_dir: str | Path | None = None,
                  merge_adapter: bool = True, **kwargs):
        """Load a model directory (CC checkpoint or plain HF; either may be LoRA adapters on ``base_dir``,
        default the base they record, merged unless ``merge_adapter`` is false) and, for ``transform``,
        the matrix. On a GPU the default dtype is bfloat16, on a CPU float32."""
        loaded = load_for_inference(model_dir, transform, with_transform=mode == "transform", device=device,
                                    dtype=dtype, base_dir=base_dir, merge_adapter=merge_adapter)
        generator = cls(loaded.model, loaded.tokenizer, loaded.cc, loaded.transform, mode, **kwargs)
        generator.lineage = loaded.lineage
        return generator

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def batch_size(self) -> int:
        """Prompts per batch as an int; for ``"auto"``, the batch that fits the longest allowed prompt
        (``max_prompt_len``; ``generate`` sizes it for the longest prompt it is given)."""
        if self.batch_size_setting != "auto":
            return self.batch_size_setting
        return self.auto_batch_size(self.max_prompt_len or 1024)

    @batch_size.setter
    def batch_size(self, value: int | str) -> None:
        _check_batch_size(value)
        self.batch_size_setting = value

    # --- generation -----------------------------------------------------------------------------
    @torch.no_grad()
    def generate(self, prompts: list[str], langs: list[str] | None = None,
                 english_prompts: list[str | None] | None = None) -> list[Generation]:
        """Greedy continuations of ``prompts``, returned in input order. Prompts are sorted by token
        count, longest first, and batched in that order with the sizes that pad least (``plan_batches``;
        the first batch holds the longest prompts, so a misjudged ``batch_size="auto"`` fails at once);
        every batch is independent, so results do not depend on the batching."""
        if not prompts:
            return []
        langs = langs or [None] * len(prompts)
        english_prompts = english_prompts or [None] * len(prompts)
        encoded = [self.encode_prompt(p) for p in prompts]
        lengths = [len(e.input_ids) for e in encoded]
        size = self.batch_size_setting
        if size == "auto":
            size = self.auto_batch_size(max(lengths))
        results: list[Generation | None] = [None] * len(prompts)
        for chunk in plan_batches(lengths, size):
            self.check_stop()
            outputs = self._batch([prompts[i] for i in chunk], [langs[i] for i in chunk],
                                  [english_prompts[i] for i in chunk], [encoded[i] for i in chunk])
            for index, output in zip(chunk, outputs):
                results[index] = output
        return results  # type: ignore[return-value]

    def _batch(self, prompts, langs, english_prompts, encoded=None) -> list[Generation]:
        logits, cache, mask, choice, truncated = self.prefill(prompts, langs, english_prompts, encoded)
        rows = self.decode(logits, cache, mask)
        return [
            Generation(self.text(row), self.new_tokens(row), truncated[i],
                       int(choice[i].argmax()) if choice is not None and choice[i].sum() > 0 else None, self.mode,
                       row[:self.new_tokens(row)])
            for i, row in enumerate(rows)
        ]

    def auto_batch_size(self, width: int) -> int:
        """``batch_size="auto"``: the most prompts of ``width`` tokens (plus ``max_new_tokens``) that fit
        ``AUTO_MEMORY_FRACTION`` of the accelerator's free memory, at most ``AUTO_BATCH_MAX``. The
        memory per prompt is measured, not guessed: a probing prefill of ``AUTO_PROBE_ROWS`` prompts
        of that width into a static cache of the full length (weights excluded: already resident;
        its KV cache and activations scale with the rows). Off CUDA: ``AUTO_BATCH_CPU``."""
        if width in self._auto_batch:
            return self._auto_batch[width]
        device = self.device
        if device.type != "cuda":
            size = AUTO_BATCH_CPU
        else:
            free = free_accelerator_memory(device)
            per_prompt = probe_memory(self.model, width, self.pad_id, lambda rows, w: self.decoder.new_cache(
                rows, w, self.max_new_tokens, keep=False)) / AUTO_PROBE_ROWS
            size = batch_from_memory(free, per_prompt)
            log.info("batch_size=auto: %d prompts of %d tokens (+%d new; %.1f MiB each, %.1f GiB free)", size, width,
                     self.max_new_tokens, per_prompt / 2**20, free / 2**30)
        self._auto_batch[width] = size
        return size

    def check_prompt_lengths(self, prompts: list[str], ids: list[str]) -> None:
        """Under ``on_long_prompt="error"``: every prompt must fit whole; the first that does not is
        an error naming its item id (checked before any generation, so nothing is half done)."""
        if self.on_long_prompt != "error" or self.max_prompt_len is None:
            return
        for key, prompt in zip(ids, prompts):
            length = len(self.encode_prompt(prompt, truncate=False).input_ids)
            if length > self.max_prompt_len:
                raise PromptTooLongError(
                    f"{key}: the prompt has {length} tokens, over the limit of {self.max_prompt_len} (the model's "
                    f"context minus eval.max_new_tokens, or eval.max_prompt_len) and eval.on_long_prompt=error "
                    "forbids cutting it")

    # --- the steps of one batch -------------------------------------------------------------------
    def encode_prompt(self, prompt: str, truncate: bool = True) -> EncodedPrompt:
        """One prompt's ids and anchor as this generator feeds them (``max_prompt_len`` unless not ``truncate``)."""
        return encode_prompt(self.tokenizer, prompt, self.max_prompt_len if truncate else None,
                             self.add_special_tokens, self.rule)

    def encode(self, prompts: list[str], encoded: list | None = None):
        """Left-padded (ids, mask, anchor, truncated flags) of ``prompts`` on the model's device."""
        encoded = encoded or [self.encode_prompt(p) for p in prompts]
        ids, mask = pad_sequences([e.input_ids for e in encoded], self.pad_id, "left")
        anchor = anchor_positions([len(e.input_ids) for e in encoded], ids.shape[1], "left",
                                  [e.anchor for e in encoded])
        return ids.to(self.device), mask.to(self.device), anchor.to(self.device), [e.truncated for e in encoded]

    @torch.no_grad()
    def prefill(self, prompts: list[str], langs: list[str | None] | None = None,
                english_prompts: list[str | None] | None = None, encoded: list | None = None):
        """The mode's prefill for one batch: (first-token logits [B, V], cache, mask, choice, truncated)."""
        ids, mask, anchor, truncated = self.encode(prompts, encoded)
        langs = langs or [None] * len(prompts)
        cache = self.decoder.new_cache(*ids.shape, self.max_new_tokens)
        logits, cache, choice = self.prefill_ids(ids, mask, anchor, langs, english_prompts, prompts=prompts,
                                                 cache=cache)
        return logits, cache, mask, choice, truncated

    def prefill_ids(self, ids, mask, anchor, langs, english_prompts=None, connect: bool = True, prompts=None,
                    cache=None):
        """The mode's prefill on already tokenized, left-padded prompts: (last logits [B, V], cache, choice).
        ``connect=False``: the plain model whatever the mode. ``prompts``: the texts the Gumbel noise is
        drawn from (None: torch's RNG). ``cache``: an empty static cache, or None."""
        mode = self.mode if connect else "none"
        if mode == "none":
            logits, cache = self.decoder.forward(ids, mask, cache, past=0)
            return logits, cache, None
        if mode == "transform":
            return transform_prefill(self.decoder, self.cc, self.transform, ids, mask, anchor, list(langs),
                                     lambda acts, embeds: self.select(acts, embeds, prompts), cache, self.reuse_cache)
        english_prompts = list(english_prompts or [None] * ids.shape[0])
        have = [i for i, p in enumerate(english_prompts) if p]
        english = None
        if have:
            en_ids, en_mask, en_anchor, _ = self.encode([english_prompts[i] for i in have])
            english = (have, en_ids, en_mask, en_anchor)
        return parallel_prefill(self.decoder, self.cc, ids, mask, anchor, english,
                                lambda acts, embeds: self.select(acts, embeds, [english_prompts[i] for i in have]),
                                cache)

    def select(self, acts: torch.Tensor, embeds: torch.Tensor,
               prompts: list[str] | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """The Decision Maker's choice, in float32 whatever the model's dtype (the matrix was fitted on
        float32 activations; a bf16 product can flip the choice)."""
        return select_layer(self.cc, acts, embeds, self.decision_mode, self.seed, prompts)

    def decode(self, logits, cache, mask) -> list[list[int]]:
        """Greedy tokens after a prefill, up to ``max_new_tokens`` per row; a row stops at an EOS id."""
        return self.decoder.greedy(logits, cache, mask, self.eos_ids, self.pad_id, self.max_new_tokens,
                                   check_stop=self.check_stop)

    def check_stop(self) -> None:
        """Raise :class:`GenerationStopped` when ``should_stop`` says so (between batches and decoding steps)."""
        if self.should_stop is not None and self.should_stop():
            raise GenerationStopped("generation stopped: should_stop() returned True")

    def new_tokens(self, row: list[int]) -> int:
        """How many of a decoded row's tokens were generated (up to and including its first EOS)."""
        return new_token_count(row, self.eos_ids)

    def text(self, row: list[int]) -> str:
        """The generated text: special tokens skipped; stripped, except under ``stop="model_eos"`` (the authors
        kept the decoded string as it was)."""
        text = self.tokenizer.decode(row[: self.new_tokens(row)], skip_special_tokens=True)
        return text if self.stop == "model_eos" else text.strip()
