"""The training collator and encoding, the resume fingerprint, and tracking that survives a server outage.

    pytest tests/unit/test_train_data.py
"""

from __future__ import annotations

import json

import pytest

from cc_core.config import TrackingParams, parse_params
from cc_core.data.records import Record
from cc_core.io import InputError
from cc_core.prompts import encode_prompt, pad_token_id, render_prompt
from cc_core.modeling.loading import check_tokenizer_matches
from cc_core.training.checkpoints import make_fingerprint
from cc_core.training.data import CCCollator, encode_records
from cc_core.training.distributed import resolve_deepspeed


def _record(i: int, instruction: str = "Wie heißt die Hauptstadt von Frankreich?", output: str = "Paris.",
            english: str = "What is the capital of France?") -> Record:
    return Record(id=f"r{i}", lang="de", instruction=instruction, output=output, instruction_en=english)


def test_features_mask_the_prompt_and_carry_both_anchors(smol_tokenizer):
    features, stats = encode_records([_record(0)], smol_tokenizer, 256, "cc")
    (f,) = features
    prompt_len = len(smol_tokenizer(render_prompt(smol_tokenizer, _record(0).instruction),
                                    add_special_tokens=False)["input_ids"])
    assert f["anchor"] == prompt_len - 1
    assert f["labels"][:prompt_len] == [-100] * prompt_len and all(t != -100 for t in f["labels"][prompt_len:])
    assert f["labels"][prompt_len:] == f["input_ids"][prompt_len:]
    english = encode_prompt(smol_tokenizer, _record(0).instruction_en)
    assert f["en_input_ids"] == english.input_ids and f["en_anchor"] == len(english.input_ids) - 1
    assert (stats.records, stats.kept, stats.dropped_truncated) == (1, 1, 0)
    sft, _ = encode_records([_record(0)], smol_tokenizer, 256, "sft")
    assert "en_input_ids" not in sft[0] and sft[0]["input_ids"] == f["input_ids"]


def test_truncation_drops_and_counts_or_fails_by_param(smol_tokenizer):
    long_prompt = _record(1, instruction="Erkläre bitte ausführlich: " + "Wort " * 80)
    records = [_record(0), long_prompt, _record(2, output="Sehr lange Antwort. " * 40)]
    features, stats = encode_records(records, smol_tokenizer, 64, "cc")
    assert stats.dropped_truncated == 1 and stats.kept == 2 and stats.response_truncated == 1
    assert all(len(f["input_ids"]) <= 64 for f in features)
    with pytest.raises(InputError, match=r"train.jsonl: record 'r1' \(line 2\) has no response token left"):
        encode_records(records, smol_tokenizer, 64, "cc", on_truncated="error")


def test_long_english_prompt_is_cut_from_the_left_keeping_the_anchor(smol_tokenizer):
    record = _record(0, english="Background: " + "word " * 300 + "What is the capital of France?")
    features, stats = encode_records([record], smol_tokenizer, 96, "cc")
    assert stats.english_truncated == 1
    (f,) = features
    assert len(f["en_input_ids"]) <= 96 and f["en_anchor"] == len(f["en_input_ids"]) - 1
    assert smol_tokenizer.decode(f["en_input_ids"]).endswith("capital of France?<|im_end|>\n<|im_start|>assistant\n")


def test_collator_right_pads_each_side_and_keeps_anchors(smol_tokenizer):
    records = [_record(0), _record(1, instruction="Was ist 2+2?", output="4", english="What is 2+2?")]
    features, _ = encode_records(records, smol_tokenizer, 256, "cc")
    pad = pad_token_id(smol_tokenizer)
    batch = CCCollator(pad)(features)
    assert set(batch) == {"input_ids", "attention_mask", "labels", "anchor", "en_input_ids", "en_attention_mask",
                          "en_anchor", "token_count", "en_token_count"}
    assert batch["token_count"] == sum(len(f["input_ids"]) for f in features)  # real tokens, no padding
    assert batch["en_token_count"] == sum(len(f["en_input_ids"]) for f in features)
    for row, f in enumerate(features):
        n, m = len(f["input_ids"]), len(f["en_input_ids"])
        assert batch["input_ids"][row, :n].tolist() == f["input_ids"]
        assert batch["attention_mask"][row].sum() == n and batch["en_attention_mask"][row].sum() == m
        assert (batch["input_ids"][row, n:] == pad).all() and (batch["labels"][row, n:] == -100).all()
        # right padding: the anchor is the last prompt token, wherever the batch's padding goes
        assert batch["anchor"][row] == f["anchor"] and batch["en_anchor"][row] == m - 1
        assert batch["en_input_ids"][row, batch["en_anchor"][row]] == f["en_input_ids"][-1]
    sft, _ = encode_records(records, smol_tokenizer, 256, "sft")
    assert set(CCCollator(pad)(sft)) == {"input_ids", "attention_mask", "labels", "token_count"}


