"""The table of passes, keyed by recipe name and filled by ``@register_pass``.

Adding a pass means adding one module under ``compress/passes``: it is found
and imported automatically, so nothing else needs to change.
"""

import difflib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from compress.core.config import PassConfig
from compress.core.errors import RecipeError

ApplyFn = Callable[[Any, PassConfig, Any], Any]
RestoreFn = Callable[[Any, dict, Any], Any]
AfterLoadFn = Callable[[Any, dict, dict], Any]


@dataclass(frozen=True)
class PassSpec:
    """A registered pass.

    ``apply(model, config, ctx) -> model`` runs the pass. ``restore(model, record,
    example_inputs)`` is optional: it re-applies a structural change recorded in
    ``ctx.history`` so that weights saved after the pass can be loaded again on resume.
    ``after_load(model, record, config) -> model`` is optional: on resume it runs once the
    last stage's (float) weights are loaded, for passes whose state is not plain weights.
    """

    name: str
    config_cls: type[PassConfig]
    apply: ApplyFn
    restore: RestoreFn | None = None
    after_load: AfterLoadFn | None = None


_PASSES: dict[str, PassSpec] = {}


def register_pass(
    name: str, config_cls: type[PassConfig], restore: RestoreFn | None = None, after_load: AfterLoadFn | None = None
):
    """Decorator registering ``apply`` under the recipe name ``name``."""

    def decorate(apply: ApplyFn) -> ApplyFn:
        if name in _PASSES:
            raise ValueError(f"pass {name!r} is registered twice")
        config_cls.pass_name = name
        _PASSES[name] = PassSpec(name, config_cls, apply, restore, after_load)
        return apply

    return decorate


def list_passes() -> list[str]:
    """Names of all registered passes, sorted."""
    return sorted(_PASSES)


def get_pass(name: str) -> PassSpec:
    """The pass registered as ``name``; an unknown name lists the known ones."""
    if name not in _PASSES:
        known = sorted(_PASSES)
        close = difflib.get_close_matches(name, known, n=1)
        hint = f"did you mean {close[0]!r}? " if close else ""
        raise RecipeError(f"unknown pass {name!r}; {hint}known passes: {', '.join(known)}")
    return _PASSES[name]
