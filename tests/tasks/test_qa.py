"""qa: SQuAD reader, windows over long contexts, span search, SQuAD metrics, and finetune end to end."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from bertkit import BertConfig, BertForQuestionAnswering, Tokenizer
from bertkit.cli import main
from bertkit.errors import InputError
from bertkit.predict import evaluate_examples
from bertkit.tasks import BadInput, DataOptions, make_task
from bertkit.tasks.base import collate
from bertkit.tasks.qa import (
    Answer,
    QAPrediction,
    Span,
    best_spans,
    best_threshold,
    choose_answer,
    exact_match,
    f1,
    normalize_answer,
    predict_answer,
    squad_metrics,
)
from tests.conftest import tiny_config

FIXTURE = Path(__file__).parent / "fixtures" / "qa_squad2.json"  # 5 hand-written paragraphs, 37 questions


@pytest.fixture(scope="module")
def tok(minilm_dir) -> Tokenizer:
    return Tokenizer.from_pretrained(minilm_dir)


def squad(path: Path, paragraphs: list[tuple[str, list[dict]]]) -> Path:
    """A SQuAD file written the way the official files are laid out (indented, one key per line)."""
    data = [{"title": "t", "paragraphs": [{"context": c, "qas": qas}]} for c, qas in paragraphs]
    path.write_text(json.dumps({"version": "v2.0", "data": data}, indent=1))
    return path


def to_jsonl(path: Path) -> Path:
    """The fixture in the datasets library's layout: one flat record per question."""
    rows = []
    for article in json.loads(FIXTURE.read_text())["data"]:
        for p in article["paragraphs"]:
            for qa in p["qas"]:
                answers = {"text": [a["text"] for a in qa["answers"]],
                           "answer_start": [a["answer_start"] for a in qa["answers"]]}
                rows.append({"id": qa["id"], "question": qa["question"], "context": p["context"], "answers": answers})
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


# ---- reader ------------------------------------------------------------------------------------------


def test_reads_squad_json_with_the_line_of_each_question(tmp_path):
    examples = make_task("qa").read(FIXTURE, BadInput())
    assert len(examples) == 37
    assert sum(e.answers == [] for e in examples) == 8  # is_impossible: true
    lines = FIXTURE.read_text().splitlines()
    for e in examples:
        line = int(e.where.rsplit(":", 1)[1])
        assert f'"id": "{e.id}"' in lines[line - 1]
        for a in e.answers:
            assert e.context[a.start:a.end] == a.text
    jsonl = make_task("qa").read(to_jsonl(tmp_path / "squad.jsonl"), BadInput())
    assert [(e.id, e.question, e.context, e.answers) for e in jsonl] == \
        [(e.id, e.question, e.context, e.answers) for e in examples]
    assert jsonl[3].where == f"{tmp_path / 'squad.jsonl'}:4"


def test_squad_v1_several_gold_answers_and_unlabelled_reading(tmp_path):
    context = "Paris is the capital of France."
    path = squad(tmp_path / "v1.json", [(context, [
        {"id": "a", "question": "What is the capital?", "answers": [
            {"text": "Paris", "answer_start": 0}, {"text": "Paris", "answer_start": 0}]}])])
    (e,) = make_task("qa").read(path, BadInput())
    assert [a.text for a in e.answers] == ["Paris", "Paris"]
    assert make_task("qa").label_names([e]) == ["span"]
    (u,) = make_task("qa").read(path, BadInput(), labelled=False)
    assert u.answers is None and u.id == "a"


def test_answer_start_that_misses_the_answer_names_file_line_and_question(tmp_path):
    context = "The Rhine rises in the Swiss Alps."
    path = squad(tmp_path / "bad.json", [(context, [
        {"id": "good", "question": "Which river?", "answers": [{"text": "Rhine", "answer_start": 4}]},
        {"id": "off-by-one", "question": "Where?", "answers": [{"text": "Swiss Alps", "answer_start": 22}]},
    ])])
    line = next(n for n, x in enumerate(path.read_text().splitlines(), 1) if '"off-by-one"' in x)
    with pytest.raises(InputError) as error:
        make_task("qa").read(path, BadInput())
    message = str(error.value)
    assert message.startswith(f"{path}:{line}: question 'off-by-one': answer_start 22 does not match the answer "
                              "'Swiss Alps' (the context has ' Swiss Alp' there; the text occurs at 23)")
    bad = BadInput(skip=True)
    assert [e.id for e in make_task("qa").read(path, bad)] == ["good"] and bad.count == 1


