"""4-bit weights as ``minimum + q x scale`` per block, exact on a Q4_1 grid, on MatMulNBits' fast path.

Asymmetric round-to-nearest with the block's own minimum and maximum: ``scale = (max - min) / 15``,
``q = round((w - min) / scale)``. Weights that already sit on a 4-bit grid of blocks with a scale and
a minimum (llama.cpp's Q4_1, which SmolLM2's GGUF ships) come back exactly; any other weight gets the
usual asymmetric rounding error.

ONNX Runtime's quantizers cannot write it: their integer zero points round the minimum away (SmolLM2:
teacher-forced top-1 0.40 against fp32), and a float zero point (HQQ's layout) selects a MatMulNBits
kernel 30-40x slower than the integer one (one 576 x 1536 node: 3.6 ms against 0.12 ms). So each
MatMul ``y = x @ W`` becomes

    y = MatMulNBits(x; q, scale, zero point z) + (x @ E) @ offsets,   offsets = minimum + z x scale

the packed part on the integer path and the rest of the minimum as one small fp32 MatMul of the
input's block sums ([.., K/32] @ [K/32, N], 1/32 of the original work). ``z = round(-minimum /
scale)`` centres the codes on the weight's zero, so the packed part carries the weight itself and the
offsets only the minimum's rounding (at most half a step). That matters at ``accuracy_level`` 4, where
MatMulNBits quantizes its input to int8 per block: the input's rounding error is multiplied by
``q - z``, i.e. by the weight; with ``z = 0`` it was multiplied by ``w - minimum`` (up to twice the
block's range, all of one sign, its error never cancelled by the fp32 offsets), which cost SmolLM2
0.13 of teacher-forced top-1 at level 4 (0.86 against 0.99 at level 1; centred, the int8 inputs alone
cost about 0.03). The block sums are a MatMul with the 0/1 block indicator ``E`` [K, K/32]: one op
that keeps the input's rank (a Reshape + ReduceSum needed a Shape and a second Reshape to restore it),
shared by every MatMul that reads the same input (a gate and an up projection), so a packed MatMul
costs 3 extra small ops instead of 6 (SmolLM2 decode: +10%). At ``accuracy_level`` 1 the result equals
the float weights' on a Q4_1 grid (SmolLM2 perplexity 309.3703 vs 309.3698, top-1 1.000). The price
of exactness is bytes: 24.5 per block of 32 weights against 20 for symmetric int4, which decode speed
on a CPU follows.

``symmetric`` writes no zero points: MatMulNBits then reads the implied 8 (the block's middle code)
and the offsets carry ``minimum + 8 x scale``, still exact at fp32 compute. MLAS's kernel without
zero points skips each block's zero-point term and the half byte per block: SmolLM2 decoded 4-13%
faster in onnxruntime-genai (two timings, rows taking turns) at teacher-forced top-1 0.961 against
0.964 at level 4, since the int8 input's rounding is now multiplied by ``q - 8``, which for
blocks not centred on zero is a little more than the weight. A weight that already sits on the
symmetric grid ``k x max|w| / 7`` (k in -7..7, what ``distill.int4_grid: symmetric`` trains to) needs
no offsets: it is packed as MatMulNBits alone, one op instead of four, exactly.
"""

import numpy as np
import onnx
from onnx import helper, numpy_helper

from export.errors import ExportError

LEVELS = 16  # 4 bits
SYMMETRIC_STEPS = 7  # the symmetric grid's codes: 8 - 7 .. 8 + 7 around MatMulNBits' implied 8


