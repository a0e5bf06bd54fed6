"""Loading every flavour of BERT checkpoint, and clear errors for broken ones."""

import json
import logging
import os

import pytest
import torch
from safetensors.torch import load_file, save_file

from bertkit import BertForPreTraining, BertForSequenceClassification, BertModel, CheckpointError, Tokenizer
from bertkit.checkpoint import check_vocab_fits, from_standard, to_standard
from tests.conftest import random_batch, tiny_config


@pytest.fixture
def saved(tmp_path):
    """A bertkit BertModel saved in the standard layout, and the model itself."""
    torch.manual_seed(0)
    model = BertModel(tiny_config()).eval()
    model.save_pretrained(tmp_path / "ckpt")
    return tmp_path / "ckpt", model


def _same(a, b):
    batch = random_batch(a.config)
    with torch.no_grad():
        torch.testing.assert_close(a(**batch).last_hidden_state, b(**batch).last_hidden_state, atol=0, rtol=0)


def test_key_map_roundtrip_is_exact():
    state = BertForPreTraining(tiny_config()).state_dict()
    standard = to_standard(state)
    assert "bert.encoder.layer.1.attention.self.value.bias" in standard
    assert "cls.predictions.transform.LayerNorm.weight" in standard
    encoder, head, unknown = from_standard(standard)
    assert unknown == []
    back = {"bert." + k: v for k, v in encoder.items()} | head
    assert back.keys() == state.keys()
    assert all(torch.equal(back[k], state[k]) for k in state)


def test_saved_layout(saved):
    directory, _ = saved
    assert sorted(p.name for p in directory.iterdir()) == ["config.json", "model.safetensors"]
    assert json.loads((directory / "config.json").read_text())["architectures"] == ["BertModel"]
    assert "embeddings.word_embeddings.weight" in load_file(directory / "model.safetensors")


def test_bert_prefix_gamma_beta_and_pytorch_bin(saved, tmp_path):
    directory, model = saved
    state = load_file(directory / "model.safetensors")
    old = {}
    for k, v in state.items():  # an old TF-converted checkpoint: `bert.` prefix, gamma/beta names
        k = "bert." + k.replace("LayerNorm.weight", "LayerNorm.gamma").replace("LayerNorm.bias", "LayerNorm.beta")
        old[k] = v
    old["bert.embeddings.position_ids"] = torch.arange(64)[None]
    flavour = tmp_path / "old"
    flavour.mkdir()
    (flavour / "config.json").write_text((directory / "config.json").read_text())
    torch.save(old, flavour / "pytorch_model.bin")
    loaded = BertModel.from_pretrained(flavour).eval()
    assert loaded.load_report.missing == [] and loaded.load_report.unexpected == []
    _same(loaded, model)


def test_sharded_safetensors(saved, tmp_path):
    directory, model = saved
    state = load_file(directory / "model.safetensors")
    keys = sorted(state)
    sharded = tmp_path / "sharded"
    sharded.mkdir()
    (sharded / "config.json").write_text((directory / "config.json").read_text())
    halves = {"a.safetensors": keys[: len(keys) // 2], "b.safetensors": keys[len(keys) // 2 :]}
    for name, ks in halves.items():
        save_file({k: state[k] for k in ks}, sharded / name)
    index = {"weight_map": {k: name for name, ks in halves.items() for k in ks}}
    (sharded / "model.safetensors.index.json").write_text(json.dumps(index))
    _same(BertModel.from_pretrained(sharded).eval(), model)


def test_encoder_checkpoint_into_a_head_lists_what_was_initialised(saved, caplog):
    directory, model = saved
    with caplog.at_level(logging.WARNING, logger="bertkit"):
        clf = BertForSequenceClassification.from_pretrained(directory, id2label={0: "neg", 1: "pos"})
    assert sorted(clf.load_report.missing) == ["classifier.bias", "classifier.weight"]
    assert "classifier.weight" in caplog.text
    torch.testing.assert_close(clf.bert.embeddings.word.weight, model.embeddings.word.weight)


def test_head_checkpoint_into_the_encoder_lists_unused_weights(tmp_path):
    BertForPreTraining(tiny_config()).save_pretrained(tmp_path)
    encoder = BertModel.from_pretrained(tmp_path)
    assert encoder.load_report.missing == []
    assert "mlm.bias" in encoder.load_report.unexpected and "nsp.weight" in encoder.load_report.unexpected


def test_pickle_that_runs_code_is_refused(saved, tmp_path):
    directory, _ = saved
    evil = tmp_path / "evil"
    evil.mkdir()
    (evil / "config.json").write_text((directory / "config.json").read_text())
    marker = tmp_path / "pwned"

    class Exploit:
        def __reduce__(self):
            import os

            return (os.system, (f"touch {marker}",))

    torch.save({"x": Exploit()}, evil / "pytorch_model.bin")
    with pytest.raises(CheckpointError, match="pytorch_model.bin: cannot read weights"):
        BertModel.from_pretrained(evil)
    assert not marker.exists()


def test_truncated_file(saved):
    directory, _ = saved
    path = directory / "model.safetensors"
    path.write_bytes(path.read_bytes()[:1000])
    with pytest.raises(CheckpointError, match="model.safetensors: cannot read weights") as e:
        BertModel.from_pretrained(directory)
    assert "\n" not in str(e.value)


def test_vocab_size_not_matching_config(saved):
    directory, _ = saved
    config = json.loads((directory / "config.json").read_text())
    config["vocab_size"] = 120
    (directory / "config.json").write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match="99 rows but config.json says vocab_size=120"):
        BertModel.from_pretrained(directory)


def test_wrong_shapes(saved):
    directory, _ = saved
    config = json.loads((directory / "config.json").read_text())
    config["intermediate_size"] = 40
    (directory / "config.json").write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match=r"encoder.layer.0.intermediate.dense.(weight|bias) has shape \(37"):
        BertModel.from_pretrained(directory)


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda d: d / "nope", "no such file or directory"),
        (lambda d: d, "not a BERT checkpoint directory"),
        (lambda d: (d / "f.txt").write_text("x") and d / "f.txt", "f.txt is a file; --model takes the checkpoint folder"),
    ],
)
def test_paths_that_are_not_checkpoints(tmp_path, make, message):
    with pytest.raises(CheckpointError, match=message):
        BertModel.from_pretrained(make(tmp_path))


