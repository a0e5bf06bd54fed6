"""Nothing bertkit reads may run code.

For each kind of file bertkit loads (weights, config.json, the tokenizer's files, a prepared
corpus, a fine-tuned model's stored task settings) a payload is planted that creates a marker file
when unpickled, wherever a pickle could hide, and the load must be refused with a one-line
BertkitError (or the payload ignored) with the marker never appearing.

Each payload is first shown to work: loaded unsafely (pickle.loads, torch.load(weights_only=False),
np.load(allow_pickle=True)) it does create the marker. So a loader that unpickled would fail here.
(The trainer's own state, trainer.pt, is covered with the run directories.)
"""

from __future__ import annotations

import json
import os
import pathlib
import pickle
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from bertkit import BertModel, Tokenizer
from bertkit.cli import main
from bertkit.config import BertConfig
from bertkit.data.shards import ShardedCorpus, load_prepared, prepare
from bertkit.errors import BertkitError, CheckpointError, InputError
from tests.conftest import tiny_config

SPECIALS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]


class RunsAShellCommand:
    """Unpickling this runs `touch MARKER` in a shell."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


class TouchesAFile:
    """Unpickling this calls pathlib.Path.touch(MARKER): no shell involved."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (pathlib.Path.touch, (pathlib.Path(self.marker),))


@pytest.fixture
def marker(tmp_path) -> Path:
    path = tmp_path / "MARKER"
    yield path
    assert not path.exists(), "a payload ran"


def payloads(marker: Path) -> dict:
    return {"shell": RunsAShellCommand(marker), "touch": TouchesAFile(marker)}


def _proves_it_runs(load, marker: Path) -> None:
    """The planted file is a working exploit: an unsafe load creates the marker."""
    load()
    assert marker.exists(), "the payload did not run even when loaded unsafely"
    marker.unlink()


@pytest.fixture
def checkpoint(tmp_path) -> Path:
    """A tiny BERT with a 99-token vocabulary, in the standard layout."""
    torch.manual_seed(0)
    tokenizer = Tokenizer({t: i for i, t in enumerate(SPECIALS + [f"w{i}" for i in range(94)])})
    directory = tmp_path / "ckpt"
    BertModel(tiny_config()).save_pretrained(directory, tokenizer=tokenizer)
    return directory


def _refused(load, error=BertkitError, match=None) -> str:
    with pytest.raises(error, match=match) as e:
        load()
    assert "\n" not in str(e.value)
    return str(e.value)


# ---- weights ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("zipped", [True, False], ids=["zip", "legacy"])
def test_pytorch_bin_with_code_is_refused(checkpoint, marker, zipped):
    state = load_file(checkpoint / "model.safetensors")
    (checkpoint / "model.safetensors").unlink()
    path = checkpoint / "pytorch_model.bin"
    torch.save({**state, "exploit": payloads(marker)}, path, _use_new_zipfile_serialization=zipped)
    _proves_it_runs(lambda: torch.load(path, weights_only=False), marker)
    message = _refused(lambda: BertModel.from_pretrained(checkpoint), CheckpointError,
                       "pytorch_model.bin: cannot read weights, refused: the pickle holds objects other than tensors")
    assert "weights_only" not in message  # never advise the unsafe load


def test_a_plain_pickle_named_pytorch_bin_is_refused(checkpoint, marker):
    (checkpoint / "model.safetensors").unlink()
    path = checkpoint / "pytorch_model.bin"
    path.write_bytes(pickle.dumps(payloads(marker)))
    _proves_it_runs(lambda: pickle.loads(path.read_bytes()), marker)
    _refused(lambda: BertModel.from_pretrained(checkpoint), CheckpointError, "pytorch_model.bin: cannot read weights")


def test_a_sharded_bin_with_code_is_refused(checkpoint, marker):
    state = load_file(checkpoint / "model.safetensors")
    (checkpoint / "model.safetensors").unlink()
    torch.save(state, checkpoint / "pytorch_model-00001-of-00002.bin")
    torch.save({"exploit": payloads(marker)}, checkpoint / "pytorch_model-00002-of-00002.bin")
    weight_map = {k: "pytorch_model-00001-of-00002.bin" for k in state} | {"exploit": "pytorch_model-00002-of-00002.bin"}
    (checkpoint / "pytorch_model.bin.index.json").write_text(json.dumps({"weight_map": weight_map}))
    _refused(lambda: BertModel.from_pretrained(checkpoint), CheckpointError,
             "pytorch_model-00002-of-00002.bin: cannot read weights, refused")


