"""Sentence embeddings: parity with a transformers-based mean pooling, order, shapes, bad input."""

import warnings

import numpy as np
import pytest
import torch

from bertkit import InputError
from bertkit.embedding import (
    EXAMPLE_TEXTS,
    Embedder,
    embed,
    format_similarities,
    length_batches,
    mean_pool,
    similarity_table,
)

transformers = pytest.importorskip("transformers")

TEXTS = [
    "A man is playing a guitar.",
    "The stock market fell sharply today.",
    "Someone is strumming a guitar on stage.",
    "",
    "北京是中国的首都。",
    "a much longer text that keeps going " * 30,
]


@pytest.fixture(scope="module")
def embedder(minilm_dir):
    return Embedder.from_pretrained(minilm_dir)


def test_matches_transformers_mean_pooling(embedder, minilm_dir):
    ref = transformers.BertModel.from_pretrained(minilm_dir).eval()
    tok = transformers.AutoTokenizer.from_pretrained(minilm_dir)
    batch = tok(TEXTS, padding=True, truncation=True, max_length=512, return_tensors="pt")
    with torch.no_grad():
        hidden = ref(**batch).last_hidden_state
    m = batch["attention_mask"][..., None].float()
    expected = torch.nn.functional.normalize((hidden * m).sum(1) / m.sum(1), dim=-1).numpy()
    got = embedder(TEXTS, batch_size=2)  # small batches: length bucketing reorders, output must not
    assert got.shape == (len(TEXTS), 384) and got.dtype == np.float32
    np.testing.assert_allclose(got, expected, atol=1e-5)


def test_similar_sentences_are_closer(embedder):
    v = embedder(TEXTS[:3])
    assert v[0] @ v[2] > 0.5 > v[0] @ v[1]


def test_single_string_empty_list_and_unnormalised(embedder):
    assert embedder("hello").shape == (384,)
    assert embedder([]).shape == (0, 384)
    raw = embedder(["hello world"], normalize=False)
    assert not np.isclose(np.linalg.norm(raw), 1.0)


def test_embed_function_caches_the_default_model():
    a = embed(["hello world"])
    b = embed("hello world")
    np.testing.assert_allclose(a[0], b, atol=1e-6)


@pytest.mark.parametrize("bad", [[None], ["ok", 3]])
def test_non_strings_are_refused(embedder, bad):
    with pytest.raises(InputError):
        embedder(bad)


def test_bad_batch_size(embedder):
    with pytest.raises(InputError, match="batch_size"):
        embedder(["a"], batch_size=0)


def test_helpers_by_hand():
    assert length_batches([3, 9, 1, 5], 2) == [[1, 3], [0, 2]]
    hidden = torch.tensor([[[1.0, 2.0], [3.0, 4.0], [100.0, 100.0]]])
    torch.testing.assert_close(mean_pool(hidden, torch.tensor([[1, 1, 0]])), torch.tensor([[2.0, 3.0]]))


def test_a_huge_line_is_embedded_from_its_first_pieces_only(embedder, monkeypatch):
    import bertkit.tokenizer as tokenizer_module

    seen: list[int] = []  # characters of every text that reaches the tokenizer's engine
    real = tokenizer_module._encode

    def spy(engine, inputs, **options):
        seen.extend(len(x) for x in inputs)
        return real(engine, inputs, **options)

    monkeypatch.setattr(tokenizer_module, "_encode", spy)
    huge = "A man is playing a guitar on stage, and the crowd sings along. " * 80_000  # 5 MB
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        got = embedder([huge, "hello"], batch_size=1)
    assert sum(seen) < 20_000
    assert [str(w.message) for w in caught] == ["1 of 2 inputs truncated to max_length=512 tokens"]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        expected = embedder([huge[:20_000], "hello"], batch_size=1)  # the same first 512 tokens
    np.testing.assert_allclose(got, expected, atol=1e-6)


# ---- the similarity table --------------------------------------------------------------------------


def test_similarity_table_by_hand():
    sims = np.array([[1.0, 0.25], [0.25, 1.0]])
    assert format_similarities(["a", "bb"], sims).splitlines() == [
        "cosine similarity:",
        "         0      1",
        "[0]  1.000  0.250   a",
        "[1]  0.250  1.000   bb",
    ]
    rows = format_similarities([str(i) for i in range(11)], np.eye(11)).splitlines()
    assert rows[2].startswith(" [0]  1.000  0.000") and rows[12].startswith("[10]  0.000")


def test_similarity_table_of_the_examples(minilm_dir):
    lines = similarity_table(None, minilm_dir).splitlines()
    assert lines[0] == f"model: {minilm_dir}, {len(EXAMPLE_TEXTS)} texts, dimension 384"
    assert lines[1] == "cosine similarity:" and len(lines) == 3 + len(EXAMPLE_TEXTS)
    for i, (line, text) in enumerate(zip(lines[3:], EXAMPLE_TEXTS)):
        values = [float(x) for x in line.split("   ")[0].split()[1:]]
        assert line.endswith(f"   {text}") and values[i] == 1.0
    assert similarity_table(["x", "y"], minilm_dir).splitlines()[0].endswith(", 2 texts, dimension 384")
