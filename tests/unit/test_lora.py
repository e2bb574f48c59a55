"""CC-Tuning with LoRA adapters (train.peft: lora) on tiny llama / qwen2 / mistral (CPU, float32).

    python -m pytest -q tests/unit/test_lora.py

Only the adapters and the Decision Maker train; at initialisation (LoRA B = 0) the hooks capture exactly
the unwrapped model's activations and the CC loss is full CC's; a few LoRA-CC steps lower the loss on
the bundled data; gradient checkpointing (reentrant and not) changes nothing; an adapter checkpoint
loads only onto its own base, and merged and unmerged checkpoints give the same first-token logits
(within 1e-5, float32) and the same greedy tokens in all three inference modes.
"""

from __future__ import annotations

import copy
import random

import pytest
import torch

from cc_core.config import TrainParams
from cc_core.data.records import Record, load_bundled
from cc_core.generate import Generator
from cc_core.io import InputError
from cc_core.modeling import CCTuningModel, capture_ffn
from cc_core.modeling.adapters import AdapterBaseError, BaseRef, LoraSpec, add_lora, is_adapter_dir, resolve_base
from cc_core.modeling.checkpoint import save_cc_checkpoint
from cc_core.modeling.loading import load_inference_model, load_model_dir, merge_checkpoint
from cc_core.training.adapters import check_adapter_options
from cc_core.training.data import CCCollator, PackedCollator, encode_records
from cc_helpers import random_transform

ARCHS = ("llama", "qwen2", "mistral")
PROMPTS = ["Wie heißt die Hauptstadt von Kenia?", "東京はどこ？", "hi",
           "Explique la photosynthèse en une phrase, s'il te plaît, avec des mots simples."]
LANGS = ["de", "ja", "en", "fr"]
ENGLISH = ["What is the capital of Kenya?", None, "hi", "Explain photosynthesis in one sentence, please."]


def _bundled_batch(tokenizer, n: int = 6, packed: bool = True, seed: int = 0):
    """A CC training batch of ``n`` bundled records (packed rows, as training does by default)."""
    records = load_bundled().records
    picked = random.Random(seed).sample(records, n)
    features, _ = encode_records(picked, tokenizer, 128, "cc")
    collator = PackedCollator(tokenizer.pad_token_id) if packed else CCCollator(tokenizer.pad_token_id)
    batch = collator(features)
    return {k: v for k, v in batch.items() if not k.endswith("token_count")}


