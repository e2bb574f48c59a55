"""Generation throughput: CC `transform` mode vs the plain model vs a reference-style loop, same run.

    python bench/generate.py --model smollm2-135m-instruct
    python bench/generate.py --model tiny-random-llama                  # seconds
    python bench/generate.py --model llama-1b --device cuda              # GPU

Same prompts (bundled benchmark fixture, several languages), same batch, greedy, a fixed
number of new tokens (EOS ignored so every mode does the same work). The reference-style
loop mirrors the authors' inference: one example at a time, two full passes over the prompt
(capture, then connected prefill), then a plain Python greedy loop (with a KV cache).
Targets: transform/plain ≥ 0.8.
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
from cc_core.modeling import CCTuningModel, capture_ffn, connected  # noqa: E402
from cc_core.prompts import encode_prompt  # noqa: E402
from cc_core.transform import TransformMatrix  # noqa: E402


def bench_prompts(count: int) -> tuple[list[str], list[str]]:
    items = []
    for bench, lang in (("XNLI", "zh"), ("MKQA", "de"), ("XStoryCloze", "ru"), ("MMMLU", "sw"), ("XQuAD", "ar"),
                        ("XNLI", "hi"), ("MKQA", "ja"), ("MMMLU", "es")):
        items += load_benchmark(bench, lang, "bundled")
    items = (items * (count // len(items) + 1))[:count]
    return [i.prompt for i in items], [i.lang for i in items]


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
    parser.add_argument("--repeats", type=int, default=3, help="measured runs of plain and transform (median)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args()
    dtype = torch.bfloat16 if args.device.startswith("cuda") else torch.float32
    model, tokenizer = load_model(args.model, dtype, args.device)
    torch.manual_seed(0)
    cc = CCTuningModel(model.eval(), decision_mode="argmax").to(args.device)
    torch.nn.init.normal_(cc.decision_maker.proj.weight, std=0.02)
    d = model.config.hidden_size
    transform = TransformMatrix(torch.eye(d) + 0.01 * torch.randn(d, d), None, {}, {})
    prompts, langs = bench_prompts(args.prompts)
    common = dict(max_new_tokens=args.new_tokens, batch_size=args.batch, decision_mode="argmax")
    plain = Generator(model, tokenizer, mode="none", **common)
    method = Generator(model, tokenizer, cc, transform, mode="transform", **common)
    for generator in (plain, method):
        generator.eos_ids = []  # fixed work per prompt: no early stop
    runs = {"plain": lambda: plain.generate(prompts, langs), "transform": lambda: method.generate(prompts, langs)}
    seconds = interleaved(runs, args.repeats, args.device)  # median of round-robin runs
    sync(args.device)
    start = time.perf_counter()  # the reference loop is slow: one measured run
    reference_loop(cc, tokenizer, transform, prompts, langs, args.new_tokens, args.device)
    sync(args.device)
    seconds["reference_loop"] = time.perf_counter() - start
    results = {name: len(prompts) * args.new_tokens / value for name, value in seconds.items()}
    for name, value in seconds.items():
        print(f"  {name:15s} {value:8.2f} s  {results[name]:9.1f} new tokens/s")
    print(f"model={args.model} device={args.device} prompts={len(prompts)} batch={args.batch} "
          f"new_tokens={args.new_tokens}")
    footer({"transform_over_plain_tokens_per_s": results["transform"] / results["plain"],
            "transform_over_reference_loop": results["transform"] / results["reference_loop"]})


if __name__ == "__main__":
    main()
