"""Scaling of the ``fit`` stage (streaming normal equations) against the in-memory reference lstsq,
plus ``collect`` throughput on a real model.

    cd /work/main && .venv/bin/python bench/fit_scaling.py
    cd /work/main && .venv/bin/python bench/fit_scaling.py --model tiny-random-llama --sizes 250,1000 --collect-pairs 8

(the first line is the default run: ``--model smollm2-135m-instruct --sizes 1000,4000,16000 --collect-pairs 32``).

For each N in ``--sizes`` synthetic float32 activations (B ~ N(0, 1), A = B M + 0.1 noise, shape
[N, L, d], d and L from ``--model``) are written as ``collect`` writes them (512 pairs a shard,
index.json + shard-XXXXX.safetensors) to a temporary directory, and two approaches are timed:

  (a) streaming: ``cc_core.transform.fit_transform(FitParams(holdout_fraction=0), dir)``, i.e. the
      real stage: one pass accumulating BᵀB / BᵀA in float64, the solve, and the second pass that
      measures fit quality;
  (b) reference: load every shard into memory, stack B and A as (N·L)×d float64 and call
      ``torch.linalg.lstsq`` once (CPU default driver, gelsy).

Each measurement runs in a fresh ``spawn`` subprocess; its peak memory is the child's
``ru_maxrss`` at the end minus its ``ru_maxrss`` right after the imports. Caveat handled here: on
Linux a spawned child's ``ru_maxrss`` starts at the *parent's* high-water RSS (exec keeps
``signal->maxrss``), so the parent of this script never imports torch/numpy and does all heavy
work (data generation, model loading) in children too; its own ``ru_maxrss`` is printed. As a
cross-check the child also resets its kernel high-water mark after the imports
(``/proc/self/clear_refs`` = 5) and reports ``VmHWM`` − ``VmRSS`` (column "hwm"). The relative
difference between the two matrices is printed as a correctness check.

Then ``collect`` throughput: ``--collect-pairs`` bundled records (``cc_core.data.records.load_bundled``)
go through ``cc_core.activations.anchor_activations`` for the non-English and the English side
(batch size ``CollectParams().batch_size``), timed after a one-batch warm-up; pairs/s is
pairs / (time of both sides).

d and L: for smollm2-135m-instruct they are hard-coded from its GGUF config (d=576, L=30) so the
fit part does not need to load weights; the collect part loads the real model
(``cc_core.modeling.base.load_smollm2``) and checks them. For tiny-random-<arch> they come from
``cc_core.modeling.base.tiny_config(arch, 49152)`` and the model is ``build_tiny(arch)``.

The last lines are ``name: value`` (ratios use the largest and the smallest of --sizes, whatever
they are; the names keep "16k"/"1k" literally).
"""

from __future__ import annotations

import argparse
import json
import math
import multiprocessing as mp
import os
import resource
import shutil
import sys
import tempfile
import time
from array import array
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("TQDM_DISABLE", "1")  # transformers' GGUF de-quantisation bar (plain tqdm)

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

SMOLLM2 = "smollm2-135m-instruct"
SMOLLM2_DIMS = (576, 30)  # hidden_size, num_hidden_layers from SmolLM2-135M-Instruct's GGUF config
SHARD_SIZE = 512
FAKE_SHA = "bench" + "0" * 59


def model_dims(model: str) -> tuple[int, int]:
    if model == SMOLLM2:
        return SMOLLM2_DIMS
    if model.startswith("tiny-random-"):
        from cc_core.modeling.base import TINY_ARCHS, tiny_config

        arch = model[len("tiny-random-"):]
        if arch not in TINY_ARCHS:
            raise SystemExit(f"--model {model}: unknown tiny architecture (valid: {', '.join(TINY_ARCHS)})")
        config = tiny_config(arch, 49152)
        return config.hidden_size, config.num_hidden_layers
    raise SystemExit(f"--model {model}: use {SMOLLM2} or tiny-random-<arch>")


def write_activations(root: Path, n: int, num_layers: int, d: int, seed: int = 0) -> None:
    """Synthetic shards with collect's layout (float32, metadata, index.json)."""
    import torch
    from safetensors.torch import save_file

    gen = torch.Generator().manual_seed(seed)
    m_true = torch.randn(d, d, generator=gen) / d ** 0.5
    shards = []
    for no, start in enumerate(range(0, n, SHARD_SIZE)):
        size = min(SHARD_SIZE, n - start)
        b = torch.randn(size, num_layers, d, generator=gen)
        a = b @ m_true + 0.1 * torch.randn(size, num_layers, d, generator=gen)
        name = f"shard-{no:05d}.safetensors"
        save_file({"nonen": b.contiguous(), "en": a.contiguous()}, str(root / name),
                  metadata={"model_sha256": FAKE_SHA, "pairs": str(size)})
        ids = [f"p{start + i:07d}" for i in range(size)]
        shards.append({"file": name, "ids": ids, "langs": ["de"] * size})
    (root / "index.json").write_text(json.dumps({
        "model_dir": "bench", "model_sha256": FAKE_SHA, "pairs": n, "num_layers": num_layers,
        "hidden_size": d, "dtype": "float32", "shards": shards}))