def test_config_without_weights(tmp_path):
    tiny_config().save(tmp_path)
    with pytest.raises(CheckpointError, match="no weights found"):
        BertModel.from_pretrained(tmp_path)


def _one_line_error(directory, match):
    with pytest.raises(CheckpointError, match=match) as e:
        BertModel.from_pretrained(directory)
    assert "\n" not in str(e.value)
    return str(e.value)


def test_vocab_larger_than_the_embedding_table(saved, minilm_dir):
    directory, _ = saved  # vocab_size=99
    (directory / "vocab.txt").write_text((minilm_dir / "vocab.txt").read_text(encoding="utf-8"), encoding="utf-8")
    message = _one_line_error(directory, "vocab.txt: the vocabulary has 30522 tokens but config.json says vocab_size=99")
    assert "ids 99..30521 have no embedding" in message
    (directory / "vocab.txt").write_text("".join(f"t{i}\n" for i in range(99)))  # exactly as many: fine
    BertModel.from_pretrained(directory)


def test_check_vocab_fits_takes_a_tokenizer(minilm_dir):
    tokenizer = Tokenizer.from_pretrained(minilm_dir)
    check_vocab_fits(tiny_config(vocab_size=30522), tokenizer, minilm_dir)
    check_vocab_fits(tiny_config(vocab_size=30528), tokenizer, minilm_dir)  # padded tables are common
    with pytest.raises(CheckpointError, match=r"30522 tokens but config.json says vocab_size=30000"):
        check_vocab_fits(tiny_config(vocab_size=30000), tokenizer, minilm_dir)


@pytest.mark.parametrize("name", ["model.safetensors", "config.json", "vocab.txt"])
def test_a_file_of_the_checkpoint_instead_of_its_folder(saved, name):
    directory, _ = saved
    (directory / "vocab.txt").write_text("[PAD]\n[UNK]\n[CLS]\n[SEP]\n[MASK]\n")
    message = _one_line_error(directory / name, "is a file; --model takes the checkpoint folder")
    assert message == f"{directory / name} is a file; --model takes the checkpoint folder ({directory})"


def test_a_folder_where_a_file_belongs_is_a_directory(saved, tmp_path):
    directory, _ = saved
    (directory / "model.safetensors").unlink()
    (directory / "model.safetensors").mkdir()
    _one_line_error(directory, "model.safetensors: is a directory, expected a weights file")
    (tmp_path / "c").mkdir()
    (tmp_path / "c" / "config.json").mkdir()
    _one_line_error(tmp_path / "c", "config.json: is a directory")


@pytest.mark.parametrize("name", ["model.safetensors", "pytorch_model.bin"])
def test_empty_weights_file(saved, name):
    directory, _ = saved
    (directory / "model.safetensors").unlink()
    (directory / name).write_bytes(b"")
    _one_line_error(directory, rf"{name}: empty weights file \(0 bytes")


