"""Building the model and the data a recipe names: factories and checkpoints.

Checkpoints are read as safetensors, or as a pickled state_dict with
``torch.load(weights_only=True)`` so that a checkpoint cannot run code on load.
"""

import importlib
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from compress.data import TaskData, as_task_data
from compress.errors import InputError
from compress.recipe import DataSpec, ModelSpec


def import_object(spec: str, what: str, search_dir: Path | None = None) -> Any:
    """``package.module:attribute`` -> the attribute; ``search_dir`` is tried for local modules."""
    module_name, _, attr = spec.partition(":")
    if not module_name or not attr:
        raise InputError(f"{what}: {spec!r} is not of the form package.module:function")
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


def load_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """The tensors of a safetensors file or of a (weights-only) torch checkpoint."""
    if not path.is_file():
        raise InputError(f"checkpoint {path}: file not found; check model.checkpoint in the recipe")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            return load_file(str(path))
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001  (any reader failure means an unusable file)
        raise InputError(f"checkpoint {path}: cannot be read ({str(exc).splitlines()[0]})") from None
    for key in ("state_dict", "model"):
        if isinstance(state, Mapping) and isinstance(state.get(key), Mapping):
            state = state[key]
    if not isinstance(state, Mapping) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise InputError(f"checkpoint {path}: expected a state_dict (a mapping of names to tensors)")
    return dict(state)


def load_weights(model: torch.nn.Module, state: Mapping[str, torch.Tensor], source: str) -> None:
    """Load ``state`` strictly, naming missing/unexpected keys and shape mismatches."""
    own = model.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    mismatched = [k for k in set(own) & set(state) if own[k].shape != state[k].shape]
    if missing or unexpected or mismatched:
        parts = []
        for label, keys in (("missing", missing), ("unexpected", unexpected), ("shape mismatch", sorted(mismatched))):
            if keys:
                parts.append(f"{label}: {', '.join(keys[:5])}{' ...' if len(keys) > 5 else ''}")
        raise InputError(f"{source} does not fit the model built by the factory ({'; '.join(parts)})")
    model.load_state_dict(state, strict=True)


def _load_hf_folder(path: Path) -> torch.nn.Module:
    try:
        from transformers import AutoModel
    except ImportError:
        raise InputError(f"{path} is a Hugging Face folder; install transformers to load it") from None
    return AutoModel.from_pretrained(str(path))


def load_model(spec: ModelSpec | None, search_dir: Path | None = None) -> torch.nn.Module:
    """The model a recipe's ``model`` section describes, in eval mode."""
    if spec is None or (spec.factory is None and spec.checkpoint is None):
        raise InputError("recipe: the 'model' section needs a factory, a checkpoint, or both")
    checkpoint = Path(spec.checkpoint) if spec.checkpoint else None
    if spec.factory is None:
        if checkpoint is None or not (checkpoint / "config.json").is_file():
            raise InputError(
                f"model.checkpoint {checkpoint}: a weights file needs model.factory (package.module:function) "
                "to build the module; only a Hugging Face folder loads on its own"
            )
        return _load_hf_folder(checkpoint).eval()
    factory = import_object(spec.factory, "model.factory", search_dir)
    model = factory(**spec.kwargs)
    if not isinstance(model, torch.nn.Module):
        raise InputError(f"model.factory {spec.factory} returned {type(model).__name__}, not a torch.nn.Module")
    if checkpoint is not None:
        load_weights(model, load_state_dict(checkpoint), f"checkpoint {checkpoint}")
    return model.eval()


def load_data(spec: DataSpec | None, search_dir: Path | None = None) -> TaskData:
    if spec is None:
        raise InputError("recipe: the 'data' section is required (data.factory: package.module:function)")
    factory = import_object(spec.factory, "data.factory", search_dir)
    return as_task_data(factory(**spec.kwargs))
