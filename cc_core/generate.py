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

import hashlib
import logging
from dataclasses import dataclass
from pathlib import Path

import torch

from cc_core.prompts import anchor_positions, encode_prompt, pad_sequences, pad_token_id

log = logging.getLogger(__name__)
MODES = ("none", "transform", "parallel")


class PromptTooLongError(ValueError):
    """A prompt does not fit the model's context and truncation is not allowed (eval.on_long_prompt=error)."""


@dataclass
class Generation:
    text: str
    new_tokens: int
    prompt_truncated: bool
    chosen_layer: int | None = None  # the Decision Maker's choice (transform / parallel)
    mode: str = "none"


class Generator:
    def __init__(self, model, tokenizer, cc=None, transform=None, mode: str = "none", decision_mode: str = "argmax",
                 max_new_tokens: int = 40, batch_size: int = 8, max_prompt_len: int | None = 1024,
                 reuse_cache: bool = True, seed: int = 0, on_long_prompt: str = "truncate") -> None:
        """``max_prompt_len`` None: the model's context (minus ``max_new_tokens``). ``on_long_prompt``:
        ``truncate`` (cut the user text from the left, counted) | ``error`` (the paper never truncates).
        ``seed``: the Gumbel noise of ``decision_mode="gumbel"`` (the reference samples at inference);
        each prompt draws its own noise from (seed, prompt), so results do not depend on batching."""
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
            logits, cache, choice = self._transform_prefill(ids, mask, anchor, langs, prompts)
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

    def _transform_prefill(self, ids, mask, anchor, langs, prompts=None):
        from cc_core.modeling.hooks import capturing, connected, decoder_body

        paths = self.cc.paths
        with capturing(self.model, anchor, paths, with_embed=True) as cap:
            first = decoder_body(self.model)(input_ids=ids, attention_mask=mask, use_cache=self.reuse_cache,
                                             position_ids=self._positions(mask))
            acts, embeds = cap.vectors(), cap.embeds()
        vectors, choice = self.select(self.transform.apply(acts.float(), list(langs)), embeds, prompts)
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
            v, c = self.select(acts, self.cc.anchor_embeds(ids[rows], anchor[rows]), [english_prompts[i] for i in have])
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
    from cc_core.prompts import end_of_turn_ids

    ids.update(end_of_turn_ids(tokenizer))  # the template's end of turn, what SFT taught the model to emit
    return sorted(ids)
