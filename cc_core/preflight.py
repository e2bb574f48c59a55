"""``cctune check``: everything a profile needs, and whether it is there, in seconds (nothing is built).

    cctune check                              # params.yaml
    cctune check --params params.paper.yaml   # before the paper profile: model, data, GPUs, disk

One line per need: the base model (a local directory, the packaged SmolLM2, a tiny random model, or
a hub id: cached, or the hub reachable), the training data, the evaluation data of every benchmark
in ``eval.benchmarks``, the GPUs and their memory against the profile's estimate, and the free
disk for models, resumable checkpoints and activations. A missing need is an error (exit 2) after
every line is printed; a GPU-less machine for a small profile is only a note.

The estimates are rough on purpose (they decide "enough or not", not a budget): training memory
per GPU = weights + gradients + AdamW state, 16 bytes a parameter under mixed precision (12 in
fp32), divided over the GPUs by ZeRO-3 (only gradients and optimizer state by ZeRO-2), plus
activations (with gradient checkpointing one layer input per layer: batch × cutoff × hidden ×
layers × 2 bytes); disk = the base model and two trained models in their dtype, ``save_total_limit``
resumable checkpoints with optimizer state (one method's at a time), and the activations ``collect`` writes
(2 × pairs × layers × hidden × 4 bytes).
"""

from __future__ import annotations

import json
import re
import shutil
from dataclasses import dataclass, field
from pathlib import Path

from cc_core.config import Params
from cc_core.data.benchmarks import available_langs, get_spec, resolve_data_dir
from cc_core.data.records import BUNDLED_SFT_DIR, where_from
from cc_core.hub import hub_reachable
from cc_core.io import InputError
from cc_core.modeling.base import SMOLLM2, TINY_ARCHS, TINY_PREFIX, ModelSourceError, smollm2_gguf_path

GIB = 1 << 30
SMALL_MODEL = 1e9  # below this many parameters a CPU is slow but workable: no GPU is a note, not a failure
# parameters, layers, hidden size of the packaged model and the paper's (sized without a download)
KNOWN_SIZES = {"smollm2-135m-instruct": (135e6, 30, 576), "meta-llama/Llama-3.1-8B": (8.03e9, 32, 4096)}


@dataclass
class Check:
    name: str
    ok: bool
    detail: str
    note: bool = False  # ok, but worth knowing (e.g. no GPU for a small profile)

    def line(self) -> str:
        mark = "ok  " if self.ok and not self.note else ("note" if self.ok else "MISSING")
        return f"[{mark}] {self.name}: {self.detail}"


@dataclass
class CheckResult:
    params_file: str
    checks: list[Check] = field(default_factory=list)

    @property
    def missing(self) -> list[Check]:
        return [c for c in self.checks if not c.ok]


def _size(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file()) if path.is_dir() else path.stat().st_size


def _model_shape(base: str) -> tuple[float | None, int | None, int | None, str]:
    """(parameters, layers, hidden, where the numbers come from) of ``model.base``, without loading it."""
    if base in KNOWN_SIZES:
        return (*KNOWN_SIZES[base], "the packaged model" if base.startswith("smollm2") else "its published config")
    if base.startswith("tiny-random-"):
        return 6.4e6, 2, 64, "the tiny random model"
    config = Path(base).expanduser() / "config.json"
    if not config.is_file():
        try:
            from huggingface_hub import try_to_load_from_cache  # why: only for a hub id (a second to import)

            cached = try_to_load_from_cache(base, "config.json")
            config = Path(cached) if isinstance(cached, str) else config
        except Exception:  # noqa: BLE001 - not a hub id either: sized from the name below
            pass
    if config.is_file():
        cfg = json.loads(config.read_text())
        cfg = cfg.get("text_config", cfg)
        hidden, layers = cfg.get("hidden_size"), cfg.get("num_hidden_layers")
        inter, vocab = cfg.get("intermediate_size") or 4 * (hidden or 0), cfg.get("vocab_size") or 0
        if hidden and layers:
            params = layers * (4 * hidden * hidden + 3 * hidden * inter) + 2 * vocab * hidden
            return float(params), layers, hidden, "its config.json"
    match = re.search(r"(\d+(?:\.\d+)?)\s*([bBmM])\b", base.replace("-", " ").replace("_", " "))
    if match:
        return float(match.group(1)) * (1e9 if match.group(2).lower() == "b" else 1e6), None, None, "its name"
    return None, None, None, "unknown"


