"""classify: reader, featurizer, objective, post-processing, metrics, and finetune end to end."""

from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np
import pytest
import torch

from bertkit import BertConfig, BertForSequenceClassification, Tokenizer
from bertkit.cli import main
from bertkit.errors import InputError
from bertkit.tasks import BadInput, DataOptions, make_task
from bertkit.tasks.base import collate
from bertkit.tasks.classify import Classify, TextExample
from tests.conftest import tiny_config

GOOD = ["good", "great", "wonderful", "excellent", "lovely", "fine"]
BAD = ["bad", "awful", "terrible", "poor", "horrible", "dreadful"]
NOUNS = ["film", "book", "meal", "hotel", "phone", "story", "song", "game"]


def sentiment_rows(n: int, seed: int) -> list[tuple[str, str]]:
    """Short reviews whose label follows from one adjective: learnable in a few steps by a tiny model."""
    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        label = rng.choice(["pos", "neg"])
        word = rng.choice(GOOD if label == "pos" else BAD)
        rows.append((f"the {rng.choice(NOUNS)} was {word} .", label))
    return rows


def write_csv(path: Path, rows, header=("text", "label"), delimiter=",") -> Path:
    import csv

    with path.open("w", newline="") as f:
        w = csv.writer(f, delimiter=delimiter)
        w.writerow(header)
        w.writerows(rows)
    return path


@pytest.fixture(scope="module")
def tok(minilm_dir) -> Tokenizer:
    return Tokenizer.from_pretrained(minilm_dir)


# ---- reader ------------------------------------------------------------------------------------------


def test_reads_csv_tsv_and_jsonl_with_usual_column_names(tmp_path):
    csv_path = write_csv(tmp_path / "a.csv", [("A, quoted \"text\"", "pos"), ("plain", "neg")])
    tsv_path = write_csv(tmp_path / "a.tsv", [("first", "second", "1")], header=("sentence1", "sentence2", "label"),
                         delimiter="\t")
    jsonl = tmp_path / "a.jsonl"
    jsonl.write_text(json.dumps({"question": "who?", "sentence": "me.", "label": "entailment"}) + "\n\n")
    task = Classify()
    assert [(e.text, e.text_pair, e.label) for e in task.read(csv_path, BadInput())] == \
        [('A, quoted "text"', None, "pos"), ("plain", None, "neg")]
    assert [(e.text, e.text_pair, e.label) for e in task.read(tsv_path, BadInput())] == [("first", "second", "1")]
    assert [(e.text, e.text_pair, e.label) for e in task.read(jsonl, BadInput())] == [("who?", "me.", "entailment")]
    assert task.read(csv_path, BadInput())[1].where == f"{csv_path}:3"


def test_named_columns_and_a_missing_column(tmp_path):
    path = write_csv(tmp_path / "r.csv", [("x", "great", "4")], header=("id", "review_body", "stars"))
    task = Classify(DataOptions(text_column="review_body", label_column="stars"))
    assert [(e.text, e.label) for e in task.read(path, BadInput())] == [("great", "4")]
    with pytest.raises(InputError, match=r"r.csv:2: cannot tell which field holds the text .*--text-column"):
        Classify().read(path, BadInput())


@pytest.mark.parametrize(
    "content, message",
    [
        ("text,label\nfine,pos\ntoo,many,fields\n", r"bad.csv:3: expected 2 fields \(as the header\), found 3"),
        ("text,label\nfine,pos\n,neg\n", r"bad.csv:3: empty 'text'"),
        ("text,label\nfine,pos\nok,\n", r"bad.csv:3: empty label"),
    ],
)
def test_bad_rows_name_file_and_line(tmp_path, content, message):
    path = tmp_path / "bad.csv"
    path.write_text(content)
    with pytest.raises(InputError, match=message):
        Classify().read(path, BadInput())
    bad = BadInput(skip=True)
    assert len(Classify().read(path, bad)) == 1 and bad.count == 1


def test_non_utf8_line_is_reported_and_can_be_skipped(tmp_path):
    path = tmp_path / "latin.csv"
    path.write_bytes(b"text,label\ncaf\xe9,pos\nok,neg\n")
    with pytest.raises(InputError, match=r"latin.csv:2: not valid UTF-8"):
        Classify().read(path, BadInput())
    bad = BadInput(skip=True)
    assert [e.text for e in Classify().read(path, bad)] == ["ok"] and bad.count == 1


