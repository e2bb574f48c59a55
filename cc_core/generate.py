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

Batches are left-padded, so every prompt's anchor is the last column.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import torch

from cc_core.prompts import anchor_positions, encode_prompt, pad_sequences, pad_token_id

log = logging.getLogger(__name__)
MODES = ("none", "transform", "parallel")


@dataclass
class Generation:
    text: str
    new_tokens: int
    prompt_truncated: bool
    chosen_layer: int | None = None  # the Decision Maker's choice (transform / parallel)
    mode: str = "none"


class Generator:
    def __init__(self, model, tokenizer, cc=None, transform=None, mode: str = "none", decision_mode: str = "argmax",
                 max_new_tokens: int = 40, batch_size: int = 8, max_prompt_len: int = 1024,
                 reuse_cache: bool = True) -> None:
        if mode not in MODES:
            raise ValueError(f"unknown generation mode {mode!r}; valid: {', '.join(MODES)}")
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
        self.batch_size = batch_size
        # The prompt and the generated tokens must fit the model's context together.
        context = getattr(model.config.get_text_config(), "max_position_embeddings", None)
        self.max_prompt_len = min(max_prompt_len, context - max_new_tokens) if context else max_prompt_len
        self.reuse_cache = reuse_cache
        self.pad_id = pad_token_id(tokenizer)
        self.eos_ids = _eos_ids(model, tokenizer)
        self._warned_crop = False
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

        dtype = dtype or (torch.bfloat16 if str(device).startswith("cuda") else torch.float32)
        model, tokenizer, cc = load_inference_model(model_dir, dtype=dtype)
        model.to(device)
        if cc is not None:
            cc.to(device)
        matrix = None
        if mode == "transform":
            matrix = load_transform(transform or "transform", model.config.hidden_size,
                                    model.config.num_hidden_layers)
        return cls(model, tokenizer, cc, matrix, mode, **kwargs)

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    # --- public -------------------------------------------------------------------------------------
    @torch.no_grad()
    def generate(self, prompts: list[str], langs: list[str] | None = None,
                 english_prompts: list[str | None] | None = None) -> list[Generation]:
        """Greedy continuations of ``prompts``, returned in input order. Prompts are batched by
        length (least padding); every batch is independent, so results do not depend on it."""
        langs = langs or [None] * len(prompts)
        english_prompts = english_prompts or [None] * len(prompts)
        order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))
        results: list[Generation | None] = [None] * len(prompts)
        for start in range(0, len(order), self.batch_size):
            chunk = order[start:start + self.batch_size]
            outputs = self._batch([prompts[i] for i in chunk], [langs[i] for i in chunk],
                                  [english_prompts[i] for i in chunk])
            for index, output in zip(chunk, outputs):
                results[index] = output
        return results  # type: ignore[return-value]

    # --- internals -----------------------------------------------------------------------------------
    def _encode(self, prompts: list[str]):
        encoded = [encode_prompt(self.tokenizer, p, self.max_prompt_len) for p in prompts]
        ids, mask = pad_sequences([e.input_ids for e in encoded], self.pad_id, "left")
        anchor = anchor_positions([len(e.input_ids) for e in encoded], ids.shape[1], "left")
        return ids.to(self.device), mask.to(self.device), anchor.to(self.device), [e.truncated for e in encoded]

    def _positions(self, mask: torch.Tensor) -> torch.Tensor:
        # Left padding: real tokens count positions from 0, as transformers' generate does.
        return (mask.cumsum(-1) - 1).clamp(min=0)

    def _forward(self, ids, mask, cache=None):
        """Run the columns of ``ids`` that ``cache`` does not hold yet (``mask`` covers all
        columns); returns the last position's logits and the cache."""
        past = cache.get_seq_length() if cache is not None else 0
        chunk = ids[:, past:] if ids.shape[1] == mask.shape[1] else ids
        out = self.model(input_ids=chunk, attention_mask=mask, cache=cache, use_cache=True,
                         position_ids=self._positions(mask)[:, -chunk.shape[1]:], logits_to_keep=1)
        return out.logits[:, -1], out.cache

    @torch.no_grad()
    def prefill(self, prompts: list[str], langs: list[str | None] | None = None,
                english_prompts: list[str | None] | None = None):
        """The mode's prefill for one batch: (first-token logits [B, V], cache, mask, choice, truncated)."""
        ids, mask, anchor, truncated = self._encode(prompts)
        langs = langs or [None] * len(prompts)
        choice = None
        if self.mode == "none":
            logits, cache = self._forward(ids, mask)
        elif self.mode == "transform":
            logits, cache, choice = self._transform_prefill(ids, mask, anchor, langs)
        else:
            logits, cache, choice = self._parallel_prefill(ids, mask, anchor,
                                                           english_prompts or [None] * len(prompts))
        return logits, cache, mask, choice, truncated

    def _greedy(self, logits, cache, mask) -> list[list[int]]:
        """Plain batched greedy decoding from a prefilled cache; stops at EOS."""
        eos = torch.tensor(self.eos_ids, device=self.device)
        tokens = logits.argmax(-1)
        done = torch.isin(tokens, eos)
        out = [tokens]
        for _ in range(self.max_new_tokens - 1):
            if bool(done.all()):
                break
            mask = torch.cat([mask, torch.ones_like(mask[:, :1])], dim=1)
            logits, cache = self._forward(tokens[:, None], mask, cache)
            tokens = torch.where(done, torch.full_like(tokens, self.pad_id), logits.argmax(-1))
            done |= torch.isin(tokens, eos)
            out.append(tokens)
        return torch.stack(out, dim=1).tolist()

    def _batch(self, prompts, langs, english_prompts) -> list[Generation]:
        logits, cache, mask, choice, truncated = self.prefill(prompts, langs, english_prompts)
        rows = self._greedy(logits, cache, mask)
        return [
            Generation(self._text(row), self._count(row), truncated[i],
                       int(choice[i].argmax()) if choice is not None and choice[i].sum() > 0 else None, self.mode)
            for i, row in enumerate(rows)
        ]

    def select(self, acts: torch.Tensor, embeds: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.cc.decision_maker.select(acts, embeds, self.decision_mode)

    def _transform_prefill(self, ids, mask, anchor, langs):
        from cc_core.modeling.hooks import capturing, connected, decoder_body

        paths = self.cc.paths
        with capturing(self.model, anchor, paths, with_embed=True) as cap:
            first = decoder_body(self.model)(input_ids=ids, attention_mask=mask, use_cache=self.reuse_cache,
                                             position_ids=self._positions(mask))
            acts, embeds = cap.vectors(), cap.embeds()
        vectors, choice = self.select(self.transform.apply(acts, list(langs)), embeds)
        cache = None
        if self.reuse_cache:
            try:
                cache = first.cache
                cache.crop(-1)  # drop the anchor column (transformers 5: negative = tokens to remove)
            except (RuntimeError, ValueError, NotImplementedError, AttributeError) as err:
                # e.g. a sliding-window layer already past its window: correct, just slower
                if not self._warned_crop:
                    log.warning("KV cache cannot drop the anchor (%s): recomputing whole prompts", err)
                    self._warned_crop = True
                cache = None
        with connected(self.model, anchor, vectors, self.cc.inject_layer, paths):
            logits, cache = self._forward(ids, mask, cache)
        return logits, cache, choice

    def _parallel_prefill(self, ids, mask, anchor, english_prompts):
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
            v, c = self.select(acts, self.cc.anchor_embeds(ids[rows], anchor[rows]))
            vectors[rows], choice[rows] = v.to(vectors.dtype), c.to(choice.dtype)
        # examples without an English parallel get a zero vector: the plain model
        with connected(self.model, anchor, vectors, self.cc.inject_layer, self.cc.paths):
            logits, cache = self._forward(ids, mask)
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
    return sorted(ids)
