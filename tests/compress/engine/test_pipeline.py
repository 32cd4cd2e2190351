"""The pipeline: stage metrics, saved stages, resume after the last completed stage."""

import dataclasses

import pytest
import torch

from compress.engine.pipeline import run_pipeline
from compress.engine.stages import read_stages
from compress.models.evaluate import EVALUATORS, torch_predictor
from compress.recipe import registry
from compress.recipe.schema import load_recipe
from tests.tiny_models import mlp, vector_data

RECIPE = {
    "passes": [
        {"pass": "magnitude_prune", "sparsity": 0.3},
        {"pass": "magnitude_prune", "sparsity": 0.6, "scope": "global"},
    ]
}


@pytest.fixture
def call_log(monkeypatch):
    """Wrap magnitude_prune so tests see which configs really ran and which teacher they saw."""
    spec = registry.get_pass("magnitude_prune")
    calls = []

    def spy(model, config, ctx):
        calls.append((config.sparsity, {k: v.clone() for k, v in ctx.teacher.state_dict().items()}))
        return spec.apply(model, config, ctx)

    monkeypatch.setitem(registry._PASSES, "magnitude_prune", dataclasses.replace(spec, apply=spy))
    return calls


def run(out_dir, recipe=RECIPE):
    data = vector_data()
    return run_pipeline(mlp(), load_recipe(recipe), data, EVALUATORS["accuracy"], data.eval[0][0], out_dir)


def test_stages_record_metric_and_params(tmp_path, call_log):
    result = run(tmp_path)
    assert [s.name for s in result.stages] == ["baseline", "magnitude_prune", "magnitude_prune-2"]
    expected = EVALUATORS["accuracy"].score(torch_predictor(result.model), vector_data().eval)
    assert result.stages[-1].metric == expected
    total = result.stages[0].params
    assert result.stages[0].nonzero_params == total
    assert result.stages[2].nonzero_params < result.stages[1].nonzero_params < total
    assert [s.name for s in read_stages(tmp_path)] == ["baseline", "magnitude_prune", "magnitude_prune-2"]
    assert (tmp_path / "stages" / "02-magnitude_prune-2" / "model.safetensors").is_file()


def test_teacher_is_the_model_as_it_entered(tmp_path, call_log):
    run(tmp_path)
    entered = mlp().state_dict()
    for _, teacher_state in call_log:
        assert all(torch.equal(entered[k], v) for k, v in teacher_state.items())


def test_rerun_resumes_without_recomputing(tmp_path, call_log):
    first = run(tmp_path)
    assert len(call_log) == 2
    second = run(tmp_path)
    assert len(call_log) == 2  # nothing ran again
    assert all(s.resumed for s in second.stages)
    assert [s.metric for s in second.stages] == [s.metric for s in first.stages]
    assert all(torch.equal(v, second.model.state_dict()[k]) for k, v in first.model.state_dict().items())


def test_interrupted_run_resumes_after_last_completed_stage(tmp_path, call_log, monkeypatch):
    spec = registry._PASSES["magnitude_prune"]

    def interrupt_second(model, config, ctx):
        if config.sparsity == 0.6:
            raise KeyboardInterrupt
        return spec.apply(model, config, ctx)

    monkeypatch.setitem(registry._PASSES, "magnitude_prune", dataclasses.replace(spec, apply=interrupt_second))
    with pytest.raises(KeyboardInterrupt):
        run(tmp_path / "interrupted")
    monkeypatch.setitem(registry._PASSES, "magnitude_prune", spec)
    call_log.clear()
    resumed = run(tmp_path / "interrupted")
    assert [c[0] for c in call_log] == [0.6]  # only the unfinished stage ran
    uninterrupted = run(tmp_path / "clean")
    assert all(torch.equal(v, resumed.model.state_dict()[k]) for k, v in uninterrupted.model.state_dict().items())


def test_changed_pass_recomputes_from_there_and_drops_stale_stages(tmp_path, call_log):
    run(tmp_path)
    call_log.clear()
    changed = {"passes": [RECIPE["passes"][0], {"pass": "magnitude_prune", "sparsity": 0.7}]}
    result = run(tmp_path, changed)
    assert [c[0] for c in call_log] == [0.7]
    assert [s.resumed for s in result.stages] == [True, True, False]
    shorter = run(tmp_path, {"passes": [RECIPE["passes"][0]]})
    assert len(shorter.stages) == 2


def test_different_input_model_does_not_reuse_stages(tmp_path, call_log):
    run(tmp_path)
    data = vector_data()
    other = mlp()
    with torch.no_grad():
        other.fc1.weight.add_(1.0)
    result = run_pipeline(other, load_recipe(RECIPE), data, EVALUATORS["accuracy"], data.eval[0][0], tmp_path)
    assert not any(s.resumed for s in result.stages)
    assert len(call_log) == 4


def test_resumed_stage_repeats_its_warnings(tmp_path, monkeypatch):
    """A warning printed while a stage ran reaches the report of a run that resumes that stage."""
    from compress.core import log

    spec = registry.get_pass("magnitude_prune")

    def warning_pass(model, config, ctx):
        log.warn(f"pass saw sparsity {config.sparsity} in \\[/encoder/MatMul]")
        return spec.apply(model, config, ctx)

    monkeypatch.setitem(registry._PASSES, "magnitude_prune", dataclasses.replace(spec, apply=warning_pass))
    with log.collect_warnings() as first:
        run(tmp_path)
    assert first == ["pass saw sparsity 0.3 in [/encoder/MatMul]", "pass saw sparsity 0.6 in [/encoder/MatMul]"]
    assert [s.warnings for s in read_stages(tmp_path)] == [[], first[:1], first[1:]]
    with log.collect_warnings() as resumed:
        second = run(tmp_path)
    assert all(s.resumed for s in second.stages)
    assert resumed == first
