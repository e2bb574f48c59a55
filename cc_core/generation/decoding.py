"""Forward passes over a KV cache and greedy decoding: the plain model's part of generation.

    decoder = Decoder(model, cache="static", compile=False)
    logits, cache = decoder.forward(ids, mask, decoder.new_cache(*ids.shape, max_new_tokens=40))
    rows = decoder.greedy(logits, cache, mask, eos_ids=[2], pad_id=0, max_new_tokens=40)

The decoding loop is our own (a few lines; it equals ``generate(do_sample=False)`` token for token,
tested) so that the prefill can be customised without private generate internals.

- ``cache="dynamic"``: transformers' default cache, grown by concatenation.
- ``cache="static"``: a preallocated ``StaticCache`` per batch, sized to the batch's prompt width +
  ``max_new_tokens`` (compiled: rounded up to ``CACHE_BUCKET``); the decoding step then has fixed
  shapes (the attention mask covers the whole cache from the start: causal masking hides the slots
  not written yet).
- ``compile=True`` (static cache): ``torch.compile`` of the decoding step; prefills stay eager (their
  shapes vary, and the connection's hooks live there). On CUDA the mode is ``reduce-overhead`` (CUDA
  graphs): every step starts with ``cudagraph_mark_step_begin()`` and its logits are reduced to token
  ids at once, so no output of an earlier replay is ever read (the "accessing tensor output of
  CUDAGraphs that has been overwritten" error comes from holding one). Static caches are kept per
  (batch, length) and reset, so the graphs see the same buffers.
"""

from __future__ import annotations

import logging

import torch
from transformers import StaticCache

from cc_core.prompts import end_of_turn_ids

log = logging.getLogger(__name__)
CACHES = ("dynamic", "static")
CACHE_BUCKET = 64  # static cache lengths are multiples of this: few distinct shapes to compile


def position_ids(mask: torch.Tensor) -> torch.Tensor:
    """Left padding: real tokens count positions from 0, as transformers' generate does."""
    return (mask.cumsum(-1) - 1).clamp(min=0)


def eos_ids(model, tokenizer) -> list[int]:
    """Tokens that end a generation: the model's configured EOS, the tokenizer's, and the chat
    template's end of turn (what SFT taught the model to emit)."""
    ids: set[int] = set()
    configured = getattr(model.generation_config, "eos_token_id", None)
    if isinstance(configured, int):
        ids.add(configured)
    elif configured:
        ids.update(configured)
    if tokenizer.eos_token_id is not None:
        ids.add(tokenizer.eos_token_id)
    ids.update(end_of_turn_ids(tokenizer))
    return sorted(ids)


STOPS = ("end_of_turn", "model_eos")


def model_eos_ids(model) -> list[int]:
    """The model config's ``eos_token_id`` alone: where the authors' decoding loop stopped
    (``Inference/inference_matrix.py``; ``<|end_of_text|>`` for the Llama-3.1 base model, not the
    ``<|eot_id|>`` their template's training teaches it to emit)."""
    configured = getattr(model.config.get_text_config(), "eos_token_id", None)
    if configured is None:
        raise ValueError("eval.stop=model_eos: the model's config has no eos_token_id")
    return sorted({configured} if isinstance(configured, int) else set(configured))


def new_token_count(tokens: list[int], stop_ids: list[int]) -> int:
    """Tokens generated up to and including the first stop token (all of them without one)."""
    for index, token in enumerate(tokens):
        if token in stop_ids:
            return index + 1
    return len(tokens)


def static_croppable(cache) -> bool:
    """Whether ``crop(-1)`` puts this static cache back one column: not when a sliding-window layer
    already dropped states (its prompt was longer than its window)."""
    for layer in cache.layers:
        if getattr(layer, "is_sliding", False) and int(layer.get_seq_length()) > layer.get_max_length():
            return False
    return True


def greedy_loop(logits: torch.Tensor, next_logits, stop_ids: list[int], pad_id: int,
                max_new_tokens: int, check_stop=None) -> list[list[int]]:
    """Greedy tokens from the first logits [B, V]; ``next_logits(tokens, index)`` runs decoding
    step ``index`` on the last tokens. A finished row (a stop token) gets padding; all finished: stop.
    ``check_stop()`` runs before every step (it raises to abandon the batch, e.g. a serving deadline)."""
    eos = torch.tensor(stop_ids, device=logits.device)
    tokens = logits.argmax(-1)
    done = torch.isin(tokens, eos)
    out = [tokens]
    for index in range(max_new_tokens - 1):
        if bool(done.all()):
            break
        if check_stop is not None:
            check_stop()
        logits = next_logits(tokens, index)
        tokens = torch.where(done, torch.full_like(tokens, pad_id), logits.argmax(-1))
        done |= torch.isin(tokens, eos)
        out.append(tokens)
    return torch.stack(out, dim=1).tolist()


