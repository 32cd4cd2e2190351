"""Runs the recipe's passes in order, evaluating and saving after every stage.

Rerunning the same recipe into the same folder resumes after the last completed
stage: completed stages are loaded, not recomputed.
"""

import contextlib
import copy
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from rich.markup import escape

from compress.core import log
from compress.core.distributed import barrier, is_main
from compress.core.errors import InputError
from compress.engine.context import Context
from compress.engine.metrics import (
    count_macs,
    count_nonzero_params,
    count_params,
    dense_bytes,
    layer_table,
    weights_fingerprint,
)
from compress.engine.stages import StageResult, chain_fingerprint, find_stage, load_stage_weights, save_stage
from compress.models.blocks import without_nested_tensor_fast_path
from compress.models.data import TaskData, call_model, flatten_inputs, model_device, to_device
from compress.models.evaluate import Evaluator, torch_predictor
from compress.quant.bnb import float_copy
from compress.recipe.registry import get_pass
from compress.recipe.schema import Recipe


@dataclass
class PipelineOutput:
    model: torch.nn.Module
    baseline: torch.nn.Module
    stages: list[StageResult]


def _measure(model, evaluator: Evaluator, data: TaskData, split: str = "eval") -> float:
    return evaluator.score(torch_predictor(model), data.batches(split))


def _stage_names(recipe: Recipe) -> list[str]:
    names, seen = [], {}
    for config in recipe.passes:
        seen[config.pass_name] = seen.get(config.pass_name, 0) + 1
        count = seen[config.pass_name]
        names.append(config.pass_name if count == 1 else f"{config.pass_name}-{count}")
    return names


def _describe(inputs) -> str:
    names, tensors = flatten_inputs(inputs)
    return ", ".join(
        f"{name} {tuple(t.shape)} {str(t.dtype).removeprefix('torch.')}" for name, t in zip(names, tensors)
    )


def _check_model_runs(model, example_inputs) -> None:
    """Fail before any work when the model cannot take the data's inputs, naming their shapes."""
    try:
        with torch.no_grad():
            call_model(model, to_device(example_inputs, model_device(model)))
    except (RuntimeError, TypeError, ValueError, IndexError) as exc:
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        raise InputError(
            f"the model cannot run on the eval inputs ({_describe(example_inputs)}): {type(exc).__name__}: {reason}; "
            "eval batches must be (inputs, labels) with inputs shaped and typed as the model expects"
        ) from None


def _resume(model, fingerprints: list[str], example_inputs, out_dir: Path | None):
    """Completed stages matching this run, and the model brought to the last one's state."""
    if out_dir is None:
        return model, []
    done = []
    for index, fingerprint in enumerate(fingerprints):
        stage = find_stage(out_dir, index, fingerprint)
        if stage is None:
            break
        done.append(stage)
    for stage in done[1:]:
        restore = get_pass(stage.pass_name).restore
        if restore is not None:
            restore(model, stage.record, example_inputs)
    if len(done) > 1:
        load_stage_weights(out_dir, done[-1], model)
    for stage in done[1:]:
        after_load = get_pass(stage.pass_name).after_load
        if after_load is not None:
            model = after_load(model, stage.record, stage.config)
    return model, done


