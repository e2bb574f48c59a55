"""The ``fit`` stage (streaming least-squares Transform Matrix; ``collect`` is tests/unit/test_activations.py).

Synthetic activations directories mirror what ``cc_core.activations.collect`` writes
(index.json + shard-XXXXX.safetensors with "nonen"/"en" [n, L, d] float32 and metadata
{"model_sha256", "pairs"}); every exact comparison spreads the data over >= 3 shards so the
streaming accumulation is exercised, and compares against a float64 numpy reference.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from cc_core.config import FitParams
from cc_core.io import InputError, dir_sha256
from cc_core.modeling.transform_matrix import TransformShapeError, load_transform
from cc_core.transform import NormalEquations, fit, fit_transform, read_index, split_ids

SHA = "ab" * 32
LANGS = ("de", "fr", "ja")


# --- helpers -----------------------------------------------------------------------------------------

def write_acts(root: Path, nonen, en, sizes=None, ids=None, langs=None, model_sha256: str = SHA,
               shard_sha256: dict[int, str] | None = None) -> Path:
    """Write an activations dir laid out like ``collect``'s; ``sizes`` = pairs per shard."""
    nonen = torch.as_tensor(np.asarray(nonen), dtype=torch.float32)
    en = torch.as_tensor(np.asarray(en), dtype=torch.float32)
    n, num_layers, d = nonen.shape
    ids = list(ids) if ids is not None else [f"p{i:04d}" for i in range(n)]
    langs = list(langs) if langs is not None else [LANGS[i % len(LANGS)] for i in range(n)]
    sizes = list(sizes) if sizes is not None else _three_way(n)
    assert sum(sizes) == n
    root.mkdir(parents=True, exist_ok=True)
    shards, start = [], 0
    for no, size in enumerate(sizes):
        name = f"shard-{no:05d}.safetensors"
        sha = (shard_sha256 or {}).get(no, model_sha256)
        save_file({"nonen": nonen[start:start + size].contiguous(), "en": en[start:start + size].contiguous()},
                  str(root / name), metadata={"model_sha256": sha, "pairs": str(size)})
        shards.append({"file": name, "ids": ids[start:start + size], "langs": langs[start:start + size]})
        start += size
    write_index(root, {"model_dir": "models/cc", "model_sha256": model_sha256, "pairs": n,
                       "num_layers": num_layers, "hidden_size": d, "dtype": "float32", "shards": shards})
    return root


def write_index(root: Path, index: dict) -> None:
    (root / "index.json").write_text(json.dumps(index, indent=2), encoding="utf-8")


def _three_way(n: int) -> list[int]:
    base = n // 3
    return [base, base, n - 2 * base]


def random_problem(n=40, num_layers=3, d=8, seed=0, noise=0.3, offset=0.0):
    """B ~ N(0, 1), A = B M + noise (+ offset); returned as float32-exact float64 arrays."""
    rng = np.random.default_rng(seed)
    b = rng.standard_normal((n, num_layers, d))
    m = rng.standard_normal((d, d)) * 0.5
    a = b @ m + noise * rng.standard_normal((n, num_layers, d)) + offset
    return b.astype(np.float32).astype(np.float64), a.astype(np.float32).astype(np.float64)


def lstsq(x, y):
    return np.linalg.lstsq(x, y, rcond=None)[0]


def rel_err(got, ref) -> float:
    got = np.asarray(got, dtype=np.float64)
    return float(np.linalg.norm(got - ref) / np.linalg.norm(ref))


def flat(x):  # [n, L, d] -> [n*L, d], the (pair, layer) rows stacked
    return x.reshape(-1, x.shape[-1])


def with_ones(x):
    return np.concatenate([x, np.ones((x.shape[0], 1))], axis=1)


def fit_dirs(tmp_path: Path):
    return dict(out_dir=tmp_path / "transform", metrics_dir=tmp_path / "metrics", model_dir=None)


def assert_nothing_written(tmp_path: Path):
    assert not (tmp_path / "transform").exists()
    assert not (tmp_path / "metrics").exists()
    assert not list(tmp_path.glob(".transform*")), "a temporary transform dir was left behind"


EXACT = FitParams(holdout_fraction=0)


# --- the streaming solve equals the stacked least squares ------------------------------------------

def test_shared_matrix_equals_stacked_lstsq(tmp_path):
    b, a = random_problem()
    acts = write_acts(tmp_path / "acts", b, a, sizes=[13, 13, 14])
    transform, report = fit_transform(EXACT, acts)
    ref = lstsq(flat(b), flat(a))
    assert tuple(transform.matrix.shape) == (8, 8)
    assert transform.bias is None and transform.per_language == {}
    assert rel_err(transform.matrix, ref) <= 1e-5
    assert report["summary"]["solver"] == "cholesky"
    assert report["summary"]["rows_fit"] == 40 * 3
    # the streamed normal equations are not just a solve of the last shard
    last = lstsq(flat(b[26:]), flat(a[26:]))
    assert rel_err(last, ref) > 1e-3


