"""Sentence embeddings: parity with a transformers-based mean pooling, order, shapes, the new options
(through Python and `bertkit embed`), bad input. Parity with sentence-transformers: test_sentence.py."""

import json
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
    # 256: MiniLM's sentence_bert_config.json max_seq_length, where sentence-transformers cuts texts
    batch = tok(TEXTS, padding=True, truncation=True, max_length=256, return_tensors="pt")
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
    with pytest.raises(InputError, match="--batch-size must be at least 1"):
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
    assert [str(w.message) for w in caught] == ["1 of 2 inputs truncated to max_length=256 tokens"]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        expected = embedder([huge[:20_000], "hello"], batch_size=1)  # the same first 256 tokens
    np.testing.assert_allclose(got, expected, atol=1e-6)


def test_max_length_still_overrides_the_models_256(embedder):
    long = ["a much longer text that keeps going " * 60]
    with pytest.warns(UserWarning, match="max_length=300"):
        v300 = embedder(long, max_length=300)
    with pytest.warns(UserWarning, match="max_length=256"):
        v256 = embedder(long)
    assert embedder._limit(300) == 300 and not np.allclose(v300, v256, atol=1e-3)
    with pytest.raises(InputError, match="exceeds the model's max_position_embeddings=512"):
        embedder(long, max_length=513)


def test_options_of_a_call(embedder):
    v = embedder(TEXTS[:3], pooling="cls+mean", normalize=False)
    assert v.shape == (3, 768)
    np.testing.assert_allclose(v[:, 384:], embedder(TEXTS[:3], normalize=False), atol=1e-5)
    assert not np.allclose(embedder(TEXTS[:3], layer=-2), embedder(TEXTS[:3]), atol=1e-3)
    np.testing.assert_allclose(embedder(TEXTS[:3], prompt="query: "),
                               embedder(["query: " + t for t in TEXTS[:3]]), atol=1e-6)
    assert embedder(TEXTS[:3], dimensions=128, output_precision="ubinary").shape == (3, 16)
    for bad, message in [(dict(pooling="sum"), "--pooling must be one or more of"),
                         (dict(layer=7), "--layer must be an integer from -7 to 6"),
                         (dict(dimensions=0), "--dimensions must be at least 1"),
                         (dict(prompt="q: ", prompt_name="query"), "not both")]:
        with pytest.raises(InputError, match=message):
            embedder(TEXTS[:3], **bad)


def test_texts_embedded_a_slice_at_a_time_keep_their_vectors_and_order(embedder, monkeypatch):
    import bertkit.embedding

    whole = embedder(TEXTS)
    monkeypatch.setattr(bertkit.embedding, "TEXTS_AT_ONCE", 2)
    np.testing.assert_allclose(embedder(TEXTS), whole, atol=1e-6)


def test_stream_reads_lazily_and_yields_each_slice_with_its_vectors(embedder, monkeypatch):
    monkeypatch.setattr("bertkit.embedding.TEXTS_AT_ONCE", 4)
    texts = [f"text number {i} " + "word " * (i % 5) for i in range(10)]
    read = []

    def lazily():
        for t in texts:
            read.append(t)
            yield t

    stream = embedder.stream(lazily(), batch_size=3, dimensions=64, output_precision="binary")
    first_texts, first = next(stream)
    assert first_texts == texts[:4] and len(read) == 4  # nothing read beyond the first slice
    rest = list(stream)
    assert [len(t) for t, _ in rest] == [4, 2] and first_texts + rest[0][0] + rest[1][0] == texts
    whole = embedder(texts, dimensions=64, output_precision="binary")
    assert np.array_equal(np.concatenate([first] + [v for _, v in rest]), whole) and whole.dtype == np.int8
    with pytest.raises(InputError, match="takes each component's range from all the vectors"):
        next(embedder.stream(texts, output_precision="int8"))
    ranges = np.vstack([-np.ones(384), np.ones(384)]).astype(np.float32)
    _, codes = next(embedder.stream(texts, output_precision="uint8", ranges=ranges))
    assert np.array_equal(codes, embedder(texts[:4], output_precision="uint8", ranges=ranges))


def test_embed_function_passes_the_options(embedder):
    np.testing.assert_array_equal(embed(TEXTS[:3], embedder, output_precision="int8", pooling="max"),
                                  embedder(TEXTS[:3], output_precision="int8", pooling="max"))


# ---- `bertkit embed` with the new options ------------------------------------------------------------


