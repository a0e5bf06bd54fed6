"""tasks/embed.py and contrastive.py: reader, no-duplicate batches, losses against sentence-transformers,
the gradient cache, retrieval metrics against ST's evaluator, and `bertkit finetune --task embed`."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from bertkit.cli import main
from bertkit.contrastive import cached_loss, chunks, cosine_loss, matryoshka, ranking_loss
from bertkit.distributed import World
from bertkit.errors import InputError
from bertkit.settings import EMBED_POOLING, DataOptions
from bertkit.tasks.base import BadInput
from bertkit.tasks.embed import Embed, EmbedBatches, EmbedStep, collate_examples
from bertkit.tasks.metrics import retrieval
from tests.conftest import free_port, tiny_config


def _read(tmp_path: Path, name: str, text: str, *, skip: bool = False, **options):
    path = tmp_path / name
    path.write_text(text)
    task = Embed(DataOptions(**options))
    return task, task.read(path, BadInput(skip))


# ---- reader --------------------------------------------------------------------------------------------


def test_header_with_numbered_negatives_and_fewer_in_a_row(tmp_path):
    task, ex = _read(tmp_path, "t.tsv", "anchor\tpositive\tnegative_1\tnegative_2\n"
                                        "q1\tp1\tn1\tn2\n\nq2\tp2\tn3\t\n")
    assert [e.texts for e in ex] == [["q1", "p1", "n1", "n2"], ["q2", "p2", "n3"]]
    assert ex[1].where.endswith("t.tsv:4") and task.scored is False and task.metric == "ndcg@10"


def test_headerless_rows_by_position_and_a_scored_headerless_file(tmp_path):
    _, ex = _read(tmp_path, "t.csv", "what is up,the sky,the ground\nhello,hi\n")
    assert [e.texts for e in ex] == [["what is up", "the sky", "the ground"], ["hello", "hi"]]
    task, ex = _read(tmp_path, "s.tsv", "a cat\ta kitten\t4.5\na car\ta tree\t0\n")
    assert [(e.texts, e.score) for e in ex] == [(["a cat", "a kitten"], 0.9), (["a car", "a tree"], 0.0)]
    assert task.scored and task.metric == "spearman"


def test_jsonl_with_a_negatives_list_and_scores_in_0_1(tmp_path):
    _, ex = _read(tmp_path, "t.jsonl", '{"query": "q", "document": "d", "negatives": ["x", "y"]}\n')
    assert ex[0].texts == ["q", "d", "x", "y"]
    _, ex = _read(tmp_path, "s.jsonl", '{"sentence1": "a", "sentence2": "b", "score": 0.25}\n')
    assert ex[0].score == 0.25


def test_named_columns(tmp_path):
    _, ex = _read(tmp_path, "t.csv", "question,answer\nq,a\n", text_column="question", text_pair_column="answer")
    assert ex[0].texts == ["q", "a"]


@pytest.mark.parametrize("text, message", [
    ("anchor\tpositive\nq1\tp1\nq2\t\n", "t.tsv:3: empty positive"),
    ("anchor\tpositive\nq1\tp1\nq2\n", "t.tsv:3: expected 2 fields"),
    ("sentence1\tsentence2\tscore\na\tb\t0.5\nc\td\tlots\n", "t.tsv:3: score 'lots' is not a number"),
])
def test_bad_lines_name_file_and_line_and_can_be_skipped(tmp_path, text, message):
    with pytest.raises(InputError, match=message):
        _read(tmp_path, "t.tsv", text)
    _, ex = _read(tmp_path, "t.tsv", text, skip=True)
    assert len(ex) == 1


def test_scores_out_of_range_and_shape_mismatches_are_refused(tmp_path):
    with pytest.raises(InputError, match="scores range from 0 to 7"):
        _read(tmp_path, "s.tsv", "a\tb\t7\nc\td\t0\n")
    with pytest.raises(InputError, match="--loss cosine needs scored pairs"):
        _read(tmp_path, "t.tsv", "anchor\tpositive\nq\tp\n", loss="cosine")
    task, _ = _read(tmp_path, "t.tsv", "anchor\tpositive\nq\tp\n")
    (tmp_path / "s.tsv").write_text("a\tb\t1\n")
    with pytest.raises(InputError, match="the training data holds"):
        task.read(tmp_path / "s.tsv", BadInput())


def test_options_are_checked_where_they_enter():
    assert DataOptions(matryoshka_dims="64,256,128").dims == (256, 128, 64)
    for bad in ({"matryoshka_dims": "64,x"}, {"matryoshka_dims": "0"}, {"pooling": "avg"}, {"scale": 0},
                {"mini_batch_size": 0}, {"loss": "triplet"}):
        with pytest.raises(InputError):
            DataOptions(**bad)
    from bertkit.sentence import POOLING_MODES

    assert EMBED_POOLING == POOLING_MODES


# ---- batches -------------------------------------------------------------------------------------------


def _features(texts_per_example: list[list[str]]) -> list[dict]:
    return [{"input_ids": [101, 1000 + i, 102], "_example": i, "_role": min(k, 2), "_text": t}
            for i, texts in enumerate(texts_per_example) for k, t in enumerate(texts)]


@pytest.mark.parametrize("world_size", [1, 2])
def test_no_text_twice_in_a_global_batch_and_deterministic(world_size):
    rng = np.random.default_rng(0)
    # 60 examples over a pool of 40 positives: many share one
    examples = [[f"q{i}", f"p{rng.integers(40)}", f"n{rng.integers(30)}"] for i in range(60)]
    source = EmbedBatches(_features(examples), pad_id=0, seed=3)
    B = 4
    for epoch in (0, 1):
        plan = source.plan(epoch, B * world_size)
        seen = set()
        for batch in plan:
            assert len(batch) == B * world_size
            texts = [t for i in batch for t in set(examples[i])]
            assert len(texts) == len(set(texts))
            seen |= set(batch)
        assert seen == set(range(60))  # every example, once or as filler
        assert source.num_batches(epoch, B, world_size=world_size) == len(plan)
        again = EmbedBatches(_features(examples), pad_id=0, seed=3)
        assert again.plan(epoch, B * world_size) == plan
        parts = [source.batch(epoch, 0, B, rank=r, world_size=world_size) for r in range(world_size)]
        assert sum(int((p["roles"] == 0).sum()) for p in parts) == B * world_size
    assert source.plan(0, 8) != source.plan(1, 8)


def test_a_batch_larger_than_the_data_is_refused():
    with pytest.raises(InputError, match="needs at least 8 examples"):
        EmbedBatches(_features([["a", "b"]] * 3), pad_id=0).num_batches(0, 8)


def test_collate_lays_out_anchors_positives_then_negatives():
    groups = [[{"input_ids": [1, 2], "_role": 0}, {"input_ids": [3], "_role": 1}, {"input_ids": [4], "_role": 2}],
              [{"input_ids": [5], "_role": 0}, {"input_ids": [6, 7, 8], "_role": 1}]]
    batch = collate_examples(groups, pad_id=0)
    assert batch["input_ids"].tolist() == [[1, 2, 0], [5, 0, 0], [3, 0, 0], [6, 7, 8], [4, 0, 0]]
    assert batch["roles"].tolist() == [0, 0, 1, 1, 2]
    assert batch["attention_mask"].sum(1).tolist() == [2, 1, 1, 3, 1]


# ---- losses against sentence-transformers --------------------------------------------------------------


def _embeddings(B=5, M=3, D=16, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(n, D, generator=g, dtype=torch.float64) for n in (B, B, M)]


@pytest.mark.parametrize("negatives", [0, 1, 2])
@pytest.mark.parametrize("symmetric", [False, True])
def test_ranking_loss_equals_sentence_transformers(negatives, symmetric):
    from sentence_transformers.sentence_transformer.losses import MultipleNegativesRankingLoss

    a, p, _ = _embeddings()
    negs = [torch.randn(5, 16, dtype=torch.float64, generator=torch.Generator().manual_seed(k + 1))
            for k in range(negatives)]
    kwargs = {"directions": ("query_to_doc", "doc_to_query"), "partition_mode": "per_direction"} if symmetric else {}
    ref = MultipleNegativesRankingLoss(None, scale=20.0, **kwargs).compute_loss_from_embeddings([a, p, *negs], None)
    ours = ranking_loss(a, p, torch.cat(negs) if negs else a[:0], scale=20.0, symmetric=symmetric)
    assert int(ours.count) == 5
    torch.testing.assert_close(ours.mean().double(), ref, rtol=1e-6, atol=1e-6)


def test_cosine_loss_equals_sentence_transformers():
    from sentence_transformers.sentence_transformer.losses import CosineSimilarityLoss

    a, b, _ = _embeddings()
    scores = torch.linspace(0, 1, 5, dtype=torch.float64)
    ref = CosineSimilarityLoss(None).compute_loss_from_embeddings([a, b], scores)
    torch.testing.assert_close(cosine_loss(a, b, scores).mean().double(), ref, rtol=1e-6, atol=1e-6)


def test_matryoshka_sums_the_loss_of_each_renormalised_truncation():
    from sentence_transformers.sentence_transformer.losses import MultipleNegativesRankingLoss

    a, p, n = _embeddings()
    e = torch.cat([a, p, n])
    ours = matryoshka(lambda x: ranking_loss(x[:5], x[5:10], x[10:]), e, (16, 8, 4))
    st = MultipleNegativesRankingLoss(None)
    ref = sum(st.compute_loss_from_embeddings([a[:, :d], p[:, :d], n[:, :d]], None) for d in (16, 8, 4))
    # ST scores every anchor against all negatives of the batch: n (M, D) stands for one negative column
    assert n.shape[0] == 3
    ref_all = sum(torch.nn.functional.cross_entropy(
        20 * torch.nn.functional.normalize(a[:, :d], dim=1) @ torch.nn.functional.normalize(
            torch.cat([p[:, :d], n[:, :d]]), dim=1).T, torch.arange(5)) for d in (16, 8, 4))
    torch.testing.assert_close(ours.mean().double(), ref_all, rtol=1e-6, atol=1e-6)
    assert float(ref) > 0
    with pytest.raises(InputError, match="more than the model's 16 dimensions"):
        matryoshka(lambda x: ranking_loss(x[:5], x[5:10], x[10:]), e, (32,))


# ---- the gradient cache --------------------------------------------------------------------------------


def _encoder(dropout: float):
    from bertkit.sentence import SentenceEncoder

    torch.manual_seed(0)
    return SentenceEncoder(tiny_config(hidden_dropout_prob=dropout, attention_probs_dropout_prob=dropout))


def _batch(B=6, M=2, seed=0):
    g = torch.Generator().manual_seed(seed)
    S = 2 * B + M
    lengths = torch.randint(3, 12, (S,), generator=g)
    ids = torch.randint(5, 99, (S, 12), generator=g)
    mask = (torch.arange(12)[None] < lengths[:, None]).long()
    roles = torch.tensor([0] * B + [1] * B + [2] * M)
    return {"input_ids": ids * mask, "attention_mask": mask, "roles": roles}


def _grads(model, loss_of) -> dict[str, torch.Tensor]:
    model.zero_grad()
    value = loss_of()
    (value.total / value.count * 2.0).backward()  # the loop's scaling reaches the cached replay
    return {k: p.grad.clone() for k, p in model.named_parameters() if p.grad is not None}


def _close(a: dict, b: dict) -> None:
    assert a.keys() == b.keys() and len(a) > 10
    for k in a:
        torch.testing.assert_close(a[k], b[k], atol=1e-5, rtol=1e-4, msg=k)


@pytest.mark.parametrize("symmetric, dims", [(False, ()), (True, (32, 16))])
def test_cached_loss_gives_the_plain_gradients_without_dropout(symmetric, dims):
    model, batch = _encoder(0.0), _batch()
    step = EmbedStep("mnrl", 20.0, symmetric, dims, None, world=World())

    def embed(x):
        return model(x["input_ids"], x["attention_mask"])

    plain = _grads(model, lambda: step.loss(batch, embed(batch)))
    inputs = {k: batch[k] for k in ("input_ids", "attention_mask")}
    cached = _grads(model, lambda: cached_loss(embed, inputs, 4, lambda e: step.loss(batch, e)))
    _close(plain, cached)


def test_cached_loss_replays_dropout():
    """With dropout on, the cached gradients are those of the same mini-batch forwards with a graph:
    the replay draws the same masks (a replay with fresh masks would differ)."""
    model, batch = _encoder(0.1), _batch()
    model.train()
    step = EmbedStep("mnrl", 20.0, False, (), None, world=World())
    inputs = {k: batch[k] for k in ("input_ids", "attention_mask")}

    def embed(x):
        return model(x["input_ids"], x["attention_mask"])

    def chunked():
        return step.loss(batch, torch.cat([embed(c) for c in chunks(inputs, 4)]))

    torch.manual_seed(1)
    reference = _grads(model, chunked)
    torch.manual_seed(1)
    cached = _grads(model, lambda: cached_loss(embed, inputs, 4, lambda e: step.loss(batch, e)))
    _close(reference, cached)
    torch.manual_seed(2)  # other masks: other gradients, so the comparison above can fail
    other = _grads(model, chunked)
    assert not torch.allclose(other["bert.embeddings.word.weight"], reference["bert.embeddings.word.weight"])


# ---- metrics against sentence-transformers' InformationRetrievalEvaluator ------------------------------


def test_retrieval_metrics_equal_information_retrieval_evaluator():
    from sentence_transformers.sentence_transformer.evaluation import InformationRetrievalEvaluator

    g = np.random.default_rng(0)
    Q, C, D = 30, 50, 8
    queries, corpus = g.normal(size=(Q, D)), g.normal(size=(C, D))
    relevant = [set(g.choice(C, size=g.integers(1, 4), replace=False).tolist()) for _ in range(Q)]
    ours = retrieval(queries, corpus, relevant)
    evaluator = InformationRetrievalEvaluator(
        {str(q): f"q{q}" for q in range(Q)}, {str(c): f"d{c}" for c in range(C)},
        {str(q): {str(c) for c in rel} for q, rel in enumerate(relevant)}, write_csv=False)
    qn = queries / np.linalg.norm(queries, axis=1, keepdims=True)
    cn = corpus / np.linalg.norm(corpus, axis=1, keepdims=True)
    scores = qn @ cn.T
    results = [[{"corpus_id": str(c), "score": float(s)} for c, s in enumerate(row)] for row in scores]
    ref = evaluator.compute_metrics(results)
    assert ours["recall@1"] == pytest.approx(ref["recall@k"][1])
    assert ours["recall@10"] == pytest.approx(ref["recall@k"][10])
    assert ours["mrr@10"] == pytest.approx(ref["mrr@k"][10])
    assert ours["ndcg@10"] == pytest.approx(ref["ndcg@k"][10])
    assert 0 < ours["ndcg@10"] < 1


# ---- bertkit finetune --task embed -----------------------------------------------------------------------

WORDS = "cat dog bird fish horse cow sheep goat lion tiger bear wolf fox deer mouse rat".split()


def _write_pairs(path: Path, n: int, *, negatives: bool = True, seed: int = 0) -> None:
    g = np.random.default_rng(seed)
    rows = []
    for i in range(n):
        w = WORDS[i % len(WORDS)]
        row = [f"where does the {w} {i} live", f"the {w} lives in place {i % 7}"]  # positives repeat
        if negatives:
            row.append(f"a {WORDS[g.integers(len(WORDS))]} eats {i}")
        rows.append("\t".join(row))
    header = "anchor\tpositive" + ("\tnegative" if negatives else "")
    path.write_text(header + "\n" + "\n".join(rows) + "\n")


def _finetune(model_dir, train, out, *extra, batch: int = 4) -> list[str]:
    return ["finetune", "--task", "embed", "--model", str(model_dir), "--train", str(train), "--out", str(out),
            "--batch-size", str(batch), "--lr", "1e-3", "--log-every", "1", "--no-progress", *extra]


def _rows(out: Path, split: str) -> list[dict]:
    return [r for r in map(json.loads, (out / "metrics.jsonl").read_text().splitlines()) if r["split"] == split]


@pytest.fixture(scope="module")
def embed_run(tmp_path_factory, tiny_model_dir):
    d = tmp_path_factory.mktemp("embed")
    _write_pairs(d / "train.tsv", 24)
    _write_pairs(d / "dev.tsv", 12, negatives=False, seed=1)
    assert main(_finetune(tiny_model_dir, d / "train.tsv", d / "out", "--dev", str(d / "dev.tsv"),
                          "--epochs", "2", "--matryoshka-dims", "32,16", "--symmetric")) == 0
    return d


def test_finetune_evaluate_and_sentence_transformers_agree(embed_run, capsys):
    from sentence_transformers import SentenceTransformer

    from bertkit.sentence import SentenceEncoder
    from bertkit.tokenizer import Tokenizer

    out = embed_run / "out"
    train = _rows(out, "train")
    assert len(train) >= 12 and all(np.isfinite(r["loss"]) for r in train)
    dev = json.loads((out / "dev_metrics.json").read_text())
    assert set(dev) >= {"recall@1", "recall@10", "mrr@10", "ndcg@10"}
    capsys.readouterr()
    assert main(["evaluate", "--model", str(out), "--data", str(embed_run / "dev.tsv"), "--json"]) == 0
    again = json.loads(capsys.readouterr().out)
    best = _rows(out, "valid")[[r["step"] for r in _rows(out, "valid")].index(dev["step"])]
    assert again["ndcg@10"] == pytest.approx(best["ndcg@10"], abs=1e-6)
    texts = ["where does the cat live", "a fox eats"]
    st = SentenceTransformer(str(out), device="cpu").encode(texts, convert_to_tensor=True)
    enc = Tokenizer.from_pretrained(out)(texts, padding=True, return_tensors="pt")
    with torch.no_grad():
        ours = SentenceEncoder.from_pretrained(out).eval()(enc["input_ids"], enc["attention_mask"])
    torch.testing.assert_close(ours, st.cpu(), atol=1e-5, rtol=0)


def test_scored_pairs_train_with_the_cosine_loss_and_report_spearman(tmp_path, tiny_model_dir):
    rows = [f"the {w} runs {i}\tthe {w} is running {i}\t{(i % 6)}" for i, w in enumerate(WORDS)]
    (tmp_path / "sts.tsv").write_text("sentence1\tsentence2\tscore\n" + "\n".join(rows) + "\n")
    assert main(_finetune(tiny_model_dir, tmp_path / "sts.tsv", tmp_path / "out", "--dev", str(tmp_path / "sts.tsv"),
                          "--epochs", "1")) == 0
    dev = json.loads((tmp_path / "out" / "dev_metrics.json").read_text())
    assert set(dev) >= {"spearman", "pearson"}
    assert "loss" in _rows(tmp_path / "out", "train")[0]


@pytest.mark.slow  # three short runs: about 10 s of fixed costs each on 2 cores
def test_resume_after_an_interruption_equals_the_straight_run(tmp_path, tiny_model_dir):
    _write_pairs(tmp_path / "train.tsv", 12)
    args = ("--epochs", "2", "--keep-checkpoints", "2", "--mini-batch-size", "3")
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    assert main(_finetune(tiny_model_dir, tmp_path / "train.tsv", straight, *args)) == 0
    assert main(_finetune(tiny_model_dir, tmp_path / "train.tsv", resumed, *args)) == 0
    checkpoints = sorted(p.name for p in (resumed / "checkpoints").iterdir() if p.name.startswith("step-"))
    (resumed / "checkpoints" / "latest").write_text(checkpoints[0] + "\n")  # as if killed after epoch 1
    assert main(_finetune(tiny_model_dir, tmp_path / "train.tsv", resumed, *args, "--resume")) == 0

    def losses(out):
        return [(r["step"], r["loss"]) for r in _rows(out, "train")]

    assert losses(resumed) == losses(straight) and len(losses(straight)) == 6


def test_cached_loss_on_several_processes_is_refused_in_one_line(monkeypatch):
    import bertkit.tasks.embed as embed

    monkeypatch.setattr(embed, "current_world", lambda: World(0, 2))
    task = Embed(DataOptions(mini_batch_size=4))
    task.scored = False
    with pytest.raises(InputError, match="--mini-batch-size .* one process only"):
        task.objective(_encoder(0.0))


def test_matryoshka_dims_larger_than_the_model_are_refused_before_training():
    """Regression: --matryoshka-dims 999 on a 384-dimension model was refused only by the first
    step's loss, after the run had started."""
    task = Embed(DataOptions(matryoshka_dims="999,32,16"))
    task.scored = False
    with pytest.raises(InputError, match="--matryoshka-dims 999: more than the model's 32 dimensions"):
        task.objective(_encoder(0.0))