def test_other_bad_questions_and_files(tmp_path):
    jsonl = tmp_path / "q.jsonl"
    jsonl.write_text("\n".join(json.dumps(r) for r in [
        {"id": "1", "question": "", "context": "c", "answers": {"text": [], "answer_start": []}},
        {"id": "2", "question": "q", "context": "c", "answers": {"text": ["c"], "answer_start": [0, 1]}},
        {"id": "3", "question": "q", "context": "some text", "answers": {"text": ["text"], "answer_start": [5]}},
    ]) + "\nnot json\n")
    bad = BadInput(skip=True)
    assert [e.id for e in make_task("qa").read(jsonl, bad)] == ["3"] and bad.count == 3
    with pytest.raises(InputError, match=r"q.jsonl:1: empty or missing 'question'"):
        make_task("qa").read(jsonl, BadInput())
    broken = tmp_path / "broken.json"
    broken.write_text('{"data": [\n  {"paragraphs": [}\n]}')
    with pytest.raises(InputError, match=r"broken.json:2: not valid JSON"):
        make_task("qa").read(broken, BadInput())
    table = tmp_path / "x.csv"
    table.write_text("question,context\n")
    with pytest.raises(InputError, match=r"x.csv: unknown format; use .json \(SQuAD\) or .jsonl"):
        make_task("qa").read(table, BadInput())


def test_configure_allows_no_answer_only_for_squad2_data_and_keeps_a_two_output_head():
    task = make_task("qa")
    assert task.configure(BertConfig(), ["span"]) == {} and task.options.no_answer_threshold is None
    assert task.configure(BertConfig(id2label={0: "LABEL_0", 1: "LABEL_1"}), ["span", "no answer"]) == {}
    assert task.options.no_answer_threshold == 0.0  # unanswerable training questions: SQuAD 2.0
    assert task.configure(BertConfig(id2label={0: "a", 1: "b", 2: "c"}), ["span"]) == {"id2label": {}}
    chosen = make_task("qa", DataOptions(no_answer_threshold=-1.5))
    chosen.configure(BertConfig(), ["span", "no answer"])
    assert chosen.options.no_answer_threshold == -1.5


def test_parse_dicts_and_pairs():
    task = make_task("qa")
    a, b = task.parse([{"id": "x", "question": "q?", "context": "c."}, ("q2?", "c2.")])
    assert (a.id, a.question, a.context, a.answers) == ("x", "q?", "c.", None)
    assert (b.id, b.question, b.context) == ("1", "q2?", "c2.")
    with pytest.raises(InputError, match="input 0: expected a dict with 'question' and 'context'"):
        task.parse(["just a line"])


# ---- featurizer: windows ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def windowed(tok):
    task = make_task("qa", DataOptions(max_length=64, stride=16))
    examples = task.read(FIXTURE, BadInput())
    return task, examples, task.featurize(examples, tok, BertConfig(), BadInput())


def test_windows_cover_every_context_token_and_overlap_by_the_stride(windowed, tok):
    task, examples, featurized = windowed
    assert featurized.long == 33  # the four long paragraphs; the Rhine's fits in one window
    contexts = tok.pieces([e.context for e in examples])
    for i, (e, c) in enumerate(zip(examples, contexts)):
        feats = [f for f in featurized.features if f["_example"] == i]
        q = tok.pieces([e.question])[0].ids
        seen: list[tuple[int, int]] = []
        for k, f in enumerate(feats):
            first, offsets = f["_first"], [tuple(x) for x in f["_offsets"].tolist()]
            assert len(f["input_ids"]) <= 64 and first == len(q) + 2
            assert f["input_ids"][:first] == [tok.cls_token_id, *q, tok.sep_token_id]
            assert f["input_ids"][-1] == tok.sep_token_id
            assert f["token_type_ids"] == [0] * first + [1] * (len(f["input_ids"]) - first)
            n = len(offsets)
            assert f["input_ids"][first:first + n] == c.ids[len(seen) - (16 if k else 0):][:n]
            if k:
                assert offsets[:16] == seen[-16:]  # consecutive windows share `stride` tokens
                seen += offsets[16:]
            else:
                seen += offsets
        assert seen == list(c.offsets)  # every context token, in order, once
        # each context token may start an answer in exactly one window (its max-context one)
        assert sum(sum(f["_max_context"]) for f in feats) == len(c.ids)


