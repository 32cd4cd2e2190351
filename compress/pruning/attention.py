"""Attention heads: found by layout or structure, ranked, removed whole, and kept consistent.

A layout (``attention_layouts``) names a family's query/key/value projections, its output
projection and where its head count lives; a module no row names but that looks like
attention is mapped from its shapes (``attention_structure``), or reported by name. A head
is removed from q/k/v (output rows) and from the output projection (input columns) with
Torch-Pruning's per-layer cutters, so every shape stays consistent; the removed indices
are recorded and replayed on resume. Tracing alone cannot do this under transformers 5,
whose attention reshapes with ``-1`` heads and hides the q/k coupling from the dependency graph.
"""

import math
import re

import torch

from compress.core.errors import ModelpressError
from compress.pruning.attention_layouts import LAYOUTS, AttentionLayout
from compress.pruning.attention_structure import layout_by_structure, looks_like_attention
from compress.pruning.compensation import compensate_columns
from compress.pruning.conv1d import cut_in, cut_out, in_rows, out_rows, out_width

# FFN up-projections and the config field that holds their common width.
FFN_FIELDS = (
    (re.compile(r".*(intermediate\.dense|mlp\.(fc1|gate_proj|up_proj|dense_h_to_4h))$"), "intermediate_size"),
    (re.compile(r".*mlp\.c_fc$"), "n_inner"),
)


def _has_output(layout: AttentionLayout, model: torch.nn.Module, name: str) -> bool:
    try:
        return isinstance(layout.output_layer(model, name), torch.nn.Module)
    except AttributeError:
        return False


class AttentionMapError(ModelpressError):
    """Attention heads were asked for, but the model's attention cannot be mapped."""


Found = dict[str, tuple[torch.nn.Module, AttentionLayout]]


def _layout(model: torch.nn.Module, name: str, module: torch.nn.Module) -> AttentionLayout | None:
    """The first layout row whose output projection resolves, else one read from structure.

    Rows sharing projection names differ by where the output projection sits (BERT: the
    parent's ``output.dense``; ALBERT: the module's own ``dense``).
    """
    candidates = [lay for lay in LAYOUTS if lay.matches(module)]
    layout = next((lay for lay in candidates if _has_output(lay, model, name)), None)
    if layout is None and looks_like_attention(module):
        layout = layout_by_structure(model, name, module)
    return layout


def attention_modules(model: torch.nn.Module, strict: bool = False) -> Found:
    """Attention modules whose q/k/v and output projection are all found (by layout or structure).

    With ``strict``, a module that looks like attention but cannot be mapped is reported, by
    name, in one line, before anything is cut.
    """
    found, unmapped = {}, []
    for name, module in model.named_modules():
        layout = _layout(model, name, module)
        if layout is not None:
            found[name] = (module, layout)
        elif looks_like_attention(module):
            unmapped.append(name)
    if strict and unmapped:
        module = model.get_submodule(unmapped[0])
        raise AttentionMapError(
            f"structured_prune: cannot map the attention heads of module {unmapped[0]!r} ({type(module).__name__}"
            f"{f' and {len(unmapped) - 1} more' if len(unmapped) > 1 else ''}): no q/k/v projections fed by one "
            "input with an output projection reading them were found (known layouts: "
            f"{', '.join(lay.family for lay in LAYOUTS)}); set head_ratio: 0"
        )
    return found


def head_groups(model: torch.nn.Module) -> dict[torch.nn.Module, int]:
    """Torch-Pruning's ``num_heads``, so channel pruning never splits a head."""
    groups = {}
    for module, layout in attention_modules(model).values():
        heads, kv_heads = layout.heads(module), layout.kv_heads(module)
        for i, projection in enumerate(layout.projections):
            groups[getattr(module, projection)] = heads * layout.sections if i == 0 else kv_heads
    return groups


def head_scores(model: torch.nn.Module, name: str, p: int, rms: dict | None = None) -> torch.Tensor:
    """Lp norm of each query head's weights in q (k, v when not shared) and the output projection.

    With ``rms`` (input RMS per layer, ``activation_importance.input_stats``) a head scores its
    output-projection columns scaled by the activations it writes there (Wanda-sp): what it adds to
    the block's output, which weights alone do not tell.
    """
    module, layout = attention_modules(model)[name]
    output_layer = layout.output_layer(model, name)
    output = in_rows(output_layer)
    scale = (rms or {}).get(output_layer)
    scores = []
    for head in range(layout.heads(module)):
        columns = layout.columns(module, [head])
        if scale is not None:
            scores.append((output[columns] * scale[columns, None]).norm())
            continue
        rows = layout.rows(module, [head])
        parts = [out_rows(getattr(module, projection))[idx].flatten() for projection, idx in rows.items()]
        parts.append(output[columns].flatten())
        scores.append(torch.cat(parts).norm(p=p))
    return torch.stack(scores)


