"""Output SQNR of each quantized layer on calibration data: the accuracy budget's cheap ranking.

Each layer is judged alone: a forward hook on the float layer feeds the float model's own
input of that layer to its quantized twin and compares the two outputs, so upstream error
does not accumulate (comparing whole quantized and float models layer by layer would rank
layers by depth). One forward pass of the float model covers every layer. The figure is
ONNX Runtime's ``compute_signal_to_quantization_noice_ratio`` (``qdq_loss_debug``),
20·log10(‖signal‖ / ‖signal − quantized‖), with the norms summed over batches so that no
activation is kept.
"""

import math
from collections.abc import Iterable

import numpy as np
import torch

from compress.models.data import batch_size_of, call_model, model_device, take_rows, to_device, training_inputs

EPSILON = float(np.finfo(float).eps)  # ORT's floor on both norms: identical outputs give a finite figure


class SqnrMeter:
    """Signal and noise energy of one tensor stream, batch by batch."""

    def __init__(self):
        self.signal = self.noise = 0.0
        self.values = 0

    def add(self, signal, quantized) -> None:
        signal, quantized = np.asarray(signal, dtype=np.float64), np.asarray(quantized, dtype=np.float64)
        self.signal += float(np.sum(signal * signal))
        self.noise += float(np.sum((signal - quantized) ** 2))
        self.values += signal.size

    def db(self) -> float | None:
        """None when nothing was measured (no calibration rows): not a figure of 0 dB."""
        if not self.values:
            return None
        return 20 * math.log10(max(math.sqrt(self.signal), EPSILON) / max(math.sqrt(self.noise), EPSILON))


def layer_sqnr(
    model: torch.nn.Module, quantized: dict[str, torch.nn.Module], batches: Iterable, samples: int
) -> dict[str, float | None]:
    """Output SQNR (dB) of ``quantized[name]`` against ``model``'s layer ``name``, on its float inputs.

    Runs ``model`` on up to ``samples`` rows of ``batches``.
    """
    meters = {name: SqnrMeter() for name in quantized}

    def hook(name):
        def compare(module, args, output):
            meters[name].add(output.detach().float().cpu(), quantized[name](*args).detach().float().cpu())

        return compare

    handles = [model.get_submodule(name).register_forward_hook(hook(name)) for name in quantized]
    was_training, rows = model.training, 0
    model.eval()
    try:
        with torch.no_grad():
            for batch in batches:
                inputs = training_inputs(batch)
                count = min(batch_size_of(inputs), samples - rows)
                call_model(model, to_device(take_rows(inputs, count), model_device(model)))
                rows += count
                if rows >= samples:
                    break
    finally:
        for handle in handles:
            handle.remove()
        model.train(was_training)
    return {name: meter.db() for name, meter in meters.items()}