def test_shard_layout_does_not_change_the_solution(tmp_path):
    b, a = random_problem(n=30, seed=5)
    one, _ = fit_transform(EXACT, write_acts(tmp_path / "one", b, a, sizes=[30]))
    many, _ = fit_transform(EXACT, write_acts(tmp_path / "many", b, a, sizes=[1, 7, 2, 11, 9]))
    assert rel_err(many.matrix, one.matrix.double().numpy()) <= 1e-6


def test_bias_equals_lstsq_with_ones_column(tmp_path):
    b, a = random_problem(seed=1, offset=2.5)
    transform, _ = fit_transform(FitParams(holdout_fraction=0, bias=True), write_acts(tmp_path / "acts", b, a))
    ref = lstsq(with_ones(flat(b)), flat(a))
    assert rel_err(transform.matrix, ref[:-1]) <= 1e-5
    assert rel_err(transform.bias, ref[-1]) <= 1e-5
    assert np.abs(transform.bias.numpy()).min() > 1.0  # the offset really is in the bias


@pytest.mark.parametrize("ridge", [0.5, 50.0])
def test_ridge_equals_closed_form(tmp_path, ridge):
    b, a = random_problem(seed=2)
    transform, _ = fit_transform(FitParams(holdout_fraction=0, ridge=ridge), write_acts(tmp_path / "acts", b, a))
    x, y = flat(b), flat(a)
    ref = np.linalg.solve(x.T @ x + ridge * np.eye(x.shape[1]), x.T @ y)
    assert rel_err(transform.matrix, ref) <= 1e-5
    assert rel_err(transform.matrix, lstsq(x, y)) > 1e-4  # ridge did shrink the solution


def test_ridge_with_bias_leaves_bias_unpenalised(tmp_path):
    b, a = random_problem(seed=3, offset=-1.5)
    ridge = 10.0
    transform, _ = fit_transform(FitParams(holdout_fraction=0, ridge=ridge, bias=True),
                                 write_acts(tmp_path / "acts", b, a))
    x, y = with_ones(flat(b)), flat(a)
    penalty = ridge * np.eye(x.shape[1])
    penalty[-1, -1] = 0.0
    ref = np.linalg.solve(x.T @ x + penalty, x.T @ y)
    assert rel_err(transform.matrix, ref[:-1]) <= 1e-5
    assert rel_err(transform.bias, ref[-1]) <= 1e-5


def test_per_layer_equals_each_layers_lstsq(tmp_path):
    b, a = random_problem(seed=4)
    transform, _ = fit_transform(FitParams(holdout_fraction=0, per_layer=True), write_acts(tmp_path / "acts", b, a))
    assert tuple(transform.matrix.shape) == (3, 8, 8)
    for layer in range(3):
        assert rel_err(transform.matrix[layer], lstsq(b[:, layer], a[:, layer])) <= 1e-5


def test_per_layer_with_bias(tmp_path):
    b, a = random_problem(seed=6, offset=1.0)
    transform, _ = fit_transform(FitParams(holdout_fraction=0, per_layer=True, bias=True),
                                 write_acts(tmp_path / "acts", b, a))
    assert tuple(transform.bias.shape) == (3, 8)
    for layer in range(3):
        ref = lstsq(with_ones(b[:, layer]), a[:, layer])
        assert rel_err(transform.matrix[layer], ref[:-1]) <= 1e-5
        assert rel_err(transform.bias[layer], ref[-1]) <= 1e-5


def test_per_language_equals_each_languages_lstsq(tmp_path):
    b, a = random_problem(n=60, seed=7)
    langs = [LANGS[i % 3] for i in range(60)]
    transform, _ = fit_transform(FitParams(holdout_fraction=0, per_language=True),
                                 write_acts(tmp_path / "acts", b, a, langs=langs))
    assert sorted(transform.per_language) == sorted(LANGS)
    assert rel_err(transform.matrix, lstsq(flat(b), flat(a))) <= 1e-5  # the shared fallback
    for lang in LANGS:
        rows = np.array([x == lang for x in langs])
        matrix, bias = transform.per_language[lang]
        assert bias is None
        assert rel_err(matrix, lstsq(flat(b[rows]), flat(a[rows]))) <= 1e-5


