"""Building the model and the data a recipe names: factories and checkpoints.

Checkpoints are read as safetensors, or as a pickled state_dict with
``torch.load(weights_only=True)`` so that a checkpoint cannot run code on load.
"""

import pickle
import re
import zipfile
from collections.abc import Mapping
from pathlib import Path

import torch

from compress.core.errors import InputError
from compress.core.factories import call_factory, import_object
from compress.models.data import TaskData, as_task_data
from compress.recipe.schema import DataSpec, ModelSpec


def _untrusted_pickle(path: Path, exc: Exception) -> InputError:
    found = re.search(r"GLOBAL ([\w.]+)", str(exc))
    holds = f" (it references {found.group(1)})" if found else ""
    return InputError(
        f"checkpoint {path}: refused: loading it needs arbitrary unpickling{holds}, which can run code. "
        "Re-save the weights as safetensors or a plain state_dict; if you trust its source, set "
        "model.trust_checkpoint: true in the recipe (CLI: --trust-checkpoint)"
    )


def _check_archive(path: Path) -> None:
    """Refuse a zip checkpoint whose members expand far beyond the file (a zip bomb), before loading it.
    torch stores tensors uncompressed, so a real checkpoint expands to about its own size."""
    if not zipfile.is_zipfile(path):
        return
    try:
        with zipfile.ZipFile(path) as archive:
            expanded = sum(info.file_size for info in archive.infolist())
    except (zipfile.BadZipFile, OSError, ValueError):
        return  # the loader names the damage
    size = path.stat().st_size
    if expanded > max(8 * size, 64 << 20):
        raise InputError(
            f"checkpoint {path}: refused: its archive expands to {expanded / 2**20:.0f} MB from "
            f"{size / 2**20:.1f} MB (a zip bomb, or not a torch checkpoint); re-save the weights with torch.save"
        )


def load_state_dict(path: Path, trust: bool = False) -> dict[str, torch.Tensor]:
    """The tensors of a safetensors file or of a torch checkpoint, unpickled with ``weights_only=True``
    unless ``trust`` (the user vouches for the file: full unpickling can run code)."""
    if not path.is_file():
        loop = path.is_symlink()  # is_file() is False for a link loop or a dangling link
        found = "a symbolic link that leads nowhere (a loop or a missing target)" if loop else "file not found"
        raise InputError(f"checkpoint {path}: {found}; check model.checkpoint in the recipe")
    _check_archive(path)
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(str(path))
        else:
            state = torch.load(path, map_location="cpu", weights_only=not trust)
    except pickle.UnpicklingError as exc:
        if "GLOBAL" in str(exc):  # the file references Python objects beyond tensors
            raise _untrusted_pickle(path, exc) from None
        raise InputError(
            f"checkpoint {path}: cannot be read (not a valid pickle); "
            "the file is truncated, corrupt or not a checkpoint"
        ) from None
    except Exception as exc:  # noqa: BLE001  (any reader failure means an unusable file)
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise InputError(
            f"checkpoint {path}: cannot be read ({reason}); the file is truncated, corrupt or not a checkpoint"
        ) from None
    for key in ("state_dict", "model"):
        if isinstance(state, Mapping) and isinstance(state.get(key), Mapping):
            state = state[key]
    if not isinstance(state, Mapping) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise InputError(f"checkpoint {path}: expected a state_dict (a mapping of names to tensors)")
    # Sparse or quantized tensors are no model's parameters here, and the checks below cannot read them.
    odd = [str(k) for k, v in state.items() if v.layout != torch.strided or v.is_quantized]
    if odd:
        raise InputError(
            f"checkpoint {path}: tensors that are not dense ({', '.join(odd[:5])}); "
            "re-save the weights as dense tensors (tensor.to_dense())"
        )
    broken = [k for k, v in state.items() if v.is_floating_point() and not torch.isfinite(v).all()]
    if broken:
        raise InputError(
            f"checkpoint {path}: NaN or Inf values in {', '.join(broken[:5])}{' ...' if len(broken) > 5 else ''}; "
            "the training that wrote it diverged; use an earlier checkpoint"
        )
    return dict(state)


