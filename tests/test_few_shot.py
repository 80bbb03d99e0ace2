"""The few-shot rule: exactly M per class from a seeded shuffle."""

import pytest
import torch

from zskt.data.few_shot import few_shot_indices
from zskt.validation import parse_m
from zskt.errors import UserError

LABELS = torch.arange(10).repeat_interleave(torch.tensor([30, 25, 40, 12, 50, 33, 27, 45, 20, 18]))


def test_exactly_m_per_class_and_the_first_of_the_shuffle():
    chosen = few_shot_indices(LABELS, 7, seed=3)
    assert len(chosen) == 70 and torch.equal(torch.bincount(LABELS[chosen]), torch.full((10,), 7))
    order = torch.randperm(len(LABELS), generator=torch.Generator().manual_seed(3)).tolist()
    expected, seen = [], [0] * 10
    for index in order:  # the rule written out: walk the shuffle, keep a class's first 7
        if seen[int(LABELS[index])] < 7:
            seen[int(LABELS[index])] += 1
            expected.append(index)
    assert chosen.tolist() == sorted(expected)


def test_seeds_reproduce_and_differ():
    assert torch.equal(few_shot_indices(LABELS, 5, 0), few_shot_indices(LABELS, 5, 0))
    assert not torch.equal(few_shot_indices(LABELS, 5, 0), few_shot_indices(LABELS, 5, 1))


def test_m_above_the_smallest_class_is_an_error():
    assert len(few_shot_indices(LABELS, 12, 0)) == 120
    with pytest.raises(UserError, match="smallest class \\(12 images\\)"):
        few_shot_indices(LABELS, 13, 0)


@pytest.mark.parametrize(("value", "expected"), [(None, None), ("all", None), ("25", 25), (10, 10)])
def test_parse_m(value, expected):
    assert parse_m(value) == expected


@pytest.mark.parametrize("value", [0, -3, "2.5", 2.5, "ten", True])
def test_parse_m_rejects(value):
    with pytest.raises(UserError, match="dataset.m"):
        parse_m(value)
