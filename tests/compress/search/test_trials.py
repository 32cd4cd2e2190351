"""A trial runner's data: the cheap rungs' validation batches, and an eval split the metric cannot score."""

import itertools

from compress.core.errors import InputError
from compress.recipe.schema import load_recipe
from compress.search.report import figure
from compress.search.trials import TrialRunner, validation_subset
from tests.compress.search.test_search import model, task_data


class CountedBatches:
    """A validation split that counts the batches read, and shuffles them on every pass like a DataLoader."""

    def __init__(self, batches: list):
        self.batches, self.read, self.passes = batches, 0, itertools.count()

    def __iter__(self):
        order = list(range(len(self.batches)))
        shift = next(self.passes) % len(order)
        for index in order[shift:] + order[:shift]:
            self.read += 1
            yield self.batches[index]


def test_a_cheap_rung_reads_few_batches_and_every_trial_scores_the_same_ones():
    data = task_data()
    split = CountedBatches(data.validation * 5)
    data.validation = split
    assert validation_subset(data, 2)[1:] == (2, False) and split.read == 3
    assert validation_subset(data, 10)[1:] == (10, True)
    runner = TrialRunner(model(), load_recipe({}), data, None, None, None, 4)
    first = runner.validation(2)[0]
    assert runner.validation(2)[0] is first  # a shuffling loader would give a second trial other samples


def test_an_eval_split_the_metric_cannot_score_is_reported_not_fatal(monkeypatch):
    runner = TrialRunner(model(), load_recipe({}), task_data(), None, None, None, 4)

    def degenerate(path, batches):
        raise InputError("task.metric spearman: returned nan; the model's outputs or the eval data are degenerate")

    monkeypatch.setattr(runner, "score_path", degenerate)
    assert runner.eval_metric("trials/x/int8.onnx") is None
    assert figure(None) == "not scorable" and figure(0.91234) == "0.9123"
