"""Where an attention module keeps its heads: the layout table and its geometry.

A layout names a family's query/key/value projections, its output projection and where
its head count lives: an int attribute (BERT's ``num_attention_heads``), or only a head
size (Llama's ``head_dim``, GPT-NeoX's ``head_size``: transformers 5 reshapes with ``-1``
heads), from which the count follows by width. Each layout answers one question for head
removal: which rows of each projection and which output columns belong to a query head.

Grouped-query attention (fewer key/value heads than query heads) is read from the widths:
key/value rows are shared by a group of query heads, so they are never cut by the query
heads' rows (see ``attention.prune_heads`` for how groups stay consistent).
"""

from dataclasses import dataclass

import torch

from compress.pruning.conv1d import is_conv1d, out_width


def is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def is_projection(layer) -> bool:
    return isinstance(layer, torch.nn.Linear) or (layer is not None and is_conv1d(layer))


@dataclass(frozen=True)
class AttentionLayout:
    family: str
    projections: tuple[str, ...]  # query, key, value layers; or one fused layer holding all three
    output: str  # output projection, relative to the module ("../" = its parent)
    heads_attr: str | None = None  # int attribute holding the query-head count
    size_attrs: tuple[str, ...] = ()  # attributes holding heads * head size
    head_size_attr: str | None = None  # int attribute holding the head size, where no count is kept
    interleaved: bool = False  # fused rows ordered [heads, q|k|v, size] (GPT-NeoX), not [q|k|v, heads, size]
    groups_attr: str | None = None  # query heads per key/value head, read by the module (GQA)
    config_head_dim: bool = False  # its modules read an explicit ``head_dim`` from the config

    def matches(self, module: torch.nn.Module) -> bool:
        if not all(is_projection(getattr(module, p, None)) for p in self.projections):
            return False
        if self.heads_attr:
            return is_int(getattr(module, self.heads_attr, None))
        return is_int(getattr(module, self.head_size_attr or "", None))

    @property
    def sections(self) -> int:
        """How many of q, k, v each projection layer holds."""
        return 3 // len(self.projections)

    def width(self, module: torch.nn.Module) -> int:
        """heads * head size: the width of the query."""
        return out_width(getattr(module, self.projections[0])) // self.sections

    def heads(self, module: torch.nn.Module) -> int:
        if self.heads_attr:
            return getattr(module, self.heads_attr)
        return self.width(module) // getattr(module, self.head_size_attr)

    def size(self, module: torch.nn.Module) -> int:
        return self.width(module) // self.heads(module)

    def kv_heads(self, module: torch.nn.Module) -> int:
        if self.sections == 3:
            return self.heads(module)
        return out_width(getattr(module, self.projections[1])) // self.size(module)

    def output_layer(self, model: torch.nn.Module, name: str) -> torch.nn.Module:
        path = self.output
        while path.startswith("../"):
            name, path = name.rpartition(".")[0], path[3:]
        return model.get_submodule(f"{name}.{path}" if name else path)

    def rows(self, module: torch.nn.Module, heads: list[int]) -> dict[str, list[int]]:
        """Output rows of each projection that belong to the query heads ``heads`` alone.

        Under grouped-query attention a key/value head serves a whole group, so its rows
        belong to no single query head: only the query rows are listed.
        """
        count, size = self.heads(module), self.size(module)
        channels = [h * size + i for h in sorted(heads) for i in range(size)]
        if self.sections == 3 and self.interleaved:
            return {self.projections[0]: [h * 3 * size + c for h in sorted(heads) for c in range(3 * size)]}
        if self.sections == 3:
            return {self.projections[0]: [s * count * size + c for s in range(3) for c in channels]}
        query, key, value = self.projections
        if self.kv_heads(module) != count:
            return {query: channels}
        return {query: channels, key: channels, value: channels}

    def columns(self, module: torch.nn.Module, heads: list[int]) -> list[int]:
        """Input columns of the output projection that read the query heads ``heads``."""
        size = self.size(module)
        return [h * size + i for h in sorted(heads) for i in range(size)]


LAYOUTS = (
    AttentionLayout("bert", ("query", "key", "value"), "../output.dense", "num_attention_heads", ("all_head_size",)),
    AttentionLayout("albert", ("query", "key", "value"), "dense", "num_attention_heads", ("all_head_size",)),
    AttentionLayout("vit", ("q_proj", "k_proj", "v_proj"), "o_proj", "num_attention_heads", config_head_dim=True),
    # Llama, Qwen2, Mistral: no count kept, heads reshaped with -1; GQA groups read by repeat_kv.
    AttentionLayout(
        "llama",
        ("q_proj", "k_proj", "v_proj"),
        "o_proj",
        head_size_attr="head_dim",
        groups_attr="num_key_value_groups",
        config_head_dim=True,
    ),
    AttentionLayout("gpt2", ("c_attn",), "c_proj", "num_heads", ("split_size",)),
    AttentionLayout("gpt-neox", ("query_key_value",), "dense", head_size_attr="head_size", interleaved=True),
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
