"""The rounding rule of pruned widths, and what ``auto`` stands for."""

import pytest

from compress.pruning.widths import resolve_round_to, rounded_width


@pytest.mark.parametrize(
    ("keep", "width", "multiple", "expected"),
    [
        (31, 45, 8, 32),  # nearest multiple
        (18, 27, 8, 16),
        (12, 32, 8, 16),  # halves round up
        (44, 45, 8, 40),  # never above the width: the largest multiple inside it
        (0, 64, 8, 8),  # never empties: at least one multiple
        (1, 11, 8, 8),
        (3, 8, 8, 8),  # not wider than the multiple: left whole
        (4, 6, 8, 6),
        (11, 16, 16, 16),
        (45, 45, 8, 45),  # nothing asked: nothing cut
        (31, 45, 1, 31),  # 1: exact
        (7, 12, 2, 8),
    ],
)
def test_rounded_width(keep, width, multiple, expected):
    assert rounded_width(keep, width, multiple) == expected


def test_every_rounded_cut_is_a_multiple_within_the_width():
    for multiple in (2, 8, 16):
        for width in range(multiple + 1, 80):
            for keep in range(width):
                kept = rounded_width(keep, width, multiple)
                assert kept % multiple == 0 and multiple <= kept <= width and abs(kept - keep) < 2 * multiple


def test_auto_is_8_everywhere():
    assert resolve_round_to("auto") == 8 and resolve_round_to(4) == 4 and resolve_round_to(1) == 1
