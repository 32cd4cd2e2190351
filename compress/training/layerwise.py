"""Layer-wise distillation for transformers: which student block learns from which teacher block.

The blocks are found by structure, not by model name: the largest list of repeated blocks
(``compress.models.blocks``: BERT's ``encoder.layer``, Llama's ``layers``, GPT-2's ``h``).
The map sends student block i to teacher block i when the depths are equal, to teacher block
``round((i + 1) * T / S) - 1`` when they differ (uniform, as TinyBERT), or follows the
``kept_layers`` of the most recent pass that recorded them (``layer_drop``), which names the
teacher block each surviving block came from.

Two losses per mapped pair, added to the output loss:
- hidden states: MSE between the block outputs, through the FitNets projection of
  ``feature_distill`` where the widths differ (Jiao et al. 2020, TinyBERT);
- self-attention relations (MiniLMv2, Wang et al. 2021): the query, key and value
  projections' outputs are re-split into the same number of relation heads in both models,
  each gives softmax(X Xᵀ / √d) over the sequence, and the student's relations are pulled
  to the teacher's with KL divergence, averaged over Q-Q, K-K and V-V and over real
  (unpadded) tokens. Chosen over matching attention maps because it works when head
  pruning left the student with fewer heads than the teacher (each relation head spans
  several original heads in both models), and because it needs only forward hooks on the
  q/k/v Linear layers: fused attention kernels (SDPA) never materialise attention
  probabilities, and asking the model for them changes which kernel runs.
Blocks whose attention cannot be mapped (torch's MultiheadAttention, GPT-NeoX's interleaved
q/k/v) get the hidden-state loss only.
"""

import math
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from compress.core.errors import InputError
from compress.models.blocks import largest_block_list
from compress.pruning.attention import attention_modules
from compress.pruning.conv1d import out_width
from compress.training.feature_distill import FeatureMatch

MASKED = -1e9  # a score no softmax gives weight to, finite so that KL terms stay 0 * finite


def find_blocks(model: torch.nn.Module) -> str | None:
    """The trunk's list of blocks (``compress.models.blocks``), None when the model has none."""
    return largest_block_list(model)


def has_attention(block: torch.nn.Module) -> bool:
    return any(isinstance(m, torch.nn.MultiheadAttention) for m in block.modules()) or bool(attention_modules(block))


def _shapes(blocks: torch.nn.ModuleList) -> list[tuple]:
    return [tuple(p.shape) for p in blocks.parameters()]


def layer_map(
    student_depth: int, teacher_depth: int, history: list[dict], blocks: str | None = None
) -> tuple[list[int], str]:
    """Teacher block index for each student block, and where the map came from. A ``kept_layers`` record
    counts only for the same block list (``blocks``) and a teacher of the depth it was cut from."""
    kept = next(
        (
            record["kept_layers"]
            for record in reversed(history)
            if "kept_layers" in record
            and record.get("blocks", blocks) == blocks
            and record.get("teacher_depth", teacher_depth) == teacher_depth
        ),
        None,
    )
    if kept is not None:
        kept = [int(i) for i in kept]
        if len(kept) != student_depth or not all(0 <= i < teacher_depth for i in kept):
            raise InputError(
                f"distill.layerwise: the pipeline recorded kept_layers {kept}, but the student has {student_depth} "
                f"blocks and the teacher {teacher_depth}; set layerwise: off, or name features: by hand"
            )
        return kept, "kept_layers"
    if student_depth == teacher_depth:
        return list(range(student_depth)), "one_to_one"
    # floor(x + 0.5), not round(): Python rounds halves to even, which would skew the spacing
    return [math.floor((i + 1) * teacher_depth / student_depth + 0.5) - 1 for i in range(student_depth)], "uniform"


@dataclass
class AttentionPair:
    """The q/k/v taps of one mapped block in each model; fused layers hold all three."""

    student: list[str]
    teacher: list[str]


@dataclass
class LayerwisePlan:
    blocks: str
    layer_map: list[int]
    source: str
    hidden: list[FeatureMatch]
    attention: list[AttentionPair] = field(default_factory=list)
    relation_heads: int = 0

    def record(self, hidden_weight: float, relation_weight: float) -> dict:
        return {
            "blocks": self.blocks,
            "map_source": self.source,
            "hidden_weight": hidden_weight if self.hidden else 0.0,
            "relation_weight": relation_weight if self.attention else 0.0,
            "relation_heads": self.relation_heads,
            "relation_blocks": len(self.attention),
        }


