"""What each remaining difference from the authors' run changes (issue 22), measured on this project's data.

    python bench/paper_differences.py dtype --model models/cc --transform transform
    python bench/paper_differences.py stop --model models/cc --transform transform --model-eos "<|endoftext|>" --limit 1
    python bench/paper_differences.py solver --activations activations
    python bench/paper_differences.py truncation --cutoffs 1024,512,256
    python bench/paper_differences.py loss --devices 8 --per-device 16

- ``dtype``: the Decision Maker's choice for every prompt of the bundled benchmark fixture (six
  benchmarks, every language and item), transform mode, with the model in float32 and in bfloat16
  (``eval.dtype``); how many choices differ, under argmax and under one seeded Gumbel draw (seed 0).
- ``stop``: XQuAD, MKQA and XL-Sum of the fixture under the ``standard`` protocol, generated with
  ``eval.stop: end_of_turn`` and ``model_eos``. SmolLM2's config EOS is ``<|im_end|>``, its template's own
  end of turn, so there the authors' rule changes nothing; ``--model-eos`` sets the config EOS to
  another token first (``<|endoftext|>``), as Llama-3.1 base's is ``<|end_of_text|>`` while its llama3
  template ends turns with ``<|eot_id|>``.
- ``solver``: the Transform Matrix of ``activations`` by Cholesky on the normal equations and by the
  authors' float64 SVD lstsq (``fit.solver``): their relative difference (Frobenius); then the same
  with only the first 10 pairs (their code's sample size) and how far that matrix is from the full one.
- ``truncation``: the bundled SFT data (the authors' training file is not available offline) encoded
  as CC training examples under ``train.truncation: keep_prompt`` and ``llama_factory``, counting the
  records each rule affects per cutoff; tokenizer: SmolLM2's with its own template (``--llama3`` adds
  Llama-3's special tokens and uses the ``llama3-lf`` template and the authors' anchors).
- ``loss``: the weight each response token gets in a step's loss under ``train.loss_average:
  global_tokens`` (1 / the step's tokens) and ``micro_batch`` (1 / (devices × its micro-batch's tokens)),
  for the bundled SFT data encoded as CC examples (SmolLM2's tokenizer, cutoff 1024) in steps of
  devices × per-device examples (the paper's 8 × 16, seed-0 order): how far apart the two weightings are.

The last lines are ``name: value``.
"""

from __future__ import annotations

import argparse
import copy
import os
import sys
import tempfile
from dataclasses import asdict
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

FIXTURE = "bundled"


def footer(values: dict[str, object]) -> None:
    """The figures, last, one per line: `name: value` (counts as integers, ratios to 4 significant digits)."""
    for name, value in values.items():
        print(f"{name}: {value:.4g}" if isinstance(value, float) else f"{name}: {value}")


def fixture_items(benchmarks):
    from cc_core.data.benchmarks import available_langs, get_spec, load_benchmark

    return [item for name in benchmarks for lang in available_langs(get_spec(name), FIXTURE)
            for item in load_benchmark(name, lang, FIXTURE)]


def run_dtype(args) -> dict[str, object]:
    """Pass 1 of the transform prefill (capture at the anchor → matrix → Decision Maker, in float32 as
    generation does) once per dtype; argmax and the seeded Gumbel draw both read the same activations."""
    from cc_core.data.benchmarks import BENCHMARKS
    from cc_core.generate import Generator
    from cc_core.generation.prefill import select_layer
    from cc_core.modeling.hooks import capture_ffn

    items = fixture_items(list(BENCHMARKS))
    prompts, langs = [i.prompt for i in items], [i.lang for i in items]
    choices: dict[tuple, list[int]] = {}
    for dtype in (torch.float32, torch.bfloat16):
        gen = Generator.from_dirs(args.model, transform=args.transform, mode="transform", dtype=dtype,
                                  max_prompt_len=None)
        encoded = [gen.encode_prompt(p) for p in prompts]
        order = sorted(range(len(prompts)), key=lambda i: len(encoded[i].input_ids))
        picked = {mode: [0] * len(prompts) for mode in ("argmax", "gumbel")}
        for start in range(0, len(order), args.batch_size):
            chunk = order[start:start + args.batch_size]
            ids, mask, anchor, _ = gen.encode([prompts[i] for i in chunk], [encoded[i] for i in chunk])
            with torch.no_grad():
                acts, embeds = capture_ffn(gen.model, ids, mask, anchor, with_embed=True, paths=gen.cc.paths)
                mapped = gen.transform.apply(acts.float(), [langs[i] for i in chunk])
                for mode in picked:
                    _, choice = select_layer(gen.cc, mapped, embeds, mode, 0, [prompts[i] for i in chunk])
                    for i, layer in zip(chunk, choice.argmax(-1).tolist()):
                        picked[mode][i] = layer
        for mode, layers in picked.items():
            choices[(dtype, mode)] = layers
            print(f"{dtype} {mode}: {len(layers)} prompts, layers used {sorted(set(layers))}", flush=True)
    out: dict[str, object] = {"prompts": len(prompts)}
    for mode in ("argmax", "gumbel"):
        a, b = choices[(torch.float32, mode)], choices[(torch.bfloat16, mode)]
        out[f"dm_choices_differ_{mode}"] = sum(x != y for x, y in zip(a, b))
    return out


