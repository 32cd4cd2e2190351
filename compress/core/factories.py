"""User code named in a recipe: ``package.module:function`` resolved and called, its failure one line."""

import importlib
import sys
import traceback
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from compress.core import log
from compress.core.errors import InputError

# Modules of modelpress's own factories that moved when the packages were grouped by job: recipes
# (and committed run folders) written before keep working, with a warning naming the new path.
RENAMED_MODULES = {"compress.hf": "compress.models.hf"}


def import_object(spec: str, what: str, search_dir: Path | None = None) -> Any:
    """``package.module:attribute`` -> the attribute; ``search_dir`` is tried for local modules."""
    module_name, _, attr = spec.partition(":")
    if not module_name or not attr:
        raise InputError(f"{what}: {spec!r} is not of the form package.module:function")
    if module_name in RENAMED_MODULES:
        module_name = RENAMED_MODULES[module_name]
        log.warn(f"{what}: {spec} moved to {module_name}:{attr}; write that in the recipe")
    if search_dir is not None and str(search_dir) not in sys.path:
        sys.path.append(str(search_dir))
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        raise InputError(
            f"{what}: cannot import module {module_name!r} ({exc}); install it or put it next to the recipe"
        ) from None
    try:
        return getattr(module, attr)
    except AttributeError:
        raise InputError(f"{what}: module {module_name!r} has no attribute {attr!r}") from None


def call_factory(factory: Any, spec: str, what: str, kwargs: Mapping[str, Any]) -> Any:
    """Call a user's factory; its failure becomes one line naming the factory and the user's frame."""
    if not callable(factory):
        raise InputError(f"{what} {spec}: is a {type(factory).__name__}, not a function")
    if getattr(factory, "__module__", None) == "builtins":
        # eval, exec, open, ...: a recipe naming them would run arbitrary text, never a model or data
        raise InputError(f"{what} {spec}: builtins cannot be factories; name a function of your own package")
    try:
        return factory(**kwargs)
    except Exception as exc:  # noqa: BLE001  (the user's code may raise anything; say which factory)
        frames = traceback.extract_tb(exc.__traceback__)
        frame = frames[-1] if frames else None
        where = f" at {frame.filename}:{frame.lineno} in {frame.name}" if frame and len(frames) > 1 else ""
        reason = str(exc).splitlines()[0] if str(exc) else ""
        raise InputError(
            f"{what} `{spec}` raised {type(exc).__name__}: {reason}{where}; "
            f"fix the factory or its {what.split('.')[0]}.kwargs in the recipe"
        ) from None
