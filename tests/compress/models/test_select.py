"""The layer selector: exact names, re: patterns, exclusions, and no-match errors."""

import pytest
import torch

from compress.core.errors import SelectionError
from compress.models.select import select_modules
from tests.tiny_models import residual_cnn

LINEAR_CONV = (torch.nn.Linear, torch.nn.Conv2d)


def test_regex_selects_in_model_order_and_exclude_wins():
    model = residual_cnn()
    chosen = select_modules(model, ["re:.*"], ["head"], LINEAR_CONV)
    assert list(chosen) == ["stem.0", "conv"]


def test_exact_name_selects_one_layer():
    assert list(select_modules(residual_cnn(), ["conv"], types=LINEAR_CONV)) == ["conv"]


def test_pattern_matching_nothing_raises_with_names():
    with pytest.raises(SelectionError, match=r"pattern 'convv' matches no Linear/Conv2d layer; .*stem\.0"):
        select_modules(residual_cnn(), ["convv"], types=LINEAR_CONV)


def test_exclude_pattern_matching_nothing_raises():
    with pytest.raises(SelectionError, match="'re:classifier.*'"):
        select_modules(residual_cnn(), ["re:.*"], ["re:classifier.*"], LINEAR_CONV)


def test_invalid_regex_raises():
    with pytest.raises(SelectionError, match="invalid regular expression"):
        select_modules(residual_cnn(), ["re:(("], types=LINEAR_CONV)
