"""Torch-side quantization with bitsandbytes: LLM.int8 (``Linear8bitLt``) and 4-bit NF4/FP4 (``Linear4bit``).

bitsandbytes owns the kernels (CPU and CUDA), so a quantized layer here is the same
layer a user would build by hand. Each quantized layer keeps its dequantized weight as a
plain attribute (not in the state dict): bitsandbytes 0.50 repacks weights for its CPU
kernels on the first forward in eval mode, after which they can no longer be read back,
and export, stage checkpoints and resume all need the float values the layer computes with.
"""

from collections.abc import Callable

import torch

DEQUANTIZED = "modelpress_dequantized"
SCHEME = "modelpress_scheme"
COMPUTE_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def _int8_layer(dense: torch.nn.Linear, spec) -> tuple[torch.nn.Module, Callable]:
    import bitsandbytes as bnb

    layer = bnb.nn.Linear8bitLt(
        dense.in_features,
        dense.out_features,
        bias=dense.bias is not None,
        has_fp16_weights=False,
        threshold=spec.int8_threshold,
    )
    layer.weight = bnb.nn.Int8Params(dense.weight.data.clone(), requires_grad=False, has_fp16_weights=False)
    return layer, lambda q: q.weight.data.float() * q.weight.SCB.float()[:, None] / 127


def _four_bit_layer(quant_type: str):
    def build(dense: torch.nn.Linear, spec) -> tuple[torch.nn.Module, Callable]:
        import bitsandbytes as bnb
        import bitsandbytes.functional as bnb_functional

        layer = bnb.nn.Linear4bit(
            dense.in_features,
            dense.out_features,
            bias=dense.bias is not None,
            compute_dtype=COMPUTE_DTYPES[spec.compute_dtype],
            quant_type=quant_type,
        )
        layer.weight = bnb.nn.Params4bit(
            dense.weight.data.clone(),
            requires_grad=False,
            quant_type=quant_type,
            blocksize=spec.block_size,
            compress_statistics=spec.double_quant,
        )
        return layer, lambda q: bnb_functional.dequantize_4bit(q.weight.data, q.weight.quant_state).float()

    return build


LAYER_BUILDERS = {"int8": _int8_layer, "nf4": _four_bit_layer("nf4"), "fp4": _four_bit_layer("fp4")}


def quantize_linear(dense: torch.nn.Linear, spec) -> torch.nn.Module:
    """A bitsandbytes layer computing like ``dense`` with ``spec.scheme`` weights (CPU or CUDA)."""
    layer, dequantize = LAYER_BUILDERS[spec.scheme](dense, spec)
    if dense.bias is not None:
        layer.bias = torch.nn.Parameter(dense.bias.data.clone(), requires_grad=dense.bias.requires_grad)
    layer = layer.to(dense.weight.device)  # bitsandbytes quantizes on this move
    setattr(layer, DEQUANTIZED, dequantize(layer).reshape(dense.weight.shape).to(dense.weight.dtype))
    setattr(layer, SCHEME, spec.scheme)
    return layer.train(dense.training)


def dequantized_weight(module: torch.nn.Module) -> torch.Tensor | None:
    """The float weight a quantized layer computes with; None for any other module."""
    return getattr(module, DEQUANTIZED, None)


def scheme_of(module: torch.nn.Module) -> str | None:
    """The bitsandbytes scheme (int8, nf4, fp4) of a layer built by ``quantize_linear``."""
    return getattr(module, SCHEME, None)


def is_quantized(module: torch.nn.Module) -> bool:
    return dequantized_weight(module) is not None


def quantized_layers(model: torch.nn.Module) -> list[str]:
    return [name for name, module in model.named_modules() if is_quantized(module)]


def _float_linear(module: torch.nn.Module) -> torch.nn.Linear:
    weight = dequantized_weight(module)
    dense = torch.nn.Linear(weight.shape[1], weight.shape[0], bias=module.bias is not None, device=weight.device)
    dense.weight.data.copy_(weight)
    if module.bias is not None:
        dense.bias.data.copy_(module.bias.data.float())
    return dense


def float_copy(model: torch.nn.Module) -> torch.nn.Module:
    """``model`` itself when nothing is quantized; else a copy whose quantized layers are float
    ``nn.Linear`` holding the dequantized weights (what ONNX export and checkpoints need)."""
    names = quantized_layers(model)
    if not names:
        return model
    import copy

    clone = copy.deepcopy(model)
    for name in names:
        replace_module(clone, name, _float_linear(clone.get_submodule(name)))
    return clone


def replace_module(model: torch.nn.Module, name: str, module: torch.nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent_name), child, module)


def quantize_named(model: torch.nn.Module, names: list[str], spec) -> torch.nn.Module:
    """Replace the ``nn.Linear`` layers called ``names`` by bitsandbytes layers, in place."""
    for name in names:
        replace_module(model, name, quantize_linear(model.get_submodule(name), spec))
    return model
