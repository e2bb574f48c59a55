"""cc_core.activations (``cctune collect``): the FFN outputs at the anchor of every held-out pair,
in shards that equal one prompt's capture at a time, and that the fit stage accepts as they are."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from cc_core.config import CollectParams, FitParams
from cc_core.io import InputError, dir_sha256
from cc_core.transform import fit

PAIRS = [
    ("de", "Wie heißt die Hauptstadt von Kenia?", "What is the capital of Kenya?"),
    ("fr", "Explique la photosynthèse en une phrase, s'il te plaît.", "Explain photosynthesis in one sentence, please."),
    ("ja", "東京はどこ？", "Where is Tokyo?"),
    ("es", "¿Cuántos días tiene una semana?", "How many days are in a week?"),
    ("zh", "请用三个词描述大海。", "Describe the sea in three words."),
    ("ru", "Назови самую длинную реку в Европе и объясни, почему она важна.",
     "Name the longest river in Europe and explain why it matters."),
    ("ko", "안녕?", "Hi?"),
    ("hi", "भारत की राजधानी क्या है?", "What is the capital of India?"),
]


@pytest.fixture(scope="module")
def saved_tiny(tmp_path_factory, tiny_factory):
    model, tokenizer = tiny_factory("llama")
    path = tmp_path_factory.mktemp("collect") / "m"
    model.save_pretrained(path, safe_serialization=True)
    tokenizer.save_pretrained(path)
    return path, model, tokenizer


def _pairs_file(path: Path, count: int = len(PAIRS)) -> Path:
    with path.open("w", encoding="utf-8") as handle:
        for i, (lang, text, english) in enumerate(PAIRS[:count]):
            handle.write(json.dumps({"id": f"r{i:02d}-{lang}", "lang": lang, "instruction": text,
                                     "output": "ok", "instruction_en": english}, ensure_ascii=False) + "\n")
    return path


def test_collect_writes_shards_matching_single_prompt_capture(tmp_path, saved_tiny):
    from cc_core.activations import collect
    from cc_core.modeling import capture_ffn
    from cc_core.prompts import encode_prompt
    from safetensors import safe_open

    model_dir, model, tokenizer = saved_tiny
    pairs = _pairs_file(tmp_path / "pairs.jsonl")  # 8 records; num_pairs=6 keeps the first 6
    out = tmp_path / "activations"
    result = collect(CollectParams(num_pairs=6, batch_size=4, shard_size=4), model_dir, pairs, out)
    assert result.pairs == 6 and result.shards == 2
    assert (result.num_layers, result.hidden_size) == (2, 64)
    index = json.loads((out / "index.json").read_text())
    sha = dir_sha256(model_dir, "*.safetensors")
    assert index["model_sha256"] == sha == result.model_sha256
    assert index["pairs"] == 6 and index["num_layers"] == 2 and index["hidden_size"] == 64
    assert index["dtype"] == "float32"
    assert [s["file"] for s in index["shards"]] == ["shard-00000.safetensors", "shard-00001.safetensors"]
    expected_ids = [f"r{i:02d}-{PAIRS[i][0]}" for i in range(6)]
    assert [i for s in index["shards"] for i in s["ids"]] == expected_ids
    assert [x for s in index["shards"] for x in s["langs"]] == [p[0] for p in PAIRS[:6]]

    def alone(text):
        ids = encode_prompt(tokenizer, text, 1024).input_ids
        with torch.no_grad():
            return capture_ffn(model, torch.tensor([ids]), torch.ones(1, len(ids), dtype=torch.long),
                               torch.tensor([len(ids) - 1]))[0]

    row = 0
    for shard, size in zip(index["shards"], (4, 2)):
        with safe_open(str(out / shard["file"]), framework="pt") as handle:
            assert handle.metadata() == {"model_sha256": sha, "pairs": str(size)}
            nonen, english = handle.get_tensor("nonen"), handle.get_tensor("en")
        assert tuple(nonen.shape) == tuple(english.shape) == (size, 2, 64)
        assert nonen.dtype == english.dtype == torch.float32
        for i in range(size):
            _, text, text_en = PAIRS[row + i]
            torch.testing.assert_close(nonen[i], alone(text), atol=1e-5, rtol=0)
            torch.testing.assert_close(english[i], alone(text_en), atol=1e-5, rtol=0)
        row += size
    # and the fit stage accepts collect's output as is, checking the model hash
    with pytest.warns(RuntimeWarning, match="singular"):  # 6 pairs x 2 layers = 12 rows < d = 64
        fitted = fit(FitParams(holdout_fraction=0), out, out_dir=tmp_path / "transform",
                     metrics_dir=tmp_path / "metrics", model_dir=model_dir)
    assert fitted.pairs_fit == 6 and fitted.solver == "pinv"


def test_collect_num_pairs_caps_count(tmp_path, saved_tiny):
    from cc_core.activations import collect

    model_dir, _, _ = saved_tiny
    pairs = _pairs_file(tmp_path / "pairs.jsonl")
    result = collect(CollectParams(num_pairs=3, batch_size=2, shard_size=512), model_dir, pairs, tmp_path / "a")
    index = json.loads((tmp_path / "a" / "index.json").read_text())
    assert result.pairs == 3 and result.shards == 1 and index["pairs"] == 3
    assert index["shards"][0]["ids"] == [f"r{i:02d}-{PAIRS[i][0]}" for i in range(3)]
    result = collect(CollectParams(num_pairs=100, batch_size=8, shard_size=512), model_dir, pairs, tmp_path / "b")
    assert result.pairs == len(PAIRS)


def test_collect_empty_pairs_file(tmp_path, saved_tiny):
    from cc_core.activations import collect

    model_dir, _, _ = saved_tiny
    empty = tmp_path / "empty-pairs.jsonl"
    empty.write_text("")
    with pytest.raises(InputError, match=r"empty-pairs\.jsonl"):
        collect(CollectParams(num_pairs=6), model_dir, empty, tmp_path / "activations")
    assert not (tmp_path / "activations").exists()
