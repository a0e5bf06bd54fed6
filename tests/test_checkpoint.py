"""Loading every flavour of BERT checkpoint, and clear errors for broken ones."""

import json
import logging

import pytest
import torch
from safetensors.torch import load_file, save_file

from bertkit import BertForPreTraining, BertForSequenceClassification, BertModel, CheckpointError
from bertkit.checkpoint import from_standard, to_standard
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
        (lambda d: (d / "f.txt").write_text("x") and d / "f.txt", "not a directory"),
    ],
)
def test_paths_that_are_not_checkpoints(tmp_path, make, message):
    with pytest.raises(CheckpointError, match=message):
        BertModel.from_pretrained(make(tmp_path))


def test_config_without_weights(tmp_path):
    tiny_config().save(tmp_path)
    with pytest.raises(CheckpointError, match="no weights found"):
        BertModel.from_pretrained(tmp_path)


def test_save_is_atomic_and_leaves_no_temporary_files(saved):
    directory, model = saved
    model.save_pretrained(directory)  # over an existing checkpoint
    assert not [p for p in directory.iterdir() if "tmp" in p.name]
    _same(BertModel.from_pretrained(directory).eval(), model)
