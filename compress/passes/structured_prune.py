"""structured_prune: physically remove channels and neurons, so the exported model is smaller and faster.

Built on Torch-Pruning's dependency graph (Fang et al., CVPR 2023): layers coupled by residual additions,
concatenations or normalization are pruned together, and the modules are rebuilt with fewer channels.
The layer producing the model output is kept, so the output width never changes. Kept widths are
rounded to multiples that keep ONNX Runtime's blocked kernels (``round_to``, see
``compress.pruning.widths``), so pruned means faster, not only smaller. Iterative pruning spreads the
ratio over ``steps``, with optional fine-tuning towards the teacher between steps. The record holds
Torch-Pruning's pruning history, which ``restore`` replays on resume. RNNs are left whole (``rnn``).
"""

import copy
from enum import Enum
from functools import partial
from typing import Annotated, Any, Literal

import torch
import torch_pruning as tp
from pydantic import Field

from compress.core import log
from compress.core.config import PassConfig
from compress.core.errors import SelectionError, first_line
from compress.engine.metrics import count_macs, count_params
from compress.models.data import call_model, first_tensor
from compress.models.select import WEIGHT_LAYERS, select_modules
from compress.pruning import group_search
from compress.pruning.activation_importance import ChannelStats, input_stats
from compress.pruning.attention import head_counts, head_groups, prune_heads, remove_heads, update_hf_config
from compress.pruning.compensation import compensate_group
from compress.pruning.conv1d import Conv1DPruner, conv1d_types, group_scores, is_conv1d
from compress.pruning.head_tensors import cut_head_tensors, find_head_tensors, replay, tied_groups
from compress.pruning.importance import IMPORTANCE, NEEDS_STATS, PREPARE, Criterion
from compress.pruning.plan_check import CutFailed, check_forward, groups_cutting, simulate
from compress.pruning.rnn import warn_whole_rnns, whole_rnns
from compress.pruning.steps import (
    PruneError,
    check_no_group_empties,
    cut_failure,
    cut_step,
    keep_output_widths,
    rounded_cut,
)
from compress.pruning.widths import AUTO, resolve_round_to, rounded_width
from compress.recipe.registry import register_pass
from compress.training.loop import fit_to_teacher


def _prunable(model: torch.nn.Module) -> tuple[type, ...]:
    """Layer types to prune: torch's, plus Hugging Face Conv1D where the model has it."""
    return WEIGHT_LAYERS + tuple(conv1d_types(model))


Ratio = Annotated[float, Field(ge=0.0, lt=1.0)]


class Allocation(str, Enum):
    uniform = "uniform"
    global_ = "global"