# --- measured in fresh subprocesses -----------------------------------------------------------------

def _maxrss_bytes() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux: KiB


def _proc_status(field: str) -> int:
    """VmRSS / VmHWM of this process in bytes (-1 where /proc is not there)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return -1


def _reset_hwm() -> int:
    """Reset the kernel's peak-RSS mark to the current RSS; returns the current RSS (-1: unsupported)."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        return -1
    return _proc_status("VmRSS")


def _dims_child(model: str) -> tuple[int, int]:
    return model_dims(model)


def _write_child(root: str, n: int, num_layers: int, d: int) -> float:
    write_activations(Path(root), n, num_layers, d)
    return sum(f.stat().st_size for f in Path(root).glob("*.safetensors")) / 2 ** 20


def _child(kind: str, acts_dir: str, reference_dtype: str):
    import numpy as np  # noqa: F401  (imported before the baseline, like torch)
    import torch
    from safetensors.torch import load_file

    from cc_core.config import FitParams
    from cc_core.transform import fit_transform

    baseline = _maxrss_bytes()
    rss_at_reset = _reset_hwm()
    started = time.perf_counter()
    if kind == "streaming":
        transform, _ = fit_transform(FitParams(holdout_fraction=0), acts_dir)
        matrix = transform.matrix
    else:
        index = json.loads((Path(acts_dir) / "index.json").read_text())
        dtype = getattr(torch, reference_dtype)
        bs, as_ = [], []
        for entry in index["shards"]:
            tensors = load_file(str(Path(acts_dir) / entry["file"]))
            bs.append(tensors["nonen"])
            as_.append(tensors["en"])
            del tensors
        d = index["hidden_size"]
        b = torch.cat(bs).reshape(-1, d).to(dtype)
        del bs
        a = torch.cat(as_).reshape(-1, d).to(dtype)
        del as_
        matrix = torch.linalg.lstsq(b, a).solution
    seconds = time.perf_counter() - started
    growth = _maxrss_bytes() - baseline
    hwm = _proc_status("VmHWM") - rss_at_reset if rss_at_reset >= 0 else -1
    m = matrix.double().contiguous()
    return seconds, growth, hwm, m.numpy().tobytes()


def in_child(func, *args):
    """Run ``func(*args)`` in a fresh spawned interpreter (one task, then it exits)."""
    with mp.get_context("spawn").Pool(1, maxtasksperchild=1) as pool:
        return pool.apply(func, args)


def rel_diff(x: bytes, y: bytes) -> float:
    """||x - y|| / ||y|| for two float64 buffers, without numpy in this (parent) process."""
    xs, ys = array("d"), array("d")
    xs.frombytes(x)
    ys.frombytes(y)
    num = math.fsum((a - b) ** 2 for a, b in zip(xs, ys))
    den = math.fsum(b * b for b in ys)
    return math.sqrt(num / den) if den else float("nan")


# --- collect throughput ------------------------------------------------------------------------------

def collect_throughput(model_name: str, pairs: int, dims: tuple[int, int]) -> tuple[float, str]:
    import torch

    from cc_core.activations import anchor_activations
    from cc_core.config import CollectParams
    from cc_core.data.records import load_bundled
    from cc_core.modeling import arch_paths
    from cc_core.modeling.base import build_tiny, load_smollm2

    load_started = time.perf_counter()
    if model_name == SMOLLM2:
        model, tokenizer = load_smollm2()
    else:
        model, tokenizer = build_tiny(model_name[len("tiny-random-"):])
    model.eval()
    load_s = time.perf_counter() - load_started
    d, num_layers = model.config.hidden_size, model.config.num_hidden_layers
    if (d, num_layers) != dims:
        print(f"WARNING: {model_name} has d={d}, L={num_layers}, the fit benchmark used d={dims[0]}, L={dims[1]}")
    records = load_bundled().records
    if pairs > len(records):
        print(f"note: only {len(records)} bundled records; collecting {len(records)} instead of {pairs}")
    records = records[:pairs]
    batch = CollectParams().batch_size
    paths = arch_paths(model)
    anchor_activations(model, tokenizer, [r.instruction for r in records[:2]], batch, 1024, paths)  # warm-up
    started = time.perf_counter()
    nonen = anchor_activations(model, tokenizer, [r.instruction for r in records], batch, 1024, paths)
    english = anchor_activations(model, tokenizer, [r.instruction_en for r in records], batch, 1024, paths)
    seconds = time.perf_counter() - started
    assert tuple(nonen.shape) == tuple(english.shape) == (len(records), num_layers, d)
    assert torch.isfinite(nonen).all() and torch.isfinite(english).all()
    note = (f"{len(records)} pairs ({2 * len(records)} prompts), batch {batch}, {seconds:.2f} s "
            f"(model load {load_s:.1f} s, not counted), torch threads {torch.get_num_threads()}")
    return len(records) / seconds, note