def _qkv(block: torch.nn.Module, prefix: str) -> tuple[list[str], list[int], int] | None:
    """Tap names of a block's q/k/v projections, their output widths and its head count; None when unmappable."""
    found = attention_modules(block)
    if len(found) != 1:
        return None
    ((name, (module, layout)),) = found.items()
    if layout.interleaved:
        return None
    base = f"{prefix}.{name}" if name else prefix
    layers = [getattr(module, p) for p in layout.projections]
    widths = [out_width(layer) // layout.sections for layer in layers for _ in range(layout.sections)]
    return [f"{base}.{p}" for p in layout.projections], widths, layout.heads(module)


def _relation_heads(widths: list[int], wanted: int) -> int:
    """The largest count at most ``wanted`` that divides every width."""
    heads = max(1, wanted)
    while any(w % heads for w in widths):
        heads -= 1
    return heads


def plan(student, teacher, history: list[dict], hidden_weight: float, relation_weight: float) -> LayerwisePlan:
    """The layer map and the taps it needs; raises InputError when the blocks are not found in both."""
    name = _blocks_in_both(student, teacher)
    if name is None:
        raise InputError(
            f"distill.layerwise: no repeated blocks (a ModuleList of same-class modules) found in both the student "
            f"({find_blocks(student)}) and the teacher ({find_blocks(teacher)}); "
            "set layerwise: off, or name features: by hand"
        )
    s_blocks, t_blocks = student.get_submodule(name), teacher.get_submodule(name)
    mapping, source = layer_map(len(s_blocks), len(t_blocks), history, name)
    pairs = [(f"{name}.{i}", f"{name}.{t}") for i, t in enumerate(mapping)]
    # FeatureLoss sums its matches: each block gets 1/depth of the weight, so the weight is that of the mean
    share = hidden_weight / len(pairs)
    hidden = [FeatureMatch(student=s, teacher=t, weight=share) for s, t in pairs] if hidden_weight else []
    result = LayerwisePlan(name, mapping, source, hidden)
    if not relation_weight:
        return result
    widths, wanted = [], []
    for i, t in enumerate(mapping):
        s_qkv, t_qkv = _qkv(s_blocks[i], pairs[i][0]), _qkv(t_blocks[t], pairs[i][1])
        if s_qkv is None or t_qkv is None:
            continue
        result.attention.append(AttentionPair(s_qkv[0], t_qkv[0]))
        widths += s_qkv[1] + t_qkv[1]
        wanted.append(s_qkv[2])  # the student's heads: relation heads no finer than what it still has
    if result.attention:
        result.relation_heads = _relation_heads(widths, min(wanted))
    return result


def _blocks_in_both(student, teacher) -> str | None:
    name = find_blocks(student)
    return name if name is not None and find_blocks(teacher) == name else None


def structurally_changed(student, teacher, blocks: str) -> bool:
    """Whether pruning or layer dropping changed the blocks (depth or any parameter shape)."""
    return _shapes(student.get_submodule(blocks)) != _shapes(teacher.get_submodule(blocks))


def _split(features: dict, names: list[str]) -> list[torch.Tensor]:
    """Query, key and value outputs, from three layers or one fused layer."""
    outputs = [features[n].float() for n in names]
    return outputs if len(outputs) == 3 else list(outputs[0].chunk(3, dim=-1))


def _log_relations(x: torch.Tensor, heads: int, mask: torch.Tensor | None) -> torch.Tensor:
    batch, length, width = x.shape
    x = x.view(batch, length, heads, width // heads).transpose(1, 2)
    scores = x @ x.transpose(-1, -2) / math.sqrt(width // heads)
    if mask is not None:
        scores = scores.masked_fill(~mask[:, None, None, :], MASKED)
    return F.log_softmax(scores, dim=-1)


def relation_loss(student_qkv, teacher_qkv, heads: int, mask: torch.Tensor | None) -> torch.Tensor:
    """KL(teacher || student) of the Q-Q, K-K and V-V relations, mean over relation heads and real tokens."""
    total = 0.0
    for s, t in zip(student_qkv, teacher_qkv):
        log_t, log_s = _log_relations(t, heads, mask), _log_relations(s, heads, mask)
        per_query = (log_t.exp() * (log_t - log_s)).sum(-1)  # batch, heads, queries
        if mask is None:
            total = total + per_query.mean()
        else:
            weights = mask[:, None, :].to(per_query.dtype)
            total = total + (per_query * weights).sum() / (weights.sum() * heads).clamp(min=1.0)
    return total / len(student_qkv)


def attention_mask(inputs, length: int) -> torch.Tensor | None:
    """The batch's boolean padding mask (batch, length) when the inputs carry one."""
    mask = inputs.get("attention_mask") if isinstance(inputs, dict) else None
    if not isinstance(mask, torch.Tensor) or mask.dim() != 2 or mask.shape[1] != length:
        return None
    return mask.bool()


class RelationLoss:
    """Mean relation loss over the mapped blocks whose attention was mapped in both models."""

    def __init__(self, pairs: list[AttentionPair], heads: int, weight: float):
        self.pairs, self.heads, self.weight = pairs, heads, weight
        self.student_names = [n for p in pairs for n in p.student]
        self.teacher_names = [n for p in pairs for n in p.teacher]

    def __call__(self, student_features: dict, teacher_features: dict, inputs) -> torch.Tensor | float:
        if not self.pairs:
            return 0.0
        total = 0.0
        for pair in self.pairs:
            s, t = _split(student_features, pair.student), _split(teacher_features, pair.teacher)
            total = total + relation_loss(s, t, self.heads, attention_mask(inputs, s[0].shape[1]))
        return self.weight * total / len(self.pairs)


def _off(student, teacher, history, weights, hand_features) -> tuple[LayerwisePlan | None, str]:
    return None, "layerwise: off"


def _on(student, teacher, history, weights, hand_features) -> tuple[LayerwisePlan | None, str]:
    return plan(student, teacher, history, *weights), "layerwise: on"


def _auto(student, teacher, history, weights, hand_features) -> tuple[LayerwisePlan | None, str]:
    """On for a transformer whose blocks were pruned or dropped, unless features are named by hand."""
    if hand_features:
        return None, "features are named by hand"
    name = _blocks_in_both(student, teacher)
    if name is None:
        return None, "no repeated blocks found in both models"
    if not has_attention(student.get_submodule(name)[0]):
        return None, f"the blocks of {name} have no attention (not a transformer)"
    if not structurally_changed(student, teacher, name):
        return None, "the blocks are as in the teacher (not pruned or dropped)"
    return plan(student, teacher, history, *weights), "structurally pruned transformer"


MODES = {"off": _off, "on": _on, "auto": _auto}


def choose(mode: str, student, teacher, history, weights: tuple[float, float], hand_features: bool):
    """The plan for ``mode`` (auto, on, off) and why; ``weights`` = (hidden, relation)."""
    return MODES[mode](student, teacher, history, weights, hand_features)