def _cli(capsys, *argv):
    from bertkit.cli import main

    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_cli_precision_keeps_its_type_in_npy_and_jsonl(capsys, tmp_path, embedder):
    src = tmp_path / "texts.txt"
    src.write_text("\n".join(TEXTS[:3]) + "\n", encoding="utf-8")
    code, _, err = _cli(capsys, "embed", "-i", str(src), "-o", str(tmp_path / "v.npy"), "--output-precision", "int8",
                        "--pooling", "mean", "--prompt", "query: ", "--layer", "-1", "--dimensions", "256")
    assert code == 0 and "wrote 3 vectors of dimension 256 (int8)" in err
    got = np.load(tmp_path / "v.npy", allow_pickle=False)
    assert got.dtype == np.int8
    np.testing.assert_array_equal(got, embedder(TEXTS[:3], output_precision="int8", prompt="query: ", dimensions=256))
    code, out, _ = _cli(capsys, "embed", "-i", str(src), "--output-precision", "ubinary")
    rows = [json.loads(line) for line in out.splitlines()]
    assert code == 0 and [len(r["embedding"]) for r in rows] == [48] * 3
    assert all(isinstance(x, int) and 0 <= x <= 255 for x in rows[0]["embedding"])
    np.testing.assert_array_equal(np.array([r["embedding"] for r in rows]), embedder(TEXTS[:3], output_precision="ubinary"))


@pytest.mark.parametrize(("argv", "message"), [
    (["--output-precision", "int4"], "--output-precision must be one of float32, int8, uint8, binary, ubinary"),
    (["--precision", "ubinary"], "--precision must be one of auto, fp32, bf16, int8"),
    (["--pooling", "mean+sum"], "--pooling must be one or more of mean, cls"),
    (["--dimensions", "0"], "--dimensions must be at least 1, got 0"),
    (["--prompt", "q: ", "--prompt-name", "query"], "give --prompt or --prompt-name, not both"),
    (["--prompt-name", ""], "--prompt-name must be a non-empty string"),
    (["--tokens", "--output-precision", "binary"], "--tokens writes one vector per word piece"),
])
def test_cli_bad_options_are_one_line_errors(capsys, monkeypatch, argv, message):
    monkeypatch.setattr("bertkit.embedding.Embedder.from_pretrained", lambda *a: pytest.fail("model loaded"))
    code, _, err = _cli(capsys, "embed", *argv)
    assert code == 2 and message in err and "Traceback" not in err and len(err.strip().splitlines()) <= 2


def test_cli_shows_the_truncation_warning_in_one_line(capsys, tmp_path, embedder, monkeypatch):
    """Regression: a text cut at the model's 256 tokens printed a warning with bertkit's file, line
    number and source line under it."""
    monkeypatch.setattr(warnings, "formatwarning", warnings.formatwarning)  # main() replaces it
    src = tmp_path / "texts.txt"
    src.write_text(TEXTS[0] + "\n" + "word " * 300 + "\n", encoding="utf-8")
    with pytest.warns(UserWarning) as caught:
        code, _, _ = _cli(capsys, "embed", "-i", str(src), "-o", str(tmp_path / "v.npy"))
    w = caught[0]
    shown = warnings.formatwarning(w.message, w.category, w.filename, w.lineno)
    assert code == 0 and shown == "bertkit: warning: 1 of 2 inputs truncated to max_length=256 tokens\n"


def test_cli_help_lists_the_options(capsys):
    with pytest.raises(SystemExit):
        _cli(capsys, "embed", "--help")
    out = capsys.readouterr().out
    for option in ("--pooling", "--prompt", "--prompt-name", "--layer", "--dimensions", "--output-precision", "--precision"):
        assert option in out


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


def test_the_embedder_cache_keeps_eager_and_compiled_models_apart(monkeypatch):
    """bertkit.embed's cache: a model loaded before compile_inference() is not handed out after it."""
    from bertkit import compiled, embedding

    embedding._cached_as.cache_clear()
    loads = []
    monkeypatch.setattr(embedding.Embedder, "from_pretrained",
                        classmethod(lambda cls, path, **kw: loads.append(compiled.compiles_inference()) or object()))
    monkeypatch.setattr(compiled, "_compile_inference", False)
    eager = embedding.cached_embedder("some/model")
    assert embedding.cached_embedder("some/model") is eager
    monkeypatch.setattr(compiled, "_compile_inference", True)
    compiled_one = embedding.cached_embedder("some/model")
    assert compiled_one is not eager and embedding.cached_embedder("some/model") is compiled_one
    assert loads == [False, True]
    embedding._cached_as.cache_clear()
