"""The ``fit`` stage: the Transform Matrix M with B M ≈ A (docs/method.md, Transform Matrix).

    cctune fit                      # activations/ → transform/transform.safetensors + metrics/transform.json

Faithful default: one d×d matrix shared by all layers, plain least squares over all
(pair, layer) rows. Streaming: the shards are read one at a time and only the normal
equations BᵀB and BᵀA (float64, O(d²)) are kept, so memory does not grow with N; they are
solved by Cholesky (the pseudo-inverse when singular). ``fit.solver: lstsq`` is the authors'
``TransformMatrix/get_matrix.py``: ``numpy.linalg.lstsq`` (float64 SVD) on the stacked rows,
O(N·L·d) memory. Options: ridge λ, one matrix per layer, a bias term, one matrix per language.
A held-out split of pairs (seeded random, or ``fit.holdout_split: last``: the last pairs of the
collection, the draws after the fitted ones) reports MSE, R² and cosine(B M, A) per layer, next
to the identity map (no transform), so a user sees at a glance whether the matrix helps.
"""

from __future__ import annotations

import logging
import random
import time
import warnings
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from cc_core.config import FitParams
from cc_core.io import InputError, atomic_dir, read_json, read_safetensors, write_json
from cc_core.lineage import checkpoint_sha256
from cc_core.modeling.transform_matrix import TRANSFORM_FILE, TransformMatrix, TransformShapeError, load_transform
from cc_core.tracking import Tracker

log = logging.getLogger(__name__)
# The matrix itself lives in cc_core.modeling.transform_matrix; its loader and error are named here too
# because callers of the fit stage (cctune, tests) reach them through this module.
__all__ = ["FitResult", "TransformMatrix", "TransformShapeError", "fit", "fit_transform", "load_transform",
           "read_index", "iter_shards", "split_ids", "NormalEquations", "StackedRows", "SOLVERS"]
SOLVERS = ("cholesky", "lstsq")
HOLDOUT_SPLITS = ("random", "last")


# --- reading activations ---------------------------------------------------------------------------

@dataclass
class Shard:
    file: Path
    ids: list[str]
    langs: list[str]
    nonen: torch.Tensor  # [n, L, d]
    en: torch.Tensor


def read_index(activations_dir: str | Path, expected_model_sha256: str | None = None) -> dict:
    activations_dir = Path(activations_dir)
    where = activations_dir / "index.json"
    index = read_json(where)
    if not isinstance(index, dict):
        raise InputError(f"{where}: expected a JSON object (written by `cctune collect`)")
    for key, kind in (("model_sha256", str), ("num_layers", int), ("hidden_size", int), ("shards", list)):
        if not isinstance(index.get(key), kind):
            raise InputError(f"{where}: missing or invalid key {key!r}")
    for number, shard in enumerate(index["shards"]):
        if not isinstance(shard, dict) or not isinstance(shard.get("file"), str):
            raise InputError(f"{where}: shards[{number}] needs a 'file' name")
    if expected_model_sha256 and index.get("model_sha256") != expected_model_sha256:
        raise InputError(f"{activations_dir / 'index.json'}: activations were collected from another model "
                         f"(hash {str(index.get('model_sha256'))[:12]}…, current model {expected_model_sha256[:12]}…); "
                         "rerun `cctune collect`")
    if not index.get("shards"):
        raise InputError(f"{activations_dir / 'index.json'}: lists no shards")
    return index


