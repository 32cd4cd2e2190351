"""The compressed transformers model as a Hugging Face folder that ``AutoModel.from_pretrained`` loads
without modelpress: config updated to the pruned sizes, safetensors weights, tokenizer files.

transformers' own ``save_pretrained`` writes the folder (its layout, sharding and safetensors metadata
are what every loader expects), and ``from_pretrained`` reads it back before it is kept: the folder is
kept only when the reloaded model gives the compressed model's outputs.

A config describes one width per field for every layer. A cut with different FFN widths or head counts
per layer cannot be described, and gets no folder (one line says why; ``compress.load`` still loads the
run). BERT-like attention derives the head size from ``hidden_size / num_attention_heads``, so a
uniform head cut cannot be written as a smaller head count: the removed heads come back as zero weights
(a zero value projection and zero output columns add nothing, so the outputs are the cut model's), and
the record says so. The ONNX artifacts keep the cut.
"""

import copy
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from export.errors import ExportError

PARITY_ATOL = 1e-5  # the folder reloaded must give the compressed model's outputs within this


@dataclass
class HfFolder:
    """What was written: the folder, the transformers class, and notes on how the cut was described."""

    path: Path
    architecture: str
    notes: list[str] = field(default_factory=list)
    max_abs: float = 0.0


def transformers_model(model: torch.nn.Module) -> tuple[Any, torch.nn.Module | None]:
    """The transformers model inside ``model`` (itself, or a direct child of a wrapper such as
    ``compress.models.hf.SentenceEncoder``) and the wrapper, or (None, None)."""
    from transformers import PreTrainedModel

    if isinstance(model, PreTrainedModel):
        return model, None
    children = [child for child in model.children() if isinstance(child, PreTrainedModel)]
    return (children[0], model) if len(children) == 1 else (None, None)


def _uniform_cut(model: torch.nn.Module) -> None:
    """Refuse a cut that no config describes: different head counts or FFN widths per layer."""
    from compress.pruning.attention import FFN_FIELDS, head_counts
    from compress.pruning.conv1d import out_width

    counts = sorted(set(head_counts(model).values()))
    if len(counts) > 1:
        raise ExportError(f"different head counts per layer ({counts}), which a Hugging Face config cannot describe")
    for pattern, _ in FFN_FIELDS:
        widths = sorted({out_width(m) for n, m in model.named_modules() if pattern.fullmatch(n)})
        if len(widths) > 1:
            raise ExportError(f"different FFN widths per layer ({widths}), which a Hugging Face config cannot describe")


def _padded(state: dict[str, torch.Tensor], shapes: dict[str, torch.Size]) -> tuple[dict, int]:
    """Each tensor in the leading slice of a zero tensor of the config's shape; the zeros added."""
    padded, added = {}, 0
    for name, tensor in state.items():
        shape = shapes.get(name, tensor.shape)
        if len(shape) != tensor.dim() or any(t > s for t, s in zip(tensor.shape, shape)):
            raise ExportError(f"{name} {tuple(tensor.shape)} does not fit the config's {tuple(shape)}")
        if shape == tensor.shape:
            padded[name] = tensor.contiguous()
            continue
        holder = torch.zeros(shape, dtype=tensor.dtype)
        holder[tuple(slice(0, n) for n in tensor.shape)] = tensor
        padded[name], added = holder, added + holder.numel() - tensor.numel()
    return padded, added


def _config_state(hf_model) -> tuple[Any, dict[str, torch.Tensor], list[str]]:
    """The config that describes the cut, the weights in its shapes, and notes on what was padded."""
    config = copy.deepcopy(hf_model.config)
    with torch.device("meta"):
        shapes = {k: v.shape for k, v in type(hf_model)(config).state_dict().items()}
    state, added = _padded({k: v.detach().cpu() for k, v in hf_model.state_dict().items()}, shapes)
    notes = []
    if added:
        notes.append(
            f"{type(hf_model).__name__}'s config derives the head size from hidden_size / num_attention_heads, so "
            f"the removed heads are zero weights in this folder ({added:,} more parameters than the cut model, same "
            "outputs); the ONNX artifacts keep the cut"
        )
    return config, state, notes


def _tokenizer(tokenizer: Any, hf_model) -> Any:
    """The tokenizer the data was made with, else the one saved beside the model's source folder."""
    if tokenizer is not None and hasattr(tokenizer, "save_pretrained"):
        return tokenizer
    source = Path(str(getattr(hf_model.config, "_name_or_path", "") or ""))
    if not source.is_dir() or not any((source / name).is_file() for name in ("tokenizer.json", "vocab.txt")):
        return None
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(source))


def _outputs(model, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
    with torch.no_grad():
        output = model(**inputs)
    return output[0] if not isinstance(output, torch.Tensor) else output


def write_hf_folder(model: torch.nn.Module, folder: Path, example_inputs: Any, tokenizer: Any = None) -> HfFolder:
    """Save the transformers model inside ``model`` to ``folder`` (a fresh, empty folder) and check it
    reloads to the same outputs on ``example_inputs`` (a dict of tensors); ExportError when it cannot be."""
    hf_model, _ = transformers_model(model)
    if hf_model is None:
        raise ExportError("the model is not a transformers model (nor wraps exactly one)")
    if not isinstance(example_inputs, dict):
        raise ExportError("the model takes no keyword inputs (input_ids, attention_mask) to check the folder with")
    _uniform_cut(hf_model)
    config, state, notes = _config_state(hf_model)
    saved = copy.deepcopy(hf_model)
    saved.config = config
    saved.save_pretrained(str(folder), state_dict=state)
    tokenizer = _tokenizer(tokenizer, hf_model)
    if tokenizer is not None:
        tokenizer.save_pretrained(str(folder))
    else:
        notes.append("no tokenizer saved: the data named none and the model's source folder holds none")
    reloaded = type(hf_model).from_pretrained(str(folder), attn_implementation="eager").eval()
    inputs = {k: v for k, v in example_inputs.items() if isinstance(v, torch.Tensor)}
    gap = float((_outputs(reloaded, inputs) - _outputs(hf_model.eval(), inputs)).abs().max())
    if not gap <= PARITY_ATOL:
        raise ExportError(f"the saved folder reloads to other outputs (max |diff| {gap:.2e} > {PARITY_ATOL})")
    return HfFolder(folder, type(hf_model).__name__, notes, gap)