def test_label_unseen_in_training_is_an_error_at_evaluation(tmp_path, tok):
    task = Classify()
    config = BertConfig(id2label={0: "neg", 1: "pos"})
    examples = [TextExample("dev.csv:2", "fine", label="pos"), TextExample("dev.csv:3", "meh", label="neutral")]
    with pytest.raises(InputError, match=r"dev.csv:3: label 'neutral' was not in the training data"):
        task.featurize(examples, tok, config, BadInput())
    assert len(task.featurize(examples, tok, config, BadInput(skip=True)).features) == 1


def engine_spy(monkeypatch) -> list[int]:
    """Characters of every text that reaches the tokenizer's engine."""
    import bertkit.tokenizer as tokenizer_module

    seen: list[int] = []
    real = tokenizer_module._encode

    def spy(engine, inputs, **options):
        seen.extend(len(x) if isinstance(x, str) else sum(len(t) for t in x) for x in inputs)
        return real(engine, inputs, **options)

    monkeypatch.setattr(tokenizer_module, "_encode", spy)
    return seen


def test_truncated_long_texts_featurize_as_the_whole_texts_would(tok):
    rng = random.Random(3)
    vocabulary = GOOD + BAD + NOUNS + ["中文汉字", "naïve", "😀", "\u3000", "[MASK]", ",", "   ", "\x00", "a" * 120]

    def text(n: int) -> str:
        return " ".join(rng.choice(vocabulary) for _ in range(n))

    examples = [TextExample("a", text(400), label="x"), TextExample("b", text(5), text(500), "x"),
                TextExample("c", text(300), text(301), "x"), TextExample("d", text(301), text(300), "x"),
                TextExample("e", "short", label="x")]
    out = Classify(DataOptions(max_length=33)).featurize(examples, tok, BertConfig(id2label={0: "x"}), BadInput())
    engine = tok._truncating_engine(33)  # the whole texts, tokenized at once
    expected = [engine.encode(e.text) if e.text_pair is None else engine.encode(e.text, e.text_pair) for e in examples]
    assert [f["input_ids"] for f in out.features] == [e.ids for e in expected]
    assert [f["token_type_ids"] for f in out.features] == [e.type_ids for e in expected]
    assert out.long == 4


def test_a_huge_line_is_tokenized_only_as_far_as_truncation_needs(tok, finetuned, tmp_path, monkeypatch, capsys):
    huge = "the film was long and the story was wonderful , " * 100_000  # 5 MB
    seen = engine_spy(monkeypatch)
    task = Classify(DataOptions(max_length=16))
    out = task.featurize([TextExample("a", huge, label="x")], tok, BertConfig(id2label={0: "x"}), BadInput())
    assert sum(seen) < 10_000 and out.long == 1
    assert out.features[0]["input_ids"] == tok._truncating_engine(16).encode(huge[:5_000]).ids
    # and end to end: `bertkit predict` on a file holding that line
    path = tmp_path / "huge.txt"
    path.write_text(huge + "\n")
    assert main(["predict", "--model", str(finetuned), "--input", str(path), "--output", str(tmp_path / "p.jsonl")]) == 0
    assert "1 examples (1 longer than 16 tokens, truncated)" in capsys.readouterr().err
    assert sum(seen) < 20_000 and json.loads((tmp_path / "p.jsonl").read_text())["text"] == huge.strip()


def test_labels_sorted_numerically_when_integers():
    examples = [TextExample("x", "t", label=v) for v in ["10", "2", "1", "2"]]
    assert Classify().label_names(examples) == ["1", "2", "10"]


# ---- featurizer --------------------------------------------------------------------------------------


def test_truncation_matches_the_tokenizer_exactly(tok):
    long = "word " * 80
    examples = [TextExample("a", long, "a short pair .", "x"), TextExample("b", "short", "another " * 50, "x"),
                TextExample("c", "tiny", "pair", "x")]
    task = Classify(DataOptions(max_length=32))
    out = task.featurize(examples, tok, BertConfig(id2label={0: "x"}), BadInput())
    with pytest.warns(UserWarning, match="2 of 3 inputs truncated"):
        expected = tok([e.text for e in examples], [e.text_pair for e in examples], truncation=True, max_length=32)
    assert [f["input_ids"] for f in out.features] == expected["input_ids"]
    assert [f["token_type_ids"] for f in out.features] == expected["token_type_ids"]
    assert out.long == 2


