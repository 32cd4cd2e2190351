"""Task data, and the conventions for feeding a model and reading its output.

A batch's model inputs are a Tensor, a tuple of Tensors (positional arguments) or a
dict of Tensors (keyword arguments, as Hugging Face models take them). A split is an
iterable of batches, or a zero-argument callable returning one, so it can be read
more than once (a DataLoader is fine; a generator is not).
"""

from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, fields
from typing import Any

import torch

from compress.core.errors import InputError

BatchSource = Iterable | Callable[[], Iterable]
# Where a split is absent, the split that stands in for it (see TaskData).
FALLBACK_SPLITS = {"validation": "eval", "calibration": "train"}


@dataclass
class TaskData:
    """The splits a run may use.

    ``eval`` (required, held out from training) scores every stage and artifact;
    ``train`` feeds fine-tuning and distillation; ``validation`` selects the best
    checkpoint during training (``eval`` when absent); ``calibration`` feeds
    statistics-driven passes (``train`` when absent). ``tokenizer``: the one text splits were made
    with (``compress.models.text``), saved beside a decoder's generation folder.
    """

    eval: BatchSource
    train: BatchSource | None = None
    validation: BatchSource | None = None
    calibration: BatchSource | None = None
    tokenizer: Any = None

    def __post_init__(self) -> None:
        for split in ("eval", "train", "validation", "calibration"):
            problem = split_problem(split, getattr(self, split))
            if problem:
                raise InputError(problem)

    def resolve(self, split: str) -> str:
        """``split`` when the data has it, else the split that stands in for it."""
        return FALLBACK_SPLITS.get(split, split) if getattr(self, split) is None else split

    def batches(self, split: str) -> Iterable:
        source = getattr(self, split)
        if source is None:
            raise InputError(f"the task data has no {split!r} split; return it from your data factory")
        return source() if callable(source) else source


def _shapes(tensors) -> str:
    return ", ".join(f"{tuple(t.shape)} {str(t.dtype).removeprefix('torch.')}" for t in tensors)


def split_problem(split: str, source: Any) -> str | None:
    """Why ``source`` cannot be the split ``split`` (what was given, what to pass instead), or None."""
    if source is None or callable(source) and not isinstance(source, Iterator):
        return None
    if isinstance(source, Iterator):
        # A generator is empty after its first pass, and every split is read several times
        # (each stage's metric, parity, the report), so the later reads would see no batch.
        return (
            f"task data: the {split!r} split is a one-shot {type(source).__name__} (empty after its first pass; "
            f"modelpress reads every split several times); pass a list of batches, a DataLoader, or a function "
            f"returning a fresh iterator, e.g. {split}=list(batches) or {split}=lambda: make_batches()"
        )
    whole = [source] if isinstance(source, torch.Tensor) else source
    if (
        isinstance(whole, (tuple, list))
        and 1 <= len(whole) <= 3
        and all(isinstance(t, torch.Tensor) and t.dim() > 0 for t in whole)
        and len({t.shape[0] for t in whole}) == 1
        # A list of same-kind tensors may be input-only batches; inputs beside labels (other dims or
        # dtypes) are not.
        and (isinstance(source, (tuple, torch.Tensor)) or len({(t.dim(), t.dtype) for t in whole}) > 1)
    ):
        # (X, y) of the whole data set: iterating it would give X, then y, as two "batches".
        return (
            f"task data: the {split!r} split is {len(whole)} whole tensor(s) ({_shapes(whole)}), not batches; "
            f"a split is an iterable of batches such as (inputs, labels); pass e.g. "
            f"{split}=list(zip(X.split(64), y.split(64))) or {split}=DataLoader(TensorDataset(X, y), batch_size=64)"
        )
    return None


