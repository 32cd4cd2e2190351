"""quantize: int8 and 4-bit, in torch (bitsandbytes) and in the exported ONNX (ONNX Runtime).

``bitsandbytes`` quantizes the torch model's Linear layers (LLM.int8, NF4, FP4); the
stage's metric is then measured on the quantized torch model. ``onnx`` lists the
quantized ONNX artifacts to build at export time with ``onnxruntime.quantization``
(see ``export/quantize/onnx_quant.py``): int8 dynamic, int8 static QDQ with calibration, or 4-bit
weight-only MatMulNBits that also packs embedding tables. Without ``onnx``, a torch
int8 model gets an int8 ONNX twin and a 4-bit one a 4-bit twin with the same block
size; with neither side given, ``scheme: auto`` picks per model family.

``max_metric_drop`` is the accuracy budget, in the task metric's units: the most
sensitive layers fall back to float until the drop on the validation split fits. Layers
are ranked first by their output SQNR on calibration data, and the metric drop is measured
only for the ``sensitivity_candidates`` lowest (``all``: for every layer).
"""

import copy
from typing import Annotated, Literal

import torch
from pydantic import Field, PositiveInt, model_validator

from compress.core import log
from compress.core.config import PassConfig, StrictModel
from compress.core.errors import InputError, SelectionError, first_line
from compress.models.data import flatten_inputs, training_inputs
from compress.models.select import select_modules
from compress.quant.bnb import dequantized_weight, quantize_named, replace_module
from compress.quant.budget import candidate_count, fit_budget
from compress.quant.sqnr import layer_sqnr
from compress.recipe.registry import register_pass

BNB_BLOCK_SIZES = Literal[32, 64, 128, 256, 512, 1024, 2048, 4096]  # what bitsandbytes' kernels take
ORT_BLOCK_SIZES = Literal[16, 32, 64, 128, 256]  # MatMulNBits: a power of two >= 16
# How many layers the budget measures the metric for, after the cheap SQNR ranking; 0 or "all": every layer.
Candidates = Annotated[int, Field(ge=0)] | Literal["all"]
DEFAULT_CANDIDATES = 8
# Calibration rows the torch side's SQNR ranking runs (the ONNX side uses calibration.samples).
RANKING_SAMPLES = 256


class BitsAndBytesSpec(StrictModel):
    """Args:
    scheme: ``int8`` (LLM.int8 Linear8bitLt), ``nf4`` or ``fp4`` (Linear4bit).
    block_size: 4-bit quantization block (weights per scale).
    compute_dtype: dtype of the 4-bit matmul.
    double_quant: quantize the 4-bit scales too (saves ~0.4 bit per weight).
    int8_threshold: LLM.int8 outlier threshold (activations above it stay in 16-bit).
    skip: Linear layers to keep in float (names or ``re:`` patterns).
    """

    scheme: Literal["int8", "nf4", "fp4"]
    block_size: BNB_BLOCK_SIZES = 64
    compute_dtype: Literal["float32", "bfloat16", "float16"] = "float32"
    double_quant: bool = True
    int8_threshold: float = Field(6.0, ge=0.0)
    skip: list[str] = Field(default_factory=list)


class CalibrationSpec(StrictModel):
    """Static int8: how activation ranges are measured on the calibration split.

    Args:
    method: ``minmax``, ``entropy`` or ``percentile``: how ONNX Runtime's calibrator sets each range.
    percentile: the percentile of absolute activations kept in range with ``method: percentile``.
    """

    method: Literal["minmax", "entropy", "percentile"] = "minmax"
    samples: PositiveInt = Field(256, le=100_000, description="calibration rows (from the calibration/train split)")
    percentile: float = Field(99.999, gt=50.0, le=100.0)


class GptqSpec(StrictModel):
    """int4 ``algorithm: gptq``: dampening and column order of ORT's GPTQ (rows: ``calibration.samples``).

    Args:
    act_order: quantize the columns in order of decreasing Hessian diagonal (GPTQ's act-order).
    mse: search each block's clipping range for the least squared error instead of using min/max.
    """

    damp: float = Field(0.01, gt=0.0, le=1.0, description="share of the mean Hessian diagonal added to it")
    act_order: bool = False
    mse: bool = False