def _with_random_b(peft_model, seed: int = 0, std: float = 0.05):
    """Non-zero LoRA B (a trained adapter): every adapter then changes the model."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in peft_model.named_parameters():
            if "lora_B" in name:
                param.copy_(torch.randn(param.shape, generator=gen) * std)
    return peft_model


def _cc(model, dm_seed: int = 3, mode: str = "argmax") -> CCTuningModel:
    cc = CCTuningModel(model, inject_layer=0, decision_mode=mode)
    gen = torch.Generator().manual_seed(dm_seed)
    with torch.no_grad():
        cc.decision_maker.proj.weight.copy_(torch.randn(cc.decision_maker.proj.weight.shape, generator=gen))
    return cc


# --- training ------------------------------------------------------------------------------------

@pytest.mark.parametrize("arch", ARCHS)
def test_only_adapter_and_decision_maker_parameters_get_gradients(tiny_factory, arch):
    model, tok = tiny_factory(arch)
    cc = _cc(_with_random_b(add_lora(model, LoraSpec())), mode="gumbel").train()
    torch.manual_seed(0)
    cc(**_bundled_batch(tok)).loss.backward()
    with_grad = {name for name, p in cc.named_parameters() if p.grad is not None and p.grad.abs().sum() > 0}
    trainable = {name for name, p in cc.named_parameters() if p.requires_grad}
    assert with_grad == trainable  # every adapter matrix (A and B) and the Decision Maker, nothing else
    assert {n for n in trainable if "lora_" not in n} == {"decision_maker.proj.weight"}
    assert {n.rsplit(".lora_", 1)[1] for n in trainable if "lora_" in n} == {"A.default.weight", "B.default.weight"}
    frozen = [name for name, p in cc.named_parameters() if not p.requires_grad]
    assert frozen and all(cc.get_parameter(name).grad is None for name in frozen)
    # every linear layer of the decoder has an adapter (all-linear), the LM head none
    adapted = {n.split(".lora_")[0].rsplit(".", 1)[1] for n in trainable if "lora_A" in n}
    assert adapted == {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"}


@pytest.mark.parametrize("arch", ARCHS)
def test_at_initialisation_lora_cc_is_full_cc(tiny_factory, arch):
    """B = 0: the wrapped model computes exactly what the plain one does, through the hooks too."""
    model, tok = tiny_factory(arch)
    plain = copy.deepcopy(model)
    wrapped = add_lora(model, LoraSpec())
    batch = _bundled_batch(tok, packed=False)
    with torch.no_grad():
        args = (batch["en_input_ids"], batch["en_attention_mask"], batch["en_anchor"])
        assert torch.equal(capture_ffn(wrapped, *args), capture_ffn(plain, *args))
        full, lora = _cc(plain, mode="gumbel"), _cc(wrapped, mode="gumbel")
        torch.manual_seed(1)
        full_out = full(**batch)
        torch.manual_seed(1)
        lora_out = lora(**batch)
    assert torch.equal(lora_out.choice, full_out.choice)
    assert torch.equal(lora_out.loss, full_out.loss) and torch.equal(lora_out.logits, full_out.logits)
    packed = _bundled_batch(tok, packed=True)
    with torch.no_grad():
        torch.manual_seed(2)
        full_packed = full(**packed).loss
        torch.manual_seed(2)
        assert torch.equal(lora(**packed).loss, full_packed)


@pytest.mark.parametrize("arch", ARCHS)
def test_a_few_lora_cc_steps_lower_the_loss_on_the_bundled_data(tiny_factory, arch):
    model, tok = tiny_factory(arch)
    torch.manual_seed(0)
    cc = _cc(add_lora(model, LoraSpec()), mode="gumbel").train()
    batch = _bundled_batch(tok, n=8)
    optimizer = torch.optim.AdamW([p for p in cc.parameters() if p.requires_grad], lr=1e-2)
    losses = []
    for _ in range(6):
        optimizer.zero_grad()
        loss = cc(**batch).loss
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    # a 2-layer, 64-wide random model: adapters of rank 8 move a 10.8-nat loss by a few tenths in 6 steps
    assert all(b < a for a, b in zip(losses, losses[1:])) and losses[-1] < losses[0] - 0.2, losses


@pytest.mark.parametrize("arch", ARCHS)
def test_gradient_checkpointing_changes_nothing_with_adapters(tiny_factory, arch):
    """Non-reentrant and reentrant: the same loss and every adapter's and the Decision Maker's gradient."""
    model, tok = tiny_factory(arch)
    base = _cc(_with_random_b(add_lora(model, LoraSpec())), mode="gumbel").train()
    batch = _bundled_batch(tok)
    variants = [base]
    for reentrant in (False, True):
        variants.append(copy.deepcopy(base))
        variants[-1].activation_checkpointing_enable({"use_reentrant": reentrant})
    results = []
    for cc in variants:
        torch.manual_seed(0)  # the same Gumbel draw
        loss = cc(**batch).loss
        loss.backward()
        results.append((loss.detach(), {n: p.grad for n, p in cc.named_parameters() if p.requires_grad}))
    loss_a, grads_a = results[0]
    for loss_b, grads_b in results[1:]:
        torch.testing.assert_close(loss_b, loss_a, atol=1e-6, rtol=0)
        assert grads_a.keys() == grads_b.keys() and all(g is not None for g in grads_b.values())
        for name in grads_a:
            torch.testing.assert_close(grads_b[name], grads_a[name], atol=1e-6, rtol=1e-5, msg=name)


# --- options checked before anything loads -----------------------------------------------------------

def test_qlora_on_a_cpu_is_one_error_naming_the_key():
    tp = TrainParams(peft="lora", lora={"quantize": "4bit"})
    with pytest.raises(InputError, match=r"^train.lora.quantize=4bit needs a CUDA GPU") as err:
        check_adapter_options(tp, cuda=False)
    assert "\n" not in str(err.value)
    with pytest.raises(InputError, match=r"train.lora.quantize=4bit needs train.peft=lora"):
        check_adapter_options(TrainParams(lora={"quantize": "4bit"}), cuda=True)
    with pytest.raises(InputError, match=r"with ZeRO-3"):
        check_adapter_options(TrainParams(peft="lora", lora={"quantize": "4bit"}, deepspeed="zero3"), cuda=True)
    check_adapter_options(TrainParams(peft="lora"), cuda=False)  # plain LoRA runs anywhere


def test_qlora_asked_for_on_a_cpu_fails_before_any_model_loads(tmp_path, monkeypatch, capsys):
    from cc_core.cli import main

    monkeypatch.chdir(tmp_path)  # no params.yaml needed beyond the defaults, no models/base at all
    (tmp_path / "params.yaml").write_text("tracking:\n  enabled: false\n")
    code = main(["train", "--method", "cc", "--set", "train.peft=lora", "--set", "train.lora.quantize=4bit"])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1, err
    assert err.startswith("cctune train: error: train.lora.quantize=4bit needs a CUDA GPU"), err


# --- checkpoints ---------------------------------------------------------------------------------------

def _save_base(model, tok, path):
    model.save_pretrained(path, safe_serialization=True)
    tok.save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def adapter_checkpoints(tmp_path_factory, request):
    """Per architecture: a saved base, a trained-looking CC adapter checkpoint on it, its merged copy."""
    lively = request.getfixturevalue("lively_factory")
    made = {}
    for arch in ARCHS:
        root = tmp_path_factory.mktemp(f"lora-{arch}")
        model, tok = lively(arch)
        base = _save_base(model, tok, root / "base")
        cc = _cc(_with_random_b(add_lora(copy.deepcopy(model), LoraSpec()), std=0.02))
        save_cc_checkpoint(cc, root / "cc", tok, base=BaseRef.of(base))
        merge_checkpoint(root / "cc", root / "merged")
        made[arch] = root
    return made


def test_an_adapter_checkpoint_holds_the_adapter_the_decision_maker_and_its_base(adapter_checkpoints):
    root = adapter_checkpoints["llama"]
    files = {p.name for p in (root / "cc").iterdir()}
    assert {"adapter_config.json", "adapter_model.safetensors", "cc_adapter.json", "cc_tuning.json",
            "decision_maker.safetensors"} <= files
    assert not {"model.safetensors", "config.json"} & files  # no base weights
    assert is_adapter_dir(root / "cc") and not is_adapter_dir(root / "merged")
    assert resolve_base(root / "cc", root / "base") == root / "base"
    size = lambda d: sum(p.stat().st_size for p in d.glob("*.safetensors"))  # noqa: E731
    assert size(root / "cc") * 50 < size(root / "merged")


def test_loading_refuses_another_base(adapter_checkpoints, tiny_factory, tmp_path):
    root = adapter_checkpoints["llama"]
    other = _save_base(*tiny_factory("llama", seed=7), tmp_path / "other")
    with pytest.raises(AdapterBaseError, match=r"an adapter trained on base model \w+…, but .*other is \w+…") as err:
        load_inference_model(root / "cc", base_dir=other)
    assert "\n" not in str(err.value)
    with pytest.raises(AdapterBaseError, match=r"expected at .*missing, which holds no model"):
        load_inference_model(root / "cc", base_dir=tmp_path / "missing")


def _generator(model, tok, cc, mode):
    return Generator(model, tok, cc, random_transform() if mode == "transform" else None, mode=mode,
                     max_new_tokens=12, cache="dynamic")


@pytest.mark.parametrize("arch", ARCHS)
def test_merged_and_unmerged_checkpoints_give_the_same_logits_and_generations(adapter_checkpoints, arch):
    """In all three modes. Tolerance: first-token logits within 1e-5 (float32; merging reorders the
    adapter's additions), greedy tokens identical. The adapter directory as the stages load it (merged
    on load) holds the merged checkpoint's weights exactly; its logits differ by float noise only (the
    same computation on tensors at other addresses can take another vectorised path)."""
    root = adapter_checkpoints[arch]
    unmerged = load_inference_model(root / "cc", merge_adapter=False)
    merged = load_inference_model(root / "merged")
    on_load = load_inference_model(root / "cc")
    assert type(unmerged[0]).__name__.startswith("Peft") and not type(merged[0]).__name__.startswith("Peft")
    assert all(torch.equal(p, q) for p, q in zip(on_load[0].state_dict().values(), merged[0].state_dict().values()))
    base_logits = _generator(*load_inference_model(root / "base"), "none").prefill(PROMPTS, LANGS)[0]
    for mode in ("none", "transform", "parallel"):
        generators = [_generator(*loaded, mode) for loaded in (unmerged, merged, on_load)]
        logits = [g.prefill(PROMPTS, LANGS, ENGLISH)[0] for g in generators]
        torch.testing.assert_close(logits[0], logits[1], atol=1e-5, rtol=0, msg=mode)
        torch.testing.assert_close(logits[2], logits[1], atol=1e-5, rtol=0, msg=mode)
        assert (logits[1] - base_logits).abs().max() > 1e-2, mode  # the adapter (and the connection) matter
        texts = [g.generate(PROMPTS, LANGS, ENGLISH) for g in generators]
        assert [r.token_ids for r in texts[0]] == [r.token_ids for r in texts[1]] == [r.token_ids for r in texts[2]]
        assert [r.chosen_layer for r in texts[0]] == [r.chosen_layer for r in texts[1]], mode
        assert any(r.new_tokens > 2 for r in texts[1]), mode


def test_the_lm_eval_backend_on_an_adapter_checkpoint_gives_the_merged_checkpoints_outputs(adapter_checkpoints):
    """``--model_args checkpoint=<adapter>[,base=DIR]``: the same log-likelihoods (within 1e-4) and the same
    greedy continuations as the merged checkpoint, with the connection (transform mode)."""
    pytest.importorskip("lm_eval")
    from lm_eval.api.instance import Instance

    from cc_core.lineage import checkpoint_sha256
    from cc_core.lm_eval_backend import CCTuningLM
    from cc_core.modeling.transform_matrix import TransformMatrix

    root = adapter_checkpoints["llama"]
    matrix = random_transform()
    for name in ("cc", "merged"):  # one matrix, recorded for each checkpoint (lineage is checked at load)
        TransformMatrix(matrix.matrix, None, {}, {"model_sha256": checkpoint_sha256(root / name)}).save(root / f"{name}.t")
    backends = [CCTuningLM(checkpoint=str(root / "cc"), base=str(root / "base"), transform=str(root / "cc.t"),
                           max_gen_toks=8),
                CCTuningLM(checkpoint=str(root / "merged"), transform=str(root / "merged.t"), max_gen_toks=8)]
    contexts = [lm.apply_chat_template([{"role": "user", "content": p}]) for lm in backends[:1] for p in PROMPTS]
    scored = [lm.loglikelihood([Instance("loglikelihood", {}, (c, " Nairobi"), 0) for c in contexts])
              for lm in backends]
    assert [greedy for _, greedy in scored[0]] == [greedy for _, greedy in scored[1]]
    for (adapter, _), (merged, _) in zip(*scored):
        assert adapter == pytest.approx(merged, abs=1e-4)
    texts = [lm.generate_until([Instance("generate_until", {}, (c, {"until": []}), 0) for c in contexts])
             for lm in backends]
    assert texts[0] == texts[1] and any(t.strip() for t in texts[1])


def test_an_sft_adapter_checkpoint_merges_into_a_plain_model(tiny_factory, tmp_path):
    from cc_core.modeling.adapters import save_adapter

    model, tok = tiny_factory("qwen2")
    base = _save_base(model, tok, tmp_path / "base")
    wrapped = _with_random_b(add_lora(copy.deepcopy(model), LoraSpec(r=4, target_modules=("q_proj", "v_proj"))))
    save_adapter(wrapped, tmp_path / "sft", BaseRef.of(base))
    tok.save_pretrained(tmp_path / "sft")
    merge_checkpoint(tmp_path / "sft", tmp_path / "merged")
    assert not (tmp_path / "merged" / "cc_tuning.json").exists()
    merged, _ = load_model_dir(tmp_path / "merged")
    ids = torch.tensor([tok("Hallo Welt, wie geht es?").input_ids])
    with torch.no_grad():
        torch.testing.assert_close(merged(input_ids=ids).logits, wrapped.eval()(input_ids=ids).logits,
                                   atol=1e-5, rtol=0)
    with pytest.raises(InputError, match="not an adapter checkpoint"):
        merge_checkpoint(tmp_path / "merged", tmp_path / "again")


def test_the_decision_maker_can_have_its_own_learning_rate(tiny_factory, tmp_path):
    from cc_core.training.data import FeatureDataset
    from cc_core.training.trainer import CCTrainer, training_arguments

    model, tok = tiny_factory("llama")
    cc = _cc(add_lora(model, LoraSpec()), mode="gumbel")
    tp = TrainParams(peft="lora", learning_rate=1e-4, decision_maker_lr=1e-3, weight_decay=0.1)
    args = training_arguments(tp, tmp_path, None)
    groups = {}
    for dm_lr in (None, 1e-3):
        trainer = CCTrainer(model=cc, args=args, train_dataset=FeatureDataset([]), decision_maker_lr=dm_lr)
        groups[dm_lr] = trainer.create_optimizer().param_groups
    dm = cc.decision_maker.proj.weight
    own = [g for g in groups[1e-3] if any(p is dm for p in g["params"])]
    assert len(own) == 1 and own[0]["lr"] == 1e-3 and own[0]["params"] == [dm]
    assert all(g["lr"] == 1e-4 for g in groups[1e-3] if g is not own[0])
    trained = {id(p) for g in groups[1e-3] for p in g["params"]}
    assert trained == {id(p) for p in cc.parameters() if p.requires_grad}  # the adapters and the DM, once each
    assert all(g["lr"] == 1e-4 for g in groups[None])  # default: the same learning rate


def test_an_adapter_versions_base_files_are_verified(adapter_checkpoints, tmp_path):
    """A registered adapter version names its base's every file by hash; a changed one is refused."""
    import shutil

    from cc_core.pyfunc_model import ModelFilesError, resolve_base_model
    from cc_core.registry_files import file_manifest

    root = adapter_checkpoints["qwen2"]
    base = tmp_path / "base"
    shutil.copytree(root / "base", base)
    transform = tmp_path / "transform"
    transform.mkdir()
    random_transform().save(transform / "transform.safetensors")
    manifest = file_manifest(root / "cc", transform, base)
    assert "tokenizer.json" in manifest["base"] and "model.safetensors" in manifest["base"]
    assert "tokenizer.json" not in manifest["model"]  # the base's own tokenizer travels with the base
    assert {"adapter_model.safetensors", "decision_maker.safetensors", "cc_adapter.json"} <= set(manifest["model"])
    config = {"storage": "reference", "base_dir": str(base), "files": manifest, "registered_model": "m"}
    assert resolve_base_model(config) == base
    assert resolve_base_model({**config, "files": {k: v for k, v in manifest.items() if k != "base"}}) is None
    (base / "config.json").write_text((base / "config.json").read_text().replace("}", ', "x": 1}', 1))
    with pytest.raises(ModelFilesError, match=r"config.json: sha256 is \w+, registered \w+: the file changed"):
        resolve_base_model(config)


