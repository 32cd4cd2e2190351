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

from compress.errors import ModelpressError
from compress.pruning.conv1d import cut_in, cut_out, in_rows, is_conv1d, out_rows, out_width


@dataclass(frozen=True)
class AttentionLayout:
    family: str
    projections: tuple[str, ...]  # query, key, value layers; or one fused layer holding [q | k | v]
    output: str  # output projection, relative to the module ("../" = its parent)
    heads_attr: str
    size_attrs: tuple[str, ...] = ()  # attributes holding heads * head size

    def matches(self, module: torch.nn.Module) -> bool:
        layers = [getattr(module, p, None) for p in self.projections]
        linear = all(isinstance(layer, torch.nn.Linear) or (layer is not None and is_conv1d(layer)) for layer in layers)
        return linear and isinstance(getattr(module, self.heads_attr, None), int)

    @property
    def sections(self) -> int:
        """How many of q, k, v each projection layer holds."""
        return 3 // len(self.projections)

    def width(self, module: torch.nn.Module) -> int:
        """heads * head size: the width of one of q, k, v."""
        return out_width(getattr(module, self.projections[0])) // self.sections

    def output_layer(self, model: torch.nn.Module, name: str) -> torch.nn.Module:
        path = self.output
        while path.startswith("../"):
            name, path = name.rpartition(".")[0], path[3:]
        return model.get_submodule(f"{name}.{path}" if name else path)


LAYOUTS = (
    AttentionLayout("bert", ("query", "key", "value"), "../output.dense", "num_attention_heads", ("all_head_size",)),
    AttentionLayout("albert", ("query", "key", "value"), "dense", "num_attention_heads", ("all_head_size",)),
    AttentionLayout("vit", ("q_proj", "k_proj", "v_proj"), "o_proj", "num_attention_heads"),
    AttentionLayout("gpt2", ("c_attn",), "c_proj", "num_heads", ("split_size",)),
    AttentionLayout("mpnet", ("q", "k", "v"), "o", "num_attention_heads", ("all_head_size",)),
    AttentionLayout("distilbert", ("q_lin", "k_lin", "v_lin"), "out_lin", "n_heads"),
    AttentionLayout("t5", ("q", "k", "v"), "o", "n_heads", ("inner_dim",)),
    AttentionLayout(
        "deberta",
        ("query_proj", "key_proj", "value_proj"),
        "../output.dense",
        "num_attention_heads",
        ("all_head_size",),
    ),
)

# FFN up-projections and the config field that holds their common width.
FFN_FIELDS = (
    (re.compile(r".*(intermediate\.dense|mlp\.fc1)$"), "intermediate_size"),
    (re.compile(r".*mlp\.c_fc$"), "n_inner"),
)


def _has_output(layout: AttentionLayout, model: torch.nn.Module, name: str) -> bool:
    try:
        return isinstance(layout.output_layer(model, name), torch.nn.Module)
    except AttributeError:
        return False


def _declares_heads(module: torch.nn.Module) -> bool:
    """A module holding a head count and q/k/v Linear layers: attention, whether or not a layout maps it.

    Two Linear children at least: torch's MultiheadAttention keeps q/k/v in one parameter (only
    its output projection is a Linear) and its heads are not cut; it is warned about instead.
    """
    counts = [v for k, v in vars(module).items() if "head" in k and isinstance(v, int) and not isinstance(v, bool)]
    return bool(counts) and sum(isinstance(child, torch.nn.Linear) for child in module.children()) >= 2


class AttentionMapError(ModelpressError):
    """Attention heads were asked for, but the model's attention cannot be mapped."""


Found = dict[str, tuple[torch.nn.Module, AttentionLayout]]


def attention_modules(model: torch.nn.Module, strict: bool = False) -> Found:
    """Attention modules whose q/k/v and output projection are all found.

    Layouts sharing projection names differ by where the output projection sits (BERT: the
    parent's ``output.dense``; ALBERT: the module's own ``dense``); the first that resolves wins.
    A module matching none is skipped, or with ``strict`` reported in one line.
    """
    found = {}
    for name, module in model.named_modules():
        candidates = [lay for lay in LAYOUTS if lay.matches(module)]
        layout = next((lay for lay in candidates if _has_output(lay, model, name)), None)
        if layout is None:
            if strict and candidates:
                raise AttentionMapError(
                    f"structured_prune: attention module {name!r} ({type(module).__name__}) has q/k/v projections "
                    f"but no output projection at {' or '.join(repr(lay.output) for lay in candidates)}, "
                    "so its heads cannot be removed; set head_ratio: 0"
                )
            continue
        found[name] = (module, layout)
    return found


