import json

import pytest

from bertkit import BertConfig, CheckpointError
from bertkit.config import PRESETS


def test_roundtrip_through_config_json(tmp_path):
    config = BertConfig.preset("mini", id2label={0: "neg", 1: "pos"}, problem_type="single_label_classification")
    config.save(tmp_path)
    again = BertConfig.load(tmp_path)
    assert again == config
    data = json.loads((tmp_path / "config.json").read_text())
    assert data["model_type"] == "bert"
    assert data["label2id"] == {"neg": 0, "pos": 1}
    assert data["id2label"] == {"0": "neg", "1": "pos"}


def test_unknown_keys_survive_a_roundtrip(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"hidden_size": 64, "num_attention_heads": 4, "torch_dtype": "float32"}))
    config = BertConfig.load(tmp_path)
    assert config.extra == {"torch_dtype": "float32"}
    assert config.to_dict()["torch_dtype"] == "float32"


@pytest.mark.parametrize("name", list(PRESETS))
def test_presets_have_the_published_shapes(name):
    layers, hidden = PRESETS[name]
    config = BertConfig.preset(name)
    assert (config.num_hidden_layers, config.hidden_size) == (layers, hidden)
    assert config.head_size == 64 and config.intermediate_size == 4 * hidden


def test_presets_match_the_paper_sizes():
    assert PRESETS["base"] == (12, 768) and PRESETS["large"] == (24, 1024) and PRESETS["tiny"] == (2, 128)


def test_transformers_reads_our_config(tmp_path):
    transformers = pytest.importorskip("transformers")
    BertConfig.preset("small", id2label={0: "a", 1: "b", 2: "c"}).save(tmp_path)
    ref = transformers.AutoConfig.from_pretrained(tmp_path)
    assert ref.model_type == "bert" and ref.hidden_size == 512 and ref.num_labels == 3
    assert ref.id2label == {0: "a", 1: "b", 2: "c"}


@pytest.mark.parametrize(
    "content, message",
    [
        ("{not json", "not valid JSON"),
        ('["a list"]', "expected a JSON object"),
        ('{"model_type": "gpt2"}', "not a BERT model"),
        ('{"hidden_size": 10, "num_attention_heads": 3}', "not a multiple"),
        ('{"position_embedding_type": "relative_key"}', "not supported"),
    ],
)
def test_bad_config_files_get_one_line_errors(tmp_path, content, message):
    (tmp_path / "config.json").write_text(content)
    with pytest.raises(CheckpointError, match=message) as e:
        BertConfig.load(tmp_path)
    assert "\n" not in str(e.value) and str(tmp_path) in str(e.value)


def test_missing_config(tmp_path):
    with pytest.raises(CheckpointError, match="no such file"):
        BertConfig.load(tmp_path)


def test_unknown_preset():
    with pytest.raises(CheckpointError, match="unknown preset"):
        BertConfig.preset("huge")
