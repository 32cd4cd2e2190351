"""qat: quantization-aware training, distilled from the float teacher, exported as int8 QDQ ONNX.

Where post-training int8 static loses too much, train through the quantization instead. The pass
folds BatchNorm into the convolutions before it (as ONNX Runtime does before quantizing), wraps
every Conv/Linear in fake quantization of ORT's int8 static QDQ arithmetic (per-tensor uint8
activations on each layer's input and output, per-channel symmetric int8 weights, int32 bias;
see ``compress/quant/fake_quant.py``), calibrates the activation ranges on the calibration split,
then fine-tunes with the ``distill`` loss and training loop from the model as it entered the
pipeline. The observers keep tracking the ranges during training and freeze in eval mode.

The stage metric is the fake-quant torch model's. At export, that model goes to ONNX as
QuantizeLinear/DequantizeLinear with the learned scales (``export/quantize/qat_artifact.py``, artifact
``compressed-int8_qat``), whose ORT outputs are checked against it within one quantization step
of the last quantized layer's output; the ``compressed`` fp32 artifact holds the QAT-trained
weights without quantization.
"""

from pydantic import Field, PositiveInt, model_validator

from compress.core import log
from compress.core.config import StrictModel
from compress.core.errors import InputError
from compress.models.data import call_model, flatten_inputs, training_inputs
from compress.models.select import select_modules
from compress.passes.distill import DistillConfig, distill
from compress.quant.fake_quant import (
    QUANTIZED_LAYERS,
    REDUCED_QMAX,
    WEIGHT_QMAX,
    conv_bn_pairs,
    fold_batchnorms,
    insert_fake_quant,
    learn_ranges,
    observe,
    quantized_layers,
    refresh_activation_qparams,
)
from compress.recipe.registry import register_pass

DEFAULT_ARTIFACT = "compressed-int8_qat"


class QatOnnxSpec(StrictModel):
    """The int8 QDQ artifact of a QAT model (built by ``export/quantize/qat_artifact.py``)."""

    scheme: str = "int8_qat"
    name: str = Field(DEFAULT_ARTIFACT, pattern=r"^[A-Za-z0-9_.-]+$")
    opset: int = Field(17, ge=13, le=20, description="TorchScript export, which writes fake quantization as QDQ")
    parity_steps: float = Field(1.0, gt=0.0, le=100.0)
    max_metric_drop: None = None  # no budget: every selected layer is quantized


class QatConfig(DistillConfig):
    """Args (besides every ``distill`` key, which set the training: loss, epochs, max_steps, lr, ...):
    exclude: Conv/Linear layers to leave in float (names or ``re:`` patterns).
    fold_batchnorm: fold BatchNorm into the Conv before it first (as ORT's pre-processing does).
    calibration_samples: rows of the calibration split that set the initial activation ranges.
    averaging_constant: the activation observers' moving-average weight per training step.
    learn_ranges: after calibration, train each activation scale (LSQ) instead of tracking min/max:
        for tensors whose range a few outlier channels dominate, where min/max ranges cannot recover.
    name: name of the int8 ONNX artifact.
    parity_steps: ORT vs fake-quant torch tolerance, in quantization steps of the last quantized
        layer's output.
    reduce_range: weights on 7 bits ([-64, 63]), which x86 CPUs without VNNI multiply without
        saturating (``compress/quant/isa.py``); a choice of the recipe, not of the machine, so that
        the same recipe trains the same model everywhere.
    opset: opset of the QDQ artifact (13-20: per-channel QuantizeLinear, TorchScript exporter).
    epochs: training length in epochs (fewer than distill's: QAT starts from the trained model); with
        ``max_steps``, whichever ends first.
    lr: peak learning rate of AdamW, smaller than distill's: fake-quantized weights move between grid steps.

    Training is bounded by ``epochs`` and ``max_steps``; ``max_seconds`` is refused, so that the
    same recipe gives the same model on every machine.
    """

    exclude: list[str] = Field(default_factory=list)
    fold_batchnorm: bool = True
    calibration_samples: PositiveInt = Field(256, le=100_000)
    averaging_constant: float = Field(0.01, gt=0.0, le=1.0)
    learn_ranges: bool = False
    name: str = Field(DEFAULT_ARTIFACT, pattern=r"^[A-Za-z0-9_.-]+$")
    parity_steps: float = Field(1.0, gt=0.0, le=100.0)
    reduce_range: bool = False
    opset: int = Field(17, ge=13, le=20)
    epochs: int = Field(3, ge=1, le=100_000)
    lr: float = Field(1e-4, gt=0.0, le=1.0)

    @model_validator(mode="after")
    def _bounded_by_steps(self):
        if self.max_seconds is not None:
            raise ValueError(
                "qat is bounded by epochs and max_steps, not by time (a time budget makes the model "
                "machine-dependent); remove max_seconds and set max_steps"
            )
        return self

    def onnx_variants(self) -> list[QatOnnxSpec]:
        return [QatOnnxSpec(name=self.name, opset=self.opset, parity_steps=self.parity_steps)]