def test_per_language_per_layer_with_bias(tmp_path):
    b, a = random_problem(n=60, seed=8, offset=0.7)
    langs = [LANGS[(i * 7) % 3] for i in range(60)]
    transform, _ = fit_transform(FitParams(holdout_fraction=0, per_language=True, per_layer=True, bias=True),
                                 write_acts(tmp_path / "acts", b, a, langs=langs))
    for lang in LANGS:
        rows = np.array([x == lang for x in langs])
        matrix, bias = transform.per_language[lang]
        assert tuple(matrix.shape) == (3, 8, 8)
        for layer in range(3):
            ref = lstsq(with_ones(b[rows, layer]), a[rows, layer])
            assert rel_err(matrix[layer], ref[:-1]) <= 1e-5
            assert rel_err(bias[layer], ref[-1]) <= 1e-5


def test_per_language_apply_uses_each_rows_language(tmp_path):
    b, a = random_problem(n=60, seed=9)
    langs = [LANGS[i % 3] for i in range(60)]
    transform, _ = fit_transform(FitParams(holdout_fraction=0, per_language=True),
                                 write_acts(tmp_path / "acts", b, a, langs=langs))
    x = torch.randn(4, 3, 8)
    row_langs = ["ja", "de", "xx", "fr"]  # "xx" has no matrix of its own: the shared one
    out = transform.apply(x, row_langs)
    for i, lang in enumerate(row_langs):
        matrix = transform.per_language[lang][0] if lang in transform.per_language else transform.matrix
        torch.testing.assert_close(out[i], x[i] @ matrix, atol=1e-6, rtol=0)
    torch.testing.assert_close(transform.apply(x), x @ transform.matrix, atol=1e-6, rtol=0)


def test_normal_equations_match_lstsq_directly():
    rng = np.random.default_rng(11)
    x, y = rng.standard_normal((50, 6)), rng.standard_normal((50, 6))
    system = NormalEquations(6, bias=True)
    for part in np.array_split(np.arange(50), 4):
        system.add(torch.from_numpy(x[part]), torch.from_numpy(y[part]))
    assert system.rows == 50
    m, bias, solver = system.solve()
    ref = lstsq(with_ones(x), y)
    assert solver == "cholesky"
    assert rel_err(m, ref[:-1]) <= 1e-10 and rel_err(bias, ref[-1]) <= 1e-10


# --- a known exact map ---------------------------------------------------------------------------------

def test_exact_linear_map_is_recovered(tmp_path):
    rng = np.random.default_rng(12)
    n, num_layers, d = 80, 4, 8  # N*L = 320 rows >> d
    b = rng.standard_normal((n, num_layers, d)).astype(np.float32).astype(np.float64)
    m_true = (rng.standard_normal((d, d)) * 0.5).astype(np.float32).astype(np.float64)
    a = b @ m_true
    acts = write_acts(tmp_path / "acts", b, a, sizes=[30, 30, 20])
    result = fit(FitParams(holdout_fraction=0.25, seed=1), acts, **fit_dirs(tmp_path))
    transform = load_transform(tmp_path / "transform")
    np.testing.assert_allclose(transform.matrix.numpy(), m_true, atol=1e-6, rtol=0)
    assert result.pairs_fit == 60 and result.pairs_heldout == 20
    assert result.solver == "cholesky"
    assert result.heldout_r2 == pytest.approx(1.0, abs=1e-6)
    assert result.heldout_cosine == pytest.approx(1.0, abs=1e-6)
    assert result.heldout_r2_identity < 0.5 < result.heldout_r2
    assert result.heldout_cosine_identity < 0.9
    summary = json.loads((tmp_path / "metrics" / "transform.json").read_text())
    held = summary["heldout"]
    assert held["transform"]["mse"] < 1e-10 < held["identity"]["mse"]


# --- singular and near-singular normal equations -----------------------------------------------------

def test_fewer_rows_than_d_gives_minimum_norm_solution(tmp_path):
    rng = np.random.default_rng(13)
    b = rng.standard_normal((5, 2, 16)).astype(np.float32).astype(np.float64)  # 10 rows < d = 16
    a = rng.standard_normal((5, 2, 16)).astype(np.float32).astype(np.float64)
    acts = write_acts(tmp_path / "acts", b, a, sizes=[2, 2, 1])
    with pytest.warns(RuntimeWarning, match="singular"):
        transform, report = fit_transform(EXACT, acts)
    assert torch.isfinite(transform.matrix).all()
    ref = lstsq(flat(b), flat(a))  # numpy's lstsq is the minimum-norm solution
    np.testing.assert_allclose(ref, np.linalg.pinv(flat(b)) @ flat(a), atol=1e-10)
    assert rel_err(transform.matrix, ref) <= 1e-5
    assert report["summary"]["solver"] == "pinv"
    # 10 rows through 16 free dimensions: the fit is exact on the fitted rows
    assert report["summary"]["fit"]["transform"]["r2"] == pytest.approx(1.0, abs=1e-5)