class StructuredPruneConfig(PassConfig):
    """Args:
    ratio: share of channels/neurons removed from every prunable group, in [0, 1).
    macs_reduction: instead of ``ratio``, the share of MACs to remove; the ratio is searched.
    importance: l1, l2, taylor (needs labelled batches), activation (Wanda-sp: weights times the
        activations they carry, on calibration batches; for trained transformers), bn_scale or
        random (a baseline).
    allocation: ``uniform`` (same ratio per group) or ``global`` (one ranking across groups).
    layer_ratios: ratio per layer name or ``re:`` pattern, overriding ``ratio`` there.
    round_to: every pruned width becomes a multiple of this (1: exact widths); auto: 8.
    exclude: layers never pruned (the layer producing the output is always kept); a norm or a block
        (e.g. a patch merging) named here keeps the widths of the groups that cut it or its input.
    auto_exclude: the plan is first tried on a copy; layers whose cut breaks the model (e.g. the
        stage feeding Swin's patch merging) are excluded, with a warning and the reason in the
        record. Off, that is an error listing them all as one ``exclude`` that works.
    head_ratio: share of attention heads removed whole from each attention layer (transformers).
    steps: prune in this many steps, fine-tuning towards the teacher between them.
    finetune_steps: optimizer steps towards the teacher between two pruning steps (needs a train split).
    finetune_lr: learning rate of those fine-tuning steps.
    gradient_batches: calibration batches read before each step by the data-driven criteria
        (taylor: gradients; activation: activation norms) and by ``compensate``.
    compensate: a removed channel's or head's mean contribution on those batches is added to the
        bias of the Linear (or GPT-2 Conv1D) that read it (FLAP's bias compensation), so the cut
        model starts closer to the dense one; layers without a bias and convolutions are left as cut.

    For a BERT-style encoder, ``ratio: 0``, ``head_ratio: 0.33`` and
    ``layer_ratios: {"re:.*intermediate\\.dense": 0.5}`` remove a third of the heads and half
    of the FFN neurons while the hidden size stays.

    ``round_to`` (1 to 1024, or ``auto``) keeps ONNX Runtime's blocked CPU kernels: a kept width
    goes to the nearest multiple, at least one multiple and never above the layer's width; a layer
    not wider than the multiple stays whole; attention projections are cut by whole heads instead.
    The record's ``round_to`` is the value used (see ``compress.pruning.widths``).
    """

    ratio: Ratio = 0.5
    macs_reduction: float | None = Field(None, gt=0.0, lt=1.0)
    importance: Criterion = Criterion.l2
    allocation: Allocation = Allocation.uniform
    layer_ratios: dict[str, Ratio] = Field(default_factory=dict)
    head_ratio: Ratio = 0.0
    round_to: Literal["auto"] | Annotated[int, Field(ge=1, le=1024)] = AUTO
    exclude: list[str] = Field(default_factory=list)
    auto_exclude: bool = True
    steps: int = Field(1, ge=1, le=100)
    finetune_steps: int = Field(0, ge=0, le=1_000_000)
    finetune_lr: float = Field(1e-4, gt=0.0, le=1.0)
    gradient_batches: int = Field(4, ge=1, le=10_000)
    compensate: bool = False


def _execution_order(model: torch.nn.Module, example_inputs: Any) -> tuple[list[str], torch.Size]:
    """Names of prunable layers in the order they run, and the output shape."""
    order = []
    hooks = [
        m.register_forward_hook(lambda *_, name=name: order.append(name))
        for name, m in model.named_modules()
        if isinstance(m, _prunable(model))
    ]
    try:
        with torch.no_grad():
            shape = first_tensor(call_model(model, example_inputs)).shape
    finally:
        for hook in hooks:
            hook.remove()
    return order, shape


def _conv1d_support(model: torch.nn.Module) -> dict:
    """Torch-Pruning arguments that make Hugging Face Conv1D layers prunable group roots."""
    types = conv1d_types(model)
    if not types:
        return {}
    return {
        "customized_pruners": {t: Conv1DPruner() for t in types},
        "root_module_types": [tp.ops.TORCH_CONV, tp.ops.TORCH_LINEAR, tp.ops.TORCH_LSTM, *types],
    }


def _layer_ratios(model, config: StructuredPruneConfig) -> dict[torch.nn.Module, float]:
    ratios = {}
    for pattern, value in config.layer_ratios.items():
        owner = "structured_prune.layer_ratios"
        for module in select_modules(model, [pattern], types=_prunable(model), owner=owner).values():
            ratios[module] = value
    return ratios


def _prune_custom_layers(
    pruner: tp.pruner.BasePruner, ratios: dict, initial: dict, step: int, steps: int, round_to: int
) -> None:
    """Out-channel pruning of layers Torch-Pruning's ratio table skips (custom types such as Conv1D).

    The groups still come from its dependency graph, so coupled layers are cut together and
    the cut lands in the same pruning history; channels are ranked by the L2 norm of the
    weights the group cuts. Widths are rounded by the same rule as every other group.
    """
    for module, ratio in ratios.items():
        prune_out = pruner.DG.get_pruner_of_module(module).prune_out_channels
        current = pruner.DG.get_out_channels(module)
        width = initial.setdefault(module, current)
        target = rounded_width(round(width * (1 - ratio * (step + 1) / steps)), current, round_to)
        if current <= target:
            continue
        scores = group_scores(pruner.DG.get_pruning_group(module, prune_out, list(range(current))))
        drop = torch.topk(scores, current - target, largest=False).indices.tolist()
        pruner.DG.get_pruning_group(module, prune_out, drop).prune()


