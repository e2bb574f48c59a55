"""lm-evaluation-harness model type ``cc-tuning``: any lm-eval task on a CC checkpoint, with its connection.

    pip install -c constraints.txt -e '.[lm-eval]'
    cctune-lm-eval --model cc-tuning --model_args checkpoint=models/cc,transform=transform \\
        --tasks cc_xnli,cc_xstorycloze,cc_mmmlu,cc_xquad,cc_mkqa,cc_xlsum --apply_chat_template --limit 2
    cctune-lm-eval --model hf --model_args pretrained=models/sft --tasks cc_xnli --apply_chat_template

The ``cc_<benchmark>`` tasks ship with the package (``cc_core/lm_eval_tasks``, :data:`TASKS_DIR`):
the six benchmarks from ``eval.data_dir`` (params.yaml's in the current directory; the bundled
fixture without one; ``--metadata '{"data_dir": DIR}'`` overrides), one subtask per paper language
(``cc_xnli_ar``...), offline, scored as ``cctune eval --choice-scoring loglik`` scores them.
``cctune-lm-eval`` finds them by itself; from Python, pass
``TaskManager(include_path=cc_core.lm_eval_backend.TASKS_DIR)``. lm-eval's own tasks (``xnli``...)
work as well where the hub is reachable.

``cctune-lm-eval`` (also ``python -m cc_core.lm_eval_backend``) is lm-eval's own CLI, unchanged,
with ``cc-tuning`` registered first. lm-eval 0.4.13 (the release pinned here) resolves ``--model``
only against its built-in table and has no plugin hook, so the plain ``lm_eval`` command cannot
see an outside model type. The package also declares the ``lm_eval.models`` entry point that
lm-eval's plugin mechanism (on its main branch, after 0.4.13) discovers, so once a release
with it is pinned, plain ``lm_eval --model cc-tuning ...`` works too. From Python, importing this
module registers the name: ``import cc_core.lm_eval_backend; lm_eval.simple_evaluate(model="cc-tuning", ...)``.

Model arguments (``--model_args k=v,...``):
    checkpoint (or pretrained)  model directory: a CC checkpoint or a plain HF directory
    transform                   Transform Matrix file or directory (mode transform; default: transform)
    mode                        transform | none (default: transform for a CC checkpoint, none otherwise)
    decision_mode               argmax (default) | gumbel | soft
    lang                        language code for a per-language Transform Matrix (default: the shared one)
    device, dtype, batch_size, max_length, max_gen_toks
    (the device is picked as lm-eval's ``hf`` model picks it: the one asked for where this machine has
    it, else CUDA when available, else the CPU, logged as ``hf`` logs it; lm-eval's CLI asks for cuda:0)

What each request type does:
* ``loglikelihood``: cc_core.loglik. The connection applies as in generation with the anchor at
  the last context token, which is the last token of the chat prompt when lm-eval renders
  contexts with ``--apply_chat_template`` (use it for CC: the method was trained with the
  anchor there; a warning says so otherwise). Unlike lm-eval's ``hf``, the context is kept
  whole when the joint tokenization of context + continuation starts with the context's own
  ids, so its last token stays the anchor: ``hf`` always moves the context's trailing whitespace
  (the ``\\n`` ending a ChatML generation prompt) into the continuation and scores it too. Only on
  a merge across the boundary (a raw context like ``"Answer: "``) is lm-eval's rule applied.
* ``loglikelihood_rolling``: plain model, always (no connection): a rolling document has no
  prompt, hence no anchor. lm-eval's disjoint windows of ``max_length`` tokens.
* ``generate_until``: the Generator's prefill for the mode, then greedy decoding; the text is
  cut at the first stop sequence (decoding itself stops at EOS or ``max_gen_toks``).
Contexts are tokenized without added special tokens (a chat template writes its own).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

try:
    # lm_eval.models first: lm-eval fills in its built-in models ("hf", ...) only while the
    # registry is still empty, so registering ours first would hide them all.
    import lm_eval.models  # noqa: F401
    from lm_eval import utils as lm_utils
    from lm_eval.api.model import TemplateLM
    from lm_eval.api.registry import register_model
except ImportError as err:  # an optional extra: cc_core itself never needs it
    raise ImportError("cc_core.lm_eval_backend needs lm-evaluation-harness, an optional extra: "
                      "pip install -c constraints.txt -e '.[lm-eval]'") from err

import torch

from cc_core.generate import Generator
from cc_core.loglik import LoglikScorer, prefill_ids, split_continuation
from cc_core.modeling.checkpoint import CC_CONFIG
from cc_core.prompts import anchor_positions, pad_sequences

log = logging.getLogger(__name__)
NAME = "cc-tuning"
TASKS_DIR = str(Path(__file__).with_name("lm_eval_tasks"))  # the offline cc_<benchmark> task definitions
_MARK = "\u27e6cc-tuning\u27e7"  # a user text no template contains: splits off the generation prompt
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def _dtype(value):
    if value in (None, "", "auto"):
        return None
    if isinstance(value, torch.dtype):
        return value
    if str(value) not in DTYPES:
        raise ValueError(f"{NAME}: dtype={value!r}; valid: auto, {', '.join(DTYPES)}")
    return DTYPES[str(value)]


def pick_device(device: str | None) -> str:
    """``device`` if this machine has it, else ``cuda`` when available, else ``cpu``: lm-eval's ``hf``
    model's rule and messages (its CLI passes cuda:0 by default, on a CPU-only laptop too)."""
    available = {"cpu"}
    if torch.cuda.is_available():
        available |= {"cuda", *(f"cuda:{i}" for i in range(torch.cuda.device_count()))}
    if torch.backends.mps.is_available():
        available |= {"mps", "mps:0"}
    say = logging.getLogger("lm_eval.models.cc_tuning").info  # shown as lm-eval shows hf's
    if device and device in available:
        say("Using device '%s'", device)
        return device
    if device:
        say("%s: device %r is not available on this machine", NAME, device)
    say("Device not specified")
    say("Cuda Available? %s", torch.cuda.is_available())
    return "cuda" if torch.cuda.is_available() else "cpu"