def test_duplicated_columns_give_minimum_norm_solution_and_pinv_in_metrics(tmp_path):
    b, a = random_problem(n=40, seed=14)
    b[..., 1] = b[..., 0]  # two identical features: B^T B is exactly singular
    acts = write_acts(tmp_path / "acts", b, a)
    with pytest.warns(RuntimeWarning, match="pseudo-inverse"):
        result = fit(EXACT, acts, **fit_dirs(tmp_path))
    assert result.solver == "pinv"
    summary = json.loads((tmp_path / "metrics" / "transform.json").read_text())
    assert summary["solver"] == "pinv"
    assert all(math.isfinite(v) for m in summary["fit"].values() for v in m.values())
    matrix = load_transform(tmp_path / "transform").matrix
    assert torch.isfinite(matrix).all()
    ref = lstsq(flat(b), flat(a))
    assert rel_err(matrix, ref) <= 1e-5
    np.testing.assert_allclose(matrix[0].numpy(), matrix[1].numpy(), atol=1e-5)  # min norm splits evenly


def test_near_singular_columns_warn_and_stay_finite(tmp_path):
    b, a = random_problem(n=40, seed=15)
    rng = np.random.default_rng(16)
    b[..., 1] = b[..., 0] + 1e-6 * rng.standard_normal(b[..., 0].shape)  # nearly collinear (float32 rounds)
    b = b.astype(np.float32).astype(np.float64)
    acts = write_acts(tmp_path / "acts", b, a)
    with pytest.warns(RuntimeWarning):
        transform, report = fit_transform(EXACT, acts)
    assert report["summary"]["solver"] == "pinv"
    assert torch.isfinite(transform.matrix).all()
    # the truncated (minimum-norm) solution: the near-null direction is dropped
    ref = np.linalg.pinv(flat(b), rcond=1e-4) @ flat(a)
    assert rel_err(transform.matrix, ref) <= 1e-4
    assert float(transform.matrix.abs().max()) < 10  # not the blown-up exact solution


def test_all_zero_activations_give_zero_matrix(tmp_path):
    b = np.zeros((6, 2, 4))
    a = np.random.default_rng(17).standard_normal((6, 2, 4))
    with pytest.warns(RuntimeWarning):
        transform, report = fit_transform(EXACT, write_acts(tmp_path / "acts", b, a))
    assert report["summary"]["solver"] == "pinv"
    assert torch.equal(transform.matrix, torch.zeros(4, 4))


# --- fit(): outputs, metrics, the seeded split --------------------------------------------------------

def _expected_quality(pred, target):
    """Per-layer mse / r2 / cosine and the overall numbers, computed directly (float64)."""
    err = ((pred - target) ** 2).sum(axis=(0, 2))
    sst = ((target - target.mean(axis=0, keepdims=True)) ** 2).sum(axis=(0, 2))
    cos = (pred * target).sum(-1) / (np.linalg.norm(pred, axis=-1) * np.linalg.norm(target, axis=-1))
    n, _, d = pred.shape
    per_layer = {"mse": err / (n * d), "r2": 1 - err / sst, "cosine": cos.mean(axis=0)}
    overall = {"mse": err.sum() / (n * pred.shape[1] * d), "r2": 1 - err.sum() / sst.sum(), "cosine": cos.mean()}
    return per_layer, overall


