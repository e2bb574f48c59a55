"""Optimizer-step time, tokens/s and MFU of CC-Tuning vs vanilla SFT on the same batches, same run.

    python bench/train_step.py --model smollm2-135m-instruct --packing      # CPU: padded vs packed too
    python bench/train_step.py --model tiny-random-llama                    # seconds
    python bench/train_step.py --model llama-1b --device cuda --batch 16 --seq-len 1024 --packing [--liger] [--compile]
    python bench/train_step.py --model llama-8b-shape --layers 4 --device cuda --deepspeed zero3_offload --seq-len 1024
    python bench/train_step.py --model models/base --peft lora --batch 4 --steps 4 --warmup 2     # LoRA-CC vs full CC

Variants step alternately on the same batches (so clock ramps, allocator warm-up and machine noise
hit all alike): SFT; CC with the English pass detached (the default, as the authors' run); with
``--packing`` the same two padding-free; and CC with gradients through the English pass (in the
packed layout with ``--packing``). Without DeepSpeed
they share one model and one optimizer (step time does not depend on the weights' values), so a
step of each costs no extra memory. Data: the bundled parallel set, cycled so any --batch works,
or ``--seq-len L`` synthetic examples of L/2..L tokens (the same real-looking length spread).

``--peft lora``: full CC against LoRA-CC (``train.lora``'s defaults: r 8, alpha 16, every linear layer;
the Decision Maker trained in full), interleaved on the same batches, each with its own optimizer over
what it trains; ``lora_over_full_step_time``, ``trainable_share`` (LoRA + Decision Maker over every
parameter of the LoRA model), the size on disk of each trained checkpoint as ``cctune train`` writes it
(``full_over_lora_checkpoint_size``: weights or adapter, Decision Maker, tokenizer, in the bench's dtype)
and each variant's peak memory: CUDA max allocated, or on a CPU the peak
RSS of a child process that loads the model and runs the same steps with that variant alone (a
process's peak RSS never comes down, so one process cannot measure two).

MFU = achieved FLOPs / peak, with 6·N FLOPs per trained token, and for CC the English prompt
tokens too: 2·N (forward only) when detached, 6·N when gradients flow. N is counted before ZeRO
partitions the parameters. ``ideal_ratio``: CC's step over SFT's if time were proportional to FLOPs.
"""

from __future__ import annotations

import argparse
import copy
import random
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import bench_tokenizer, footer, load_model, sync  # noqa: E402

from cc_core.data.records import load_bundled  # noqa: E402
from cc_core.modeling import CCTuningModel  # noqa: E402
from cc_core.modeling.adapters import BaseRef  # noqa: E402
from cc_core.modeling.checkpoint import save_cc_checkpoint  # noqa: E402
from cc_core.prompts import pad_token_id  # noqa: E402
from cc_core.training.data import CCCollator, PackedCollator, encode_records  # noqa: E402
from cc_core.training.kernels import apply_liger, compile_decoder  # noqa: E402

PEAK_TFLOPS = {"h100": 989.0, "h200": 989.0, "a100": 312.0}  # dense bf16


def bundled_features(tokenizer, count: int, cutoff: int) -> list[dict]:
    features, _ = encode_records(load_bundled().records, tokenizer, cutoff, "cc")
    return [features[i % len(features)] for i in range(count)]  # cycled: --batch 64 never runs dry


