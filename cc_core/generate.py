"""Batched greedy generation with or without the connection (METHOD.md, Inference).

    gen = Generator.from_dirs("models/cc", transform="transform", mode="transform")
    outputs = gen.generate(["Quelle est la capitale du Kenya ?"], langs=["fr"])

Modes:
- ``none``: the plain model.
- ``transform`` (the method): pass 1 reads the FFN outputs at the anchor (the last prompt
  token) and builds the KV cache; the Transform Matrix maps them to English-like
  activations; the Decision Maker (``argmax`` by default) picks one layer; the anchor token
  alone is then recomputed with the connection on top of pass 1's cache (every earlier
  position is identical in both passes, attention being causal), and decoding continues
  from there untouched. The reference re-runs the whole prompt, one example at a time.
- ``parallel`` (oracle): the activations come from the real parallel English prompt.

Batches are left-padded, so every prompt's anchor is the last column. Prompts are sorted by
token count (longest first) and cut into batches in that order, so each batch holds prompts of
similar length; the batch sizes (never above ``batch_size``, as few batches as it allows) are
chosen to pad least (``plan_batches``).

Speed options (same tokens under greedy decoding, tested):
- ``cache="static"``: a preallocated transformers ``StaticCache`` per batch, sized to the batch's
  prompt width + ``max_new_tokens`` (compiled: rounded up to ``CACHE_BUCKET``); the decoding step then has
  fixed shapes (the attention mask covers the whole cache from the start: causal masking hides the
  slots not written yet). Transform mode re-runs the anchor over its own slot: ``crop(-1)`` on a
  static cache only moves its write position back one column, and the connected pass overwrites
  slot p. A sliding-window layer already past its window cannot be rolled back: the whole prompt
  is then recomputed with the connection on the reset cache (as the dynamic path does).
- ``compile=True`` (with the static cache): ``torch.compile`` of the decoding step, prefills stay
  eager (their shapes vary, and the connection's hooks live there). On CUDA the mode is
  ``reduce-overhead`` (CUDA graphs): every step starts with ``cudagraph_mark_step_begin()`` and its
  logits are reduced to token ids at once, so no output of an earlier replay is ever read (the
  "accessing tensor output of CUDAGraphs that has been overwritten" error comes from holding one).
  Static caches are kept per (batch, length) and reset, so the graphs see the same buffers.
- ``batch_size="auto"``: see ``Generator.auto_batch_size``.
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass, field
from pathlib import Path

import torch

from cc_core.prompts import anchor_positions, encode_prompt, pad_sequences, pad_token_id

log = logging.getLogger(__name__)
MODES = ("none", "transform", "parallel")
CACHES = ("dynamic", "static")
CACHE_BUCKET = 64  # static cache lengths are multiples of this: few distinct shapes to compile
AUTO_BATCH_CPU = 8  # batch_size="auto" off an accelerator
AUTO_BATCH_MAX = 128  # batch_size="auto" never goes above this (more prompts per batch, more padding)
AUTO_MEMORY_FRACTION = 0.8  # batch_size="auto" plans for this share of the free accelerator memory
AUTO_PROBE_ROWS = 2  # rows of the probing prefill that measures the memory per prompt


class PromptTooLongError(ValueError):
    """A prompt does not fit the model's context and truncation is not allowed (eval.on_long_prompt=error)."""


class GenerationStopped(RuntimeError):
    """``Generator.should_stop`` said stop (e.g. a serving deadline passed); nothing is returned."""


@dataclass
class Generation:
    text: str
    new_tokens: int
    prompt_truncated: bool
    chosen_layer: int | None = None  # the Decision Maker's choice (transform / parallel)
    mode: str = "none"
    token_ids: list[int] = field(default_factory=list, repr=False)  # the new tokens, up to the first EOS