def test_fit_writes_outputs_and_correct_metrics(tmp_path):
    b, a = random_problem(n=50, seed=18, noise=0.5)
    ids = [f"pair-{i:03d}" for i in range(50)]
    acts = write_acts(tmp_path / "acts", b, a, ids=ids)
    params = FitParams(holdout_fraction=0.3, seed=4)
    result = fit(params, acts, **fit_dirs(tmp_path))

    assert (tmp_path / "transform" / "transform.safetensors").is_file()
    meta = json.loads((tmp_path / "transform" / "transform.json").read_text())
    assert meta["model_sha256"] == SHA and meta["num_layers"] == 3 and meta["hidden_size"] == 8
    summary = json.loads((tmp_path / "metrics" / "transform.json").read_text())
    assert {"options", "solver", "pairs_fit", "pairs_heldout", "fit", "heldout"} <= set(summary)
    assert summary["options"] == {"ridge": 0.0, "per_layer": False, "bias": False, "per_language": False}
    assert summary["pairs_fit"] + summary["pairs_heldout"] == 50 and summary["pairs_heldout"] == 15
    for split in ("fit", "heldout"):
        for m in ("transform", "identity"):
            assert set(summary[split][m]) == {"mse", "r2", "cosine"}
    rows = json.loads((tmp_path / "metrics" / "transform_per_layer.json").read_text())
    assert len(rows) == 2 * 2 * 3
    assert all({"layer", "split", "map", "mse", "r2", "cosine"} <= set(r) for r in rows)
    assert {(r["layer"], r["split"], r["map"]) for r in rows} == {
        (layer, s, m) for layer in range(3) for s in ("fit", "heldout") for m in ("transform", "identity")}

    # the fit used exactly the non-held-out pairs, and the metrics are what they claim to be
    heldout = split_ids(ids, 0.3, 4)
    fit_rows = np.array([i not in heldout for i in ids])
    matrix = load_transform(tmp_path / "transform").matrix.double().numpy()
    assert rel_err(matrix, lstsq(flat(b[fit_rows]), flat(a[fit_rows]))) <= 1e-5
    for split, rows_mask in (("fit", fit_rows), ("heldout", ~fit_rows)):
        for name, pred in (("transform", b[rows_mask] @ matrix), ("identity", b[rows_mask])):
            per_layer, overall = _expected_quality(pred, a[rows_mask])
            for key in ("mse", "r2", "cosine"):
                assert summary[split][name][key] == pytest.approx(overall[key], rel=1e-5, abs=1e-7)
                got = [r[key] for r in sorted((r for r in rows if r["split"] == split and r["map"] == name),
                                              key=lambda r: r["layer"])]
                np.testing.assert_allclose(got, per_layer[key], rtol=1e-5, atol=1e-7)
    assert result.heldout_r2 == pytest.approx(summary["heldout"]["transform"]["r2"])
    assert result.heldout_r2_identity == pytest.approx(summary["heldout"]["identity"]["r2"])
    assert result.heldout_r2 > result.heldout_r2_identity


def test_same_seed_same_split_and_same_metrics(tmp_path):
    b, a = random_problem(n=30, seed=19)
    acts = write_acts(tmp_path / "acts", b, a)
    params = FitParams(holdout_fraction=0.2, seed=7)
    fit(params, acts, out_dir=tmp_path / "t1", metrics_dir=tmp_path / "m1", model_dir=None)
    fit(params, acts, out_dir=tmp_path / "t2", metrics_dir=tmp_path / "m2", model_dir=None)
    one = json.loads((tmp_path / "m1" / "transform.json").read_text())
    two = json.loads((tmp_path / "m2" / "transform.json").read_text())
    one.pop("seconds"), two.pop("seconds")
    assert one == two
    assert torch.equal(load_transform(tmp_path / "t1").matrix, load_transform(tmp_path / "t2").matrix)


def test_split_ids_is_seeded_and_keeps_one_pair():
    ids = [f"id{i}" for i in range(100)]
    first = split_ids(ids, 0.2, seed=3)
    assert len(first) == 20 and first <= set(ids)
    assert split_ids(ids, 0.2, seed=3) == first
    assert split_ids(list(reversed(ids)), 0.2, seed=3) == first  # independent of file order
    assert split_ids(ids, 0.2, seed=4) != first
    assert split_ids(ids, 0.0, seed=3) == set()
    assert len(split_ids(["a", "b", "c"], 0.99, seed=0)) == 2  # at least one pair stays for fitting
    assert split_ids(["only"], 0.9, seed=0) == set()
    assert split_ids([], 0.5, seed=0) == set()


def test_fit_with_tiny_dataset_and_large_holdout_still_fits(tmp_path):
    b, a = random_problem(n=3, seed=20)
    acts = write_acts(tmp_path / "acts", b, a, sizes=[1, 1, 1])
    with pytest.warns(RuntimeWarning, match="singular"):  # 1 pair x 3 layers = 3 rows < d = 8
        result = fit(FitParams(holdout_fraction=0.9), acts, **fit_dirs(tmp_path))
    assert result.pairs_fit == 1 and result.pairs_heldout == 2


# --- load_transform ------------------------------------------------------------------------------------

def test_load_transform_round_trip(tmp_path):
    b, a = random_problem(n=60, seed=21, offset=0.4)
    langs = [LANGS[i % 3] for i in range(60)]
    acts = write_acts(tmp_path / "acts", b, a, langs=langs)
    params = FitParams(holdout_fraction=0, per_layer=True, bias=True, per_language=True)
    fitted, _ = fit_transform(params, acts)
    fit(params, acts, **fit_dirs(tmp_path))
    loaded = load_transform(tmp_path / "transform" / "transform.safetensors", hidden_size=8, num_layers=3)
    assert torch.equal(loaded.matrix, fitted.matrix) and torch.equal(loaded.bias, fitted.bias)
    assert sorted(loaded.per_language) == sorted(fitted.per_language)
    assert loaded.meta["per_layer"] is True and loaded.meta["hidden_size"] == 8
    x = torch.randn(5, 3, 8)
    row_langs = ["fr", "ja", "de", "de", "zz"]
    torch.testing.assert_close(loaded.apply(x, row_langs), fitted.apply(x, row_langs), atol=0, rtol=0)
    # the directory form loads the same file
    assert torch.equal(load_transform(tmp_path / "transform").matrix, fitted.matrix)