def test_a_pickle_named_model_safetensors_is_refused(checkpoint, marker):
    path = checkpoint / "model.safetensors"
    path.write_bytes(pickle.dumps(payloads(marker)))
    _refused(lambda: BertModel.from_pretrained(checkpoint), CheckpointError, "model.safetensors: cannot read weights")


def test_a_pickle_in_safetensors_metadata_stays_a_string(checkpoint, marker):
    path = checkpoint / "model.safetensors"
    blob = pickle.dumps(payloads(marker)).hex()
    save_file(load_file(path), path, metadata={"format": "pt", "pickle": blob})
    BertModel.from_pretrained(checkpoint)


def test_the_cli_refuses_a_bin_with_code(checkpoint, marker, capsys):
    state = load_file(checkpoint / "model.safetensors")
    (checkpoint / "model.safetensors").unlink()
    torch.save({**state, "exploit": payloads(marker)}, checkpoint / "pytorch_model.bin")
    assert main(["info", "--model", str(checkpoint)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("bertkit: error: ") and err.count("\n") == 1 and "refused" in err


# ---- config.json ------------------------------------------------------------------------------------


def test_a_pickled_config_json_is_refused(checkpoint, marker):
    path = checkpoint / "config.json"
    path.write_bytes(pickle.dumps(payloads(marker)))
    _proves_it_runs(lambda: pickle.loads(path.read_bytes()), marker)
    _refused(lambda: BertConfig.load(checkpoint), CheckpointError, "config.json: not valid JSON")
    _refused(lambda: BertModel.from_pretrained(checkpoint), CheckpointError, "config.json: not valid JSON")


def test_code_shaped_config_entries_are_only_data(checkpoint, marker):
    """Keys other libraries act on (auto_map, trust_remote_code, a jsonpickle py/reduce) are kept as
    plain data; an architecture or activation naming a function is refused or falls back."""
    path = checkpoint / "config.json"
    config = json.loads(path.read_text())
    hostile = {
        "auto_map": {"AutoModel": "evil.EvilModel"},
        "trust_remote_code": True,
        "py/reduce": [{"py/function": "os.system"}, {"py/tuple": [f"touch {marker}"]}],
        "__reduce__": pickle.dumps(payloads(marker)).hex(),
    }
    path.write_text(json.dumps({**config, **hostile}))
    loaded = BertModel.from_pretrained(checkpoint)
    assert {k: loaded.config.extra[k] for k in hostile} == hostile
    path.write_text(json.dumps({**config, "hidden_act": "os.system"}))
    _refused(lambda: BertModel.from_pretrained(checkpoint), CheckpointError, 'hidden_act "os.system" is not supported')
    path.write_text(json.dumps({**config, "architectures": ["os.system"]}))
    assert main(["info", "--model", str(checkpoint)]) == 0  # an unknown architecture is read as the plain encoder


def test_task_settings_in_config_json_are_only_data(checkpoint, marker):
    """A fine-tuned model's stored task and reading options (config.json's "bertkit" entry)."""
    from bertkit.predict import load_finetuned

    path = checkpoint / "config.json"
    config = json.loads(path.read_text())
    config["architectures"] = ["BertForSequenceClassification"]
    config["id2label"] = {"0": "neg", "1": "pos"}
    config["bertkit"] = {"task": "__import__('os').system('touch MARKER')", "options": {}}
    path.write_text(json.dumps(config))
    _refused(lambda: load_finetuned(checkpoint), InputError, "unknown task")
    command = f"__import__('os').system('touch {marker}')"
    config["bertkit"] = {"task": "classify", "options": {"text_column": command, "label_separator": command,
                                                          "__class__": "os.system", "__reduce__": command,
                                                          "max_length": 32}}
    path.write_text(json.dumps(config))
    loaded = load_finetuned(checkpoint)
    assert loaded.task.options.text_column == command  # a column name, never evaluated


# ---- the tokenizer's files --------------------------------------------------------------------------


def test_a_pickled_vocab_txt_is_refused(checkpoint, marker):
    (checkpoint / "vocab.txt").write_bytes(pickle.dumps(payloads(marker)))
    _refused(lambda: Tokenizer.from_pretrained(checkpoint), CheckpointError, "vocab.txt")


def test_a_pickled_tokenizer_config_json_is_refused(checkpoint, marker):
    (checkpoint / "tokenizer_config.json").write_bytes(pickle.dumps(payloads(marker)))
    _refused(lambda: Tokenizer.from_pretrained(checkpoint), CheckpointError, "tokenizer_config.json")


def test_code_shaped_tokenizer_settings_are_ignored(checkpoint, marker):
    path = checkpoint / "tokenizer_config.json"
    settings = json.loads(path.read_text())
    settings.update({"auto_map": {"AutoTokenizer": ["evil.EvilTokenizer", None]}, "tokenizer_class": "os.system",
                     "trust_remote_code": True})
    path.write_text(json.dumps(settings))
    assert Tokenizer.from_pretrained(checkpoint).vocab_size == 99


def test_a_pickled_tokenizer_json_is_never_read(checkpoint, marker):
    """bertkit builds its engine from vocab.txt; tokenizer.json is written for other libraries only."""
    (checkpoint / "tokenizer.json").write_bytes(pickle.dumps(payloads(marker)))
    (checkpoint / "special_tokens_map.json").write_bytes(pickle.dumps(payloads(marker)))
    assert Tokenizer.from_pretrained(checkpoint).vocab_size == 99


# ---- a prepared corpus ------------------------------------------------------------------------------


@pytest.fixture
def corpus(tmp_path, checkpoint) -> Path:
    (tmp_path / "text.txt").write_text("w1 w2 w3\nw4 w5\n\nw6 w7\nw8\n")
    out = tmp_path / "prepared"
    prepare(tmp_path / "text.txt", Tokenizer.from_pretrained(checkpoint), out, valid_fraction=0, progress=False)
    load_prepared(out)  # as written, it loads
    return out


def _object_array(marker: Path) -> np.ndarray:
    array = np.empty(2, dtype=object)
    array[0], array[1] = RunsAShellCommand(marker), TouchesAFile(marker)
    return array


@pytest.mark.parametrize("name", ["tokens.npy", "word_starts.npy", "sentences.npy", "documents.npy"])
def test_an_object_array_in_a_shard_is_refused(corpus, marker, name):
    path = corpus / "train" / "shard-00000" / name
    np.save(path, _object_array(marker), allow_pickle=True)
    _proves_it_runs(lambda: np.load(path, allow_pickle=True), marker)
    _refused(lambda: load_prepared(corpus), InputError, f"{name}: not a readable .npy file")
    _refused(lambda: ShardedCorpus(corpus / "train"), InputError, f"{name}: not a readable .npy file")


def test_a_plain_pickle_named_npy_is_refused(corpus, marker):
    path = corpus / "train" / "shard-00000" / "tokens.npy"
    path.write_bytes(pickle.dumps(payloads(marker)))
    _proves_it_runs(lambda: np.load(path, allow_pickle=True), marker)
    _refused(lambda: load_prepared(corpus), InputError, "tokens.npy: not a readable .npy file")


def test_an_npz_with_an_object_array_under_a_npy_name_is_refused(corpus, marker):
    path = corpus / "train" / "shard-00000" / "tokens.npy"
    with open(path, "wb") as f:
        np.savez(f, tokens=_object_array(marker))
    _proves_it_runs(lambda: np.load(path, allow_pickle=True)["tokens"], marker)
    _refused(lambda: load_prepared(corpus), InputError, "tokens.npy: not a .npy array")


def test_a_pickled_meta_json_is_refused(corpus, marker):
    (corpus / "meta.json").write_bytes(pickle.dumps(payloads(marker)))
    _refused(lambda: load_prepared(corpus), InputError, "meta.json: not valid JSON")


def test_a_pickle_in_the_corpus_tokenizer_is_refused(corpus, marker):
    (corpus / "tokenizer" / "vocab.txt").write_bytes(pickle.dumps(payloads(marker)))
    _refused(lambda: load_prepared(corpus), CheckpointError, "vocab.txt")


def test_a_meta_json_pointing_outside_the_corpus_is_refused(corpus, checkpoint, marker):
    shutil.copytree(checkpoint, corpus.parent / "elsewhere")
    meta = json.loads((corpus / "meta.json").read_text())
    (corpus / "meta.json").write_text(json.dumps({**meta, "tokenizer": "../elsewhere", "token_dtype": "O"}))
    _refused(lambda: load_prepared(corpus), InputError, "meta.json: token_dtype 'O' is not uint16 or uint32")