def test_every_answer_decodes_back_from_its_labelled_window(windowed):
    task, examples, featurized = windowed
    for i, e in enumerate(examples):
        feats = [f for f in featurized.features if f["_example"] == i]
        labelled = [f for f in feats if f["start_positions"] != 0]
        if not e.answers:
            assert not labelled and all(f["end_positions"] == 0 for f in feats)
            continue
        assert labelled, e.id
        a = e.answers[0]
        for f in feats:
            offsets, first = f["_offsets"], f["_first"]
            holds = offsets[0][0] <= a.start and a.end <= offsets[-1][1]
            assert (f["start_positions"] != 0) == holds  # a window with only part of it points at [CLS]
            if holds:
                s, t = f["start_positions"] - first, f["end_positions"] - first
                assert e.context[offsets[s][0]:offsets[t][1]] == a.text


def test_a_long_question_is_cut_to_make_room_for_the_context(tok):
    task = make_task("qa", DataOptions(max_length=40, stride=8))
    (e,) = task.parse([{"question": " ".join(["why"] * 50), "context": "because " * 30}])
    features = task.featurize([e], tok, BertConfig(), BadInput()).features
    assert all(f["_first"] == 20 + 2 and len(f["input_ids"]) <= 40 for f in features)  # max_length // 2
    assert len(features) == 3  # 30 context tokens in windows of 17 tokens overlapping by 8: 0-17, 9-26, 18-30


def test_long_contexts_in_chunks_and_huge_questions_featurize_as_the_whole_would(windowed, tok, monkeypatch):
    import bertkit.tokenizer as tokenizer_module

    task, examples, featurized = windowed
    monkeypatch.setattr(tokenizer_module, "CHUNK_CHARS", 60)  # every fixture context in many chunks
    again = task.featurize(list(examples), tok, BertConfig(), BadInput())
    assert again.long == featurized.long and len(again.features) == len(featurized.features)
    for f, g in zip(featurized.features, again.features):
        assert f.keys() == g.keys()
        for key in f:
            assert np.array_equal(f[key], g[key]), key
    monkeypatch.undo()

    seen: list[int] = []  # characters of every text that reaches the engine
    real = tokenizer_module._encode

    def spy(engine, inputs, **options):
        seen.extend(len(x) for x in inputs)
        return real(engine, inputs, **options)

    monkeypatch.setattr(tokenizer_module, "_encode", spy)
    (e,) = task.parse([{"question": "why " * 1_250_000, "context": "because it is so ."}])  # a 5 MB question
    (f,) = task.featurize([e], tok, BertConfig(), BadInput()).features
    assert sum(seen) < 5_000 and f["input_ids"][:34] == [tok.cls_token_id, *[tok.vocab["why"]] * 32, tok.sep_token_id]


# ---- post-processing ----------------------------------------------------------------------------------


OFFSETS = [(0, 3), (4, 9), (10, 12), (13, 18), (19, 24)]  # "The quick ox jumps high"
CONTEXT = "The quick ox jumps high"


def logits(context: list[float]) -> np.ndarray:
    """[CLS] q [SEP] context... [SEP]: three positions before the context, first = 3."""
    return np.array([0.0, 0.0, 0.0, *context, 0.0])