def test_windows_cover_a_long_text_with_overlap(tok):
    text = " ".join(f"w{i}" for i in range(100))
    pieces = tok.pieces([text])[0].ids
    task = Classify(DataOptions(max_length=32, long_text="window", stride=8))
    out = task.featurize([TextExample("a", text, label="x")], tok, BertConfig(id2label={0: "x"}), BadInput())
    assert out.long == 1 and len(out.features) > 1
    bodies = [f["input_ids"][1:-1] for f in out.features]
    assert all(len(f["input_ids"]) <= 32 and f["input_ids"][0] == tok.cls_token_id for f in out.features)
    assert bodies[0] == pieces[:30] and bodies[-1] == pieces[-len(bodies[-1]):]
    assert bodies[1][:8] == bodies[0][-8:]  # consecutive windows share `stride` pieces
    assert {f["_example"] for f in out.features} == {0}


def test_pair_windows_keep_the_first_text_whole(tok):
    task = Classify(DataOptions(max_length=24, long_text="window", stride=4))
    e = TextExample("a", "is it long ?", " ".join(["passage"] * 60), "x")
    out = task.featurize([e], tok, BertConfig(id2label={0: "x"}), BadInput())
    first = tok.pieces(["is it long ?"])[0].ids
    for f in out.features:
        assert f["input_ids"][1:len(first) + 1] == first and len(f["input_ids"]) <= 24
        assert f["token_type_ids"].count(0) == len(first) + 2


def test_predictions_average_probabilities_over_windows():
    task = Classify()
    config = BertConfig(id2label={0: "neg", 1: "pos"})
    features = [{"_example": 0}, {"_example": 0}, {"_example": 1}]
    outputs = [{"logits": np.array([0.0, np.log(3.0)])}, {"logits": np.array([0.0, 0.0])},
               {"logits": np.array([2.0, 0.0])}]
    first, second = task.postprocess([None, None], features, outputs, config)
    assert first.label == "pos" and first.score == pytest.approx((0.75 + 0.5) / 2)
    assert second.label == "neg"


# ---- objective ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("problem", ["single_label_classification", "multi_label_classification", "regression"])
def test_objective_sums_equal_the_heads_mean_loss(problem):
    torch.manual_seed(0)
    num = 1 if problem == "regression" else 3
    model = BertForSequenceClassification(tiny_config(id2label={i: str(i) for i in range(num)}, problem_type=problem))
    model.eval()
    features = [{"input_ids": [2, 5, 7, 3][: 2 + i], "token_type_ids": [0] * (2 + i)} for i in range(3)]
    if problem == "single_label_classification":
        labels = [0, 2, 1]
    elif problem == "multi_label_classification":
        labels = [[1.0, 0.0, 1.0], [0.0, 0.0, 0.0], [0.0, 1.0, 0.0]]
    else:
        labels = [0.5, -1.0, 2.0]
    for f, y in zip(features, labels):
        f["labels"] = y
    batch = collate(features)
    task = Classify(DataOptions(regression=problem == "regression",
                                label_separator="|" if problem.startswith("multi") else None))
    objective = task.objective(model)
    with torch.no_grad():
        sums = objective(batch)
    n = objective.counts(batch)["cls"]
    with torch.no_grad():
        mean = model(batch["input_ids"], batch["token_type_ids"], batch["attention_mask"], labels=batch["labels"]).loss
    assert float(sums.losses["cls"]) / n == pytest.approx(float(mean), rel=1e-5)


# ---- metrics -----------------------------------------------------------------------------------------


def test_classification_metrics_by_hand():
    from bertkit.tasks.metrics import classification, regression

    m = classification(["pos", "pos", "neg", "neg"], ["pos", "neg", "neg", "neg"], ["neg", "pos"])
    assert m["accuracy"] == 0.75
    assert m["f1"] == pytest.approx(2 / 3)  # positive class: precision 1, recall 1/2
    assert m["macro_f1"] == pytest.approx((2 / 3 + 0.8) / 2)
    assert m["mcc"] == pytest.approx(1 / np.sqrt(3))
    r = regression([1.0, 2.0, 3.0], [2.0, 4.0, 7.0])
    assert r["spearman"] == pytest.approx(1.0) and r["mse"] == pytest.approx((1 + 4 + 16) / 3)
    # deviations (-1, 0, 1) and (-7/3, -1/3, 8/3): covariance sum 5, norms sqrt(2) and sqrt(114)/3
    assert r["pearson"] == pytest.approx(15 / np.sqrt(228))


# ---- finetune, evaluate, predict, pipeline -----------------------------------------------------------


