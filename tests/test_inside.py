"""A look inside the model: token vectors (offsets, values, contextual senses) and attention maps."""

import json

import numpy as np
import pytest
import torch

import bertkit
from bertkit import BertModel, InputError, Tokenizer
from bertkit.cli import main
from bertkit.inside import attention_map, attention_weights, token_vectors

TEXTS = [
    "The quick brown fox jumps over the lazy dog.",
    "Café naïve Ångström — accents & punctuation?!",
    "北京是中国的首都。我们今天去吃饭。",
    "unaffable tokenization, emoji 😀 and 3.14159",
    "",
]


def run(capsys, *argv):
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture(scope="module")
def tiny(tiny_model_dir):
    return BertModel.from_pretrained(tiny_model_dir).eval(), Tokenizer.from_pretrained(tiny_model_dir)


def test_offsets_point_at_the_pieces_in_the_text(minilm_dir):
    tokenizer = Tokenizer.from_pretrained(minilm_dir)
    for text, pieces in zip(TEXTS, token_vectors(TEXTS, minilm_dir)):
        assert (pieces[0].token, pieces[0].start, pieces[0].end) == ("[CLS]", None, None)
        assert (pieces[-1].token, pieces[-1].start, pieces[-1].end) == ("[SEP]", None, None)
        for p in pieces[1:-1]:
            assert 0 <= p.start < p.end <= len(text)
            if p.token != "[UNK]":  # the vocabulary's form: lower-cased, accents stripped
                assert tokenizer.normalize(text[p.start : p.end]).strip() == p.token.removeprefix("##"), (text, p[:4])
    pieces = token_vectors("Café 北京 unaffable", minilm_dir)[0]
    assert [(p.token, p.start, p.end) for p in pieces[1:-1]] == [
        ("cafe", 0, 4), ("北", 5, 6), ("京", 6, 7), ("una", 8, 11), ("##ffa", 11, 14), ("##ble", 14, 17)]
    assert [p.id for p in pieces] == tokenizer("Café 北京 unaffable")["input_ids"]


@pytest.mark.parametrize("layer", [-1, -2, 0, 2])
def test_vectors_are_the_rows_of_the_models_hidden_states(tiny, layer):
    model, tokenizer = tiny
    got = token_vectors(TEXTS, bertkit.Embedder(model, tokenizer), layer=layer, batch_size=2)
    for text, pieces in zip(TEXTS, got):
        batch = tokenizer(text, return_tensors="pt")
        with torch.no_grad():
            out = model(**batch, output_hidden_states=True)
        expected = out.hidden_states[layer][0]  # (T, C)
        if layer == -1:
            torch.testing.assert_close(expected, out.last_hidden_state[0])
        np.testing.assert_allclose(np.stack([p.vector for p in pieces]), expected.numpy(), atol=1e-5, rtol=0)
        assert [p.id for p in pieces] == batch["input_ids"][0].tolist()


def test_normalized_vectors_have_unit_length_and_the_same_direction(tiny):
    embedder = bertkit.Embedder(*tiny)
    raw, unit = token_vectors("a short text", embedder)[0], token_vectors("a short text", embedder, normalize=True)[0]
    for r, u in zip(raw, unit):
        np.testing.assert_allclose(u.vector, r.vector / np.linalg.norm(r.vector), atol=1e-6)


def _cos(a, b):
    return float(a @ b / np.linalg.norm(a) / np.linalg.norm(b))


def test_the_same_word_gets_a_vector_per_sense(minilm_dir):
    """The word2vec replacement: "bank" by a river and "bank" with money are two vectors, further
    apart than two money banks (measured on MiniLM: 0.74 across senses, 0.87 within)."""
    texts = ["We sat on the river bank and watched the water.", "I opened an account at the bank.",
             "The bank approved my loan."]
    bank = [next(p.vector for p in pieces if p.token == "bank") for pieces in token_vectors(texts, minilm_dir)]
    across, within = _cos(bank[0], bank[1]), _cos(bank[1], bank[2])
    assert not np.allclose(bank[0], bank[1])
    assert within - across > 0.05, (across, within)


def test_long_texts_are_truncated_to_max_length(tiny):
    with pytest.warns(UserWarning, match="truncated to max_length=10"):
        pieces = token_vectors("word " * 500, bertkit.Embedder(*tiny), max_length=10)[0]
    assert len(pieces) == 10 and pieces[-1].token == "[SEP]"
    with pytest.raises(InputError, match="max_position_embeddings=128"):
        token_vectors("x", bertkit.Embedder(*tiny), max_length=129)


