"""Built-in evaluators, looked up by the recipe's ``task.metric``.

An evaluator scores a ``predict(inputs) -> Tensor`` function on batches. The same
evaluator scores the torch model after each stage and each exported artifact in ONNX
Runtime, so the two figures are comparable. Any callable ``(predict, batches) -> float``
can replace them (``task.metric: package.module:function``); one whose lower values are better
says so with an attribute, ``my_metric.higher_is_better = False``.

Every comparison of two figures (the budget, the best epoch, the recommendation, the front, the
search) goes through ``metric_loss``, so a lower-is-better metric such as ``perplexity`` counts a
rise as the loss.
"""

import dataclasses
import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import torch

from compress.core.errors import InputError
from compress.models.data import call_model, first_tensor, flatten_inputs, model_device, to_device

Predict = Callable[[Any], torch.Tensor]


@dataclass(frozen=True)
class Evaluator:
    """A metric: its name, how it scores, and which parts of a batch are model inputs."""

    name: str
    score: Callable[[Predict, Iterable], float]
    inputs_of: Callable[[Any], list] = lambda batch: [batch[0]]
    is_classifier: bool = False  # the output's last axis holds classes (or next-token logits): top-1 is meaningful
    higher_is_better: bool = True


def metric_loss(reference: float, value: float, higher_is_better: bool = True) -> float:
    """How much worse ``value`` is than ``reference``, in the metric's units: positive when worse (a drop
    of accuracy, a rise of perplexity), negative when better."""
    return reference - value if higher_is_better else value - reference


IGNORE_INDEX = -100  # the label Hugging Face and torch's cross-entropy leave unscored (padding tokens)


def class_axis(outputs: torch.Tensor, labels: torch.Tensor) -> int:
    """Where the classes are in ``outputs`` for these ``labels``: the last axis when the labels have its
    shape without that axis (a class per row, or per token: [B, T, C] against [B, T]); axis 1 for a
    channels-first dense map ([B, C, H, W] against [B, H, W], segmentation)."""
    if outputs.dim() == labels.dim() + 1:
        if outputs.shape[:-1] == labels.shape:
            return -1
        if outputs.dim() > 2 and outputs.shape[0] == labels.shape[0] and outputs.shape[2:] == labels.shape[1:]:
            return 1
    raise InputError(
        f"accuracy: outputs of shape {list(outputs.shape)} do not fit labels of shape {list(labels.shape)}; accuracy "
        "needs a class axis beside the labels' shape (per row [B, C], per token [B, T, C], per pixel [B, C, H, W]); "
        "for other outputs write a metric (task.metric: module:function)"
    )


def accuracy(predict: Predict, batches: Iterable) -> float:
    """Share of labels whose argmax over the class axis equals them: per row for a classifier, per
    element for dense outputs (tokens, pixels), labels of -100 not scored."""
    correct = total = 0
    for inputs, labels in batches:
        outputs = predict(inputs)
        labels = torch.as_tensor(labels)  # a list of ints through the API works too
        if labels.is_floating_point() or labels.dtype == torch.bool:
            raise InputError(f"accuracy: labels are {labels.dtype}; eval batches must be (inputs, integer labels)")
        axis = class_axis(outputs, labels)
        width, scored = outputs.shape[axis], labels != IGNORE_INDEX
        if scored.any() and (int(labels[scored].min()) < 0 or int(labels[scored].max()) >= width):
            raise InputError(
                f"accuracy: labels range over [{int(labels[scored].min())}, {int(labels[scored].max())}] but the "
                f"model has {width} outputs; labels must be class indices in [0, {width - 1}] (or -100: not scored)"
            )
        correct += int(((outputs.argmax(axis) == labels) & scored).sum())
        total += int(scored.sum())
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


