"""The sentence-transformers layout both ways: bertkit's vectors equal sentence-transformers' (<= 1e-5)
for the real all-MiniLM-L6-v2, for ST models built and saved by the library on random weights (every
pooling mode, concatenations, Dense, Normalize, prompts), and for bertkit models saved in the layout
and loaded by `SentenceTransformer(dir)`; bad ST files give one-line errors."""

from __future__ import annotations

import json
import os
import shutil

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # before huggingface_hub is imported: nothing is downloaded

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402

from bertkit import InputError  # noqa: E402
from bertkit.embedding import Embedder, quantize  # noqa: E402
from bertkit.heads import HEADS  # noqa: E402
from bertkit.sentence import (  # noqa: E402
    POOLING_MODES,
    DenseSettings,
    SentenceEncoder,
    SentenceSettings,
    load_tokenizer,
    pool,
    read_settings,
)
from tests.conftest import tiny_config  # noqa: E402

st = pytest.importorskip("sentence_transformers")
from sentence_transformers import SentenceTransformer, quantize_embeddings  # noqa: E402
from sentence_transformers.sentence_transformer.modules import Dense, Normalize, Pooling, Transformer  # noqa: E402

TEXTS = [
    "A man is playing a guitar.",
    "The stock market fell sharply today.",
    "x",
    "",
    "北京是中国的首都。",
    "a longer text that keeps going and going " * 6,
]
LONG = ["the quick brown fox jumps over the lazy dog and keeps running " * 40,  # ~480 tokens
        "Sentence embeddings of long documents are cut at max_seq_length. " * 30]


