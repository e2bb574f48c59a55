"""DeepSpeed configs and the distributed set-up of a training run (one process or a launcher's many).

    config = resolve_deepspeed("zero3")        # built-in name or a JSON path → dict (None: no DeepSpeed)
    init_distributed_for_deepspeed()           # gloo on a CPU; rendezvous variables for one process
    rank(), barrier()

On a CPU, DeepSpeed is initialised with the gloo backend; one process sets its own rendezvous
variables, while torchrun and the deepspeed launcher set theirs.
"""

from __future__ import annotations

import json
import os
import socket
from collections import Counter
from pathlib import Path

import torch
import torch.distributed as dist

from cc_core.io import InputError

# Built-in ZeRO configs: the checkout's configs/deepspeed (the working directory of `dvc repro`, the
# Prefect worker and the Docker image's /app), else the source tree of an editable install.
DEEPSPEED_DIRS = (Path("configs") / "deepspeed",
                  Path(__file__).resolve().parent.parent.parent / "configs" / "deepspeed")


def resolve_deepspeed(name: str | None) -> dict | None:
    """``zero0|zero2|zero3|zero3_offload`` or a JSON path → the config dict (None: no DeepSpeed)."""
    if not name:
        return None
    builtin = [d / f"{name}.json" for d in DEEPSPEED_DIRS if (d / f"{name}.json").is_file()]
    path = builtin[0] if builtin else Path(name)
    if not path.is_file():
        looked = ", ".join(str(d.resolve()) for d in DEEPSPEED_DIRS)
        raise InputError(f"train.deepspeed={name!r}: no such config (built-in: zero0, zero2, zero3, zero3_offload, "
                         f"looked for in {looked}; or a path to a JSON file)")
    try:
        config = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise InputError(f"{path}:{err.lineno}: DeepSpeed config is not valid JSON: {err.msg}") from None
    if not isinstance(config, dict) or "zero_optimization" not in config:
        raise InputError(f"{path}: DeepSpeed config must be an object with a 'zero_optimization' section")
    return config


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def init_distributed_for_deepspeed() -> None:
    """Without GPUs DeepSpeed needs the gloo backend and rendezvous variables; set them for a
    single process, or use those a launcher (torchrun / deepspeed) already set."""
    if torch.cuda.is_available():
        return  # the Trainer/accelerate set up NCCL
    os.environ.setdefault("DS_ACCELERATOR", "cpu")
    if "WORLD_SIZE" not in os.environ:
        os.environ.update(RANK="0", LOCAL_RANK="0", WORLD_SIZE="1", MASTER_ADDR="127.0.0.1",
                          MASTER_PORT=os.environ.get("MASTER_PORT", str(_free_port())))
    # why: DeepSpeed takes seconds to import (and builds its C++ ops); only train.deepspeed runs need it
    import deepspeed

    if not dist.is_initialized():
        deepspeed.init_distributed(dist_backend="gloo")


def rank() -> int:
    return int(os.environ.get("RANK", "0"))


def barrier() -> None:
    """Wait for every rank (a no-op in one process)."""
    if dist.is_available() and dist.is_initialized():
        dist.barrier()


def totals_over_ranks(tokens_this_run: int, tokens_total: int, choice_counts: Counter, num_layers: int,
                      device) -> tuple[int, int, Counter]:
    """(tokens trained by this run, tokens of the whole training, layer choices of the whole
    training), each summed over all ranks. A resumed run's rate divides only the first by its own runtime."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return tokens_this_run, tokens_total, choice_counts
    counts = torch.zeros(num_layers + 2, dtype=torch.long, device=device)
    counts[0], counts[1] = tokens_this_run, tokens_total
    for layer, count in choice_counts.items():
        counts[layer + 2] = count
    dist.all_reduce(counts)
    return int(counts[0]), int(counts[1]), Counter({i: int(c) for i, c in enumerate(counts[2:].tolist()) if c})
