"""Try a channel-pruning plan on a copy of the model and collect every layer whose cut breaks it.

Torch-Pruning's dependency graph misses some couplings: Swin's patch merging takes strided
slices of four neighbours, concatenates them to 4C and normalizes with LayerNorm(4C), and the
graph cuts the slices' source without cutting the norm to match. Found after the real cut,
such a failure names one module per run, often a norm that ``exclude`` cannot take. Instead
the plan is cut on a deep copy; each module that fails is traced back, through the same graph,
to the prunable layers whose groups cut it or its input, those are excluded, and the copy is
cut again, until it runs. What comes out is one ``exclude`` list of Linear/Conv layers that
makes the plan work in one step. ``groups_cutting`` also lets ``exclude`` name a norm or a
whole block: it stands for the groups that cut it or its input.
"""

import copy
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch_pruning as tp

from compress.core.errors import first_line
from compress.models.data import call_model, first_tensor
from compress.pruning.steps import PruneError

# Each round excludes at least one more group; a model needing more is not one exclude away from working.
MAX_ROUNDS = 8


class CutFailed(Exception):
    """Cutting the copy failed inside Torch-Pruning; ``layer`` is the group root it failed on."""

    def __init__(self, layer: str, message: str):
        super().__init__(message)
        self.layer = layer


@dataclass
class Breakage:
    """Layers whose cut breaks ``module`` (a module of type ``block``'s block), and the error seen."""

    layers: list[str]
    module: str
    block: str
    error: str

    def reason(self) -> str:
        return f"cutting it breaks {self.module!r} in {self.block} ({self.error})"


def traced_forward(model: torch.nn.Module, example_inputs: Any) -> tuple[torch.Size | None, tuple[str, str] | None]:
    """(output shape, None) when the forward runs, else (None, (module it failed in, the error's first line))."""
    entered: list[str] = []
    hooks = [
        m.register_forward_pre_hook(lambda *_, name=name: entered.append(name))
        for name, m in model.named_modules()
        if name
    ]
    try:
        with torch.no_grad():
            return first_tensor(call_model(model, example_inputs)).shape, None
    except Exception as exc:  # noqa: BLE001  (any failure means a layer was cut inconsistently)
        return None, (entered[-1] if entered else "", first_line(exc))
    finally:
        for hook in hooks:
            hook.remove()


def check_forward(model: torch.nn.Module, example_inputs: Any, expected: torch.Size) -> None:
    """Run the pruned model (the real one, after its cut); a failure names the module it happened in."""
    shape, failure = traced_forward(model, example_inputs)
    if failure:
        where = failure[0] or type(model).__name__
        raise PruneError(
            f"structured_prune: after pruning, the model fails in module {where!r} ({failure[1]}); "
            f"add it to exclude: [{where!r}]"
        )
    if shape != expected:
        raise PruneError(
            f"structured_prune: pruning changed the output shape from {tuple(expected)} to {tuple(shape)}; "
            "exclude the layers that produce the output"
        )


def forward_failure(model: torch.nn.Module, example_inputs: Any) -> tuple[str, str] | None:
    """The module the forward fails in and the error's first line, or None when it runs."""
    return traced_forward(model, example_inputs)[1]


def _producers(graph: tp.DependencyGraph, module: torch.nn.Module, prunable: tuple[type, ...]) -> set:
    """Prunable layers whose outputs reach ``module``'s input through non-prunable operations."""
    start = graph.module2node.get(module)
    found, seen, todo = set(), set(), list(start.inputs) if start else []
    while todo:
        node = todo.pop()
        if node in seen:
            continue
        seen.add(node)
        if isinstance(node.module, prunable):
            found.add(node.module)
        else:
            todo.extend(node.inputs)
    return found


def groups_cutting(pruner: tp.pruner.BasePruner, model: torch.nn.Module, name: str, prunable: tuple[type, ...]) -> list:
    """Roots of the groups that cut module ``name`` (a layer, a norm, or every module of a block) or its input."""
    traced = {m for m in model.get_submodule(name).modules() if m in pruner.DG.module2node}
    producers = set().union(*(_producers(pruner.DG, m, prunable) for m in traced))

    def cuts(dep) -> bool:  # the module itself, or a producer's output width (not a consumer's input)
        output = pruner.DG.is_out_channel_pruning_fn(dep.handler)
        return dep.target.module in traced or (output and dep.target.module in producers)

    roots = []
    for group in pruner.DG.get_all_groups(
        ignored_layers=pruner.ignored_layers, root_module_types=pruner.root_module_types
    ):
        root = group[0].dep.target.module
        if isinstance(root, prunable) and any(cuts(dep) for dep, _ in group):
            roots.append(root)
    return roots


def _block(model: torch.nn.Module, name: str) -> str:
    """Type name of the block holding module ``name`` (the kind of block pruning breaks)."""
    return type(model.get_submodule(name.rpartition(".")[0])).__name__


def _emptied(model: torch.nn.Module, prunable: tuple[type, ...], extra: list[str]) -> list[str]:
    """Prunable layers left with no input or output channel (e.g. Phi3's fused ``gate_up_proj``)."""
    return [
        name
        for name, module in model.named_modules()
        if isinstance(module, prunable) and name not in extra
        and isinstance(getattr(module, "weight", None), torch.Tensor) and 0 in module.weight.shape
    ]  # fmt: skip


def simulate(
    model: torch.nn.Module,
    cut: Callable[[torch.nn.Module, list[str]], tp.pruner.BasePruner],
    example_inputs: Any,
    prunable: tuple[type, ...],
) -> list[Breakage]:
    """Every breakage of the plan ``cut`` (which prunes a copy, given extra layers to exclude).

    Returns an empty list when the plan runs as it is; otherwise the breakages whose layers,
    excluded together, make it run. Raises ``CutFailed`` (layer ``""``) when excluding cannot help.
    """
    breakages: list[Breakage] = []
    for _ in range(MAX_ROUNDS):
        extra = [layer for b in breakages for layer in b.layers]
        trial = copy.deepcopy(model)
        try:
            pruner = cut(trial, extra)
        except CutFailed as exc:
            if not exc.layer or exc.layer in extra:
                raise CutFailed("", f"Torch-Pruning cannot cut module {exc.layer or '?'!r} ({exc})") from None
            breakages.append(Breakage([exc.layer], exc.layer, _block(trial, exc.layer), str(exc)))
            continue
        emptied = _emptied(trial, prunable, extra)
        if emptied:  # the model still runs, with that layer gone: a silent loss, never a plan
            why = "the cut removes every channel (Torch-Pruning splits a fused projection's outputs wrongly)"
            breakages.append(Breakage(emptied, emptied[0], _block(trial, emptied[0]), why))
            continue
        failure = forward_failure(trial, example_inputs)
        if failure is None:
            return breakages
        where, error = failure
        names = {m: name for name, m in trial.named_modules()}
        layers = (
            [names[m] for m in groups_cutting(pruner, trial, where, prunable) if names[m] not in extra] if where else []
        )
        if not layers:
            raise CutFailed("", f"the model fails in module {where!r} ({error}) and no exclude fixes it")
        breakages.append(Breakage(layers, where, _block(trial, where), error))
    raise CutFailed("", f"the plan still breaks after excluding {MAX_ROUNDS} rounds of layers")
