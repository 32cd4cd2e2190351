"""magnitude_prune: zero the smallest-magnitude weights of Linear and Conv layers.

The L1 (absolute value) criterion, with one threshold per layer (``scope: layer``)
or one across all selected layers (``scope: global``, Han et al. 2015). Exactly
``round(sparsity * n)`` weights become zero in each scope, ties broken by position,
so the reported sparsity is the achieved one. Zeros are written into the weights,
so nothing needs baking before export; the dense ONNX file keeps its size, and the
report shows the gzip size where the gain appears.
"""

from enum import Enum

import torch
from pydantic import Field

from compress.config import PassConfig
from compress.registry import register_pass
from compress.select import select_modules

PRUNABLE = (torch.nn.Linear, torch.nn.Conv1d, torch.nn.Conv2d, torch.nn.Conv3d)


class Scope(str, Enum):
    layer = "layer"
    global_ = "global"


class MagnitudePruneConfig(PassConfig):
    """Args:
    sparsity: share of weights set to zero in each scope, in [0, 1).
    scope: ``layer`` (same sparsity in every layer) or ``global`` (one threshold).
    targets: layer names or ``re:`` patterns to prune (Linear/Conv layers).
    exclude: layer names or patterns to leave dense, e.g. the classifier.
    """

    sparsity: float = Field(0.5, ge=0.0, lt=1.0)
    scope: Scope = Scope.layer
    targets: list[str] = Field(default_factory=lambda: ["re:.*"])
    exclude: list[str] = Field(default_factory=list)


def _keep_masks(weights: list[torch.Tensor], sparsity: float) -> list[torch.Tensor]:
    """Masks keeping the largest ``1 - sparsity`` share of all entries of ``weights``."""
    scores = torch.cat([w.detach().abs().flatten() for w in weights])
    keep = scores.numel() - round(sparsity * scores.numel())
    flat = torch.zeros_like(scores, dtype=torch.bool)
    flat[torch.topk(scores, keep, sorted=False).indices] = True
    return list(flat.split([w.numel() for w in weights]))


@register_pass("magnitude_prune", MagnitudePruneConfig)
def magnitude_prune(model: torch.nn.Module, config: MagnitudePruneConfig, ctx) -> torch.nn.Module:
    layers = select_modules(model, config.targets, config.exclude, PRUNABLE, owner="magnitude_prune")
    weights = [m.weight for m in layers.values()]
    if config.scope == Scope.global_.value:
        masks = _keep_masks(weights, config.sparsity)
    else:
        masks = [_keep_masks([w], config.sparsity)[0] for w in weights]
    sparsity = {}
    with torch.no_grad():
        for (name, weight), mask in zip(zip(layers, weights), masks):
            weight.mul_(mask.view_as(weight))
            sparsity[name] = round(1 - mask.float().mean().item(), 6)
    ctx.record(layer_sparsity=sparsity)
    return model
