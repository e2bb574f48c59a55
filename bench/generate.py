"""Generation throughput: the fast path (static KV cache, optionally compiled decoding) in all three
modes against today's plain path (dynamic cache), and CC `transform` mode against a reference-style
loop; same run, same prompts, and the same tokens checked.

    python bench/generate.py --model smollm2-135m-instruct                 # static cache, eager
    python bench/generate.py --model tiny-random-llama                     # seconds
    python bench/generate.py --model llama-1b --device cuda --prompts 64 --batch 32 --compile   # GPU

Same prompts (bundled benchmark fixture, several languages), same batch, greedy, a fixed number of
new tokens (EOS ignored so every mode does the same work). Measured: today's `plain` (mode none,
dynamic cache, the baseline) and `transform` (dynamic); the fast path (`--cache`, `--compile`) in
modes none, transform and parallel (the English parallel prompts of the fixture). Runs are
round-robin, the first round a warm-up (and compilation) whose outputs are compared token for token:
`fast_same_tokens` is the share of prompts whose tokens equal today's path in every mode (1.0 on a
CPU in float32; bf16 kernels of other shapes may flip a near tie). The reference-style loop mirrors
the authors' inference: one example at a time, two full passes over the prompt (capture, then
connected prefill), then a plain Python greedy loop (with a KV cache).

Headline (last lines): `fast_over_plain_tokens_per_s` (fast none / today's plain; GPU goal ≥ 3.5 at
llama-1b batch 32), `fast_transform_over_plain_tokens_per_s`, `fast_parallel_over_plain_tokens_per_s`,
`transform_over_plain_tokens_per_s` (fast transform / fast none; target ≥ 0.95),
`parallel_over_plain_tokens_per_s`, `fast_same_tokens` (target 1.0).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import footer, interleaved, load_model, sync  # noqa: E402

from cc_core.data.benchmarks import load_benchmark  # noqa: E402
from cc_core.generate import Generator  # noqa: E402
from cc_core.generation.batching import fixed_batches, padding_fraction, plan_batches  # noqa: E402
from cc_core.modeling import CCTuningModel, capture_ffn, connected  # noqa: E402
from cc_core.prompts import encode_prompt  # noqa: E402
from cc_core.modeling.transform_matrix import TransformMatrix  # noqa: E402


def bench_prompts(count: int) -> tuple[list[str], list[str], list[str | None]]:
    items = []
    for bench, lang in (("XNLI", "zh"), ("MKQA", "de"), ("XStoryCloze", "ru"), ("MMMLU", "sw"), ("XQuAD", "ar"),
                        ("XNLI", "hi"), ("MKQA", "ja"), ("MMMLU", "es")):
        items += load_benchmark(bench, lang, "bundled")
    items = (items * (count // len(items) + 1))[:count]
    return [i.prompt for i in items], [i.lang for i in items], [i.prompt_en for i in items]


@torch.no_grad()
def reference_loop(cc: CCTuningModel, tokenizer, transform: TransformMatrix, prompts, langs, new_tokens, device):
    """One example at a time: full capture pass, full connected prefill, Python greedy loop."""
    model, produced = cc.model, 0
    for prompt, lang in zip(prompts, langs):
        ids = torch.tensor([encode_prompt(tokenizer, prompt).input_ids], device=device)
        anchor = torch.tensor([ids.shape[1] - 1], device=device)
        acts, embeds = capture_ffn(model, ids, None, anchor, with_embed=True)
        vector, _ = cc.decision_maker.select(transform.apply(acts, [lang]), embeds, "argmax")
        with connected(model, anchor, vector, cc.inject_layer):
            out = model(input_ids=ids, use_cache=True)
        cache, token = out.cache, out.logits[:, -1].argmax(-1, keepdim=True)
        for _ in range(new_tokens - 1):
            out = model(input_ids=token, cache=cache, use_cache=True)
            cache, token = out.cache, out.logits[:, -1].argmax(-1, keepdim=True)
        produced += new_tokens
    return produced


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="smollm2-135m-instruct")
    parser.add_argument("--prompts", type=int, default=16)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--new-tokens", type=int, default=40)
    parser.add_argument("--repeats", type=int, default=3, help="measured rounds (median)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--cache", choices=("static", "dynamic"), default="static", help="the fast path's KV cache")
    parser.add_argument("--compile", action="store_true", help="torch.compile the fast path's decoding step")
    parser.add_argument("--compile-mode", default=None,
                        help="torch.compile mode (default: reduce-overhead on CUDA, default elsewhere)")
    parser.add_argument("--compile-backend", default="inductor")
    parser.add_argument("--no-reference", action="store_true", help="skip the (slow) reference-style loop")
    args = parser.parse_args()
    dtype = torch.bfloat16 if args.device.startswith("cuda") else torch.float32
    model, tokenizer = load_model(args.model, dtype, args.device)
    torch.manual_seed(0)
    cc = CCTuningModel(model.eval(), decision_mode="argmax").to(args.device)
    torch.nn.init.normal_(cc.decision_maker.proj.weight, std=0.02)
    d = model.config.hidden_size
    transform = TransformMatrix(torch.eye(d) + 0.01 * torch.randn(d, d), None, {}, {})
    prompts, langs, english = bench_prompts(args.prompts)
    common = dict(max_new_tokens=args.new_tokens, batch_size=args.batch, decision_mode="argmax")
    fast = dict(cache=args.cache, compile=args.compile, compile_mode=args.compile_mode,
                compile_backend=args.compile_backend)
    generators = {
        "plain": Generator(model, tokenizer, mode="none", **common),  # today's path: the baseline
        "transform": Generator(model, tokenizer, cc, transform, mode="transform", **common),
        "parallel": Generator(model, tokenizer, cc, mode="parallel", **common),
        "fast": Generator(model, tokenizer, mode="none", **common, **fast),
        "fast_transform": Generator(model, tokenizer, cc, transform, mode="transform", **common, **fast),
        "fast_parallel": Generator(model, tokenizer, cc, mode="parallel", **common, **fast),
    }
    for generator in generators.values():
        generator.eos_ids = []  # fixed work per prompt: no early stop
    runs = {name: (lambda g=g: g.generate(prompts, langs, english)) for name, g in generators.items()
            if name != "parallel"}  # today's parallel: outputs only (below), not timed
    warmup: dict[str, tuple[float, list]] = {}  # the warm-up round's outputs are compared below
    seconds = interleaved(runs, args.repeats, args.device, warmup)
    outputs = {name: result for name, (_, result) in warmup.items()}
    first = {name: elapsed for name, (elapsed, _) in warmup.items()}
    outputs["parallel"] = generators["parallel"].generate(prompts, langs, english)
    if not args.no_reference:
        sync(args.device)
        start = time.perf_counter()  # the reference loop is slow: one measured run
        reference_loop(cc, tokenizer, transform, prompts, langs, args.new_tokens, args.device)
        sync(args.device)
        seconds["reference_loop"] = time.perf_counter() - start
    results = {name: len(prompts) * args.new_tokens / value for name, value in seconds.items()}
    for name, value in seconds.items():
        print(f"  {name:15s} {value:8.2f} s  {results[name]:9.1f} new tokens/s"
              + (f"  (first round {first[name]:.2f} s)" if name in first else ""))
    same = [all(outputs[f"fast{suffix}"][i].token_ids == outputs[base][i].token_ids
                for base, suffix in (("plain", ""), ("transform", "_transform"), ("parallel", "_parallel")))
            for i in range(len(prompts))]
    lengths = [len(encode_prompt(tokenizer, p).input_ids) for p in prompts]
    by_chars = fixed_batches(sorted(range(len(prompts)), key=lambda i: len(prompts[i])), args.batch)
    print(f"padding share of prompt columns: {padding_fraction(lengths, by_chars):.3f} batches by characters "
          f"(before), {padding_fraction(lengths, plan_batches(lengths, args.batch)):.3f} planned by tokens (now)")
    auto = generators["fast"].auto_batch_size(max(lengths))
    print(f"batch_size=auto picks {auto} for the longest prompt ({max(lengths)} tokens + {args.new_tokens} new)")
    print(f"model={args.model} device={args.device} dtype={str(dtype).split('.')[-1]} prompts={len(prompts)} "
          f"batch={args.batch} new_tokens={args.new_tokens} fast: cache={args.cache} compile={args.compile}"
          + (f" mode={args.compile_mode or 'auto'} backend={args.compile_backend}" if args.compile else ""))
    headline = {
        "plain_tokens_per_s": results["plain"],
        "fast_tokens_per_s": results["fast"],
        "dynamic_transform_over_plain_tokens_per_s": results["transform"] / results["plain"],
    }
    if "reference_loop" in results:
        headline["transform_over_reference_loop"] = results["fast_transform"] / results["reference_loop"]
    headline.update({
        "fast_transform_over_plain_tokens_per_s": results["fast_transform"] / results["plain"],
        "fast_parallel_over_plain_tokens_per_s": results["fast_parallel"] / results["plain"],
        "parallel_over_plain_tokens_per_s": results["fast_parallel"] / results["fast"],
        "transform_over_plain_tokens_per_s": results["fast_transform"] / results["fast"],
        "fast_same_tokens": sum(same) / len(same),
        "fast_over_plain_tokens_per_s": results["fast"] / results["plain"],
    })
    footer(headline)


if __name__ == "__main__":
    main()
