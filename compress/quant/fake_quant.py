"""Fake quantization that computes what ONNX Runtime's int8 static QDQ artifacts compute.

The scheme is the one ``quantize`` asks ``onnxruntime.quantization.quantize_static`` for on a CNN:
- activations: per tensor, uint8, asymmetric (``QuantType.QUInt8``), on the input and the output
  of every quantized Conv / Linear, as ORT's QDQ quantizer places them;
- weights: per output channel, int8, symmetric, scale = max|w| / 127 (ORT's symmetric int8 range
  is [-127, 127]);
- bias: int32 with scale = input scale x weight scale (ORT's ``quantize_bias_static``);
- BatchNorm folded into the Conv before it, as ORT's pre-processing does before quantizing.

Activations use torch's own ``torch.ao.quantization.FakeQuantize`` with a moving-average min/max
observer: its scale and zero point are ORT's (range widened to hold 0, round half to even), and
torch.onnx exports it as QuantizeLinear/DequantizeLinear. With ``learn_range`` the scale, set by
the observer on calibration data, becomes a parameter trained by LSQ's gradient (Esser et al.
2020, torch's ``_fake_quantize_learnable_per_tensor_affine``; the zero point stays the observer's):
a tensor whose range a few outlier channels dominate can then trade clipping them for a finer step
on the rest, which a min/max range never does. Weights use a small module of ours,
because torch's per-channel weight observers keep a running min/max over every step of training
(ORT scales the final weights) and torch.onnx refuses the symmetric [-127, 127] range; ours takes
the scale from the current weights and rounds on [-128, 127], where -128 is never reached.
"""

import torch
import torch.nn.functional as F
from torch import nn
from torch.ao.quantization import FakeQuantize, MovingAverageMinMaxObserver

from compress.quant.bnb import replace_module

WEIGHT_QMAX = 127
REDUCED_QMAX = 63  # reduce_range: 7-bit weights (compress/quant/isa.py)
QUANTIZED_LAYERS = (nn.Conv1d, nn.Conv2d, nn.Linear)


class ActivationFakeQuant(FakeQuantize):
    """Per-tensor uint8 fake quantization whose observer runs in training mode only.

    Plain ``FakeQuantize`` observes whenever its observer is enabled, so evaluating would move the
    ranges towards the evaluation data; here ``eval()`` freezes them.
    """

    def __init__(self, averaging_constant: float = 0.01):
        super().__init__(
            observer=MovingAverageMinMaxObserver,
            quant_min=0,
            quant_max=255,
            dtype=torch.quint8,
            qscheme=torch.per_tensor_affine,
            averaging_constant=averaging_constant,
        )

    def learn_range(self) -> None:
        """From now on the scale is a trained parameter (starting from the observed one); the observer stops."""
        self.learned_scale = nn.Parameter(self.scale.detach().clone())

    def _learned(self) -> bool:
        return "learned_scale" in self._parameters

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        learned = self._learned()
        if not torch.onnx.is_in_onnx_export():
            self.observer_enabled.fill_(int(self.training and not learned))
        if not learned or torch.onnx.is_in_onnx_export():
            return super().forward(x)  # exported as QDQ with the ``scale`` buffer
        scale = self.learned_scale.abs().clamp_min(torch.finfo(torch.float32).eps)
        self.scale.copy_(scale.detach())  # the buffer the export, the bias step and the record read
        grad_factor = 1.0 / (x.numel() * self.quant_max) ** 0.5  # LSQ's step-size gradient scale
        return torch._fake_quantize_learnable_per_tensor_affine(
            x, scale, self.zero_point.float(), self.quant_min, self.quant_max, grad_factor
        )

    def refresh_qparams(self) -> None:
        """Scale and zero point from the observer's range (after its float buffers were restored), or
        the learned scale with the observer's zero point."""
        scale, zero_point = self.calculate_qparams()
        if self._learned():
            scale = self.learned_scale.detach().abs().clamp_min(torch.finfo(torch.float32).eps)
        self.scale.copy_(scale.reshape(self.scale.shape))
        self.zero_point.copy_(zero_point.reshape(self.zero_point.shape))


class WeightFakeQuant(nn.Module):
    """Per-output-channel symmetric int8, scale from the current weights (kept as a buffer for export);
    ``qmax`` 63 holds the weights on 7 bits, which CPUs without VNNI multiply without saturating."""

    def __init__(self, channels: int, qmax: int = WEIGHT_QMAX):
        super().__init__()
        self.qmax = qmax
        self.register_buffer("scale", torch.ones(channels))
        self.register_buffer("zero_point", torch.zeros(channels, dtype=torch.int32))

    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        if not torch.onnx.is_in_onnx_export():  # in the exported graph the scale is a constant
            absmax = weight.detach().abs().reshape(weight.shape[0], -1).amax(dim=1)
            self.scale.copy_(torch.clamp(absmax / self.qmax, min=torch.finfo(torch.float32).eps))
        # codes within +-qmax by the scale alone: torch.onnx exports no other range than [-128, 127]
        return torch.fake_quantize_per_channel_affine(weight, self.scale, self.zero_point, 0, -128, 127)