def iter_shards(activations_dir: str | Path, index: dict) -> Iterator[Shard]:
    """Yield shards one at a time, validating ids, shapes, finiteness and the model hash."""
    activations_dir = Path(activations_dir)
    for entry in index["shards"]:
        path = activations_dir / entry["file"]
        if not path.is_file():
            raise InputError(f"{path}: shard listed in index.json is missing")
        tensors, meta = read_safetensors(path, "cctune collect (dvc repro collect)")
        if not {"nonen", "en"} <= set(tensors):
            raise InputError(f"{path}: a shard needs tensors 'nonen' and 'en', found {sorted(tensors)}")
        nonen, english = tensors["nonen"], tensors["en"]
        if meta.get("model_sha256") != index.get("model_sha256"):
            raise InputError(f"{path}: shard comes from a different model than index.json (hash mismatch)")
        ids, langs = entry.get("ids", []), entry.get("langs", [])
        if not (len(ids) == len(langs) == nonen.shape[0] == english.shape[0]):
            raise InputError(f"{path}: {nonen.shape[0]} non-English rows, {english.shape[0]} English rows, "
                             f"{len(ids)} ids: every pair needs both sides")
        if nonen.shape[1:] != (index["num_layers"], index["hidden_size"]) or english.shape != nonen.shape:
            raise InputError(f"{path}: shape {tuple(nonen.shape)} / {tuple(english.shape)} does not match "
                             f"index.json (L={index['num_layers']}, d={index['hidden_size']})")
        for name, tensor in (("nonen", nonen), ("en", english)):
            if not torch.isfinite(tensor).all():
                raise InputError(f"{path}: tensor {name!r} contains NaN or inf")
        yield Shard(path, ids, langs, nonen.double(), english.double())


# --- the least-squares solve -------------------------------------------------------------------------

class NormalEquations:
    """Accumulates XᵀX and XᵀY in float64 (X = B, plus a ones column with a bias)."""

    def __init__(self, d: int, bias: bool) -> None:
        width = d + int(bias)
        self.bias = bias
        self.xtx = torch.zeros(width, width, dtype=torch.float64)
        self.xty = torch.zeros(width, d, dtype=torch.float64)
        self.rows = 0

    def add(self, b: torch.Tensor, a: torch.Tensor) -> None:
        x = b.double()
        if self.bias:
            x = torch.cat([x, torch.ones(x.shape[0], 1, dtype=x.dtype)], dim=1)
        self.xtx += x.T @ x
        self.xty += x.T @ a.double()
        self.rows += x.shape[0]

    def solve(self, ridge: float = 0.0, rcond: float = 1e-10) -> tuple[torch.Tensor, torch.Tensor | None, str]:
        """(M [d, d], bias [d] or None, solver used). Falls back to the pseudo-inverse when
        XᵀX is singular or near-singular (warns; never returns NaN)."""
        a = self.xtx.clone()
        d = self.xty.shape[1]
        if ridge:
            a[:d, :d] += ridge * torch.eye(d, dtype=a.dtype)  # the bias is not penalised
        evals = torch.linalg.eigvalsh(a)
        solver = "cholesky"
        if evals.max() <= 0 or evals.min() <= rcond * evals.max():
            warnings.warn(f"XᵀX is singular or near-singular (rows={self.rows}, min/max eigenvalue "
                          f"{float(evals.min()):.3g}/{float(evals.max()):.3g}); using the pseudo-inverse "
                          "(minimum-norm least squares). More pairs or fit.ridge > 0 avoid this.",
                          RuntimeWarning, stacklevel=2)
            w = torch.linalg.pinv(a, hermitian=True, rtol=rcond) @ self.xty
            solver = "pinv"
        else:
            w = torch.cholesky_solve(self.xty, torch.linalg.cholesky(a))
        if not torch.isfinite(w).all():  # belt and braces: never hand back NaN
            w = torch.linalg.pinv(a, hermitian=True, rtol=rcond) @ self.xty
            solver = "pinv"
        return (w[:d], w[d] if self.bias else None, solver)


