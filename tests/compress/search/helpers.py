"""Helpers the search tests share: counting a pass's applications, rerunning a written recipe."""

import dataclasses

from compress.api import run
from compress.recipe import registry
from export.onnx.runtime import make_session, ort_predictor


def counting(monkeypatch, name: str, calls: list, interrupt_at: int | None = None):
    """Wrap pass ``name`` so its applications are counted (and the ``interrupt_at``-th is a Ctrl-C)."""
    spec = registry.get_pass(name)

    def spy(model, config, ctx):
        calls.append(name)
        if interrupt_at is not None and len(calls) == interrupt_at:
            raise KeyboardInterrupt
        return spec.apply(model, config, ctx)

    monkeypatch.setitem(registry._PASSES, name, dataclasses.replace(spec, apply=spy))


def rerun_artifact(fresh_model, result, data, evaluator, out):
    """``modelpress run`` on the search's written recipe; a predictor of the chosen point's artifact."""
    again = run(fresh_model, result.recipe_path, data, out_dir=out, evaluator=evaluator, report=False)
    artifact = next(a for a in again.artifacts if a["name"] == result.chosen["name"])
    return ort_predictor(make_session(out / artifact["path"]))
