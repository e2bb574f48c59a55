"""Typed, validated pipeline parameters (params.yaml).

    from cc_core.config import load_params
    params = load_params("params.yaml", overrides=["train.max_steps=4"])

Every section is a pydantic model that forbids unknown keys, so a typo is an error naming
the key (``params.yaml: train.learnin_rate: unknown key``), never a silent default.
"""

from __future__ import annotations

import hashlib
import json
import warnings
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from cc_core.data.benchmarks import canonical_benchmark
from cc_core.data.records import FIELDS
from cc_core.languages import check_language


class ConfigError(ValueError):
    """A params file or override is wrong; the message names the file and key."""


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class ArchMap(_Section):
    layers: str  # dotted path from the CausalLM to the ModuleList of decoder layers
    ffn: str  # dotted path inside one decoder layer to the module whose output is added to the residual
    embed: str = "model.embed_tokens"  # dotted path to the input embedding


class ModelParams(_Section):
    base: str = "smollm2-135m-instruct"
    chat_template: str | None = None
    trust_remote_code: bool = False
    arch_map: ArchMap | None = None
    # The connection's anchor: the last prompt token (any template) | authors (their tag_locate.py per template:
    # Llama-3 the last prompt token, Mistral the token before [/INST], Qwen2 the "assistant" token)
    anchor: Literal["last_prompt_token", "authors"] = "last_prompt_token"


class DataParams(_Section):
    source: str = "bundled"
    languages: list[str] = Field(default_factory=list)
    num_pairs: int = Field(64, ge=0)
    seed: int = 42
    on_bad_record: Literal["error", "skip"] = "error"
    max_train_records: int | None = Field(None, ge=1)
    hub_columns: dict[str, str] = Field(default_factory=dict)
    # heldout: pairs.jsonl is disjoint from train.jsonl | train: sampled from it (the reference, seed 666)
    pairs_from: Literal["heldout", "train"] = "heldout"

    @field_validator("hub_columns")
    @classmethod
    def _record_fields(cls, value: dict[str, str]) -> dict[str, str]:
        unknown = sorted(set(value) - set(FIELDS))
        if unknown:
            raise ValueError(f"unknown record field(s) {', '.join(unknown)}; valid: {', '.join(FIELDS)}")
        return value

    @field_validator("languages")
    @classmethod
    def _known_languages(cls, value: list[str]) -> list[str]:
        return [check_language(code) for code in value]


class LoraParams(_Section):
    """``train.lora``: the adapters of ``train.peft: lora`` (LLaMA-Factory's defaults)."""

    r: int = Field(8, ge=1)  # rank of each adapter
    alpha: float = Field(16.0, gt=0)  # scale alpha / r
    dropout: float = Field(0.0, ge=0, lt=1)
    # "all-linear": every linear layer of the decoder (not the LM head); or module names, e.g. [q_proj, v_proj]
    target_modules: Literal["all-linear"] | list[str] = "all-linear"
    quantize: Literal["4bit"] | None = None  # QLoRA: the frozen base in 4-bit NF4 (CUDA, bitsandbytes)

    @field_validator("target_modules")
    @classmethod
    def _some_modules(cls, value):
        if isinstance(value, list) and not value:
            raise ValueError("name at least one module, or all-linear")
        return value