def pack(
    weight: np.ndarray, block_size: int, symmetric: bool = False
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """``weight`` [K, N] -> (packed codes [N, K/block, block/2] uint8, scales [N * K/block], zero points
    [N, K/block] uint8, offsets [K/block, N]): ``w = (q - z) x scale + offset``, low nibble first as
    MatMulNBits reads the codes. ``symmetric``: every zero point is MatMulNBits' implied 8."""
    k, n = weight.shape
    if k % block_size:
        raise ExportError(f"block_minimum: K = {k} is not a multiple of block_size {block_size}")
    blocks = weight.astype(np.float32).T.reshape(n, k // block_size, block_size)
    low, high = blocks.min(-1), blocks.max(-1)
    scale = np.where(high > low, (high - low) / (LEVELS - 1), 1.0).astype(np.float32)
    codes = np.clip(np.rint((blocks - low[..., None]) / scale[..., None]), 0, LEVELS - 1).astype(np.uint8)
    zero = np.clip(np.rint(-low / scale), 0, LEVELS - 1).astype(np.uint8)  # the code nearest to w = 0
    if symmetric:
        zero = np.full_like(zero, LEVELS // 2)
    offsets = (low + zero.astype(np.float32) * scale).astype(np.float32)
    packed = (codes[..., 0::2] | (codes[..., 1::2] << 4)).astype(np.uint8)
    return packed, scale.reshape(-1), zero, np.ascontiguousarray(offsets.T)


def symmetric_codes(weight: np.ndarray, block_size: int) -> tuple[np.ndarray, np.ndarray] | None:
    """``weight`` [K, N] on the grid ``k x max|w| / 7`` per block (k in -7..7) -> (packed codes, scales)
    for MatMulNBits without zero points (code = k + 8), or None where any weight is off that grid."""
    k, n = weight.shape
    blocks = weight.astype(np.float32).T.reshape(n, k // block_size, block_size)
    top = np.abs(blocks).max(-1)
    scale = np.where(top > 0, top / SYMMETRIC_STEPS, 1.0).astype(np.float32)
    steps = np.rint(blocks / scale[..., None])
    # each block to within fp32 rounding of its own scale: training stores k x scale, and the scale
    # comes back as (7 x scale) / 7
    if (np.abs(steps * scale[..., None] - blocks) > 4 * np.finfo(np.float32).eps * top[..., None]).any():
        return None
    codes = (steps + LEVELS // 2).astype(np.uint8)
    return (codes[..., 0::2] | (codes[..., 1::2] << 4)).astype(np.uint8), scale.reshape(-1)


def dequantize(packed: np.ndarray, scales: np.ndarray, zero: np.ndarray, offsets: np.ndarray) -> np.ndarray:
    """The [K, N] weight ``pack`` stands for (tests and the record's error figures)."""
    n, blocks, half = packed.shape
    codes = np.stack([packed & 0x0F, packed >> 4], axis=-1).reshape(n, blocks, 2 * half).astype(np.float32)
    values = (codes - zero[..., None]) * scales.reshape(n, blocks, 1) + offsets.T[..., None]
    return values.reshape(n, blocks * 2 * half).T


def _pack_nibbles(zero: np.ndarray) -> np.ndarray:
    """Zero points [N, blocks] -> MatMulNBits' layout: [N * ceil(blocks / 2)] uint8, low nibble first."""
    if zero.shape[1] % 2:
        zero = np.concatenate([zero, np.zeros((zero.shape[0], 1), dtype=np.uint8)], axis=1)
    return (zero[:, 0::2] | (zero[:, 1::2] << 4)).astype(np.uint8).reshape(-1)


def _indicator(k: int, block_size: int) -> np.ndarray:
    """[K, K/block] with E[i, j] = 1 where row i is in block j: ``x @ E`` is x's block sums."""
    return np.kron(np.eye(k // block_size, dtype=np.float32), np.ones((block_size, 1), dtype=np.float32))


def _rewrite(node, weight: np.ndarray, block_size: int, accuracy_level: int, sums: str, symmetric: bool):
    """The nodes and initializers replacing one weight MatMul; ``sums`` names its input's block sums."""
    k, n = weight.shape
    base, x, y = node.name or node.output[0], node.input[0], node.output[0]
    packed, scales, zero, offsets = pack(weight, block_size, symmetric)
    names = {part: f"{base}_Q4_{part}" for part in ("codes", "scales", "zero", "min")}
    initializers = [
        numpy_helper.from_array(packed, names["codes"]),
        numpy_helper.from_array(scales, names["scales"]),
        numpy_helper.from_array(offsets, names["min"]),
    ]
    packed_inputs = [x, names["codes"], names["scales"]]
    if not symmetric:
        initializers.append(numpy_helper.from_array(_pack_nibbles(zero), names["zero"]))
        packed_inputs.append(names["zero"])
    nodes = [
        helper.make_node(
            "MatMulNBits",
            packed_inputs,
            [f"{y}_q"],
            name=f"{base}_Q4",
            domain="com.microsoft",
            K=k,
            N=n,
            bits=4,
            block_size=block_size,
            accuracy_level=accuracy_level,
        ),  # fmt: skip
        helper.make_node("MatMul", [sums, names["min"]], [f"{y}_min"], name=f"{base}_minimums"),
        helper.make_node("Add", [f"{y}_q", f"{y}_min"], [y], name=f"{base}_add"),
    ]
    return nodes, initializers


def quantize(
    model: onnx.ModelProto, nodes: list[str], block_size: int, accuracy_level: int, symmetric: bool = False
) -> onnx.ModelProto:
    """``model`` with the MatMuls named ``nodes`` (2-D constant weights) packed; the rest untouched.
    ``symmetric``: no zero points written (MatMulNBits' implied 8)."""
    graph = model.graph
    inits = {init.name: init for init in graph.initializer}
    wanted, replaced, rewritten, added = set(nodes), set(), [], []
    sums_of: dict[str, str] = {}  # input tensor -> its block sums, computed once
    indicators: set[str] = set()  # one per K
    for node in graph.node:
        weight = inits.get(node.input[1]) if node.op_type == "MatMul" and len(node.input) > 1 else None
        if node.name not in wanted or weight is None or len(weight.dims) != 2:
            rewritten.append(node)
            continue
        replaced.add(weight.name)
        values, (k, n), x = numpy_helper.to_array(weight), weight.dims, node.input[0]
        on_grid = symmetric_codes(values, block_size) if symmetric else None
        if on_grid is not None:  # exact without offsets: MatMulNBits alone
            base = node.name or node.output[0]
            names = [f"{base}_Q4_codes", f"{base}_Q4_scales"]
            added += [numpy_helper.from_array(array, name) for array, name in zip(on_grid, names)]
            rewritten.append(helper.make_node(
                "MatMulNBits", [x, *names], list(node.output), name=f"{base}_Q4", domain="com.microsoft",
                K=k, N=n, bits=4, block_size=block_size, accuracy_level=accuracy_level,
            ))  # fmt: skip
            continue
        indicator = f"block_minimum_indicator_{k}x{block_size}"
        if indicator not in indicators:
            indicators.add(indicator)
            added.append(numpy_helper.from_array(_indicator(k, block_size), indicator))
        if x not in sums_of:
            sums_of[x] = f"{x}_block_sums"
            rewritten.append(helper.make_node("MatMul", [x, indicator], [sums_of[x]], name=f"{sums_of[x]}_op"))
        new_nodes, new_inits = _rewrite(node, values, block_size, accuracy_level, sums_of[x], symmetric)
        rewritten += new_nodes
        added += new_inits
    still_read = {name for node in rewritten for name in node.input}
    kept = [init for init in graph.initializer if init.name not in replaced or init.name in still_read]
    del graph.node[:]
    graph.node.extend(rewritten)
    del graph.initializer[:]
    graph.initializer.extend([*kept, *added])
    if not any(entry.domain == "com.microsoft" for entry in model.opset_import):
        model.opset_import.append(helper.make_opsetid("com.microsoft", 1))
    return model
