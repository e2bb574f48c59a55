"""Batch planning for generation: which prompts share a batch, and how many fit (``batch_size="auto"``).

    batches = plan_batches(lengths, batch_size=8)      # index lists, longest prompts first
    padding_fraction(lengths, batches)                 # share of padded prompt columns

Prompts are sorted by token count (longest first) and cut into batches in that order, so each batch
holds prompts of similar length; the sizes (never above ``batch_size``, as few batches as it allows)
are chosen to pad least.
"""

from __future__ import annotations

import torch

AUTO_BATCH_CPU = 8  # batch_size="auto" off an accelerator
AUTO_BATCH_MAX = 128  # batch_size="auto" never goes above this (more prompts per batch, more padding)
AUTO_MEMORY_FRACTION = 0.8  # batch_size="auto" plans for this share of the free accelerator memory
AUTO_PROBE_ROWS = 2  # rows of the probing prefill that measures the memory per prompt


def batch_order(lengths: list[int]) -> list[int]:
    """Indices by length, longest first (ties in input order): consecutive batches of this order
    hold prompts of similar length, so little padding."""
    return sorted(range(len(lengths)), key=lambda i: (-lengths[i], i))


def plan_batches(lengths: list[int], batch_size: int) -> list[list[int]]:
    """Prompt indices in batches: as few batches as ``batch_size`` allows (⌈n / batch_size⌉), each a
    run of the longest-first order, with the sizes that pad least. Cutting that order into full
    batches leaves the remainder to the shortest prompts, which is not always best; the deficit
    (fewer than ``batch_size`` missing places in all) is spread by dynamic programming over (batch,
    places missing so far): at most ⌈n / batch_size⌉ × batch_size² / 2 steps."""
    order = batch_order(lengths)
    n = len(order)
    if n == 0:
        return []
    count = -(-n // batch_size)
    slack = count * batch_size - n
    ordered = [lengths[i] for i in order]
    # best[d]: least padded area of the batches so far with d places missing; a batch's area is its
    # first (longest) prompt's length times its size
    best = {0: 0}
    choices: list[dict[int, int]] = []
    for group in range(count):
        step: dict[int, tuple[int, int]] = {}
        for missing, area in best.items():
            start = group * batch_size - missing
            for more in range(0, slack - missing + 1):
                size = batch_size - more
                if size < 1 or start + size > n:
                    continue
                total = area + ordered[start] * size
                key = missing + more
                if key not in step or total < step[key][0]:
                    step[key] = (total, more)
        best = {key: value[0] for key, value in step.items()}
        choices.append({key: value[1] for key, value in step.items()})
    sizes, missing = [], slack
    for group in reversed(range(count)):
        more = choices[group][missing]
        sizes.append(batch_size - more)
        missing -= more
    batches, start = [], 0
    for size in reversed(sizes):
        batches.append(order[start:start + size])
        start += size
    return batches


def padding_fraction(lengths: list[int], batches: list[list[int]]) -> float:
    """Share of the prompt columns that are padding in ``batches`` (each left-padded to its longest)."""
    padded = sum(max(lengths[i] for i in batch) * len(batch) for batch in batches)
    real = sum(lengths[i] for batch in batches for i in batch)
    return (padded - real) / padded if padded else 0.0


def fixed_batches(order: list[int], batch_size: int) -> list[list[int]]:
    """``order`` cut into consecutive batches of ``batch_size`` (the last one shorter)."""
    return [order[start:start + batch_size] for start in range(0, len(order), batch_size)]


def batch_from_memory(free_bytes: float, per_prompt_bytes: float) -> int:
    """The ``batch_size="auto"`` rule: ``AUTO_MEMORY_FRACTION`` of the free memory over the memory one
    prompt needs, between 1 and ``AUTO_BATCH_MAX``."""
    if per_prompt_bytes <= 0:
        return AUTO_BATCH_MAX
    return max(1, min(AUTO_BATCH_MAX, int(free_bytes * AUTO_MEMORY_FRACTION // per_prompt_bytes)))


def free_accelerator_memory(device: torch.device) -> int:
    """Free bytes on a CUDA device, counting what PyTorch's allocator holds but does not use."""
    free, _ = torch.cuda.mem_get_info(device)
    return int(free + torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device))


def probe_memory(model, width: int, pad_id: int, new_cache) -> int:
    """Peak bytes above the resident ones of a plain prefill of ``AUTO_PROBE_ROWS`` prompts of ``width``
    tokens into ``new_cache(rows, width)`` (a static cache of the full length): what those rows' KV cache
    and activations take, weights excluded (already resident)."""
    device = next(model.parameters()).device
    torch.cuda.synchronize(device)
    base = torch.cuda.memory_allocated(device)
    torch.cuda.reset_peak_memory_stats(device)
    ids = torch.full((AUTO_PROBE_ROWS, width), pad_id, dtype=torch.long, device=device)
    mask = torch.ones_like(ids)
    with torch.no_grad():
        cache = new_cache(AUTO_PROBE_ROWS, width)
        model(input_ids=ids, attention_mask=mask, cache=cache, use_cache=True, logits_to_keep=1)
        del cache
    torch.cuda.synchronize(device)
    return max(torch.cuda.max_memory_allocated(device) - base, 1)