def perplexity(predict: Predict, batches: Iterable) -> float:
    """Token-weighted perplexity of a causal LM on ``(inputs, labels)`` batches: exp of the mean
    next-token negative log-likelihood over every labelled token (labels are the input ids, -100
    where a token is padding, as Hugging Face's ``labels``), each token weighing the same whatever
    its sentence's length (lm-eval's rolling log-likelihood does the same). Lower is better."""
    nll, tokens = 0.0, 0
    for inputs, labels in batches:
        logits = predict(inputs).float()
        labels = torch.as_tensor(labels)
        if logits.dim() != 3 or tuple(logits.shape[:2]) != tuple(labels.shape):
            raise InputError(
                f"perplexity: the model gives {tuple(logits.shape)} for labels {tuple(labels.shape)}; it needs "
                "next-token logits [batch, tokens, vocabulary] and labels [batch, tokens] (a causal LM and text data)"
            )
        targets = labels[:, 1:]
        counted = targets != -100
        log_probs = torch.log_softmax(logits[:, :-1], dim=-1)
        picked = log_probs.gather(-1, targets.clamp(min=0).unsqueeze(-1)).squeeze(-1)
        nll -= float(picked[counted].double().sum())
        tokens += int(counted.sum())
    if tokens == 0:
        raise InputError("perplexity: the eval split holds no labelled token; give it sentences of 2 tokens or more")
    return math.exp(nll / tokens)


EVALUATORS = {
    "accuracy": Evaluator("accuracy", accuracy, is_classifier=True),
    "embedding_similarity": Evaluator("spearman", embedding_similarity, inputs_of=lambda b: [b[0], b[1]]),
    "perplexity": Evaluator("perplexity", perplexity, is_classifier=True, higher_is_better=False),
}


def checked(name: str, score: Callable[[Predict, Iterable], float]) -> Callable[[Predict, Iterable], float]:
    """``score`` that must return a finite number: a NaN or a string is never ranked or recommended."""

    def score_checked(predict: Predict, batches: Iterable) -> float:
        value = score(predict, batches)
        if isinstance(value, torch.Tensor) and value.numel() == 1:
            value = value.item()
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            shown = repr(value)[:60]
            raise InputError(f"task.metric {name}: returned {type(value).__name__} {shown}; it must return a number")
        if not math.isfinite(value):
            raise InputError(
                f"task.metric {name}: returned {value}; the model's outputs or the eval data are degenerate "
                "(NaN outputs, constant predictions); check them"
            )
        return float(value)

    return score_checked


def resolve_evaluator(metric: "str | Callable | Evaluator", search_dir=None) -> Evaluator:
    """An Evaluator from a built-in name, ``package.module:function``, or a callable; its score is checked."""
    evaluator = _resolve(metric, search_dir)
    if getattr(evaluator.score, "__name__", "") == "score_checked":
        return evaluator
    return dataclasses.replace(evaluator, score=checked(evaluator.name, evaluator.score))


def _resolve(metric: "str | Callable | Evaluator", search_dir=None) -> Evaluator:
    if isinstance(metric, Evaluator):
        return metric
    if callable(metric):
        higher = getattr(metric, "higher_is_better", True)
        if not isinstance(higher, bool):
            raise InputError(f"task.metric: its higher_is_better attribute is {higher!r}; set it to True or False")
        return Evaluator(getattr(metric, "__name__", "metric"), metric, higher_is_better=higher)
    if metric in EVALUATORS:
        return EVALUATORS[metric]
    if ":" in metric:
        from compress.core.factories import import_object

        return _resolve(import_object(metric, "task.metric", search_dir))
    raise InputError(
        f"task.metric: unknown metric {metric!r}; use one of {sorted(EVALUATORS)} or package.module:function"
    )


def torch_predictor(model: torch.nn.Module) -> Predict:
    """``predict`` for a torch model, in eval mode and without gradients, on the model's device."""

    @torch.no_grad()
    def predict(inputs):
        device = model_device(model)
        try:
            return first_tensor(call_model(model, to_device(inputs, device))).cpu()
        except (RuntimeError, TypeError, ValueError, IndexError) as exc:
            # The first batch was checked before any work; a later one of another shape lands here.
            names, tensors = flatten_inputs(inputs)
            shapes = ", ".join(
                f"{n} {tuple(t.shape)} {str(t.dtype).removeprefix('torch.')}" for n, t in zip(names, tensors)
            )
            reason = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
            raise InputError(
                f"the model cannot run on an eval batch ({shapes}): {type(exc).__name__}: {reason}; "
                "every batch must be shaped and typed like the first"
            ) from None

    model.eval()
    return predict
