"""The Decision Maker: picks which layer's English FFN activation to inject (docs/method.md, step 2)."""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

MODES = ("gumbel", "argmax", "soft")


class DecisionMaker(nn.Module):
    """``nn.Linear(d, L, bias=False)`` over u = mean_l(acts) + anchor embedding.

    ``select`` returns the chosen vector ``v = Σ_l g_l a_l`` and the selection ``g``:
    - ``gumbel``: hard Gumbel-softmax (one-hot forward, straight-through gradients): training default;
    - ``argmax``: deterministic one-hot of the best score: evaluation default;
    - ``soft``: softmax mixture of all layers (an option).
    """

    def __init__(self, hidden_size: int, num_layers: int, tau: float = 1.0, init_std: float | None = None) -> None:
        """``init_std``: draw the weight from normal(0, init_std), as the reference model's
        ``_init_weights`` does for this key missing from the base checkpoint (``initializer_range``,
        0.02 for Llama); None keeps ``nn.Linear``'s default (uniform, about 0.009 wide at d = 4096)."""
        super().__init__()
        self.proj = nn.Linear(hidden_size, num_layers, bias=False)
        if init_std is not None:
            nn.init.normal_(self.proj.weight, mean=0.0, std=init_std)
        self.tau = tau

    def scores(self, acts: torch.Tensor, anchor_embeds: torch.Tensor) -> torch.Tensor:
        u = acts.mean(dim=1) + anchor_embeds
        return self.proj(u.to(self.proj.weight.dtype))

    def select(self, acts: torch.Tensor, anchor_embeds: torch.Tensor, mode: str = "gumbel",
               tau: float | None = None, noise: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """``acts [B, L, d]``, ``anchor_embeds [B, d]`` → ``(vectors [B, d], choice [B, L])``.

        ``noise [B, L]``: Gumbel(0, 1) samples for ``gumbel`` (seeded inference); None draws them
        from torch's RNG as ``F.gumbel_softmax`` does (training)."""
        if acts.dim() != 3 or acts.shape[1] != self.proj.out_features:
            raise ValueError(f"acts must be [B, {self.proj.out_features}, d], got {tuple(acts.shape)}")
        logits = self.scores(acts, anchor_embeds).float()  # float32: stable softmax under bf16
        tau = self.tau if tau is None else tau
        if mode == "gumbel" and noise is not None:
            soft = torch.softmax((logits + noise.to(logits)) / tau, dim=-1)
            hard = F.one_hot(soft.argmax(dim=-1), logits.shape[-1]).to(soft.dtype)
            choice = hard - soft.detach() + soft  # straight-through, as F.gumbel_softmax(hard=True)
        elif mode == "gumbel":
            choice = F.gumbel_softmax(logits, tau=tau, hard=True)
        elif mode == "argmax":
            choice = F.one_hot(logits.argmax(dim=-1), logits.shape[-1]).to(logits.dtype)
        elif mode == "soft":
            choice = torch.softmax(logits / tau, dim=-1)
        else:
            raise ValueError(f"unknown decision mode {mode!r}; valid: {', '.join(MODES)}")
        vectors = torch.einsum("bl,bld->bd", choice.to(acts.dtype), acts)
        return vectors, choice
