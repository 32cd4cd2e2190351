"""One Torch-Pruning step made safely: output groups kept whole, groups that a ratio would
empty refused, each cut rounded to a kernel-friendly width, and a failure named by its layer.

Shared by the structured_prune pass and its plan check, which cuts a copy first.
"""

import math
from collections.abc import Callable

import torch
import torch_pruning as tp

from compress.core.errors import ModelpressError, first_line
from compress.pruning.widths import round_group


class PruneError(ModelpressError):
    """The model (or one of its layers) cannot be pruned structurally."""


class GroupCutError(Exception):
    """Torch-Pruning failed cutting one group: the module at its root, and the cause's first line."""

    def __init__(self, module: torch.nn.Module, cause: BaseException):
        super().__init__(first_line(cause))
        self.module = module


def cut_failure(pruner: tp.pruner.BasePruner, model: torch.nn.Module, exc: BaseException) -> tuple[str, str]:
    """(the layer a failed cut names, the cause's first line): the root of the group being cut, else
    the first group whose importance cannot be computed, else "?"."""
    if isinstance(exc, GroupCutError):
        name = next((n for n, m in model.named_modules() if m is exc.module), None)
        return name if name is not None else failing_layer(pruner, model), str(exc)
    return failing_layer(pruner, model), first_line(exc)


def keep_output_widths(pruner: tp.pruner.BasePruner) -> None:
    """Leave whole every group that reaches a model output.

    Excluding the last layer keeps a classifier's width, but a backbone returns its residual
    stream (a transformer's hidden size, a CNN's last stage) directly; cutting that group would
    change the output and crash Torch-Pruning's output node. Ignoring one root skips the group.
    """
    for group in pruner.DG.get_all_groups(
        ignored_layers=pruner.ignored_layers, root_module_types=pruner.root_module_types
    ):
        if any(dep.target.type == tp.ops.OPTYPE.OUTPUT for dep, _ in group):
            pruner.ignored_layers.append(group[0].dep.target.module)


def check_no_group_empties(pruner: tp.pruner.BasePruner, model: torch.nn.Module, round_to: int) -> None:
    """Refuse a ratio that would cut every channel of a group.

    Torch-Pruning skips such a group silently instead of cutting it, so the share removed
    fell as the ratio rose (0.99 removed less than 0.9). Rounding comes after its choice, so it
    cannot rescue such a group; a group not wider than ``round_to`` is never cut, so never
    refused. Head groups are cut by heads, not here; global allocation ranks across groups and
    is left to the library.
    """
    if pruner.global_pruning:
        return
    names = {module: name for name, module in model.named_modules()}
    empty = {}
    for group in pruner.DG.get_all_groups(
        ignored_layers=pruner.ignored_layers, root_module_types=pruner.root_module_types
    ):
        module = group[0].dep.target.module
        width = pruner.DG.get_out_channels(module)
        if module in pruner.num_heads or not width or (round_to > 1 and width <= round_to):
            continue
        ratio = pruner.pruning_ratio_dict.get(module, pruner.per_step_pruning_ratio)[-1]
        if ratio > 0 and int(width * (1 - ratio)) < 1:
            empty[names.get(module, "?")] = (width, ratio)
    if empty:
        name, (width, ratio) = min(empty.items(), key=lambda item: item[1][0])
        largest = math.floor((1 - 1 / width) * 1e4) / 1e4
        raise PruneError(
            f"structured_prune: ratio {ratio} would remove every channel of {len(empty)} group(s) "
            f"({', '.join(repr(n) for n in list(empty)[:5])}); the narrowest, {name!r}, has {width} channels, "
            f"so the largest ratio that keeps one is {largest}; lower the ratio or exclude them"
        )


def failing_layer(pruner: tp.pruner.BasePruner, model: torch.nn.Module) -> str:
    """The root layer of the first group whose importance cannot be computed (diagnosis only)."""
    names = {module: name for name, module in model.named_modules()}
    for group in pruner.DG.get_all_groups(
        ignored_layers=pruner.ignored_layers, root_module_types=pruner.root_module_types
    ):
        try:
            pruner.estimate_importance(group)
        except Exception:  # noqa: BLE001
            return names.get(group[0].dep.target.module, "?")
    return "?"


def rounded_cut(pruner: tp.pruner.BasePruner, round_to: int, before: Callable | None = None) -> None:
    """One Torch-Pruning step, each group's cut rounded to ``round_to`` and shown to ``before`` before it is made."""
    for group in pruner.step(interactive=True):
        group = round_group(pruner, group, round_to)
        if group is not None:
            if before is not None:
                before(group)
            try:
                group.prune()
            except Exception as exc:  # noqa: BLE001  (name the group; the cause comes from deep inside it)
                raise GroupCutError(group[0].dep.target.module, exc) from exc


def cut_step(
    pruner: tp.pruner.BasePruner, model: torch.nn.Module, round_to: int, before: Callable | None = None
) -> None:
    """``rounded_cut``, a failure named by the layer whose group cannot be cut."""
    try:
        rounded_cut(pruner, round_to, before)
    except Exception as exc:  # noqa: BLE001  (failures surface deep inside Torch-Pruning)
        where, cause = cut_failure(pruner, model, exc)
        raise PruneError(
            f"structured_prune: cannot prune module {where!r} ({cause}); "
            f"its width is probably fixed by a reshape or custom op: add it to exclude: [{where!r}]"
        ) from None
