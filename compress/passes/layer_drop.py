"""layer_drop: remove whole transformer blocks (depth pruning), so the model is shallower and faster.

The blocks are found by structure, not by model name: the one ``nn.ModuleList`` of at least
two modules of one class with the same parameter names (Hugging Face ``encoder.layer``,
``model.layers``, ``transformer.h``), outermost first, so a mixture-of-experts list inside a
block is not taken for the blocks; ``blocks:`` names the list where the model has several.

Which blocks stay, by ``strategy``: ``every_other`` (0, 2, 4, ...), ``uniform`` (evenly spaced
from the first block to the last), ``first`` (the bottom ``keep`` blocks, as DistilBERT-style
truncation), or ``importance``: the blocks that change their input most are kept, measured as
ShortGPT's Block Influence (Men et al. 2024), BI = 1 - cos(block input, block output) averaged
over the (unpadded) tokens of a bounded number of calibration batches. ``layers:`` lists the
blocks to keep instead.

The kept blocks compute exactly what they did; the Hugging Face config (depth, per-layer
``layer_types``) and the blocks' own layer numbers (``self_attn.layer_idx``, which indexes the
KV cache) follow, so the model still runs, generates, saves and reloads. The record's
``kept_layers`` are the teacher's (the pipeline input's) block indices, which ``distill``
maps student blocks to; ``restore`` replays the drop on resume and ``compress.load``.
"""

import math
from collections.abc import Mapping
from enum import Enum
from typing import Any

import torch
import torch.nn.functional as F
from pydantic import Field, NonNegativeInt, model_validator

from compress.core.config import PassConfig
from compress.core.errors import InputError, first_line
from compress.engine.metrics import count_params
from compress.models.blocks import block_lists
from compress.models.data import call_model, first_tensor, model_device, to_device, training_inputs
from compress.recipe.registry import register_pass

# Config fields holding the depth (GPT-2 names it n_layer, T5 num_layers); fields naming one entry per block.
DEPTH_FIELDS = ("num_hidden_layers", "n_layer", "num_layers")
PER_BLOCK_FIELDS = ("layer_types",)
# Attributes by which a block's modules know their position (the KV cache is indexed by them).
INDEX_ATTRIBUTES = ("layer_idx", "layer_id", "layer_index")


class Strategy(str, Enum):
    every_other = "every_other"
    uniform = "uniform"
    first = "first"
    importance = "importance"


class LayerDropConfig(PassConfig):
    """Args:
    keep: number of blocks kept (at least 1, fewer than the model has).
    ratio: instead of ``keep``, the share of blocks dropped, in (0, 1); the count is rounded.
    layers: instead, the indices of the blocks kept (0-based, unique, in range); no strategy then.
    strategy: which blocks go: every_other (no count), uniform (default), first, or importance (measured:
        Block Influence).
    blocks: path of the ModuleList of blocks (e.g. ``encoder.layer``); found when the model has one.
    calibration_batches: calibration batches that measure importance (the train split stands in).
    """

    keep: int | None = Field(None, ge=1, le=100_000)
    ratio: float | None = Field(None, gt=0.0, lt=1.0)
    layers: list[NonNegativeInt] | None = Field(None, min_length=1)
    strategy: Strategy | None = None
    blocks: str | None = Field(None, min_length=1)
    calibration_batches: int = Field(8, ge=1, le=10_000)

    @model_validator(mode="after")
    def _one_way_to_choose(self) -> "LayerDropConfig":
        given = [name for name in ("keep", "ratio", "layers") if getattr(self, name) is not None]
        if len(given) > 1:
            raise ValueError(f"give one of keep, ratio or layers, not {' and '.join(given)}")
        if self.layers is not None:
            if self.strategy is not None:
                raise ValueError("layers names the blocks to keep, so no strategy applies; remove strategy")
            if len(set(self.layers)) != len(self.layers):
                raise ValueError(f"layers {self.layers} repeats an index; list each kept block once")
        elif self.strategy == Strategy.every_other.value:
            if given:
                raise ValueError(
                    f"strategy every_other keeps blocks 0, 2, 4, ... (half of them), so {given[0]} does not apply; "
                    f"remove {given[0]}, or use strategy uniform with it"
                )
        elif not given:
            raise ValueError(
                "say which blocks stay: keep: N (blocks kept), ratio: R (share dropped) or layers: [indices kept]; "
                "or strategy: every_other"
            )
        return self


