"""Random CC parts for generation and scoring tests: ``from cc_helpers import random_cc, random_transform``."""

from __future__ import annotations

import torch

from cc_core.modeling import CCTuningModel
from cc_core.modeling.transform_matrix import TransformMatrix


def random_cc(model, seed: int = 1) -> CCTuningModel:
    """A CCTuningModel around ``model`` with a randomly initialised Decision Maker (normal(0, 1):
    its choices differ between prompts)."""
    cc = CCTuningModel(model, inject_layer=0).eval()
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        weight = cc.decision_maker.proj.weight
        weight.copy_(torch.nn.init.normal_(torch.empty_like(weight), generator=gen))
    return cc


def random_transform(d: int = 64, seed: int = 2, scale: float = 0.3) -> TransformMatrix:
    """A random d × d Transform Matrix (the tiny models' hidden size is 64)."""
    gen = torch.Generator().manual_seed(seed)
    return TransformMatrix(torch.randn(d, d, generator=gen) * scale, None, {}, {"test": True})