def _calibrate(model, data, samples: int) -> int:
    """Run calibration rows through the model with only the activation observers recording."""
    import torch

    split = data.resolve("calibration")
    rows = 0
    model.eval()
    observe(model, True)
    try:
        with torch.no_grad():
            for batch in data.batches(split):
                call_model(model, training_inputs(batch))
                rows += int(flatten_inputs(training_inputs(batch))[1][0].shape[0])
                if rows >= samples:
                    break
    finally:
        observe(model, False)
    if rows == 0:
        raise InputError(
            f"qat: activation ranges are calibrated on the {split!r} split, which is empty; "
            "return calibration (or train) batches from the data factory"
        )
    return rows


def _prepare(model, pairs: list, names: list, averaging_constant: float, weight_qmax: int) -> None:
    fold_batchnorms(model, [tuple(pair) for pair in pairs])
    insert_fake_quant(model, names, averaging_constant, weight_qmax)


def restore(model, record: dict, example_inputs) -> None:
    """On resume: the same folds and wrappers, so the saved weights and quantizer state load again."""
    qmax = record.get("weight_qmax", WEIGHT_QMAX)
    _prepare(model, record["folded_batchnorms"], record["quantized_layers"], record["averaging_constant"], qmax)
    if record.get("learn_ranges"):
        learn_ranges(model)


@register_pass("qat", QatConfig, restore=restore)
def qat(model, config: QatConfig, ctx):
    if quantized_layers(model):
        raise InputError("qat: the model already holds fake quantization (a second qat pass); keep one qat pass")
    model.eval()
    pairs = conv_bn_pairs(model) if config.fold_batchnorm else []
    names = list(select_modules(model, ["re:.*"], config.exclude, QUANTIZED_LAYERS, owner="qat"))
    weight_qmax = REDUCED_QMAX if config.reduce_range else WEIGHT_QMAX
    _prepare(model, pairs, names, config.averaging_constant, weight_qmax)
    rows = _calibrate(model, ctx.data, config.calibration_samples)
    if config.learn_ranges:
        learn_ranges(model)
    split = ctx.data.resolve("validation")
    before = ctx.evaluate(model, split)
    log.info(f"  qat: {len(names)} layers fake-quantized, {len(pairs)} BatchNorms folded; {split} {before:.4f}")
    model = distill(model, config, ctx)
    refresh_activation_qparams(model)  # the best epoch's float buffers came back; zero points follow
    ctx.record(
        folded_batchnorms=[list(pair) for pair in pairs],
        quantized_layers=names,
        averaging_constant=config.averaging_constant,
        weight_qmax=weight_qmax,
        learn_ranges=config.learn_ranges,
        calibration_rows=rows,
        metric_before_training=before,
        activation_qparams={
            name: {
                "input": [float(layer.input_quant.scale), int(layer.input_quant.zero_point)],
                "output": [float(layer.output_quant.scale), int(layer.output_quant.zero_point)],
            }
            for name, layer in quantized_layers(model).items()
        },
    )
    return model