def _uniform(depth: int, keep: int) -> list[int]:
    """``keep`` indices evenly spaced from 0 to ``depth - 1``, rounded half up (integer arithmetic)."""
    if keep == 1:
        return [depth - 1]
    return [(2 * i * (depth - 1) + keep - 1) // (2 * (keep - 1)) for i in range(keep)]


def _most_influential(scores: list[float], keep: int) -> list[int]:
    """The ``keep`` highest-scoring blocks (ties: the lower index), in model order."""
    ranked = sorted(range(len(scores)), key=lambda i: (-scores[i], i))
    return sorted(ranked[:keep])


CHOOSERS = {
    Strategy.every_other.value: lambda depth, keep, scores: list(range(0, depth, 2)),
    Strategy.uniform.value: lambda depth, keep, scores: _uniform(depth, keep),
    Strategy.first.value: lambda depth, keep, scores: list(range(keep)),
    Strategy.importance.value: lambda depth, keep, scores: _most_influential(scores, keep),
}
MEASURED = {Strategy.importance.value}


def _describe(lists: Mapping[str, torch.nn.ModuleList]) -> str:
    return ", ".join(f"{name!r} ({len(m)} x {type(m[0]).__name__})" for name, m in lists.items())


def find_blocks(model: torch.nn.Module, path: str | None) -> tuple[str, torch.nn.ModuleList]:
    """The block list named by ``path``, or the model's only list of repeated blocks."""
    if path is not None:
        try:
            named = model.get_submodule(path)
        except AttributeError:
            named = None
        if not isinstance(named, torch.nn.ModuleList):
            lists = [n for n, m in model.named_modules() if isinstance(m, torch.nn.ModuleList)]
            raise InputError(
                f"layer_drop: blocks {path!r} is not an nn.ModuleList of {type(model).__name__}; "
                f"its ModuleLists are: {', '.join(repr(n) for n in lists[:8]) or 'none'}"
            )
        return path, named
    found = block_lists(model, min_length=2)
    if len(found) == 1:
        return next(iter(found.items()))
    if not found:
        raise InputError(
            f"layer_drop: {type(model).__name__} has no list of repeated blocks (an nn.ModuleList of at least "
            "two modules of one class); if its blocks are held otherwise, layer_drop cannot remove them, and "
            "if they are in a ModuleList, name it with blocks: <path>"
        )
    raise InputError(
        f"layer_drop: {type(model).__name__} has several lists of repeated blocks: {_describe(found)}; "
        f"name the one to shorten with blocks: {next(iter(found))!r}"
    )


def kept_for_ratio(ratio: float, depth: int) -> int:
    """Blocks kept when ``ratio`` of ``depth`` are dropped; the count dropped is rounded halves up
    (round() would go to even)."""
    return depth - math.floor(ratio * depth + 0.5)


def _count_to_keep(config: LayerDropConfig, depth: int, where: str) -> int:
    if config.layers is not None:
        outside = [i for i in config.layers if i >= depth]
        if outside:
            raise InputError(
                f"layer_drop: layers {outside} are out of range: {where} has {depth} blocks (indices 0 to {depth - 1})"
            )
        keep = len(config.layers)
    elif config.strategy == Strategy.every_other.value:
        keep = (depth + 1) // 2
    elif config.ratio is not None:
        keep = kept_for_ratio(config.ratio, depth)
    else:
        keep = config.keep
    if not 1 <= keep < depth:
        asked = f"ratio {config.ratio} keeps {keep}" if config.ratio is not None else f"keeping {keep}"
        raise InputError(
            f"layer_drop: {where} has {depth} blocks and {asked}; keep between 1 and {depth - 1} blocks "
            f"(keep: N, or a ratio that drops at least one and keeps one)"
        )
    return keep


def block_influence(
    model: torch.nn.Module, blocks: torch.nn.ModuleList, batches, limit: int
) -> tuple[list[float], int]:
    """Per block, 1 - cosine(input, output) over the unpadded tokens of up to ``limit`` batches (ShortGPT's BI)."""
    influence = torch.zeros(len(blocks), dtype=torch.float64)
    weight = torch.zeros(len(blocks), dtype=torch.float64)
    mask: list[torch.Tensor | None] = [None]

    def measure(index: int):
        def hook(module, args, kwargs, output):
            hidden = args[0] if args else kwargs.get("hidden_states")
            if not isinstance(hidden, torch.Tensor):
                raise InputError(
                    f"layer_drop: block {index} ({type(module).__name__}) takes no hidden-state tensor as its first "
                    "argument, so its influence cannot be measured; use strategy uniform or layers"
                )
            cosine = F.cosine_similarity(hidden.double(), first_tensor(output).double(), dim=-1)
            tokens = mask[0] if mask[0] is not None and mask[0].shape == cosine.shape else torch.ones_like(cosine)
            influence[index] += ((1 - cosine) * tokens).sum().cpu()
            weight[index] += tokens.sum().cpu()

        return hook

    hooks = [block.register_forward_hook(measure(i), with_kwargs=True) for i, block in enumerate(blocks)]
    seen = 0
    try:
        with torch.no_grad():
            for batch in batches:
                if seen == limit:
                    break
                inputs = to_device(training_inputs(batch), model_device(model))
                padding = inputs.get("attention_mask") if isinstance(inputs, Mapping) else None
                mask[0] = padding.double() if isinstance(padding, torch.Tensor) else None
                call_model(model, inputs)
                seen += 1
    finally:
        for hook in hooks:
            hook.remove()
    return (influence / weight.clamp(min=1)).tolist(), seen


def _calibration_batches(ctx):
    split = ctx.data.resolve("calibration") if ctx.data is not None else None
    if split is None or getattr(ctx.data, split) is None:
        raise InputError(
            "layer_drop: strategy importance measures each block on calibration batches, but the task data has no "
            "calibration or train split; return one from the data factory, or use strategy uniform"
        )
    return ctx.data.batches(split)


def drop_blocks(model: torch.nn.Module, path: str, kept: list[int]) -> dict[str, Any]:
    """Keep only blocks ``kept`` of the list at ``path`` (in place); renumber them; update the configs.

    Returns the config fields it changed.
    """
    blocks = model.get_submodule(path)
    depth = len(blocks)
    survivors = [blocks[i] for i in kept]
    del blocks[:]  # the same ModuleList object: anything holding it sees the shorter list
    blocks.extend(survivors)
    for new, (old, block) in enumerate(zip(kept, survivors)):
        for module in block.modules():
            for attribute in INDEX_ATTRIBUTES:
                value = getattr(module, attribute, None)
                if type(value) is int and value == old:
                    setattr(module, attribute, new)
    changed: dict[str, Any] = {}
    configs = {id(m.config): m.config for m in model.modules() if hasattr(m, "config")}
    for config in configs.values():
        for field in DEPTH_FIELDS:
            if getattr(config, field, None) == depth:
                setattr(config, field, len(kept))
                changed[field] = len(kept)
        for field in PER_BLOCK_FIELDS:
            value = getattr(config, field, None)
            if isinstance(value, (list, tuple)) and len(value) == depth:
                setattr(config, field, [value[i] for i in kept])
                changed[field] = [value[i] for i in kept]
    return changed


def _check_forward(model: torch.nn.Module, inputs: Any, expected: torch.Size, path: str) -> None:
    try:
        with torch.no_grad():
            shape = first_tensor(call_model(model, inputs)).shape
    except Exception as exc:  # noqa: BLE001  (a block that held state for the others fails deep inside the model)
        raise InputError(
            f"layer_drop: without the dropped blocks of {path!r}, {type(model).__name__} fails ({first_line(exc)}); "
            "a block there holds something the others read (e.g. T5's position bias in block 0): keep it with layers:, "
            "or name another list with blocks:"
        ) from None
    if shape != expected:
        raise InputError(
            f"layer_drop: dropping blocks of {path!r} changed the output shape from {tuple(expected)} to "
            f"{tuple(shape)}; these are not repeated blocks of the same width: name the right list with blocks:"
        )


def _teacher_indices(ctx, path: str, depth: int) -> tuple[list[int], int]:
    """The teacher's block indices of this model's blocks, through earlier layer_drop stages, and its depth."""
    for record in reversed(ctx.history):
        if record.get("blocks") == path and "kept_layers" in record:
            return list(record["kept_layers"]), record["teacher_depth"]
    return list(range(depth)), depth


def restore(model: torch.nn.Module, record: dict, example_inputs: Any) -> torch.nn.Module:
    """Replay the recorded drop on a fresh model so saved weights fit it."""
    drop_blocks(model, record["blocks"], record["kept_of_input"])
    return model


@register_pass("layer_drop", LayerDropConfig, restore=restore)
def layer_drop(model: torch.nn.Module, config: LayerDropConfig, ctx) -> torch.nn.Module:
    path, blocks = find_blocks(model, config.blocks)
    depth, where = len(blocks), f"{path!r} of {type(model).__name__}"
    keep = _count_to_keep(config, depth, where)
    strategy = config.strategy or Strategy.uniform.value
    scores, measured_batches = None, 0
    if config.layers is None and strategy in MEASURED:
        batches = _calibration_batches(ctx)
        scores, measured_batches = block_influence(model, blocks, batches, config.calibration_batches)
        if not measured_batches:
            raise InputError("layer_drop: the calibration split is empty; importance needs at least one batch")
    kept = sorted(config.layers) if config.layers is not None else CHOOSERS[strategy](depth, keep, scores)
    inputs = to_device(ctx.example_inputs, model_device(model))
    with torch.no_grad():
        expected = first_tensor(call_model(model, inputs)).shape
    params_before = count_params(model)
    config_updates = drop_blocks(model, path, kept)
    _check_forward(model, inputs, expected, path)
    teacher, teacher_depth = _teacher_indices(ctx, path, depth)
    kept_layers = [teacher[i] for i in kept]
    ctx.record(
        blocks=path,
        kept_layers=kept_layers,
        dropped_layers=[i for i in range(teacher_depth) if i not in kept_layers],
        kept_of_input=kept,
        teacher_depth=teacher_depth,
        depth_before=depth,
        depth_after=len(kept),
        strategy="layers" if config.layers is not None else strategy,
        block_influence=[round(s, 6) for s in scores] if scores is not None else None,
        calibration_batches=measured_batches,
        config_updates=config_updates,
        params_before=params_before,
        params_after=count_params(model),
    )
    return model
