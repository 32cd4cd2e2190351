"""Attention found by structure, where no layout row names its layers.

A module that looks like attention (an int attribute about heads, or a class named
``*Attention*``) with three projections fed by the same input (equal in-widths, the query a
whole number of heads, the key/value a whole number of head sizes) and an output projection
reading the query width (its own later child, or a later layer of its parent) is mapped to
an ad-hoc layout. The head count comes from the module's own int attribute, else its head
size attribute, else the Hugging Face config; a count read from the config is stamped on
the module (``modelpress_heads``), because after pruning the config no longer tells it.
Shapes alone cannot prove the data flow, so the pass's forward check after head removal is
what confirms the mapping; a module that looks like attention but matches nothing is
reported by name (``unmappable``).
"""

import re

import torch

from compress.pruning.attention_layouts import AttentionLayout, is_int, is_projection
from compress.pruning.conv1d import in_rows, out_width

STAMP = "modelpress_heads"
CONFIG_HEADS = ("num_attention_heads", "num_heads", "n_heads", "n_head", "encoder_attention_heads")
WIDTH_NAME = re.compile(r"all_head|inner")  # attributes holding heads * head size (all_head_size, inner_dim)
SIZE_ATTRS = ("head_dim", "head_size", "attention_head_size", "d_kv", "key_value_proj_dim")


def _heads_attr(module: torch.nn.Module) -> str | None:
    names = [k for k, v in vars(module).items() if "head" in k and is_int(v) and not k.endswith(("size", "dim"))]
    return next((k for k in names if "key_value" not in k and "kv" not in k), None)


def looks_like_attention(module: torch.nn.Module) -> bool:
    """An int attribute about heads (or an ``*Attention*`` class) and two projection children at least,
    a projection wrapped with its norm counting too (LeViT's Linear + BatchNorm ``MLPLayerWithBN``).

    Two: torch's MultiheadAttention keeps q/k/v in one parameter (only its output projection is
    a Linear); it is not counted.
    """
    named = "attention" in type(module).__name__.lower() or any(
        "head" in k and is_int(v) for k, v in vars(module).items()
    )
    return named and sum(is_projection(child) or _wraps_projection(child) for child in module.children()) >= 2


def _wraps_projection(module: torch.nn.Module) -> bool:
    children = list(module.children())
    return 0 < len(children) <= 2 and sum(is_projection(child) for child in children) == 1


def _config_heads(model: torch.nn.Module, module: torch.nn.Module) -> int | None:
    for owner in (module, model):
        config = getattr(owner, "config", None)
        for field in CONFIG_HEADS:
            if is_int(getattr(config, field, None)):
                return getattr(config, field)
    return None


def _output_path(model, name: str, module, children: list[tuple[str, torch.nn.Module]], width: int) -> str | None:
    """The first later projection reading ``width`` inputs: the module's own, else its parent's."""
    for child, layer in children:
        if in_rows(layer).shape[0] == width:
            return child
    if not name:
        return None
    parent_name, _, own = name.rpartition(".")
    after = False
    for sub_name, layer in model.get_submodule(parent_name).named_modules():
        after = after or sub_name == own
        inside = sub_name == own or sub_name.startswith(own + ".")
        if after and not inside and is_projection(layer) and in_rows(layer).shape[0] == width:
            return f"../{sub_name}"
    return None


def _groups_attr(module: torch.nn.Module, groups: int) -> str | None:
    return next((k for k, v in vars(module).items() if "group" in k and is_int(v) and v == groups), None)


def layout_by_structure(model: torch.nn.Module, name: str, module: torch.nn.Module) -> AttentionLayout | None:
    """An ad-hoc layout for ``module`` from shapes, or None when its q/k/v/o cannot be told."""
    children = [(n, c) for n, c in module.named_children() if is_projection(c)]
    heads_attr = _heads_attr(module)
    size_attr = next((a for a in SIZE_ATTRS if is_int(getattr(module, a, None))), None)
    for i in range(len(children) - 2):
        (q, query), (k, key), (v, value) = children[i : i + 3]
        if len({in_rows(layer).shape[0] for layer in (query, key, value)}) != 1:
            continue
        width = out_width(query)
        heads = getattr(module, heads_attr) if heads_attr else None
        heads = heads or (width // getattr(module, size_attr) if size_attr else _config_heads(model, module))
        if not heads or width % heads or out_width(key) != out_width(value) or out_width(key) % (width // heads):
            continue
        kv_heads = out_width(key) // (width // heads)
        groups = _groups_attr(module, heads // kv_heads) if kv_heads != heads else None
        output = _output_path(model, name, module, children[i + 3 :], width)
        if heads % kv_heads or (kv_heads != heads and groups is None) or output is None:
            continue
        if not heads_attr and not size_attr:
            setattr(module, STAMP, heads)  # the count survives pruning (and deepcopy) with the module
            heads_attr = STAMP
        size_attrs = tuple(
            k for k, val in vars(module).items() if val == width and is_int(val) and WIDTH_NAME.search(k)
        )
        return AttentionLayout(
            "structure",
            (q, k, v),
            output,
            heads_attr=heads_attr,
            size_attrs=size_attrs,
            head_size_attr=None if heads_attr else size_attr,
            groups_attr=groups,
        )
    return None
