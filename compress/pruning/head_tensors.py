"""Per-head tensors: bias tables and embeddings with one slice per attention head, cut with their heads.

Relative-position bias tables (Swin, BEiT), bucket embeddings (T5, MPNet) and per-head scales
hold one slice per head along one dimension. They are found by what the model computes, not by
name: one forward with gradients, then for every attention block the per-head signals it sees
(its 4-D inputs ``[batch, heads, q, k]``, and the per-head input of its output projection) are
differentiated against every candidate tensor. A tensor is a block's per-head tensor along
dimension ``d`` when head ``h``'s signal depends on slice ``h`` of ``d`` and on no other slice
(checked for the first and the last head). Structural, so Swin's per-stage tables, BEiT's
layer-level or shared table, T5's table in the first block that later blocks reuse, and MPNet's
table on the encoder are one case. A tensor read by several blocks ties them: their heads are
ranked together and the same indices leave every one of them (``prune_heads``'s ``tied``).
"""

from dataclasses import dataclass

import torch

from compress.core.errors import ModelpressError
from compress.models.data import call_model
from compress.pruning.attention import Found, attention_modules


@dataclass(frozen=True)
class HeadTensor:
    name: str  # qualified parameter or buffer name
    dim: int  # the dimension with one slice per head
    users: tuple[str, ...]  # the attention modules reading it per head


def _layers_of(model: torch.nn.Module, found: Found) -> set[int]:
    """Tensors of the q/k/v and output projections: cut by ``remove_heads`` already."""
    layers = []
    for name, (module, layout) in found.items():
        layers += [getattr(module, p) for p in layout.projections] + [layout.output_layer(model, name)]
    return {id(t) for layer in layers for t in [*layer.parameters(), *layer.buffers()]}


def _candidates(model: torch.nn.Module, found: Found) -> dict[str, torch.Tensor]:
    """Floating tensors with a dimension as long as some block's head count, outside the projections."""
    counts = {lay.heads(m) for m, lay in found.values()}
    skip = _layers_of(model, found)
    tensors = dict(model.named_parameters())
    tensors.update((n, b) for n, b in model.named_buffers() if b.is_floating_point() and b.is_leaf)
    return {n: t for n, t in tensors.items() if id(t) not in skip and counts & set(t.shape)}


def _slices_fed(grad: torch.Tensor | None, dim: int) -> list[int]:
    """The slices of dimension ``dim`` with a nonzero gradient."""
    if grad is None:
        return []
    return grad.ne(0).movedim(dim, 0).reshape(grad.shape[dim], -1).any(dim=1).nonzero().flatten().tolist()


def _per_head_dims(signal: torch.Tensor, heads: int, head_of, tensors: dict[str, torch.Tensor]) -> dict[str, int]:
    """For each tensor, the dimension whose slice ``h`` alone feeds head ``h`` of ``signal``, where one does."""
    dims = {n: [d for d, size in enumerate(t.shape) if size == heads] for n, t in tensors.items()}
    for h in (0, heads - 1):
        grads = torch.autograd.grad(
            head_of(signal, h).sum(), list(tensors.values()), retain_graph=True, allow_unused=True
        )
        for (name, dim_list), grad in zip(dims.items(), grads):
            dims[name] = [d for d in dim_list if _slices_fed(grad, d) == [h]]
    return {n: d[-1] for n, d in dims.items() if d}


def _signals(model: torch.nn.Module, found: Found, inputs) -> dict[str, list[tuple[torch.Tensor, object]]]:
    """Per attention module, the per-head tensors it sees in one forward, each with a head slicer."""
    signals: dict[str, list] = {name: [] for name in found}
    hooks = []
    for name, (module, layout) in found.items():
        heads = layout.heads(module)

        def take_inputs(_, args, kwargs, name=name, heads=heads):
            values = [*args, *kwargs.values()]
            values += [v for value in values if isinstance(value, (tuple, list)) for v in value]
            for value in values:
                if (
                    isinstance(value, torch.Tensor)
                    and value.ndim == 4
                    and value.shape[1] == heads
                    and value.requires_grad
                ):
                    signals[name].append((value, lambda s, h: s[:, h]))

        def take_merged(_, args, name=name, heads=heads):
            merged = args[0]  # [..., heads * size]: the heads side by side
            size = merged.shape[-1] // heads
            signals[name].append((merged, lambda s, h, size=size: s[..., h * size : (h + 1) * size], "own"))

        hooks.append(module.register_forward_pre_hook(take_inputs, with_kwargs=True))
        hooks.append(layout.output_layer(model, name).register_forward_pre_hook(take_merged))
    try:
        call_model(model, inputs)
    finally:
        for hook in hooks:
            hook.remove()
    return signals


