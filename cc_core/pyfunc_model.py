"""MLflow pyfunc for a registered CC-Tuning checkpoint ("models from code": nothing is pickled).

    model = mlflow.pyfunc.load_model("models:/cc-tuning-smollm2-135m-instruct@champion")
    model.predict(["Quelle est la capitale du Kenya ?"])          # → list of generations
    model.predict(pd.DataFrame({"prompt": [...], "lang": [...]}))

MLflow executes this file when loading; ``cctune register`` logs it (cc_core.registry).
The weights are referenced by path through ``model_config`` (``model_dir``, ``transform``)
unless ``register.log_weights`` copied them into the artifact store as artifacts.
"""

from __future__ import annotations

import mlflow
from mlflow.pyfunc import PythonModel


class CCTuningPyfunc(PythonModel):
    def load_context(self, context):
        from cc_core.generate import Generator

        config = dict(context.model_config or {})
        artifacts = dict(context.artifacts or {})
        model_dir = artifacts.get("model") or config["model_dir"]
        transform = artifacts.get("transform") or config["transform"]
        self.generator = Generator.from_dirs(
            model_dir, transform=transform, mode=config.get("mode", "transform"),
            decision_mode=config.get("decision_mode", "argmax"),
            max_new_tokens=int(config.get("max_new_tokens", 40)), batch_size=int(config.get("batch_size", 8)))

    def predict(self, context, model_input, params=None):
        prompts, langs = _prompts(model_input)
        overrides = params or {}
        configured = self.generator.max_new_tokens
        try:  # a per-call override, not a change for later calls
            if "max_new_tokens" in overrides:
                self.generator.max_new_tokens = int(overrides["max_new_tokens"])
            return [g.text for g in self.generator.generate(prompts, langs)]
        finally:
            self.generator.max_new_tokens = configured


def _prompts(model_input):
    """Prompts (and optional languages) from a DataFrame, a list of strings, or a dict."""
    if hasattr(model_input, "columns"):
        column = "prompt" if "prompt" in model_input.columns else model_input.columns[0]
        langs = list(model_input["lang"]) if "lang" in model_input.columns else None
        return [str(p) for p in model_input[column]], langs
    if isinstance(model_input, dict):
        prompts = model_input.get("prompt") or model_input.get("prompts")
        prompts = [prompts] if isinstance(prompts, str) else list(prompts)
        return prompts, model_input.get("lang")
    if isinstance(model_input, str):
        return [model_input], None
    return [str(p) for p in model_input], None


mlflow.models.set_model(CCTuningPyfunc())