@pytest.fixture(scope="module")
def sentiment_files(tmp_path_factory):
    d = tmp_path_factory.mktemp("sentiment")
    return write_csv(d / "train.csv", sentiment_rows(96, 1)), write_csv(d / "dev.csv", sentiment_rows(48, 2))


@pytest.fixture(scope="module")
def finetuned(tmp_path_factory, tiny_model_dir, sentiment_files):
    out = tmp_path_factory.mktemp("finetuned")
    train, dev = sentiment_files
    code = main(["finetune", "--task", "classify", "--model", str(tiny_model_dir), "--train", str(train),
                 "--dev", str(dev), "--out", str(out), "--epochs", "8", "--batch-size", "16", "--lr", "5e-3",
                 "--max-length", "16", "--patience", "2", "--no-progress", "--precision", "fp32"])
    assert code == 0
    return out


def test_finetune_learns_and_keeps_the_best_model(finetuned):
    metrics = json.loads((finetuned / "dev_metrics.json").read_text())
    assert metrics["accuracy"] >= 0.9  # a random classifier scores about 0.5
    config = json.loads((finetuned / "config.json").read_text())
    assert config["id2label"] == {"0": "neg", "1": "pos"}
    assert config["architectures"] == ["BertForSequenceClassification"]
    assert config["bertkit"]["task"] == "classify" and config["bertkit"]["options"]["max_length"] == 16
    rows = [json.loads(x) for x in (finetuned / "metrics.jsonl").read_text().splitlines()]
    valid = [r for r in rows if r["split"] == "valid"]
    assert [r["step"] for r in valid] == [6 * (i + 1) for i in range(len(valid))]  # one evaluation per epoch
    assert metrics["accuracy"] == max(r["accuracy"] for r in valid)
    best = valid.index(next(r for r in valid if r["accuracy"] == metrics["accuracy"]))
    assert len(valid) == min(8, best + 1 + 2)  # --patience 2: two evaluations without a better one, then stop


def test_evaluate_json_and_predict_jsonl(finetuned, sentiment_files, tmp_path, capsys):
    _, dev = sentiment_files
    assert main(["evaluate", "--model", str(finetuned), "--data", str(dev), "--json"]) == 0
    metrics = json.loads(capsys.readouterr().out)
    assert set(metrics) >= {"accuracy", "f1", "macro_f1", "micro_f1", "mcc"}
    assert metrics["accuracy"] == json.loads((finetuned / "dev_metrics.json").read_text())["accuracy"]
    inputs = tmp_path / "in.txt"
    inputs.write_text("the film was wonderful .\n\nthe meal was awful .\n" + "the film was long . " * 40 + "\n")
    out = tmp_path / "pred.jsonl"
    assert main(["predict", "--model", str(finetuned), "--input", str(inputs), "--output", str(out)]) == 0
    assert "3 examples (1 longer than" in capsys.readouterr().err  # cut inputs are always reported
    rows = [json.loads(x) for x in out.read_text().splitlines()]
    assert [r["label"] for r in rows[:2]] == ["pos", "neg"] and len(rows) == 3
    assert all(abs(sum(r["scores"].values()) - 1) < 1e-5 and r["score"] == max(r["scores"].values()) for r in rows)


def test_pipeline_on_a_string_and_a_list(finetuned):
    from bertkit import pipeline

    classify = pipeline("classify", model=finetuned)
    one = classify("the book was excellent .")
    assert one["label"] == "pos"
    with pytest.warns(UserWarning, match="1 longer than .* truncated"):
        classify(["the book was long . " * 40])
    assert [p["label"] for p in classify(["the song was poor .", "the game was lovely ."])] == ["neg", "pos"]
    with pytest.raises(InputError, match="is a classify model, not tag"):
        pipeline("tag", model=finetuned)


def test_transformers_loads_the_finetuned_model_with_identical_outputs(finetuned, tok):
    transformers = pytest.importorskip("transformers")
    reference = transformers.AutoModelForSequenceClassification.from_pretrained(finetuned).eval()
    ours = BertForSequenceClassification.from_pretrained(finetuned).eval()
    enc = tok(["the film was good .", "the hotel was dreadful and the phone was poor ."], padding=True,
              return_tensors="pt")
    with torch.no_grad():
        expected = reference(**enc).logits
        got = ours(enc["input_ids"], enc["token_type_ids"], enc["attention_mask"]).logits
    assert torch.allclose(got, expected, atol=1e-5)
    assert reference.config.id2label == {0: "neg", 1: "pos"}