def test_best_spans_on_hand_made_logits():
    start = logits([1.0, 5.0, 0.0, 2.0, 0.0])
    end = logits([0.0, 0.0, 4.0, 0.0, 3.0])
    spans = best_spans(start, end, 3, OFFSETS, [True] * 5)
    best = spans[0]
    assert best.tokens == (1, 2) and best.chars == (4, 12) and best.score == 9.0  # "quick ox": 5 + 4
    assert {s.tokens for s in spans} == {(a, b) for a in range(5) for b in range(a, 5)}  # end >= start only
    assert [s.score for s in spans] == sorted((s.score for s in spans), reverse=True)
    assert [s.tokens for s in best_spans(start, end, 3, OFFSETS, [True] * 5, n_best=2)] == [(1, 2), (1, 4)]
    # the best end before the best start is never paired with it
    late = best_spans(logits([0.0, 0.0, 0.0, 9.0, 0.0]), logits([0.0, 8.0, 0.0, 0.0, 1.0]), 3, OFFSETS, [True] * 5)
    assert late[0].tokens == (3, 4)  # 9 + 1, not (3, 1)
    # too long an answer loses to a shorter one with a lower score
    far = best_spans(logits([9.0, 0.0, 0.0, 0.0, 1.0]), logits([0.0, 0.0, 0.0, 0.0, 9.0]), 3, OFFSETS, [True] * 5,
                     max_tokens=3)
    assert (0, 4) not in {s.tokens for s in far}
    assert far[0].tokens == (4, 4)  # 1 + 9 beats (0, 0)/(0, 1)/(0, 2): 9 + 0
    # a start whose max-context window is another one is not a start here
    other = best_spans(start, end, 3, OFFSETS, [True, False, True, True, True])
    assert other[0].tokens == (3, 4)  # 2 + 3
    # only the n best starts and ends are paired
    assert {s.tokens for s in best_spans(start, end, 3, OFFSETS, [True] * 5, n_best=1)} == {(1, 2)}


def window(start_context, end_context, null=(0.0, 0.0)) -> tuple[dict, dict]:
    start, end = logits(start_context), logits(end_context)
    start[0], end[0] = null
    f = {"input_ids": [0] * len(start), "_first": 3, "_offsets": OFFSETS, "_max_context": [True] * 5}
    return f, {"start_logits": start, "end_logits": end}


def test_no_answer_when_the_cls_score_beats_the_best_span_by_the_threshold():
    w = window([0.0, 3.0, 0.0, 0.0, 0.0], [0.0, 0.0, 2.0, 0.0, 0.0], null=(3.0, 3.0))  # span 5, [CLS] 6
    v1 = predict_answer(CONTEXT, [w], None)
    assert (v1.answer, v1.start, v1.end, v1.null_margin) == ("quick ox", 4, 12, None)
    v2 = predict_answer(CONTEXT, [w], 0.0)
    assert (v2.answer, v2.start, v2.end, v2.best_span, v2.null_margin) == ("", None, None, "quick ox", 1.0)
    assert predict_answer(CONTEXT, [w], 1.5).answer == "quick ox"  # margin 1 <= 1.5
    # the [CLS] score is its lowest over the question's windows
    low = window([0.0, 3.0, 0.0, 0.0, 0.0], [0.0, 0.0, 2.0, 0.0, 0.0], null=(1.0, 1.0))
    assert predict_answer(CONTEXT, [w, low], 0.0).null_margin == -3.0


def test_answer_probability_over_the_n_best_and_duplicates_across_windows():
    spans = [Span(2.0, (1, 1), (4, 9)), Span(2.0, (0, 1), (4, 9)), Span(1.0, (0, 0), (0, 3))]
    p = choose_answer(CONTEXT, spans, 0.5, None)  # the second "quick" (another window) counts once
    assert p.answer == "quick" and p.score == pytest.approx(np.exp(2) / (np.exp(2) + np.exp(1)))
    p2 = choose_answer(CONTEXT, spans, 0.5, 0.0)
    assert p2.score == pytest.approx(np.exp(2) / (np.exp(2) + np.exp(1) + np.exp(0.5)))
    nothing = choose_answer(CONTEXT, spans, 5.0, 0.0)
    assert nothing.answer == "" and nothing.score == pytest.approx(np.exp(5) / (np.exp(2) + np.exp(1) + np.exp(5)))


# ---- metrics ------------------------------------------------------------------------------------------