def test_truncated_and_garbage_pytorch_bin(saved):
    directory, _ = saved
    state = load_file(directory / "model.safetensors")
    (directory / "model.safetensors").unlink()
    torch.save(state, directory / "pytorch_model.bin")
    data = (directory / "pytorch_model.bin").read_bytes()
    (directory / "pytorch_model.bin").write_bytes(data[: len(data) // 2])
    _one_line_error(directory, "pytorch_model.bin: cannot read weights, the file is truncated or corrupt")
    (directory / "pytorch_model.bin").write_bytes(b"\x00not a pickle at all" * 10)
    _one_line_error(directory, "pytorch_model.bin: cannot read weights")


def test_garbage_safetensors(saved):
    directory, _ = saved
    (directory / "model.safetensors").write_bytes(b"PK\x03\x04" + bytes(2000))
    _one_line_error(directory, "model.safetensors: cannot read weights, the file is truncated or corrupt")


def test_wrong_tensor_shapes_in_the_file(saved):
    directory, _ = saved
    state = load_file(directory / "model.safetensors")
    state["encoder.layer.1.output.dense.weight"] = torch.zeros(32, 36)  # config: intermediate_size 37
    save_file(state, directory / "model.safetensors")
    _one_line_error(directory, r"encoder.layer.1.output.dense.weight has shape \(32, 36\) but config.json implies \(32, 37\)")


@pytest.mark.parametrize(
    "weight_map, message",
    [
        ({"x": "/etc/passwd"}, "'/etc/passwd' is not a weight file in the checkpoint folder"),
        ({"x": "../other/model.safetensors"}, "is not a weight file in the checkpoint folder"),
        ({"x": "model.safetensors.index.json"}, "is not a weight file in the checkpoint folder"),  # itself: no loop
        (["a.safetensors"], "not a weight index"),
        ({"x": 3}, "not a weight index"),
    ],
)
def test_bad_weight_index(tmp_path, weight_map, message):
    tiny_config().save(tmp_path)
    (tmp_path / "model.safetensors.index.json").write_text(json.dumps({"weight_map": weight_map}))
    _one_line_error(tmp_path, message)


# ---- saving atomically ------------------------------------------------------------------------------


def _files(directory):
    return {p.name: p.read_bytes() for p in directory.iterdir()}


def _other_model():
    torch.manual_seed(1)
    return BertModel(tiny_config()).eval()


def test_save_over_a_checkpoint_leaves_no_temporary_files(saved):
    directory, model = saved
    model.save_pretrained(directory)  # over an existing checkpoint
    assert sorted(p.name for p in directory.iterdir()) == ["config.json", "model.safetensors"]
    _same(BertModel.from_pretrained(directory).eval(), model)


def test_weights_get_the_same_permissions_as_the_other_files(saved):
    directory, _ = saved
    mode = (directory / "config.json").stat().st_mode & 0o777
    assert (directory / "model.safetensors").stat().st_mode & 0o777 == mode


def test_a_save_that_dies_midway_leaves_the_previous_checkpoint(saved, monkeypatch):
    directory, model = saved
    before = _files(directory)
    import safetensors.torch

    real_save = safetensors.torch.save_file

    def dies_halfway(state, filename, metadata=None):  # writes part of the file, then the disk is full
        real_save(state, filename, metadata=metadata)
        with open(filename, "r+b") as f:
            f.truncate(os.path.getsize(filename) // 2)
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(safetensors.torch, "save_file", dies_halfway)
    with pytest.raises(OSError, match="No space left"):
        _other_model().save_pretrained(directory)
    monkeypatch.undo()
    assert _files(directory) == before  # byte for byte, and nothing else beside them
    _same(BertModel.from_pretrained(directory).eval(), model)


def test_a_save_that_dies_at_the_rename_leaves_the_previous_checkpoint(saved, monkeypatch):
    directory, model = saved
    before = _files(directory)

    def no_rename(src, dst):
        raise OSError(5, "Input/output error")

    monkeypatch.setattr(os, "replace", no_rename)
    with pytest.raises(OSError, match="Input/output error"):
        _other_model().save_pretrained(directory)
    monkeypatch.undo()
    assert _files(directory) == before
    _same(BertModel.from_pretrained(directory).eval(), model)


def test_a_killed_save_leaves_nothing_that_passes_for_weights(saved, tmp_path):
    """A process killed mid-write cannot clean up: its temporary file stays, and is never read."""
    directory, model = saved
    partial = (directory / "model.safetensors").read_bytes()[:500]
    (directory / ".tmp-model.safetensors-999-abcdef12").write_bytes(partial)  # what save_pretrained writes into
    _same(BertModel.from_pretrained(directory).eval(), model)
    first = tmp_path / "first"  # a first save killed before its rename: no weights at all, not broken ones
    first.mkdir()
    tiny_config().save(first)
    (first / ".tmp-model.safetensors-999-abcdef12").write_bytes(partial)
    _one_line_error(first, "no weights found")


def test_any_module_with_a_config_loads_and_saves(saved, tmp_path):
    """checkpoint.py never imports model.py: it takes any nn.Module with a config and an architecture."""
    from bertkit import checkpoint

    class Wrapped(torch.nn.Module):  # not a model.Pretrained
        architecture = "BertModel"

        def __init__(self, config):
            super().__init__()
            self.config = config
            self.bert = BertModel(config)

    directory, model = saved
    wrapped = checkpoint.load_pretrained(Wrapped, directory)
    assert isinstance(wrapped, Wrapped) and wrapped.load_report.missing == [] == wrapped.load_report.unexpected
    _same(model, wrapped.bert.eval())
    checkpoint.save_pretrained(wrapped, tmp_path / "again")
    assert json.loads((tmp_path / "again" / "config.json").read_text())["architectures"] == ["BertModel"]
    _same(model, BertModel.from_pretrained(tmp_path / "again").eval())
