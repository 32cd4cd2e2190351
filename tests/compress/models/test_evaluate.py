"""Built-in evaluators compute the documented figures."""

import pytest
import torch
from scipy.stats import spearmanr

from compress.core.errors import InputError
from compress.models.evaluate import EVALUATORS, resolve_evaluator


def test_accuracy_counts_correct_argmax():
    logits = {0: torch.tensor([[1.0, 0.0], [0.0, 1.0]]), 1: torch.tensor([[1.0, 0.0], [1.0, 0.0]])}
    batches = [(0, torch.tensor([0, 1])), (1, torch.tensor([1, 0]))]
    assert EVALUATORS["accuracy"].score(lambda key: logits[key], batches) == 0.75


def test_accuracy_of_dense_outputs_is_per_element_over_the_class_axis():
    # per token [B, T, C] against [B, T], padding labelled -100 left out: 3 of 4 scored tokens right
    tokens = torch.tensor([[[2.0, 0.0], [0.0, 1.0], [5.0, 0.0]], [[0.0, 3.0], [1.0, 0.0], [0.0, 1.0]]])
    labels = torch.tensor([[0, 1, -100], [1, 1, -100]])
    assert EVALUATORS["accuracy"].score(lambda x: tokens, [(None, labels)]) == 0.75
    # per pixel, channels first [B, C, H, W] against [B, H, W]: argmax over C, 7 of 8 pixels right
    pixels = torch.zeros(2, 3, 2, 2)
    truth = torch.tensor([[[0, 1], [2, 0]], [[1, 1], [2, 2]]])
    pixels.scatter_(1, truth.unsqueeze(1), 1.0)
    pixels[1, 0, 0, 0] = 2.0  # one pixel now argmaxes to class 0
    assert EVALUATORS["accuracy"].score(lambda x: pixels, [(None, truth)]) == 0.875


def test_accuracy_refuses_outputs_without_a_class_axis_beside_the_labels():
    with pytest.raises(
        InputError, match=r"outputs of shape \[4, 6\] do not fit labels of shape \[4, 2\].*write a metric"
    ):
        EVALUATORS["accuracy"].score(lambda x: torch.zeros(4, 6), [(None, torch.zeros(4, 2, dtype=torch.long))])


def test_embedding_similarity_is_spearman_of_cosines():
    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(20, 8, generator=g), torch.randn(20, 8, generator=g)
    scores = torch.rand(20, generator=g) * 5
    batches = [(a[:10], b[:10], scores[:10]), (a[10:], b[10:], scores[10:])]
    value = EVALUATORS["embedding_similarity"].score(lambda x: x, batches)
    cosine = torch.nn.functional.cosine_similarity(a, b)
    assert value == pytest.approx(spearmanr(cosine.numpy(), scores.numpy()).statistic * 100, abs=1e-9)
    assert EVALUATORS["embedding_similarity"].inputs_of(batches[0]) == [batches[0][0], batches[0][1]]


def test_empty_eval_split_is_an_input_error():
    with pytest.raises(InputError, match="eval split is empty"):
        EVALUATORS["accuracy"].score(lambda x: x, [])


def test_custom_metric_by_path_and_unknown_names():
    evaluator = resolve_evaluator("tests.compress.models.test_evaluate:constant_metric")
    assert evaluator.score(None, []) == 42.0
    with pytest.raises(InputError, match="unknown metric 'acc'"):
        resolve_evaluator("acc")


def constant_metric(predict, batches):
    return 42.0
