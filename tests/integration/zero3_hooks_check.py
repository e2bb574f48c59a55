"""Capture and connection hooks on a model whose parameters ZeRO-3 has partitioned (one CPU process, gloo).

    python tests/integration/zero3_hooks_check.py models/base      # prints a JSON report

Run as its own process by tests/integration/test_train.py: DeepSpeed's process group and its
module hooks must not leak into the test session.
"""

from __future__ import annotations

import copy
import json
import sys

import torch


def main(base_dir: str) -> None:
    import deepspeed

    from cc_core.modeling import capture_ffn, connected
    from cc_core.modeling.loading import load_model_dir
    from cc_core.prompts import anchor_positions, encode_prompt, pad_sequences, pad_token_id
    from cc_core.training.distributed import init_distributed_for_deepspeed

    init_distributed_for_deepspeed()
    plain, tokenizer = load_model_dir(base_dir)
    plain.eval()
    sharded = copy.deepcopy(plain)
    config = {"train_micro_batch_size_per_gpu": 2, "gradient_accumulation_steps": 1,
              "zero_optimization": {"stage": 3, "stage3_param_persistence_threshold": 0}}
    optimizer = torch.optim.AdamW(sharded.parameters(), lr=1e-4)
    engine, *_ = deepspeed.initialize(model=sharded, optimizer=optimizer, config=config)
    engine.eval()
    module = engine.module
    # Partitioned: each parameter's local storage is empty until DeepSpeed gathers it for a forward.
    partitioned = all(p.numel() == 0 and hasattr(p, "ds_id") for p in module.parameters())

    def hook_count() -> int:  # DeepSpeed's own hooks plus any of ours
        return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in module.modules())

    hooks_before = hook_count()
    prompts = ["Was ist die Hauptstadt von Frankreich?", "2+2?"]
    encoded = [encode_prompt(tokenizer, p).input_ids for p in prompts]
    ids, mask = pad_sequences(encoded, pad_token_id(tokenizer), "left")
    anchor = anchor_positions([len(e) for e in encoded], ids.shape[1], "left")
    with torch.no_grad():
        want = capture_ffn(plain, ids, mask, anchor)
        got = capture_ffn(module, ids, mask, anchor)
        vectors = torch.randn(2, plain.config.hidden_size, generator=torch.Generator().manual_seed(0))
        with connected(plain, anchor, vectors, inject_layer=1):
            want_logits = plain(input_ids=ids, attention_mask=mask).logits
        with connected(module, anchor, vectors, inject_layer=1):
            got_logits = module(input_ids=ids, attention_mask=mask).logits
        unconnected = module(input_ids=ids, attention_mask=mask).logits
    print(json.dumps({
        "partitioned": partitioned,
        "capture_max_abs_diff": float((got - want).abs().max()),
        "capture_norm": float(want.norm()),
        "connected_max_abs_diff": float((got_logits - want_logits).abs().max()),
        "connection_effect": float((got_logits - unconnected).abs().max()),
        "hooks_before": hooks_before,
        "hooks_after": hook_count(),
    }))


if __name__ == "__main__":
    main(sys.argv[1])