def test_official_normalisation_exact_match_and_f1():
    assert normalize_answer("The Cat!") == "cat"
    assert normalize_answer("  An apple,  a pear\tand THE plum. ") == "apple pear and plum"
    assert normalize_answer("theatre anthem") == "theatre anthem"  # articles only as whole words
    assert exact_match("The Cat", "cat") == 1.0 and exact_match("cats", "cat") == 0.0
    assert f1("the cat sat", "cat sat on the mat") == pytest.approx(2 * 1 * 0.5 / 1.5)  # P 2/2, R 2/4
    assert f1("cat cat", "cat") == pytest.approx(2 * 0.5 * 1 / 1.5)  # overlap counts repeats once each
    assert f1("dog", "cat") == 0.0
    assert f1("", "") == 1.0 and f1("a", "") == 1.0 and f1("cat", "") == 0.0  # "a" normalises to nothing


def test_squad_metrics_take_the_best_gold_answer_and_split_answerable_from_not():
    golds = [["Denver Broncos", "The Denver Broncos"], ["Santa Clara"], [], []]
    predictions = ["denver broncos", "Santa Clara, California", "", "Levi's Stadium"]
    m = squad_metrics(golds, predictions)
    santa = 2 * (2 / 3) * 1 / (2 / 3 + 1)  # 2 of 3 predicted words, 2 of 2 gold words
    assert m["exact_match"] == pytest.approx(100 * 2 / 4)
    assert m["f1"] == pytest.approx(100 * (1 + santa + 1 + 0) / 4)
    assert m["has_answer_exact_match"] == pytest.approx(50.0)
    assert m["has_answer_f1"] == pytest.approx(100 * (1 + santa) / 2)
    assert m["no_answer_f1"] == pytest.approx(50.0)
    assert set(squad_metrics([["x"]], ["x"])) == {"exact_match", "f1"}  # SQuAD 1.1: no split


def test_best_threshold_scans_the_no_answer_margins():
    def p(best: str, margin: float) -> QAPrediction:
        return QAPrediction("", None, None, 1.0, best, margin)

    golds = [["cat"], ["the dog"], [], []]
    predictions = [p("cat", -2.0), p("dog", 1.0), p("bird", 2.0), p("fish", 3.0)]
    # "" is answered where margin > t: t < -2 gets the two unanswerable ones (50), t = -2 adds cat (75),
    # t = 1 adds dog (100), t = 2 loses bird's "" (75), t = 3 loses fish's too (50)
    assert best_threshold(golds, predictions) == {"best_f1": 100.0, "best_f1_threshold": 1.0}
    predictions[1] = p("a dog barked", 1.0)  # "dog barked" vs "dog": P 1/2, R 1, F1 2/3
    assert best_threshold(golds, predictions) == {"best_f1": pytest.approx(100 * (1 + 2 / 3 + 1 + 1) / 4),
                                                  "best_f1_threshold": 1.0}
    predictions[0] = p("cat", 2.5)  # answering cat now also answers bird: t = 1 and t = 2.5 tie, the lower wins
    assert best_threshold(golds, predictions) == {"best_f1": pytest.approx(100 * (2 / 3 + 2) / 4),
                                                  "best_f1_threshold": 1.0}
    everything_null = best_threshold([[], []], [p("x", 0.5), p("y", 1.5)])
    assert everything_null == {"best_f1": 100.0, "best_f1_threshold": -0.5}  # below every margin


# ---- objective ---------------------------------------------------------------------------------------


def test_objective_sums_are_the_head_loss_and_ignore_padding(windowed, tok):
    task, _, featurized = windowed
    torch.manual_seed(0)
    model = BertForQuestionAnswering(tiny_config(vocab_size=tok.vocab_size, max_position_embeddings=64)).eval()
    objective = task.objective(model)
    features = featurized.features[:6]
    batch = collate(features, tok.pad_token_id)
    with torch.no_grad():
        out = objective(batch)
    assert objective.counts(batch) == {"span": 6.0}
    with torch.no_grad():
        one_by_one = sum(float(objective(collate([f], tok.pad_token_id)).losses["span"]) for f in features)
    assert float(out.losses["span"]) == pytest.approx(one_by_one, rel=1e-5)  # padding changes nothing
    same_length = [f for f in featurized.features if len(f["input_ids"]) == 64][:4]
    b = collate(same_length, tok.pad_token_id)
    with torch.no_grad():
        reference = model(b["input_ids"], b["token_type_ids"], b["attention_mask"], b["start_positions"],
                          b["end_positions"]).loss
        summed = objective(b).losses["span"]
    assert float(summed) / 4 == pytest.approx(float(reference), rel=1e-5)  # no padding: the head's mean loss
    summary = objective.summarize({"loss_span": 6.0, "n_span": 3.0, "exact_positions": 1.0})
    assert summary == {"loss": 2.0, "position_accuracy": pytest.approx(1 / 3)}