def test_load_transform_shape_mismatch_is_clear(tmp_path):
    b, a = random_problem(n=30, seed=22)
    acts = write_acts(tmp_path / "acts", b, a)
    fit(FitParams(holdout_fraction=0, per_layer=True), acts, **fit_dirs(tmp_path))
    path = tmp_path / "transform" / "transform.safetensors"
    with pytest.raises(TransformShapeError, match=r"8×8.*hidden size is 16"):
        load_transform(path, hidden_size=16, num_layers=3)
    with pytest.raises(TransformShapeError, match=r"3 per-layer matrices.*5 layers"):
        load_transform(path, hidden_size=8, num_layers=5)
    transform = load_transform(path, hidden_size=8, num_layers=3)
    with pytest.raises(TransformShapeError, match="d=16"):
        transform.apply(torch.zeros(1, 3, 16))


def test_load_transform_missing_file(tmp_path):
    with pytest.raises(InputError, match="nowhere"):
        load_transform(tmp_path / "nowhere" / "transform.safetensors")
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match="empty"):
        load_transform(tmp_path / "empty")
    save_file({"other": torch.zeros(2)}, str(tmp_path / "x.safetensors"))
    with pytest.raises(InputError, match="x.safetensors"):
        load_transform(tmp_path / "x.safetensors")


# --- bad input: a clear InputError naming the file, and no transform/ -------------------------------

def _good(tmp_path, n=12, num_layers=2, d=4, **kwargs):
    b, a = random_problem(n=n, num_layers=num_layers, d=d, seed=23)
    return write_acts(tmp_path / "acts", b, a, **kwargs), b, a


def _expect_input_error(tmp_path, acts, match, model_dir=None):
    with pytest.raises(InputError, match=match):
        fit(FitParams(), acts, out_dir=tmp_path / "transform", metrics_dir=tmp_path / "metrics",
            model_dir=model_dir)
    assert_nothing_written(tmp_path)


def test_shard_missing_english_side(tmp_path):
    acts, b, _ = _good(tmp_path)
    save_file({"nonen": torch.tensor(b[8:], dtype=torch.float32)}, str(acts / "shard-00002.safetensors"),
              metadata={"model_sha256": SHA, "pairs": "4"})
    _expect_input_error(tmp_path, acts, r"shard-00002\.safetensors: a shard needs tensors 'nonen' and 'en'")


def test_ids_count_differs_from_rows(tmp_path):
    acts, _, _ = _good(tmp_path)
    index = json.loads((acts / "index.json").read_text())
    index["shards"][2]["ids"] = index["shards"][2]["ids"][:-1]
    index["shards"][2]["langs"] = index["shards"][2]["langs"][:-1]
    write_index(acts, index)
    _expect_input_error(tmp_path, acts, r"shard-00002\.safetensors: .*every pair needs both sides")


def test_english_rows_differ_from_non_english_rows(tmp_path):
    acts, b, a = _good(tmp_path)
    save_file({"nonen": torch.tensor(b[4:8], dtype=torch.float32), "en": torch.tensor(a[4:7], dtype=torch.float32)},
              str(acts / "shard-00001.safetensors"), metadata={"model_sha256": SHA, "pairs": "4"})
    _expect_input_error(tmp_path, acts, r"shard-00001\.safetensors: 4 non-English rows, 3 English rows")


def test_shard_shape_differs_from_index(tmp_path):
    acts, _, _ = _good(tmp_path)
    save_file({"nonen": torch.zeros(4, 2, 5), "en": torch.zeros(4, 2, 5)}, str(acts / "shard-00001.safetensors"),
              metadata={"model_sha256": SHA, "pairs": "4"})
    _expect_input_error(tmp_path, acts, r"shard-00001\.safetensors: shape .* does not match index\.json")


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
@pytest.mark.parametrize("side", ["nonen", "en"])
def test_non_finite_activations(tmp_path, bad, side):
    acts, b, a = _good(tmp_path)
    tensors = {"nonen": torch.tensor(b[8:], dtype=torch.float32), "en": torch.tensor(a[8:], dtype=torch.float32)}
    tensors[side][1, 0, 2] = bad
    save_file(tensors, str(acts / "shard-00002.safetensors"), metadata={"model_sha256": SHA, "pairs": "4"})
    _expect_input_error(tmp_path, acts, rf"shard-00002\.safetensors: tensor '{side}' contains NaN or inf")


