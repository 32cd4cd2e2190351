"""Activation-aware importance (Wanda-sp): a channel scored by its weights times the activations it carries.

Magnitude ranks a channel by its weights alone. In a trained transformer a few channels carry
activations far larger than the rest, and those matter whatever their weights (Sun et al. 2023,
Wanda; An et al. 2024, FLAP, whose structured baseline this is). A channel that a Linear, a
GPT-2 ``Conv1D`` or an ungrouped Conv2d reads as input channel ``j`` scores
``||W[:, j]|| * rms(x_j)``, with ``rms(x_j)`` measured on calibration batches (padded token
positions included). Torch-Pruning's own ``ActivationImportance`` keeps one batch's ``|x|`` and
ignores the weights, hence this class. A group where some channel is read by no observed layer
(a grouped convolution, a layer the calibration never reached) is ranked by magnitude instead.
"""

from collections.abc import Iterable
from dataclasses import dataclass
from itertools import islice

import torch
import torch_pruning as tp

from compress.core.errors import InputError
from compress.models.data import call_model, model_device, to_device, training_inputs
from compress.pruning.conv1d import in_rows, is_conv1d


def _observed(module: torch.nn.Module) -> bool:
    return (
        isinstance(module, torch.nn.Linear)
        or is_conv1d(module)
        or (isinstance(module, torch.nn.Conv2d) and module.groups == 1)
    )


def _channels_first(module: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The input as [channels, positions]: Conv2d reads channels on dim 1, the others on the last dim."""
    return x.transpose(0, 1).flatten(1) if isinstance(module, torch.nn.Conv2d) else x.flatten(0, -2).t()


@dataclass
class ChannelStats:
    """Per observed layer: mean and root mean square of each input channel."""

    mean: dict[torch.nn.Module, torch.Tensor]
    rms: dict[torch.nn.Module, torch.Tensor]


def input_stats(model: torch.nn.Module, batches: Iterable, count: int) -> ChannelStats:
    """Mean and RMS of every input channel of every observed layer, over ``count`` batches, in eval mode."""
    sums: dict[torch.nn.Module, list] = {}

    def observe(module, inputs, _output):
        per_channel = _channels_first(module, inputs[0].detach().float())
        zeros = torch.zeros(per_channel.shape[0], device=per_channel.device)
        total = sums.setdefault(module, [zeros, zeros.clone(), 0])
        total[0] += per_channel.sum(1)
        total[1] += per_channel.pow(2).sum(1)
        total[2] += per_channel.shape[1]

    hooks = [m.register_forward_hook(observe) for m in model.modules() if _observed(m)]
    was_training, device, used = model.training, model_device(model), 0
    model.eval()  # no dropout, no BatchNorm statistics updated by a measurement
    try:
        with torch.no_grad():
            for batch in islice(batches, count):
                call_model(model, to_device(training_inputs(batch), device))
                used += 1
    finally:
        for hook in hooks:
            hook.remove()
        model.train(was_training)
    if used == 0:
        raise InputError(
            "structured_prune: importance 'activation' and compensate need calibration batches and found none; "
            "give the recipe a calibration or train split, or use importance 'l2' without compensate"
        )
    counts = {m: max(n, 1) for m, (_, _, n) in sums.items()}
    return ChannelStats(
        mean={m: (s / counts[m]).cpu() for m, (s, _, _) in sums.items()},
        rms={m: (q / counts[m]).sqrt().cpu() for m, (_, q, _) in sums.items()},
    )


def consumer_stat(dep, idxs, per_layer: dict[torch.nn.Module, torch.Tensor]) -> torch.Tensor | None:
    """``per_layer``'s tensor for a dependency cutting input channels ``idxs`` of a measured layer, else None."""
    stat = per_layer.get(dep.layer)
    if stat is None or getattr(dep.pruning_fn, "__name__", "") != "prune_in_channels":
        return None
    return stat if max(idxs, default=-1) < stat.numel() else None


def _input_columns(layer: torch.nn.Module, idxs) -> torch.Tensor:
    """The weights reading input channels ``idxs``, one row per channel."""
    if isinstance(layer, torch.nn.Conv2d):
        return layer.weight.detach().transpose(0, 1)[idxs].flatten(1)
    return in_rows(layer)[idxs]


class ActivationAwareImportance(tp.importance.GroupMagnitudeImportance):
    """Wanda-sp scores for Torch-Pruning groups; ``rms`` is refreshed by the pass before every step."""

    def __init__(self):
        super().__init__(p=2)
        self.rms: dict[torch.nn.Module, torch.Tensor] = {}

    @torch.no_grad()
    def __call__(self, group):
        # Sized by the root (the layer whose outputs go): a consumer behind a flatten reads each
        # channel at several positions (its root_idxs repeat), one behind a split reads only some.
        width = len(group[0].idxs)
        total, seen = torch.zeros(width), torch.zeros(width, dtype=torch.bool)
        for i, (dep, idxs) in enumerate(group):
            rms, roots = consumer_stat(dep, idxs, self.rms), group[i].root_idxs
            if rms is None or any(r is None or r >= width for r in roots):
                continue
            score = _input_columns(dep.layer, idxs).float().cpu().norm(dim=1) * rms[idxs]
            positions = torch.tensor(roots, dtype=torch.long)
            total.scatter_add_(0, positions, score)
            seen[positions] = True
        if not seen.all():
            return super().__call__(group)
        return self._normalize(total, self.normalizer)
