import json
import time

import pytest
import torch

from cc_core.hub import HubUnreachableError
from cc_core.modeling.base import BaseModelSpec, ModelSourceError, build_base_model, build_tiny, load_base
from cc_core.modeling.loading import load_model_dir


@pytest.mark.model
@pytest.mark.parametrize("arch", ["llama", "qwen2", "mistral", "gemma2"])
def test_tiny_models_build_fast_with_real_tokenizer(arch, smol_tokenizer):
    start = time.perf_counter()
    model, tokenizer = build_tiny(arch)
    assert model.config.model_type == arch and model.config.num_hidden_layers == 2
    assert len(tokenizer) == model.config.vocab_size == 49152
    assert tokenizer.chat_template == smol_tokenizer.chat_template
    ids = tokenizer("Habari ya asubuhi", return_tensors="pt")
    with torch.no_grad():
        logits = model(**ids).logits
    assert logits.shape == (1, ids["input_ids"].shape[1], 49152) and torch.isfinite(logits).all()
    assert time.perf_counter() - start < 30  # seconds, not minutes


@pytest.mark.model
def test_tiny_models_are_seeded():
    a, _ = build_tiny("llama", seed=5)
    b, _ = build_tiny("llama", seed=5)
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))


def test_unknown_tiny_arch():
    with pytest.raises(ModelSourceError, match="tiny-random-llama"):
        build_tiny("gpt9")


@pytest.mark.model
def test_base_stage_writes_plain_hf_dir_and_local_dir_round_trips(tmp_path):
    result = build_base_model(BaseModelSpec(base="tiny-random-qwen2"), tmp_path / "base")  # no params schema needed
    out = tmp_path / "base"
    assert (out / "model.safetensors").is_file() and (out / "config.json").is_file()
    assert (out / "chat_template.jinja").is_file() or "chat_template" in (out / "tokenizer_config.json").read_text()
    assert json.loads((out / "cc_base.json").read_text())["source"] == "tiny-random-qwen2"
    assert result.model_type == "qwen2" and len(result.content_sha256) == 64
    assert not list(tmp_path.glob(".base.tmp-*"))
    # any local HF directory is an accepted model.base
    model, tokenizer, provenance = load_base(BaseModelSpec(base=str(out)))
    reloaded, _ = load_model_dir(out)
    ids = torch.tensor([[1, 2, 3, 4]])
    with torch.no_grad():
        torch.testing.assert_close(model(ids).logits, reloaded(ids).logits)
    assert provenance["source"] == str(out) and tokenizer.chat_template


def test_hub_id_offline_fails_fast_with_hint():
    start = time.perf_counter()
    with pytest.raises(HubUnreachableError, match=r"unreachable.*local directory"):
        load_base(BaseModelSpec(base="meta-llama/Llama-3.1-8B"))
    assert time.perf_counter() - start < 5


def test_missing_local_directory(tmp_path):
    with pytest.raises(ModelSourceError, match="directory not found"):
        load_base(BaseModelSpec(base=str(tmp_path / "nope")))
    (tmp_path / "empty").mkdir()
    with pytest.raises(ModelSourceError, match="no config.json"):
        load_base(BaseModelSpec(base=str(tmp_path / "empty")))