# ---- finetune, evaluate, predict, pipeline -----------------------------------------------------------


@pytest.fixture(scope="module")
def small_squad(tmp_path_factory) -> Path:
    """Two paragraphs of the fixture (11 questions, 2 unanswerable): the lighthouse's context spans
    five windows of 64 tokens, the Rhine's fits in one."""
    document = json.loads(FIXTURE.read_text())
    document["data"] = [document["data"][0], document["data"][4]]
    path = tmp_path_factory.mktemp("qa-data") / "small.json"
    path.write_text(json.dumps(document, indent=1))
    return path


@pytest.fixture(scope="module")
def finetuned(tmp_path_factory, tiny_model_dir, small_squad):
    out = tmp_path_factory.mktemp("qa-finetuned")
    code = main(["finetune", "--task", "qa", "--model", str(tiny_model_dir), "--train", str(small_squad),
                 "--dev", str(small_squad), "--out", str(out), "--epochs", "30", "--batch-size", "40",
                 "--lr", "2e-2", "--warmup", "0.05", "--max-length", "64", "--stride", "16", "--no-progress",
                 "--precision", "fp32"])
    assert code == 0
    return out


def test_finetune_learns_the_training_questions_and_saves_a_squad2_model(finetuned, small_squad, tiny_model_dir,
                                                                        tok):
    config = json.loads((finetuned / "config.json").read_text())
    assert config["architectures"] == ["BertForQuestionAnswering"] and "id2label" not in config
    options = config["bertkit"]["options"]
    assert config["bertkit"]["task"] == "qa"
    assert (options["max_length"], options["stride"], options["no_answer_threshold"]) == (64, 16, 0.0)
    metrics = json.loads((finetuned / "dev_metrics.json").read_text())
    assert {"exact_match", "f1", "has_answer_f1", "no_answer_f1", "best_f1", "best_f1_threshold"} <= set(metrics)
    # the same tiny model with an untrained head, read the same way
    task = make_task("qa", DataOptions(max_length=64, stride=16, no_answer_threshold=0.0))
    examples = task.read(small_squad, BadInput())
    torch.manual_seed(0)
    untrained = BertForQuestionAnswering.from_pretrained(tiny_model_dir)
    before = evaluate_examples(task, untrained, tok, examples)
    assert before["f1"] < 40  # about the share of unanswerable questions (18%)
    assert metrics["f1"] >= 60 and metrics["f1"] >= before["f1"] + 30  # measured: 73-82 over seeds 0-3


