"""Hardware-friendly widths: what structured pruning keeps is rounded to a multiple of ``round_to``.

Pruned widths like 11 or 45 made CNNs 1.2x to 5x slower in ONNX Runtime at half the size: its
CPU convolutions run blocked (NCHWc) kernels only when channels are a multiple of MLAS's block,
8 floats with AVX2 and 16 with AVX-512 (``MlasNchwcGetBlockSize``); other widths fall back to the
plain NCHW path with layout reorders around it. ``auto`` is therefore the block of the CPU the
report measures on: 16 with AVX-512, 8 otherwise. Both are multiples of 8, the alignment CUDA's
fp16/TF32 Tensor Cores want, so a CUDA run needs no other value; set ``round_to`` explicitly
for widths that do not depend on the machine.

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
CPU_BLOCK = {"AVX512": 16}  # MLAS's NCHWc block per torch CPU capability
DEFAULT_BLOCK = 8  # AVX2, and the fp16/TF32 Tensor Core alignment on CUDA


def cpu_capability() -> str:
    """The vector extension torch detected on this CPU (``AVX512``, ``AVX2``, ...)."""
    return torch.backends.cpu.get_cpu_capability()


def resolve_round_to(round_to: int | str) -> int:
    """The multiple ``round_to`` stands for on this machine (``auto``: its CPU's block)."""
    if round_to == AUTO:
        return CPU_BLOCK.get(cpu_capability(), DEFAULT_BLOCK)
    return int(round_to)


def rounded_width(keep: int, width: int, multiple: int) -> int:
    """How many of ``width`` channels stay when ``keep`` were asked for, rounded to ``multiple``."""
    if multiple <= 1 or keep >= width:
        return keep
    if width <= multiple:
        return width
    nearest = (2 * keep + multiple) // (2 * multiple) * multiple
    return min(max(nearest, multiple), width // multiple * multiple)


def _is_attention(pruner: tp.pruner.BasePruner, group) -> bool:
    return any(item.dep.target.module in pruner.num_heads for item in group)


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
