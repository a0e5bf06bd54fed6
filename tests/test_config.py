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


# The published BERT sizes (Devlin et al. 2018 for base/large; Turc et al. 2019, "Well-Read Students
# Learn Better", for the smaller ones), written out by hand: layers, hidden, heads, feed-forward.
PUBLISHED = {
    "tiny": (2, 128, 2, 512),
    "mini": (4, 256, 4, 1024),
    "small": (4, 512, 8, 2048),
    "medium": (8, 512, 8, 2048),
    "base": (12, 768, 12, 3072),
    "large": (24, 1024, 16, 4096),
}


@pytest.mark.parametrize("name", list(PUBLISHED))
def test_presets_have_the_published_sizes(name):
    config = BertConfig.preset(name)
    got = (config.num_hidden_layers, config.hidden_size, config.num_attention_heads, config.intermediate_size)
    assert got == PUBLISHED[name]


def test_every_preset_is_a_published_size():
    assert sorted(PRESETS) == sorted(PUBLISHED)


def test_base_has_bert_base_parameter_count():
    """bert-base-uncased has 109,482,240 parameters with its pooler (the paper rounds to 110M)."""
    from bertkit import BertModel
    from bertkit.model import num_parameters

    assert num_parameters(BertModel(BertConfig.preset("base"))) == 109_482_240


def test_transformers_reads_our_config(tmp_path):
    transformers = pytest.importorskip("transformers")
    BertConfig.preset("small", id2label={0: "a", 1: "b", 2: "c"}).save(tmp_path)
    ref = transformers.AutoConfig.from_pretrained(tmp_path)
    assert ref.model_type == "bert" and ref.hidden_size == 512 and ref.num_labels == 3
    assert ref.id2label == {0: "a", 1: "b", 2: "c"}


SUPPORTED_ACTS = "gelu, gelu_new, gelu_pytorch_tanh, gelu_fast, relu, silu, swish"


@pytest.mark.parametrize(
    "content, message",
    [
        ("{not json", "not valid JSON"),
        ('["a list"]', "expected a JSON object, got a list"),
        ('"a string"', "expected a JSON object, got a string"),
        ("null", "expected a JSON object, got null"),
        ('{"model_type": "gpt2"}', "not a BERT model"),
        ('{"do_lower_case": true, "model_max_length": 512}', "not a BERT config .it sets none of vocab_size, hidden_size"),
        ('{"weight_map": {"a": "model-1.safetensors"}}', "not a BERT config"),
        ({"hidden_size": 10, "num_attention_heads": 3}, "hidden_size=10 is not a multiple of num_attention_heads=3"),
        ({"position_embedding_type": "relative_key"}, "not supported"),
        ({"hidden_act": "mish"}, f'hidden_act "mish" is not supported; choose one of {SUPPORTED_ACTS}$'),
        ({"hidden_act": 3}, "hidden_act 3 is not supported"),
        ({"hidden_size": "768"}, r'hidden_size must be a whole number, got "768" \(a string\)$'),
        ({"num_hidden_layers": 2.5}, "num_hidden_layers must be a whole number, got 2.5$"),
        ({"num_hidden_layers": True}, "num_hidden_layers must be a whole number, got true$"),
        ({"vocab_size": None}, "vocab_size must be a whole number, got null$"),
        ({"num_hidden_layers": 0}, "num_hidden_layers must be at least 1, got 0$"),
        ({"intermediate_size": -4}, "intermediate_size must be at least 1, got -4$"),
        ({"hidden_size": 0}, "hidden_size must be at least 1, got 0$"),
        ({"num_attention_heads": 0}, "num_attention_heads must be at least 1, got 0$"),
        ({"max_position_embeddings": -1}, "max_position_embeddings must be at least 1"),
        ({"type_vocab_size": 0}, "type_vocab_size must be at least 1"),
        ({"vocab_size": 0}, "vocab_size must be at least 1"),
        ({"pad_token_id": 30522}, r"pad_token_id=30522 is outside the vocabulary \(vocab_size=30522\)"),
        ({"pad_token_id": -1}, "pad_token_id must be at least 0"),
        ({"hidden_dropout_prob": "0.1"}, r'hidden_dropout_prob must be a number, got "0.1" \(a string\)'),
        ({"attention_probs_dropout_prob": 1.5}, r"attention_probs_dropout_prob must be a probability in \[0, 1\)"),
        ({"attention_probs_dropout_prob": float("nan")}, "attention_probs_dropout_prob must be a number, got NaN"),
        ({"classifier_dropout": -0.1}, "classifier_dropout must be at least 0"),
        ({"layer_norm_eps": 0}, "layer_norm_eps must be above 0, got 0"),
        ({"initializer_range": "small"}, "initializer_range must be a number"),
        ({"problem_type": "ranking"}, 'problem_type "ranking" is not one of single_label_classification'),
        ({"id2label": ["neg", "pos"]}, "id2label must be an object of label ids to names, got a list"),
        ({"id2label": {"neg": "0"}}, 'id2label key "neg" is not a label id'),
        ({"id2label": {"0": "a", "2": "b"}}, r"id2label ids must be 0..1, each once; got \[0, 2\]"),
        ({"architectures": "BertModel"}, 'architectures must be a list of class names, got "BertModel"'),
    ],
)
def test_bad_config_files_get_one_line_errors(tmp_path, content, message):
    """`content`: the file's text, or changes to a valid config (bert-base's) to write as JSON."""
    if isinstance(content, dict):
        content = json.dumps({**BertConfig().to_dict(), **content})
    (tmp_path / "config.json").write_text(content)
    with pytest.raises(CheckpointError, match=message) as e:
        BertConfig.load(tmp_path)
    assert "\n" not in str(e.value) and str(e.value).startswith(f"{tmp_path / 'config.json'}: ")