@pytest.fixture(autouse=True)
def _offline(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


def assert_same(a: np.ndarray, b: np.ndarray) -> float:
    diff = float(np.abs(a - b).max())
    assert a.shape == b.shape and diff <= 1e-5, diff
    return diff


# ---- (a) the real all-MiniLM-L6-v2 -------------------------------------------------------------------


@pytest.fixture(scope="module")
def minilm_pair(minilm_dir):
    return Embedder.from_pretrained(minilm_dir), SentenceTransformer(str(minilm_dir), device="cpu")


def test_minilm_matches_sentence_transformers_short_and_long(minilm_pair):
    ours, ref = minilm_pair
    assert ours.settings.max_seq_length == 256 and ours._limit(None) == 256
    with pytest.warns(UserWarning, match="truncated to max_length=256"):
        got = ours(TEXTS + LONG, batch_size=3)
    want = ref.encode(TEXTS + LONG, batch_size=3)
    assert_same(got, want)
    cosines = (got * want).sum(-1)
    assert np.all(cosines > 1 - 1e-6)


def test_minilm_prompt_layer_and_pooling_override_match_sentence_transformers(minilm_pair, minilm_dir):
    ours, ref = minilm_pair
    texts = TEXTS[:3]
    assert_same(ours(texts, prompt="query: "), ref.encode(texts, prompt="query: "))
    # pooling=cls through ST: a Pooling module of its own over the same Transformer
    cls_model = SentenceTransformer(modules=[ref[0], Pooling(384, pooling_mode="cls"), Normalize()], device="cpu")
    assert_same(ours(texts, pooling="cls"), cls_model.encode(texts))
    # layer=-2: mean pooling of the second-to-last hidden states (transformers' output_hidden_states)
    import transformers

    bert = transformers.BertModel.from_pretrained(minilm_dir).eval()
    tok = transformers.AutoTokenizer.from_pretrained(minilm_dir)
    batch = tok(texts, padding=True, truncation=True, max_length=256, return_tensors="pt")
    with torch.no_grad():
        hidden = bert(**batch, output_hidden_states=True).hidden_states[-2]
    m = batch["attention_mask"][..., None].float()
    want = torch.nn.functional.normalize((hidden * m).sum(1) / m.sum(1), dim=-1).numpy()
    assert_same(ours(texts, layer=-2), want)
    assert_same(ours(texts, layer=-1), ours(texts))


# ---- (b) ST models built and saved by sentence-transformers, loaded by bertkit ----------------------


def build_st(directory, modules_after, *, max_seq_length=24, **kwargs) -> SentenceTransformer:
    transformer = Transformer(str(directory), max_seq_length=max_seq_length)
    return SentenceTransformer(modules=[transformer, *modules_after(transformer)], device="cpu", **kwargs)


CASES = {
    **{f"pool-{mode}": (lambda t, m=mode: [Pooling(32, pooling_mode=m)]) for mode in POOLING_MODES},
    "concat-new-order": lambda t: [Pooling(32, pooling_mode=("lasttoken", "cls", "mean")), Normalize()],
    "concat-st-order": lambda t: [Pooling(32, pooling_mode=("max", "mean", "weightedmean"))],
    "dense-tanh-normalize": lambda t: [Pooling(32, pooling_mode=("cls", "mean")), Dense(64, 16), Normalize()],
    "dense-relu-residual-twice": lambda t: [Pooling(32), Dense(32, 8, activation_function=torch.nn.ReLU(),
                                                                  use_residual=True),
                                              Dense(8, 8, bias=False, activation_function=torch.nn.Identity())],
    "normalize": lambda t: [Pooling(32, pooling_mode="mean_sqrt_len_tokens"), Normalize()],
}


@pytest.mark.parametrize("case", list(CASES))
def test_st_saved_models_embed_the_same_in_bertkit(case, tiny_model_dir, tmp_path):
    torch.manual_seed(1)
    model = build_st(tiny_model_dir, CASES[case])
    model.save(str(tmp_path), safe_serialization=case != "dense-tanh-normalize")  # one with pytorch_model.bin
    ours = Embedder.from_pretrained(tmp_path)
    assert ours._limit(None) == 24
    with pytest.warns(UserWarning):  # the long text is cut at 24 tokens
        got = ours(TEXTS, batch_size=4)
    assert_same(got, model.encode(TEXTS, batch_size=4))


@pytest.mark.parametrize("mode", ["mean", "cls", "weightedmean", "max"])
def test_a_prompt_left_out_of_pooling(mode, tiny_model_dir, tmp_path):
    torch.manual_seed(2)
    model = build_st(tiny_model_dir, lambda t: [Pooling(32, pooling_mode=mode, include_prompt=False)],
                     prompts={"query": "query: ", "doc": "a passage of text: "}, default_prompt_name="query")
    model.save(str(tmp_path))
    ours = Embedder.from_pretrained(tmp_path)
    assert ours.settings.include_prompt is False and ours.settings.default_prompt_name == "query"
    texts = TEXTS[:3] + TEXTS[4:5]
    assert_same(ours(texts), model.encode(texts))  # the default prompt
    assert_same(ours(texts, prompt_name="doc"), model.encode(texts, prompt_name="doc"))
    assert_same(ours(texts, prompt="search: "), model.encode(texts, prompt="search: "))
    assert ours.prompt_length("query: ") == 3  # [CLS] query :


def test_cls_pooling_runs_the_last_layer_at_cls_alone(tiny_model_dir):
    """[CLS] pooling reads one vector a row: the last layer's feed-forward block sees B rows (the
    values against ST's: test_st_saved_models_embed_the_same_in_bertkit)."""
    model = SentenceEncoder.from_pretrained(tiny_model_dir, pooling="cls").eval()
    rows = []
    model.bert.layers[-1].ffn.up.register_forward_hook(lambda m, args, out: rows.append(args[0].shape[0]))
    ids = torch.randint(1000, 2000, (3, 9))
    mask = torch.ones_like(ids)
    mask[1, 5:] = 0
    with torch.no_grad():
        fast = model(ids, mask, normalize=False)
        slow = model(ids, mask, pooling="cls+mean", normalize=False)[:, :32]  # through the whole last layer
    assert rows == [3, int(mask.sum())]
    torch.testing.assert_close(fast, slow, atol=1e-5, rtol=0)
    mask[2, :2] = 0  # left padding: the first real token is the one pooled
    with torch.no_grad():
        torch.testing.assert_close(model(ids, mask, normalize=False),
                                   model(ids, mask, pooling="cls+mean", normalize=False)[:, :32], atol=1e-5, rtol=0)


def test_read_settings_of_a_saved_st_folder(tiny_model_dir, tmp_path):
    build_st(tiny_model_dir, lambda t: [Pooling(32, pooling_mode=("cls", "max")), Dense(64, 5), Normalize()],
             prompts={"q": "q: "}, similarity_fn_name="dot").save(str(tmp_path))
    settings, encoder_dir = read_settings(tmp_path)
    assert encoder_dir == tmp_path
    assert settings.pooling == ("cls", "max") and settings.normalize and settings.similarity_fn_name == "dot"
    assert settings.dense == (DenseSettings(64, 5, activation="Tanh"),)
    assert settings.prompts["q"] == "q: "
    assert load_tokenizer(tmp_path).model_max_length == 24  # ST >= 5 keeps its length in the tokenizer


def test_transformer_in_a_subfolder(minilm_dir, tmp_path):
    """The older layout: 0_Transformer/ holds config.json, weights, tokenizer and sentence_bert_config.json."""
    sub = tmp_path / "0_Transformer"
    shutil.copytree(minilm_dir, sub, ignore=shutil.ignore_patterns("1_Pooling", "modules.json", "README.md",
                                                                   "config_sentence_transformers.json"))
    shutil.copytree(minilm_dir / "1_Pooling", tmp_path / "1_Pooling")
    modules = json.loads((minilm_dir / "modules.json").read_text())
    modules[0]["path"] = "0_Transformer"
    (tmp_path / "modules.json").write_text(json.dumps(modules))
    ours = Embedder.from_pretrained(tmp_path)
    assert ours.model.source_dir == sub and ours._limit(None) == 256
    assert_same(ours(TEXTS[:3]), SentenceTransformer(str(tmp_path), device="cpu").encode(TEXTS[:3]))


# ---- (c) bertkit models saved in the layout, loaded by sentence-transformers and transformers ---------


SAVED = {
    "st-order-dense-prompt": SentenceSettings(
        pooling=("cls", "mean"), normalize=True, max_seq_length=20, prompts={"query": "query: ", "doc": ""},
        default_prompt_name="query", include_prompt=False, dense=(DenseSettings(64, 16, activation="GELU"),)),
    "own-order-no-normalize": SentenceSettings(pooling=("mean", "cls"), normalize=False),
    "plain": SentenceSettings(),
}


@pytest.mark.parametrize("name", list(SAVED))
def test_bertkit_saved_models_load_in_sentence_transformers(name, minilm_dir, tmp_path):
    from bertkit import Tokenizer

    torch.manual_seed(3)
    settings = SAVED[name]
    model = SentenceEncoder(tiny_config(vocab_size=30522, max_position_embeddings=128), settings)
    torch.nn.init.normal_(model.dense[0].linear.bias) if model.dense else None
    model.save_pretrained(tmp_path, tokenizer=Tokenizer.from_pretrained(minilm_dir))
    assert json.loads((tmp_path / "config.json").read_text())["architectures"] == ["BertModel"]
    assert not list(tmp_path.rglob(".tmp-*"))
    ref = SentenceTransformer(str(tmp_path), device="cpu")
    ours = Embedder.from_pretrained(tmp_path)
    assert ours.settings == settings
    assert_same(ours(TEXTS[:3]), ref.encode(TEXTS[:3]))
    if settings.prompts:
        assert_same(ours(TEXTS[:3], prompt_name="doc"), ref.encode(TEXTS[:3], prompt_name="doc"))
    # and transformers reads the encoder as a plain BertModel
    import transformers

    auto = transformers.AutoModel.from_pretrained(tmp_path).eval()
    ids = torch.tensor([[101, 2023, 2003, 1037, 3231, 102]])
    with torch.no_grad():
        assert_same(auto(input_ids=ids).last_hidden_state.numpy(),
                    model.eval().bert(ids).last_hidden_state.numpy())


def test_sentence_encoder_is_a_head_for_finetune(tiny_model_dir, tmp_path):
    assert HEADS["SentenceEncoder"] is SentenceEncoder and SentenceEncoder.architecture == "BertModel"
    model = HEADS["SentenceEncoder"].from_pretrained(tiny_model_dir, with_head=False, hidden_dropout_prob=0.0)
    assert model.config.hidden_dropout_prob == 0.0 and model.settings == SentenceSettings()
    model.config = model.config.replace(id2label={0: "x"})  # finetune.build_model assigns it
    assert model.bert.config.id2label == {0: "x"}
    assert not any(p.requires_grad for p in model.bert.pooler.parameters())  # frozen: DDP finds no unused parameter
    ids = torch.tensor([[101, 7592, 102, 0]])
    mask = torch.tensor([[1, 1, 1, 0]])
    v = model(ids, mask)
    assert v.shape == (1, 32) and torch.allclose(v.norm(dim=-1), torch.ones(1))
    assert model(ids, mask, layer=0).shape == (1, 32)
    with pytest.raises(InputError, match="--layer must be an integer from -3 to 2"):
        model(ids, mask, layer=3)


def test_explicit_arguments_override_the_files(minilm_dir):
    model = SentenceEncoder.from_pretrained(minilm_dir, pooling="cls+max", normalize=False, max_seq_length=128)
    assert model.settings.pooling == ("cls", "max") and not model.settings.normalize
    assert model.settings.max_seq_length == 128 and model.dim == 768


# ---- pooling by hand ---------------------------------------------------------------------------------


def test_pool_by_hand():
    hidden = torch.tensor([[[1.0, -2.0], [3.0, 4.0], [5.0, 0.0], [100.0, 100.0]]])  # (1, 4, 2), last is padding
    mask = torch.tensor([[1, 1, 1, 0]])
    expected = {
        "mean": [3.0, 2 / 3], "cls": [1.0, -2.0], "max": [5.0, 4.0], "lasttoken": [5.0, 0.0],
        "mean_sqrt_len_tokens": [9 / 3**0.5, 2 / 3**0.5], "weightedmean": [(1 + 6 + 15) / 6, (-2 + 8) / 6],
    }
    for mode, want in expected.items():
        torch.testing.assert_close(pool(hidden, mask, [mode]), torch.tensor([want]))
    torch.testing.assert_close(pool(hidden, mask, ["cls", "max"]), torch.tensor([[1.0, -2.0, 5.0, 4.0]]))
    # two leading tokens left out ([CLS] and a one-token prompt): cls is the third token
    torch.testing.assert_close(pool(hidden, mask, ["cls", "mean"], prompt_length=2), torch.tensor([[5.0, 0.0] * 2]))
    with pytest.raises(InputError, match="unknown pooling mode 'sum'"):
        pool(hidden, mask, ["sum"])


# ---- (d) output precision ------------------------------------------------------------------------------


@pytest.mark.parametrize("precision", ["float32", "int8", "uint8", "binary", "ubinary"])
def test_quantize_equals_sentence_transformers(precision):
    rng = np.random.default_rng(0)
    vectors = rng.normal(size=(50, 44)).astype(np.float32)  # 44: not a multiple of 8
    want = quantize_embeddings(vectors, precision=precision)
    got = quantize(vectors, precision)
    assert got.dtype == want.dtype and np.array_equal(got, want)
    ranges = np.vstack([np.full(44, -1.0), np.full(44, 1.0)]).astype(np.float32)
    if precision.endswith("int8"):
        assert np.array_equal(quantize(vectors, precision, ranges=ranges),
                              quantize_embeddings(vectors, precision=precision, ranges=ranges))


def test_embedder_precision_and_dimensions(tiny_model_dir):
    ours = Embedder.from_pretrained(tiny_model_dir)
    floats = ours(TEXTS)
    for precision in ("int8", "uint8", "binary", "ubinary"):
        got = ours(TEXTS, output_precision=precision)
        assert np.array_equal(got, quantize_embeddings(floats, precision=precision))
    assert ours(TEXTS, output_precision="binary").shape == (len(TEXTS), 4)
    short = ours(TEXTS, dimensions=20)
    assert short.shape == (len(TEXTS), 20)
    np.testing.assert_allclose(np.linalg.norm(short, axis=-1), 1.0, atol=1e-6)  # renormalised
    np.testing.assert_allclose(short, floats[:, :20] / np.linalg.norm(floats[:, :20], axis=-1, keepdims=True),
                               atol=1e-6)
    raw = ours(TEXTS[:2], dimensions=20, normalize=False)
    np.testing.assert_allclose(raw, ours(TEXTS[:2], normalize=False)[:, :20], atol=1e-6)
    with pytest.raises(InputError, match="needs at least 2 texts"):
        ours("one text", output_precision="int8")
    with pytest.raises(InputError, match="--dimensions 33 is more than the model's 32"):
        ours(TEXTS, dimensions=33)
    with pytest.raises(InputError, match="--output-precision must be one of"):
        ours(TEXTS, output_precision="int4")
    with pytest.raises(InputError, match="--prompt-name 'query' is not one of the model's prompts: it has none"):
        ours(TEXTS, prompt_name="query")


# ---- (e) bad ST files ------------------------------------------------------------------------------------


@pytest.fixture
def st_folder(minilm_dir, tmp_path):
    """A copy of MiniLM's small files with links to its weights: cheap to break one file at a time."""
    for item in minilm_dir.iterdir():
        if item.is_dir():
            shutil.copytree(item, tmp_path / item.name)
        elif item.suffix == ".json" or item.name == "vocab.txt":
            shutil.copy(item, tmp_path / item.name)
        else:
            (tmp_path / item.name).symlink_to(item)
    return tmp_path


def _modules(folder, *types):
    modules = [{"idx": i, "name": str(i), "path": path, "type": t} for i, (path, t) in enumerate(types)]
    (folder / "modules.json").write_text(json.dumps(modules))


def _one_line_error(folder, match: str) -> str:
    with pytest.raises(InputError, match=match) as caught:
        SentenceEncoder.from_pretrained(folder)
    message = str(caught.value)
    assert "\n" not in message and str(folder) in message
    return message


def test_unknown_module_types_are_refused(st_folder):
    _modules(st_folder, ("", "sentence_transformers.models.Transformer"), ("1_Pooling", "sentence_transformers.models.Pooling"),
             ("2_LSTM", "sentence_transformers.models.LSTM"))
    _one_line_error(st_folder, "modules.json: module 2 has type 'sentence_transformers.models.LSTM', which bertkit")
    _modules(st_folder, ("", "sentence_transformers.models.Transformer"), ("1_Pooling", "mypackage.Pooling"))
    _one_line_error(st_folder, "module 1 has type 'mypackage.Pooling'")
    _modules(st_folder, ("", "sentence_transformers.models.Transformer"), ("1_Pooling", "sentence_transformers.models.Pooling"),
             ("2_Normalize", "sentence_transformers.models.Normalize"), ("3_Dense", "sentence_transformers.models.Dense"))
    _one_line_error(st_folder, "Transformer -> Pooling -> Normalize -> Dense are not supported")


def test_bad_json_and_missing_files(st_folder):
    (st_folder / "1_Pooling" / "config.json").write_text('{\n  "pooling_mode_mean_tokens": true,\n}')
    _one_line_error(st_folder, r"1_Pooling/config.json:3: not valid JSON")
    (st_folder / "1_Pooling" / "config.json").unlink()
    _one_line_error(st_folder, r"1_Pooling/config.json: missing")
    (st_folder / "1_Pooling" / "config.json").write_text('{"pooling_mode": "sum"}')
    _one_line_error(st_folder, "pooling_mode 'sum' is not one or more of")
    (st_folder / "1_Pooling" / "config.json").write_text('{"pooling_mode_cls_token": "yes"}')
    _one_line_error(st_folder, "pooling_mode_cls_token must be true or false")
    (st_folder / "modules.json").write_text("[1, 2")
    _one_line_error(st_folder, "modules.json:1: not valid JSON")
    (st_folder / "modules.json").write_text(json.dumps([{"type": "sentence_transformers.models.Transformer",
                                                         "path": "../elsewhere"},
                                                        {"type": "sentence_transformers.models.Pooling",
                                                         "path": "1_Pooling"}]))
    _one_line_error(st_folder, "module path '../elsewhere' is outside the model folder")


def test_bad_dense_and_prompt_settings(st_folder):
    _modules(st_folder, ("", "sentence_transformers.models.Transformer"), ("1_Pooling", "sentence_transformers.models.Pooling"),
             ("2_Dense", "sentence_transformers.models.Dense"))
    (st_folder / "2_Dense").mkdir()
    config = {"in_features": 384, "out_features": 8, "activation_function": "mypackage.Evil"}
    (st_folder / "2_Dense" / "config.json").write_text(json.dumps(config))
    _one_line_error(st_folder, "activation_function 'mypackage.Evil' is not supported")
    config["activation_function"] = "torch.nn.modules.activation.Tanh"
    (st_folder / "2_Dense" / "config.json").write_text(json.dumps(config))
    _one_line_error(st_folder, "2_Dense: no Dense weights")
    from safetensors.torch import save_file

    save_file({"linear.weight": torch.zeros(8, 100), "linear.bias": torch.zeros(8)},
              str(st_folder / "2_Dense" / "model.safetensors"))
    _one_line_error(st_folder, r"linear.weight has shape \(8, 100\), the config implies \(8, 384\)")
    config["in_features"] = 100
    (st_folder / "2_Dense" / "config.json").write_text(json.dumps(config))
    _one_line_error(st_folder, "Dense module 1 reads 100 features but receives 384")
    (st_folder / "modules.json").unlink()
    (st_folder / "config_sentence_transformers.json").write_text('{"prompts": {"q": "q: "}, "default_prompt_name": "p"}')
    SentenceEncoder.from_pretrained(st_folder)  # without modules.json: a plain BERT, the ST files unread
    _modules(st_folder, ("", "sentence_transformers.models.Transformer"), ("1_Pooling", "sentence_transformers.models.Pooling"))
    _one_line_error(st_folder, "default_prompt_name 'p' is not one of the prompts")


def test_dense_weights_come_back_after_a_save(tmp_path):
    torch.manual_seed(4)
    settings = SentenceSettings(dense=(DenseSettings(32, 4, activation="ReLU"), DenseSettings(4, 4, use_residual=True)))
    model = SentenceEncoder(tiny_config(), settings)
    model.save_pretrained(tmp_path)
    fresh = SentenceEncoder(tiny_config(), settings)
    fresh.load_dense_weights(tmp_path)  # what a resumed run needs besides checkpoint.load_state_into
    for a, b in zip(model.dense.state_dict().values(), fresh.dense.state_dict().values()):
        assert torch.equal(a, b)
    with pytest.raises(InputError, match="2 Dense modules, this model has 0"):
        SentenceEncoder(tiny_config()).load_dense_weights(tmp_path)


def test_restore_weights_brings_back_the_dense_modules(tmp_path):
    """What a resumed run and a restored best model go through (checkpoint.restore_weights)."""
    from bertkit.checkpoint import restore_weights
    from bertkit.sentence import DenseSettings, SentenceEncoder, SentenceSettings

    torch.manual_seed(0)
    settings = SentenceSettings(dense=(DenseSettings(32, 8),))
    saved = SentenceEncoder(tiny_config(), settings)
    saved.save_pretrained(tmp_path / "ckpt")
    torch.manual_seed(1)
    other = SentenceEncoder(tiny_config(), settings)
    assert not torch.equal(other.dense[0].linear.weight, saved.dense[0].linear.weight)
    restore_weights(other, tmp_path / "ckpt")
    for (name, p), q in zip(saved.state_dict().items(), other.state_dict().values()):
        assert torch.equal(p, q), name