class TrainParams(_Section):
    epochs: float = Field(1, gt=0)
    max_steps: int = -1
    learning_rate: float = Field(1e-5, gt=0)
    lr_scheduler: str = "cosine"
    warmup_ratio: float = Field(0.1, ge=0, lt=1)  # < 1: transformers reads a value ≥ 1 as a step count
    per_device_batch_size: int = Field(4, ge=1)
    gradient_accumulation_steps: int = Field(1, ge=1)
    cutoff_len: int = Field(1024, ge=8)
    weight_decay: float = Field(0.0, ge=0)
    max_grad_norm: float = Field(1.0, gt=0)
    bf16: bool = False
    gradient_checkpointing: bool = False
    deepspeed: str | None = None
    save_steps: int = Field(50, ge=1)
    save_total_limit: int = Field(2, ge=1)
    logging_steps: int = Field(1, ge=1)
    seed: int = 42
    inject_layer: int = Field(0, ge=0)
    decision_mode: Literal["gumbel", "soft", "argmax"] = "gumbel"
    gumbel_tau: float = Field(1.0, gt=0)
    detach_english: bool = True  # the authors' effective computation (reentrant checkpointing): docs/method.md
    on_truncated: Literal["drop", "error"] = "drop"
    nonfinite_patience: int = Field(0, ge=0)  # consecutive non-finite steps skipped before training stops
    decision_maker_init: Literal["model", "linear"] = "model"  # normal(0, initializer_range) as the reference
    packing: bool = True  # padding-free rows, attention confined to each example (equal results, tested)
    pack_max_tokens: int | None = Field(None, ge=8)  # tokens per packed row at most (None: twice the batch's longest example)
    liger: bool = False  # Liger Kernel: fused linear cross-entropy, RMSNorm, SwiGLU, RoPE (CUDA; extra [gpu])
    compile: bool = False  # torch.compile each decoder layer's submodules (hooks stay outside the graphs)
    peft: Literal["none", "lora"] = "none"  # lora: train LoRA adapters (+ the Decision Maker) on a frozen base
    lora: LoraParams = Field(default_factory=LoraParams)
    decision_maker_lr: float | None = Field(None, gt=0)  # the Decision Maker's own learning rate (None: learning_rate)
    # keep_prompt: the prompt whole, the response cut | llama_factory: LLaMA-Factory's infer_seqlen (prompt cut
    # from the right, the English prompt gets cutoff - len(x + y) tokens)
    truncation: Literal["keep_prompt", "llama_factory"] = "keep_prompt"
    # global_tokens: the loss is the mean over every label token of the step on all devices | micro_batch: over
    # each device's micro-batch (the Trainer passes no num_items_in_batch, as the authors' LLaMA-Factory)
    loss_average: Literal["global_tokens", "micro_batch"] = "global_tokens"

    @field_validator("max_steps")
    @classmethod
    def _steps_or_epochs(cls, value: int) -> int:
        # transformers reads max_steps <= 0 as "use the epochs" (0 still took a step): only -1 says that
        if value == 0 or value < -1:
            raise ValueError("must be a positive number of optimizer steps, or -1 to train for train.epochs")
        return value


class CollectParams(_Section):
    num_pairs: int = Field(1000, ge=1)
    batch_size: int = Field(16, ge=1)
    shard_size: int = Field(512, ge=1)
    max_prompt_len: int = Field(1024, ge=16)
    add_special_tokens: bool = False  # also the tokenizer's own specials (the authors: a second BOS)


class FitParams(_Section):
    ridge: float = Field(0.0, ge=0)
    per_layer: bool = False
    bias: bool = False
    per_language: bool = False
    holdout_fraction: float = Field(0.2, ge=0, lt=1)
    seed: int = 0
    holdout_split: Literal["random", "last"] = "random"  # last: the last pairs of pairs.jsonl (draw order) held out
    solver: Literal["cholesky", "lstsq"] = "cholesky"  # lstsq: SVD on the stacked rows (the reference)