def synthetic_features(vocab: int, count: int, seq_len: int, seed: int = 0) -> list[dict]:
    """Examples of seq_len/2..seq_len tokens, a third prompt; English prompts as long as the prompts."""
    rng = random.Random(seed)
    out = []
    for _ in range(count):
        total = rng.randint(seq_len // 2, seq_len)
        prompt = max(2, total // 3)
        ids = [rng.randrange(5, vocab) for _ in range(total)]
        out.append({"input_ids": ids, "labels": [-100] * prompt + ids[prompt:], "anchor": prompt - 1,
                    "en_input_ids": [rng.randrange(5, vocab) for _ in range(prompt)], "en_anchor": prompt - 1})
    return out


def engine_for(model, lr: float, deepspeed_stage: str | None, batch: int, device: str):
    fused = device.startswith("cuda")  # the Trainer's default optimizer on GPUs: fused AdamW
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=lr, fused=fused or None)
    if not deepspeed_stage:
        return model, optimizer
    import os

    import deepspeed

    from cc_core.training.distributed import init_distributed_for_deepspeed, resolve_deepspeed

    if torch.cuda.is_available():
        for key, value in {"RANK": "0", "LOCAL_RANK": "0", "WORLD_SIZE": "1", "MASTER_ADDR": "127.0.0.1",
                           "MASTER_PORT": "29512"}.items():
            os.environ.setdefault(key, value)
        deepspeed.init_distributed()
    else:
        init_distributed_for_deepspeed()
    config = resolve_deepspeed(deepspeed_stage)
    hidden = model.config.hidden_size
    zero = config["zero_optimization"]  # what the HF Trainer fills in for "auto"
    for key, value in {"reduce_bucket_size": hidden * hidden, "stage3_prefetch_bucket_size": int(0.9 * hidden * hidden),
                       "stage3_param_persistence_threshold": 10 * hidden}.items():
        if zero.get(key) == "auto":
            zero[key] = value
    config.update(train_micro_batch_size_per_gpu=batch, gradient_accumulation_steps=1, gradient_clipping=1.0,
                  bf16={"enabled": next(model.parameters()).dtype == torch.bfloat16}, zero_force_ds_cpu_optimizer=False)
    engine, optimizer, _, _ = deepspeed.initialize(model=model, optimizer=optimizer, config=config)
    return engine, optimizer


class Variant:
    """One measured configuration: its module (and engine/optimizer), layout and timings."""

    def __init__(self, name: str, net, engine, optimizer, packed: bool, detach: bool | None) -> None:
        self.name, self.net, self.engine, self.optimizer = name, net, engine, optimizer
        self.packed, self.detach, self.method = packed, detach, "sft" if detach is None else "cc"
        self.times: list[float] = []
        self.tokens = self.english = 0

    def step(self, batch: dict, device: str, deepspeed: bool, measure: bool) -> None:
        counts = batch["token_count"], batch.get("en_token_count", 0)
        inputs = {k: v.to(device) for k, v in batch.items() if isinstance(v, torch.Tensor)}
        if self.method == "sft":
            inputs = {k: inputs[k] for k in ("input_ids", "attention_mask", "position_ids", "labels") if k in inputs}
        sync(device)
        start = time.perf_counter()
        loss = self.engine(**inputs).loss
        if deepspeed:
            self.engine.backward(loss)
            self.engine.step()
        else:
            loss.backward()
            self.optimizer.step()
            self.optimizer.zero_grad(set_to_none=True)
        sync(device)
        if measure:
            self.times.append(time.perf_counter() - start)
            self.tokens += counts[0]
            self.english += counts[1] if self.method == "cc" else 0


def build(args, dtype) -> tuple[list[Variant], int, object]:
    model, tokenizer = load_model(args.model, dtype, args.device, layers=args.layers)
    params = sum(p.numel() for p in model.parameters())  # before ZeRO partitions them
    model.train()
    model.config.use_cache = False  # as cc_core.train (a cache also turns off packed attention masks)
    if args.gradient_checkpointing:
        model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
    if args.liger:
        apply_liger(model)
    if args.compile:
        compile_decoder(model)
    layouts = [False, True] if args.packing else [False]
    specs = [(f"{m}{'-packed' if p else ''}", p, d) for p in layouts for m, d in (("sft", None), ("cc", True))]
    if args.english_flowing:  # detached vs flowing is one comparison: in the headline layout only
        specs.append((f"cc-flowing{'-packed' if args.packing else ''}", args.packing, False))
    variants = []
    if args.deepspeed:  # an engine owns its module: one model per variant (SFT and default CC only)
        del model
        for name, packed, detach in [s for s in specs if s[0] in ("sft", "cc", "sft-packed", "cc-packed")]:
            base, _ = load_model(args.model, dtype, args.device, layers=args.layers)
            base.train()
            base.config.use_cache = False
            net = base if detach is None else CCTuningModel(base, detach_english=detach)
            engine, optimizer = engine_for(net, 1e-5, args.deepspeed, args.batch, args.device)
            variants.append(Variant(name, net, engine, optimizer, packed, detach))
        return variants, params, tokenizer
    wrappers = {None: model, True: CCTuningModel(model, detach_english=True)}
    wrappers[False] = CCTuningModel(model, wrappers[True].decision_maker, detach_english=False)
    engine, optimizer = engine_for(wrappers[True], 1e-5, None, args.batch, args.device)  # model + Decision Maker
    for name, packed, detach in specs:
        variants.append(Variant(name, wrappers[detach], wrappers[detach], optimizer, packed, detach))
    return variants, params, tokenizer


# --- --peft lora: LoRA-CC against full CC ----------------------------------------------------------------

def lora_variants(args, dtype, only: str | None = None) -> tuple[list[Variant], int, float, object]:
    """Full CC and LoRA-CC on copies of one model, each with its own optimizer (``only``: just that one)."""
    from cc_core.modeling.adapters import LoraSpec, add_lora, trainable_parameters

    model, tokenizer = load_model(args.model, dtype, args.device, layers=args.layers)
    params = sum(p.numel() for p in model.parameters())
    model.train()
    model.config.use_cache = False
    if args.gradient_checkpointing:
        model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
    variants, share = [], float("nan")
    if only in (None, "cc-lora"):
        lora = CCTuningModel(add_lora(model if only else copy.deepcopy(model), LoraSpec(),
                                      gradient_checkpointing=args.gradient_checkpointing))
        trainable, total = trainable_parameters(lora)
        share = trainable / total
        _, optimizer = engine_for(lora, 1e-4, None, args.batch, args.device)
        variants.append(Variant("cc-lora", lora, lora, optimizer, args.packing, True))
    if only in (None, "cc"):
        full = CCTuningModel(model)
        _, optimizer = engine_for(full, 1e-5, None, args.batch, args.device)
        variants.insert(0, Variant("cc", full, full, optimizer, args.packing, True))
    return variants, params, share, tokenizer


def peak_memory_mib(device: str) -> float:
    if device.startswith("cuda"):
        return torch.cuda.max_memory_allocated() / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def run_steps(variants: list[Variant], args, tokenizer) -> None:
    """Every variant steps on the same batches, alternating the order (noise hits all alike)."""
    total = (args.steps + args.warmup) * args.batch
    features = (synthetic_features(len(tokenizer), total, args.seq_len) if args.seq_len
                else bundled_features(tokenizer, total, args.cutoff))
    pad = pad_token_id(tokenizer)
    collate = PackedCollator(pad, args.pack_max_tokens) if args.packing else CCCollator(pad)
    batches = [collate(features[i * args.batch:(i + 1) * args.batch]) for i in range(args.steps + args.warmup)]
    for index, batch in enumerate(batches):
        for variant in variants if index % 2 == 0 else list(reversed(variants)):
            variant.step(batch, args.device, False, index >= args.warmup)


def checkpoint_mib(variant: Variant, tokenizer, base: str) -> float:
    """The size on disk of the checkpoint ``cctune train`` would write for this variant."""
    with tempfile.TemporaryDirectory(prefix="bench-ckpt-") as tmp:
        # the bench loads no base directory: its name stands in for the hash (only the JSON's length counts)
        save_cc_checkpoint(variant.net, tmp, tokenizer, base=BaseRef(base, "0" * 64))
        return sum(p.stat().st_size for p in Path(tmp).rglob("*") if p.is_file()) / 2**20


def peft_main(args, dtype) -> None:
    if args.memory_of:  # a child process: one variant alone, its peak memory
        variants, _, _, tokenizer = lora_variants(args, dtype, only=args.memory_of)
        run_steps(variants, args, tokenizer)
        print(f"peak_memory_mib: {peak_memory_mib(args.device):.1f}")
        return
    peaks = {}
    for name in ("cc", "cc-lora"):
        if args.device.startswith("cuda"):
            continue  # measured in this process, below
        child = subprocess.run([sys.executable, __file__, *sys.argv[1:], "--memory-of", name],
                               capture_output=True, text=True, check=True)
        peaks[name] = float(child.stdout.strip().splitlines()[-1].split(":")[1])
    variants, params, share, tokenizer = lora_variants(args, dtype)
    if args.device.startswith("cuda"):  # one variant after the other, peak reset between
        for variant in variants:
            torch.cuda.reset_peak_memory_stats()
            run_steps([variant], args, tokenizer)
            peaks[variant.name] = peak_memory_mib(args.device)
            variant.times.clear()
            variant.tokens = variant.english = 0
    run_steps(variants, args, tokenizer)
    print(f"model={args.model} ({params / 1e6:.1f}M params) device={args.device} dtype={dtype} batch={args.batch} "
          f"steps={args.steps}+{args.warmup} warm-up packing={args.packing} lora=r8/alpha16/all-linear "
          f"memory={'CUDA max allocated' if args.device.startswith('cuda') else 'peak RSS of a child process per variant'}")
    stats = {v.name: statistics.median(v.times) for v in variants}
    sizes = {v.name: checkpoint_mib(v, tokenizer, args.model) for v in variants}
    for v in variants:
        print(f"  {v.name:8s} step {stats[v.name] * 1000:9.1f} ms  {v.tokens / sum(v.times):10.1f} tokens/s  "
              f"peak memory {peaks[v.name]:9.1f} MiB  checkpoint {sizes[v.name]:8.1f} MiB")
    footer({"lora_over_full_step_time": stats["cc-lora"] / stats["cc"], "trainable_share": share,
            "full_peak_memory_mib": peaks["cc"], "lora_peak_memory_mib": peaks["cc-lora"],
            "lora_over_full_peak_memory": peaks["cc-lora"] / peaks["cc"],
            "full_checkpoint_mib": sizes["cc"], "lora_checkpoint_mib": sizes["cc-lora"],
            "full_over_lora_checkpoint_size": sizes["cc"] / sizes["cc-lora"]})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="smollm2-135m-instruct",
                        help="smollm2-135m-instruct | tiny-random-<arch> | llama-1b | llama-8b-shape | a local dir")
    parser.add_argument("--layers", type=int, default=None, help="llama-8b-shape: decoder layers (8B dims, fewer layers)")
    parser.add_argument("--batch", type=int, default=16,
                        help="examples per step (16: the paper profile's per-device batch, as the authors ran)")
    parser.add_argument("--steps", type=int, default=8, help="measured steps per variant (after --warmup)")
    parser.add_argument("--warmup", type=int, default=4, help="unmeasured steps (CUDA init, autotuning, compile)")
    parser.add_argument("--cutoff", type=int, default=256, help="bundled data: tokens per example at most")
    parser.add_argument("--seq-len", type=int, default=None, help="synthetic examples of L/2..L tokens instead")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--dtype", choices=["fp32", "bf16"], default=None)
    parser.add_argument("--deepspeed", default=None, help="zero0 | zero2 | zero3 | zero3_offload (GPU or CPU/gloo)")
    parser.add_argument("--gradient-checkpointing", action="store_true")
    parser.add_argument("--packing", action="store_true", help="also measure padding-free packed batches")
    parser.add_argument("--pack-max-tokens", type=int, default=None,
                        help="tokens per packed row at most (default: twice each batch's longest example, "
                             "as train.pack_max_tokens null)")
    parser.add_argument("--no-english-flowing", dest="english_flowing", action="store_false",
                        help="skip the CC variant with gradients through the English pass")
    parser.add_argument("--liger", action="store_true", help="Liger Kernel (CUDA)")
    parser.add_argument("--compile", action="store_true", help="torch.compile the decoder layers")
    parser.add_argument("--gpu", default="h100", choices=sorted(PEAK_TFLOPS), help="peak FLOPs for MFU")
    parser.add_argument("--peft", choices=["none", "lora"], default="none",
                        help="lora: LoRA-CC against full CC (step time, trainable share, peak memory of both)")
    parser.add_argument("--memory-of", choices=["cc", "cc-lora"], default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    dtype = torch.bfloat16 if (args.dtype or ("bf16" if args.device.startswith("cuda") else "fp32")) == "bf16" \
        else torch.float32
    if args.peft == "lora":
        if args.deepspeed:
            parser.error("--peft lora measures one process without DeepSpeed")
        peft_main(args, dtype)
        return
    variants, params, tokenizer = build(args, dtype)
    total = (args.steps + args.warmup) * args.batch
    features = (synthetic_features(len(tokenizer), total, args.seq_len) if args.seq_len
                else bundled_features(tokenizer, total, args.cutoff))
    pad = pad_token_id(tokenizer)
    chunks = [features[i * args.batch:(i + 1) * args.batch] for i in range(args.steps + args.warmup)]
    layouts = {False: [CCCollator(pad)(c) for c in chunks],
               True: [PackedCollator(pad, args.pack_max_tokens)(c) for c in chunks] if args.packing else []}
    def padding(batches) -> float:  # the fraction of a layout's cells that are padding
        return 1 - sum(b["token_count"] for b in batches) / sum(b["input_ids"].numel() for b in batches)
    for index in range(len(chunks)):
        order = variants if index % 2 == 0 else list(reversed(variants))
        for variant in order:
            variant.step(layouts[variant.packed][index], args.device, bool(args.deepspeed), index >= args.warmup)
    print(f"model={args.model} ({params / 1e6:.1f}M params) device={args.device} dtype={dtype} batch={args.batch} "
          f"deepspeed={args.deepspeed or 'none'} steps={args.steps}+{args.warmup} warm-up "
          f"data={'synthetic ' + str(args.seq_len) if args.seq_len else 'bundled'} padding={padding(layouts[False]):.1%}"
          + (f" (packed {padding(layouts[True]):.1%})" if args.packing else ""))
    stats = {}
    for v in variants:
        seconds = sum(v.times)
        english_flops = (2 if v.detach else 6) * params * v.english if v.method == "cc" else 0
        tflops = (6 * params * v.tokens + english_flops) / seconds / 1e12
        mfu = tflops / PEAK_TFLOPS[args.gpu] if args.device.startswith("cuda") else float("nan")
        stats[v.name] = {"step": statistics.median(v.times), "tok_s": v.tokens / seconds, "mfu": mfu,
                         "flops": 6 * params * v.tokens + english_flops}
        print(f"  {v.name:18s} step {stats[v.name]['step'] * 1000:9.1f} ms  {stats[v.name]['tok_s']:10.1f} tokens/s  "
              f"{tflops:8.2f} TFLOP/s  MFU {mfu:.3f}")
    if args.device.startswith("cuda"):
        print(f"  peak memory {torch.cuda.max_memory_allocated() / 2**30:.1f} GiB")
    best = "-packed" if args.packing else ""
    headline = {
        "sft_mfu": stats[f"sft{best}"]["mfu"], "cc_mfu": stats[f"cc{best}"]["mfu"],
        "cc_over_sft_step_time": stats[f"cc{best}"]["step"] / stats[f"sft{best}"]["step"],
        "ideal_ratio": stats[f"cc{best}"]["flops"] / stats[f"sft{best}"]["flops"],
    }
    if f"cc-flowing{best}" in stats:  # the English-pass setting: detached (default) vs gradients flowing
        headline["cc_over_sft_step_time_english_flowing"] = (stats[f"cc-flowing{best}"]["step"]
                                                             / stats[f"sft{best}"]["step"])
        headline["detached_over_flowing_cc_step_time"] = stats[f"cc{best}"]["step"] / stats[f"cc-flowing{best}"]["step"]
    if args.packing:
        headline["packed_over_padded_tokens_per_s"] = stats["sft-packed"]["tok_s"] / stats["sft"]["tok_s"]
        headline["cc_packed_over_padded_tokens_per_s"] = stats["cc-packed"]["tok_s"] / stats["cc"]["tok_s"]
    footer(headline)


if __name__ == "__main__":
    main()