def test_fingerprint_follows_base_weights_and_tokenizer(tmp_path):
    base = tmp_path / "base"
    base.mkdir()
    (base / "config.json").write_text("{}")
    (base / "tokenizer.json").write_text('{"v": 1}')
    (base / "model.safetensors").write_bytes(b"x" * 10)
    data = tmp_path / "train.jsonl"
    data.write_text("{}\n")
    params = parse_params({})
    first = make_fingerprint(params, "cc", data, base)
    assert make_fingerprint(params, "cc", data, base) == first
    (base / "tokenizer.json").write_text('{"v": 2}')
    assert make_fingerprint(params, "cc", data, base) != first
    second = make_fingerprint(params, "cc", data, base)
    (base / "model.safetensors").write_bytes(b"x" * 11)
    assert make_fingerprint(params, "cc", data, base) != second
    assert make_fingerprint(parse_params({}, overrides=["train.seed=1"]), "cc", data, base) != \
        make_fingerprint(params, "cc", data, base)


def test_builtin_deepspeed_configs_resolve_from_the_working_directory(tmp_path, monkeypatch):
    assert resolve_deepspeed("zero3")["zero_optimization"]["stage"] == 3
    own = tmp_path / "configs" / "deepspeed"
    own.mkdir(parents=True)
    (own / "zero2.json").write_text(json.dumps({"zero_optimization": {"stage": 2, "marker": True}}))
    monkeypatch.chdir(tmp_path)  # a checkout's configs/deepspeed (the Docker image's /app) comes first
    assert resolve_deepspeed("zero2")["zero_optimization"]["marker"] is True
    assert resolve_deepspeed("zero3")["zero_optimization"]["stage"] == 3  # else the source tree's
    with pytest.raises(InputError, match="no such config .* looked for in"):
        resolve_deepspeed("zero9")


def test_tokenizer_special_ids_outside_the_embedding_are_a_mismatch(smol_tokenizer, tiny_factory, tmp_path):
    model, _ = tiny_factory("llama")
    check_tokenizer_matches(smol_tokenizer, model, tmp_path)

    class OtherTokenizer:  # fewer tokens than the embedding has rows, but an eos id beyond them
        bos_token_id, eos_token_id, pad_token_id = 1, 60_000, None

        def __len__(self) -> int:
            return 48_000

    with pytest.raises(InputError, match=r"eos_token_id=60000 is outside the model's 49152 embedding rows"):
        check_tokenizer_matches(OtherTokenizer(), model, tmp_path)


def test_warmup_ratio_must_be_a_ratio():
    from cc_core.config import ConfigError

    with pytest.raises(ConfigError, match="train.warmup_ratio"):
        parse_params({}, overrides=["train.warmup_ratio=1"])


def test_tracking_skip_survives_a_server_that_goes_away(tmp_path, caplog):
    from cc_core.tracking import Tracker

    params = TrackingParams(uri=f"sqlite:///{tmp_path}/mlflow.db", artifact_location=str(tmp_path / "art"),
                            on_unavailable="skip")
    with Tracker(params).run("train-cc") as run:
        run.log_metrics({"loss": 1.0}, step=1)

        def down(*args, **kwargs):
            raise ConnectionError("server gone")

        run.client.log_batch = down  # the server disappears in the middle of the run
        run.log_metrics({"loss": 0.9}, step=2)
        run.log_metrics({"loss": 0.8}, step=3)  # no-op, no second warning
    assert run.broken
    assert sum("tracking was skipped for the rest of run" in r.message for r in caplog.records) == 1
    strict = TrackingParams(uri=params.uri, artifact_location=params.artifact_location, on_unavailable="fail")
    with pytest.raises(ConnectionError):
        with Tracker(strict).run("train-sft") as run:
            run.client.log_batch = down
            run.log_metrics({"loss": 1.0}, step=1)


def test_reopened_run_keeps_logged_params_and_adds_new_ones(tmp_path, caplog):
    import mlflow

    from cc_core.tracking import Tracker

    params = TrackingParams(uri=f"sqlite:///{tmp_path}/mlflow.db", artifact_location=str(tmp_path / "art"))
    with Tracker(params).run("train-cc", params={"train.seed": 0, "eval.limit": 2}) as run:
        pass
    with Tracker(params).run("train-cc", params={"train.seed": 0, "eval.limit": 5, "new.key": 1},
                             run_id=run.run_id) as again:
        assert again.run_id == run.run_id
    logged = mlflow.MlflowClient(params.uri).get_run(run.run_id).data.params
    assert logged == {"train.seed": "0", "eval.limit": "2", "new.key": "1"}
    assert any("keeping the logged values of eval.limit" in r.message for r in caplog.records)


# --- issue 21, point 4: impossible training lengths are errors naming the key -------------------------

@pytest.mark.parametrize("steps", [0, -7, -2])
def test_max_steps_zero_or_below_minus_one_is_an_error_naming_the_key(steps):
    """Before: 0 trained one step and -7 trained every epoch, both exiting 0."""
    from cc_core.config import ConfigError

    with pytest.raises(ConfigError, match=r"train\.max_steps: .*positive number of optimizer steps, or -1 .*"
                                          rf"\(got {steps}\)"):
        parse_params({}, overrides=[f"train.max_steps={steps}"])
    assert parse_params({}, overrides=["train.max_steps=-1"]).train.max_steps == -1  # the epochs decide
    assert parse_params({}, overrides=["train.max_steps=3"]).train.max_steps == 3