def test_evaluate_json_and_predict_jsonl(finetuned, small_squad, tmp_path, capsys):
    assert main(["evaluate", "--model", str(finetuned), "--data", str(small_squad), "--json"]) == 0
    metrics = json.loads(capsys.readouterr().out)
    best = json.loads((finetuned / "dev_metrics.json").read_text())
    assert metrics == {k: v for k, v in best.items() if k != "step"}  # the best epoch's model was kept
    # a huge threshold always answers: no unanswerable question is right any more
    assert main(["evaluate", "--model", str(finetuned), "--data", str(small_squad), "--json",
                 "--no-answer-threshold", "1e9"]) == 0
    assert json.loads(capsys.readouterr().out)["no_answer_f1"] == 0.0

    out = tmp_path / "pred.jsonl"
    assert main(["predict", "--model", str(finetuned), "--input", str(small_squad), "--output", str(out)]) == 0
    rows = [json.loads(x) for x in out.read_text().splitlines()]
    examples = make_task("qa").read(small_squad, BadInput())
    assert [r["id"] for r in rows] == [e.id for e in examples]
    for r, e in zip(rows, examples):
        assert set(r) == {"id", "question", "answer", "start", "end", "score"} and 0 < r["score"] <= 1
        assert r["answer"] == ("" if r["start"] is None else e.context[r["start"]:r["end"]])
    right = [max(exact_match(r["answer"], a.text) for a in e.answers or [Answer("", 0)]) for r, e in zip(rows, examples)]
    assert 100 * sum(right) / len(right) == pytest.approx(metrics["exact_match"])

    lines = tmp_path / "in.txt"
    rhine = examples[-1].context
    lines.write_text(json.dumps({"id": "r", "question": "Where does the Rhine rise?", "context": rhine}) + "\n")
    assert main(["predict", "--model", str(finetuned), "--input", str(lines), "--output", "-"]) == 0
    (row,) = [json.loads(x) for x in capsys.readouterr().out.splitlines()]
    assert row["id"] == "r" and row["answer"] == rows[-4]["answer"]  # the same question as in the file


def test_a_question_whose_answer_covers_no_token_is_skipped_everywhere(finetuned, tok, tmp_path, capsys):
    # The featurizer finds that the answer (a zero-width space) covers no token: the question is
    # reported, and with --skip-bad-lines it leaves the examples, neither predicted nor scored.
    context = "The Rhine rises in the Swiss Alps.\u200b It flows north."
    good = [{"id": "good", "question": "Which river?", "answers": [{"text": "Rhine", "answer_start": 4}]}]
    invisible = {"id": "invisible", "question": "What?", "answers": [{"text": "\u200b", "answer_start": 34}]}
    path = squad(tmp_path / "dev.json", [(context, [good[0], invisible])])
    task = make_task("qa", DataOptions(max_length=64))
    with pytest.raises(InputError, match=r"dev.json:\d+: question 'invisible': the answer '\\u200b' covers no token"):
        task.featurize(task.read(path, BadInput()), tok, BertConfig(), BadInput())
    examples = task.read(path, BadInput())
    featurized = task.featurize(examples, tok, BertConfig(), BadInput(skip=True))
    assert [e.id for e in examples] == ["good"] and {f["_example"] for f in featurized.features} == {0}
    assert main(["evaluate", "--model", str(finetuned), "--data", str(path), "--json", "--skip-bad-lines"]) == 0
    captured = capsys.readouterr()
    assert "1 examples" in captured.err and "skipped 1 bad line(s)" in captured.err
    clean = squad(tmp_path / "good.json", [(context, good)])
    assert main(["evaluate", "--model", str(finetuned), "--data", str(clean), "--json"]) == 0
    assert json.loads(captured.out) == json.loads(capsys.readouterr().out)


def test_pipeline(finetuned):
    from bertkit import pipeline

    qa = pipeline("qa", model=finetuned, no_answer_threshold=1e9)  # always answer
    answer = qa({"question": "Where does the Rhine rise?", "context": "The Rhine rises in the Swiss Alps."})
    assert answer["answer"] and answer["answer"] == "The Rhine rises in the Swiss Alps."[answer["start"]:answer["end"]]
    assert len(qa([("Who?", "Nobody at all."), ("What?", "Something.")])) == 2


def test_transformers_loads_the_finetuned_model_with_identical_outputs(finetuned, tok):
    transformers = pytest.importorskip("transformers")
    reference = transformers.AutoModelForQuestionAnswering.from_pretrained(finetuned).eval()
    ours = BertForQuestionAnswering.from_pretrained(finetuned).eval()
    enc = tok(["Where does the Rhine rise?", "Who?"], ["The Rhine rises in the Swiss Alps.", "Nobody."],
              padding=True, return_tensors="pt")
    with torch.no_grad():
        expected = reference(**enc)
        got = ours(enc["input_ids"], enc["token_type_ids"], enc["attention_mask"])
    assert torch.allclose(got.start_logits, expected.start_logits, atol=1e-5)
    assert torch.allclose(got.end_logits, expected.end_logits, atol=1e-5)