def check_base_model(params: Params) -> Check:
    base = params.model.base
    if base == SMOLLM2:
        try:
            gguf = smollm2_gguf_path()
        except ModelSourceError as err:
            return Check("base model", False, str(err))
        return Check("base model", True, f"{base}: {gguf.name} ({gguf.stat().st_size / 2**20:.0f} MiB, offline)")
    if base.startswith(TINY_PREFIX):
        ok = base[len(TINY_PREFIX):] in TINY_ARCHS
        return Check("base model", ok, f"{base}: random weights, built in seconds" if ok else
                     f"{base}: unknown; valid: {', '.join(TINY_PREFIX + a for a in TINY_ARCHS)}")
    path = Path(base).expanduser()
    if path.is_dir():
        weights = list(path.glob("*.safetensors")) + list(path.glob("*.bin"))
        if not (path / "config.json").is_file() or not weights:
            return Check("base model", False, f"{path}: not a Hugging Face model directory (config.json and weight "
                         "files expected)")
        return Check("base model", True, f"{path}: local directory, {_size(path) / GIB:.1f} GiB")
    if base.startswith((".", "/", "~")):
        return Check("base model", False, f"{base}: directory not found")
    try:
        from huggingface_hub import try_to_load_from_cache  # why: only for a hub id (a second to import)

        cached = isinstance(try_to_load_from_cache(base, "config.json"), str)
    except Exception:  # noqa: BLE001
        cached = False
    if cached:
        return Check("base model", True, f"{base}: in the Hugging Face cache")
    if hub_reachable():
        return Check("base model", True, f"{base}: the hub is reachable (downloaded by `cctune base-model`; "
                     "gated models need `huggingface-cli login` and the licence accepted)")
    return Check("base model", False, f"{base}: hub id, but the hub is unreachable from here and it is not cached: "
                 f"download it on a connected machine (huggingface-cli download {base} --local-dir DIR) and set "
                 "model.base to DIR")


def check_training_data(params: Params) -> Check:
    source = params.data.source
    if source == "bundled":
        files = sorted(BUNDLED_SFT_DIR.glob("*.jsonl"))
        return Check("training data", bool(files), f"bundled: {len(files)} languages shipped with the package")
    if source.startswith("hub:"):
        ok = hub_reachable()
        return Check("training data", ok, f"{source}: " + ("the hub is reachable" if ok else
                     "the hub is unreachable from here: point data.source at a local .jsonl/.json file"))
    path = Path(source).expanduser()
    if path.exists():
        return Check("training data", True, f"{path}: {_size(path) / 2**20:.1f} MiB")
    return Check("training data", False, f"{path}: not found; it is {where_from(source)}")


def check_eval_data(params: Params) -> Check:
    data_dir = params.eval.data_dir
    root = resolve_data_dir(data_dir)
    if root is None:
        ok = hub_reachable()
        return Check("evaluation data", ok, "hub: " + ("reachable" if ok else "unreachable from here: set "
                     "eval.data_dir to a local copy of the benchmarks (or bundled)"))
    if not root.is_dir():
        return Check("evaluation data", False, f"{data_dir}: not found; it is {where_from(data_dir, 'eval')}")
    found, empty = [], []
    for name in params.eval.benchmarks:
        spec = get_spec(name)
        try:
            langs = available_langs(spec, root)
        except InputError as err:
            return Check("evaluation data", False, str(err))
        wanted = [lang for lang in langs if not params.eval.langs or lang in params.eval.langs]
        (found if wanted else empty).append(f"{spec.name} {len(wanted)}/{len(spec.langs)}")
    if empty:
        return Check("evaluation data", False, f"{data_dir}: no languages to evaluate for {', '.join(empty)} "
                     f"(<BENCH>/<split>/<lang>.json expected; eval.langs={params.eval.langs})")
    return Check("evaluation data", True, f"{data_dir}: languages per benchmark {', '.join(found)}")


