"""The ``collect`` stage: FFN outputs at the anchor for held-out parallel pairs (docs/method.md, Transform Matrix).

    cctune collect                 # models/cc + data/prepared/pairs.jsonl → activations/

With the trained model and no connection, each pair's non-English prompt and its English
prompt go through the model in padding-aware batches (sorted by length); the FFN outputs at
the anchor of all L layers are kept: ``B_i, A_i ∈ R^{L×d}``. Output:

    activations/index.json                 record ids, languages, shard list, model content hash
    activations/shard-00000.safetensors    "nonen": [n, L, d], "en": [n, L, d] (float32)

Pairs are matched by record id (both sides come from the same record), never by file order.
Shards are written as they fill, so memory stays bounded by ``collect.shard_size``.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import save_file

from cc_core.config import CollectParams
from cc_core.data.records import read_records
from cc_core.io import InputError, atomic_dir, write_json
from cc_core.lineage import checkpoint_sha256
from cc_core.modeling.architectures import arch_paths
from cc_core.modeling.hooks import capture_ffn
from cc_core.modeling.loading import load_inference_model
from cc_core.prompts import AnchorRule, anchor_rule, encode_prompt, pad_sequences, pad_token_id

log = logging.getLogger(__name__)
INDEX = "index.json"


@dataclass(frozen=True)
class CollectResult:
    out_dir: str
    pairs: int
    shards: int
    num_layers: int
    hidden_size: int
    seconds: float
    pairs_per_s: float
    model_sha256: str


@torch.no_grad()
def anchor_activations(model, tokenizer, prompts: list[str], batch_size: int, max_len: int | None = None,
                       paths=None, add_special_tokens: bool = False, rule: AnchorRule | None = None) -> torch.Tensor:
    """``[n, L, d]`` FFN outputs at each prompt's anchor; batches sorted by length to cut padding.
    ``add_special_tokens``, ``rule``: as ``encode_prompt`` (the authors: a second BOS, their anchors)."""
    prompts_encoded = [encode_prompt(tokenizer, p, max_len, add_special_tokens, rule) for p in prompts]
    encoded = [e.input_ids for e in prompts_encoded]
    order = sorted(range(len(encoded)), key=lambda i: len(encoded[i]))
    out: list[torch.Tensor | None] = [None] * len(encoded)
    pad = pad_token_id(tokenizer)
    device = next(model.parameters()).device
    for start in range(0, len(order), batch_size):
        chunk = order[start:start + batch_size]
        ids, mask = pad_sequences([encoded[i] for i in chunk], pad, "right")
        anchor = torch.tensor([prompts_encoded[i].anchor for i in chunk])
        acts = capture_ffn(model, ids.to(device), mask.to(device), anchor.to(device), paths=paths).float().cpu()
        for row, index in enumerate(chunk):
            out[index] = acts[row]
    return torch.stack(out)  # type: ignore[arg-type]


def collect(params: CollectParams, model_dir: str | Path = "models/cc",
            pairs_file: str | Path = "data/prepared/pairs.jsonl", out_dir: str | Path = "activations",
            max_prompt_len: int = 1024, anchor: str = "last_prompt_token") -> CollectResult:
    """The first ``collect.num_pairs`` pairs of ``pairs_file`` (in its order: the draw order of a sampled
    file, so ``fit.holdout_split: last`` holds out the last draws). ``anchor``: ``model.anchor``."""
    pairs_file = Path(pairs_file)
    records = read_records(pairs_file)[: params.num_pairs]
    if not records:
        raise InputError(f"{pairs_file}: no parallel pairs to collect (empty file; raise data.num_pairs)")
    model, tokenizer, cc = load_inference_model(model_dir)
    paths = cc.paths if cc is not None else arch_paths(model)
    rule = anchor_rule(tokenizer, anchor)
    model_hash = checkpoint_sha256(model_dir)  # the activations' lineage: fit and eval check it
    started = time.perf_counter()
    shards: list[dict] = []
    with atomic_dir(out_dir) as tmp:
        for shard_no, start in enumerate(range(0, len(records), params.shard_size)):
            chunk = records[start:start + params.shard_size]
            nonen = anchor_activations(model, tokenizer, [r.instruction for r in chunk], params.batch_size,
                                       max_prompt_len, paths, params.add_special_tokens, rule)
            english = anchor_activations(model, tokenizer, [r.instruction_en for r in chunk], params.batch_size,
                                         max_prompt_len, paths, params.add_special_tokens, rule)
            for name, tensor in (("non-English", nonen), ("English", english)):
                bad = ~torch.isfinite(tensor).all(dim=(1, 2))
                if bad.any():
                    ids = [chunk[i].id for i in torch.nonzero(bad).squeeze(1).tolist()]
                    raise InputError(f"{model_dir}: non-finite {name} activations for pairs {ids[:5]} "
                                     "(the model produces NaN/inf; check its weights and dtype)")
            name = f"shard-{shard_no:05d}.safetensors"
            save_file({"nonen": nonen.contiguous(), "en": english.contiguous()}, str(tmp / name),
                      metadata={"model_sha256": model_hash, "pairs": str(len(chunk))})
            shards.append({"file": name, "ids": [r.id for r in chunk], "langs": [r.lang for r in chunk]})
            log.info("collected %d/%d pairs", start + len(chunk), len(records))
        seconds = time.perf_counter() - started
        num_layers, hidden = int(nonen.shape[1]), int(nonen.shape[2])
        write_json(tmp / INDEX, {"model_dir": str(model_dir), "model_sha256": model_hash, "pairs": len(records),
                                 "num_layers": num_layers, "hidden_size": hidden, "dtype": "float32",
                                 "shards": shards})
    return CollectResult(str(out_dir), len(records), len(shards), num_layers, hidden, round(seconds, 3),
                         round(len(records) / seconds, 3), model_hash)