def _build_pruner(model, config: StructuredPruneConfig, example_inputs, ratio: float) -> tp.pruner.BasePruner:
    order, _ = _execution_order(model, example_inputs)
    layers, others = _split_exclude(model, config.exclude)
    ignored = select_modules(model, layers, types=_prunable(model), owner="structured_prune.exclude")
    others = select_modules(model, others, owner="structured_prune.exclude")
    ignored = {**ignored, order[-1]: model.get_submodule(order[-1])} if order else ignored
    # Attention projections are never cut by width (heads go whole, in prune_heads): ignoring them
    # also spares Torch-Pruning scoring their groups, which it maps out of range through
    # GPT-NeoX's view + chunk of the fused, per-head interleaved q/k/v.
    attention = head_groups(model)
    layer_ratios = {m: r for m, r in _layer_ratios(model, config).items() if not is_conv1d(m)}
    try:
        pruner = tp.pruner.BasePruner(
            model,
            example_inputs,
            importance=IMPORTANCE[config.importance](),
            global_pruning=config.allocation == Allocation.global_.value,
            pruning_ratio=ratio,
            pruning_ratio_dict=layer_ratios or None,
            iterative_steps=config.steps,
            ignored_layers=[*ignored.values(), *attention, *whole_rnns(model).values()],
            round_to=None,  # rounded by round_group, which never empties a narrow layer
            num_heads=attention,
            prune_head_dims=False,  # heads are removed whole by prune_heads; channels never split one
            output_transform=lambda output: first_tensor(output).sum(),
            **_conv1d_support(model),
        )
    except group_search.GroupSearchTooLong:
        raise
    except Exception as exc:  # noqa: BLE001  (tracing errors come from deep inside torch)
        raise PruneError(
            f"structured_prune: Torch-Pruning cannot trace {type(model).__name__} "
            f"({first_line(exc)}); "
            "exclude the layer it names, or use magnitude_prune"
        ) from None
    for name in others:  # a norm or block stands for the groups that cut it or its input
        pruner.ignored_layers.extend(groups_cutting(pruner, model, name, _prunable(model)))
    keep_output_widths(pruner)
    return pruner


def _split_exclude(model: torch.nn.Module, patterns: list[str]) -> tuple[list[str], list[str]]:
    """Exclude patterns matching Linear/Conv layers, and those matching anything else (norms, blocks).

    A pattern may be in both lists (``re:merge1.*`` names a Linear and its LayerNorm); one that
    matches nothing is left to ``select_modules``' error in the second.
    """
    layers, others = [], []
    for pattern in patterns:
        try:
            matched = select_modules(model, [pattern]).values()
        except SelectionError:
            matched = []
        if any(isinstance(m, _prunable(model)) for m in matched):
            layers.append(pattern)
        if not matched or not all(isinstance(m, _prunable(model)) for m in matched):
            others.append(pattern)
    return layers, others