def test_shard_from_another_model(tmp_path):
    acts, _, _ = _good(tmp_path, shard_sha256={1: "cd" * 32})
    _expect_input_error(tmp_path, acts, r"shard-00001\.safetensors: shard comes from a different model")


def test_shard_without_metadata_is_rejected(tmp_path):
    acts, b, a = _good(tmp_path)
    save_file({"nonen": torch.tensor(b[8:], dtype=torch.float32), "en": torch.tensor(a[8:], dtype=torch.float32)},
              str(acts / "shard-00002.safetensors"))
    _expect_input_error(tmp_path, acts, r"shard-00002\.safetensors: shard comes from a different model")


def _dummy_model_dir(tmp_path) -> Path:
    model_dir = tmp_path / "model"
    model_dir.mkdir()
    save_file({"w": torch.arange(6, dtype=torch.float32)}, str(model_dir / "model.safetensors"))
    (model_dir / "config.json").write_text("{}")
    return model_dir


def test_index_from_another_model_than_model_dir(tmp_path):
    model_dir = _dummy_model_dir(tmp_path)
    acts, _, _ = _good(tmp_path)  # index hash SHA is not the model dir's hash
    _expect_input_error(tmp_path, acts, r"index\.json: activations were collected from another model",
                        model_dir=model_dir)


def test_index_matching_model_dir_is_accepted(tmp_path):
    model_dir = _dummy_model_dir(tmp_path)
    sha = dir_sha256(model_dir, "*.safetensors")
    acts, _, _ = _good(tmp_path, model_sha256=sha)
    read_index(acts, sha)
    result = fit(FitParams(), acts, out_dir=tmp_path / "transform", metrics_dir=tmp_path / "metrics",
                 model_dir=model_dir)
    assert result.pairs_fit + result.pairs_heldout == 12
    assert json.loads((tmp_path / "transform" / "transform.json").read_text())["model_sha256"] == sha


def test_missing_model_dir_is_an_error(tmp_path):
    acts, _, _ = _good(tmp_path)
    _expect_input_error(tmp_path, acts, r"models/nowhere: no such model directory",
                        model_dir=tmp_path / "models/nowhere")


def test_no_holdout_reports_fit_only_and_strict_json(tmp_path):
    acts, _, _ = _good(tmp_path)
    result = fit(FitParams(holdout_fraction=0.0), acts, **fit_dirs(tmp_path))
    text = (tmp_path / "metrics" / "transform.json").read_text()
    assert "NaN" not in text
    summary = json.loads(text)
    assert summary["pairs_heldout"] == 0 and summary["heldout"]["transform"] == {"mse": None, "r2": None, "cosine": None}
    rows = json.loads((tmp_path / "metrics" / "transform_per_layer.json").read_text())
    assert {r["split"] for r in rows} == {"fit"}  # no made-up held-out rows
    assert result.heldout_r2 == pytest.approx(summary["fit"]["transform"]["r2"])


def test_fit_metrics_land_in_the_training_run(tmp_path):
    import mlflow

    from cc_core.config import TrackingParams
    from cc_core.tracking import Tracker

    model_dir = _dummy_model_dir(tmp_path)
    acts, _, _ = _good(tmp_path, model_sha256=dir_sha256(model_dir, "*.safetensors"))
    tracking = TrackingParams(uri=f"sqlite:///{tmp_path}/mlflow.db", artifact_location=str(tmp_path / "art"))
    # the training run is found by the content hash of the model it saved (no pointer file in the model)
    checkpoint = dir_sha256(model_dir, "*.safetensors")
    with Tracker(tracking).run("train-cc", tags={"stage": "train", "checkpoint_sha256": checkpoint}) as run:
        pass
    fit(FitParams(), acts, out_dir=tmp_path / "transform", metrics_dir=tmp_path / "metrics",
        model_dir=model_dir, tracking=tracking)
    logged = mlflow.MlflowClient(tracking.uri).get_run(run.run_id).data.metrics
    summary = json.loads((tmp_path / "metrics" / "transform.json").read_text())
    assert logged["transform_heldout_transform_r2"] == pytest.approx(summary["heldout"]["transform"]["r2"])
    assert logged["transform_heldout_identity_cosine"] == pytest.approx(summary["heldout"]["identity"]["cosine"])


def test_duplicate_pair_ids(tmp_path):
    ids = [f"p{i}" for i in range(11)] + ["p0"]  # p0 in shard 0 and shard 2
    acts, _, _ = _good(tmp_path, ids=ids)
    _expect_input_error(tmp_path, acts, r"index\.json: duplicate pair ids")


