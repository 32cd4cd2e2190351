"""Plain functions measuring a model: parameter counts, MACs, sparsity, fingerprints, SQNR."""

import hashlib

import torch


def count_params(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def count_nonzero_params(model: torch.nn.Module) -> int:
    return sum(int(torch.count_nonzero(p)) for p in model.parameters())


def dense_bytes(model: torch.nn.Module) -> int:
    """Bytes of the parameters stored densely, zeros included: the size pruning alone does not change."""
    return sum(p.numel() * p.element_size() for p in model.parameters())


def count_macs(model: torch.nn.Module, example_inputs) -> int | None:
    """MACs by Torch-Pruning's counter; None where it cannot count every layer (Hugging Face Conv1D) or
    cannot run the model as it traces it (an op it does not know; nn.TransformerEncoder's fast path
    with a padding mask turns activations into NestedTensors, which its hooks cannot read)."""
    import torch_pruning as tp

    from compress.pruning.conv1d import conv1d_types

    if conv1d_types(model):
        return None
    try:
        return int(tp.utils.count_ops_and_params(model, example_inputs)[0])
    except (RuntimeError, TypeError, ValueError, AttributeError):
        return None


def layer_table(model: torch.nn.Module) -> list[dict]:
    """Per weight layer, in model order: parameters, non-zero weights, sparsity and precision
    (the bitsandbytes scheme, or the dtype)."""
    from compress.models.select import WEIGHT_LAYERS
    from compress.quant.bnb import dequantized_weight, scheme_of

    rows = []
    for name, module in model.named_modules():
        weight = dequantized_weight(module)
        precision = scheme_of(module) if weight is not None else None
        if weight is None and isinstance(module, (*WEIGHT_LAYERS, torch.nn.Embedding)):
            weight = module.weight
            precision = str(weight.dtype).removeprefix("torch.")
        if weight is None or not name:
            continue
        nonzero = int(torch.count_nonzero(weight))
        rows.append(
            {
                "name": name,
                "type": type(module).__name__,
                "params": weight.numel(),
                "nonzero": nonzero,
                "sparsity": round(1 - nonzero / max(weight.numel(), 1), 4),
                "precision": precision,
            }
        )
    return rows


def weights_fingerprint(model: torch.nn.Module) -> str:
    """sha256 over the names, shapes and bytes of the state dict."""
    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        digest.update(f"{name}:{tuple(tensor.shape)}:{tensor.dtype}".encode())
        digest.update(tensor.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def sqnr_db(reference: torch.Tensor, approximation: torch.Tensor) -> float:
    """Signal-to-quantization-noise ratio in dB (higher is closer)."""
    reference, approximation = reference.double(), approximation.double()
    noise = torch.linalg.vector_norm(reference - approximation)
    if noise == 0:
        return float("inf")
    return float(20 * torch.log10(torch.linalg.vector_norm(reference) / noise))
