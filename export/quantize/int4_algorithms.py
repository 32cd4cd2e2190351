"""The 4-bit weight-only algorithms of ONNX Runtime's ``MatMulNBitsQuantizer``, as ``int4`` options.

``ALGORITHMS`` maps the recipe's ``algorithm`` name to the ORT config class that runs it and what
it honours: ``default`` (blockwise round-to-nearest, the only one that also packs Gather tables),
``rtn`` (round-to-nearest from ORT's copy of Intel Neural Compressor), ``k_quant`` (llama.cpp's
k-quant scale search), ``hqq`` (half-quadratic zero-point fitting, float zero points) and ``gptq``
(Hessian-based error feedback on the recipe's calibration rows). Which of them the installed ORT
ships is read from its module, never assumed. ``nvidia_awq``, also shipped, calibrates decoder
LLMs on a Hugging Face dataset it downloads (through ``modelopt``), so it cannot use the recipe's
data and is refused with that reason.

Every algorithm writes MatMulNBits nodes; tables a non-default algorithm cannot pack (Gather)
go to ``default``, so artifacts that differ in algorithm differ only in their MatMul weights.

Caveat, measured with onnxruntime 1.32: its GPTQ (``neural_compressor/weight_only.py: gptq``) feeds
each row's rounding error forward through a column of the upper Cholesky factor, which is zero
below the diagonal, so later rows never receive it and the result is round-to-nearest on GPTQ's
grid (a random 256x128 layer on correlated inputs: 21.8 dB output SQNR, as rtn; 25.3 dB with the
error fed forward along the factor's row). modelpress runs it as shipped.
``hqq``'s float zero points take a slower MatMulNBits kernel path: one 384x1536 matmul on one
thread ran 2.45 ms vs 0.47 ms for ``default`` at 16 rows, 13.9 vs 10.4 ms at 512.
"""

import contextlib
import importlib.util
import io
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from compress.core.errors import InputError

QUANTIZER_MODULE = "onnxruntime.quantization.matmul_nbits_quantizer"


@dataclass(frozen=True)
class Int4Algorithm:
    """One algorithm: its ORT config class, how to build it, and which settings it honours.

    ``make_config(module, spec, ops, calibration)`` builds the config; ``calibration`` is a
    data reader over the recipe's calibration split, or None when ``needs_calibration`` is false.
    Block size, symmetry and accuracy level reach the INC-derived algorithms (rtn, k_quant, gptq)
    through ``MatMulNBitsQuantizer``'s own arguments, which every algorithm is given.
    """

    config_class: str
    make_config: Callable[[Any, Any, tuple[str, ...], Any], Any]
    ops: tuple[str, ...] = ("MatMul",)  # weight ops it packs; the rest go to ``default``
    symmetric: bool = True  # honours ``symmetric: true`` (else it always writes zero points)
    needs_calibration: bool = False
    requires: tuple[str, ...] = ()  # Python packages it imports beyond onnxruntime
    # A packer of our own, for a layout ORT's quantizers cannot write: (model, spec, excluded) -> model.
    pack: Callable[[Any, Any, list[str]], Any] | None = None


def _default(module, spec, ops, calibration):
    return module.DefaultWeightOnlyQuantConfig(
        block_size=spec.block_size,
        is_symmetric=spec.symmetric,
        accuracy_level=spec.accuracy_level,
        op_types_to_quantize=ops,
        quant_axes=(("MatMul", 0), ("Gather", 1)),
    )


def _rtn(module, spec, ops, calibration):
    return module.RTNWeightOnlyQuantConfig(op_types_to_quantize=ops)


def _k_quant(module, spec, ops, calibration):
    return module.KQuantWeightOnlyQuantConfig(op_types_to_quantize=ops)


def _hqq(module, spec, ops, calibration):
    return module.HQQWeightOnlyQuantConfig(block_size=spec.block_size, op_types_to_quantize=ops)


def _gptq(module, spec, ops, calibration):
    gptq = spec.gptq
    return module.GPTQWeightOnlyQuantConfig(
        calibration_data_reader=calibration,
        percdamp=gptq.damp,
        actorder=gptq.act_order,
        mse=gptq.mse,
        op_types_to_quantize=ops,
    )