@pytest.mark.parametrize("kwargs, message", [
    ({"layer": 3}, "--layer must be an integer from -3 to 2 .* got 3"),
    ({"layer": -4}, "got -4"),
    ({"batch_size": 0}, "--batch-size must be at least 1"),
])
def test_bad_token_vector_options_are_one_line(tiny, kwargs, message):
    with pytest.raises(InputError, match=message) as e:
        token_vectors("x", bertkit.Embedder(*tiny), **kwargs)
    assert "\n" not in str(e.value)


def test_python_api_exports_token_vectors():
    assert bertkit.token_vectors is token_vectors


# ---- attention ----------------------------------------------------------------------------------


def test_attention_weights_are_the_models(tiny):
    model, tokenizer = tiny
    att = attention_weights("the cat sat", bertkit.Embedder(model, tokenizer), layer=-1, pair="it was tired")
    batch = tokenizer("the cat sat", "it was tired", return_tensors="pt")
    with torch.no_grad():
        expected = model(**batch, output_attentions=True).attentions[1][0]  # (H, T, T)
    np.testing.assert_allclose(att.weights, expected.numpy(), atol=1e-6)
    assert att.tokens == ["[CLS]", "the", "cat", "sat", "[SEP]", "it", "was", "tired", "[SEP]"]
    assert (att.layer, att.layers, att.weights.shape) == (1, 2, (4, 9, 9))


@pytest.mark.parametrize("head, name", [(0, "one.png"), (-1, "last.svg"), (None, "grid.png"), (None, "grid.pdf")])
def test_attention_picture_is_written(tiny, tmp_path, head, name):
    path = attention_map("The cat sat on the mat.", bertkit.Embedder(*tiny), layer=0, head=head,
                         out=tmp_path / "sub" / name)
    data = path.read_bytes()
    assert path == tmp_path / "sub" / name and len(data) > 1000
    magic = {".png": b"\x89PNG", ".svg": b"<?xml", ".pdf": b"%PDF"}[path.suffix]
    assert data.startswith(magic)
    assert [p.name for p in path.parent.iterdir()] == [name]  # no temporary file left behind


@pytest.mark.parametrize("kwargs, message", [
    ({"layer": 2}, "--layer 2 is out of range: the model has 2 layers (0..1, or -2..-1 from the end)"),
    ({"head": 4}, "--head 4 is out of range: the model has 4 attention heads (0..3, or -4..-1 from the end)"),
    ({"out": "attn.jpg"}, "attn.jpg: must end in .png, .pdf, .svg"),
])
def test_bad_attention_options_are_one_line(tiny, tmp_path, kwargs, message):
    kwargs = {"out": "attn.png", **kwargs}
    kwargs["out"] = tmp_path / kwargs["out"]
    with pytest.raises(InputError) as e:
        attention_map("the cat", bertkit.Embedder(*tiny), **kwargs)
    assert message in str(e.value) and "\n" not in str(e.value)
    assert not any(tmp_path.iterdir())


# ---- the command line ------------------------------------------------------------------------------


def test_embed_tokens_round_trip(capsys, tmp_path, tiny_model_dir):
    src = tmp_path / "texts.txt"
    src.write_text("river bank\n\nbank account\n", encoding="utf-8")
    out = tmp_path / "tokens.jsonl"
    code, _, err = run(capsys, "embed", "--tokens", "--model", tiny_model_dir, "-i", src, "-o", out)
    assert code == 0 and "wrote the vectors of 8 word pieces of 2 texts" in err
    rows = [json.loads(line) for line in out.read_text(encoding="utf-8").splitlines()]
    assert [r["text"] for r in rows] == ["river bank", "bank account"]
    assert [t["token"] for t in rows[0]["tokens"]] == ["[CLS]", "river", "bank", "[SEP]"]
    assert rows[0]["tokens"][2] | {"embedding": None} == {"token": "bank", "id": 2924, "start": 6, "end": 10,
                                                          "embedding": None}
    assert rows[0]["tokens"][0]["start"] is None
    expected = token_vectors(["river bank", "bank account"], tiny_model_dir)  # raw by default
    for row, pieces in zip(rows, expected):
        np.testing.assert_allclose(np.array([t["embedding"] for t in row["tokens"]]),
                                   np.stack([p.vector for p in pieces]), atol=1e-6)
    code, stdout, _ = run(capsys, "embed", "--tokens", "--model", tiny_model_dir, "--normalize", "-i", src)
    lines = stdout.splitlines()
    assert code == 0 and len(lines) == 2
    unit = token_vectors("river bank", tiny_model_dir, normalize=True)[0]
    np.testing.assert_allclose(json.loads(lines[0])["tokens"][1]["embedding"], unit[1].vector, atol=1e-6)
    assert np.linalg.norm(unit[1].vector) == pytest.approx(1.0, abs=1e-5)