class OnnxQuantSpec(StrictModel):
    """One quantized ONNX artifact.

    Args:
    scheme: ``int8_dynamic``, ``int8_static`` (QDQ), ``int4`` (MatMulNBits), or ``auto``
        (static for convolutional models, whose QDQ Conv ONNX Runtime fuses to QLinearConv;
        dynamic for the rest, where static QDQ MatMuls stay unfused and run slower than fp32).
    name: artifact name (default ``compressed-<scheme>``; ``auto`` named by the scheme it picks).
    per_channel: int8 weights with one scale per output channel instead of one per tensor.
    reduce_range: int8 weights on 7 bits; ``auto``: on x86 CPUs without VNNI, whose int8 kernels saturate
        at full range (``compress/quant/isa.py``), and at full range elsewhere.
    calibration: how static int8 (and GPTQ) read the calibration split.
    exclude_nodes: ONNX node names left in float (weight nodes of the fp32 artifact; any other name fails the
        variant: it would exclude nothing).
    exclude_ops: ONNX op types left in float.
    block_size: int4 weights per scale.
    symmetric: int4 without zero points (refused for ``k_quant`` and ``hqq``, which always write them).
    accuracy_level: MatMulNBits' compute type: 4 = int8 compute (fastest on CPU), 0 = dequantize to fp32;
        ``auto`` (decoders with their KV cache): level 4, with the kinds of weight whose top-1 suffers most at
        level 4 moved to 1 until the parity floor holds (``export/quantize/decoder_variant.py``).
    lm_head: a decoder's LM head: ``quantize`` (at the variant's 4 bits), ``int8`` or ``float``.
    block_precision: a decoder's transformer blocks kept at ``int8`` or ``float``, by index (-1 = the last).
    algorithm: int4 weight-only algorithm of ONNX Runtime: ``default`` (blockwise round-to-nearest),
        ``rtn``, ``k_quant``, ``hqq``, ``gptq`` (calibrated on ``calibration.samples`` rows); which the
        installed ONNX Runtime ships is checked when the pass runs (``export/quantize/int4_algorithms.py``).
    gptq: GPTQ's settings.
    quantize_embeddings: int4 also packs Gather tables (embeddings); needs export.opset >= 21.
    int4_embeddings: int8_dynamic packs Gather tables (embeddings) as int4 blocks of ``block_size``
        (GatherBlockQuantized) instead of int8, halving a transformer's largest tensor; the graph's
        opset becomes 21, as int4 tensors require.
    optimize: ONNX Runtime transformer fusions to apply before quantizing (``bert``, ``vit``, ``gpt2``).
    exporter: torch exporter of this artifact's fp32 source graph. ``torchscript`` gives graphs
        whose attention ONNX Runtime can fuse (and then quantize as QAttention); ``auto`` tries
        dynamo and falls back to TorchScript.
    opset: opset of that graph (default: export.opset).
    max_metric_drop: this variant's accuracy budget in metric units (default: the pass's).
    budget_split: the split this variant's budget is measured on (``validation`` falls back to ``eval``).
    sensitivity_candidates: how many layers this variant's budget measures (default: the pass's).
    """

    scheme: Literal["auto", "int8_dynamic", "int8_static", "int4"] = "auto"
    name: str | None = Field(None, pattern=r"^[A-Za-z0-9_.-]+$", max_length=100)
    per_channel: bool = True
    reduce_range: bool | Literal["auto"] = "auto"
    calibration: CalibrationSpec = Field(default_factory=CalibrationSpec)
    exclude_nodes: list[str] = Field(default_factory=list)
    exclude_ops: list[str] = Field(default_factory=list)
    block_size: ORT_BLOCK_SIZES = 64
    symmetric: bool = False
    accuracy_level: Literal[0, 1, 2, 3, 4, "auto"] = 4
    lm_head: Literal["quantize", "int8", "float"] = "quantize"
    block_precision: dict[int, Literal["int8", "float"]] = Field(default_factory=dict)
    algorithm: str = Field("default", pattern=r"^[a-z0-9_]+$")
    gptq: GptqSpec = Field(default_factory=GptqSpec)
    quantize_embeddings: bool = True
    int4_embeddings: bool = False
    optimize: Literal["none", "bert", "vit", "gpt2"] = "none"
    exporter: Literal["auto", "dynamo", "torchscript"] = "auto"
    opset: int | None = Field(None, ge=14, le=23)
    max_metric_drop: float | None = Field(None, ge=0.0)
    budget_split: Literal["validation", "eval"] = "validation"
    sensitivity_candidates: Candidates | None = None

    @model_validator(mode="after")
    def _int4_embeddings_scheme(self):
        if self.int4_embeddings and self.scheme not in ("int8_dynamic", "auto"):
            raise ValueError(f"int4_embeddings applies to scheme int8_dynamic, not {self.scheme}; remove it")
        return self

    @model_validator(mode="after")
    def _algorithm_scheme(self):
        if self.algorithm != "default" and self.scheme != "int4":
            raise ValueError(f"algorithm {self.algorithm} applies to scheme int4, not {self.scheme}; remove it")
        return self

    @model_validator(mode="after")
    def _torchscript_opset(self):
        if self.exporter == "torchscript" and self.opset is not None and self.opset > 20:
            raise ValueError(f"the torchscript exporter stops at opset 20 (got {self.opset}); set opset: 17")
        return self


