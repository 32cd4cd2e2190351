"""Perplexity, a lower-is-better metric: scored like Hugging Face's own loss, and every comparison of
two figures (budget, best epoch, recommendation, front, search) counts its rise as the loss."""

import math

import pytest
import torch

from compress.core.errors import InputError
from compress.models.evaluate import EVALUATORS, metric_loss, perplexity, resolve_evaluator, torch_predictor
from compress.models.text import text_batches
from compress.quant.budget import fit_budget
from compress.search.strategy import drop, front
from export.report.build import recommend
from export.report.summary import pareto_front
from tests.export.report.test_report import BASELINE, CPU, artifact
from tests.tiny_decoders import tiny_decoder, word_level_tokenizer

TEXTS = ["w3 w4 w5 w6 w7", "w8 w9", "w10 w11 w12", "w13 w14 w15 w16"]


def test_perplexity_is_exp_of_the_models_own_loss_padding_left_out():
    model = tiny_decoder("llama")
    (inputs, labels), *_ = text_batches(TEXTS, word_level_tokenizer(), batch_size=4)
    assert int((labels == -100).sum()) > 0  # the batch is padded
    with torch.no_grad():
        loss = model(**inputs, labels=labels).loss
    assert perplexity(torch_predictor(model), [(inputs, labels)]) == pytest.approx(math.exp(float(loss)), rel=1e-5)


def test_every_token_weighs_the_same_across_batches():
    model = tiny_decoder("llama")
    one = text_batches(TEXTS, word_level_tokenizer(), batch_size=4)
    two = text_batches(TEXTS, word_level_tokenizer(), batch_size=1)
    predict = torch_predictor(model)
    assert perplexity(predict, two) == pytest.approx(perplexity(predict, one), rel=1e-5)


def test_an_output_that_is_not_next_token_logits_is_one_line():
    with pytest.raises(InputError, match="needs next-token logits"):
        perplexity(lambda inputs: torch.zeros(2, 5), [({"input_ids": None}, torch.zeros(2, 3, dtype=torch.long))])


def test_direction_comes_with_the_metric():
    assert EVALUATORS["perplexity"].higher_is_better is False
    assert metric_loss(10.0, 11.0, higher_is_better=False) == pytest.approx(1.0)  # a rise is the loss
    assert metric_loss(0.9, 0.8) == pytest.approx(0.1)

    def lower_is_better(predict, batches):
        return 1.0

    lower_is_better.higher_is_better = False
    assert resolve_evaluator(lower_is_better).higher_is_better is False
    lower_is_better.higher_is_better = "no"
    with pytest.raises(InputError, match="higher_is_better attribute is 'no'"):
        resolve_evaluator(lower_is_better)


def test_the_budget_falls_back_the_layers_that_raise_perplexity():
    # perplexity 10.0 in fp32; quantizing "b" raises it by 3, the others by 0.1 each
    def score(quantized):
        return 10.0 + sum(3.0 if layer == "b" else 0.1 for layer in quantized)

    result = fit_budget(["a", "b", "c"], score, 10.0, 0.5, higher_is_better=False)
    assert result.met and result.float_layers == ["b"]
    assert result.drop == pytest.approx(0.2) and result.metric == pytest.approx(10.2)


def test_the_recommendation_and_the_front_prefer_lower_perplexity():
    def ppl(record, value):
        return {**record, "metric": {"name": "perplexity", "value": value, "runtime": "onnxruntime",
                                     "higher_is_better": False}}  # fmt: skip

    base = ppl(BASELINE, 20.0)
    fast = ppl(artifact("fast", 0, 500_000, {1: 0.1, 32: 1.0}), 20.4)
    fastest = ppl(artifact("fastest", 0, 400_000, {1: 0.05, 32: 0.5}), 23.0)  # +3.0: over the budget
    assert recommend([base, fast, fastest], 0.5, CPU)["name"] == "fast"
    assert "+0.4000 drop" in recommend([base, fast, fastest], 0.5, CPU)["reason"]
    assert recommend([base, fast, fastest], 5.0, CPU)["name"] == "fastest"
    # (cost, perplexity): the dearer point with the higher perplexity is dominated
    assert pareto_front([(1.0, 20.0), (2.0, 21.0), (0.5, 22.0)], higher_is_better=False) == [0, 2]


def test_the_search_counts_a_rise_of_perplexity_as_points_lost():
    points = [
        {"validation_metric": 20.5, "speedup": 2.0, "size_bytes": 1},
        {"validation_metric": 21.0, "speedup": 1.5, "size_bytes": 1},  # slower and worse: off the front
    ]
    assert drop(points[0], 20.0, 1.0, higher_is_better=False) == pytest.approx(0.5)
    assert front(points, "latency", higher_is_better=False) == [points[0]]