class EvalParams(_Section):
    benchmarks: list[str] = Field(
        default_factory=lambda: ["xnli", "xstorycloze", "mmmlu", "xquad", "mkqa", "xlsum"]
    )
    data_dir: str = "bundled"
    langs: list[str] = Field(default_factory=list)
    # items per language: one number for every benchmark, or {benchmark: n} (benchmarks not named: all)
    limit: Annotated[int, Field(ge=1)] | dict[str, Annotated[int, Field(ge=1)] | None] | None = None
    max_new_tokens: int = Field(40, ge=1)
    # prompts per generation batch, or "auto": the most that fit the free accelerator memory (CPU: 8)
    batch_size: Annotated[int, Field(ge=1)] | Literal["auto"] = 8
    cache: Literal["static", "dynamic"] = "static"  # KV cache of generation (same tokens; static is faster)
    compile: bool = False  # torch.compile the decoding step (static cache; CUDA: CUDA graphs)
    max_prompt_len: int | None = Field(1024, ge=16)  # None: the model's context minus max_new_tokens
    on_long_prompt: Literal["truncate", "error"] = "truncate"  # error: the paper never truncates
    cc_mode: Literal["transform", "none", "parallel"] = "transform"
    decision_mode: Literal["argmax", "gumbel", "soft"] = "argmax"
    seed: int = 0  # Gumbel noise at inference (decision_mode: gumbel), drawn per prompt from (seed, prompt)
    seeds: int = Field(1, ge=1)  # gumbel: evaluate under seeds seed..seed+K-1 and report their spread
    # XNLI/XStoryCloze/MMMLU: parse the option from generated text, or score each option's
    # log-likelihood as lm-evaluation-harness does (cc_core.loglik)
    choice_scoring: Literal["generate", "loglik"] = "generate"
    # How generated text is compared with the gold (cc_core.metrics): lenient (option words, look-alike letters,
    # one spelling per number) | standard (the reference scripts: SQuAD/MLQA, MKQA, rouge-score with XL-Sum's tokenisation)
    protocol: Literal["lenient", "standard"] = "lenient"
    dtype: Literal["auto", "float32", "bfloat16"] = "auto"  # auto: bfloat16 on a GPU, float32 on a CPU
    # end_of_turn: stop at the model's EOS and the template's end of turn, text stripped | model_eos: stop only
    # at model.config.eos_token_id, special tokens skipped, nothing stripped (the authors)
    stop: Literal["end_of_turn", "model_eos"] = "end_of_turn"
    add_special_tokens: bool = False  # also the tokenizer's own specials (the authors: a second BOS)

    @field_validator("benchmarks")
    @classmethod
    def _known_benchmarks(cls, value: list[str]) -> list[str]:
        return [canonical_benchmark(name) for name in value]

    @field_validator("limit")
    @classmethod
    def _known_limit_benchmarks(cls, value):
        if isinstance(value, dict):
            return {canonical_benchmark(name): n for name, n in value.items()}
        return value

    def limit_for(self, benchmark: str) -> int | None:
        """Items per language for ``benchmark`` (None: all)."""
        if isinstance(self.limit, dict):
            return self.limit.get(canonical_benchmark(benchmark))
        return self.limit

    @field_validator("langs")
    @classmethod
    def _known_langs(cls, value: list[str]) -> list[str]:
        return [check_language(code) for code in value]


class ReportParams(_Section):
    bootstrap_samples: int = Field(1000, ge=10)
    confidence: float = Field(0.95, gt=0, lt=1)
    seed: int = 0
    paper_reference: bool = False  # a column with the paper's published CC-Tuning scores (paper profile)


class RegisterParams(_Section):
    model_name: str | None = None
    metric: str = "mean"
    log_weights: bool = True  # copy the checkpoint into the artifact store: a version never changes
    # Serving limits, recorded in the version's model config (cc_core/serving.py)
    max_prompts: int = Field(64, ge=1)  # prompts per request
    max_prompt_chars: int = Field(8000, ge=1)  # characters per prompt
    request_timeout_s: float = Field(50.0, gt=0)  # generation stops there (under MLflow's own 60 s)

    @field_validator("metric")
    @classmethod
    def _known_metric(cls, value: str) -> str:
        # checked when params load, not at the end of a pipeline run
        return "mean" if value.lower() == "mean" else canonical_benchmark(value)


class TrackingParams(_Section):
    enabled: bool = True
    uri: str = "sqlite:///mlflow.db"
    artifact_location: str = "mlartifacts"
    experiment: str = "cc-tuning"
    on_unavailable: Literal["skip", "fail"] = "skip"
    log_checkpoint: bool = False