class QuantizedLayer(nn.Module):
    """A Conv or Linear layer with fake-quantized input, weight, bias and output."""

    def __init__(self, layer: nn.Module, averaging_constant: float = 0.01, weight_qmax: int = WEIGHT_QMAX):
        super().__init__()
        self.layer = layer
        self.input_quant = ActivationFakeQuant(averaging_constant)
        self.weight_quant = WeightFakeQuant(layer.weight.shape[0], weight_qmax)
        self.output_quant = ActivationFakeQuant(averaging_constant)

    def _bias(self) -> torch.Tensor | None:
        bias = self.layer.bias
        if bias is None:
            return None
        step = (self.input_quant.scale * self.weight_quant.scale).detach()
        if torch.onnx.is_in_onnx_export():  # a constant holding int32 codes x step, folded to int32 later
            return (torch.round(bias / step) * step).detach()
        return bias + (torch.round(bias / step) * step - bias).detach()  # straight-through rounding

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.input_quant(x)
        weight = self.weight_quant(self.layer.weight)
        layer = self.layer
        if isinstance(layer, nn.Linear):
            y = F.linear(x, weight, self._bias())
        else:
            y = layer._conv_forward(x, weight, self._bias())
        return self.output_quant(y)


def fold_batchnorms(model: nn.Module, pairs: list[tuple[str, str]]) -> None:
    """Fold each ``(conv, batchnorm)`` pair into the conv (which gains a bias); the BN becomes Identity."""
    from torch.nn.utils.fusion import fuse_conv_bn_weights

    for conv_name, bn_name in pairs:
        conv, bn = model.get_submodule(conv_name), model.get_submodule(bn_name)
        weight, bias = fuse_conv_bn_weights(
            conv.weight, conv.bias, bn.running_mean, bn.running_var, bn.eps, bn.weight, bn.bias
        )
        conv.weight, conv.bias = weight, bias
        replace_module(model, bn_name, nn.Identity())


def conv_bn_pairs(model: nn.Module) -> list[tuple[str, str]]:
    """Conv layers whose only consumer is a BatchNorm, found by tracing the model with torch.fx.

    A model torch.fx cannot trace keeps its BatchNorms (returns no pairs); QAT then quantizes the
    conv before its BN, which stays a float op in the artifact.
    """
    try:
        graph = torch.fx.symbolic_trace(model).graph
    except Exception:  # noqa: BLE001  (tracing raises anything a forward can)
        return []
    modules = dict(model.named_modules())
    pairs = []
    for node in graph.nodes:
        if node.op != "call_module" or not isinstance(modules.get(node.target), (nn.Conv1d, nn.Conv2d)):
            continue
        users = list(node.users)
        if (
            len(users) == 1
            and users[0].op == "call_module"
            and isinstance(modules.get(users[0].target), nn.BatchNorm1d | nn.BatchNorm2d)
        ):
            pairs.append((node.target, users[0].target))
    return pairs


def insert_fake_quant(
    model: nn.Module, names: list[str], averaging_constant: float = 0.01, weight_qmax: int = WEIGHT_QMAX
) -> None:
    """Wrap the layers called ``names`` in ``QuantizedLayer``, in place, in the model's mode (an eval
    model must not get observers that record)."""
    for name in names:
        wrapper = QuantizedLayer(model.get_submodule(name), averaging_constant, weight_qmax)
        replace_module(model, name, wrapper.train(model.training))


def quantized_layers(model: nn.Module) -> dict[str, QuantizedLayer]:
    return {name: m for name, m in model.named_modules() if isinstance(m, QuantizedLayer)}


def refresh_activation_qparams(model: nn.Module) -> None:
    for module in model.modules():
        if isinstance(module, ActivationFakeQuant):
            module.refresh_qparams()


def learn_ranges(model: nn.Module) -> None:
    """Every activation quantizer's scale becomes a trained parameter (``ActivationFakeQuant.learn_range``)."""
    for module in model.modules():
        if isinstance(module, ActivationFakeQuant):
            module.learn_range()


def observe(model: nn.Module, enabled: bool) -> None:
    """Let only the activation observers run (``True``) while the rest of the model stays in eval mode."""
    for module in model.modules():
        if isinstance(module, ActivationFakeQuant):
            module.train(enabled)


def float_twin(model: nn.Module) -> nn.Module:
    """``model`` itself when it has no fake quantization; else a copy with the plain (QAT-trained) layers."""
    names = list(quantized_layers(model))
    if not names:
        return model
    import copy

    clone = copy.deepcopy(model)
    for name in names:
        replace_module(clone, name, clone.get_submodule(name).layer)
    return clone