def training_memory_gib(params: Params, n_params: float, layers: int | None, hidden: int | None, gpus: int) -> float:
    """Per-GPU training memory estimate (module docstring)."""
    tp = params.train
    ds = tp.deepspeed or ""
    n = max(gpus, 1)
    weights = 2 if tp.bf16 else 4
    states = 14 if tp.bf16 else 8  # gradients + AdamW moments (+ the fp32 master copy under mixed precision)
    if "zero3" in ds:
        per_param = (weights + states) / n
    elif "zero2" in ds:
        per_param = weights + states / n
    else:
        per_param = weights + states
    activations = 0.0
    if layers and hidden:
        per_layer = 1 if tp.gradient_checkpointing else 16  # stored tensors of a layer's input size
        activations = tp.per_device_batch_size * tp.cutoff_len * hidden * layers * per_layer * weights * 2  # CC: two passes
    return (n_params * per_param + activations) / GIB


def check_gpus(params: Params, n_params: float | None, layers, hidden, where: str) -> Check:
    import torch  # why: seconds to import; the other checks answer without it

    gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if n_params is None:
        return Check("GPUs", True, f"{gpus} GPU(s); the model's size is unknown (no config.json found): no estimate",
                     note=True)
    size = f"{n_params / 1e9:.2f}B parameters ({where})"
    need = training_memory_gib(params, n_params, layers, hidden, gpus)
    if not gpus:
        if n_params < SMALL_MODEL and not params.train.bf16:
            return Check("GPUs", True, f"none: training and evaluation run on the CPU ({size}; ~{need:.1f} GiB "
                         "of memory to train)", note=True)
        eight = training_memory_gib(params, n_params, layers, hidden, 8)
        return Check("GPUs", False, f"none, but this profile needs GPUs: {size}, bf16={params.train.bf16}, "
                     f"deepspeed={params.train.deepspeed}; ~{eight:.0f} GiB per GPU on 8 GPUs")
    memory = min(torch.cuda.get_device_properties(i).total_memory for i in range(gpus)) / GIB
    detail = f"{gpus} × {memory:.0f} GiB; this profile needs ~{need:.1f} GiB per GPU on {gpus} ({size})"
    return Check("GPUs", memory >= need, detail + ("" if memory >= need else
                 ": not enough; use more GPUs with train.deepspeed: zero3, or gradient checkpointing"))


def check_disk(params: Params, n_params: float | None, layers, hidden, root: Path = Path(".")) -> Check:
    free = shutil.disk_usage(root).free / GIB
    if n_params is None:
        return Check("disk", True, f"{free:.0f} GiB free; the model's size is unknown: no estimate", note=True)
    tp = params.train
    weights = 2 if tp.bf16 else 4
    models = 3 * n_params * weights  # models/base, models/cc, models/sft
    # one method's resumable checkpoints at a time (a finished training deletes its own), each with the
    # fp32 master weights and AdamW moments
    checkpoints = (tp.save_total_limit or 1) * n_params * (weights + 12)
    pairs = min(params.collect.num_pairs, params.data.num_pairs)
    activations = 2 * pairs * (layers or 0) * (hidden or 0) * 4
    need = (models + checkpoints + activations) / GIB
    return Check("disk", free >= need, f"{free:.0f} GiB free in {root.resolve()}; needs ~{need:.1f} GiB (models "
                 f"{models / GIB:.1f}, resumable checkpoints {checkpoints / GIB:.1f}, activations "
                 f"{activations / GIB:.2f})")


def check(params: Params, params_file: str = "params.yaml") -> CheckResult:
    n_params, layers, hidden, where = _model_shape(params.model.base)
    result = CheckResult(params_file, [check_base_model(params), check_training_data(params), check_eval_data(params),
                                       check_gpus(params, n_params, layers, hidden, where),
                                       check_disk(params, n_params, layers, hidden)])
    for item in result.checks:
        print(item.line())
    if result.missing:
        raise InputError(f"{params_file}: {len(result.missing)} of {len(result.checks)} needs missing "
                         f"({', '.join(c.name for c in result.missing)}); see the lines above")
    print(f"{params_file}: everything this profile needs is here")
    return result
