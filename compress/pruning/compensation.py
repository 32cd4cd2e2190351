"""Bias compensation (FLAP, An et al. 2024): a removed channel leaves its mean behind in the bias.

A channel cut from a layer's input no longer adds ``W[:, j] * x_j`` to its output. Adding the
channel's calibration mean, ``W[:, j] * mean(x_j)``, to the layer's bias keeps the output's
average where it was, so the pruned model starts closer to the dense one before any training.
Only layers with a bias and a Linear-style input (Linear, GPT-2 Conv1D) are compensated: a
convolution's padding makes its shift depend on the position, and a bias-free layer (Llama's
projections) would need a new parameter the exported graph does not have.
"""

import torch

from compress.pruning.activation_importance import consumer_stat
from compress.pruning.conv1d import in_rows, is_conv1d


def compensate_columns(layer: torch.nn.Module, columns: list[int], mean: torch.Tensor) -> None:
    """Fold the mean contribution of input channels ``columns`` into ``layer``'s bias, where it has one."""
    bias = getattr(layer, "bias", None)
    if bias is None or not (isinstance(layer, torch.nn.Linear) or is_conv1d(layer)) or not columns:
        return
    shift = in_rows(layer)[columns].float().t() @ mean[columns].to(layer.weight.device)
    with torch.no_grad():
        bias += shift.to(bias.dtype)


def compensate_group(group, means: dict[torch.nn.Module, torch.Tensor]) -> None:
    """Before a Torch-Pruning group is cut: compensate every measured layer losing input channels."""
    for dep, idxs in group:
        mean = consumer_stat(dep, idxs, means)
        if mean is not None:
            compensate_columns(dep.layer, list(idxs), mean)