def run_pipeline(
    model: torch.nn.Module,
    recipe: Recipe,
    data: TaskData,
    evaluator: Evaluator,
    example_inputs: Any,
    out_dir: Path | None = None,
) -> PipelineOutput:
    """Apply every pass of ``recipe`` to ``model`` (in place) and return the stages."""
    torch.manual_seed(recipe.seed)
    model.eval()
    for name in without_nested_tensor_fast_path(model):
        log.info(f"{name}: nn.TransformerEncoder runs without its nested-tensor fast path (eval with a padding "
                 "mask zeroes padded positions there, which training and ONNX do not)")  # fmt: skip
    _check_model_runs(model, example_inputs)
    baseline = copy.deepcopy(model)
    fingerprints = [chain_fingerprint(weights_fingerprint(model), {"seed": recipe.seed, "metric": evaluator.name})]
    for config in recipe.passes:
        fingerprints.append(chain_fingerprint(fingerprints[-1], config.to_dict()))
    # Every rank must pick the same stages to resume: rank 0 has claimed (maybe cleared) the folder
    # before the first barrier, and writes no stage before the second. A rank that read a stage rank 0
    # had just written would skip that stage's collective calls and hang the others.
    barrier()
    model, stages = _resume(model, fingerprints, example_inputs, out_dir)
    barrier()
    for stage in stages:
        log.info(f"[dim]resumed[/dim] {stage.name}: {stage.metric_name} {stage.metric:.4f}")
        for warning in stage.warnings:  # the report of a resumed run holds them, as a fresh run's does
            log.warn(escape(warning))  # kept as printed (plain): brackets in it are text, not markup
    ctx = Context(
        data,
        example_inputs,
        baseline,
        lambda m, split="eval": _measure(m, evaluator, data, split),
        recipe.seed,
        out_dir,
        higher_is_better=evaluator.higher_is_better,
    )
    ctx.history = [s.record for s in stages[1:]]
    if not stages:
        start, mark = time.perf_counter(), log.warnings_mark()
        stages.append(
            _finish_stage(ctx, model, 0, "baseline", None, evaluator, fingerprints[0], (start, mark), out_dir)
        )
    names = _stage_names(recipe)
    for index in range(len(stages), len(fingerprints)):
        config = recipe.passes[index - 1]
        spec = get_pass(config.pass_name)
        log.info(f"stage {index}/{len(recipe.passes)}: {names[index - 1]}")
        torch.manual_seed(recipe.seed + index)
        start, mark = time.perf_counter(), log.warnings_mark()
        ctx.facts = {}
        ctx.scratch_dir = out_dir / "scratch" / f"{index:02d}-{fingerprints[index][:16]}" if out_dir else None
        model = spec.apply(model, config, ctx)
        model.eval()
        stage = _finish_stage(
            ctx, model, index, names[index - 1], config, evaluator, fingerprints[index], (start, mark), out_dir
        )
        ctx.history.append(stage.record)
        stages.append(stage)
        if ctx.scratch_dir is not None and is_main():
            shutil.rmtree(ctx.scratch_dir, ignore_errors=True)
            with contextlib.suppress(OSError):  # scratch/ holds in-progress state only; gone when empty
                ctx.scratch_dir.parent.rmdir()
    return PipelineOutput(model, baseline, stages)


def _finish_stage(ctx, model, index, name, config, evaluator, fingerprint, began, out_dir) -> StageResult:
    """``began``: the stage's start time and its ``log.warnings_mark``."""
    start, mark = began
    metric = ctx.evaluate(model)
    float_model = float_copy(model)  # quantized layers count (and save) as the float weights they hold
    stage = StageResult(
        index=index,
        name=name,
        pass_name=config.pass_name if config else None,
        config=config.to_dict() if config else None,
        metric_name=evaluator.name,
        metric=metric,
        params=count_params(float_model),
        nonzero_params=count_nonzero_params(float_model),
        seconds=round(time.perf_counter() - start, 3),
        fingerprint=fingerprint,
        record=dict(ctx.facts),
        macs=count_macs(float_model, ctx.example_inputs),
        dense_bytes=dense_bytes(float_model),
        layers=layer_table(model),
        warnings=log.warnings_since(mark),
    )
    if out_dir is not None and is_main():
        save_stage(out_dir, stage, float_model if index > 0 else None)
    barrier()  # other ranks may read this stage on a later resume
    log.info(f"  {name}: {evaluator.name} {metric:.4f}, {stage.nonzero_params:,}/{stage.params:,} non-zero params")
    return stage
