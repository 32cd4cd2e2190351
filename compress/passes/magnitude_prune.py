"""magnitude_prune: zero the smallest-magnitude weights of Linear and Conv layers.

The L1 (absolute value) criterion with one threshold per layer (``scope: layer``) or
one across all selected layers (``scope: global``, Han et al. 2015); or an N:M pattern
(``pattern: "2:4"``: in every M consecutive input weights, N are kept). Exactly
``round(sparsity * n)`` weights become zero in each scope, ties broken by position.

``steps > 1`` prunes gradually with the cubic schedule of Zhu & Gupta (2017):
s_k = s * (1 - (1 - k/steps)^3). After each step, ``finetune_steps`` optimizer steps
pull the model towards the teacher while ``torch.nn.utils.prune`` keeps pruned
weights at zero. Masks are baked into the weights at the end, so the exported model
carries real zeros: the dense ONNX file keeps its size and the report shows the
gzip size, where the gain appears.
"""

import re
from enum import Enum

import torch
from pydantic import Field, field_validator
from torch.nn.utils import prune as torch_prune

from compress.core.config import PassConfig
from compress.core.errors import SelectionError
from compress.models.select import WEIGHT_LAYERS, select_modules
from compress.recipe.registry import register_pass
from compress.training.loop import fit_to_teacher

PRUNABLE = WEIGHT_LAYERS


class Scope(str, Enum):
    layer = "layer"
    global_ = "global"


class MagnitudePruneConfig(PassConfig):
    """Args:
    sparsity: share of weights set to zero in each scope, in [0, 1); ignored with ``pattern``.
    scope: ``layer`` (same sparsity in every layer) or ``global`` (one threshold).
    pattern: ``"N:M"`` semi-structured sparsity, e.g. ``"2:4"``, along each layer's input dimension.
    steps: pruning events on the cubic schedule (1 = one-shot).
    finetune_steps: optimizer steps towards the teacher after each event (needs a train split).
    finetune_lr: learning rate of those fine-tuning steps.
    targets: the Linear/Conv layers pruned, as names or ``re:`` patterns (default: all of them).
    exclude: Linear/Conv layers never pruned, as names or ``re:`` patterns.
    """

    sparsity: float = Field(0.5, ge=0.0, lt=1.0)
    scope: Scope = Scope.layer
    pattern: str | None = None
    steps: int = Field(1, ge=1, le=1000)
    finetune_steps: int = Field(0, ge=0, le=1_000_000)
    finetune_lr: float = Field(1e-4, gt=0.0, le=1.0)
    targets: list[str] = Field(default_factory=lambda: ["re:.*"])
    exclude: list[str] = Field(default_factory=list)

    @field_validator("pattern")
    @classmethod
    def _n_of_m(cls, value: str | None) -> str | None:
        if value is None:
            return value
        match = re.fullmatch(r"(\d+):(\d+)", value)
        if not match or not 0 < int(match[1]) < int(match[2]) <= 64:
            raise ValueError(f"pattern must be 'N:M' with 0 < N < M <= 64, like '2:4'; got {value!r}")
        return value


def cubic_schedule(final: float, steps: int) -> list[float]:
    """Sparsity after each of ``steps`` events, rising fast then slowly to ``final``."""
    return [final * (1 - (1 - k / steps) ** 3) for k in range(1, steps + 1)]


def keep_masks(weights: list[torch.Tensor], sparsity: float) -> list[torch.Tensor]:
    """Masks keeping the largest ``1 - sparsity`` share of all entries of ``weights``."""
    scores = torch.cat([w.detach().abs().flatten() for w in weights])
    keep = scores.numel() - round(sparsity * scores.numel())
    flat = torch.zeros_like(scores, dtype=torch.bool)
    flat[torch.topk(scores, keep, sorted=False).indices] = True
    return [m.view_as(w) for m, w in zip(flat.split([w.numel() for w in weights]), weights)]


def n_m_mask(weight: torch.Tensor, n: int, m: int, name: str) -> torch.Tensor:
    """Keep the ``n`` largest of every ``m`` consecutive weights along the input dimension."""
    moved = weight.detach().abs().movedim(1, -1)  # [out, (kernel...), in]
    if moved.shape[-1] % m:
        raise SelectionError(
            f"magnitude_prune: layer {name!r} has {moved.shape[-1]} inputs, not a multiple of {m} "
            f"for pattern {n}:{m}; add it to exclude: [{name!r}]"
        )
    groups = moved.reshape(-1, m)
    mask = torch.zeros_like(groups, dtype=torch.bool)
    mask.scatter_(1, torch.topk(groups, n, dim=1).indices, True)
    return mask.reshape(moved.shape).movedim(-1, 1)


def _current_weight(module: torch.nn.Module) -> torch.Tensor:
    """The effective weight; ``module.weight`` of a masked layer is refreshed only by a forward."""
    if hasattr(module, "weight_orig"):
        return module.weight_orig * module.weight_mask
    return module.weight


def _masks(layers: dict, config: MagnitudePruneConfig, sparsity: float) -> dict[str, torch.Tensor]:
    weights = {name: _current_weight(module) for name, module in layers.items()}
    if config.pattern:
        n, m = map(int, config.pattern.split(":"))
        return {name: n_m_mask(w, n, m, name) for name, w in weights.items()}
    if config.scope == Scope.global_.value:
        return dict(zip(weights, keep_masks(list(weights.values()), sparsity)))
    return {name: keep_masks([w], sparsity)[0] for name, w in weights.items()}


@register_pass("magnitude_prune", MagnitudePruneConfig)
def magnitude_prune(model: torch.nn.Module, config: MagnitudePruneConfig, ctx) -> torch.nn.Module:
    layers = select_modules(model, config.targets, config.exclude, PRUNABLE, owner="magnitude_prune")
    schedule = [None] if config.pattern else cubic_schedule(config.sparsity, config.steps)
    order = {name: list(module._parameters) for name, module in layers.items()}
    for sparsity in schedule:
        # ``module.weight`` is weight_orig * mask once masked, so pruned weights stay pruned.
        for name, mask in _masks(layers, config, sparsity).items():
            torch_prune.custom_from_mask(layers[name], "weight", mask)
        if config.finetune_steps:
            fit_to_teacher(model, ctx.teacher, ctx.data, config.finetune_steps, config.finetune_lr)
    achieved = {}
    for name, module in layers.items():
        torch_prune.remove(module, "weight")  # bake: the mask becomes zeros in the weight
        # remove() registers ``weight`` again, last: back in its place, the exported graph lists its
        # initializers as a resumed run's does (it loads this stage into a module never masked).
        for key in order[name]:
            module._parameters[key] = module._parameters.pop(key)
        achieved[name] = round(float((module.weight == 0).float().mean()), 6)
    ctx.record(layer_sparsity=achieved, schedule=[s for s in schedule if s is not None], pattern=config.pattern)
    return model
