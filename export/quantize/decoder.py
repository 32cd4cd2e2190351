"""Weight-only quantization of an exported decoder-with-past (the KV-cache graph) to MatMulNBits.

This module owns the decoder's weight plan: which MatMul belongs to which transformer block, which
one is the LM head and which Gather is the embedding table, and what precision each gets (the
main ``bits``, 8 bits, or float) and why. ONNX Runtime's ``MatMulNBitsQuantizer`` does the packing:
4 bits with any algorithm of ``export/quantize/int4_algorithms.py`` (its ``quantize`` is reused, so
tables a non-default algorithm cannot pack go to ``default``; ``block_minimum`` is our own packer,
exact on a Q4_1 grid), 8 bits with ``default`` only (the
only config of ORT 1.32 with a ``bits`` argument that writes integer zero points). The embedding
becomes ``GatherBlockQuantized`` at 4 bits only: ORT's quantizer refuses Gather at other widths.

Blocks are found by order, not by name: ``kv_export`` strips the per-node metadata that named the
torch module, so the weight MatMuls (LM head excluded) are split in graph order into as many equal
runs as the graph has cache layers; a graph where they do not split evenly is refused. The LM head
is the weight MatMul that ``logits`` is computed from. A tied LM head is no special case here: the
exporter either folds the transposed table into an initializer of its own (small tables) or reads
the embedding through a ``Transpose`` (SmolLM2's 49152 x 576); in the second case the LM head is
given its own transposed copy before packing (``tied.untie_lm_head``), since MatMulNBits needs a constant
weight. Either way it is packed (or kept) on its own, and the record says it is tied.
"""

import contextlib
import dataclasses
import io
import logging
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from export.errors import ExportError
from export.quantize.float_nodes import check_excluded
from export.quantize.tied import (
    SHARED_EMBEDDING,
    SHARED_EMBEDDING_INT4,
    producers,
    share_head_with_embedding,
    untie_embedding,
    untie_lm_head,
)

PRECISIONS = ("int4", "int8", "float")
# ORT's quantizer logs every node it visits at INFO; only its warnings concern the caller.
QUANTIZER_LOGGER = "onnxruntime.quantization.matmul_nbits_quantizer"
# Ops ORT leaves in place of a packed Gather or MatMul, read back to say what was really written.
PACKED_OPS = {"MatMulNBits": "MatMul", "GatherBlockQuantized": "Gather"}


@dataclass(frozen=True)
class DecoderQuantSpec:
    """What to write. ``block_precision`` maps a block index (negative counts from the last block) to
    ``int8`` or ``float`` for mixed precision; ``lm_head`` is ``quantize`` (at ``bits``), ``int8`` or
    ``float``; ``embedding`` is ``quantize`` or ``float``. ``gptq`` carries GPTQ's settings (see
    int4_algorithms) and ``algorithm`` any name it knows; 8 bits take ``default`` only."""

    bits: int = 4
    algorithm: str = "default"
    block_size: int = 32
    # 8-bit weights per scale: int8 rounds 16x finer than int4, so a longer block costs little and
    # halves the fp32 scales (3.5 MB -> 1.8 MB on SmolLM2's 49152 x 576 head). Not 128: ORT pads K
    # to whole blocks, and 576 = 4.5 x 128 would store 11% padding.
    int8_block_size: int = 64
    accuracy_level: int = 4
    symmetric: bool = True
    embedding: str = "quantize"
    lm_head: str = "quantize"
    block_precision: dict[int, str] = field(default_factory=dict)
    nodes_to_exclude: tuple[str, ...] = ()
    gptq: Any = None


@dataclass(frozen=True)
class WeightDecision:
    """One weight node: where it sits, its weight shape, the precision written and why."""

    node: str
    op: str
    role: str  # "block 3", "lm_head" or "embedding"
    shape: tuple[int, ...]
    precision: str
    reason: str


@dataclass(frozen=True)
class DecoderQuantRecord:
    source: str
    path: str
    spec: dict
    decisions: tuple[WeightDecision, ...]
    source_bytes: int
    size_bytes: int
    tied_lm_head: bool

    @property
    def quantized(self) -> list[WeightDecision]:
        return [d for d in self.decisions if d.precision != "float"]

    @property
    def kept_float(self) -> list[WeightDecision]:
        return [d for d in self.decisions if d.precision == "float"]

    def to_dict(self) -> dict:
        return {**asdict(self), "size_ratio": round(self.size_bytes / self.source_bytes, 4)}


@dataclass(frozen=True)
class _Weights:
    """The graph's weight nodes by role."""

    blocks: tuple[tuple[str, ...], ...]
    lm_head: str | None
    embedding: str | None
    shapes: dict[str, tuple[int, ...]]
    tied: bool


def _lm_head(graph, weight_of: dict[str, str]) -> str | None:
    """The weight MatMul ``logits`` comes from, walking back through single-tensor ops (Reshape, Cast)."""
    made, tensor = producers(graph), "logits"
    for _ in range(8):
        node = made.get(tensor)
        if node is None:
            return None
        if node.name in weight_of:
            return node.name
        tensor = node.input[0]
    return None