class StackedRows:
    """The authors' solve (``TransformMatrix/get_matrix.py``): every row kept, then ``numpy.linalg.lstsq``
    (LAPACK gelsd: SVD, float64, ``rcond`` = machine precision × max(rows, d)), the minimum-norm
    solution when the rows do not determine M. Memory O(rows × d). Same interface as NormalEquations;
    ``ridge`` appends √λ·I rows (the bias unpenalised)."""

    def __init__(self, d: int, bias: bool) -> None:
        self.d, self.bias = d, bias
        self.xs: list[torch.Tensor] = []
        self.ys: list[torch.Tensor] = []
        self.rows = 0

    def add(self, b: torch.Tensor, a: torch.Tensor) -> None:
        x = b.double()
        if self.bias:
            x = torch.cat([x, torch.ones(x.shape[0], 1, dtype=x.dtype)], dim=1)
        self.xs.append(x)
        self.ys.append(a.double())
        self.rows += x.shape[0]

    def solve(self, ridge: float = 0.0, rcond: float | None = None) -> tuple[torch.Tensor, torch.Tensor | None, str]:
        x, y = torch.cat(self.xs).numpy(), torch.cat(self.ys).numpy()
        if ridge:
            penalty = np.zeros((self.d, x.shape[1]))
            penalty[:, : self.d] = np.sqrt(ridge) * np.eye(self.d)
            x, y = np.concatenate([x, penalty]), np.concatenate([y, np.zeros((self.d, self.d))])
        w = torch.from_numpy(np.linalg.lstsq(x, y, rcond=rcond)[0])
        return (w[: self.d], w[self.d] if self.bias else None, "lstsq")


# --- fit quality ---------------------------------------------------------------------------------------

class _Quality:
    """Streaming MSE / R² / mean cosine per layer for predictions P of targets A."""

    def __init__(self, num_layers: int, d: int) -> None:
        self.n = torch.zeros(num_layers, dtype=torch.float64)
        self.sse = torch.zeros(num_layers, dtype=torch.float64)
        self.sum_a = torch.zeros(num_layers, d, dtype=torch.float64)
        self.sum_a2 = torch.zeros(num_layers, dtype=torch.float64)
        self.cos = torch.zeros(num_layers, dtype=torch.float64)
        self.d = d

    def add(self, pred: torch.Tensor, target: torch.Tensor) -> None:  # [n, L, d]
        self.n += pred.shape[0]
        self.sse += ((pred - target) ** 2).sum(dim=(0, 2))
        self.sum_a += target.sum(dim=0)
        self.sum_a2 += (target ** 2).sum(dim=(0, 2))
        self.cos += torch.nn.functional.cosine_similarity(pred, target, dim=-1).sum(dim=0)

    def per_layer(self) -> dict[str, list[float | None]]:
        if not bool((self.n > 0).all()):  # no rows in this split (e.g. fit.holdout_fraction=0)
            return {k: [None] * len(self.n) for k in ("mse", "r2", "cosine")}
        n = self.n.clamp(min=1)
        sst = self.sum_a2 - (self.sum_a ** 2).sum(-1) / n
        return {"mse": (self.sse / (n * self.d)).tolist(), "r2": (1 - self.sse / sst.clamp(min=1e-30)).tolist(),
                "cosine": (self.cos / n).tolist()}

    def overall(self) -> dict[str, float | None]:
        n = float(self.n.sum())
        if n == 0:  # JSON null, not NaN: metrics files stay strict JSON and MLflow gets no NaN
            return {"mse": None, "r2": None, "cosine": None}
        sse = float(self.sse.sum())
        sst = float((self.sum_a2 - (self.sum_a ** 2).sum(-1) / self.n.clamp(min=1)).sum())
        return {"mse": sse / (n * self.d), "r2": 1 - sse / max(sst, 1e-30), "cosine": float(self.cos.sum()) / n}


# --- the stage -------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class FitResult:
    out_dir: str
    pairs_fit: int
    pairs_heldout: int
    solver: str
    heldout_r2: float
    heldout_r2_identity: float
    heldout_cosine: float
    heldout_cosine_identity: float
    seconds: float


