"""RNNs under structured pruning: Torch-Pruning 1.6 cannot cut them (its LSTM pruner asserts
``num_layers == 1`` and, on one layer, indexes out of range; it has none for GRU), so they are left
whole, said in one warning, and the layers around them are cut as usual."""

import torch

from compress.core import log


def whole_rnns(model: torch.nn.Module) -> dict[str, torch.nn.Module]:
    """Every LSTM, GRU and RNN of ``model``, by name: layers Torch-Pruning must ignore."""
    return {name: module for name, module in model.named_modules() if isinstance(module, torch.nn.RNNBase)}


def warn_whole_rnns(model: torch.nn.Module) -> None:
    for name, rnn in whole_rnns(model).items():
        layers = f"{rnn.num_layers} layer{'s' if rnn.num_layers > 1 else ''}"
        kind = f"{type(rnn).__name__}, {layers}{', bidirectional' if rnn.bidirectional else ''}"
        log.warn(f"structured_prune: {name!r} ({kind}) left whole: Torch-Pruning cannot cut RNNs; the layers "
                 "around it are cut as usual")  # fmt: skip