def find_weights(model: onnx.ModelProto) -> _Weights:
    """Blocks, LM head and embedding of a decoder-with-past graph (see the module docstring)."""
    graph = model.graph
    inits = {init.name: init for init in graph.initializer}
    layers = sum(i.name.startswith("past_key_values.") for i in graph.input) // 2
    matmuls = {n.name: n.input[1] for n in graph.node if n.op_type == "MatMul" and n.input[1] in inits}
    gathers = [n for n in graph.node if n.op_type == "Gather" and n.input[0] in inits and n.input[1] == "input_ids"]
    lm_head = _lm_head(graph, matmuls)
    body = [name for name in matmuls if name != lm_head]  # dict order: graph order
    if layers == 0 or len(body) % layers:
        raise ExportError(f"{len(body)} weight MatMuls do not split into {layers} equal blocks: not a decoder graph")
    per_block = len(body) // layers
    blocks = tuple(tuple(body[i : i + per_block]) for i in range(0, len(body), per_block))
    embedding = gathers[0].name if gathers else None
    shapes = {name: tuple(inits[weight].dims) for name, weight in matmuls.items()}
    tied = False
    if embedding:
        table = inits[gathers[0].input[0]]
        shapes[embedding] = tuple(table.dims)
        if lm_head and tuple(reversed(shapes[lm_head])) == shapes[embedding]:
            head = onnx.numpy_helper.to_array(inits[matmuls[lm_head]])
            tied = bool(np.array_equal(head.T, onnx.numpy_helper.to_array(table)))
    return _Weights(blocks, lm_head, embedding, shapes, tied)


def _plan(weights: _Weights, spec: DecoderQuantSpec, head_on_grid: bool) -> dict[str, tuple[str, str, str]]:
    """node -> (role, planned precision, reason), before ORT has its say. ``head_on_grid``: the LM head's
    weight sits on ``block_minimum``'s symmetric grid, so its 4-bit pack is MatMulNBits alone."""
    main = f"int{spec.bits}"
    plan: dict[str, tuple[str, str, str]] = {}
    count = len(weights.blocks)
    overrides = {index % count: precision for index, precision in spec.block_precision.items()}
    for index, block in enumerate(weights.blocks):
        precision = overrides.get(index, main)
        reason = f"block_precision[{index}] = {precision}" if index in overrides else f"bits = {spec.bits}"
        plan |= {name: (f"block {index}", precision, reason) for name in block}
    if weights.lm_head:
        precision = {"quantize": main}.get(spec.lm_head, spec.lm_head)
        reason = f"lm_head = {spec.lm_head}" + (" (tied to the embedding in torch; its own copy here)" * weights.tied)
        plan[weights.lm_head] = ("lm_head", precision, reason)
    if weights.embedding:
        if spec.embedding == "float":
            plan[weights.embedding] = ("embedding", "float", "embedding = float")
        elif weights.tied and plan.get(weights.lm_head, ("", ""))[1] == "int8":
            plan[weights.embedding] = ("embedding", "int8", SHARED_EMBEDDING)
        elif weights.tied and plan.get(weights.lm_head, ("", ""))[1] == "int4" and head_on_grid:
            plan[weights.embedding] = ("embedding", "int4", SHARED_EMBEDDING_INT4)
        elif spec.bits != 4:
            plan[weights.embedding] = ("embedding", "float", "ORT's quantizer packs Gather tables at 4 bits only")
        else:
            plan[weights.embedding] = ("embedding", "int4", "embedding = quantize (GatherBlockQuantized)")
    # a name of another graph (torch's export, or before gate and up were packed) would exclude nothing
    check_excluded(spec.nodes_to_exclude, plan, "this decoder graph has no weight node",
                   "the artifact record's decisions")  # fmt: skip
    for name in spec.nodes_to_exclude:
        plan[name] = (plan[name][0], "float", "nodes_to_exclude")
    return plan


def _head_on_symmetric_grid(model: onnx.ModelProto, weights: _Weights, spec: DecoderQuantSpec) -> bool:
    """``block_minimum`` with ``symmetric`` packs a head on its symmetric grid as MatMulNBits alone (no
    offsets), whose bytes the embedding can then read exactly."""
    from export.quantize.block_minimum import symmetric_codes

    if not (weights.tied and weights.lm_head and spec.algorithm == "block_minimum" and spec.symmetric):
        return False
    head = next(node for node in model.graph.node if node.name == weights.lm_head)
    table = next(init for init in model.graph.initializer if init.name == head.input[1])
    if table.dims[0] % spec.block_size:
        return False
    return symmetric_codes(onnx.numpy_helper.to_array(table), spec.block_size) is not None


def check_spec(spec: DecoderQuantSpec) -> None:
    from export.quantize import int4_algorithms

    choices = {"bits": (spec.bits, (4, 8)), "embedding": (spec.embedding, ("quantize", "float"))}
    choices |= {"lm_head": (spec.lm_head, ("quantize", "int8", "float"))}
    choices |= {f"block_precision[{i}]": (p, ("int8", "float")) for i, p in spec.block_precision.items()}
    for name, (value, allowed) in choices.items():
        if value not in allowed:
            raise ExportError(f"{name} = {value!r}; choose one of {allowed}")
    if spec.bits == 8 and spec.algorithm != "default":
        raise ExportError(f"8 bits: only the 'default' quantizer writes them in ORT (not {spec.algorithm!r})")
    int4_algorithms.check_spec(spec)


