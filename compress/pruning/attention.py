"""Attention heads: found by layout, ranked, removed whole, and kept consistent.

Each layout names a family's query/key/value projections, its output projection and
its head-count attribute. A head is removed from q/k/v (output rows) and from the
output projection (input columns) with Torch-Pruning's per-layer cutters, so every
shape stays consistent; the removed indices are recorded and replayed on resume.
Families are matched by structure, not class, so relatives (RoBERTa, MiniLM, DeiT)
need no entry. Tracing alone cannot do this under transformers 5, whose attention
reshapes with ``-1`` heads and hides the q/k coupling from the dependency graph.
"""

import re
from dataclasses import dataclass

import torch
import torch_pruning as tp


@dataclass(frozen=True)
class AttentionLayout:
    family: str
    projections: tuple[str, str, str]  # query, key, value: output rows grouped by head
    output: str  # output projection, relative to the module ("../" = its parent)
    heads_attr: str
    size_attr: str | None = None  # attribute holding heads * head size, if the module keeps one

    def matches(self, module: torch.nn.Module) -> bool:
        return all(isinstance(getattr(module, p, None), torch.nn.Linear) for p in self.projections) and isinstance(
            getattr(module, self.heads_attr, None), int
        )

    def output_layer(self, model: torch.nn.Module, name: str) -> torch.nn.Linear:
        path = self.output
        while path.startswith("../"):
            name, path = name.rpartition(".")[0], path[3:]
        return model.get_submodule(f"{name}.{path}" if name else path)


LAYOUTS = (
    AttentionLayout("bert", ("query", "key", "value"), "../output.dense", "num_attention_heads", "all_head_size"),
    AttentionLayout("vit", ("q_proj", "k_proj", "v_proj"), "o_proj", "num_attention_heads"),
)

# FFN up-projections, whose common width is the config's ``intermediate_size``.
FFN_LAYERS = re.compile(r".*(intermediate\.dense|mlp\.fc1)$")


def attention_modules(model: torch.nn.Module) -> dict[str, tuple[torch.nn.Module, AttentionLayout]]:
    found = {}
    for name, module in model.named_modules():
        layout = next((lay for lay in LAYOUTS if lay.matches(module)), None)
        if layout is not None:
            found[name] = (module, layout)
    return found


def head_groups(model: torch.nn.Module) -> dict[torch.nn.Module, int]:
    """Torch-Pruning's ``num_heads``, so channel pruning never splits a head."""
    groups = {}
    for module, layout in attention_modules(model).values():
        for projection in layout.projections:
            groups[getattr(module, projection)] = getattr(module, layout.heads_attr)
    return groups


def head_scores(model: torch.nn.Module, name: str, p: int) -> torch.Tensor:
    """Lp norm of each head's weights in q, k, v and the output projection."""
    module, layout = attention_modules(model)[name]
    heads = getattr(module, layout.heads_attr)
    rows = [getattr(module, proj).weight.detach().reshape(heads, -1) for proj in layout.projections]
    columns = layout.output_layer(model, name).weight.detach().t().reshape(heads, -1)
    return torch.cat([*rows, columns], dim=1).norm(p=p, dim=1)


def remove_heads(model: torch.nn.Module, name: str, heads: list[int]) -> None:
    """Cut ``heads`` out of the attention module ``name`` and update its attributes."""
    module, layout = attention_modules(model)[name]
    count = getattr(module, layout.heads_attr)
    size = getattr(module, layout.projections[0]).out_features // count
    channels = [h * size + i for h in sorted(heads) for i in range(size)]
    for projection in layout.projections:
        tp.prune_linear_out_channels(getattr(module, projection), channels)
    tp.prune_linear_in_channels(layout.output_layer(model, name), channels)
    setattr(module, layout.heads_attr, count - len(heads))
    if layout.size_attr:
        setattr(module, layout.size_attr, getattr(module, layout.projections[0]).out_features)


def prune_heads(model: torch.nn.Module, ratio: float, p: int = 2, random: bool = False) -> dict[str, list[int]]:
    """Remove ``round(ratio * heads)`` lowest-scoring heads from every attention module."""
    removed = {}
    for name, (module, layout) in attention_modules(model).items():
        count = getattr(module, layout.heads_attr)
        drop = min(round(ratio * count), count - 1)
        if drop == 0:
            continue
        scores = torch.rand(count) if random else head_scores(model, name, p)
        removed[name] = sorted(torch.topk(scores, drop, largest=False).indices.tolist())
        remove_heads(model, name, removed[name])
    return removed


def head_counts(model: torch.nn.Module) -> dict[str, int]:
    return {name: getattr(m, lay.heads_attr) for name, (m, lay) in attention_modules(model).items()}


def update_hf_config(model: torch.nn.Module) -> dict[str, int]:
    """Keep a Hugging Face config consistent where its fields can describe the pruned model.

    ``intermediate_size`` when every FFN layer has the same width; ``num_attention_heads``
    (with ``head_dim``) only for layouts whose modules read an explicit ``head_dim`` (ViT),
    since BERT derives the head size from ``hidden_size / num_attention_heads``.
    Returns the fields it changed.
    """
    changed = {}
    widths = {m.out_features for n, m in model.named_modules() if FFN_LAYERS.fullmatch(n)}
    head_dims = {getattr(m, "head_dim", None) for m, _ in attention_modules(model).values()}
    counts = set(head_counts(model).values())
    for owner in {id(m.config): m.config for m in model.modules() if hasattr(m, "config")}.values():
        if len(widths) == 1 and hasattr(owner, "intermediate_size"):
            owner.intermediate_size = changed["intermediate_size"] = next(iter(widths))
        if len(counts) == 1 and len(head_dims) == 1 and None not in head_dims:
            owner.head_dim = changed["head_dim"] = next(iter(head_dims))
            owner.num_attention_heads = changed["num_attention_heads"] = next(iter(counts))
    return changed
