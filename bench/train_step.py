"""Optimizer-step time and tokens/s of CC-Tuning vs vanilla SFT on the same batches, same run.

    python bench/train_step.py --model smollm2-135m-instruct
    python bench/train_step.py --model tiny-random-llama               # seconds
    python bench/train_step.py --model llama-1b --device cuda --dtype bf16 [--deepspeed zero2]   # GPU

A CC step runs the English prompt pass (gradients flow, as in the reference), the Decision
Maker and the connected non-English pass; an SFT step runs the non-English pass alone. The
ideal ratio is (English prompt tokens + non-English tokens) / non-English tokens: what CC
would cost if a step's time were proportional to tokens. Target on CPU: CC/SFT ≤ 1.5.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import bench_tokenizer, footer, load_model, sync  # noqa: E402

from cc_core.data.records import load_bundled  # noqa: E402
from cc_core.modeling import CCTuningModel  # noqa: E402
from cc_core.prompts import pad_token_id  # noqa: E402
from cc_core.train import CCCollator, encode_records  # noqa: E402

PEAK_TFLOPS = {"h100": 989.0, "h200": 989.0, "a100": 312.0}  # dense bf16


def make_batches(tokenizer, batch: int, steps: int, cutoff: int):
    records = load_bundled().records
    features, _ = encode_records(records, tokenizer, cutoff, "cc")
    collate = CCCollator(pad_token_id(tokenizer))
    return [collate(features[i * batch:(i + 1) * batch]) for i in range(steps)]


def engine_for(model, lr: float, deepspeed_stage: str | None, batch: int):
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=lr)
    if not deepspeed_stage:
        return model, optimizer
    import deepspeed

    from cc_core.train import init_distributed_for_deepspeed, resolve_deepspeed

    if torch.cuda.is_available():
        import os

        os.environ.setdefault("RANK", "0")
        os.environ.setdefault("LOCAL_RANK", "0")
        os.environ.setdefault("WORLD_SIZE", "1")
        os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
        os.environ.setdefault("MASTER_PORT", "29512")
        deepspeed.init_distributed()
    else:
        init_distributed_for_deepspeed()
    config = resolve_deepspeed(deepspeed_stage)
    hidden = model.config.hidden_size
    # what the HF Trainer would fill in for the "auto" values
    zero = config["zero_optimization"]
    for key, value in {"reduce_bucket_size": hidden * hidden, "stage3_prefetch_bucket_size": int(0.9 * hidden * hidden),
                       "stage3_param_persistence_threshold": 10 * hidden}.items():
        if zero.get(key) == "auto":
            zero[key] = value
    config.update(train_micro_batch_size_per_gpu=batch, gradient_accumulation_steps=1, gradient_clipping=1.0,
                  bf16={"enabled": next(model.parameters()).dtype == torch.bfloat16})
    engine, optimizer, _, _ = deepspeed.initialize(model=model, optimizer=optimizer, config=config)
    return engine, optimizer


class Trainee:
    """One method's model + optimizer (+ DeepSpeed engine) and its step timings."""

    def __init__(self, method: str, args, dtype) -> None:
        model, _ = load_model(args.model, dtype, args.device)
        model.train()
        model.config.use_cache = False  # as in cc_core.train: no KV cache while training
        if args.gradient_checkpointing:
            model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
        self.method, self.args = method, args
        self.net = CCTuningModel(model) if method == "cc" else model
        self.engine, self.optimizer = engine_for(self.net, 1e-5, args.deepspeed, args.batch)
        self.times: list[float] = []
        self.tokens = 0
        self.params = sum(p.numel() for p in self.net.parameters())

    def step(self, batch: dict, measure: bool) -> None:
        args = self.args
        batch = {k: v.to(args.device) for k, v in batch.items()}
        if self.method == "sft":
            batch = {k: batch[k] for k in ("input_ids", "attention_mask", "labels")}
        sync(args.device)
        start = time.perf_counter()
        loss = self.engine(**batch).loss
        if args.deepspeed:
            self.engine.backward(loss)
            self.engine.step()
        else:
            loss.backward()
            self.optimizer.step()
            self.optimizer.zero_grad(set_to_none=True)
        sync(args.device)
        if measure:
            self.times.append(time.perf_counter() - start)
            self.tokens += int(batch["attention_mask"].sum())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="smollm2-135m-instruct")
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--steps", type=int, default=6, help="measured steps (after --warmup)")
    parser.add_argument("--warmup", type=int, default=3, help="unmeasured steps (CUDA init, autotuning)")
    parser.add_argument("--cutoff", type=int, default=256)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--dtype", choices=["fp32", "bf16"], default=None)
    parser.add_argument("--deepspeed", default=None, help="zero0 | zero2 | zero3 (GPU or CPU/gloo)")
    parser.add_argument("--gradient-checkpointing", action="store_true")
    parser.add_argument("--gpu", default="h100", choices=sorted(PEAK_TFLOPS), help="for MFU")
    args = parser.parse_args()
    dtype = torch.bfloat16 if (args.dtype or ("bf16" if args.device.startswith("cuda") else "fp32")) == "bf16" \
        else torch.float32
    tokenizer = bench_tokenizer()  # every model here shares SmolLM2's tokenizer and chat template
    batches = make_batches(tokenizer, args.batch, args.steps + args.warmup, args.cutoff)
    nonen = sum(int(b["attention_mask"].sum()) for b in batches[args.warmup:])
    english = sum(int(b["en_attention_mask"].sum()) for b in batches[args.warmup:])
    # Both methods live side by side and step alternately on the same batches, so clock ramps,
    # allocator warm-up and machine noise hit both alike.
    trainees = {method: Trainee(method, args, dtype) for method in ("sft", "cc")}
    for index, batch in enumerate(batches):
        for trainee in (trainees.values() if index % 2 == 0 else reversed(list(trainees.values()))):
            trainee.step(batch, measure=index >= args.warmup)
    results = {m: (t.times, t.tokens, t.params) for m, t in trainees.items()}
    sft_t, cc_t = statistics.median(results["sft"][0]), statistics.median(results["cc"][0])
    params = results["sft"][2]
    print(f"model={args.model} ({params / 1e6:.1f}M params) device={args.device} dtype={dtype} "
          f"batch={args.batch} deepspeed={args.deepspeed or 'none'} steps={args.steps}")
    for method, (times, tokens, _) in results.items():
        step = statistics.median(times)
        # FLOPs: 6·N per trained token; CC also runs (and back-propagates through) the English prompt.
        flops_tokens = tokens + (english if method == "cc" else 0)
        tflops = 6 * params * flops_tokens / sum(times) / 1e12
        mfu = tflops / PEAK_TFLOPS[args.gpu] if args.device.startswith("cuda") else float("nan")
        print(f"  {method:4s} step {step * 1000:9.1f} ms  {tokens / sum(times):10.1f} tokens/s  "
              f"{tflops:8.2f} TFLOP/s  MFU {mfu:.3f}")
    footer({"sft_tokens_per_s": results["sft"][1] / sum(results["sft"][0]),
            "cc_tokens_per_s": results["cc"][1] / sum(results["cc"][0]),
            "cc_over_sft_step_time": cc_t / sft_t, "ideal_ratio": (nonen + english) / nonen})


if __name__ == "__main__":
    main()