def test_embed_tokens_layer(capsys, tmp_path, tiny_model_dir):
    """--layer (EmbedArgs's, shared with sentence vectors) picks the hidden states the pieces get."""
    src = tmp_path / "texts.txt"
    src.write_text("river bank\n", encoding="utf-8")
    code, stdout, _ = run(capsys, "embed", "--tokens", "--layer", "-2", "--no-normalize", "--model", tiny_model_dir,
                          "-i", src)
    expected = token_vectors("river bank", tiny_model_dir, layer=-2)[0]
    assert code == 0 and not np.allclose(expected[1].vector, token_vectors("river bank", tiny_model_dir)[0][1].vector)
    np.testing.assert_allclose(json.loads(stdout)["tokens"][1]["embedding"], expected[1].vector, atol=1e-6)


def test_attention_command(capsys, tmp_path, tiny_model_dir):
    out = tmp_path / "attn.png"
    code, _, err = run(capsys, "attention", "--model", tiny_model_dir, "The cat sat.", "--layer", "-1",
                       "--head", "1", "--pair", "It was tired.", "--out", out)
    assert code == 0 and f"wrote {out}" in err and out.read_bytes().startswith(b"\x89PNG")


@pytest.mark.parametrize("argv, message", [
    (["attention", "the cat", "--out", "{tmp}/a.png", "--layer", "7"], "--layer 7 is out of range"),
    (["attention", "the cat", "--out", "{tmp}/a.png", "--head", "-5"], "--head -5 is out of range"),
    (["attention", "the cat", "--out", "{tmp}/a.gif"], "must end in .png, .pdf, .svg"),
    (["attention", "the cat", "--out", "{tmp}/a.png", "--layer", "x"], "--layer"),
    (["embed", "--tokens", "-i", "{tmp}/t.txt", "-o", "{tmp}/v.npy"], "--tokens writes JSONL"),
    # regressions: an empty text drew a map of [CLS] and [SEP]; --tokens left a prompt out silently
    (["attention", "  ", "--out", "{tmp}/a.png"], "the text is empty"),
    (["attention", "the cat", "--pair", "", "--out", "{tmp}/a.png"], "the pair is empty"),
    (["embed", "--tokens", "--prompt", "query: ", "-i", "{tmp}/t.txt"], "--tokens writes one vector per word piece"),
    (["embed", "--tokens", "--prompt-name", "query", "-i", "{tmp}/t.txt"], "--tokens writes one vector per word"),
    (["embed", "--tokens", "--compile", "-i", "{tmp}/t.txt"], "--precision and --compile are for sentence vectors"),
    (["embed", "--tokens", "--precision", "int8", "-i", "{tmp}/t.txt"], "--precision and --compile are for sentence"),
])
def test_command_errors_are_one_line(capsys, tmp_path, tiny_model_dir, argv, message):
    (tmp_path / "t.txt").write_text("hello\n", encoding="utf-8")
    argv = [a.format(tmp=tmp_path) for a in argv] + ["--model", str(tiny_model_dir)]
    code, _, err = run(capsys, *argv)
    assert code == 2 and message in err and err.count("\n") == 1 and "Traceback" not in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["t.txt"]


def test_vectors_match_sentence_transformers_token_embeddings(minilm_dir):
    """sentence-transformers' encode(output_value="token_embeddings") is the reference: the same
    pieces, the same vectors, and the same cut at the folder's max_seq_length (256 here)."""
    st = pytest.importorskip("sentence_transformers")
    texts = TEXTS[:4] + [" ".join(["a long input that runs past the maximum length"] * 40)]
    reference = st.SentenceTransformer(str(minilm_dir), device="cpu").encode(texts, output_value="token_embeddings")
    with pytest.warns(UserWarning, match="truncated"):
        got = token_vectors(texts, minilm_dir)
    assert len(got[-1]) == 256
    for pieces, expected in zip(got, reference):
        np.testing.assert_allclose(np.stack([p.vector for p in pieces]), expected.numpy(), atol=1e-5, rtol=0)