def test_examples_dropped_by_pack_max_tokens_name_that_key(smol_tokenizer):
    """Before: "all 32 examples were truncated away by train.cutoff_len=256; raise it"."""
    from cc_core.train import _encode

    records = [_record(i) for i in range(4)]
    params = parse_params({}, overrides=["train.pack_max_tokens=8", "train.cutoff_len=256"])
    with pytest.raises(InputError) as err:
        _encode(params, "cc", records, smol_tokenizer, "data/prepared/train.jsonl")
    message = str(err.value)
    assert message.startswith("data/prepared/train.jsonl: no example left to train on: train.pack_max_tokens=8 "
                              "dropped 4")
    assert message.endswith("raise train.pack_max_tokens") and "cutoff_len" not in message
    short = parse_params({}, overrides=["train.packing=false", "train.cutoff_len=8"])
    with pytest.raises(InputError, match=r"train\.cutoff_len=8 dropped 4 .*; raise train\.cutoff_len$"):
        _encode(short, "cc", records, smol_tokenizer, "data/prepared/train.jsonl")


# --- issue 21, point 1: the base weights are compared by content on resume ---------------------------

def _base_with_manifest(tmp_path):
    from safetensors.torch import save_file
    import torch

    from cc_core.lineage import write_weights_manifest

    base = tmp_path / "base"
    base.mkdir()
    (base / "config.json").write_text("{}")
    save_file({"w": torch.arange(16.0)}, str(base / "model.safetensors"))
    write_weights_manifest(base)
    data = tmp_path / "train.jsonl"
    data.write_text("{}\n")
    return base, data


def test_fingerprint_sees_same_size_weights_changed_after_the_manifest(tmp_path):
    """Before: weights compared by name and size, so weights scaled by 0.5 resumed on other weights."""
    from safetensors.torch import load_file, save_file

    base, data = _base_with_manifest(tmp_path)
    params = parse_params({})
    first = make_fingerprint(params, "cc", data, base)
    weights = base / "model.safetensors"
    size = weights.stat().st_size
    save_file({k: v * 0.5 for k, v in load_file(str(weights)).items()}, str(weights))
    assert weights.stat().st_size == size
    assert make_fingerprint(params, "cc", data, base) != first


def test_fingerprint_reads_hashes_from_the_manifest_while_files_are_unchanged(tmp_path, monkeypatch):
    import os
    import shutil

    import cc_core.lineage as lineage

    base, data = _base_with_manifest(tmp_path)
    params = parse_params({})
    first = make_fingerprint(params, "cc", data, base)
    hashed = []
    real = lineage.file_sha256
    monkeypatch.setattr(lineage, "file_sha256", lambda path, *a: hashed.append(str(path)) or real(path, *a))
    assert make_fingerprint(params, "cc", data, base) == first and hashed == []  # no weight file was read
    # a copy with new mtimes (dvc checkout, cp): re-hashed, and the same content gives the same fingerprint
    copy = tmp_path / "copy"
    shutil.copytree(base, copy, copy_function=shutil.copy)
    os.utime(copy / "model.safetensors", ns=(1, 1))
    assert make_fingerprint(params, "cc", data, copy) == first and hashed == [str(copy / "model.safetensors")]
    # a base directory from an older cctune base-model, without a manifest: hashed, same content, same fingerprint
    (copy / "cc_weights_sha256.json").unlink()
    hashed.clear()
    assert make_fingerprint(params, "cc", data, copy) == first and hashed == [str(copy / "model.safetensors")]


def test_a_copied_base_model_is_hashed_once_then_trusted_from_the_checkpoint_folder(tmp_path, monkeypatch):
    """`dvc checkout` copies the base model (new mtimes): the first start hashes it and records the hashes
    beside the checkpoints; the next start (a resume) trusts them while size and mtime hold."""
    import os
    import shutil

    import cc_core.lineage as lineage
    from cc_core.io import write_json
    from cc_core.training.checkpoints import BASE_WEIGHTS, base_weights

    base, data = _base_with_manifest(tmp_path)
    copy = tmp_path / "copy"
    shutil.copytree(base, copy, copy_function=shutil.copy)
    os.utime(copy / "model.safetensors", ns=(5, 5))
    work = tmp_path / ".cc-checkpoints"
    work.mkdir()
    hashed = []
    real = lineage.file_sha256
    monkeypatch.setattr(lineage, "file_sha256", lambda path, *a: hashed.append(str(path)) or real(path, *a))
    first = base_weights(copy, work)
    assert hashed == [str(copy / "model.safetensors")]
    write_json(work / BASE_WEIGHTS, first)  # as train's set-up does beside the fingerprint
    assert base_weights(copy, work) == first and len(hashed) == 1  # trusted: not read again
    os.utime(copy / "model.safetensors", ns=(6, 6))  # touched again: hashed again
    assert base_weights(copy, work)["model.safetensors"]["sha256"] == first["model.safetensors"]["sha256"]
    assert len(hashed) == 2