def test_every_supported_activation_builds_a_model():
    from bertkit import BertModel
    from bertkit.config import supported_activations

    assert ", ".join(supported_activations()) == SUPPORTED_ACTS
    for act in supported_activations():
        BertModel(BertConfig(vocab_size=10, hidden_size=8, num_hidden_layers=1, num_attention_heads=2,
                             intermediate_size=16, hidden_act=act))


def test_a_config_json_that_is_a_directory(tmp_path):
    (tmp_path / "config.json").mkdir()
    with pytest.raises(CheckpointError, match=r"config.json: is a directory"):
        BertConfig.load(tmp_path)


def test_another_file_of_a_checkpoint_is_not_its_config(tmp_path):
    BertConfig.preset("tiny").save(tmp_path)
    (tmp_path / "model.safetensors").write_bytes(b"\x90binary")
    with pytest.raises(CheckpointError) as e:
        BertConfig.load(tmp_path / "model.safetensors")
    assert str(e.value) == f"{tmp_path / 'model.safetensors'} is a file; --model takes the checkpoint folder ({tmp_path})"
    assert BertConfig.load(tmp_path / "config.json") == BertConfig.load(tmp_path)  # the file itself is fine


@pytest.mark.parametrize("name", ["model.safetensors.index.json", "tokenizer_config.json", "vocab.txt"])
def test_other_checkpoint_files_are_not_configs(tmp_path, name):
    BertConfig.preset("tiny").save(tmp_path)
    (tmp_path / name).write_text('{"weight_map": {}}')
    with pytest.raises(CheckpointError, match=r"is a file; --model takes the checkpoint folder"):
        BertConfig.load(tmp_path / name)


def test_another_json_beside_config_json_may_be_a_config(tmp_path):
    """pretrain --config takes a config file; it may sit in a checkpoint folder."""
    BertConfig.preset("tiny").save(tmp_path)
    BertConfig.preset("mini").save(tmp_path / "sub")
    (tmp_path / "sub" / "config.json").rename(tmp_path / "mini.json")
    assert BertConfig.load(tmp_path / "mini.json") == BertConfig.preset("mini")


def test_replace_is_checked_too():
    with pytest.raises(CheckpointError, match="num_attention_heads must be at least 1"):
        BertConfig.preset("tiny").replace(num_attention_heads=0)


def test_missing_config(tmp_path):
    with pytest.raises(CheckpointError, match="no such file"):
        BertConfig.load(tmp_path)


def test_unknown_preset():
    with pytest.raises(CheckpointError, match="unknown preset"):
        BertConfig.preset("huge")
