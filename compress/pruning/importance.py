"""Importance criteria by recipe name, each a Torch-Pruning ``Importance``.

Taylor importance (|gradient x weight|, Molchanov et al. 2019) needs gradients of the
task loss, so ``needs_gradients`` tells the pass to run labelled batches first.
"""

from collections.abc import Callable, Iterable
from enum import Enum
from itertools import islice

import torch
import torch_pruning as tp

from compress.data import call_model, first_tensor
from compress.errors import InputError


class Criterion(str, Enum):
    l1 = "l1"
    l2 = "l2"
    taylor = "taylor"
    bn_scale = "bn_scale"
    random = "random"


IMPORTANCE: dict[str, Callable[[], tp.importance.Importance]] = {
    Criterion.l1.value: lambda: tp.importance.GroupMagnitudeImportance(p=1),
    Criterion.l2.value: lambda: tp.importance.GroupMagnitudeImportance(p=2),
    Criterion.taylor.value: lambda: tp.importance.GroupTaylorImportance(),
    Criterion.bn_scale.value: lambda: tp.importance.BNScaleImportance(),
    Criterion.random.value: lambda: tp.importance.RandomImportance(),
}

NEEDS_GRADIENTS = {Criterion.taylor.value}


def accumulate_task_gradients(model: torch.nn.Module, batches: Iterable, count: int) -> None:
    """Cross-entropy gradients over ``count`` labelled batches, for Taylor importance."""
    model.zero_grad()
    used = 0
    for batch in islice(batches, count):
        if len(batch) != 2 or not isinstance(batch[1], torch.Tensor) or batch[1].is_floating_point():
            raise InputError(
                "structured_prune: importance 'taylor' needs labelled batches (inputs, class labels) in the "
                "calibration or train split; use importance 'l2' for unlabelled data"
            )
        loss = torch.nn.functional.cross_entropy(first_tensor(call_model(model, batch[0])), batch[1])
        loss.backward()
        used += 1
    if used == 0:
        raise InputError("structured_prune: importance 'taylor' found no batches in the calibration/train split")
