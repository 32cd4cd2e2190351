"""Built-in evaluators, looked up by the recipe's ``task.metric``.

An evaluator scores a ``predict(inputs) -> Tensor`` function on batches. The same
evaluator scores the torch model after each stage and each exported artifact in ONNX
Runtime, so the two figures are comparable. Any callable ``(predict, batches) -> float``
can replace them (``task.metric: package.module:function``).
"""

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import torch

from compress.data import call_model, first_tensor, model_device, to_device
from compress.errors import InputError

Predict = Callable[[Any], torch.Tensor]


@dataclass(frozen=True)
class Evaluator:
    """A metric: its name, how it scores, and which parts of a batch are model inputs."""

    name: str
    score: Callable[[Predict, Iterable], float]
    inputs_of: Callable[[Any], list] = lambda batch: [batch[0]]
    is_classifier: bool = False


def accuracy(predict: Predict, batches: Iterable) -> float:
    """Share of batches' ``(inputs, labels)`` whose argmax equals the label."""
    correct = total = 0
    for inputs, labels in batches:
        correct += int((predict(inputs).argmax(-1) == labels).sum())
        total += len(labels)
    if total == 0:
        raise InputError("accuracy: the eval split is empty; give it at least one (inputs, labels) batch")
    return correct / total


def embedding_similarity(predict: Predict, batches: Iterable) -> float:
    """Spearman (x100) of cosine(embed(a), embed(b)) against gold scores, as STS reports it."""
    from scipy.stats import spearmanr

    cosines, gold = [], []
    for inputs_a, inputs_b, scores in batches:
        a, b = predict(inputs_a).float(), predict(inputs_b).float()
        cosines.append(torch.nn.functional.cosine_similarity(a, b, dim=-1))
        gold.append(torch.as_tensor(scores, dtype=torch.float32))
    if len(gold) == 0:
        raise InputError("embedding_similarity: the eval split is empty; give it (inputs_a, inputs_b, scores) batches")
    return float(spearmanr(torch.cat(cosines).numpy(), torch.cat(gold).numpy()).statistic * 100)


EVALUATORS = {
    "accuracy": Evaluator("accuracy", accuracy, is_classifier=True),
    "embedding_similarity": Evaluator("spearman", embedding_similarity, inputs_of=lambda b: [b[0], b[1]]),
}


def resolve_evaluator(metric: "str | Callable | Evaluator", search_dir=None) -> Evaluator:
    """An Evaluator from a built-in name, ``package.module:function``, or a callable."""
    if isinstance(metric, Evaluator):
        return metric
    if callable(metric):
        return Evaluator(getattr(metric, "__name__", "metric"), metric)
    if metric in EVALUATORS:
        return EVALUATORS[metric]
    if ":" in metric:
        from compress.loading import import_object

        return resolve_evaluator(import_object(metric, "task.metric", search_dir))
    raise InputError(
        f"task.metric: unknown metric {metric!r}; use one of {sorted(EVALUATORS)} or package.module:function"
    )


def torch_predictor(model: torch.nn.Module) -> Predict:
    """``predict`` for a torch model, in eval mode and without gradients, on the model's device."""

    @torch.no_grad()
    def predict(inputs):
        device = model_device(model)
        return first_tensor(call_model(model, to_device(inputs, device))).cpu()

    model.eval()
    return predict