# The ONNX twin of a torch-side scheme, when the recipe names no ONNX variant.
ONNX_TWIN = {"int8": "int8_dynamic", "nf4": "int4", "fp4": "int4"}


class QuantizeConfig(PassConfig):
    """Args:
    bitsandbytes: torch-side quantization (optional).
    onnx: quantized ONNX artifacts to export (default: the torch side's twin, or ``auto``).
    max_metric_drop: accuracy budget in metric units (e.g. 0.005 = half a point of accuracy).
    budget_split: split the budget is measured on (``validation`` falls back to ``eval``).
    sensitivity_candidates: the budget measures the metric drop only for this many layers, those
        of lowest output SQNR on calibration data; ``all`` (or 0) measures every layer.
    """

    bitsandbytes: BitsAndBytesSpec | None = None
    onnx: list[OnnxQuantSpec] | None = None
    max_metric_drop: float | None = Field(None, ge=0.0)
    budget_split: Literal["validation", "eval"] = "validation"
    sensitivity_candidates: Candidates = DEFAULT_CANDIDATES

    def onnx_variants(self) -> list[OnnxQuantSpec]:
        """The quantized ONNX artifacts this pass asks the exporter for, with the pass's budget."""
        torch_side = self.bitsandbytes
        if self.onnx is not None:
            variants = list(self.onnx)
        elif torch_side is None:
            variants = [OnnxQuantSpec()]
        else:
            twin = ONNX_TWIN[torch_side.scheme]
            opset = 21 if twin == "int4" else None  # int4 Gather tables need opset 21
            variants = [OnnxQuantSpec(scheme=twin, block_size=torch_side.block_size, opset=opset)]
        variants = [
            spec.model_copy(update={"max_metric_drop": self.max_metric_drop, "budget_split": self.budget_split})
            if spec.max_metric_drop is None
            else spec
            for spec in variants
        ]
        return [
            spec.model_copy(update={"sensitivity_candidates": self.sensitivity_candidates})
            if spec.sensitivity_candidates is None
            else spec
            for spec in variants
        ]

    def check_recipe(self, export_opset: int) -> list[str]:
        """Settings that contradict the recipe's export section."""
        return [
            f"onnx[{i}]: int4 with quantize_embeddings packs Gather tables as int4, which needs opset >= 21 "
            f"(export.opset is {export_opset}); set export.opset: 21, or the variant's opset: 21, "
            "or quantize_embeddings: false"
            for i, spec in enumerate(self.onnx_variants())
            if spec.scheme == "int4" and spec.quantize_embeddings and (spec.opset or export_opset) < 21
        ]


# bitsandbytes' CPU 4-bit kernels repack weights in tiles of 32 output features.
CPU_OUTPUT_TILE = 32


def _check_four_bit_shapes(model: torch.nn.Module, names: list[str], spec: BitsAndBytesSpec) -> None:
    def misfit(layer: torch.nn.Linear) -> bool:
        on_cpu = layer.weight.device.type == "cpu"
        return layer.in_features % spec.block_size != 0 or (on_cpu and layer.out_features % CPU_OUTPUT_TILE != 0)

    misfits = [name for name in names if misfit(model.get_submodule(name))]
    if misfits:
        raise SelectionError(
            f"quantize.bitsandbytes: {spec.scheme} needs input widths divisible by block_size {spec.block_size} "
            f"(and, on CPU, output widths divisible by {CPU_OUTPUT_TILE}); layer(s) {', '.join(misfits)} "
            "do not fit. Add them to bitsandbytes.skip, or choose a block_size that divides their input width"
        )


