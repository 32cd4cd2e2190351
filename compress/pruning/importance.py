"""Importance criteria by recipe name, each a Torch-Pruning ``Importance``.

Taylor importance (|gradient x weight|, Molchanov et al. 2019) needs gradients of the task loss
on labelled batches; activation importance (Wanda-sp) needs activation norms on any batches.
``PREPARE`` names what the pass runs before each step for such criteria.
"""

from collections.abc import Callable, Iterable
from enum import Enum
from itertools import islice

import torch
import torch_pruning as tp

from compress.core.errors import InputError
from compress.models.data import call_model, first_tensor
from compress.pruning.activation_importance import ActivationAwareImportance, ChannelStats


class Criterion(str, Enum):
    l1 = "l1"
    l2 = "l2"
    taylor = "taylor"
    activation = "activation"
    bn_scale = "bn_scale"
    random = "random"


IMPORTANCE: dict[str, Callable[[], tp.importance.Importance]] = {
    Criterion.l1.value: lambda: tp.importance.GroupMagnitudeImportance(p=1),
    Criterion.l2.value: lambda: tp.importance.GroupMagnitudeImportance(p=2),
    Criterion.taylor.value: lambda: tp.importance.GroupTaylorImportance(),
    Criterion.activation.value: ActivationAwareImportance,
    Criterion.bn_scale.value: lambda: tp.importance.BNScaleImportance(),
    Criterion.random.value: lambda: tp.importance.RandomImportance(),
}


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


def _activation_norms(_model, importance, stats: ChannelStats, _batches, _count) -> None:
    importance.rms = stats.rms


def _task_gradients(model, _importance, _stats, batches, count) -> None:
    accumulate_task_gradients(model, batches, count)


# Criterion -> what runs before each pruning step, given the step's channel statistics (measured
# for the criteria in NEEDS_STATS, and for bias compensation) and the calibration batches.
PREPARE: dict[str, Callable] = {
    Criterion.taylor.value: _task_gradients,
    Criterion.activation.value: _activation_norms,
}
NEEDS_STATS = {Criterion.activation.value}