def load_weights(model: torch.nn.Module, state: Mapping[str, torch.Tensor], source: str) -> None:
    """Load ``state`` strictly, naming missing/unexpected keys and shape mismatches."""
    own = model.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    mismatched = [k for k in set(own) & set(state) if own[k].shape != state[k].shape]
    # bool/integer tensors would be cast to the model's float silently (or the reverse): name them
    retyped = sorted(
        k
        for k in set(own) & set(state)
        if own[k].is_floating_point() != state[k].is_floating_point()
        or (own[k].dtype == torch.bool) != (state[k].dtype == torch.bool)
    )
    if retyped:
        shown = ", ".join(f"{k} ({state[k].dtype}, model {own[k].dtype})" for k in retyped[:5])
        raise InputError(
            f"{source}: tensors of another kind than the model's: {shown}; re-save the weights in the model's dtypes"
        )
    if missing or unexpected or mismatched:
        parts = []
        for label, keys in (("missing", missing), ("unexpected", unexpected), ("shape mismatch", sorted(mismatched))):
            if keys:
                parts.append(f"{label}: {', '.join(keys[:5])}{' ...' if len(keys) > 5 else ''}")
        raise InputError(f"{source} does not fit the model built by the factory ({'; '.join(parts)})")
    model.load_state_dict(state, strict=True)


def _hf_class(path: Path, named: str | None):
    """The transformers class that loads the folder: the recipe's ``model.hf_class``, else the first of
    ``architectures`` in its config.json (the class it was saved from, head included), else ``AutoModel``."""
    import json

    import transformers

    try:
        architectures = json.loads((path / "config.json").read_text()).get("architectures") or []
    except (OSError, ValueError, AttributeError):
        architectures = []  # transformers names what is wrong with the config when it loads it
    name = named or next(iter(architectures), "AutoModel")
    cls = getattr(transformers, name, None)
    if not isinstance(cls, type) or not hasattr(cls, "from_pretrained"):
        where = "model.hf_class" if named else f"{path / 'config.json'} (architectures)"
        raise InputError(
            f"checkpoint {path}: {where} names {name!r}, which is no model class of the installed transformers; "
            "set model.hf_class to the class the folder was saved from, e.g. BertForSequenceClassification"
        )
    return cls


def _load_hf_folder(path: Path, named: str | None = None) -> torch.nn.Module:
    try:
        import transformers  # noqa: F401
    except ImportError:
        raise InputError(f"{path} is a Hugging Face folder; install transformers to load it") from None
    cls = _hf_class(path, named)
    try:
        model, info = cls.from_pretrained(str(path), output_loading_info=True)
    except Exception as exc:  # noqa: BLE001  (transformers raises many types for a bad folder)
        reason = str(exc).splitlines()[0] if str(exc) else ""
        raise InputError(
            f"checkpoint {path}: not a loadable Hugging Face folder with {cls.__name__} "
            f"({type(exc).__name__}: {reason[:200]}); check its config.json and weights, or model.hf_class"
        ) from None
    # A head the class does not hold would be dropped (unexpected weights), one the folder lacks would be
    # random (missing weights): either way the metric would score another model than the user's.
    for kind, keys in (("holds weights", info["unexpected_keys"]), ("lacks the weights", info["missing_keys"])):
        if keys and not (named and kind == "holds weights"):
            shown = ", ".join(sorted(keys)[:4]) + (" ..." if len(keys) > 4 else "")
            raise InputError(
                f"checkpoint {path}: the folder {kind} {cls.__name__} does not load ({shown}); set model.hf_class "
                "to the class it was saved from, with its task head (e.g. BertForSequenceClassification)"
            )
    return model


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
        return _load_hf_folder(checkpoint, spec.hf_class).eval()
    factory = import_object(spec.factory, "model.factory", search_dir)
    model = call_factory(factory, spec.factory, "model.factory", spec.kwargs)
    if not isinstance(model, torch.nn.Module):
        raise InputError(f"model.factory {spec.factory} returned {type(model).__name__}, not a torch.nn.Module")
    if checkpoint is not None:
        load_weights(model, load_state_dict(checkpoint, spec.trust_checkpoint), f"checkpoint {checkpoint}")
    return model.eval()


def load_data(spec: DataSpec | None, search_dir: Path | None = None) -> TaskData:
    if spec is None:
        raise InputError("recipe: the 'data' section is required (data.factory: package.module:function)")
    factory = import_object(spec.factory, "data.factory", search_dir)
    return as_task_data(call_factory(factory, spec.factory, "data.factory", spec.kwargs))