def find_head_tensors(model: torch.nn.Module, inputs) -> list[HeadTensor]:
    """Every tensor read per head by attention blocks, with its head dimension and its readers."""
    found = attention_modules(model)
    candidates = _candidates(model, found)
    if not candidates:
        return []
    flags = {n: t.requires_grad for n, t in candidates.items()}
    modes = {m: m.training for m in model.modules()}  # eval: no dropout noise, no running-stat updates
    for tensor in candidates.values():
        tensor.requires_grad_(True)
    try:
        model.eval()
        with torch.enable_grad():
            signals = _signals(model, found, inputs)
            return _readers(found, candidates, signals)
    finally:
        for name, tensor in candidates.items():
            tensor.requires_grad_(flags[name])
        for module, training in modes.items():
            module.training = training


def _readers(found: Found, candidates: dict, signals: dict) -> list[HeadTensor]:
    """Which attention modules read each candidate per head, and along which dimension."""
    dims: dict[str, int] = {}
    users: dict[str, list[str]] = {}
    owned = {name: {id(t) for t in [*m.parameters(), *m.buffers()]} for name, (m, _) in found.items()}
    for name, seen in signals.items():
        module, layout = found[name]
        heads = layout.heads(module)
        for signal, head_of, *own in seen:
            # The output projection's input also depends on earlier blocks' tensors through the
            # hidden states: it speaks for the block's own tensors only.
            tensors = {n: t for n, t in candidates.items() if heads in t.shape and (not own or id(t) in owned[name])}
            if not tensors or not signal.requires_grad:
                continue
            for tensor_name, dim in _per_head_dims(signal, heads, head_of, tensors).items():
                if name not in users.setdefault(tensor_name, []):
                    dims[tensor_name] = dim
                    users[tensor_name].append(name)
    return [HeadTensor(n, dims[n], tuple(users[n])) for n in candidates if users.get(n)]


def tied_groups(tensors: list[HeadTensor]) -> list[set[str]]:
    """Attention modules that must lose the same heads: those reading one tensor, transitively."""
    groups: list[set[str]] = []
    for tensor in tensors:
        joined = set(tensor.users)
        for group in [g for g in groups if g & joined]:
            joined |= group
            groups.remove(group)
        groups.append(joined)
    return [g for g in groups if len(g) > 1]


def _replace(model: torch.nn.Module, name: str, new: torch.Tensor) -> None:
    """Put ``new`` wherever the tensor ``name`` is registered (a tied weight sits in several modules)."""
    old = model.get_parameter(name) if name in dict(model.named_parameters()) else model.get_buffer(name)
    for module in model.modules():
        for store in (module._parameters, module._buffers):
            for attr, value in store.items():
                if value is old:
                    store[attr] = torch.nn.Parameter(new, old.requires_grad) if store is module._parameters else new
                    _sync_sizes(module, attr, store[attr])


def _sync_sizes(module: torch.nn.Module, attr: str, tensor: torch.Tensor) -> None:
    """Size attributes torch layers keep beside their weight."""
    if isinstance(module, torch.nn.Embedding) and attr == "weight":
        module.embedding_dim = tensor.shape[1]
    elif isinstance(module, torch.nn.Linear) and attr == "weight":
        module.out_features, module.in_features = tensor.shape


def cut(model: torch.nn.Module, name: str, dim: int, heads: list[int]) -> None:
    """Remove slices ``heads`` of dimension ``dim`` from the tensor ``name``."""
    tensors = dict(model.named_parameters()) | dict(model.named_buffers())
    tensor = tensors[name]
    keep = [i for i in range(tensor.shape[dim]) if i not in set(heads)]
    with torch.no_grad():
        kept = tensor.detach().index_select(dim, torch.tensor(keep, device=tensor.device)).clone()
    _replace(model, name, kept)


def cut_head_tensors(model: torch.nn.Module, tensors: list[HeadTensor], removed: dict[str, list[int]]) -> dict:
    """Cut each per-head tensor once with its readers' removed heads; the record ``restore`` replays."""
    record = {}
    for tensor in tensors:
        heads = {tuple(removed.get(u, ())) for u in tensor.users}
        if heads == {()}:
            continue
        if len(heads) > 1:
            raise ModelpressError(
                f"structured_prune: {tensor.name!r} holds one slice per head for {', '.join(tensor.users)}, "
                "which lost different heads; it cannot be cut consistently; set head_ratio: 0"
            )
        (drop,) = heads  # readers tied by prune_heads lose the same heads
        cut(model, tensor.name, tensor.dim, list(drop))
        record[tensor.name] = {"dim": tensor.dim, "heads": list(drop), "shared_by": list(tensor.users)}
    return record


def replay(model: torch.nn.Module, record: dict) -> None:
    """Cut the recorded per-head tensors of a fresh model (resume)."""
    for name, entry in record.items():
        cut(model, name, entry["dim"], entry["heads"])
