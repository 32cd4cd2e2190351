"""Hardware-friendly widths: what structured pruning keeps is rounded to a multiple of ``round_to``.

Pruned widths like 11 or 45 made CNNs 1.2x to 5x slower in ONNX Runtime at half the size: its
CPU convolutions run blocked (NCHWc) kernels, and a Conv fed an odd channel count falls back to
the plain NCHW path with layout reorders around it. ``auto`` is 8: in ONNX Runtime 1.32 on an
AVX-512 machine, Conv pairs of widths 12, 20, 36, 40, 44, 80, 84, 88 and 96 all stayed on NCHWc
while 45, 46 and 47 did not (MLAS pads the block itself, so 16 is not needed there), and 8 is
the alignment CUDA's fp16/TF32 Tensor Cores want. One value, not a per-machine one, so a recipe
prunes to the same widths everywhere; 16 (int8 Tensor Cores) or 1 (exact widths) are a setting.

The rule, for a width ``W`` asked to keep ``k`` channels, with multiple ``m``:

- ``k`` becomes the nearest multiple of ``m`` (halves round up), at least ``m`` and at most
  ``W``: a cut never empties a layer and never keeps more than it has;
- a width not above ``m`` is left whole: no smaller multiple exists, so any cut would be odd;
- channel-grouped layers (grouped convolutions, GroupNorm) are rounded per group of channels,
  to the multiple that makes their total width a multiple of ``m``.

Attention projections are not rounded here: their widths are whole heads, cut by
``compress.pruning.attention``, and Torch-Pruning never cuts channels inside a head.
"""

import math

import torch
import torch_pruning as tp

AUTO = "auto"
AUTO_MULTIPLE = 8


def resolve_round_to(round_to: int | str) -> int:
    """The multiple ``round_to`` stands for (``auto``: 8)."""
    return AUTO_MULTIPLE if round_to == AUTO else int(round_to)


def rounded_width(keep: int, width: int, multiple: int) -> int:
    """How many of ``width`` channels stay when ``keep`` were asked for, rounded to ``multiple``."""
    if multiple <= 1 or keep >= width:
        return keep
    if width <= multiple:
        return width
    nearest = (2 * keep + multiple) // (2 * multiple) * multiple
    return min(max(nearest, multiple), width // multiple * multiple)


def _is_attention(pruner: tp.pruner.BasePruner, group) -> bool:
    """A group cutting a q/k/v projection's outputs (heads). The hidden-size group also reaches
    q/k/v, through their inputs, and is rounded like any other width."""
    return any(
        item.dep.target.module in pruner.num_heads and pruner.DG.is_out_channel_pruning_fn(item.dep.handler)
        for item in group
    )


def round_group(pruner: tp.pruner.BasePruner, group, multiple: int):
    """``group`` as Torch-Pruning chose it, with its kept width rounded; None when nothing is cut.

    Torch-Pruning's own ``round_to`` rounds the kept width down, so a layer narrower than
    the multiple is emptied, and it mixes per-group and total counts for grouped layers; the
    cut is therefore re-chosen here, with the same importance ranking on the whole group.
    ``_get_channel_groups`` is Torch-Pruning 1.6's (pinned) count of channel groups.
    """
    if multiple <= 1 or _is_attention(pruner, group):
        return group
    dep, graph = group[0].dep, pruner.DG
    module, handler = dep.target.module, dep.handler
    channels_of = graph.get_out_channels if graph.is_out_channel_pruning_fn(handler) else graph.get_in_channels
    width = channels_of(module)
    channel_groups = pruner._get_channel_groups(group)
    size = width // channel_groups
    asked = size - len(group[0].idxs) // channel_groups
    keep = rounded_width(asked, size, multiple // math.gcd(multiple, channel_groups))
    if keep == asked:
        return group
    if keep == size:
        return None
    scores = pruner.estimate_importance(graph.get_pruning_group(module, handler, list(range(width))))
    if scores is None:
        return group
    weakest = torch.argsort(scores.view(channel_groups, -1).mean(0).cpu())[: size - keep].tolist()
    drop = sorted(index + g * size for g in range(channel_groups) for index in weakest)
    return graph.get_pruning_group(module, handler, drop)