def split_ids(ids: list[str], holdout_fraction: float, seed: int, how: str = "random") -> set[str]:
    """Held-out pair ids (at least one pair is kept for fitting): a seeded random subset, or (``how="last"``)
    the last ones of ``ids`` in their order, the pairs drawn after the fitted ones (pairs.jsonl of
    ``data.pairs_from: train`` is in draw order: with 1100 pairs and 1/11 held out, the first 1000
    draws are fitted, exactly the authors' 1000-pair sample, and the next 100 held out)."""
    if how not in HOLDOUT_SPLITS:
        raise ValueError(f"fit.holdout_split={how!r}; valid: {', '.join(HOLDOUT_SPLITS)}")
    count = min(int(round(len(ids) * holdout_fraction)), max(len(ids) - 1, 0))
    if how == "last":
        return set(ids[len(ids) - count:]) if count else set()
    ordered = sorted(ids)
    random.Random(seed).shuffle(ordered)
    return set(ordered[:count])


def fit_transform(params: FitParams, activations_dir: str | Path) -> tuple[TransformMatrix, dict]:
    """Stream the shards twice: accumulate normal equations, solve, then measure fit quality."""
    started = time.perf_counter()
    index = read_index(activations_dir)
    num_layers, d = index["num_layers"], index["hidden_size"]
    all_ids = [i for shard in index["shards"] for i in shard["ids"]]
    if len(set(all_ids)) != len(all_ids):
        raise InputError(f"{Path(activations_dir) / 'index.json'}: duplicate pair ids")
    heldout = split_ids(all_ids, params.holdout_fraction, params.seed, params.holdout_split)
    if params.solver not in SOLVERS:
        raise ValueError(f"fit.solver={params.solver!r}; valid: {', '.join(SOLVERS)}")
    system = StackedRows if params.solver == "lstsq" else NormalEquations

    def key(layer: int | None, lang: str | None):
        return (layer if params.per_layer else None, lang)

    systems: dict[tuple, NormalEquations | StackedRows] = defaultdict(lambda: system(d, params.bias))
    for shard in iter_shards(activations_dir, index):
        fit_rows = [i for i, pid in enumerate(shard.ids) if pid not in heldout]
        if not fit_rows:
            continue
        b, a = shard.nonen[fit_rows], shard.en[fit_rows]
        langs = [shard.langs[i] for i in fit_rows]
        for layer in range(num_layers) if params.per_layer else [None]:
            bl = b[:, layer] if layer is not None else b.reshape(-1, d)
            al = a[:, layer] if layer is not None else a.reshape(-1, d)
            systems[key(layer, None)].add(bl, al)
            if params.per_language:
                repeat = 1 if layer is not None else num_layers
                lang_rows = [lang for lang in langs for _ in range(repeat)]
                for lang in set(langs):
                    mask = torch.tensor([x == lang for x in lang_rows])
                    systems[key(layer, lang)].add(bl[mask], al[mask])
    if key(0, None) not in systems:
        raise InputError(f"{activations_dir}: no pairs left to fit after holding out {len(heldout)}")
    solvers = set()

    def solve(lang: str | None):
        layers = range(num_layers) if params.per_layer else [None]
        mats, biases = [], []
        for layer in layers:
            m, b, solver = systems[key(layer, lang)].solve(params.ridge)
            solvers.add(solver)
            mats.append(m)
            biases.append(b)
        matrix = torch.stack(mats) if params.per_layer else mats[0]
        bias = (torch.stack(biases) if params.per_layer else biases[0]) if params.bias else None
        return matrix.float(), bias.float() if bias is not None else None

    matrix, bias = solve(None)
    langs = sorted({k[1] for k in systems if k[1] is not None})
    per_language = {lang: solve(lang) for lang in langs}
    transform = TransformMatrix(matrix, bias, per_language, {
        "model_sha256": index["model_sha256"], "num_layers": num_layers, "hidden_size": d,
        "ridge": params.ridge, "per_layer": params.per_layer, "bias": params.bias,
        "per_language": params.per_language, "pairs_fit": len(all_ids) - len(heldout), "solver": params.solver})

    quality = {split: {m: _Quality(num_layers, d) for m in ("transform", "identity")} for split in ("fit", "heldout")}
    for shard in iter_shards(activations_dir, index):
        for split in ("fit", "heldout"):
            rows = [i for i, pid in enumerate(shard.ids) if (pid in heldout) == (split == "heldout")]
            if not rows:
                continue
            b, a = shard.nonen[rows], shard.en[rows]
            predicted = transform.apply(b.float(), [shard.langs[i] for i in rows]).double()
            quality[split]["transform"].add(predicted, a)
            quality[split]["identity"].add(b, a)
    metrics = {
        "options": {k: transform.meta[k] for k in ("ridge", "per_layer", "bias", "per_language")},
        "solver": "pinv" if "pinv" in solvers else params.solver, "holdout_split": params.holdout_split,
        "pairs_fit": len(all_ids) - len(heldout), "pairs_heldout": len(heldout),
        "rows_fit": (len(all_ids) - len(heldout)) * num_layers,
        "seconds": round(time.perf_counter() - started, 3),
    }
    for split in ("fit", "heldout"):
        metrics[split] = {m: quality[split][m].overall() for m in ("transform", "identity")}
    if not heldout:
        log.warning("fit.holdout_fraction=%s holds out no pair: only fit-set quality is reported "
                    "(it flatters the matrix)", params.holdout_fraction)
    per_layer = [
        {"layer": layer, "split": split, "map": m, **{k: v[layer] for k, v in quality[split][m].per_layer().items()}}
        for split in ("fit", "heldout") if split == "fit" or heldout
        for m in ("transform", "identity") for layer in range(num_layers)
    ]
    return transform, {"summary": metrics, "per_layer": per_layer}