def run_stop(args) -> dict[str, float]:
    from cc_core.config import parse_params
    from cc_core.data.benchmarks import available_langs, get_spec
    from cc_core.evaluate import evaluate_languages
    from cc_core.generate import Generator
    from cc_core.modeling.loading import load_for_inference

    loaded = load_for_inference(args.model, args.transform, with_transform=True)
    if args.model_eos:
        token = loaded.tokenizer.convert_tokens_to_ids(args.model_eos)
        loaded.model.config.eos_token_id = token
        print(f"config eos_token_id set to {token} ({args.model_eos})", flush=True)
    limit = "null" if args.limit is None else str(args.limit)
    params = parse_params({}, overrides=["eval.protocol=standard", "eval.data_dir=bundled", f"eval.limit={limit}"])
    out: dict[str, float] = {}
    gens = {stop: Generator(loaded.model, loaded.tokenizer, loaded.cc, loaded.transform, "transform", stop=stop,
                            max_new_tokens=40, batch_size=args.batch_size, max_prompt_len=None, cache="static")
            for stop in ("end_of_turn", "model_eos")}
    for bench in ("XQuAD", "MKQA", "XLSum"):  # both rules per benchmark, so a cut-short run still pairs them
        texts = {}
        for stop, gen in gens.items():
            results = evaluate_languages(params, "cc", bench, available_langs(get_spec(bench), FIXTURE), gen)
            scores = [r.summary["score"] for r in results.values()]
            out[f"{bench}_{stop}"] = round(sum(scores) / len(scores), 2)
            texts[stop] = [row["output"] for r in results.values() for row in r.rows]
            print(f"{bench} {stop}: {out[f'{bench}_{stop}']}", flush=True)
        a, b = texts["end_of_turn"], texts["model_eos"]
        out[f"{bench}_outputs_changed"] = sum(x.strip() != y.strip() for x, y in zip(a, b))
        out[f"{bench}_items"] = len(a)
        out[f"{bench}_delta"] = round(out[f"{bench}_model_eos"] - out[f"{bench}_end_of_turn"], 2)
        print(f"{bench}: {out[f'{bench}_outputs_changed']} of {len(a)} outputs changed, "
              f"delta {out[f'{bench}_delta']}", flush=True)
        for x, y in [(x, y) for x, y in zip(a, b) if x.strip() != y.strip()][:2]:
            print(f"  {bench} end_of_turn: {x!r}\n  {bench} model_eos:   {y!r}", flush=True)
    return out


def subset_activations(activations: str, rows: list[int], out: Path) -> None:
    """A copy of a (one-shard) activations directory holding only ``rows`` (pair indices, in that order)."""
    from safetensors.torch import load_file, save_file

    from cc_core.io import write_json
    from cc_core.transform import read_index

    index = read_index(activations)
    if len(index["shards"]) != 1:
        raise SystemExit("solver: expects one activations shard (collect.shard_size >= pairs)")
    shard = index["shards"][0]
    tensors = load_file(str(Path(activations) / shard["file"]))
    picked = torch.tensor(rows)
    save_file({k: v[picked].contiguous() for k, v in tensors.items()}, str(out / shard["file"]),
              metadata={"model_sha256": index["model_sha256"], "pairs": str(len(rows))})
    write_json(out / "index.json", {**index, "pairs": len(rows), "shards": [
        {**shard, "ids": [shard["ids"][i] for i in rows], "langs": [shard["langs"][i] for i in rows]}]})


def run_solver(args) -> dict[str, object]:
    from cc_core.config import FitParams
    from cc_core.transform import fit_transform, read_index

    def fit(activations, solver, holdout=0.0):
        params = FitParams(holdout_fraction=holdout, holdout_split="last", solver=solver)
        transform, report = fit_transform(params, activations)
        return transform.matrix.double(), report["summary"]

    def rel(a, b):
        return float((a - b).norm() / b.norm())

    out: dict[str, object] = {}
    chol, _ = fit(args.activations, "cholesky")
    lstsq, summary = fit(args.activations, "lstsq")
    pairs = read_index(args.activations)["pairs"]
    out.update(pairs=pairs, rows=summary["rows_fit"], rel_diff_lstsq_cholesky=rel(chol, lstsq))
    half = pairs // 2
    with tempfile.TemporaryDirectory() as tmp:
        ten = Path(tmp) / "ten"
        ten.mkdir()
        subset_activations(args.activations, list(range(10)), ten)
        chol10, s10 = fit(str(ten), "cholesky")
        lstsq10, _ = fit(str(ten), "lstsq")
        out.update(rows_10_pairs=s10["rows_fit"], solver_10_pairs_cholesky_path=s10["solver"],
                   rel_diff_lstsq_cholesky_10_pairs=rel(chol10, lstsq10),
                   rel_diff_10_pairs_vs_all_lstsq=rel(lstsq10, lstsq))
        # fit quality on the same held-out pairs (the second half): fitted on the first 10, or the whole first half
        for fitted in (10, half):
            folder = Path(tmp) / f"first{fitted}"
            folder.mkdir()
            subset_activations(args.activations, list(range(fitted)) + list(range(half, pairs)), folder)
            _, summary = fit(str(folder), "lstsq", (pairs - half) / (fitted + pairs - half))
            held = summary["heldout"]
            out[f"heldout_r2_fit_on_{fitted}"] = held["transform"]["r2"]
            out[f"heldout_cosine_fit_on_{fitted}"] = held["transform"]["cosine"]
            out["heldout_r2_identity"] = held["identity"]["r2"]
            out["heldout_cosine_identity"] = held["identity"]["cosine"]
            out["heldout_pairs"] = summary["pairs_heldout"]
    return out