def _ratio_for_macs(model, config: StructuredPruneConfig, example_inputs, target: float) -> float:
    """Bisect the ratio whose one-shot pruning removes ``target`` of the MACs (on copies)."""
    base = count_macs(model, example_inputs)
    if base is None:
        raise PruneError(
            "structured_prune: macs_reduction needs MACs, which Torch-Pruning cannot count for this model "
            "(Hugging Face Conv1D layers, or an op its counter cannot trace); give a ratio, head_ratio or "
            "layer_ratios instead"
        )
    low, high = 0.0, 0.99
    for _ in range(10):
        middle = (low + high) / 2
        trial = copy.deepcopy(model)
        # Which channels go changes the MACs only under global allocation; data-driven criteria are
        # bisected by magnitude, so their achieved share may differ slightly (the record has macs_after).
        importance = Criterion.l2.value if config.importance in PREPARE else config.importance
        trial_config = config.model_copy(update={"steps": 1, "importance": importance})
        cut_step(_build_pruner(trial, trial_config, example_inputs, middle), trial, resolve_round_to(config.round_to))
        if 1 - count_macs(trial, example_inputs) / base < target:
            low = middle
        else:
            high = middle
    return round(high, 4)


def _widths(model: torch.nn.Module) -> dict[str, list[int]]:
    return {
        name: list(m.weight.shape[:2])
        for name, m in model.named_modules()
        if isinstance(m, _prunable(model)) and m.weight is not None
    }


def restore(model: torch.nn.Module, record: dict, example_inputs: Any) -> torch.nn.Module:
    """Replay the recorded pruning on a fresh model so saved weights fit it."""
    for name, heads in record.get("removed_heads", {}).items():
        remove_heads(model, name, heads)
    replay(model, record.get("head_tensors", {}))
    support = _conv1d_support(model)
    graph = tp.DependencyGraph().build_dependency(
        model,
        example_inputs,
        output_transform=lambda output: first_tensor(output).sum(),
        customized_pruners=support.get("customized_pruners"),
    )
    graph.load_pruning_history(record["pruning_history"])
    update_hf_config(model)
    return model


def _plan_exclusions(model, config: StructuredPruneConfig, inputs, ratio: float) -> dict[str, str]:
    """Layers whose cut would break the model, with why: the plan is cut on copies first (plan_check)."""
    if ratio == 0 and not config.layer_ratios:
        return {}
    # Whether a cut breaks the model does not depend on which channels go: no data is needed.
    importance = Criterion.l2.value if config.importance in PREPARE else config.importance

    round_to = resolve_round_to(config.round_to)

    def cut(trial: torch.nn.Module, extra: list[str]) -> tp.pruner.BasePruner:
        update = {"exclude": [*config.exclude, *extra], "steps": 1, "importance": importance}
        pruner = _build_pruner(trial, config.model_copy(update=update), inputs, ratio)
        try:
            rounded_cut(pruner, round_to)  # the real cut's widths: a layer rounding keeps whole is not cut
        except Exception as exc:  # noqa: BLE001  (failures surface deep inside Torch-Pruning)
            where, cause = cut_failure(pruner, trial, exc)
            raise CutFailed(where.strip("?"), cause) from None
        return pruner

    try:
        breakages = simulate(model, cut, inputs, _prunable(model))
    except CutFailed as exc:
        raise PruneError(f"structured_prune: {exc}") from None
    exclusions = {layer: b.reason() for b in breakages for layer in b.layers}
    if not exclusions:
        return {}
    broken = "; ".join(f"{b.module!r} in {b.block} ({b.error})" for b in breakages)
    if not config.auto_exclude:
        raise PruneError(
            f"structured_prune: the pruning plan breaks {len(breakages)} module(s): {broken}; "
            f"add these in one step: exclude: {list(exclusions)} (or set auto_exclude: true)"
        )
    log.warn(f"structured_prune: not pruning {list(exclusions)}: cutting them breaks {broken}")
    return exclusions


def _calibration(ctx):
    return ctx.data.batches(ctx.data.resolve("calibration"))


def _stats(model, config: StructuredPruneConfig, ctx) -> ChannelStats | None:
    """Input-channel statistics of the model as it is now, when the criterion or compensation reads them."""
    if config.compensate or config.importance in NEEDS_STATS:
        return input_stats(model, _calibration(ctx), config.gradient_batches)
    return None