def _block_minimum(model, spec, excluded: list[str]):
    """Every MatMul with a 2-D constant weight whose rows the block size divides, as ``block_minimum``
    writes it (the others stay float, as ORT's quantizers leave them)."""
    from export.quantize import block_minimum

    shapes = {init.name: tuple(init.dims) for init in model.graph.initializer}
    nodes = [
        node.name
        for node in model.graph.node
        if node.op_type == "MatMul" and node.name not in excluded and len(shapes.get(node.input[1], ())) == 2
        and shapes[node.input[1]][0] % spec.block_size == 0
    ]  # fmt: skip
    return block_minimum.quantize(model, nodes, spec.block_size, spec.accuracy_level, spec.symmetric)


ALGORITHMS: dict[str, Int4Algorithm] = {
    "default": Int4Algorithm("DefaultWeightOnlyQuantConfig", _default, ops=("MatMul", "Gather")),
    "rtn": Int4Algorithm("RTNWeightOnlyQuantConfig", _rtn),
    "k_quant": Int4Algorithm("KQuantWeightOnlyQuantConfig", _k_quant, symmetric=False),
    "hqq": Int4Algorithm("HQQWeightOnlyQuantConfig", _hqq, symmetric=False, requires=("torch",)),
    "gptq": Int4Algorithm("GPTQWeightOnlyQuantConfig", _gptq, needs_calibration=True),
    # Ours: each block's minimum and maximum, exact on a Q4_1 grid, on MatMulNBits' integer path.
    "block_minimum": Int4Algorithm("", None, pack=_block_minimum),
}
# Shipped by ONNX Runtime but not offered, with the reason the refusal gives.
REFUSED = {
    "nvidia_awq": (
        "it calibrates decoder LLMs on a Hugging Face dataset it downloads (and needs the modelopt package), "
        "not on the recipe's data"
    ),
}


def _quantizer_module():
    try:
        return importlib.import_module(QUANTIZER_MODULE)
    except ImportError as exc:
        raise InputError(
            f"int4 needs onnxruntime's {QUANTIZER_MODULE} ({exc}); pip install 'modelpress[export]'"
        ) from None


def available() -> list[str]:
    """The algorithms whose config class the installed ONNX Runtime ships."""
    module = _quantizer_module()
    return [
        name
        for name, algorithm in ALGORITHMS.items()
        if algorithm.pack is not None or hasattr(module, algorithm.config_class)
    ]


def require(name: str) -> Int4Algorithm:
    """The algorithm ``name``, checked against the installed ONNX Runtime and packages; else InputError."""
    shipped = available()
    if name in REFUSED:
        raise InputError(f"int4 algorithm {name!r} is not supported: {REFUSED[name]}; choose one of {shipped}")
    if name not in ALGORITHMS:
        raise InputError(f"int4 algorithm {name!r} is unknown; choose one of {shipped}")
    if name not in shipped:
        import onnxruntime

        raise InputError(
            f"int4 algorithm {name!r}: the installed onnxruntime {onnxruntime.__version__} does not ship "
            f"{ALGORITHMS[name].config_class}; choose one of {shipped}, or upgrade onnxruntime"
        )
    algorithm = ALGORITHMS[name]
    missing = [package for package in algorithm.requires if importlib.util.find_spec(package) is None]
    if missing:
        raise InputError(f"int4 algorithm {name!r} needs the package(s) {', '.join(missing)}: pip install {missing[0]}")
    return algorithm


def check_spec(spec) -> None:
    """The variant's int4 settings against its algorithm: ``symmetric`` only where the algorithm honours it."""
    algorithm = require(spec.algorithm)
    if spec.symmetric and not algorithm.symmetric:
        raise InputError(
            f"int4 algorithm {spec.algorithm!r} always writes zero points (asymmetric); remove symmetric: true"
        )