def test_listed_shard_is_missing(tmp_path):
    acts, _, _ = _good(tmp_path)
    (acts / "shard-00002.safetensors").unlink()
    _expect_input_error(tmp_path, acts, r"shard-00002\.safetensors: shard listed in index\.json is missing")


def test_missing_index_and_empty_index(tmp_path):
    (tmp_path / "acts").mkdir()
    _expect_input_error(tmp_path, tmp_path / "acts", r"index\.json: file not found")
    write_index(tmp_path / "acts", {"model_sha256": SHA, "num_layers": 2, "hidden_size": 4, "shards": []})
    _expect_input_error(tmp_path, tmp_path / "acts", r"index\.json: lists no shards")


@pytest.mark.parametrize("index", [
    [],
    {"model_sha256": SHA, "shards": [{"file": "shard-00000.safetensors", "ids": ["a"], "langs": ["de"]}]},
    {"model_sha256": SHA, "num_layers": 2, "hidden_size": 4, "shards": [{"ids": ["a"], "langs": ["de"]}]},
], ids=["not-an-object", "no-num_layers", "shard-without-file"])
def test_malformed_index_is_an_input_error(tmp_path, index):
    (tmp_path / "acts").mkdir()
    write_index(tmp_path / "acts", index)
    _expect_input_error(tmp_path, tmp_path / "acts", r"index\.json")


def test_bad_input_keeps_an_existing_transform(tmp_path):
    b, a = random_problem(n=12, num_layers=2, d=4, seed=24)
    good = write_acts(tmp_path / "good", b, a)
    fit(FitParams(), good, **fit_dirs(tmp_path))
    before = (tmp_path / "transform" / "transform.safetensors").read_bytes()
    bad = write_acts(tmp_path / "bad", b, a, shard_sha256={2: "00" * 32})
    with pytest.raises(InputError):
        fit(FitParams(), bad, **fit_dirs(tmp_path))
    assert (tmp_path / "transform" / "transform.safetensors").read_bytes() == before


# --- issue 21, point 6: damaged tensors are one line naming the file ----------------------------------

def _truncate(path: Path, keep: float = 0.6) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])


def test_a_truncated_matrix_is_one_error_naming_the_file(tmp_path):
    """Before: safetensors' own SafetensorError ("incomplete metadata, file not fully covered"), no file name."""
    b, a = random_problem(n=30, seed=24)
    fit(EXACT, write_acts(tmp_path / "acts", b, a), **fit_dirs(tmp_path))
    path = tmp_path / "transform" / "transform.safetensors"
    _truncate(path)
    with pytest.raises(InputError) as caught:
        load_transform(tmp_path / "transform")
    message = str(caught.value)
    assert message.startswith(f"{path}: not a readable safetensors file (truncated or damaged: ")
    assert message.endswith("re-run: cctune fit (dvc repro fit)") and "\n" not in message


def test_a_truncated_activation_shard_is_one_cli_line_naming_it(tmp_path, capsys, monkeypatch):
    from cc_core.cli import main

    acts, _, _ = _good(tmp_path)
    _truncate(acts / "shard-00001.safetensors")
    (tmp_path / "params.yaml").write_text("tracking:\n  enabled: false\n")
    monkeypatch.chdir(tmp_path)
    assert main(["fit", "--activations", "acts", "--model", ""]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0, err
    assert err.startswith("cctune fit: error: acts/shard-00001.safetensors: not a readable safetensors file")
    assert err.endswith("re-run: cctune collect (dvc repro collect)")
    assert_nothing_written(tmp_path)


def test_fit_records_the_sha256_of_the_matrix_it_wrote(tmp_path):
    from cc_core.io import file_sha256
    from cc_core.lineage import LineageError
    from cc_core.modeling.transform_matrix import check_fit_record

    b, a = random_problem(n=30, seed=25)
    fit(EXACT, write_acts(tmp_path / "acts", b, a), **fit_dirs(tmp_path))
    path = tmp_path / "transform" / "transform.safetensors"
    digest = file_sha256(path)
    assert json.loads((tmp_path / "metrics" / "transform.json").read_text())["transform_sha256"] == digest
    assert json.loads((tmp_path / "transform" / "transform.json").read_text())["transform_sha256"] == digest
    assert check_fit_record(tmp_path / "transform") == digest == check_fit_record(path)
    record = json.loads((tmp_path / "transform" / "transform.json").read_text())
    del record["transform_sha256"]  # a record written by an older cctune fit
    (tmp_path / "transform" / "transform.json").write_text(json.dumps(record))
    with pytest.raises(LineageError, match=r"records no sha256 of the matrix `cctune fit` wrote.*re-run: cctune fit"):
        check_fit_record(path)
