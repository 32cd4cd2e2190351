"""Activation-aware importance (Wanda-sp): a channel scored by its weights times the activations it carries.

Magnitude ranks a channel by its weights alone. In a trained transformer a few channels carry
activations far larger than the rest, and those matter whatever their weights (Sun et al. 2023,
Wanda; An et al. 2024, FLAP, whose structured baseline this is). A channel that a Linear or Conv
reads as input channel ``j`` scores ``||W[:, j]|| * rms(x_j)``, with ``rms(x_j)`` measured on
calibration batches. Torch-Pruning's own ``ActivationImportance`` keeps only the last batch's mean
``|x|`` and ignores the weights, hence this class. Groups that no observed layer reads (the
calibration never reached them, or only grouped convolutions read them) fall back to magnitude.
"""

from collections.abc import Iterable
from itertools import islice

import torch
import torch_pruning as tp
from torch_pruning.pruner import function

from compress.data import call_model
from compress.errors import InputError

_IN_CHANNELS = (function.prune_linear_in_channels, function.prune_conv_in_channels)


def input_rms(model: torch.nn.Module, batches: Iterable, count: int) -> dict[torch.nn.Module, torch.Tensor]:
    """Root mean square of every input channel of every Linear and ungrouped Conv, over ``count`` batches."""
    sums: dict[torch.nn.Module, list] = {}

    def observe(module, inputs, _output):
        x = inputs[0].detach().float()
        per_channel = x.transpose(0, 1).flatten(1) if isinstance(module, torch.nn.Conv2d) else x.flatten(0, -2).t()
        total = sums.setdefault(module, [torch.zeros(per_channel.shape[0]), 0])
        total[0] += per_channel.pow(2).sum(1)
        total[1] += per_channel.shape[1]

    observed = [
        m
        for m in model.modules()
        if isinstance(m, torch.nn.Linear) or (isinstance(m, torch.nn.Conv2d) and m.groups == 1)
    ]
    hooks = [m.register_forward_hook(observe) for m in observed]
    used = 0
    try:
        with torch.no_grad():
            for batch in islice(batches, count):
                call_model(model, batch[0] if isinstance(batch, (tuple, list)) else batch)
                used += 1
    finally:
        for hook in hooks:
            hook.remove()
    if used == 0:
        raise InputError(
            "structured_prune: importance 'activation' found no batches in the calibration/train split; "
            "give the recipe a calibration or train split, or use importance 'l2'"
        )
    return {m: (s / max(n, 1)).sqrt() for m, (s, n) in sums.items()}


class ActivationAwareImportance(tp.importance.GroupMagnitudeImportance):
    """Wanda-sp scores for Torch-Pruning groups; ``rms`` is refreshed by the pass before every step."""

    def __init__(self):
        super().__init__(p=2)
        self.rms: dict[torch.nn.Module, torch.Tensor] = {}

    @torch.no_grad()
    def __call__(self, group):
        scores, positions = [], []
        for i, (dep, idxs) in enumerate(group):
            rms = self.rms.get(dep.layer)
            if rms is None or dep.pruning_fn not in _IN_CHANNELS or max(idxs, default=-1) >= rms.numel():
                continue
            columns = dep.layer.weight.detach().transpose(0, 1)[idxs].flatten(1)
            scores.append(columns.norm(dim=1) * rms[idxs])
            positions.append(group[i].root_idxs)
        if not scores:
            return super().__call__(group)
        return self._normalize(self._reduce(scores, positions), self.normalizer)