def test_the_trainer_leaves_a_4bit_base_where_it_loaded(tiny_factory, tmp_path, monkeypatch):
    """A bitsandbytes (QLoRA) base cannot be moved with ``.to``: CCTuningModel reports the base's
    quantization method through the PEFT wrapper, so the HF Trainer skips the move; a plain base moves."""
    from transformers.utils.quantization_config import QuantizationMethod

    from cc_core.training.trainer import CCTrainer, training_arguments

    moved = []
    monkeypatch.setattr(CCTrainer, "_move_model_to_device", lambda self, model, device: moved.append(model))
    args = training_arguments(TrainParams(peft="lora", max_steps=1), tmp_path, None)
    plain = _cc(add_lora(tiny_factory("llama")[0], LoraSpec()))
    assert plain.quantization_method is None
    CCTrainer(model=plain, args=args)
    assert moved == [plain]

    peft_model = add_lora(tiny_factory("llama")[0], LoraSpec())
    peft_model.get_base_model().quantization_method = QuantizationMethod.BITS_AND_BYTES  # as a 4-bit load sets it
    quantized = _cc(peft_model)
    assert quantized.quantization_method == QuantizationMethod.BITS_AND_BYTES
    moved.clear()
    CCTrainer(model=quantized, args=args)
    assert moved == []