def _quantize_torch(model: torch.nn.Module, config: QuantizeConfig, ctx) -> torch.nn.Module:
    spec = config.bitsandbytes
    names = list(select_modules(model, ["re:.*"], spec.skip, (torch.nn.Linear,), owner="quantize.bitsandbytes"))
    if spec.scheme != "int8":
        _check_four_bit_shapes(model, names, spec)
    split = ctx.data.resolve(config.budget_split)
    reference = ctx.evaluate(model, split) if config.max_metric_drop is not None else float("nan")

    def score(quantized: list[str]) -> float:
        originals = {name: model.get_submodule(name) for name in quantized}
        quantize_named(model, quantized, spec)
        value = ctx.evaluate(model, split)
        for name, layer in originals.items():  # put the float layers back
            replace_module(model, name, layer)
        return value

    def rank() -> dict[str, float] | None:
        try:
            batches = ctx.data.batches(ctx.data.resolve("calibration"))
        except InputError as exc:
            log.warn(f"quantize: no SQNR ranking ({first_line(exc)}); the budget measures every layer")
            return None
        shadow = quantize_named(copy.deepcopy(model), names, spec)  # the quantized twins, computed once
        twins = {name: shadow.get_submodule(name) for name in names}
        return layer_sqnr(model, twins, batches, RANKING_SAMPLES)

    budget = None
    if config.max_metric_drop is not None:
        candidates = candidate_count(config.sensitivity_candidates)
        budget = fit_budget(names, score, reference, config.max_metric_drop, rank, candidates, ctx.higher_is_better)
    float_layers = budget.float_layers if budget else []
    quantized = [name for name in names if name not in float_layers]
    quantize_named(model, quantized, spec)
    log.info(f"  bitsandbytes {spec.scheme}: {len(quantized)} Linear layers quantized, {len(float_layers)} kept float")
    ctx.record(
        bitsandbytes={"scheme": spec.scheme, "layers": quantized, "float_layers": float_layers},
        budget={**budget.to_dict(), "split": split} if budget else None,
    )
    return model


def requantize(model: torch.nn.Module, record: dict, config: dict) -> torch.nn.Module:
    """After resume loaded the float weights saved for this stage, quantize the same layers again."""
    torch_side = record.get("bitsandbytes")
    if torch_side:
        layers = [name for name in torch_side["layers"] if dequantized_weight(model.get_submodule(name)) is None]
        quantize_named(model, layers, BitsAndBytesSpec.model_validate(config["bitsandbytes"]))
    return model


def _check_int4_algorithms(config: QuantizeConfig) -> list[OnnxQuantSpec]:
    """Each int4 variant's algorithm against the installed ONNX Runtime; the variants that calibrate."""
    int4 = [spec for spec in config.onnx_variants() if spec.scheme == "int4"]
    if not int4:
        return []
    from export.quantize import int4_algorithms  # onnxruntime, only when a recipe asks for int4

    for spec in int4:
        int4_algorithms.check_spec(spec)
    return [spec for spec in int4 if int4_algorithms.ALGORITHMS[spec.algorithm].needs_calibration]


def _check_calibration(static: list[OnnxQuantSpec], data) -> None:
    """Static int8 and GPTQ (``static``) need calibration rows; find out now, not after training and export."""
    if not static:
        return
    split = data.resolve("calibration")
    source = getattr(data, split)
    batches = source() if callable(source) else source
    rows = sum(int(flatten_inputs(training_inputs(batch))[1][0].shape[0]) for batch in batches or [])
    if rows == 0:
        static_int8 = any(spec.scheme == "int8_static" for spec in static)
        what = "int8_static calibrates activation ranges" if static_int8 else "int4 gptq calibrates weights"
        instead = "scheme int8_dynamic" if static_int8 else "another int4 algorithm"
        raise InputError(
            f"quantize: {what} on the {split!r} split, which is empty; "
            f"return calibration batches from the data factory, or use {instead}"
        )
    wanted = max(spec.calibration.samples for spec in static)
    if rows < wanted:
        log.warn(f"quantize: {rows} calibration rows available, fewer than the {wanted} requested")


@register_pass("quantize", QuantizeConfig, after_load=requantize)
def quantize(model: torch.nn.Module, config: QuantizeConfig, ctx) -> torch.nn.Module:
    calibrating = [spec for spec in config.onnx_variants() if spec.scheme == "int8_static"]
    _check_calibration(calibrating + _check_int4_algorithms(config), ctx.data)
    if config.bitsandbytes is not None:
        model = _quantize_torch(model, config, ctx)
    ctx.record(onnx_variants=[spec.model_dump(mode="json") for spec in config.onnx_variants()])
    return model
