"""tasks/base.py helpers shared by every task family, on values worked out by hand."""

import math

import numpy as np

from bertkit.labels import IGNORE
from bertkit.tasks.base import collate, softmax


def test_softmax_by_hand():
    np.testing.assert_allclose(softmax(np.array([0.0, math.log(3)])), [0.25, 0.75])
    np.testing.assert_allclose(softmax(np.array([1000.0, 1000.0])), [0.5, 0.5])  # no overflow
    x = np.array([[0.0, 0.0], [math.log(3), 0.0]])
    np.testing.assert_allclose(softmax(x), [[0.5, 0.5], [0.75, 0.25]])  # the last axis by default
    np.testing.assert_allclose(softmax(x, axis=0), [[0.25, 0.5], [0.75, 0.5]])


def test_collate_pads_each_key_with_its_value():
    features = [{"input_ids": [5, 6, 7], "token_type_ids": [0, 0, 1], "labels": [1, 2, 3], "_example": 0},
                {"input_ids": [8], "token_type_ids": [0], "labels": [4], "_example": 1}]
    batch = collate(features, pad_id=9)
    assert sorted(batch) == ["attention_mask", "input_ids", "labels", "token_type_ids"]
    assert batch["input_ids"].tolist() == [[5, 6, 7], [8, 9, 9]]
    assert batch["token_type_ids"].tolist() == [[0, 0, 1], [0, 0, 0]]
    assert batch["labels"].tolist() == [[1, 2, 3], [4, IGNORE, IGNORE]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1], [1, 0, 0]]


def test_collate_multiple_choice_pads_every_choice_to_the_longest():
    features = [{"input_ids": [[1, 2], [3]], "choice_mask": [1, 1], "labels": 0},
                {"input_ids": [[4, 5, 6], [7]], "choice_mask": [1, 0], "labels": 1}]
    batch = collate(features, pad_id=0)
    assert batch["input_ids"].tolist() == [[[1, 2, 0], [3, 0, 0]], [[4, 5, 6], [7, 0, 0]]]
    assert batch["attention_mask"].tolist() == [[[1, 1, 0], [1, 0, 0]], [[1, 1, 1], [1, 0, 0]]]
    assert batch["choice_mask"].tolist() == [[1, 1], [1, 0]] and batch["labels"].tolist() == [0, 1]