# --- main ------------------------------------------------------------------------------------------------

def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=SMOLLM2, help=f"{SMOLLM2} (default) or tiny-random-<arch>")
    parser.add_argument("--sizes", default="1000,4000,16000", help="comma-separated numbers of pairs N")
    parser.add_argument("--collect-pairs", type=int, default=32, help="pairs for the collect throughput (0: skip)")
    parser.add_argument("--reference-dtype", default="float64", choices=("float64", "float32"))
    parser.add_argument("--tmp-dir", default=None, help="where the synthetic shards go (default: system temp)")
    args = parser.parse_args(argv)
    sizes = sorted({int(s) for s in args.sizes.split(",") if s.strip()})
    if not sizes or min(sizes) < 1:
        raise SystemExit("--sizes needs positive integers")
    d, num_layers = in_child(_dims_child, args.model)
    source = "hard-coded from the GGUF config" if args.model == SMOLLM2 else "tiny_config"
    print(f"model {args.model}: d={d}, L={num_layers} ({source}); shards of {SHARD_SIZE} pairs; "
          f"reference lstsq in {args.reference_dtype}; cpus {os.cpu_count()}; "
          f"parent ru_maxrss {_maxrss_bytes() / 2 ** 20:.0f} MB")

    results = {}
    header = (f"{'N':>6} {'rows N*L':>9} {'shards':>6} {'data MB':>7} | {'stream s':>8} {'MB':>6} {'hwm':>6} | "
              f"{'ref s':>7} {'MB':>6} {'hwm':>6} | {'rel diff M':>10}")
    print(header)
    print("-" * len(header), flush=True)
    for n in sizes:
        tmp = Path(tempfile.mkdtemp(prefix=f"fit-bench-{n}-", dir=args.tmp_dir))
        try:
            data_mb = in_child(_write_child, str(tmp), n, num_layers, d)
            s_time, s_mem, s_hwm, s_mat = in_child(_child, "streaming", str(tmp), args.reference_dtype)
            r_time, r_mem, r_hwm, r_mat = in_child(_child, "reference", str(tmp), args.reference_dtype)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        results[n] = (s_time, s_mem, r_time, r_mem)
        mb = 2 ** 20
        print(f"{n:>6} {n * num_layers:>9} {-(-n // SHARD_SIZE):>6} {data_mb:>7.0f} | {s_time:>8.2f} "
              f"{s_mem / mb:>6.0f} {s_hwm / mb:>6.0f} | {r_time:>7.2f} {r_mem / mb:>6.0f} {r_hwm / mb:>6.0f} | "
              f"{rel_diff(s_mat, r_mat):>10.2e}", flush=True)
    print("(MB: ru_maxrss growth after imports; hwm: VmHWM growth after a high-water reset; both MiB)")

    pairs_per_s = float("nan")
    if args.collect_pairs > 0:
        pairs_per_s, note = in_child(collect_throughput, args.model, args.collect_pairs, (d, num_layers))
        print(f"collect ({args.model}): {pairs_per_s:.2f} pairs/s; {note}")

    small, large = results[sizes[0]], results[sizes[-1]]
    print(f"(ratios: largest N={sizes[-1]} over smallest N={sizes[0]}; memory = peak RSS growth of a fresh process)")
    print(f"streaming_time_16k_over_1k: {large[0] / small[0]:.3f}")
    print(f"reference_time_16k_over_1k: {large[2] / small[2]:.3f}")
    print(f"collect_pairs_per_s: {pairs_per_s:.3f}")
    print(f"streaming_mem_16k_over_1k: {large[1] / max(small[1], 1):.3f}")
    print(f"reference_mem_over_streaming_16k: {large[3] / max(large[1], 1):.3f}")


if __name__ == "__main__":
    main()
