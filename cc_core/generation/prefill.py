"""The CC prefill (docs/method.md, Inference): the prompt's forward pass with the connection.

- ``transform`` (the method): pass 1 reads the FFN outputs at the anchor (the last prompt token)
  and builds the KV cache; the Transform Matrix maps them to English-like activations; the Decision
  Maker picks one layer; the anchor token alone is then recomputed with the connection on top of
  pass 1's cache (every earlier position is identical in both passes, attention being causal).
  A static cache re-runs the anchor over its own slot (``crop(-1)`` moves its write position back
  one column); a cache that cannot roll back (a sliding-window layer past its window) makes the
  whole prompt be recomputed with the connection, with a warning. An anchor before the last
  column (``model.anchor: authors`` on Mistral or Qwen2) makes the columns from the batch's first
  anchor on be recomputed.
- ``parallel`` (oracle): the activations come from the real parallel English prompt; prompts
  without one get a zero vector (the plain model).

The Decision Maker runs in float32 whatever the model's dtype (the matrix was fitted on float32
activations; a bf16 product can flip the choice). Its Gumbel noise at inference (``gumbel`` mode,
as the reference) is drawn per prompt from (seed, prompt text): reproducible and independent of
the batching.
"""

from __future__ import annotations

import hashlib

import torch

from cc_core.generation.decoding import Decoder, position_ids, static_croppable
from cc_core.modeling.cc_model import CCTuningModel
from cc_core.modeling.hooks import capture_ffn, capturing, connected, decoder_body
from cc_core.modeling.transform_matrix import TransformMatrix


def gumbel_noise(seed: int, prompts: list[str] | None, num_layers: int, device) -> torch.Tensor | None:
    """Gumbel(0, 1) noise per prompt from (seed, prompt text): reproducible, batch-independent
    (None without prompts: the Decision Maker then draws from torch's RNG)."""
    if prompts is None:
        return None
    rows = []
    for prompt in prompts:
        digest = hashlib.sha256(f"{seed}\x00{prompt}".encode()).digest()
        rng = torch.Generator().manual_seed(int.from_bytes(digest[:8], "little") & (2**63 - 1))
        rows.append(-torch.empty(num_layers).exponential_(generator=rng).log())
    return torch.stack(rows).to(device)


def select_layer(cc: CCTuningModel, acts: torch.Tensor, embeds: torch.Tensor, decision_mode: str, seed: int,
                 prompts: list[str] | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """The Decision Maker's (vectors [B, d], choice [B, L]), in float32."""
    noise = gumbel_noise(seed, prompts, acts.shape[1], acts.device) if decision_mode == "gumbel" else None
    return cc.decision_maker.select(acts.float(), embeds.float(), decision_mode, noise=noise)


def transform_prefill(decoder: Decoder, cc: CCTuningModel, transform: TransformMatrix, ids, mask, anchor,
                      langs: list[str | None], select, cache=None, reuse_cache: bool = True):
    """Pass 1 (capture) builds the cache; the anchor column alone is then recomputed with the
    connection over it. ``select(acts, embeds)`` → (vectors, choice). ``cache``: an empty static
    cache, or None (dynamic). ``reuse_cache=False`` recomputes the whole prompt in the connected
    pass. Returns (first-token logits [B, V], cache, choice)."""
    model, paths = decoder.model, cc.paths
    static = cache is not None
    with capturing(model, anchor, paths, with_embed=True) as cap:
        first = decoder_body(model)(input_ids=ids, attention_mask=mask, use_cache=reuse_cache,
                                    cache=cache if reuse_cache else None, position_ids=position_ids(mask))
        acts, embeds = cap.vectors(), cap.embeds()
    vectors, choice = select(transform.apply(acts.float(), list(langs)), embeds)
    past = 0
    # columns from the first anchor on are recomputed: 1 (the last) with anchors at the last prompt token
    redo = ids.shape[1] - int(anchor.min())
    if not reuse_cache:
        pass  # the connected pass recomputes the whole prompt (into the empty static cache, if any)
    elif static and not static_croppable(cache):
        decoder.warn_crop("a sliding-window layer is past its window")
        cache.reset()  # recompute the whole prompt into the same buffers
    elif static:
        cache.crop(-redo)  # the write position goes back: the anchor's slot (and any after it) is overwritten
        past = ids.shape[1] - redo
    else:
        try:
            cache = first.cache
            cache.crop(-redo)  # drop the anchor column (transformers 5: negative = tokens to remove)
            past = ids.shape[1] - redo
        except (RuntimeError, ValueError, NotImplementedError, AttributeError) as err:
            # e.g. a sliding-window layer already past its window: correct, just slower
            decoder.warn_crop(err)
            cache, past = None, 0
    with connected(model, anchor, vectors, cc.inject_layer, paths):
        logits, cache = decoder.forward(ids, mask, cache, past=past)
    return logits, cache, choice


def parallel_prefill(decoder: Decoder, cc: CCTuningModel, ids, mask, anchor, english, select, cache=None):
    """The connection with the real English prompt's activations. ``english``: (rows that have an
    English prompt, their encoded English ids, mask, anchor), or None; ``select(acts, embeds)`` →
    (vectors, choice) for those rows. Returns (first-token logits [B, V], cache, choice)."""
    model, device = decoder.model, decoder.device
    batch = ids.shape[0]
    vectors = torch.zeros(batch, cc.decision_maker.proj.in_features, device=device,
                          dtype=next(model.parameters()).dtype)
    choice = torch.zeros(batch, cc.num_layers, device=device)
    if english is not None:
        have, en_ids, en_mask, en_anchor = english
        acts = capture_ffn(model, en_ids, en_mask, en_anchor, paths=cc.paths)
        rows = torch.tensor(have, device=device)
        v, c = select(acts, cc.anchor_embeds(ids[rows], anchor[rows]))
        vectors[rows], choice[rows] = v.to(vectors.dtype), c.to(choice.dtype)
    # examples without an English parallel get a zero vector: the plain model
    with connected(model, anchor, vectors, cc.inject_layer, cc.paths):
        logits, cache = decoder.forward(ids, mask, cache, past=0)
    return logits, cache, choice
