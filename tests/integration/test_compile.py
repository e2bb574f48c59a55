"""train.compile: torch.compile of the decoder layers' submodules leaves the CC step's numbers unchanged
(the capture and connection hooks stay outside the compiled forwards). Slow: inductor compiles on CPU."""

from __future__ import annotations

import copy

import pytest
import torch

from cc_core.modeling import CCTuningModel
from cc_core.training.data import PackedCollator, encode_records
from cc_core.training.kernels import compile_decoder

pytestmark = pytest.mark.integration


def test_compiled_decoder_gives_the_eager_loss_and_gradients(tiny_factory):
    from cc_core.data.records import Record

    base, tok = tiny_factory("llama", seed=6)
    base.config.use_cache = False
    records = [Record("a", "de", "Was ist 2+2?", "Vier.", "What is 2+2?"),
               Record("b", "fr", "Quelle heure est-il ?", "Midi.", "What time is it?")]
    features, _ = encode_records(records, tok, 128, "cc")
    batch = PackedCollator(tok.pad_token_id)(features)
    batch = {k: v for k, v in batch.items() if isinstance(v, torch.Tensor)}
    results = []
    for compiled in (False, True):
        model = copy.deepcopy(base).train()
        if compiled:
            compile_decoder(model)
        torch.manual_seed(0)
        cc = CCTuningModel(model)
        for _ in range(2):  # the second step runs the cached graphs
            cc.zero_grad(set_to_none=True)
            torch.manual_seed(1)
            out = cc(**batch)
            out.loss.backward()
        results.append((out.loss.detach(), {n: p.grad.clone() for n, p in cc.named_parameters() if p.grad is not None}))
    (loss_e, grads_e), (loss_c, grads_c) = results
    torch.testing.assert_close(loss_c, loss_e, rtol=1e-4, atol=1e-5)
    assert grads_e.keys() == grads_c.keys()
    for name in grads_e:
        torch.testing.assert_close(grads_c[name], grads_e[name], rtol=1e-3, atol=1e-5, msg=name)