def fit(params: FitParams, activations_dir: str | Path = "activations", out_dir: str | Path = "transform",
        metrics_dir: str | Path = "metrics", model_dir: str | Path | None = "models/cc",
        tracking=None) -> FitResult:
    if model_dir and not Path(model_dir).is_dir():
        raise InputError(f"{model_dir}: no such model directory (the CC checkpoint the activations were "
                         "collected from; it is checked against their model hash)")
    expected = checkpoint_sha256(model_dir) if model_dir else None
    read_index(activations_dir, expected)
    transform, report = fit_transform(params, activations_dir)
    summary = report["summary"]
    with atomic_dir(out_dir) as tmp:
        # writes transform.json too, with the file's own hash: eval and register refuse a matrix that is not it
        summary["transform_sha256"] = transform.save(tmp / TRANSFORM_FILE)
    write_json(Path(metrics_dir) / "transform.json", summary)
    write_json(Path(metrics_dir) / "transform_per_layer.json", report["per_layer"])
    held = summary["heldout"] if summary["pairs_heldout"] else summary["fit"]
    result = FitResult(str(out_dir), summary["pairs_fit"], summary["pairs_heldout"], summary["solver"],
                       held["transform"]["r2"], held["identity"]["r2"], held["transform"]["cosine"],
                       held["identity"]["cosine"], summary["seconds"])
    log.info("Transform Matrix: held-out R² %.3f (identity %.3f), cosine %.3f (identity %.3f)",
             result.heldout_r2, result.heldout_r2_identity, result.heldout_cosine, result.heldout_cosine_identity)
    if tracking is not None and model_dir:
        _log_to_training_run(tracking, model_dir, summary, Path(metrics_dir))
    return result


def _log_to_training_run(tracking, model_dir, summary: dict, metrics_dir: Path) -> None:
    tracker = Tracker(tracking)
    run_id = tracker.training_run_id(checkpoint_sha256(model_dir))
    if not run_id:
        return
    with tracker.run("fit", run_id=run_id) as run:
        flat = {f"transform_{split}_{m}_{k}": v for split in ("fit", "heldout")
                for m, values in summary[split].items() for k, v in values.items()}
        run.log_metrics(flat)  # values without a held-out split are None: log_metrics leaves them out
        run.log_artifact(metrics_dir / "transform.json", "transform")
        run.log_artifact(metrics_dir / "transform_per_layer.json", "transform")
