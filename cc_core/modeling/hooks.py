"""Capture and connection hooks on a stock Hugging Face decoder (docs/method.md, Training/Inference).

    acts, embeds = capture_ffn(model, input_ids, attention_mask, anchor, with_embed=True)   # [B, L, d], [B, d]
    with connected(model, anchor, vectors, inject_layer=0):
        out = model.generate(input_ids, attention_mask=attention_mask)

Positions are sequence columns (the index into ``input_ids``), not chunk-local indices: every
hooked decoder layer reads how many tokens its KV cache already holds when a chunk enters it,
so with a cache the connection applies only in the chunk that contains the anchor column
(the prefill) and later decoding steps are untouched.

Both the capture read-out and the injection happen in hooks on the decoder *layer*, whose
hooks transformers runs outside the activation-checkpointed ``forward``; the FFN module's own
hook only keeps a reference to its output. So both work unchanged with gradient
checkpointing, and gradients flow through captured vectors and injected vectors alike.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import torch
import torch.nn as nn

from cc_core.modeling.architectures import ArchPaths, arch_paths, decoder_layers, get_module, unwrap


def _chunk_start(kwargs: dict[str, Any], layer_idx: int) -> int:
    """Columns already in the KV cache when a chunk enters layer ``layer_idx`` (0 without cache)."""
    cache = kwargs.get("cache", kwargs.get("past_key_values"))
    if cache is None or not hasattr(cache, "get_seq_length"):
        return 0
    return int(cache.get_seq_length(layer_idx))


def _hidden(output: Any) -> torch.Tensor:
    return output[0] if isinstance(output, (tuple, list)) else output


class _Chunks:
    """Where each example's anchor falls in a chunk of columns [start, start + width).

    Example ``n`` has its anchor at column ``anchor[n]`` of batch row ``rows[n]`` (default: row
    ``n``, one example per row; packed batches hold several examples per row).
    Decided on a CPU copy of the anchors, so the hooks never wait on the GPU (a ``bool()``
    of a device tensor in every layer's hook would serialise the whole forward); the index
    tensors go to the device once per (start, width) and are shared by all layers.
    """

    def __init__(self, anchor: torch.Tensor, rows: torch.Tensor | None = None) -> None:
        self.anchor = anchor.detach().to("cpu", torch.long)
        self.rows = (torch.arange(len(self.anchor)) if rows is None else rows.detach().to("cpu", torch.long))
        if self.rows.shape != self.anchor.shape:
            raise ValueError(f"anchor rows {tuple(self.rows.shape)} and columns {tuple(self.anchor.shape)} differ")
        self._cache: dict[tuple[int, int, torch.device], tuple | None] = {}

    def locate(self, start: int, width: int, device: torch.device):
        """(examples, their rows, their local columns — on device —, every example hit) or None."""
        key = (start, width, device)
        if key not in self._cache:
            local = self.anchor - start
            mask = (local >= 0) & (local < width)
            if not bool(mask.any()):
                self._cache[key] = None
            else:
                examples = torch.nonzero(mask).squeeze(1)
                self._cache[key] = (examples.to(device), self.rows[examples].to(device), local[examples].to(device),
                                    bool(mask.all()))
        return self._cache[key]


class Capture:
    """Hooks that read every layer's FFN output (and optionally the layer-0 input) at the anchor.

    Only B×L vectors are kept: each layer's full FFN output is referenced just until the
    layer returns, then reduced to its anchor rows.
    """

    def __init__(self, model: nn.Module, anchor: torch.Tensor, paths: ArchPaths | None = None,
                 with_embed: bool = False, rows: torch.Tensor | None = None) -> None:
        self.paths = paths or arch_paths(model)
        self.layers = decoder_layers(model, self.paths)
        self.chunks = _Chunks(anchor, rows)
        self.with_embed = with_embed
        self._vectors: list[torch.Tensor | None] = [None] * len(self.layers)
        self._embed: torch.Tensor | None = None
        self._start = [0] * len(self.layers)
        self._ffn_out: dict[int, torch.Tensor] = {}
        self._handles: list[Any] = []

    # -- hook bodies -------------------------------------------------------------------------
    def _read(self, old: torch.Tensor | None, hidden: torch.Tensor, start: int) -> torch.Tensor | None:
        """``old`` with the rows whose anchor lies in this chunk replaced by ``hidden`` at the anchor."""
        found = self.chunks.locate(start, hidden.shape[1], hidden.device)
        if found is None:
            return old
        examples, rows, local, every = found
        if every:  # the common case: one forward over whole prompts
            return hidden[rows, local]
        merged = old if old is not None else hidden.new_zeros(len(self.chunks.anchor), hidden.shape[-1])
        return merged.index_put((examples,), hidden[rows, local])

    def _pre(self, idx: int):
        def hook(module, args, kwargs):
            self._start[idx] = _chunk_start(kwargs, idx)
            if idx == 0 and self.with_embed:
                hidden = args[0] if args else kwargs["hidden_states"]
                self._embed = self._read(self._embed, hidden, self._start[0])
        return hook

    def _keep_ffn(self, idx: int):
        def hook(module, args, output):
            self._ffn_out[idx] = _hidden(output)
        return hook

    def _post(self, idx: int):
        def hook(module, args, output):
            ffn = self._ffn_out.pop(idx, None)
            if ffn is not None:
                self._vectors[idx] = self._read(self._vectors[idx], ffn, self._start[idx])
        return hook

    # -- lifetime ----------------------------------------------------------------------------
    def attach(self) -> "Capture":
        for idx, layer in enumerate(self.layers):
            self._handles.append(layer.register_forward_pre_hook(self._pre(idx), with_kwargs=True))
            self._handles.append(get_module(layer, self.paths.ffn).register_forward_hook(self._keep_ffn(idx)))
            self._handles.append(layer.register_forward_hook(self._post(idx)))
        return self

    def detach(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()
        self._ffn_out.clear()

    def vectors(self) -> torch.Tensor:
        """FFN outputs at the anchor, ``[B, L, d]``."""
        missing = [i for i, v in enumerate(self._vectors) if v is None]
        if missing:
            raise RuntimeError(f"no forward pass reached the anchor in layers {missing}")
        return torch.stack(self._vectors, dim=1)  # type: ignore[arg-type]

    def embeds(self) -> torch.Tensor:
        """The hidden state entering layer 0 at the anchor, ``[B, d]``."""
        if self._embed is None:
            raise RuntimeError("capture was created without with_embed=True, or no forward reached the anchor")
        return self._embed


@contextlib.contextmanager
def capturing(model: nn.Module, anchor: torch.Tensor, paths: ArchPaths | None = None,
              with_embed: bool = False, rows: torch.Tensor | None = None) -> Iterator[Capture]:
    """Context manager around any forward(s): read anchor FFN outputs; hooks removed on exit.
    ``rows``: the batch row of each anchor (packed batches); default one example per row."""
    capture = Capture(model, anchor, paths, with_embed, rows).attach()
    try:
        yield capture
    finally:
        capture.detach()


def decoder_body(model: nn.Module) -> nn.Module:
    """The transformer body without the LM head (captures need no logits over the vocabulary); through
    a PEFT wrapper, the wrapped model's body (its LoRA layers included)."""
    model = unwrap(model)
    body = getattr(model, "base_model", None)
    return body if isinstance(body, nn.Module) and body is not model else model


def capture_ffn(model: nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor | None,
                anchor: torch.Tensor, with_embed: bool = False, paths: ArchPaths | None = None,
                rows: torch.Tensor | None = None, position_ids: torch.Tensor | None = None):
    """One forward pass; returns FFN outputs at ``anchor`` for every layer, ``[N, L, d]``
    (and the layer-0 input at the anchor, ``[N, d]``, when ``with_embed``).

    Runs under the caller's grad mode: inside ``torch.no_grad()`` for collection, with
    gradients for the training English pass. Packed rows: ``rows`` gives each anchor's row,
    ``position_ids`` restart per example and ``attention_mask`` is None (transformers then
    confines attention to each example).
    """
    paths = paths or arch_paths(model)
    with capturing(model, anchor, paths, with_embed, rows) as capture:
        decoder_body(model)(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                            use_cache=False)
        vectors = capture.vectors()
        return (vectors, capture.embeds()) if with_embed else vectors


@contextlib.contextmanager
def connected(model: nn.Module, anchor: torch.Tensor, vectors: torch.Tensor, inject_layer: int = 0,
              paths: ArchPaths | None = None, rows: torch.Tensor | None = None) -> Iterator[None]:
    """Every forward inside adds ``vectors[n]`` to the FFN output of decoder layer ``inject_layer``
    at column ``anchor[n]`` of row ``rows[n]`` (default: row n), and nowhere else.

    Adding to the FFN output equals adding to the layer's output (the FFN output is the last
    term of the residual sum), which is where the hook adds it.
    """
    paths = paths or arch_paths(model)
    layers = decoder_layers(model, paths)
    if not 0 <= inject_layer < len(layers):
        raise ValueError(f"inject_layer={inject_layer} out of range for a model with {len(layers)} layers")
    if vectors.dim() != 2 or vectors.shape[0] != anchor.shape[0]:
        raise ValueError(f"vectors must be [B, d] with B={anchor.shape[0]}, got {tuple(vectors.shape)}")
    layer = layers[inject_layer]
    start = [0]
    chunks = _Chunks(anchor, rows)

    def pre(module, args, kwargs):
        start[0] = _chunk_start(kwargs, inject_layer)

    def post(module, args, output):
        hidden = _hidden(output)
        found = chunks.locate(start[0], hidden.shape[1], hidden.device)
        if found is None:
            return None  # a decoding step after the prefill: untouched
        examples, rows, local, _ = found
        # out of place: autograd sees hidden + v at (row, anchor), gradients reach both
        hidden = hidden.index_put((rows, local), vectors[examples.to(vectors.device)].to(hidden.dtype),
                                  accumulate=True)
        if isinstance(output, tuple):
            return (hidden, *output[1:])
        if isinstance(output, list):
            return [hidden, *output[1:]]
        return hidden

    handles = [layer.register_forward_pre_hook(pre, with_kwargs=True), layer.register_forward_hook(post)]
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()
