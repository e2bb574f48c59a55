"""The six evaluation benchmarks of the paper: specs and loaders.

Layout (the authors'): ``<BENCH>/<prompt_dir>/<lang>.json`` + ``<BENCH>/<answer_dir>/<lang>.json``,
JSON Lines, line i of both belong together, line i of ``en.json`` is the English parallel
(XLSum: ``split_sample_en/<lang>.json`` holds the English translation of each language's prompts).

Sources for ``eval.data_dir``: ``bundled`` (the fixture shipped with the package), a
directory in that layout (``../shared/benchmarks``, a full copy), or ``hub`` (Hugging Face
datasets, formatted with the templates below; needs network).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cc_core.data.hub_templates import hub_template
from cc_core.hub import require_hub
from cc_core.io import InputError, iter_jsonl

BUNDLED_BENCHMARKS_DIR = Path(__file__).parent / "bundled" / "benchmarks"


@dataclass(frozen=True)
class BenchmarkSpec:
    name: str
    prompt_dir: str
    answer_dir: str
    langs: tuple[str, ...]  # the paper's 10 languages (English included)
    kind: str  # choice | qa | summary
    metric: str  # accuracy | f1 | rouge_l
    labels: tuple[str, ...] = ()  # option labels for choice tasks
    en_prompt_dir: str | None = None  # per-language English translations (XLSum)
    hub_id: str = ""  # Hugging Face dataset for the hub loader


BENCHMARKS: dict[str, BenchmarkSpec] = {
    spec.name: spec
    for spec in (
        BenchmarkSpec("XNLI", "split_sample", "ans_sample",
                      ("en", "ar", "el", "hi", "ru", "sw", "th", "tr", "ur", "zh"),
                      "choice", "accuracy", ("1", "2", "3"), hub_id="facebook/xnli"),
        BenchmarkSpec("XStoryCloze", "split", "ans",
                      ("en", "ar", "es", "eu", "hi", "id", "ru", "sw", "te", "zh"),
                      "choice", "accuracy", ("1", "2"), hub_id="juletxara/xstory_cloze"),
        BenchmarkSpec("MMMLU", "split_sample", "ans_sample",
                      ("en", "ar", "bn", "es", "hi", "id", "ko", "pt", "sw", "yo"),
                      "choice", "accuracy", ("A", "B", "C", "D"), hub_id="openai/MMMLU"),
        BenchmarkSpec("XQuAD", "split", "ans",
                      ("en", "ar", "de", "el", "hi", "ru", "th", "tr", "vi", "zh"),
                      "qa", "f1", hub_id="google/xquad"),
        BenchmarkSpec("MKQA", "split_sample", "ans_sample",
                      ("en", "ar", "de", "ja", "ko", "pt", "ru", "tr", "vi", "zh"),
                      "qa", "f1", hub_id="apple/mkqa"),
        BenchmarkSpec("XLSum", "split_sample", "ans_sample",
                      ("en", "ar", "fr", "hi", "id", "ru", "sw", "tr", "ur", "vi"),
                      "summary", "rouge_l", en_prompt_dir="split_sample_en", hub_id="csebuetnlp/xlsum"),
    )
}
_BY_LOWER = {name.lower(): name for name in BENCHMARKS}


def canonical_benchmark(name: str) -> str:
    """``xnli`` → ``XNLI``; unknown names raise listing the valid ones."""
    key = name.strip().lower()
    if key not in _BY_LOWER:
        raise ValueError(f"unknown benchmark {name!r}; valid: {', '.join(BENCHMARKS)}")
    return _BY_LOWER[key]


def get_spec(name: str) -> BenchmarkSpec:
    return BENCHMARKS[canonical_benchmark(name)]


@dataclass(frozen=True)
class BenchmarkItem:
    id: str
    lang: str
    prompt: str
    gold: Any  # label string, answer string, or list of acceptable answers (MKQA)
    prompt_en: str | None  # the parallel English prompt (for the `parallel` oracle mode)


def resolve_data_dir(data_dir: str | Path) -> Path | None:
    """``bundled`` → the packaged fixture; ``hub`` → None; else the path."""
    if str(data_dir) == "bundled":
        return BUNDLED_BENCHMARKS_DIR
    if str(data_dir) == "hub":
        return None
    return Path(data_dir).expanduser()


def available_langs(spec: BenchmarkSpec, data_dir: str | Path) -> list[str]:
    """The paper languages of ``spec`` present under ``data_dir`` (all of them for the hub)."""
    root = resolve_data_dir(data_dir)
    if root is None:
        return list(spec.langs)
    folder = root / spec.name / spec.prompt_dir
    if not folder.is_dir():
        raise InputError(f"{folder}: benchmark folder not found (eval.data_dir={data_dir})")
    return [lang for lang in spec.langs if (folder / f"{lang}.json").is_file()]


def check_lang(spec: BenchmarkSpec, lang: str) -> str:
    lang = lang.strip().lower()
    if lang not in spec.langs:
        raise ValueError(f"{spec.name} has no language {lang!r}; valid: {' '.join(spec.langs)}")
    return lang


def _read_lines(path: Path) -> list[tuple[int, Any]]:
    return list(iter_jsonl(path))


def _prompts(path: Path) -> list[str]:
    out = []
    for number, value in _read_lines(path):
        if not isinstance(value, dict) or not isinstance(value.get("instruction"), str):
            raise InputError(f"{path}:{number}: expected an object with a string 'instruction'")
        out.append(value["instruction"])
    return out


def load_authors_layout(spec: BenchmarkSpec, root: Path, lang: str, limit: int | None = None) -> list[BenchmarkItem]:
    lang = check_lang(spec, lang)
    prompt_file = root / spec.name / spec.prompt_dir / f"{lang}.json"
    answer_file = root / spec.name / spec.answer_dir / f"{lang}.json"
    prompts = _prompts(prompt_file)
    answers = _read_lines(answer_file)
    if len(prompts) != len(answers):
        raise InputError(
            f"{answer_file}: {len(answers)} answers but {prompt_file} has {len(prompts)} prompts; "
            "line i of both files must belong together"
        )
    for number, gold in answers:
        valid = isinstance(gold, str) or (isinstance(gold, list) and gold and all(isinstance(g, str) for g in gold))
        if not valid:
            raise InputError(f"{answer_file}:{number}: an answer must be a string or a list of strings")
    english: list[str] | None = None
    en_file = (root / spec.name / spec.en_prompt_dir / f"{lang}.json") if spec.en_prompt_dir else (
        root / spec.name / spec.prompt_dir / "en.json")
    if en_file.is_file():
        english = _prompts(en_file)
        if len(english) < len(prompts):
            english = None  # not parallel line for line: no oracle for this language
    items = [
        BenchmarkItem(f"{spec.name}-{lang}-{index:05d}", lang, prompt, answers[index][1],
                      english[index] if english else None)
        for index, prompt in enumerate(prompts)
    ]
    return items[:limit] if limit else items


# Prompt templates for the hub loader: the authors' English prompts, byte for byte (checked against
# every prompt of ../shared/benchmarks by tests/unit/test_hub_prompts_match_authors.py); the other
# languages' wording is in cc_core/data/hub_templates.py.
HUB_TEMPLATES: dict[str, str] = {
    "XNLI": ("Premise: {premise}\nHypothesis: {hypothesis}\n\nWhat do you think is the relationship between "
             "the premise and the hypothesis?\n\n(1) Entail \n(2) Neutral\n(3) Contradict\n\n"
             "If you have to choose one of these options, your answer would be:"),
    "XStoryCloze": ("{story}\n(1) {ending1}\n(2) {ending2}\n\nWhich of the two options is more likely to be the "
                    "ending of the given story.\nYour answer:"),
    "MMMLU": ("Please answer the following multiple choice question.\n\n{question}\n(A) {A}\n(B) {B}\n(C) {C}\n"
              "(D) {D}\n\nIf you have to choose one of these options, your answer would be:"),
    "XQuAD": ("Please answer these questions only based on the given context.\n\nContext: {context}\n"
              "Question: {question}\n\nYour answer:"),
    "MKQA": "Please answer the following question.\n\n{question}\n\nYour answer:",
    "XLSum": "Please summarize the following content into one sentence.\n{title}\n{text}",
}


# Datasets that ship a loading script, which `datasets` 4+ no longer runs: read the Parquet
# conversion the hub keeps for them instead.
PARQUET_REVISION = "refs/convert/parquet"
MMMLU_CONFIGS = {"ar": "AR_XY", "bn": "BN_BD", "es": "ES_LA", "hi": "HI_IN", "id": "ID_ID", "ko": "KO_KR",
                 "pt": "PT_BR", "sw": "SW_KE", "yo": "YO_NG"}
XLSUM_CONFIGS = {"ar": "arabic", "en": "english", "fr": "french", "hi": "hindi", "id": "indonesian", "ru": "russian",
                 "sw": "swahili", "tr": "turkish", "ur": "urdu", "vi": "vietnamese"}


def _hub_rows(spec: BenchmarkSpec, lang: str) -> list[tuple[str, Any]]:
    """(prompt, gold) rows from the hub dataset of ``spec`` in ``lang``, with that language's template."""
    import datasets  # why: seconds to import, and only the hub path needs it

    template = hub_template(spec.name, lang)
    if spec.name == "XNLI":
        rows = datasets.load_dataset(spec.hub_id, lang, split="test")
        return [(template.format(premise=r["premise"], hypothesis=r["hypothesis"]), str(r["label"] + 1)) for r in rows]
    if spec.name == "XStoryCloze":
        rows = datasets.load_dataset(spec.hub_id, lang, split="eval", revision=PARQUET_REVISION)
        # The authors join the four sentences with nothing between them ("...in 2011.I was..."): byte-equal prompts.
        return [(template.format(story="".join(r[f"input_sentence_{i}"] for i in range(1, 5)),
                                 ending1=r["sentence_quiz1"], ending2=r["sentence_quiz2"]),
                 str(r["answer_right_ending"])) for r in rows]
    if spec.name == "MMMLU":
        if lang == "en":  # openai/MMMLU holds the translations only; the English original is MMLU
            rows = datasets.load_dataset("cais/mmlu", "all", split="test")
            return [(template.format(question=r["question"], **dict(zip("ABCD", r["choices"]))), "ABCD"[r["answer"]])
                    for r in rows]
        rows = datasets.load_dataset(spec.hub_id, MMMLU_CONFIGS[lang], split="test")
        return [(template.format(question=r["Question"], A=r["A"], B=r["B"], C=r["C"], D=r["D"]), r["Answer"])
                for r in rows]
    if spec.name == "XQuAD":
        rows = datasets.load_dataset(spec.hub_id, f"xquad.{lang}", split="validation")
        return [(template.format(context=r["context"], question=r["question"]), r["answers"]["text"][0])
                for r in rows]
    if spec.name == "MKQA":
        rows = datasets.load_dataset(spec.hub_id, split="train", revision=PARQUET_REVISION)
        key = {"zh": "zh_cn"}.get(lang, lang)
        return [(template.format(question=r["queries"][key]),
                 [a["text"] for a in r["answers"][key] if a.get("text")] or [""]) for r in rows]
    rows = datasets.load_dataset(spec.hub_id, XLSUM_CONFIGS[lang], split="test")
    return [(template.format(title=r["title"], text=r["text"]), r["summary"]) for r in rows]


def load_hub(spec: BenchmarkSpec, lang: str, limit: int | None = None) -> list[BenchmarkItem]:
    lang = check_lang(spec, lang)
    require_hub(f"benchmark {spec.name} ({spec.hub_id})",
                "set eval.data_dir to 'bundled' or to a directory in the authors' layout")
    rows = _hub_rows(spec, lang)[:limit] if limit else _hub_rows(spec, lang)
    english = None
    if spec.name not in ("XLSum",) and lang != "en":
        english = [p for p, _ in (_hub_rows(spec, "en")[:limit] if limit else _hub_rows(spec, "en"))]
    return [BenchmarkItem(f"{spec.name}-{lang}-{i:05d}", lang, prompt, gold, english[i] if english else None)
            for i, (prompt, gold) in enumerate(rows)]


def load_benchmark(name: str, lang: str, data_dir: str | Path = "bundled", limit: int | None = None) -> list[BenchmarkItem]:
    """Items of one benchmark × language from ``data_dir`` (bundled | a directory | hub)."""
    spec = get_spec(name)
    root = resolve_data_dir(data_dir)
    if root is None:
        return load_hub(spec, lang, limit)
    return load_authors_layout(spec, root, lang, limit)