@register_pass("structured_prune", StructuredPruneConfig, restore=restore)
def structured_prune(model: torch.nn.Module, config: StructuredPruneConfig, ctx) -> torch.nn.Module:
    with group_search.bounded() as work:  # cut or refuse within a bound that scales with the model
        try:
            model = _prune(model, config, ctx)
        except group_search.GroupSearchTooLong as exc:
            raise PruneError(f"structured_prune: cutting {exc.name!r}: {exc}; add exclude: [{exc.name!r}]") from None
    ctx.record(group_search=work.record())
    return model


def _prune(model: torch.nn.Module, config: StructuredPruneConfig, ctx) -> torch.nn.Module:
    inputs = ctx.example_inputs
    _, output_shape = _execution_order(model, inputs)
    macs_before, params_before = count_macs(model, inputs), count_params(model)
    warn_whole_rnns(model)
    removed_heads, head_tensors = {}, {}
    if config.head_ratio > 0:
        p = 1 if config.importance == Criterion.l1.value else 2
        per_head = find_head_tensors(model, inputs)  # bias tables etc.; one read by several blocks ties them
        random = config.importance == Criterion.random.value
        stats = _stats(model, config, ctx)
        rms = stats.rms if config.importance in NEEDS_STATS else None
        mean = stats.mean if config.compensate else None
        tied = tied_groups(per_head)
        removed_heads = prune_heads(model, config.head_ratio, p, random=random, tied=tied, rms=rms, mean=mean)
        head_tensors = cut_head_tensors(model, per_head, removed_heads)
        if not removed_heads:  # said, not silent (unmapped attention raised above)
            why = "it is below one head per layer" if head_counts(model) else f"{type(model).__name__} has no attention"
            log.warn(f"structured_prune: head_ratio {config.head_ratio} removes nothing: {why}")
        check_forward(model, inputs, output_shape)
    round_to = resolve_round_to(config.round_to)
    ratio = config.ratio
    # Breakage does not depend on how much is cut, so a macs target is checked at a probe ratio.
    auto_excluded = _plan_exclusions(model, config, inputs, 0.5 if config.macs_reduction else ratio)
    config = config.model_copy(update={"exclude": [*config.exclude, *auto_excluded]})
    if config.macs_reduction is not None:
        ratio = _ratio_for_macs(model, config, inputs, config.macs_reduction)
    pruner = _build_pruner(model, config, inputs, ratio)
    check_no_group_empties(pruner, model, round_to)
    custom_widths: dict = {}  # widths of custom-type layers before the first step
    for step in range(config.steps):
        stats = _stats(model, config, ctx)
        if config.importance in PREPARE:
            PREPARE[config.importance](model, pruner.importance, stats, _calibration(ctx), config.gradient_batches)
        before = partial(compensate_group, means=stats.mean) if config.compensate else None
        cut_step(pruner, model, round_to, before)
        custom = {m: r for m, r in _layer_ratios(model, config).items() if is_conv1d(m)}
        _prune_custom_layers(pruner, custom, custom_widths, step, config.steps, round_to)
        model.zero_grad(set_to_none=True)
        check_forward(model, inputs, output_shape)
        if config.finetune_steps and step < config.steps - 1:
            fit_to_teacher(model, ctx.teacher, ctx.data, config.finetune_steps, config.finetune_lr)
    macs_after, params_after = count_macs(model, inputs), count_params(model)
    ctx.record(
        removed_heads=removed_heads,
        auto_excluded=auto_excluded,
        head_tensors=head_tensors,
        attention_heads=head_counts(model),
        config_updates=update_hf_config(model),
        ratio=ratio,
        round_to=round_to,
        params_before=params_before,
        params_after=params_after,
        macs_before=macs_before,
        macs_after=macs_after,
        widths=_widths(model),
        pruning_history=[[name, bool(out), [int(i) for i in idx]] for name, out, idx in pruner.pruning_history()],
    )
    return model