def test_multi_label_and_regression_end_to_end(tmp_path, tiny_model_dir, capsys):
    rows = [("the film was good .", "a|b"), ("the book was bad .", "b"), ("fine", "a")] * 4
    multi = write_csv(tmp_path / "multi.csv", rows)
    out = tmp_path / "multi"
    assert main(["finetune", "--task", "classify", "--model", str(tiny_model_dir), "--train", str(multi),
                 "--dev", str(multi), "--out", str(out), "--label-separator", "|", "--epochs", "1",
                 "--max-length", "16", "--no-progress"]) == 0
    assert json.loads((out / "config.json").read_text())["problem_type"] == "multi_label_classification"
    assert main(["evaluate", "--model", str(out), "--data", str(multi), "--json"]) == 0
    assert set(json.loads(capsys.readouterr().out.splitlines()[-1])) >= {"accuracy", "micro_f1", "macro_f1"}
    scores = write_csv(tmp_path / "sts.tsv", [("a man plays", "a man is playing", "4.5"), ("x", "y", "0.5")] * 4,
                       header=("sentence1", "sentence2", "score"), delimiter="\t")
    out = tmp_path / "sts"
    assert main(["finetune", "--task", "classify", "--model", str(tiny_model_dir), "--train", str(scores),
                 "--dev", str(scores), "--out", str(out), "--regression", "--epochs", "1", "--max-length", "16",
                 "--no-progress"]) == 0
    assert json.loads((out / "config.json").read_text())["problem_type"] == "regression"
    assert main(["evaluate", "--model", str(out), "--data", str(scores), "--json"]) == 0
    assert set(json.loads(capsys.readouterr().out.splitlines()[-1])) == {"pearson", "spearman", "mse"}


def test_cli_errors_are_one_line(tmp_path, tiny_model_dir, capsys):
    path = tmp_path / "bad.csv"
    path.write_text("text,label\nok,pos\nbroken\n")
    args = ["finetune", "--task", "classify", "--model", str(tiny_model_dir), "--train", str(path),
            "--out", str(tmp_path / "o"), "--no-progress"]
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("bertkit: error: ") and "bad.csv:3: expected 2 fields" in err and "\n" not in err
    assert main(args + ["--skip-bad-lines", "--epochs", "1"]) == 0
    assert "skipped 1 bad line(s)" in capsys.readouterr().out


def test_skipped_unseen_labels_leave_evaluate_and_finetune_aligned(finetuned, sentiment_files, tiny_model_dir,
                                                                   tmp_path, capsys):
    # Regression: a dev line whose label the model never saw was reported and skipped by the
    # featurizer but stayed among the examples, and post-processing crashed on it.
    good = sentiment_rows(8, 5)
    data = write_csv(tmp_path / "dev.csv", good[:4] + [("the film was so-so .", "neutral")] + good[4:])
    args = ["evaluate", "--model", str(finetuned), "--data", str(data), "--json"]
    assert main(args) == 2
    assert "dev.csv:6: label 'neutral' was not in the training data" in capsys.readouterr().err
    assert main(args + ["--skip-bad-lines"]) == 0
    captured = capsys.readouterr()
    assert "8 examples" in captured.err and "skipped 1 bad line(s)" in captured.err
    assert main(["evaluate", "--model", str(finetuned), "--data", str(write_csv(tmp_path / "good.csv", good)),
                 "--json"]) == 0
    assert json.loads(captured.out) == json.loads(capsys.readouterr().out)  # as if the line were not there
    train, _ = sentiment_files
    assert main(["finetune", "--task", "classify", "--model", str(tiny_model_dir), "--train", str(train),
                 "--dev", str(data), "--out", str(tmp_path / "out"), "--epochs", "1", "--max-length", "16",
                 "--skip-bad-lines", "--no-progress"]) == 0
    assert "dev: 8 examples" in capsys.readouterr().out
    # every example skipped: one line, not an empty evaluation
    only_bad = write_csv(tmp_path / "bad.csv", [("meh", "neutral")])
    assert main(["evaluate", "--model", str(finetuned), "--data", str(only_bad), "--skip-bad-lines"]) == 2
    assert "nothing left to use: all 1 example(s) were skipped as bad input" in capsys.readouterr().err


def test_unknown_task_and_wrong_model_kind(tmp_path, tiny_model_dir, capsys):
    assert main(["finetune", "--task", "summarise", "--model", str(tiny_model_dir), "--train", "x.csv",
                 "--out", str(tmp_path)]) == 2
    assert "--task must be one of classify, tag, qa, choice, embed; got 'summarise'" in capsys.readouterr().err
    assert make_task("classify").name == "classify"