with warnings.catch_warnings():
    # The section name "register" shadows ABCMeta.register on the class, which nothing here uses.
    warnings.filterwarnings("ignore", message='Field name "register"')

    class _ParamsBase(_Section):
        register: RegisterParams = Field(default_factory=RegisterParams)


class Params(_ParamsBase):
    model: ModelParams = Field(default_factory=ModelParams)
    data: DataParams = Field(default_factory=DataParams)
    train: TrainParams = Field(default_factory=TrainParams)
    collect: CollectParams = Field(default_factory=CollectParams)
    fit: FitParams = Field(default_factory=FitParams)
    eval: EvalParams = Field(default_factory=EvalParams)
    report: ReportParams = Field(default_factory=ReportParams)
    tracking: TrackingParams = Field(default_factory=TrackingParams)

    def section_hash(self, *sections: str) -> str:
        """Short content hash of the named sections (all when none): tags runs and registry versions."""
        data = self.model_dump(mode="json")
        picked = {name: data[name] for name in (sections or data)}
        return hashlib.sha256(json.dumps(picked, sort_keys=True).encode()).hexdigest()[:16]

    def flat(self) -> dict[str, Any]:
        """``{"train.learning_rate": 5e-05, ...}``: what MLflow logs as params."""
        out: dict[str, Any] = {}

        def walk(prefix: str, node: Any) -> None:
            if isinstance(node, dict):
                for key, value in node.items():
                    walk(f"{prefix}.{key}" if prefix else key, value)
            else:
                out[prefix] = node

        walk("", self.model_dump(mode="json"))
        return out


def _apply_override(data: dict[str, Any], override: str, source: str) -> None:
    key, sep, raw = override.partition("=")
    key = key.strip()
    if not sep or not key:
        raise ConfigError(f"{source}: override {override!r} is not of the form section.key=value")
    parts = key.split(".")
    node = data
    for part in parts[:-1]:
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise ConfigError(f"{source}: {key}: {part!r} is not a section")
        node = child
    try:
        node[parts[-1]] = yaml.safe_load(raw) if raw.strip() else None
    except yaml.YAMLError as err:
        raise ConfigError(f"{source}: {key}: cannot parse value {raw!r}: {err}") from None


def _format_validation_error(err: ValidationError, source: str) -> str:
    lines = []
    for problem in err.errors():
        key = ".".join(str(part) for part in problem["loc"]) or "(top level)"
        if problem["type"] == "extra_forbidden":
            msg = "unknown key"
        else:
            msg = problem["msg"]
            if "input" in problem and not isinstance(problem["input"], dict):
                msg += f" (got {problem['input']!r})"
        lines.append(f"{source}: {key}: {msg}")
    return "\n".join(lines)


def parse_params(data: dict[str, Any] | None, source: str = "params", overrides: list[str] | None = None) -> Params:
    """Validate a params mapping (plus ``section.key=value`` overrides) into :class:`Params`."""
    data = dict(data or {})
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: top level must be a mapping of sections")
    # The inherited "register" field's default resolves to ABCMeta.register (a bound method), not
    # RegisterParams(): always pass the section so a params file without it gets the real defaults.
    data.setdefault("register", {})
    for override in overrides or []:
        _apply_override(data, override, "--set")
    try:
        return Params.model_validate(data)
    except ValidationError as err:
        raise ConfigError(_format_validation_error(err, source)) from None


def load_params(path: str | Path = "params.yaml", overrides: list[str] | None = None) -> Params:
    """Read and validate a params file; errors name the file and the key."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: params file not found")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as err:
        raise ConfigError(f"{path}: not valid YAML: {err}") from None
    if data is not None and not isinstance(data, dict):
        raise ConfigError(f"{path}: top level must be a mapping of sections")
    return parse_params(data, str(path), overrides)