def _batch_size(value) -> int:
    """lm-eval passes ``--batch_size`` as an int or a string ("8", "auto", "auto:4"); auto → 8."""
    text = str(value or "8")
    return 8 if text.startswith("auto") else int(text)


@register_model(NAME)
class CCTuningLM(TemplateLM):
    """A CC checkpoint (or plain HF directory) behind lm-eval's ``LM`` interface, through cc_core.generate."""

    def __init__(self, checkpoint: str | None = None, pretrained: str | None = None, transform: str = "transform",
                 mode: str | None = None, decision_mode: str = "argmax", lang: str | None = None,
                 device: str | None = None, dtype=None, batch_size=8, max_batch_size=None,
                 max_length: int | None = None, max_gen_toks: int = 256, **unused) -> None:
        super().__init__()
        model_dir = checkpoint or pretrained
        if not model_dir:
            raise ValueError(f"{NAME}: give the model directory, e.g. --model_args checkpoint=models/cc")
        if unused:
            log.warning("%s: ignoring model_args %s", NAME, ", ".join(sorted(unused)))
        mode = mode or ("transform" if (Path(model_dir) / CC_CONFIG).is_file() else "none")
        if mode not in ("none", "transform"):
            raise ValueError(f"{NAME}: mode={mode!r}; valid: transform, none (parallel needs English "
                             "parallels, which lm-eval tasks do not carry)")
        device = pick_device(device)
        self.gen = Generator.from_dirs(model_dir, transform=transform, mode=mode, device=device,
                                       dtype=_dtype(dtype), decision_mode=decision_mode,
                                       batch_size=_batch_size(batch_size), max_new_tokens=int(max_gen_toks))
        self.tokenizer = self.gen.tokenizer
        self.scorer = LoglikScorer(self.gen)
        self.model_dir, self.mode, self.lang = str(model_dir), mode, lang
        self.batch_size = self.gen.batch_size
        context = getattr(self.gen.model.config.get_text_config(), "max_position_embeddings", None)
        self._max_length = int(max_length or context or 2048)
        self.max_gen_toks = int(max_gen_toks)
        self._device = self.gen.device
        self._warned_anchor = False

    # --- lm-eval's tokenization interface ---------------------------------------------------------------
    @property
    def eot_token_id(self) -> int:
        return self.tokenizer.eos_token_id

    @property
    def prefix_token_id(self) -> int:
        # conditions the first token of an empty context (and of a rolling document)
        bos = self.tokenizer.bos_token_id
        return bos if bos is not None else self.eot_token_id

    @property
    def max_length(self) -> int:
        return self._max_length

    @property
    def tokenizer_name(self) -> str:
        return self.model_dir.replace("/", "__")

    def tok_encode(self, string: str, add_special_tokens: bool | None = None, **kwargs) -> list[int]:
        return self.tokenizer(string, add_special_tokens=bool(add_special_tokens))["input_ids"]

    def tok_decode(self, tokens, skip_special_tokens: bool = True) -> str:
        return self.tokenizer.decode(tokens, skip_special_tokens=skip_special_tokens)

    def _encode_pair(self, context: str, continuation: str) -> tuple[list[int], list[int]]:
        # the context stays whole when it can (its last token is the anchor); see the module docstring
        return split_continuation(self.tokenizer, context, continuation, move_space=True)

    def apply_chat_template(self, chat_history: list[dict[str, str]], add_generation_prompt: bool = True) -> str:
        return self.tokenizer.apply_chat_template(chat_history, tokenize=False,
                                                  add_generation_prompt=add_generation_prompt,
                                                  continue_final_message=not add_generation_prompt)

    def get_model_info(self) -> dict:
        return {"model_dir": self.model_dir, "cc_mode": self.mode, "decision_mode": self.gen.decision_mode}

    # --- requests ---------------------------------------------------------------------------------------
    def _check_anchor(self, contexts: list[str]) -> None:
        """Warn once when transform-mode contexts are not chat prompts (no --apply_chat_template)."""
        if self.mode == "none" or self._warned_anchor or not getattr(self.tokenizer, "chat_template", None):
            return
        rendered = self.apply_chat_template([{"role": "user", "content": _MARK}])
        suffix = rendered.split(_MARK)[-1]
        if suffix and any(c and not c.endswith(suffix) for c in contexts):
            log.warning("%s: contexts do not end with the chat template's generation prompt %r: the connection's "
                        "anchor is then the last context token of raw text; run lm-eval with "
                        "--apply_chat_template for CC", NAME, suffix)
            self._warned_anchor = True

    def _fit(self, context: list[int], continuation: list[int], key) -> list[int]:
        """Cut the context from the left so context + continuation fit ``max_length``."""
        room = self.max_length + 1 - len(continuation)
        if room < 1:
            raise ValueError(f"{NAME}: a continuation of {len(continuation)} tokens does not fit "
                             f"max_length={self.max_length} (request {key!r:.80})")
        return context[-room:]

    def _loglikelihood_tokens(self, requests, disable_tqdm: bool = False, **kwargs) -> list[tuple[float, bool]]:
        """Requests ((context, continuation), context ids, continuation ids), scored per distinct context."""
        self._check_anchor([key[0] for key, _, _ in requests if key is not None])
        groups: dict[tuple[int, ...], list[int]] = {}
        fitted = []
        for index, (key, context, continuation) in enumerate(requests):
            context = self._fit(list(context), list(continuation), key)
            fitted.append((context, list(continuation)))
            groups.setdefault(tuple(context), []).append(index)
        contexts = [list(c) for c in groups]
        options = [[fitted[i][1] for i in members] for members in groups.values()]
        scored = self.scorer.score_ids(contexts, options, [self.lang] * len(contexts))
        out: list[tuple[float, bool] | None] = [None] * len(requests)
        for members, result in zip(groups.values(), scored):
            for i, ll, greedy in zip(members, result.logliks, result.greedy):
                out[i] = (float(ll), bool(greedy))
                if requests[i][0] is not None:
                    self.cache_hook.add_partial("loglikelihood", requests[i][0], out[i])
        return out  # type: ignore[return-value]

    def loglikelihood_rolling(self, requests, disable_tqdm: bool = False) -> list[float]:
        """Sum log-likelihood of whole documents over disjoint windows, plain model (no anchor)."""
        windows, owner = [], []
        for index, (string,) in enumerate(req.args for req in requests):
            tokens = self.tok_encode(string)
            for window in map(lm_utils.make_disjoint_window, lm_utils.get_rolling_token_windows(
                    token_list=tokens, prefix_token=self.prefix_token_id, max_seq_len=self.max_length,
                    context_len=1)):
                windows.append(window)
                owner.append(index)
        totals = [0.0] * len(requests)
        if windows:
            scored = self.scorer.score_ids([w[0] for w in windows], [[w[1]] for w in windows], connect=False)
            for index, result in zip(owner, scored):
                totals[index] += result.logliks[0]
        for req, total in zip(requests, totals):
            self.cache_hook.add_partial("loglikelihood_rolling", req.args, total)
        return totals

    def generate_until(self, requests, disable_tqdm: bool = False) -> list[str]:
        """Greedy continuations through the Generator's prefill (with the connection in transform mode)."""
        self._check_anchor([req.args[0] for req in requests])
        groups: dict[str, list[int]] = {}
        for index, req in enumerate(requests):
            groups.setdefault(json.dumps(req.args[1], sort_keys=True, default=str), []).append(index)
        out: list[str | None] = [None] * len(requests)
        for members in groups.values():
            kwargs = dict(requests[members[0]].args[1] or {})
            until, max_new = self._generation_args(kwargs)
            order = sorted(members, key=lambda i: len(requests[i].args[0]))
            for start in range(0, len(order), self.batch_size):
                chunk = order[start:start + self.batch_size]
                texts = self._generate([requests[i].args[0] for i in chunk], max_new)
                for i, text in zip(chunk, texts):
                    for stop in until:
                        if stop:
                            text = text.split(stop)[0]
                    out[i] = text
                    self.cache_hook.add_partial("generate_until", requests[i].args, text)
        return out  # type: ignore[return-value]

    def _generation_args(self, kwargs: dict) -> tuple[list[str], int]:
        if kwargs.get("do_sample") or float(kwargs.get("temperature", 0.0) or 0.0) > 0:
            raise ValueError(f"{NAME}: greedy decoding only (got do_sample/temperature in {kwargs})")
        eos = self.tok_decode([self.eot_token_id], skip_special_tokens=False)
        until = kwargs.get("until")
        until = [until] if isinstance(until, str) else list(until or [])
        if eos not in until:
            until.append(eos)
        max_new = int(kwargs.get("max_gen_toks", kwargs.get("max_new_tokens", self.max_gen_toks)))
        return until, max_new

    @torch.no_grad()
    def _generate(self, contexts: list[str], max_new: int) -> list[str]:
        gen = self.gen
        room = max(1, self.max_length - max_new)
        encoded = [(self.tok_encode(c) or [self.prefix_token_id])[-room:] for c in contexts]
        ids, mask = pad_sequences(encoded, gen.pad_id, "left")
        anchor = anchor_positions([len(e) for e in encoded], ids.shape[1], "left")
        ids, mask, anchor = ids.to(gen.device), mask.to(gen.device), anchor.to(gen.device)
        logits, cache, _ = prefill_ids(gen, ids, mask, anchor, [self.lang] * len(contexts))
        saved, gen.max_new_tokens = gen.max_new_tokens, max_new
        try:
            rows = gen.decode(logits, cache, mask)
        finally:
            gen.max_new_tokens = saved
        return [self.tok_decode(row[:gen.new_tokens(row)]) for row in rows]


def main() -> None:
    """``cctune-lm-eval``: lm-eval's CLI with ``cc-tuning`` registered (this module is imported) and the
    ``cc_<benchmark>`` tasks of :data:`TASKS_DIR` indexed beside lm-eval's own and ``--include_path``."""
    import lm_eval.tasks  # why: lm-eval's task index, for this console script only
    from lm_eval.__main__ import cli_evaluate  # why: lm-eval's command-line module, for this console script only

    base = lm_eval.tasks.TaskManager

    class TaskManager(base):  # the CLI builds its TaskManager through this name, at run time
        def __init__(self, *args, include_path=None, **kwargs):
            extra = [] if include_path is None else list(include_path) if isinstance(include_path, (list, tuple)) \
                else [include_path]
            super().__init__(*args, include_path=[TASKS_DIR, *extra], **kwargs)

    lm_eval.tasks.TaskManager = TaskManager
    cli_evaluate()


if __name__ == "__main__":
    main()
