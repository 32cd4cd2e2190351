"""Splits given in a shape modelpress cannot read: the message says what was given and what to pass."""

import pytest
import torch

import compress
from compress.core.errors import InputError

X, Y = torch.randn(100, 4), torch.zeros(100, dtype=torch.long)


@pytest.mark.parametrize(
    ("split", "given"),
    [
        ((X, Y), "2 whole tensor(s) ((100, 4) float32, (100,) int64), not batches"),
        ([X, Y], "2 whole tensor(s) ((100, 4) float32, (100,) int64), not batches"),
        (X, "1 whole tensor(s) ((100, 4) float32), not batches"),
        ((b for b in [(X, Y)]), "a one-shot generator (empty after its first pass"),
        (iter([(X, Y)]), "a one-shot list_iterator"),
    ],
)
def test_unreadable_split_says_what_was_given_and_what_to_pass(split, given):
    with pytest.raises(InputError) as error:
        compress.TaskData(eval=[(X[:8], Y[:8])], validation=split)
    message = str(error.value)
    assert message.startswith(f"task data: the 'validation' split is {given}")
    assert "validation=list(" in message  # the one-line example uses the split's own name


def test_bare_generator_as_data_is_refused_before_any_work():
    with pytest.raises(InputError, match="'eval' split is a one-shot generator"):
        compress.run(torch.nn.Linear(4, 2), [], data=((X[i : i + 10], Y[i : i + 10]) for i in range(0, 100, 10)))


def test_readable_splits_pass():
    batches = [(X[i : i + 10], Y[i : i + 10]) for i in range(0, 100, 10)]
    data = compress.TaskData(eval=batches, train=[X[:10], X[10:20]], validation=lambda: iter(batches))
    assert len(list(data.batches("validation"))) == 10
