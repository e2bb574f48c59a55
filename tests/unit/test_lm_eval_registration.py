"""The lm-eval backend's registration, and cc_core without the optional lm-eval extra.

    .venv/bin/python -m pytest tests/unit/test_lm_eval_registration.py -q
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path


def test_cc_tuning_is_registered_once_the_backend_is_imported_and_builtins_survive():
    import pytest

    pytest.importorskip("lm_eval", reason="the lm-eval extra: pip install -c constraints.txt -e '.[lm-eval]'")
    from lm_eval.api.registry import get_model, model_registry

    import cc_core.lm_eval_backend as backend

    assert "cc-tuning" in model_registry
    assert get_model("cc-tuning") is backend.CCTuningLM
    # registering ours must not hide lm-eval's built-in models (they are filled in lazily)
    assert "hf" in model_registry and get_model("hf").__name__ == "HFLM"


def test_cc_core_imports_without_lm_eval_and_the_backend_says_how_to_install_it():
    code = (
        "import sys; sys.modules['lm_eval'] = None\n"  # as if the extra were not installed
        "import cc_core, cc_core.cli, cc_core.evaluate, cc_core.loglik\n"
        "try:\n    import cc_core.lm_eval_backend\n"
        "except ImportError as err:\n    print('ERR', err)\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert "ERR" in done.stdout and "pip install" in done.stdout and ".[lm-eval]" in done.stdout


# --- the backend's request types on a tiny checkpoint (lm-eval's Instance objects, no task machinery) ---

PROMPTS = ["Wie heißt die Hauptstadt von Kenia?", "東京はどこ？", "Explique la photosynthèse en une phrase."]


def _backend_dirs(tmp_path, lively_factory):
    """A tiny CC checkpoint and its (random) Transform Matrix with lineage."""
    import torch

    from cc_core.lineage import checkpoint_sha256
    from cc_core.modeling import CCTuningModel
    from cc_core.modeling.checkpoint import save_cc_checkpoint
    from cc_core.modeling.transform_matrix import TransformMatrix

    model, tok = lively_factory("llama")
    cc = CCTuningModel(model, inject_layer=0).eval()
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        cc.decision_maker.proj.weight.copy_(torch.randn(cc.decision_maker.proj.weight.shape, generator=gen))
    save_cc_checkpoint(cc, tmp_path / "cc", tok)
    meta = {"model_sha256": checkpoint_sha256(tmp_path / "cc")}
    TransformMatrix(torch.randn(64, 64, generator=gen) * 0.3, None, {}, meta).save(tmp_path / "t.safetensors")
    return tmp_path / "cc", tmp_path / "t.safetensors"


def _instance(kind: str, args: tuple):
    from lm_eval.api.instance import Instance

    return Instance(request_type=kind, doc={}, arguments=args, idx=0)


def test_generate_until_equals_the_generator_and_cuts_at_stop_sequences(tmp_path, lively_factory):
    import pytest

    pytest.importorskip("lm_eval")
    from cc_core.generate import Generator
    from cc_core.lm_eval_backend import CCTuningLM

    model_dir, transform = _backend_dirs(tmp_path, lively_factory)
    lm = CCTuningLM(checkpoint=str(model_dir), transform=str(transform), batch_size=2, max_gen_toks=6)
    assert lm.mode == "transform"  # the default for a CC checkpoint
    contexts = [lm.apply_chat_template([{"role": "user", "content": p}]) for p in PROMPTS]
    out = lm.generate_until([_instance("generate_until", (c, {"until": [], "max_gen_toks": 6})) for c in contexts])
    reference = Generator.from_dirs(model_dir, transform=transform, mode="transform", max_new_tokens=6)
    expected = reference.generate(PROMPTS, [None] * len(PROMPTS))
    assert [o.strip() for o in out] == [e.text for e in expected]  # the connection applied as in generation
    plain = CCTuningLM(checkpoint=str(model_dir), mode="none", max_gen_toks=6)
    assert plain.generate_until([_instance("generate_until", (c, {"until": [], "max_gen_toks": 6}))
                                 for c in contexts]) != out  # (else the check above proves little)
    text = out[0]
    stop = text[len(text) // 2:][:2] if len(text) > 3 else None
    if stop:
        cut = lm.generate_until([_instance("generate_until", (contexts[0], {"until": [stop], "max_gen_toks": 6}))])
        assert cut == [text.split(stop)[0]]
    with pytest.raises(ValueError, match="greedy"):
        lm.generate_until([_instance("generate_until", (contexts[0], {"do_sample": True}))])


def test_loglikelihood_rolling_is_the_plain_model(tmp_path, lively_factory):
    import pytest
    import torch

    pytest.importorskip("lm_eval")
    from cc_core.lm_eval_backend import CCTuningLM

    model_dir, transform = _backend_dirs(tmp_path, lively_factory)
    lm = CCTuningLM(checkpoint=str(model_dir), transform=str(transform), mode="transform")
    doc = "Die Photosynthese wandelt Licht in chemische Energie um."
    (total,) = lm.loglikelihood_rolling([_instance("loglikelihood_rolling", (doc,))])
    tokens = [lm.prefix_token_id] + lm.tok_encode(doc)
    with torch.no_grad():
        logp = torch.log_softmax(lm.gen.model(input_ids=torch.tensor([tokens])).logits[0].float(), -1)
    expected = float(sum(logp[i, t] for i, t in enumerate(tokens[1:])))
    assert total == pytest.approx(expected, abs=1e-3)
    # windows shorter than the document: every token still predicted once, with less context
    lm._max_length = 5
    (windowed,) = lm.loglikelihood_rolling([_instance("loglikelihood_rolling", (doc,))])
    assert windowed != pytest.approx(total, abs=1e-3) and windowed < 0


TASKS_DIR = Path(__file__).resolve().parents[2] / "cc_core" / "lm_eval_tasks"  # the package's task folder


def _tasks_module():
    import importlib.util

    spec = importlib.util.spec_from_file_location("cc_tasks", f"{TASKS_DIR}/cc_tasks.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_packaged_tasks_read_eval_data_dir_from_params_yaml_or_metadata(tmp_path, monkeypatch):
    """cc_<benchmark> docs come from --metadata data_dir, else params.yaml's eval.data_dir in the current
    directory, else the bundled fixture; a group per benchmark lists every paper language."""
    import shutil

    import yaml

    from cc_core.data.benchmarks import BENCHMARKS, BUNDLED_BENCHMARKS_DIR
    tasks = _tasks_module()
    mine = tmp_path / "benchmarks"
    shutil.copytree(BUNDLED_BENCHMARKS_DIR / "XNLI", mine / "XNLI")
    for part in ("split_sample", "ans_sample"):  # one item of Arabic only
        path = mine / "XNLI" / part / "ar.json"
        path.write_text(path.read_text(encoding="utf-8").splitlines()[0] + "\n", encoding="utf-8")
    monkeypatch.chdir(tmp_path)
    bundled = tasks.load_docs("XNLI", "ar")["test"]
    assert len(bundled) == 4 and bundled[0]["choices"][0].startswith("(1) ")
    (tmp_path / "params.yaml").write_text(yaml.safe_dump({"eval": {"data_dir": "benchmarks", "protocol": "standard"}}))
    docs = tasks.load_docs("XNLI", "ar")["test"]
    assert len(docs) == 1 and docs[0]["id"] == "XNLI-ar-00000" and docs[0]["protocol"] == "standard"
    assert len(tasks.load_docs("XNLI", "ar", data_dir=str(BUNDLED_BENCHMARKS_DIR))["test"]) == 4  # --metadata
    # a generative doc is scored as cctune score scores it
    qa = tasks.load_docs("XQuAD", "zh", data_dir="bundled")["test"][0]
    gold = json.loads(qa["gold_json"])
    assert tasks.process_results(qa, [gold[0] if isinstance(gold, list) else gold]) == {"score": 100.0}
    for name, spec in BENCHMARKS.items():
        group = yaml.safe_load(open(f"{TASKS_DIR}/cc_{name.lower()}.yaml").read())
        assert group["task"] == [f"cc_{name.lower()}_{lang}" for lang in spec.langs]