@pytest.mark.slow
def test_minilm_fine_tuned_loads_in_sentence_transformers_with_equal_vectors(tmp_path, minilm_dir):
    from sentence_transformers import SentenceTransformer

    from bertkit.sentence import SentenceEncoder
    from bertkit.tokenizer import Tokenizer

    _write_pairs(tmp_path / "train.tsv", 32)
    _write_pairs(tmp_path / "dev.tsv", 16, negatives=False, seed=1)
    out = tmp_path / "out"
    assert main(_finetune(minilm_dir, tmp_path / "train.tsv", out, "--dev", str(tmp_path / "dev.tsv"),
                          "--epochs", "1", "--lr", "2e-5", "--max-length", "256")) == 0
    assert json.loads((out / "sentence_bert_config.json").read_text())["max_seq_length"] == 256
    texts = ["where does the lion live", "the lion lives in place 3", "a completely different sentence"]
    st = SentenceTransformer(str(out), device="cpu").encode(texts, convert_to_tensor=True)
    enc = Tokenizer.from_pretrained(out)(texts, padding=True, return_tensors="pt")
    with torch.no_grad():
        ours = SentenceEncoder.from_pretrained(out).eval()(enc["input_ids"], enc["attention_mask"])
    torch.testing.assert_close(ours, st.cpu(), atol=1e-5, rtol=0)
    assert json.loads((out / "dev_metrics.json").read_text())["ndcg@10"] > 0.5


