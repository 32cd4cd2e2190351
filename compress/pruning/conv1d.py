"""Hugging Face ``Conv1D`` (GPT-2's linear layer with a transposed [in, out] weight) for pruning.

Torch-Pruning knows nn.Linear but not this layer; ``Conv1DPruner`` teaches its dependency
graph how to cut it. Matched by class name, so transformers is never imported here.
"""

import torch
import torch_pruning as tp


def is_conv1d(module: torch.nn.Module) -> bool:
    return type(module).__name__ == "Conv1D" and hasattr(module, "nf") and hasattr(module, "nx")


def _keep(count: int, idxs) -> list[int]:
    drop = set(int(i) for i in idxs)
    return [i for i in range(count) if i not in drop]


def prune_conv1d_out_channels(layer: torch.nn.Module, idxs) -> torch.nn.Module:
    keep = _keep(layer.nf, idxs)
    layer.weight = torch.nn.Parameter(layer.weight.data[:, keep].clone())
    layer.bias = torch.nn.Parameter(layer.bias.data[keep].clone())
    layer.nf = len(keep)
    return layer


def prune_conv1d_in_channels(layer: torch.nn.Module, idxs) -> torch.nn.Module:
    keep = _keep(layer.nx, idxs)
    layer.weight = torch.nn.Parameter(layer.weight.data[keep, :].clone())
    layer.nx = len(keep)
    return layer


class Conv1DPruner(tp.pruner.function.BasePruningFunc):
    def prune_out_channels(self, layer, idxs):
        return prune_conv1d_out_channels(layer, idxs)

    def prune_in_channels(self, layer, idxs):
        return prune_conv1d_in_channels(layer, idxs)

    def get_out_channels(self, layer):
        return layer.nf

    def get_in_channels(self, layer):
        return layer.nx


def conv1d_types(model: torch.nn.Module) -> list[type]:
    """The Conv1D classes present in ``model`` (usually one, or none)."""
    return list({type(m) for m in model.modules() if is_conv1d(m)})


def out_width(layer: torch.nn.Module) -> int:
    return layer.nf if is_conv1d(layer) else layer.out_features


def out_rows(layer: torch.nn.Module) -> torch.Tensor:
    """Weight as [out, in], whatever the layer's storage order."""
    return layer.weight.detach().t() if is_conv1d(layer) else layer.weight.detach()


def in_rows(layer: torch.nn.Module) -> torch.Tensor:
    """Weight as [in, out]."""
    return layer.weight.detach() if is_conv1d(layer) else layer.weight.detach().t()


def cut_out(layer: torch.nn.Module, idxs: list[int]) -> None:
    (prune_conv1d_out_channels if is_conv1d(layer) else tp.prune_linear_out_channels)(layer, idxs)


def cut_in(layer: torch.nn.Module, idxs: list[int]) -> None:
    (prune_conv1d_in_channels if is_conv1d(layer) else tp.prune_linear_in_channels)(layer, idxs)


def group_scores(group, p: int = 2) -> torch.Tensor:
    """Lp norm per channel of all weights a dependency group cuts (Linear and Conv1D members)."""
    parts = []
    for dep, idxs in group:
        layer, handler = dep.target.module, dep.handler
        if not (is_conv1d(layer) or isinstance(layer, torch.nn.Linear)):
            continue
        name = getattr(handler, "__name__", "")
        if name == "prune_out_channels":
            parts.append(out_rows(layer)[idxs])
        elif name == "prune_in_channels":
            parts.append(in_rows(layer)[idxs])
    return torch.cat(parts, dim=1).norm(p=p, dim=1)