def head_groups(model: torch.nn.Module) -> dict[torch.nn.Module, int]:
    """Torch-Pruning's ``num_heads``, so channel pruning never splits a head."""
    groups = {}
    for module, layout in attention_modules(model).values():
        for projection in layout.projections:
            groups[getattr(module, projection)] = getattr(module, layout.heads_attr) * layout.sections
    return groups


def head_scores(model: torch.nn.Module, name: str, p: int) -> torch.Tensor:
    """Lp norm of each head's weights in q, k, v and the output projection."""
    module, layout = attention_modules(model)[name]
    heads = getattr(module, layout.heads_attr)
    parts = []
    for projection in layout.projections:
        rows = out_rows(getattr(module, projection))  # [sections * heads * size, in]
        parts += [section.reshape(heads, -1) for section in rows.chunk(layout.sections)]
    parts.append(in_rows(layout.output_layer(model, name)).reshape(heads, -1))
    return torch.cat(parts, dim=1).norm(p=p, dim=1)


def remove_heads(model: torch.nn.Module, name: str, heads: list[int]) -> None:
    """Cut ``heads`` out of the attention module ``name`` and update its attributes."""
    module, layout = attention_modules(model)[name]
    count, width = getattr(module, layout.heads_attr), layout.width(module)
    size = width // count
    channels = [h * size + i for h in sorted(heads) for i in range(size)]
    for projection in layout.projections:
        cut_out(getattr(module, projection), [s * width + c for s in range(layout.sections) for c in channels])
    cut_in(layout.output_layer(model, name), channels)
    setattr(module, layout.heads_attr, count - len(heads))
    for attr in layout.size_attrs:
        setattr(module, attr, layout.width(module))


def prune_heads(
    model: torch.nn.Module, ratio: float, p: int = 2, random: bool = False, tied: list[set[str]] = ()
) -> dict[str, list[int]]:
    """Remove ``round(ratio * heads)`` lowest-scoring heads from every attention module.

    Modules in one ``tied`` group (sharing a per-head tensor, see ``head_tensors``) are ranked
    by their summed scores, so they lose the same heads.
    """
    removed = {}
    found = attention_modules(model, strict=True)
    unmapped = [name for name, m in model.named_modules() if _declares_heads(m)]
    if not found and unmapped:
        raise AttentionMapError(
            f"structured_prune: head_ratio {ratio} asks for attention heads, but the attention of "
            f"{type(model).__name__} (e.g. module {unmapped[0]!r}) could not be mapped "
            f"(known layouts: {', '.join(lay.family for lay in LAYOUTS)}); set head_ratio: 0"
        )
    ranking = {
        n: torch.rand(getattr(m, lay.heads_attr)) if random else head_scores(model, n, p)
        for n, (m, lay) in found.items()
    }
    for group in tied:
        ranking.update(dict.fromkeys(group, sum(ranking[n] for n in group)))
    for name, (module, layout) in found.items():
        count = getattr(module, layout.heads_attr)
        drop = min(round(ratio * count), count - 1)
        if drop == 0:
            continue
        scores = ranking[name]
        removed[name] = sorted(torch.topk(scores, drop, largest=False).indices.tolist())
        remove_heads(model, name, removed[name])
    return removed


def head_counts(model: torch.nn.Module) -> dict[str, int]:
    return {name: getattr(m, lay.heads_attr) for name, (m, lay) in attention_modules(model).items()}


def update_hf_config(model: torch.nn.Module) -> dict[str, int]:
    """Keep a Hugging Face config consistent where its fields can describe the pruned model.

    ``intermediate_size`` (GPT-2: ``n_inner``) when every FFN layer has the same width; ``num_attention_heads``
    (with ``head_dim``) only for layouts whose modules read an explicit ``head_dim`` (ViT),
    since BERT derives the head size from ``hidden_size / num_attention_heads``.
    Returns the fields it changed.
    """
    changed = {}
    head_dims = {getattr(m, "head_dim", None) for m, lay in attention_modules(model).values() if lay.family == "vit"}
    counts = set(head_counts(model).values())
    for owner in {id(m.config): m.config for m in model.modules() if hasattr(m, "config")}.values():
        for pattern, field in FFN_FIELDS:
            widths = {out_width(m) for n, m in model.named_modules() if pattern.fullmatch(n)}
            if len(widths) == 1 and hasattr(owner, field):
                setattr(owner, field, next(iter(widths)))
                changed[field] = next(iter(widths))
        if len(counts) == 1 and len(head_dims) == 1 and None not in head_dims:
            owner.head_dim = changed["head_dim"] = next(iter(head_dims))
            owner.num_attention_heads = changed["num_attention_heads"] = next(iter(counts))
    return changed