def remove_heads(model: torch.nn.Module, name: str, heads: list[int]) -> None:
    """Cut the query heads ``heads`` out of the attention module ``name`` and update its attributes."""
    module, layout = attention_modules(model)[name]
    count, kv_heads = layout.heads(module), layout.kv_heads(module)
    rows, columns = layout.rows(module, heads), layout.columns(module, heads)
    for projection, idx in rows.items():
        cut_out(getattr(module, projection), idx)
    cut_in(layout.output_layer(model, name), columns)
    if layout.heads_attr:
        setattr(module, layout.heads_attr, count - len(heads))
    if layout.groups_attr and kv_heads != count:
        setattr(module, layout.groups_attr, (count - len(heads)) // kv_heads)
    for attr in layout.size_attrs:
        setattr(module, attr, layout.width(module))


def _heads_to_remove(scores: torch.Tensor, ratio: float, kv_heads: int) -> list[int]:
    """The lowest-scoring ``round(ratio * heads)`` query heads, the same number from each key/value group.

    Under grouped-query attention (query head h reads key/value head h // group) every group
    must keep the same size, since the module repeats each key/value head ``group`` times.
    Query heads are removed within each group and key/value heads are kept: a key/value head
    serves its whole group, and models with few of them (Qwen2-0.5B: 2) would lose half their
    attention with one. The count is rounded up to a multiple of the groups, so a ratio never
    rounds to nothing per group when it asks for a head; at least one query head per group stays.
    """
    heads = len(scores)
    pools = kv_heads if kv_heads < heads else 1
    size = heads // pools
    per_pool = min(math.ceil(round(ratio * heads) / pools), size - 1)
    if per_pool <= 0:
        return []
    drop = []
    for pool in range(pools):
        lowest = torch.topk(scores[pool * size : (pool + 1) * size], per_pool, largest=False).indices
        drop += (lowest + pool * size).tolist()
    return sorted(drop)


def prune_heads(
    model: torch.nn.Module,
    ratio: float,
    p: int = 2,
    random: bool = False,
    tied: list[set[str]] = (),
    rms: dict | None = None,
    mean: dict | None = None,
) -> dict[str, list[int]]:
    """Remove about ``ratio`` of the query heads, lowest-scoring first, from every attention module.

    Modules in one ``tied`` group (sharing a per-head tensor, see ``head_tensors``) are ranked
    by their summed scores, so they lose the same heads. ``rms``: see ``head_scores``. With
    ``mean`` (input mean per layer) a removed head's mean output is kept in the output
    projection's bias (``compensation``).
    """
    removed = {}
    found = attention_modules(model, strict=True)
    ranking = {
        n: torch.rand(lay.heads(m)) if random else head_scores(model, n, p, rms) for n, (m, lay) in found.items()
    }
    for group in tied:
        ranking.update(dict.fromkeys(group, sum(ranking[n] for n in group)))
    for name, (module, layout) in found.items():
        drop = _heads_to_remove(ranking[name], ratio, layout.kv_heads(module))
        if drop:
            removed[name] = drop
            output = layout.output_layer(model, name)
            if mean and output in mean:
                compensate_columns(output, layout.columns(module, drop), mean[output])
            remove_heads(model, name, drop)
    return removed


def head_counts(model: torch.nn.Module) -> dict[str, int]:
    return {name: lay.heads(m) for name, (m, lay) in attention_modules(model).items()}


def update_hf_config(model: torch.nn.Module) -> dict[str, int]:
    """Keep a Hugging Face config consistent where its fields can describe the pruned model.

    ``intermediate_size`` (GPT-2: ``n_inner``) when every FFN layer has the same width; ``num_attention_heads``
    (with ``head_dim``) only for layouts whose modules read an explicit ``head_dim`` (ViT),
    since BERT derives the head size from ``hidden_size / num_attention_heads``.
    Returns the fields it changed.
    """
    changed = {}
    found = attention_modules(model).values()
    head_dims = {getattr(m, "head_dim", None) for m, lay in found if lay.config_head_dim}
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