@pytest.mark.slow
@pytest.mark.skipif(sys.platform != "linux", reason="gloo on Linux")
def test_two_processes_with_gathered_negatives_match_one_process_with_double_batch(tmp_path, minilm_dir):
    from bertkit import BertModel, Tokenizer

    torch.manual_seed(0)
    start = tmp_path / "start"  # no dropout, so the two runs see the same computation
    BertModel(tiny_config(vocab_size=30522, max_position_embeddings=128, hidden_dropout_prob=0.0,
                          attention_probs_dropout_prob=0.0)).save_pretrained(
        start, tokenizer=Tokenizer.from_pretrained(minilm_dir))
    _write_pairs(tmp_path / "train.tsv", 32)

    def args(out, batch, *extra):
        return _finetune(start, tmp_path / "train.tsv", out, "--epochs", "1", "--precision", "fp32", *extra, batch=batch)

    assert main(args(tmp_path / "one", 8)) == 0
    env = dict(os.environ, OMP_NUM_THREADS="1")
    losses = {}
    for name, extra in (("two", ()), ("apart", ("--no-gather-across-processes",))):
        cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port",
               str(free_port()), "-m", "bertkit", *args(tmp_path / name, 4, *extra)]
        result = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
        assert result.returncode == 0, result.stderr[-2000:]
        losses[name] = [r["loss"] for r in _rows(tmp_path / name, "train")]
    one = [r["loss"] for r in _rows(tmp_path / "one", "train")]
    assert len(one) == 4
    assert losses["two"] == pytest.approx(one, abs=1e-4)
    assert losses["apart"][0] < one[0] - 1e-3  # 4 candidates per anchor instead of 8: an easier loss


def test_a_plain_encoder_or_st_model_is_scored_zero_shot(tiny_model_dir, minilm_dir):
    """`bertkit evaluate --model all-MiniLM-L6-v2 --data pairs.tsv`: the baseline before fine-tuning."""
    from bertkit.predict import load_finetuned

    minilm = load_finetuned(minilm_dir, {"max_length": None}, device="cpu")
    assert minilm.task.name == "embed" and minilm.task.options.max_length == 256  # sentence_bert_config.json
    assert load_finetuned(minilm_dir, {"max_length": 64}, device="cpu").task.options.max_length == 64
    plain = load_finetuned(tiny_model_dir, device="cpu")
    assert plain.task.name == "embed"
