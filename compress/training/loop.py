"""Short training loops shared by passes: fitting a student to its teacher's outputs."""

import contextlib
import math
from collections.abc import Callable, Iterator
from itertools import cycle, islice

import torch

from compress.models.data import call_model, first_tensor, training_inputs

# A layer with at least this share of exact zeros was pruned: training must keep them zero.
SPARSE_LAYER_ZEROS = 0.05


def fit_to_teacher(student: torch.nn.Module, teacher: torch.nn.Module, data, steps: int, lr: float = 1e-4):
    """``steps`` AdamW steps of MSE between student and teacher outputs on ``data``'s train inputs.

    Needs no labels, so it recovers any task (logits or embeddings) after a pass. Returns the losses.
    """
    student.train()
    teacher.eval()
    optimizer = torch.optim.AdamW([p for p in student.parameters() if p.requires_grad], lr=lr)
    losses = []
    inputs_of_batches = [training_inputs(batch) for batch in data.batches("train")]
    for inputs in islice(cycle(inputs_of_batches), steps):
        with torch.no_grad():
            target = first_tensor(call_model(teacher, inputs)).float()
        loss = torch.nn.functional.mse_loss(first_tensor(call_model(student, inputs)).float(), target)
        optimizer.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(student.parameters(), 1.0)
        optimizer.step()
        losses.append(loss.item())
    student.eval()
    return losses


def warmup_cosine(total_steps: int, warmup_steps: int) -> Callable[[int], float]:
    """Learning-rate factor: linear warm-up to 1, then cosine decay to 0 at ``total_steps``."""

    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
        return 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))

    return factor


@contextlib.contextmanager
def frozen(modules: dict[str, torch.nn.Module]) -> Iterator[int]:
    """While open, the parameters of ``modules`` take no gradient (and no optimizer step); yields how
    many values that leaves as they were. Restored on exit, so the model trains as before after."""
    params = {id(p): p for module in modules.values() for p in module.parameters() if p.requires_grad}
    for param in params.values():
        param.requires_grad_(False)
    try:
        yield sum(p.numel() for p in params.values())
    finally:
        for param in params.values():
            param.requires_grad_(True)


@contextlib.contextmanager
def zeros_kept(model: torch.nn.Module, enabled: bool = True) -> Iterator[list[str]]:
    """While open, pruned weights (exact zeros) of Linear/Conv layers stay zero under training.

    Uses ``torch.nn.utils.prune`` masks and bakes them on exit, so that fine-tuning after
    magnitude pruning does not silently refill the zeros. Yields the masked layer names.
    """
    from torch.nn.utils import prune as torch_prune

    layers = {}
    if enabled:
        for name, module in model.named_modules():
            weight = getattr(module, "weight", None)
            layer = isinstance(module, (torch.nn.Linear, torch.nn.modules.conv._ConvNd))
            # Quantized (integer) weights are frozen anyway; only float weights need masks.
            if not layer or weight is None or not weight.is_floating_point() or hasattr(module, "weight_orig"):
                continue
            if float((weight == 0).float().mean()) >= SPARSE_LAYER_ZEROS:
                torch_prune.custom_from_mask(module, "weight", weight != 0)
                layers[name] = module
    try:
        yield list(layers)
    finally:
        for module in layers.values():
            torch_prune.remove(module, "weight")


@contextlib.contextmanager
def training_progress(total: int) -> Iterator[Callable[[int, str], None]]:
    """A progress bar with an ETA on a terminal (rank 0 only, none under -q); ``update(step, text)`` moves it."""
    from compress.core.progress import progress

    with progress("training", total) as update:
        yield lambda step, text: update(completed=step, description=text)


def trainable_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """Copies of what training changes: float parameters that require grad, and float buffers (BN stats).

    Snapshotting only these keeps quantized layers (bitsandbytes) out of the copy.
    """
    state = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad and p.is_floating_point()}
    state.update({n: b.detach().clone() for n, b in model.named_buffers() if b.is_floating_point()})
    return state


def restore_trainable_state(model: torch.nn.Module, state: dict[str, torch.Tensor]) -> None:
    tensors = dict(model.named_parameters()) | dict(model.named_buffers())
    with torch.no_grad():
        for name, value in state.items():
            tensors[name].copy_(value)