def _pack_8bit(model: onnx.ModelProto, spec: DecoderQuantSpec, nodes: list[str]) -> onnx.ModelProto:
    """``nodes`` (MatMuls) packed at 8 bits by ORT's default quantizer, every other MatMul left alone."""
    from onnxruntime.quantization import matmul_nbits_quantizer as module

    others = [n.name for n in model.graph.node if n.op_type == "MatMul" and n.name not in nodes]
    config = module.DefaultWeightOnlyQuantConfig(
        block_size=spec.int8_block_size,
        is_symmetric=spec.symmetric,
        accuracy_level=spec.accuracy_level,
        op_types_to_quantize=("MatMul",),
        bits=8,
    )
    quantizer = module.MatMulNBitsQuantizer(
        model, bits=8, block_size=spec.int8_block_size, is_symmetric=spec.symmetric, nodes_to_exclude=others,
        accuracy_level=spec.accuracy_level, algo_config=config,
    )  # fmt: skip
    quantizer.process()
    return quantizer.model.model


def _written(model: onnx.ModelProto) -> dict[str, str]:
    """Original node name -> the precision the written graph holds it at (packed nodes are named
    ``<name>_Q<bits>`` by every ORT quantizer)."""
    written = {}
    for node in model.graph.node:
        if node.op_type in PACKED_OPS:
            name, _, bits = node.name.rpartition("_Q")
            bits = next((a.i for a in node.attribute if a.name == "bits"), int(bits) if bits.isdigit() else 4)
            written[name] = f"int{bits}"
        elif node.op_type in PACKED_OPS.values():
            written[node.name] = "float"
    return written


def quantize_decoder(
    source: Path | str, target: Path | str, spec: DecoderQuantSpec, calibration: Any = None
) -> DecoderQuantRecord:
    """Write ``target``: the decoder at ``source`` with its weights packed per ``spec``; the record says
    what was quantized, at which width, and why anything stayed float."""
    from export.quantize import int4_algorithms

    check_spec(spec)
    logging.getLogger(QUANTIZER_LOGGER).setLevel(logging.WARNING)
    source, target = Path(source), Path(target)
    model = onnx.load(str(source))
    untied = spec.lm_head != "float" and untie_lm_head(model)
    if spec.embedding != "float" and spec.bits == 4:
        untied |= untie_embedding(model)
    weights = find_weights(model)
    if untied:
        weights = dataclasses.replace(weights, tied=True)
    plan = _plan(weights, spec, _head_on_symmetric_grid(model, weights, spec))
    shared = plan.get(weights.embedding, ("", "", ""))[2] in (SHARED_EMBEDDING, SHARED_EMBEDDING_INT4)
    by_precision = {p: [n for n, (_, planned, _) in plan.items() if planned == p] for p in PRECISIONS}
    main = f"int{spec.bits}"
    # ORT's INC-derived algorithms print progress bars; an all-zero block (the pad id's embedding row)
    # has scale 0, which ORT's quantizer divides by before it masks the result.
    with contextlib.redirect_stdout(io.StringIO()), np.errstate(divide="ignore", invalid="ignore"):
        if main == "int4" and by_precision["int8"]:
            model = _pack_8bit(model, spec, by_precision["int8"])
        if main == "int8":
            model = _pack_8bit(model, spec, by_precision["int8"])
            wrapped = None
        else:
            packs_table = weights.embedding in by_precision["int4"] and not shared
            ops = ("MatMul", "Gather") if packs_table else ("MatMul",)
            excluded = by_precision["float"] + by_precision["int8"]
            wrapped = int4_algorithms.quantize(model, spec, excluded, ops, calibration)
    if wrapped is None:  # ORT's default quantizer declared the contrib domain and wrote accuracy_level
        from onnxruntime.quantization.onnx_model import ONNXModel

        wrapped = ONNXModel(model)
    if shared:
        bits = int(plan[weights.embedding][1].removeprefix("int"))
        share_head_with_embedding(wrapped.model, weights.embedding, weights.lm_head, bits)
    wrapped.save_model_to_file(str(target), False)
    written = _written(onnx.load(str(target), load_external_data=False))
    decisions = []
    for name, (role, planned, reason) in plan.items():
        actual = written.get(name, "missing")
        if actual != planned:
            reason = f"{reason}; ORT's quantizer wrote {actual}"
        op = "Gather" if role == "embedding" else "MatMul"
        decisions.append(WeightDecision(name, op, role, weights.shapes[name], actual, reason))
    return DecoderQuantRecord(
        source=str(source),
        path=str(target),
        spec={k: v for k, v in asdict(spec).items() if k != "gptq"},
        decisions=tuple(decisions),
        source_bytes=source.stat().st_size,
        size_bytes=target.stat().st_size,
        tied_lm_head=weights.tied,
    )