def run_truncation(args) -> dict[str, float]:
    from cc_core.data.records import load_bundled
    from cc_core.modeling.base import smollm2_tokenizer
    from cc_core.prompts import anchor_rule, set_chat_template
    from cc_core.training.data import encode_records

    tokenizer = smollm2_tokenizer()
    anchor = "last_prompt_token"
    if args.llama3:
        tokenizer = copy.deepcopy(tokenizer)
        specials = ["<|begin_of_text|>", "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>", "<|end_of_text|>"]
        tokenizer.add_special_tokens({"additional_special_tokens": specials})
        tokenizer.bos_token, tokenizer.eos_token = "<|begin_of_text|>", "<|end_of_text|>"
        set_chat_template(tokenizer, "llama3-lf")
        anchor = "authors"
    records = load_bundled().records
    rule = anchor_rule(tokenizer, anchor)
    out: dict[str, float] = {"records": len(records)}
    for cutoff in (int(c) for c in args.cutoffs.split(",")):
        for truncation in ("keep_prompt", "llama_factory"):
            _, stats = encode_records(records, tokenizer, cutoff, "cc", truncation=truncation, rule=rule)
            stats = asdict(stats)
            print(f"cutoff {cutoff} {truncation}: " + ", ".join(f"{k} {v}" for k, v in stats.items() if k != "records"),
                  flush=True)
            for key in ("dropped_truncated", "response_truncated", "prompt_truncated", "anchor_lost",
                        "english_truncated", "english_emptied", "english_anchor_lost"):
                out[f"{truncation}_{cutoff}_{key}"] = stats[key]
    return out


def run_loss(args) -> dict[str, object]:
    """Token weights only (no model): both rules sum to one per step, so only their spread differs."""
    import random

    from cc_core.data.records import load_bundled
    from cc_core.modeling.base import smollm2_tokenizer
    from cc_core.training.data import encode_records

    features, _ = encode_records(load_bundled().records, smollm2_tokenizer(), 1024, "cc")
    counts = [sum(label != -100 for label in f["labels"]) for f in features]
    random.Random(0).shuffle(counts)
    step = args.devices * args.per_device
    ratios, example_ratios = [], []
    for start in range(0, len(counts) - step + 1, step):  # whole steps only
        chunk = counts[start:start + step]
        total = sum(chunk)
        for d in range(args.devices):
            micro = chunk[d * args.per_device:(d + 1) * args.per_device]
            ratio = total / (args.devices * sum(micro))  # w_micro / w_global, the same for each token of it
            ratios += [ratio] * sum(micro)
            example_ratios += [ratio] * len(micro)
    out: dict[str, object] = {"examples": len(counts), "steps": len(counts) // step,
                              "tokens_per_example_min": min(counts), "tokens_per_example_max": max(counts)}
    out.update(token_weight_ratio_min=min(ratios), token_weight_ratio_max=max(ratios),
               token_weight_mean_abs_rel_diff=sum(abs(r - 1) for r in ratios) / len(ratios),
               examples_weighted_over_1_25=sum(r > 1.25 for r in example_ratios),
               examples_weighted_under_0_8=sum(r < 0.8 for r in example_ratios))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="what", required=True)
    for name in ("dtype", "stop"):
        p = sub.add_parser(name)
        p.add_argument("--model", default="models/cc")
        p.add_argument("--transform", default="transform")
        p.add_argument("--batch-size", type=int, default=8)
        if name == "stop":
            p.add_argument("--model-eos", default=None, help="a token to make the config's EOS first")
            p.add_argument("--limit", type=int, default=None, help="items per language (default: all)")
    sub.add_parser("solver").add_argument("--activations", default="activations")
    p = sub.add_parser("truncation")
    p.add_argument("--cutoffs", default="1024,512,256")
    p.add_argument("--llama3", action="store_true", help="Llama-3's special tokens and the llama3-lf template")
    p = sub.add_parser("loss")
    p.add_argument("--devices", type=int, default=8)
    p.add_argument("--per-device", type=int, default=16)
    args = parser.parse_args()
    torch.manual_seed(0)
    footer({"dtype": run_dtype, "stop": run_stop, "solver": run_solver, "truncation": run_truncation,
            "loss": run_loss}[args.what](args))


if __name__ == "__main__":
    main()