class Generator:
    def __init__(self, model, tokenizer, cc=None, transform=None, mode: str = "none", decision_mode: str = "argmax",
                 max_new_tokens: int = 40, batch_size: int | str = 8, max_prompt_len: int | None = 1024,
                 reuse_cache: bool = True, seed: int = 0, on_long_prompt: str = "truncate",
                 cache: str = "dynamic", compile: bool = False, compile_mode: str | None = None,
                 compile_backend: str = "inductor") -> None:
        """``max_prompt_len`` None: the model's context (minus ``max_new_tokens``). ``on_long_prompt``:
        ``truncate`` (cut the user text from the left, counted) | ``error`` (the paper never truncates).
        ``seed``: the Gumbel noise of ``decision_mode="gumbel"`` (the reference samples at inference);
        each prompt draws its own noise from (seed, prompt), so results do not depend on batching.
        ``batch_size``: prompts per batch, or ``"auto"`` (``auto_batch_size``). ``cache``: ``static`` |
        ``dynamic`` (transformers' default, grown by concatenation). ``compile``: torch.compile the
        decoding step (static cache only); ``compile_mode`` None: ``reduce-overhead`` on CUDA, else
        ``default``; ``compile_backend``: ``inductor``, or e.g. ``aot_eager`` (no code generation)."""
        if mode not in MODES:
            raise ValueError(f"unknown generation mode {mode!r}; valid: {', '.join(MODES)}")
        if cache not in CACHES:
            raise ValueError(f"unknown cache {cache!r}; valid: {', '.join(CACHES)}")
        if compile and cache != "static":
            raise ValueError("compile=True needs cache='static' (a dynamic cache changes shape every step)")
        if not (batch_size == "auto" or (isinstance(batch_size, int) and batch_size >= 1)):
            raise ValueError(f"batch_size={batch_size!r}; valid: a positive integer or 'auto'")
        if mode != "none" and cc is None:
            raise ValueError(f"mode {mode!r} needs a CC checkpoint (cc_tuning.json + decision_maker.safetensors)")
        if mode == "transform" and transform is None:
            raise ValueError("mode 'transform' needs a Transform Matrix (run `cctune fit`)")
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.cc = cc
        self.transform = transform
        self.mode = mode
        self.decision_mode = decision_mode
        self.max_new_tokens = max_new_tokens
        self.batch_size_setting = batch_size  # an int, or "auto"
        self._auto_batch: dict[int, int] = {}  # batch_size="auto": prompt width -> batch size
        self.cache = cache
        self.compile = compile
        self.compile_mode = compile_mode
        self.compile_backend = compile_backend
        self._step = None  # the (compiled) decoding step, made on first use
        self._caches: dict[tuple[int, int], object] = {}  # compile: static caches kept per (batch, length)
        # The prompt and the generated tokens must fit the model's context together.
        context = getattr(model.config.get_text_config(), "max_position_embeddings", None)
        room = context - max_new_tokens if context else None
        limits = [x for x in (max_prompt_len, room) if x is not None]
        self.max_prompt_len = min(limits) if limits else None
        if on_long_prompt not in ("truncate", "error"):
            raise ValueError(f"on_long_prompt={on_long_prompt!r}; valid: truncate, error")
        self.on_long_prompt = on_long_prompt
        self.seed = seed
        self.reuse_cache = reuse_cache
        self.pad_id = pad_token_id(tokenizer)
        self.eos_ids = _eos_ids(model, tokenizer)
        self._warned_crop = False
        self.lineage: dict[str, str] = {}  # checkpoint (and Transform Matrix) hashes, set by from_dirs
        # Optional: called before every batch and every decoding step; True raises GenerationStopped.
        self.should_stop = None
        if transform is not None and cc is not None:
            from cc_core.transform import TransformShapeError

            if transform.hidden_size != cc.decision_maker.proj.in_features:
                raise TransformShapeError(f"Transform Matrix is for d={transform.hidden_size}, the model has "
                                          f"d={cc.decision_maker.proj.in_features}")

    @classmethod
    def from_dirs(cls, model_dir: str | Path, transform: str | Path | None = None, mode: str = "none",
                  device: str = "cpu", dtype: torch.dtype | None = None, **kwargs):
        """Load a model directory (CC checkpoint or plain HF) and, for ``transform``, the matrix.
        On a GPU the default dtype is bfloat16, on a CPU float32."""
        from cc_core.activations import load_inference_model
        from cc_core.transform import load_transform

        from cc_core.io import file_sha256
        from cc_core.lineage import checkpoint_sha256, require_same_checkpoint

        dtype = dtype or (torch.bfloat16 if str(device).startswith("cuda") else torch.float32)
        checkpoint = checkpoint_sha256(model_dir)
        matrix, lineage = None, {"checkpoint_sha256": checkpoint}
        if mode == "transform":  # before the model loads: a mismatch is found in a second, not a minute
            path = Path(transform or "transform")
            path = path / "transform.safetensors" if path.is_dir() else path
            matrix = load_transform(path)
            require_same_checkpoint(path, matrix.meta.get("model_sha256"), checkpoint, model_dir,
                                    "cctune collect && cctune fit (dvc repro fit)")
            lineage["transform_sha256"] = file_sha256(path)
        model, tokenizer, cc = load_inference_model(model_dir, dtype=dtype)
        model.to(device)
        if cc is not None:
            cc.to(device)
        if matrix is not None:
            matrix.check_model(path, model.config.hidden_size, model.config.num_hidden_layers)
        generator = cls(model, tokenizer, cc, matrix, mode, **kwargs)
        generator.lineage = lineage
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
        if not (value == "auto" or (isinstance(value, int) and value >= 1)):
            raise ValueError(f"batch_size={value!r}; valid: a positive integer or 'auto'")
        self.batch_size_setting = value

    # --- public -------------------------------------------------------------------------------------
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
        encoded = [encode_prompt(self.tokenizer, p, self.max_prompt_len) for p in prompts]
        lengths = [len(e.input_ids) for e in encoded]
        size = self.batch_size_setting
        if size == "auto":
            size = self.auto_batch_size(max(lengths))
        results: list[Generation | None] = [None] * len(prompts)
        for chunk in plan_batches(lengths, size):
            self._check_stop()
            outputs = self._batch([prompts[i] for i in chunk], [langs[i] for i in chunk],
                                  [english_prompts[i] for i in chunk], [encoded[i] for i in chunk])
            for index, output in zip(chunk, outputs):
                results[index] = output
        return results  # type: ignore[return-value]

    def _check_stop(self) -> None:
        if self.should_stop is not None and self.should_stop():
            raise GenerationStopped("generation stopped: should_stop() returned True")

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
            per_prompt = self._probe_memory(width) / AUTO_PROBE_ROWS
            size = batch_from_memory(free, per_prompt)
            log.info("batch_size=auto: %d prompts of %d tokens (+%d new; %.1f MiB each, %.1f GiB free)", size, width,
                     self.max_new_tokens, per_prompt / 2**20, free / 2**30)
        self._auto_batch[width] = size
        return size

    def _probe_memory(self, width: int) -> int:
        """Peak bytes above the resident ones of a plain prefill of ``AUTO_PROBE_ROWS`` × ``width``."""
        device = self.device
        torch.cuda.synchronize(device)
        base = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
        ids = torch.full((AUTO_PROBE_ROWS, width), self.pad_id, dtype=torch.long, device=device)
        mask = torch.ones_like(ids)
        with torch.no_grad():
            cache = self._static_cache(AUTO_PROBE_ROWS, width, keep=False)
            self.model(input_ids=ids, attention_mask=mask, cache=cache, use_cache=True, logits_to_keep=1)
            del cache
        torch.cuda.synchronize(device)
        return max(torch.cuda.max_memory_allocated(device) - base, 1)

    # --- internals -----------------------------------------------------------------------------------
    def check_prompt_lengths(self, prompts: list[str], ids: list[str]) -> None:
        """Under ``on_long_prompt="error"``: every prompt must fit whole; the first that does not is
        an error naming its item id (checked before any generation, so nothing is half done)."""
        if self.on_long_prompt != "error" or self.max_prompt_len is None:
            return
        for key, prompt in zip(ids, prompts):
            length = len(encode_prompt(self.tokenizer, prompt).input_ids)
            if length > self.max_prompt_len:
                raise PromptTooLongError(
                    f"{key}: the prompt has {length} tokens, over the limit of {self.max_prompt_len} (the model's "
                    f"context minus eval.max_new_tokens, or eval.max_prompt_len) and eval.on_long_prompt=error "
                    "forbids cutting it")

    def _encode(self, prompts: list[str], encoded: list | None = None):
        encoded = encoded or [encode_prompt(self.tokenizer, p, self.max_prompt_len) for p in prompts]
        ids, mask = pad_sequences([e.input_ids for e in encoded], self.pad_id, "left")
        anchor = anchor_positions([len(e.input_ids) for e in encoded], ids.shape[1], "left")
        return ids.to(self.device), mask.to(self.device), anchor.to(self.device), [e.truncated for e in encoded]

    def _positions(self, mask: torch.Tensor) -> torch.Tensor:
        # Left padding: real tokens count positions from 0, as transformers' generate does.
        return (mask.cumsum(-1) - 1).clamp(min=0)

    def _forward(self, ids, mask, cache=None, past: int | None = None):
        """Run the columns of ``ids`` that ``cache`` does not hold yet (``mask`` covers all
        columns; ``past``: how many it holds, read from the cache when None); returns the last
        position's logits and the cache."""
        if past is None:
            past = int(cache.get_seq_length()) if cache is not None else 0
        chunk = ids[:, past:] if ids.shape[1] == mask.shape[1] else ids
        out = self.model(input_ids=chunk, attention_mask=mask, cache=cache, use_cache=True,
                         position_ids=self._positions(mask)[:, -chunk.shape[1]:], logits_to_keep=1)
        return out.logits[:, -1], out.cache

    def _cache_len(self, width: int) -> int:
        """Static cache length for prompts of ``width`` columns: room for the new tokens; compiled,
        rounded up to ``CACHE_BUCKET`` (fewer shapes to compile; eager, every extra slot is wasted
        attention)."""
        need = width + self.max_new_tokens
        return -(-need // CACHE_BUCKET) * CACHE_BUCKET if self.compile else need

    def _static_cache(self, batch: int, width: int, keep: bool | None = None):
        """An empty StaticCache for ``batch`` prompts of ``width`` columns (None for ``cache="dynamic"``).
        Under ``compile`` one cache per (batch, length) is kept and reset between batches: the compiled
        step (and its CUDA graphs) then always sees the same buffers."""
        if self.cache != "static" and keep is None:
            return None
        from transformers import StaticCache

        length = self._cache_len(width)
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

    @torch.no_grad()
    def prefill(self, prompts: list[str], langs: list[str | None] | None = None,
                english_prompts: list[str | None] | None = None, encoded: list | None = None):
        """The mode's prefill for one batch: (first-token logits [B, V], cache, mask, choice, truncated)."""
        ids, mask, anchor, truncated = self._encode(prompts, encoded)
        langs = langs or [None] * len(prompts)
        cache = self._static_cache(*ids.shape)
        choice = None
        if self.mode == "none":
            logits, cache = self._forward(ids, mask, cache, past=0)
        elif self.mode == "transform":
            logits, cache, choice = self._transform_prefill(ids, mask, anchor, langs, prompts, cache)
        else:
            logits, cache, choice = self._parallel_prefill(ids, mask, anchor,
                                                           english_prompts or [None] * len(prompts), cache)
        return logits, cache, mask, choice, truncated

    def _greedy(self, logits, cache, mask) -> list[list[int]]:
        """Plain batched greedy decoding from a prefilled cache; stops at EOS."""
        from transformers import StaticCache

        if isinstance(cache, StaticCache):
            return self._greedy_static(logits, cache, mask)

        def next_logits(tokens, index):
            nonlocal mask, cache
            mask = torch.cat([mask, torch.ones_like(mask[:, :1])], dim=1)
            logits, cache = self._forward(tokens[:, None], mask, cache)
            return logits

        return self._greedy_loop(logits, next_logits)

    def _greedy_static(self, logits, cache, mask) -> list[list[int]]:
        """Greedy decoding on a static cache: every step has the same shapes. The mask spans the
        whole cache from the start (prompt padding 0, every later slot 1: causal masking hides the
        slots not written yet), so it is one tensor for all steps; positions count on from each
        prompt's real length."""
        batch, width = mask.shape
        full = mask.new_ones(batch, self._cache_len(width))  # sliding layers may hold less: not their length
        full[:, :width] = mask
        positions = mask.sum(-1, keepdim=True)  # the first generated token's position
        step = self._decode_step()

        def next_logits(tokens, index):
            if self.compile:
                torch.compiler.cudagraph_mark_step_begin()  # a new step: the last replay's outputs may go
            # the caller reduces these to token ids at once, before the next replay can overwrite them
            return step(tokens[:, None], full, positions + index, cache)

        return self._greedy_loop(logits, next_logits)

    def _greedy_loop(self, logits, next_logits) -> list[list[int]]:
        """Greedy tokens from the first logits [B, V]; ``next_logits(tokens, index)`` runs decoding
        step ``index`` on the last tokens. A finished row (EOS) gets padding; all finished: stop."""
        eos = torch.tensor(self.eos_ids, device=self.device)
        tokens = logits.argmax(-1)
        done = torch.isin(tokens, eos)
        out = [tokens]
        for index in range(self.max_new_tokens - 1):
            if bool(done.all()):
                break
            self._check_stop()
            logits = next_logits(tokens, index)
            tokens = torch.where(done, torch.full_like(tokens, self.pad_id), logits.argmax(-1))
            done |= torch.isin(tokens, eos)
            out.append(tokens)
        return torch.stack(out, dim=1).tolist()

    def _decode_logits(self, input_ids, attention_mask, position_ids, cache):
        """One decoding step on a static cache: the next-token logits [B, V]."""
        out = self.model(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                         cache=cache, use_cache=True, logits_to_keep=1)
        return out.logits[:, -1]

    def _decode_step(self):
        """``_decode_logits``, compiled under ``compile`` (once per generator)."""
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

    def _batch(self, prompts, langs, english_prompts, encoded=None) -> list[Generation]:
        logits, cache, mask, choice, truncated = self.prefill(prompts, langs, english_prompts, encoded)
        rows = self._greedy(logits, cache, mask)
        return [
            Generation(self._text(row), self._count(row), truncated[i],
                       int(choice[i].argmax()) if choice is not None and choice[i].sum() > 0 else None, self.mode,
                       row[:self._count(row)])
            for i, row in enumerate(rows)
        ]

    def select(self, acts: torch.Tensor, embeds: torch.Tensor,
               prompts: list[str] | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """The Decision Maker's choice, in float32 whatever the model's dtype (the matrix was fitted on
        float32 activations; a bf16 product can flip the choice)."""
        noise = self._gumbel_noise(prompts, acts.shape[1], acts.device) if self.decision_mode == "gumbel" else None
        vectors, choice = self.cc.decision_maker.select(acts.float(), embeds.float(), self.decision_mode,
                                                        noise=noise)
        return vectors, choice

    def _gumbel_noise(self, prompts: list[str] | None, num_layers: int, device) -> torch.Tensor | None:
        """Gumbel(0, 1) noise per prompt from (seed, prompt text): reproducible, batch-independent."""
        if prompts is None:
            return None
        rows = []
        for prompt in prompts:
            digest = hashlib.sha256(f"{self.seed}\x00{prompt}".encode()).digest()
            rng = torch.Generator().manual_seed(int.from_bytes(digest[:8], "little") & (2**63 - 1))
            rows.append(-torch.empty(num_layers).exponential_(generator=rng).log())
        return torch.stack(rows).to(device)

    def _transform_prefill(self, ids, mask, anchor, langs, prompts=None, cache=None):
        """Pass 1 (capture) builds the cache; the anchor column alone is then recomputed with the
        connection over it. ``cache``: an empty static cache, or None (dynamic)."""
        from cc_core.modeling.hooks import capturing, connected, decoder_body

        paths = self.cc.paths
        static = cache is not None
        with capturing(self.model, anchor, paths, with_embed=True) as cap:
            first = decoder_body(self.model)(input_ids=ids, attention_mask=mask, use_cache=self.reuse_cache,
                                             cache=cache if self.reuse_cache else None,
                                             position_ids=self._positions(mask))
            acts, embeds = cap.vectors(), cap.embeds()
        vectors, choice = self.select(self.transform.apply(acts.float(), list(langs)), embeds, prompts)
        past = 0
        if not self.reuse_cache:
            pass  # the connected pass recomputes the whole prompt (into the empty static cache, if any)
        elif static and not _static_croppable(cache):
            self._warn_crop("a sliding-window layer is past its window")
            cache.reset()  # recompute the whole prompt into the same buffers
        elif static:
            cache.crop(-1)  # the write position goes back one column: the anchor's slot is overwritten
            past = ids.shape[1] - 1
        else:
            try:
                cache = first.cache
                cache.crop(-1)  # drop the anchor column (transformers 5: negative = tokens to remove)
                past = ids.shape[1] - 1
            except (RuntimeError, ValueError, NotImplementedError, AttributeError) as err:
                # e.g. a sliding-window layer already past its window: correct, just slower
                self._warn_crop(err)
                cache, past = None, 0
        with connected(self.model, anchor, vectors, self.cc.inject_layer, paths):
            logits, cache = self._forward(ids, mask, cache, past=past)
        return logits, cache, choice

    def _warn_crop(self, why) -> None:
        if not self._warned_crop:
            log.warning("KV cache cannot drop the anchor (%s): recomputing whole prompts", why)
            self._warned_crop = True

    def _parallel_prefill(self, ids, mask, anchor, english_prompts, cache=None):
        from cc_core.modeling.hooks import capture_ffn, connected

        have = [i for i, p in enumerate(english_prompts) if p]
        batch = ids.shape[0]
        vectors = torch.zeros(batch, self.cc.decision_maker.proj.in_features, device=self.device,
                              dtype=next(self.model.parameters()).dtype)
        choice = torch.zeros(batch, self.cc.num_layers, device=self.device)
        if have:
            en_ids, en_mask, en_anchor, _ = self._encode([english_prompts[i] for i in have])
            acts = capture_ffn(self.model, en_ids, en_mask, en_anchor, paths=self.cc.paths)
            rows = torch.tensor(have, device=self.device)
            v, c = self.select(acts, self.cc.anchor_embeds(ids[rows], anchor[rows]), [english_prompts[i] for i in have])
            vectors[rows], choice[rows] = v.to(vectors.dtype), c.to(choice.dtype)
        # examples without an English parallel get a zero vector: the plain model
        with connected(self.model, anchor, vectors, self.cc.inject_layer, self.cc.paths):
            logits, cache = self._forward(ids, mask, cache, past=0)
        return logits, cache, choice

    def _count(self, tokens: list[int]) -> int:
        for index, token in enumerate(tokens):
            if token in self.eos_ids:
                return index + 1
        return len(tokens)

    def _text(self, row: list[int]) -> str:
        return self.tokenizer.decode(row[: self._count(row)], skip_special_tokens=True).strip()


def _eos_ids(model, tokenizer) -> list[int]:
    ids: set[int] = set()
    configured = getattr(model.generation_config, "eos_token_id", None)
    if isinstance(configured, int):
        ids.add(configured)
    elif configured:
        ids.update(configured)
    if tokenizer.eos_token_id is not None:
        ids.add(tokenizer.eos_token_id)
    from cc_core.prompts import end_of_turn_ids

    ids.update(end_of_turn_ids(tokenizer))  # the template's end of turn, what SFT taught the model to emit
    return sorted(ids)


def batch_order(lengths: list[int]) -> list[int]:
    """Indices by length, longest first (ties in input order): consecutive batches of this order
    hold prompts of similar length, so little padding."""
    return sorted(range(len(lengths)), key=lambda i: (-lengths[i], i))


def plan_batches(lengths: list[int], batch_size: int) -> list[list[int]]:
    """Prompt indices in batches: as few batches as ``batch_size`` allows (⌈n / batch_size⌉), each a
    run of the longest-first order, with the sizes that pad least. Cutting that order into full
    batches leaves the remainder to the shortest prompts, which is not always best; the deficit
    (fewer than ``batch_size`` missing places in all) is spread by dynamic programming over (batch,
    places missing so far): at most ⌈n / batch_size⌉ × batch_size² / 2 steps."""
    order = batch_order(lengths)
    n = len(order)
    if n == 0:
        return []
    count = -(-n // batch_size)
    slack = count * batch_size - n
    ordered = [lengths[i] for i in order]
    # best[d]: least padded area of the batches so far with d places missing; a batch's area is its
    # first (longest) prompt's length times its size
    best = {0: 0}
    choices: list[dict[int, int]] = []
    for group in range(count):
        step: dict[int, tuple[int, int]] = {}
        for missing, area in best.items():
            start = group * batch_size - missing
            for more in range(0, slack - missing + 1):
                size = batch_size - more
                if size < 1 or start + size > n:
                    continue
                total = area + ordered[start] * size
                key = missing + more
                if key not in step or total < step[key][0]:
                    step[key] = (total, more)
        best = {key: value[0] for key, value in step.items()}
        choices.append({key: value[1] for key, value in step.items()})
    sizes, missing = [], slack
    for group in reversed(range(count)):
        more = choices[group][missing]
        sizes.append(batch_size - more)
        missing -= more
    batches, start = [], 0
    for size in reversed(sizes):
        batches.append(order[start:start + size])
        start += size
    return batches


def padding_fraction(lengths: list[int], batches: list[list[int]]) -> float:
    """Share of the prompt columns that are padding in ``batches`` (each left-padded to its longest)."""
    padded = sum(max(lengths[i] for i in batch) * len(batch) for batch in batches)
    real = sum(lengths[i] for batch in batches for i in batch)
    return (padded - real) / padded if padded else 0.0


def fixed_batches(order: list[int], batch_size: int) -> list[list[int]]:
    """``order`` cut into consecutive batches of ``batch_size`` (the last one shorter)."""
    return [order[start:start + batch_size] for start in range(0, len(order), batch_size)]


def batch_from_memory(free_bytes: float, per_prompt_bytes: float) -> int:
    """The ``batch_size="auto"`` rule: ``AUTO_MEMORY_FRACTION`` of the free memory over the memory one
    prompt needs, between 1 and ``AUTO_BATCH_MAX``."""
    if per_prompt_bytes <= 0:
        return AUTO_BATCH_MAX
    return max(1, min(AUTO_BATCH_MAX, int(free_bytes * AUTO_MEMORY_FRACTION // per_prompt_bytes)))


def free_accelerator_memory(device: torch.device) -> int:
    """Free bytes on a CUDA device, counting what PyTorch's allocator holds but does not use."""
    free, _ = torch.cuda.mem_get_info(device)
    return int(free + torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device))


def _static_croppable(cache) -> bool:
    """Whether ``crop(-1)`` puts this static cache back one column: not when a sliding-window layer
    already dropped states (its prompt was longer than its window)."""
    for layer in cache.layers:
        if getattr(layer, "is_sliding", False) and int(layer.get_seq_length()) > layer.get_max_length():
            return False
    return True
