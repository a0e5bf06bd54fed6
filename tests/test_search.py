"""`bertkit index` / `bertkit search` (vector_index.py): ids, exact against numpy, HNSW recall, --add,
resuming an interrupted build, output formats and one-line errors; one semantic check on MiniLM."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

import bertkit
from bertkit import vector_index
from bertkit.cli import main
from bertkit.embedding import Embedder
from bertkit.errors import InputError
from bertkit.vector_index import VectorIndex, build_index, exact_top_k, hnsw_top_k, read_corpus

PASSAGES = ["the cat sat on the mat", "paris is the capital of france", "the stock market fell sharply",
            "a man is playing a guitar", "rain is expected tomorrow", "she baked bread this morning",
            "the train was late again", "he repaired the old bicycle", "birds sing at dawn", "the museum opens at ten"]


def unit(rows: int, dim: int, seed: int = 0) -> np.ndarray:
    x = np.random.default_rng(seed).standard_normal((rows, dim)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def run(capsys, *argv) -> tuple[int, str, str]:
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture
def corpus(tmp_path) -> Path:
    path = tmp_path / "corpus.txt"
    path.write_text(PASSAGES[0] + "\n\n" + "\n".join(PASSAGES[1:]) + "\n")  # line 1 blank: skipped, numbered
    return path


def test_text_ids_are_line_numbers_and_jsonl_ids_are_kept(tmp_path, corpus):
    assert [(p.id, p.text) for p in read_corpus(corpus)[:3]] == [(0, PASSAGES[0]), (2, PASSAGES[1]), (3, PASSAGES[2])]
    jsonl = tmp_path / "c.jsonl"
    jsonl.write_text('{"id": "doc-a", "text": "alpha"}\n\n{"text": "beta"}\n{"id": 7, "text": "gamma", "x": 1}\n')
    assert [(p.id, p.text) for p in read_corpus(jsonl)] == [("doc-a", "alpha"), (2, "beta"), (7, "gamma")]
    other = tmp_path / "o.jsonl"
    other.write_text('{"key": 5, "body": "delta"}\n')
    assert [(p.id, p.text) for p in read_corpus(other, text_field="body", id_field="key")] == [(5, "delta")]


def test_exact_top_k_is_numpy_brute_force():
    vectors, queries = unit(1000, 16), unit(7, 16, seed=1)
    chunks = [vectors[i : i + 96] for i in range(0, 1000, 96)]  # k spans chunks
    for k in (1, 10, 150):
        scores, rows = exact_top_k(chunks, queries, k)
        expected = np.argsort(-(queries @ vectors.T), axis=1)[:, :k]
        np.testing.assert_array_equal(rows, expected)
        np.testing.assert_allclose(scores, np.take_along_axis(queries @ vectors.T, expected, 1), rtol=1e-6)
    scores, rows = exact_top_k([vectors[:3]], queries, 10)  # k above the count: all of them
    assert rows.shape == (7, 3)


def test_hnsw_recall_against_exact_on_random_unit_vectors():
    vectors, queries = unit(4000, 32), unit(200, 32, seed=1)
    graph = vector_index.new_hnsw(32, {"connectivity": 16, "expansion_add": 128, "expansion_search": 64})
    vector_index.add_to_hnsw(graph, [vectors[:2500], vectors[2500:]], 0)
    _, approx = hnsw_top_k(graph, queries, 10)
    _, exact = exact_top_k([vectors], queries, 10)
    recall = np.mean([len(set(a) & set(e)) / 10 for a, e in zip(approx, exact)])
    assert recall >= 0.95, recall


def test_index_and_search_from_the_command_line(capsys, tmp_path, corpus, tiny_model_dir):
    out = tmp_path / "idx"
    code, _, err = run(capsys, "index", corpus, "--model", tiny_model_dir, "--out", out)
    assert code == 0 and "an exact index of 10 passages" in err, err
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["count"] == 10 and manifest["kind"] == "exact" and manifest["dimension"] == 32
    code, text, _ = run(capsys, "search", out, PASSAGES[3], "-k", "3", "--json")
    line = json.loads(text)
    assert code == 0 and line["query"] == PASSAGES[3] and len(line["results"]) == 3
    assert line["results"][0] == {"id": 4, "score": pytest.approx(1.0, abs=1e-5), "text": PASSAGES[3]}
    assert [set(r) for r in line["results"]] == [{"id", "score", "text"}] * 3
    queries = tmp_path / "q.txt"
    queries.write_text(f"{PASSAGES[0]}\n\n{PASSAGES[9]}\n")
    code, text, _ = run(capsys, "search", out, "--queries", queries, "-k", "2", "--json")
    assert [json.loads(x)["results"][0]["id"] for x in text.splitlines()] == [0, 10]
    code, text, _ = run(capsys, "search", out, PASSAGES[9], "-k", "2")
    assert text.splitlines()[0] == f"query: {PASSAGES[9]}" and text.splitlines()[1].split()[:3] == ["1", "1.0000",
                                                                                                      "10"]


def test_search_matches_brute_force_over_the_stored_vectors(tmp_path, corpus, tiny_model_dir):
    index = build_index(corpus, tiny_model_dir, out=tmp_path / "idx", chunk_size=3, say=lambda m: None)
    vectors = np.concatenate(list(index.chunks()))  # (N, D), four chunk files
    assert vectors.shape == (10, 32) and len(list((tmp_path / "idx" / "vectors").iterdir())) == 4
    embedder = Embedder.from_pretrained(tiny_model_dir)
    np.testing.assert_allclose(vectors, embedder(read_corpus_texts(corpus)), atol=1e-5)
    q = embedder(["a guitar on the mat"])
    scores, rows = index.search_vectors(q, 4)
    assert rows[0].tolist() == np.argsort(-(vectors @ q[0]))[:4].tolist()
    found = bertkit.search(tmp_path / "idx", "a guitar on the mat", k=4, model=tiny_model_dir)
    ids = [p.id for p in read_corpus(corpus)]
    assert [r["id"] for r in found] == [ids[r] for r in rows[0]]


def read_corpus_texts(path: Path) -> list[str]:
    return [p.text for p in read_corpus(path)]


def test_approximate_index_agrees_with_exact_and_add_extends_it(tmp_path, corpus, tiny_model_dir):
    out = tmp_path / "idx"
    index = build_index(corpus, tiny_model_dir, out=out, approximate=True, connectivity=8, say=lambda m: None)
    assert index.kind == "approximate" and (out / "hnsw-10.usearch").exists()
    q = Embedder.from_pretrained(tiny_model_dir)(["a bicycle in the rain"])
    np.testing.assert_array_equal(index.search_vectors(q, 5)[1], index.search_vectors(q, 5, exact=True)[1])
    more = tmp_path / "more.jsonl"
    more.write_text('{"id": "new-1", "text": "a violin concert tonight"}\n{"id": "new-2", "text": "tea or coffee"}\n')
    index = index.add([more], say=lambda m: None)
    assert index.count == 12 and (out / "hnsw-12.usearch").exists() and not (out / "hnsw-10.usearch").exists()
    assert index.manifest["hnsw"]["connectivity"] == 8 and index.kind == "approximate"  # the index's own
    assert index.search("tea or coffee", 1, model=tiny_model_dir)[0]["id"] == "new-2"
    assert index.search("tea or coffee", 1, model=tiny_model_dir)[0].get("file") == str(more)  # two files now


def test_add_appends_and_keeps_ids_unique(capsys, tmp_path, corpus, tiny_model_dir):
    out = tmp_path / "idx"
    first = tmp_path / "a.jsonl"
    first.write_text('{"id": "x", "text": "alpha beta"}\n{"id": 1, "text": "gamma"}\n')
    assert run(capsys, "index", first, "--model", tiny_model_dir, "--out", out)[0] == 0
    code, _, err = run(capsys, "index", corpus, "--out", out)
    assert code == 2 and "already an index of 2 passages; --add" in err
    assert run(capsys, "index", corpus, "--out", out, "--add")[0] == 0  # the index's own model
    code, text, _ = run(capsys, "search", out, PASSAGES[5], "-k", "1", "--json")
    assert json.loads(text)["results"][0]["id"] == 6 and json.loads(text)["results"][0]["file"] == str(corpus)
    dup = tmp_path / "dup.jsonl"
    dup.write_text('{"id": "y", "text": "one"}\n{"id": "x", "text": "two"}\n')
    code, _, err = run(capsys, "index", dup, "--out", out, "--add")
    assert code == 2 and err.strip() == f"bertkit: error: {dup}:2: duplicate id \"x\" (first on {first}:1)"
    code, _, err = run(capsys, "index", corpus, "--out", out, "--add")
    assert code == 2 and "already in the index" in err
    code, _, err = run(capsys, "index", dup, "--out", out, "--add", "--model", "all-MiniLM-L6-v2")
    assert code == 2 and "not the model the index" in err
    assert VectorIndex(out).count == 12 and VectorIndex(out).unfinished is None
    assert bertkit.build_index is build_index and bertkit.VectorIndex is VectorIndex


def test_an_interrupted_build_resumes_after_the_last_chunk(monkeypatch, tmp_path, corpus, tiny_model_dir):
    straight = build_index(corpus, tiny_model_dir, out=tmp_path / "straight", chunk_size=4, say=lambda m: None)
    saved, real_save = [], vector_index.save_chunk

    def save_then_stop(path, vectors):
        if saved:
            raise KeyboardInterrupt
        saved.append(path)
        real_save(path, vectors)

    monkeypatch.setattr(vector_index, "save_chunk", save_then_stop)
    out = tmp_path / "idx"
    with pytest.raises(KeyboardInterrupt):
        build_index(corpus, tiny_model_dir, out=out, chunk_size=4, say=lambda m: None)
    with pytest.raises(InputError, match=r"unfinished index \(1 of 3 chunks embedded\)"):
        VectorIndex(out)
    assert not [p for p in (out / "vectors").iterdir() if p.name.startswith(".tmp-")]  # nothing half-written
    monkeypatch.setattr(vector_index, "save_chunk", real_save)
    embedded, real_call = [], Embedder.__call__
    monkeypatch.setattr(Embedder, "__call__", lambda self, texts, **kw: (embedded.extend(texts),
                                                                          real_call(self, texts, **kw))[1])
    said = []
    with pytest.raises(InputError, match="holds an unfinished build of"):  # another corpus: refused
        build_index(tmp_path / "straight" / "texts" / "000.jsonl", tiny_model_dir, out=out, say=said.append)
    resumed = build_index(corpus, tiny_model_dir, out=out, chunk_size=4, say=said.append)
    assert said == [f"resuming the unfinished index in {out}: 1 of 3 chunks done, continuing from passage 4"]
    assert embedded == read_corpus_texts(corpus)[4:]  # the first chunk was not embedded again
    np.testing.assert_array_equal(np.concatenate(list(resumed.chunks())), np.concatenate(list(straight.chunks())))


@pytest.mark.parametrize("argv, message", [
    (["search", "{tmp}/nowhere", "q"], "{tmp}/nowhere: no such index"),
    (["search", "{tmp}", "q"], "{tmp}: not an index (no manifest.json"),
    (["search", "{idx}", "q", "-k", "0"], "--top-k must be at least 1, got 0"),
    (["search", "{idx}", "--queries", "{tmp}/empty.txt"], "{tmp}/empty.txt: no queries (one per line)"),
    (["search", "{idx}"], "give a QUERY or --queries FILE"),
    (["index", "{tmp}/dup.jsonl", "--out", "{tmp}/new"], "{tmp}/dup.jsonl:3: duplicate id \"a\" (first on "
                                                          "{tmp}/dup.jsonl:1)"),
    (["index", "{tmp}/bad.jsonl", "--out", "{tmp}/new"], "{tmp}/bad.jsonl:1: no 'text' field"),
    (["index", "{tmp}/empty.txt", "--out", "{tmp}/new"], "{tmp}/empty.txt: no passages"),
    (["index", "{tmp}/empty.txt", "--out", "{tmp}", "--exact", "--approximate"], "--exact and --approximate"),
    (["index", "{tmp}/corpus.txt", "--out", "{tmp}"], "--out {tmp}: exists and is not an index (no manifest.json); "),
])
def test_bad_input_is_one_line(capsys, tmp_path, corpus, tiny_model_dir, argv, message):
    idx = tmp_path / "idx"
    build_index(corpus, tiny_model_dir, out=idx, say=lambda m: None)
    (tmp_path / "empty.txt").write_text("\n  \n")
    (tmp_path / "dup.jsonl").write_text('{"id": "a", "text": "x"}\n{"id": "b", "text": "y"}\n{"id": "a", "text": "z"}\n')
    (tmp_path / "bad.jsonl").write_text('{"body": "x"}\n')
    code, _, err = run(capsys, *[a.format(tmp=tmp_path, idx=idx) for a in argv], "--model", tiny_model_dir)
    assert code == 2 and len(err.strip().splitlines()) == 1, err
    assert err.startswith("bertkit: error: " + message.format(tmp=tmp_path)), err


def test_a_damaged_index_is_one_line(capsys, tmp_path, corpus, tiny_model_dir):
    idx = tmp_path / "idx"
    build_index(corpus, tiny_model_dir, out=idx, approximate=True, say=lambda m: None)
    (idx / "hnsw-10.usearch").write_bytes(b"garbage" * 20)
    code, _, err = run(capsys, "search", idx, "q", "--model", tiny_model_dir)
    assert code == 2 and err.startswith(f"bertkit: error: {idx}/hnsw-10.usearch: cannot be read"), err
    assert run(capsys, "search", idx, "q", "--model", tiny_model_dir, "--exact")[0] == 0  # the vectors are intact
    (idx / "manifest.json").write_text('{"format": "bertkit-index", "format_')
    code, _, err = run(capsys, "search", idx, "q")
    assert code == 2 and err.startswith(f"bertkit: error: {idx}/manifest.json: not valid JSON"), err
    code, _, err = run(capsys, "index", corpus, "--out", idx)
    assert code == 2 and "manifest.json: not valid JSON" in err
    assert run(capsys, "index", corpus, "--out", idx, "--overwrite", "--model", tiny_model_dir)[0] == 0
    assert VectorIndex(idx).count == 10


def test_minilm_finds_the_passage_that_answers(tmp_path):
    corpus = tmp_path / "facts.jsonl"
    facts = {"paris": "Paris is the capital and largest city of France.",
             "piano": "The piano is a keyboard instrument whose strings are struck by hammers.",
             "insulin": "Insulin is a hormone that regulates the level of glucose in the blood.",
             "everest": "Mount Everest is the highest mountain above sea level, in the Himalayas.",
             "python": "Python is a programming language that emphasises readable code.",
             "amazon": "The Amazon is a river in South America that carries more water than any other."}
    corpus.write_text("".join(json.dumps({"id": k, "text": v}) + "\n" for k, v in facts.items()))
    index = build_index(corpus, out=tmp_path / "idx", say=lambda m: None)
    questions = {"What is the tallest mountain on Earth?": "everest", "Which city is France's capital?": "paris",
                 "What hormone controls blood sugar?": "insulin", "Which river has the largest flow?": "amazon",
                 "Which instrument has hammers hitting strings?": "piano"}
    found = bertkit.search(index, list(questions), k=1)
    assert [r[0]["id"] for r in found] == list(questions.values())


def test_queries_and_passages_get_the_models_prompts_when_it_has_them():
    class Settings:
        prompts = {"query": "query: ", "passage": "passage: "}

    class WithPrompts:
        settings = Settings()

    assert vector_index.prompt_kwargs(WithPrompts(), "query") == {"prompt_name": "query"}
    assert vector_index.prompt_kwargs(WithPrompts(), "document") == {"prompt_name": "passage"}
    assert vector_index.prompt_kwargs(object(), "query") == {}  # a model without prompts: none asked for


def test_an_interrupted_add_leaves_the_index_searchable(capsys, monkeypatch, tmp_path, corpus, tiny_model_dir):
    out = tmp_path / "idx"
    build_index(corpus, tiny_model_dir, out=out, say=lambda m: None)
    more = tmp_path / "more.txt"
    more.write_text("a violin concert tonight\ntea or coffee\n")
    real_save = vector_index.save_chunk

    def stop(path, vectors):
        raise KeyboardInterrupt

    monkeypatch.setattr(vector_index, "save_chunk", stop)
    with pytest.raises(KeyboardInterrupt):
        build_index(more, out=out, add=True, say=lambda m: None)
    code, text, err = run(capsys, "search", out, "tea or coffee", "-k", "20", "--json", "--model", tiny_model_dir)
    assert code == 0 and len(json.loads(text)["results"]) == 10  # the complete part only
    assert "bertkit: note:" in err and "not searchable yet (0 of 1 chunks embedded)" in err
    monkeypatch.setattr(vector_index, "save_chunk", real_save)
    assert build_index(more, out=out, add=True, say=lambda m: None).count == 12


def test_search_refuses_another_models_queries_and_finds_a_moved_model(capsys, tmp_path, corpus, tiny_model_dir):
    """Regressions: `search --model OTHER` of the same dimension scored queries of one model against
    passages of another without a word; a moved model was a bare 'no such file or directory'."""
    import shutil

    import torch

    from bertkit import BertModel, Tokenizer

    model = shutil.copytree(tiny_model_dir, tmp_path / "model")
    build_index(corpus, model, out=tmp_path / "idx", say=lambda m: None)
    torch.manual_seed(1)
    other = tmp_path / "other"
    BertModel(BertModel.from_pretrained(tiny_model_dir).config).save_pretrained(  # other weights, same sizes
        other, tokenizer=Tokenizer.from_pretrained(tiny_model_dir))
    code, _, err = run(capsys, "search", tmp_path / "idx", "cat", "--model", other)
    assert code == 2 and err.startswith(f"bertkit: error: --model {other}: not the model the index at "), err
    assert len(err.strip().splitlines()) == 1
    model.rename(tmp_path / "moved")
    code, _, err = run(capsys, "search", tmp_path / "idx", "cat")
    assert code == 2 and f"the index's model {model} is not there any more; give --model" in err, err
    code, out, _ = run(capsys, "search", tmp_path / "idx", "cat", "--model", tmp_path / "moved", "-k", "1")
    assert code == 0 and out.startswith("query: cat")


def test_python_search_refuses_a_k_that_is_not_an_integer():
    """Regression: bertkit.search(index, "q", k="3") died in numpy with a TypeError."""
    index = VectorIndex.__new__(VectorIndex)
    for k in ("3", 2.5, True, 0):
        with pytest.raises(InputError, match="-k must be an integer of at least 1"):
            index.search_vectors(np.zeros((1, 4), dtype=np.float32), k)
