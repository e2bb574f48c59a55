"""CCTuningModel: a stock causal LM + the Decision Maker, computing the two-pass CC step.

    model = CCTuningModel(AutoModelForCausalLM.from_pretrained("models/base"))
    out = model(**batch)          # batch from cc_core.train.CCCollator
    out.loss.backward()

docs/method.md, Training: (1) English prompt pass → FFN outputs at the English anchor for all L
layers; (2) the Decision Maker picks one from mean_l(a_l) + the non-English anchor
embedding; (3) non-English prompt+response pass with that vector added to the FFN output of
``inject_layer`` at the non-English anchor; (4) cross-entropy on response tokens only.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import torch
import torch.nn as nn

from cc_core.modeling.architectures import ArchPaths, arch_paths, decoder_layers, get_module, is_wrapped, unwrap
from cc_core.modeling.decision import DecisionMaker
from cc_core.modeling.hooks import capture_ffn, connected


@dataclass
class CCOutput:
    loss: torch.Tensor | None
    logits: torch.Tensor | None
    choice: torch.Tensor  # [B, L] the Decision Maker's selection (one-hot in gumbel/argmax mode)

    # The HF Trainer indexes outputs like a tuple/dict.
    def __getitem__(self, key):
        if isinstance(key, str):
            return getattr(self, key)
        return (self.loss, self.logits, self.choice)[key]


class CCTuningModel(nn.Module):
    # Like HF causal LMs: the loss is normalised by the Trainer's token count under gradient accumulation.
    accepts_loss_kwargs = True

    def __init__(self, model: nn.Module, decision_maker: DecisionMaker | None = None, inject_layer: int = 0,
                 decision_mode: str = "gumbel", gumbel_tau: float = 1.0, detach_english: bool = True,
                 arch_map: ArchPaths | Mapping[str, str] | None = None, decision_maker_init: str = "model") -> None:
        """``decision_maker_init`` (a new Decision Maker only): ``model`` = normal(0, the model's
        ``initializer_range``), the reference's effective init; ``linear`` = ``nn.Linear``'s default."""
        super().__init__()
        self.model = model
        self.paths = arch_paths(model, arch_map)
        num_layers = len(decoder_layers(model, self.paths))
        text_config = model.config.get_text_config()
        hidden = text_config.hidden_size
        if decision_maker is None:
            if decision_maker_init not in ("model", "linear"):
                raise ValueError(f"decision_maker_init={decision_maker_init!r}; valid: model, linear")
            std = getattr(text_config, "initializer_range", 0.02) if decision_maker_init == "model" else None
            decision_maker = DecisionMaker(hidden, num_layers, gumbel_tau, init_std=std)
            # beside LoRA adapters it trains in float32 like them, whatever the frozen base's dtype
            dtype = torch.float32 if is_wrapped(model) else next(model.parameters()).dtype
            decision_maker.to(device=model.device, dtype=dtype)
        self.decision_maker = decision_maker
        self.inject_layer = inject_layer
        self.decision_mode = decision_mode
        self.gumbel_tau = gumbel_tau
        self.detach_english = detach_english
        if not 0 <= inject_layer < num_layers:
            raise ValueError(f"train.inject_layer={inject_layer} out of range (model has {num_layers} layers)")

    # Attributes the HF Trainer and DeepSpeed look for on the wrapped model.
    @property
    def config(self):
        return self.model.config

    @property
    def quantization_method(self):
        """The base's (QLoRA: bitsandbytes): the Trainer then leaves the model where it loaded (a 4-bit
        model cannot be moved with ``.to``)."""
        return getattr(unwrap(self.model), "quantization_method", None)

    @property
    def num_layers(self) -> int:
        return self.decision_maker.proj.out_features

    def activation_checkpointing_enable(self, activation_checkpointing_kwargs=None, **kwargs) -> None:
        """Gradient checkpointing of the base model (the Trainer calls this).

        Non-reentrant by default, so gradients reach the captured English activations when
        ``detach_english`` is off (reentrant checkpointing would silently detach them).
        """
        ckpt_kwargs = {"use_reentrant": False, **(activation_checkpointing_kwargs or {})}
        unwrap(self.model).activation_checkpointing_enable(activation_checkpointing_kwargs=ckpt_kwargs, **kwargs)
        if is_wrapped(self.model):  # frozen embeddings: a reentrant checkpoint's input would need no grad
            unwrap(self.model).enable_input_require_grads()

    gradient_checkpointing_enable = activation_checkpointing_enable

    def english_activations(self, en_input_ids: torch.Tensor, en_attention_mask: torch.Tensor | None,
                            en_anchor: torch.Tensor, en_anchor_row: torch.Tensor | None = None,
                            en_position_ids: torch.Tensor | None = None) -> torch.Tensor:
        """FFN outputs at the English anchor, ``[B, L, d]``.

        ``detach_english`` (default) is the authors' effective computation: under their reentrant
        gradient checkpointing the English pass ran without autograd. Running it under ``no_grad``
        gives the same loss and gradients, and skips the English pass's graph and its backward.
        """
        def run():
            return capture_ffn(self.model, en_input_ids, en_attention_mask, en_anchor, paths=self.paths,
                               rows=en_anchor_row, position_ids=en_position_ids)

        if self.detach_english:
            with torch.no_grad():
                return run()
        return run()

    def anchor_embeds(self, input_ids: torch.Tensor, anchor: torch.Tensor,
                      rows: torch.Tensor | None = None) -> torch.Tensor:
        """The hidden state entering layer 0 at the anchor (embedding, scaled where the model scales it)."""
        rows = torch.arange(input_ids.shape[0], device=input_ids.device) if rows is None else rows
        tokens = input_ids[rows, anchor]
        return get_module(unwrap(self.model), self.paths.embed)(tokens)

    def forward(self, input_ids: torch.Tensor, anchor: torch.Tensor, en_input_ids: torch.Tensor,
                en_anchor: torch.Tensor, attention_mask: torch.Tensor | None = None,
                en_attention_mask: torch.Tensor | None = None, labels: torch.Tensor | None = None,
                decision_mode: str | None = None, num_items_in_batch: int | torch.Tensor | None = None,
                position_ids: torch.Tensor | None = None, anchor_row: torch.Tensor | None = None,
                en_position_ids: torch.Tensor | None = None, en_anchor_row: torch.Tensor | None = None,
                **_: object) -> CCOutput:
        """Padded batches: one example per row, anchors are columns. Packed batches (train.packing):
        several examples per row, ``*_anchor_row`` give each example's row, ``*position_ids`` restart
        per example and the attention masks are None (attention stays inside each example)."""
        acts = self.english_activations(en_input_ids, en_attention_mask, en_anchor, en_anchor_row, en_position_ids)
        vectors, choice = self.decision_maker.select(
            acts, self.anchor_embeds(input_ids, anchor, anchor_row), decision_mode or self.decision_mode,
            self.gumbel_tau)
        with connected(self.model, anchor, vectors, self.inject_layer, self.paths, rows=anchor_row):
            out = self.model(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                             labels=labels, use_cache=False,
                             **({"num_items_in_batch": num_items_in_batch} if num_items_in_batch is not None else {}))
        return CCOutput(out.loss, out.logits, choice.detach())