def test_training_flops_count_the_frozen_base_without_its_weight_gradients(tiny_factory, tmp_path):
    """total_flos: 6 × trained and 4 × frozen non-embedding parameters per trained token (no weight
    gradients for LoRA's base), + 2 × every one per English prompt token; full CC: 6 × all, as before."""
    from cc_core.training.trainer import CCTrainer, training_arguments

    args = training_arguments(TrainParams(max_steps=1), tmp_path, None)
    batch = {"token_count": torch.tensor(10), "en_token_count": torch.tensor(5)}

    def non_embedding(model, trainable=None):
        embedding = {id(p) for m in model.modules() if isinstance(m, torch.nn.Embedding) for p in m.parameters()}
        return sum(p.numel() for p in model.parameters()
                   if id(p) not in embedding and (trainable is None or p.requires_grad == trainable))

    full = _cc(tiny_factory("llama")[0])
    n = non_embedding(full.model)
    assert CCTrainer(model=full, args=args).floating_point_ops(batch) == 6 * n * 10 + 2 * n * 5

    lora = _cc(add_lora(tiny_factory("llama")[0], LoraSpec()))
    adapters, base = non_embedding(lora.model, True), non_embedding(lora.model, False)
    assert base == n and 0 < adapters < n / 10
    assert CCTrainer(model=lora, args=args).floating_point_ops(batch) == (6 * adapters + 4 * n) * 10 + 2 * (n + adapters) * 5
