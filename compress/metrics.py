"""Plain functions measuring a model: parameter counts, sparsity, fingerprints, SQNR."""

import hashlib

import torch


def count_params(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def count_nonzero_params(model: torch.nn.Module) -> int:
    return sum(int(torch.count_nonzero(p)) for p in model.parameters())


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
