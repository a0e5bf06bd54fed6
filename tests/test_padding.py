"""padding.py: ragged token lists -> padded batches, checked against values worked out by hand."""

import numpy as np
import torch

from bertkit.padding import pad, pad_inputs


def test_pad_by_hand():
    padded = pad([[5, 6, 7], [8], []], -100)
    assert padded.dtype == torch.int64
    assert padded.tolist() == [[5, 6, 7], [8, -100, -100], [-100, -100, -100]]
    # numpy rows (a pretraining example's int32 tokens, uint8 word starts) pad the same way
    assert pad([np.array([1, 0], dtype=np.uint8), np.array([1], dtype=np.uint8)]).tolist() == [[1, 0], [1, 0]]
    assert pad([]).shape == (0, 0) and pad([[], []]).shape == (2, 0)


def test_pad_inputs_by_hand():
    batch = pad_inputs([[101, 7, 102], [101, 102]], pad_id=0)
    assert list(batch) == ["input_ids", "attention_mask"]
    assert batch["input_ids"].tolist() == [[101, 7, 102], [101, 102, 0]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1], [1, 1, 0]]
    with_types = pad_inputs([[101, 7, 102, 8, 102], [101, 102]], pad_id=3,
                            token_types=[[0, 0, 0, 1, 1], [0, 0]])
    assert with_types["input_ids"].tolist() == [[101, 7, 102, 8, 102], [101, 102, 3, 3, 3]]
    assert with_types["attention_mask"].tolist() == [[1, 1, 1, 1, 1], [1, 1, 0, 0, 0]]
    assert with_types["token_type_ids"].tolist() == [[0, 0, 0, 1, 1], [0, 0, 0, 0, 0]]