def plan(algorithm: str, ops: tuple[str, ...]) -> list[tuple[str, tuple[str, ...]]]:
    """Which algorithm packs which ops: the chosen one its own, ``default`` the tables it cannot."""
    own = tuple(op for op in ops if op in ALGORITHMS[algorithm].ops)
    rest = tuple(op for op in ops if op not in own)
    steps = [(algorithm, own)] if own else []
    return steps + ([("default", rest)] if rest else [])


def quantize(model, spec, excluded: list[str], ops: tuple[str, ...], calibration) -> Any:
    """``model`` (ModelProto) with ``ops``' weights packed as 4-bit blocks by ``spec.algorithm``, as
    ORT's model wrapper (whose ``save_model_to_file`` sorts and checks the graph as ORT saves it)."""
    from onnxruntime.quantization.onnx_model import ONNXModel

    module = _quantizer_module()
    wrapped = ONNXModel(model)  # no step when every op is excluded: the graph as it came
    for name, step_ops in plan(spec.algorithm, ops):
        algorithm = require(name)
        if algorithm.pack is not None:
            model = algorithm.pack(model, spec, excluded)
            wrapped = ONNXModel(model)
            continue
        config = algorithm.make_config(module, spec, step_ops, calibration if algorithm.needs_calibration else None)
        quantizer = _quantizer_class(module)(
            model,
            block_size=spec.block_size,
            is_symmetric=spec.symmetric,
            accuracy_level=spec.accuracy_level,
            nodes_to_exclude=excluded,
            algo_config=config,
        )
        with contextlib.redirect_stdout(io.StringIO()):  # the INC-derived algorithms print progress bars
            quantizer.process()
        wrapped, model = quantizer.model, quantizer.model.model
    _finish(model, spec.accuracy_level)
    return wrapped


def _quantizer_class(module):
    class ExcludingQuantizer(module.MatMulNBitsQuantizer):
        """ORT 1.32 hands ``nodes_to_exclude`` to rtn and k_quant but not to gptq (its node config
        lacks them): mark excluded nodes ``fp32`` in the node config every INC-derived algorithm reads."""

        def _generate_q4_node_config(self):
            return {**super()._generate_q4_node_config(), **dict.fromkeys(self.nodes_to_exclude, "fp32")}

    return ExcludingQuantizer


def _finish(model, accuracy_level: int) -> None:
    """Declare the contrib domain (the INC-derived algorithms write MatMulNBits without importing it),
    and give MatMulNBits nodes written without ``accuracy_level`` (hqq takes none) the variant's: it is
    the kernel's compute type, independent of how the weights were chosen."""
    import onnx

    if not any(o.domain == "com.microsoft" for o in model.opset_import):
        model.opset_import.append(onnx.helper.make_opsetid("com.microsoft", 1))
    for node in model.graph.node:
        levels = [a for a in node.attribute if a.name == "accuracy_level"]
        if node.op_type == "MatMulNBits" and not levels and accuracy_level:
            node.attribute.append(onnx.helper.make_attribute("accuracy_level", accuracy_level))


def facts(model, spec, ops: tuple[str, ...]) -> dict:
    """What the written int4 graph holds: the algorithm per op, and its MatMulNBits nodes' settings."""
    initializers = {init.name: init for init in model.graph.initializer}
    nbits = [node for node in model.graph.node if node.op_type == "MatMulNBits"]

    def attribute(node, name):
        return next((a.i for a in node.attribute if a.name == name), 0)

    def zero_points(node) -> str:
        if len(node.input) < 4 or not node.input[3]:
            return "none (symmetric)"
        init = initializers.get(node.input[3])
        return "float" if init is not None and init.data_type in (1, 10, 16) else "uint4"

    return {
        "algorithm": spec.algorithm,
        "ops": {op: name for name, step_ops in plan(spec.algorithm, ops) for op in step_ops},
        "matmul_nbits": len(nbits),
        "gather_block_quantized": sum(node.op_type == "GatherBlockQuantized" for node in model.graph.node),
        "block_sizes": sorted({attribute(node, "block_size") for node in nbits}),
        "accuracy_levels": sorted({attribute(node, "accuracy_level") for node in nbits}),
        "zero_points": sorted({zero_points(node) for node in nbits}),
    }