class Decoder:
    """The plain model's forward passes over a KV cache, its caches, and greedy decoding from a prefill.
    ``compile_mode`` None: ``reduce-overhead`` on CUDA, else ``default``; ``compile_backend``:
    ``inductor``, or e.g. ``aot_eager`` (no code generation)."""

    def __init__(self, model, cache: str = "dynamic", compile: bool = False, compile_mode: str | None = None,
                 compile_backend: str = "inductor") -> None:
        if cache not in CACHES:
            raise ValueError(f"unknown cache {cache!r}; valid: {', '.join(CACHES)}")
        if compile and cache != "static":
            raise ValueError("compile=True needs cache='static' (a dynamic cache changes shape every step)")
        self.model = model
        self.cache = cache
        self.compile = compile
        self.compile_mode = compile_mode
        self.compile_backend = compile_backend
        self._step = None  # the (compiled) decoding step, made on first use
        self._caches: dict[tuple[int, int], StaticCache] = {}  # compile: static caches kept per (batch, length)
        self._warned_crop = False

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def forward(self, ids, mask, cache=None, past: int | None = None):
        """Run the columns of ``ids`` that ``cache`` does not hold yet (``mask`` covers all
        columns; ``past``: how many it holds, read from the cache when None); returns the last
        position's logits and the cache."""
        if past is None:
            past = int(cache.get_seq_length()) if cache is not None else 0
        chunk = ids[:, past:] if ids.shape[1] == mask.shape[1] else ids
        out = self.model(input_ids=chunk, attention_mask=mask, cache=cache, use_cache=True,
                         position_ids=position_ids(mask)[:, -chunk.shape[1]:], logits_to_keep=1)
        return out.logits[:, -1], out.cache

    def cache_len(self, width: int, max_new_tokens: int) -> int:
        """Static cache length for prompts of ``width`` columns: room for the new tokens; compiled,
        rounded up to ``CACHE_BUCKET`` (fewer shapes to compile; eager, every extra slot is wasted
        attention)."""
        need = width + max_new_tokens
        return -(-need // CACHE_BUCKET) * CACHE_BUCKET if self.compile else need

    def new_cache(self, batch: int, width: int, max_new_tokens: int, keep: bool | None = None):
        """An empty StaticCache for ``batch`` prompts of ``width`` columns (None for ``cache="dynamic"``
        unless ``keep`` is given). Under ``compile`` one cache per (batch, length) is kept and reset between
        batches: the compiled step (and its CUDA graphs) then always sees the same buffers."""
        if self.cache != "static" and keep is None:
            return None
        length = self.cache_len(width, max_new_tokens)
        keep = self.compile if keep is None else keep
        key = (batch, length)
        if keep and key in self._caches:
            cache = self._caches[key]
            cache.reset()
            return cache
        cache = StaticCache(config=self.model.config, max_cache_len=length)
        if keep:
            self._caches[key] = cache
        return cache

    def warn_crop(self, why) -> None:
        """Once per decoder: a KV cache could not drop the anchor column, so prompts are recomputed."""
        if not self._warned_crop:
            log.warning("KV cache cannot drop the anchor (%s): recomputing whole prompts", why)
            self._warned_crop = True

    def greedy(self, logits, cache, mask, stop_ids: list[int], pad_id: int, max_new_tokens: int,
               check_stop=None) -> list[list[int]]:
        """Plain batched greedy decoding from a prefilled cache; stops at the stop tokens."""
        if isinstance(cache, StaticCache):
            return self._greedy_static(logits, cache, mask, stop_ids, pad_id, max_new_tokens, check_stop)

        def next_logits(tokens, index):
            nonlocal mask, cache
            mask = torch.cat([mask, torch.ones_like(mask[:, :1])], dim=1)
            logits, cache = self.forward(tokens[:, None], mask, cache)
            return logits

        return greedy_loop(logits, next_logits, stop_ids, pad_id, max_new_tokens, check_stop)

    def _greedy_static(self, logits, cache, mask, stop_ids, pad_id, max_new_tokens, check_stop=None) -> list[list[int]]:
        """Greedy decoding on a static cache: every step has the same shapes. The mask spans the
        whole cache from the start (prompt padding 0, every later slot 1: causal masking hides the
        slots not written yet), so it is one tensor for all steps; positions count on from each
        prompt's real length."""
        batch, width = mask.shape
        # sliding layers may hold less: not their length
        full = mask.new_ones(batch, self.cache_len(width, max_new_tokens))
        full[:, :width] = mask
        positions = mask.sum(-1, keepdim=True)  # the first generated token's position
        step = self._decode_step()

        def next_logits(tokens, index):
            if self.compile:
                torch.compiler.cudagraph_mark_step_begin()  # a new step: the last replay's outputs may go
            # the caller reduces these to token ids at once, before the next replay can overwrite them
            return step(tokens[:, None], full, positions + index, cache)

        return greedy_loop(logits, next_logits, stop_ids, pad_id, max_new_tokens, check_stop)

    def _decode_logits(self, input_ids, attention_mask, position_ids, cache):
        """One decoding step on a static cache: the next-token logits [B, V]."""
        out = self.model(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                         cache=cache, use_cache=True, logits_to_keep=1)
        return out.logits[:, -1]

    def _decode_step(self):
        """``_decode_logits``, compiled under ``compile`` (once per decoder)."""
        if not self.compile:
            return self._decode_logits
        if self._step is None:
            mode = self.compile_mode or ("reduce-overhead" if self.device.type == "cuda" else "default")
            if self.compile_backend != "inductor":
                mode = None  # modes are inductor's
            # one graph per (batch, cache length): allow more than dynamo's default of 8
            limit = getattr(torch._dynamo.config, "recompile_limit", None)
            if limit is not None and limit < 64:
                torch._dynamo.config.recompile_limit = 64
            log.info("compiling the decoding step (backend %s, mode %s)", self.compile_backend, mode)
            self._step = torch.compile(self._decode_logits, backend=self.compile_backend, mode=mode,
                                       dynamic=False, fullgraph=False)
        return self._step
