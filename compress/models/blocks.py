"""A transformer's blocks, found by structure rather than by model name.

A list of repeated blocks is an ``nn.ModuleList`` of composite modules of one class with one
parameter layout: BERT's ``encoder.layer``, Llama's ``model.layers``, GPT-2's ``h``, ViT's
``layers``. ``layer_drop`` removes blocks from it; layer-wise distillation maps student blocks
to teacher blocks through it.
"""

import torch


def _parameter_names(module: torch.nn.Module) -> tuple[str, ...]:
    return tuple(name for name, _ in module.named_parameters())


def block_lists(model: torch.nn.Module, min_length: int = 1) -> dict[str, torch.nn.ModuleList]:
    """Lists of repeated blocks: ModuleLists of >= ``min_length`` composite modules of one class and one
    parameter layout.

    A list inside another one's blocks (experts of a mixture-of-experts layer) is left out.
    """
    found: dict[str, torch.nn.ModuleList] = {}
    for name, module in model.named_modules():
        if not isinstance(module, torch.nn.ModuleList) or len(module) < min_length:
            continue
        if any(name.startswith(f"{outer}.") for outer in found):
            continue
        children = list(module)
        composite = all(any(True for _ in child.children()) for child in children)
        if composite and len({(type(c), _parameter_names(c)) for c in children}) == 1:
            found[name] = module
    return found


def largest_block_list(model: torch.nn.Module) -> str | None:
    """Name of the list of repeated blocks holding the most parameters (the trunk), None when there is none."""
    found = block_lists(model)
    return max(found, key=lambda name: sum(p.numel() for p in found[name].parameters()), default=None)


def without_nested_tensor_fast_path(model: torch.nn.Module) -> list[str]:
    """Turn off ``nn.TransformerEncoder``'s nested-tensor fast path; return the modules changed.

    In eval mode with a padding mask that path packs the batch as a NestedTensor and returns zeros at
    the padded positions; training never saw those zeros, no ONNX graph reproduces them (so the
    model fails parity against its own export), and Torch-Pruning's tracing hooks cannot read a
    NestedTensor. Without it the encoder computes what it computes in training, identical on the
    real tokens (attention already masks the padding)."""
    changed = []
    for name, module in model.named_modules():
        if isinstance(module, torch.nn.TransformerEncoder) and getattr(module, "use_nested_tensor", False):
            module.use_nested_tensor = False
            changed.append(name or "(the model)")
    return changed