def as_task_data(data: Any) -> TaskData:
    """Accept TaskData, a dict with its fields, or a bare iterable used as ``eval``; splits must be re-iterable."""
    if isinstance(data, TaskData):
        return data
    if isinstance(data, Mapping):
        known = {f.name for f in fields(TaskData)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise InputError(f"task data: unknown split(s) {unknown}; valid splits: {sorted(known)}")
        if "eval" not in data:
            raise InputError("task data: an 'eval' split is required (held-out batches for metrics and parity)")
        return TaskData(**data)
    if isinstance(data, Iterable) or callable(data):
        return TaskData(eval=data)
    raise InputError(
        f"task data: expected TaskData, a dict of splits or an iterable of batches; got {type(data).__name__}"
    )


def call_model(model: torch.nn.Module, inputs: Any) -> Any:
    """Call ``model`` on one batch of inputs, following the batch conventions."""
    if isinstance(inputs, Mapping):
        return model(**inputs)
    if isinstance(inputs, (tuple, list)):
        return model(*inputs)
    return model(inputs)


def is_kv_cache(value: Any) -> bool:
    """A Hugging Face key/value cache (``DynamicCache``, ``EncoderDecoderCache``, ...), which decoders
    return beside their logits when ``use_cache`` is on (the default of every config on the Hub). One
    forward pass needs none of it: outputs skip it, so a decoder exports and scores without the cache."""
    return any(cls.__name__ == "Cache" and cls.__module__.startswith("transformers") for cls in type(value).__mro__)


def first_tensor(output: Any) -> torch.Tensor:
    """The tensor a model output stands for: itself, or its first element or value."""
    if isinstance(output, torch.Tensor):
        return output
    if isinstance(output, Mapping):
        return first_tensor(next(iter(output.values())))
    if isinstance(output, (tuple, list)):
        return first_tensor(output[0])
    raise InputError(f"the model returned {type(output).__name__}; modelpress needs a Tensor (or a tuple/dict of them)")


def to_device(inputs: Any, device: torch.device | str) -> Any:
    """``inputs`` (a Tensor, or a tuple/list/dict of them) moved to ``device``."""
    if isinstance(inputs, torch.Tensor):
        return inputs.to(device, non_blocking=True)
    if isinstance(inputs, Mapping):
        return {k: to_device(v, device) for k, v in inputs.items()}
    if isinstance(inputs, (tuple, list)):
        return type(inputs)(to_device(v, device) for v in inputs)
    return inputs


def model_device(model: torch.nn.Module) -> torch.device:
    return next((p.device for p in model.parameters()), torch.device("cpu"))


def training_inputs(batch: Any) -> Any:
    """Model inputs of a train batch: ``batch[0]`` of ``(inputs, ...)``, else the batch itself."""
    return batch[0] if isinstance(batch, (tuple, list)) else batch


def batch_size_of(inputs: Any) -> int:
    tensors = flatten_inputs(inputs)[1]
    return int(tensors[0].shape[0])


def flatten_inputs(inputs: Any) -> tuple[list[str], list[torch.Tensor]]:
    """Stable input names and tensors: ``input``; ``input_0, input_1``; or the dict keys."""
    if isinstance(inputs, Mapping):
        return list(inputs), list(inputs.values())
    if isinstance(inputs, (tuple, list)):
        return [f"input_{i}" for i in range(len(inputs))], list(inputs)
    return ["input"], [inputs]


def input_kind(inputs: Any) -> str:
    """How a batch's model inputs are arranged: ``dict`` (keyword), ``tuple`` (positional) or ``tensor``."""
    return "dict" if isinstance(inputs, Mapping) else "tuple" if isinstance(inputs, (tuple, list)) else "tensor"


def arrange_inputs(kind: str, names: list[str], tensors: list[torch.Tensor]) -> Any:
    """``tensors`` arranged as ``kind`` (see ``input_kind``); ``names`` are the keys of keyword inputs."""
    if kind == "dict":
        return dict(zip(names, tensors))
    return tuple(tensors) if kind == "tuple" else tensors[0]


def rebuild_inputs(template: Any, tensors: list[torch.Tensor]) -> Any:
    """Inverse of ``flatten_inputs``: the tensors arranged like ``template``."""
    return arrange_inputs(input_kind(template), list(template) if isinstance(template, Mapping) else [], tensors)


def take_rows(inputs: Any, count: int) -> Any:
    """The first ``count`` rows of every input tensor, cycling when there are fewer."""
    template = inputs
    tensors = flatten_inputs(inputs)[1]
    rows = torch.arange(count) % tensors[0].shape[0]
    return rebuild_inputs(template, [t[rows] for t in tensors])


def fixed_batches(inputs: Any, size: int) -> Iterator[Any]:
    """The rows of a batch in batches of exactly ``size`` rows, the last one filled up by repeating its last
    row: a graph exported with fixed input shapes takes no other count. Callers drop the filler outputs."""
    tensors = flatten_inputs(inputs)[1]
    rows = int(tensors[0].shape[0])
    for start in range(0, rows, size):
        index = torch.arange(start, start + size).clamp(max=rows - 1)
        yield rebuild_inputs(inputs, [t[index] for t in tensors])
