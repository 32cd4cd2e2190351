"""One layer selector for every pass: exact names or ``re:`` patterns.

A pattern that matches no candidate layer is an error, because a typo would
otherwise silently leave the model uncompressed.
"""

import re
from collections.abc import Sequence

import torch

from compress.core.errors import SelectionError

# The layers whose ``weight`` pruning passes cut: dense and convolutional.
WEIGHT_LAYERS = (torch.nn.Linear, torch.nn.Conv1d, torch.nn.Conv2d, torch.nn.Conv3d)


def _matches(pattern: str, name: str) -> bool:
    if pattern.startswith("re:"):
        return re.fullmatch(pattern[3:], name) is not None
    return pattern == name


def select_modules(
    model: torch.nn.Module,
    targets: Sequence[str],
    exclude: Sequence[str] = (),
    types: tuple[type, ...] = (torch.nn.Module,),
    owner: str = "pass",
) -> dict[str, torch.nn.Module]:
    """Modules of ``types`` named by ``targets`` and not by ``exclude``, in model order."""
    candidates = {name: m for name, m in model.named_modules() if name and isinstance(m, types)}
    for pattern in (*targets, *exclude):
        if pattern.startswith("re:"):
            try:
                re.compile(pattern[3:])
            except re.error as exc:
                raise SelectionError(f"{owner}: invalid regular expression {pattern!r}: {exc}") from None
        if not any(_matches(pattern, name) for name in candidates):
            sample = ", ".join(list(candidates)[:6]) or "none"
            kinds = "/".join(t.__name__ for t in types)
            raise SelectionError(
                f"{owner}: pattern {pattern!r} matches no {kinds} layer; layers are named like: {sample}"
            )
    return {
        name: m
        for name, m in candidates.items()
        if any(_matches(p, name) for p in targets) and not any(_matches(p, name) for p in exclude)
    }
