"""BertConfig: BERT's hyper-parameters, the presets of the published sizes, and config.json I/O.

The field names are those of the standard config.json, so a checkpoint written by bertkit and one
written by other BERT implementations read the same way.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bertkit.errors import CheckpointError
from bertkit.fileio import write_text_atomically

CONFIG_NAME = "config.json"
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json")
SIZE_FIELDS = ("vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size")


@dataclass
class BertConfig:
    """Hyper-parameters of a BERT encoder (and of the task head it carries, if any)."""

    vocab_size: int = 30522
    """Number of WordPiece tokens in the vocabulary."""
    hidden_size: int = 768
    """Width C of every hidden state."""
    num_hidden_layers: int = 12
    """Number of Transformer encoder layers."""
    num_attention_heads: int = 12
    """Number of attention heads H; hidden_size must be a multiple of it."""
    intermediate_size: int = 3072
    """Width of the feed-forward inner layer (4 * hidden_size in the paper)."""
    hidden_act: str = "gelu"
    """Feed-forward activation: gelu (exact, erf), gelu_new/gelu_pytorch_tanh (tanh approximation), relu."""
    hidden_dropout_prob: float = 0.1
    """Dropout on embeddings and on every residual branch."""
    attention_probs_dropout_prob: float = 0.1
    """Dropout on the attention probabilities."""
    max_position_embeddings: int = 512
    """Longest sequence the learned position table covers."""
    type_vocab_size: int = 2
    """Number of segment (token type) ids: 2 for sentence A / sentence B."""
    layer_norm_eps: float = 1e-12
    """Epsilon of every LayerNorm."""
    initializer_range: float = 0.02
    """Standard deviation of the normal initialisation of weights."""
    pad_token_id: int = 0
    """Id of [PAD]; its embedding row starts at zero."""
    classifier_dropout: float | None = None
    """Dropout before a task head's classifier; None means hidden_dropout_prob."""
    problem_type: str | None = None
    """Sequence classification loss: single_label_classification, multi_label_classification or regression."""
    id2label: dict[int, str] = field(default_factory=dict)
    """Names of a task head's labels by index (empty when there is no labelled head)."""
    architectures: list[str] | None = None
    """Class names of the model saved with this config (written by save_pretrained)."""
    extra: dict[str, Any] = field(default_factory=dict, repr=False)
    """Keys of a read config.json that bertkit does not use, written back unchanged."""

    def __post_init__(self) -> None:
        validate(self)
        self.id2label = {int(k): str(v) for k, v in self.id2label.items()}

    @property
    def head_size(self) -> int:
        """Width D of one attention head."""
        return self.hidden_size // self.num_attention_heads

    @property
    def num_labels(self) -> int:
        """Number of outputs of a classification head (2 when no labels are named)."""
        return len(self.id2label) or 2

    @property
    def label2id(self) -> dict[str, int]:
        return {name: i for i, name in self.id2label.items()}

    def replace(self, **changes: Any) -> BertConfig:
        """A copy with some fields changed."""
        return dataclasses.replace(self, **changes)

    # ---- config.json -------------------------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = dict(self.extra)
        for f in dataclasses.fields(self):
            if f.name == "extra":
                continue
            out[f.name] = getattr(self, f.name)
        out["model_type"] = "bert"
        out["position_embedding_type"] = "absolute"
        if self.classifier_dropout is None:
            del out["classifier_dropout"]
        if self.problem_type is None:
            del out["problem_type"]
        if self.architectures is None:
            del out["architectures"]
        if self.id2label:
            out["id2label"] = {str(i): name for i, name in sorted(self.id2label.items())}
            out["label2id"] = self.label2id
        else:
            del out["id2label"]
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any], *, source: str = "config") -> BertConfig:
        known = {f.name for f in dataclasses.fields(cls)} - {"extra"}
        kwargs = {k: v for k, v in data.items() if k in known}
        ignored = {"label2id", "model_type", "position_embedding_type"}
        extra = {k: v for k, v in data.items() if k not in known and k not in ignored}
        if data.get("position_embedding_type", "absolute") != "absolute":
            raise CheckpointError(
                f"{source}: position_embedding_type={data['position_embedding_type']!r} is not supported "
                "(bertkit implements BERT's learned absolute positions)"
            )
        try:
            return cls(**kwargs, extra=extra)
        except (TypeError, ValueError) as e:
            raise CheckpointError(f"{source}: {e}") from None

    def save(self, directory: str | os.PathLike) -> Path:
        """Write config.json into `directory` atomically."""
        return write_text_atomically(Path(directory) / CONFIG_NAME,
                                     json.dumps(self.to_dict(), indent=2, sort_keys=True) + "\n")

    @classmethod
    def load(cls, path: str | os.PathLike) -> BertConfig:
        """Read a config.json file, or the config.json inside a checkpoint directory."""
        path = _config_path(Path(path))
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            raise CheckpointError(f"{path}: not valid JSON ({_one_line(e)})") from None
        except OSError as e:
            raise CheckpointError(f"{path}: cannot read ({e.strerror or e})") from None
        if not isinstance(data, dict):
            raise CheckpointError(f"{path}: expected a JSON object, got {_json_type(data)}")
        if data.get("model_type", "bert") != "bert":
            raise CheckpointError(f"{path}: model_type={data['model_type']!r} is not a BERT model")
        if not data.keys() & SIZE_FIELDS:  # e.g. tokenizer_config.json, or a weight index
            raise CheckpointError(f"{path}: not a BERT config (it sets none of {', '.join(SIZE_FIELDS)})")
        return cls.from_dict(data, source=str(path))

    @classmethod
    def preset(cls, name: str, **changes: Any) -> BertConfig:
        """A config of one of the published sizes: tiny, mini, small, medium, base, large."""
        if name not in PRESETS:
            raise CheckpointError(f"unknown preset {name!r}; choose one of {', '.join(PRESETS)}")
        layers, hidden = PRESETS[name]
        return cls(
            num_hidden_layers=layers,
            hidden_size=hidden,
            num_attention_heads=hidden // 64,
            intermediate_size=4 * hidden,
            **changes,
        )


# (layers, hidden) of the published BERT sizes; heads = hidden / 64 and the feed-forward is 4x hidden,
# as in the 24 smaller BERT models of Turc et al. 2019 ("Well-Read Students Learn Better").
PRESETS: dict[str, tuple[int, int]] = {
    "tiny": (2, 128),
    "mini": (4, 256),
    "small": (4, 512),
    "medium": (8, 512),
    "base": (12, 768),
    "large": (24, 1024),
}


# ---- finding config.json ---------------------------------------------------------------------------


def _config_path(path: Path) -> Path:
    """The config.json that `path` (a checkpoint directory or a config file) stands for."""
    if path.is_dir():
        config = path / CONFIG_NAME
        if config.is_dir():
            raise CheckpointError(f"{config}: is a directory, expected the checkpoint's JSON config file")
        if not config.exists():
            raise CheckpointError(f"{config}: no such file (a BERT checkpoint directory needs a config.json)")
        return config
    if not path.exists():
        raise CheckpointError(f"{path}: no such file or directory")
    if _is_another_checkpoint_file(path):
        raise CheckpointError(f"{path} is a file; --model takes the checkpoint folder ({path.parent})")
    return path


def _is_another_checkpoint_file(path: Path) -> bool:
    """Weights, vocab.txt, a weight index...: a file of a checkpoint folder that is not a config.
    (Another .json beside config.json may be a config of its own, e.g. for pretrain --config.)"""
    if path.name == CONFIG_NAME or not (path.parent / CONFIG_NAME).is_file():
        return False
    return path.suffix != ".json" or path.name.endswith(".index.json") or path.name in TOKENIZER_FILES


def _one_line(e: Exception) -> str:
    lines = str(e).strip().splitlines()
    return lines[0] if lines else type(e).__name__


# ---- validation -----------------------------------------------------------------------------------

# Sizes that must be whole numbers of at least 1 (an empty layer or a 0-wide table is no model).
POSITIVE_INTS = ("vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size",
                 "max_position_embeddings", "type_vocab_size")
PROBABILITIES = ("hidden_dropout_prob", "attention_probs_dropout_prob")
PROBLEM_TYPES = ("single_label_classification", "multi_label_classification", "regression")


# The hidden_act values the encoder implements. The names live here, so that a config is checked
# without importing the model; model.ACTIVATIONS maps each name to its function (tests/test_model.py
# checks that the two agree).
ACTIVATION_NAMES = ("gelu", "gelu_new", "gelu_pytorch_tanh", "gelu_fast", "relu", "silu", "swish")


def supported_activations() -> list[str]:
    """The hidden_act values the encoder implements."""
    return list(ACTIVATION_NAMES)


def validate(config: BertConfig) -> None:
    """Raise CheckpointError naming the first field that no BERT could be built from."""
    for name in POSITIVE_INTS:
        _check_int(name, getattr(config, name), minimum=1)
    _check_pad(config.pad_token_id, config.vocab_size)
    if config.hidden_size % config.num_attention_heads:
        raise CheckpointError(
            f"hidden_size={config.hidden_size} is not a multiple of num_attention_heads={config.num_attention_heads}"
        )
    _check_activation(config.hidden_act)
    for name in PROBABILITIES:
        _check_probability(name, getattr(config, name))
    if config.classifier_dropout is not None:
        _check_probability("classifier_dropout", config.classifier_dropout)
    _check_number("layer_norm_eps", config.layer_norm_eps, positive=True)
    _check_number("initializer_range", config.initializer_range, positive=False)
    _check_problem_type(config.problem_type)
    _check_id2label(config.id2label)
    _check_architectures(config.architectures)


def _show(value: Any) -> str:
    """A value as it would appear in config.json."""
    try:
        return json.dumps(value)
    except (TypeError, ValueError):
        return repr(value)


def _json_type(value: Any) -> str:
    names = {dict: "an object", list: "a list", str: "a string", bool: "true/false", type(None): "null",
             int: "a number", float: "a number"}
    return names.get(type(value), type(value).__name__)


def _if_string(value: Any) -> str:
    return " (a string)" if isinstance(value, str) else ""


def _check_int(name: str, value: Any, *, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise CheckpointError(f"{name} must be a whole number, got {_show(value)}{_if_string(value)}")
    if value < minimum:
        raise CheckpointError(f"{name} must be at least {minimum}, got {value}")


def _check_pad(pad: Any, vocab_size: int) -> None:
    if pad is None:
        return
    _check_int("pad_token_id", pad, minimum=0)
    if pad >= vocab_size:
        raise CheckpointError(f"pad_token_id={pad} is outside the vocabulary (vocab_size={vocab_size})")


def _check_activation(name: Any) -> None:
    supported = supported_activations()
    if name not in supported:
        raise CheckpointError(f"hidden_act {_show(name)} is not supported; choose one of {', '.join(supported)}")


def _check_number(name: str, value: Any, *, positive: bool) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise CheckpointError(f"{name} must be a number, got {_show(value)}{_if_string(value)}")
    if value < 0 or (positive and value == 0):
        raise CheckpointError(f"{name} must be {'above' if positive else 'at least'} 0, got {value}")
    return value


def _check_probability(name: str, value: Any) -> None:
    if _check_number(name, value, positive=False) >= 1:
        raise CheckpointError(f"{name} must be a probability in [0, 1), got {value}")


def _check_problem_type(value: Any) -> None:
    if value is not None and value not in PROBLEM_TYPES:
        raise CheckpointError(f"problem_type {_show(value)} is not one of {', '.join(PROBLEM_TYPES)}")


def _check_id2label(id2label: Any) -> None:
    if not isinstance(id2label, dict):
        raise CheckpointError(f"id2label must be an object of label ids to names, got {_json_type(id2label)}")
    ids = []
    for key in id2label:
        if isinstance(key, bool) or not (isinstance(key, int) or (isinstance(key, str) and key.isdecimal())):
            raise CheckpointError(f"id2label key {_show(key)} is not a label id (0, 1, ...)")
        ids.append(int(key))
    if sorted(ids) != list(range(len(ids))):
        raise CheckpointError(f"id2label ids must be 0..{len(ids) - 1}, each once; got {sorted(ids)}")


def _check_architectures(value: Any) -> None:
    if value is not None and (not isinstance(value, list) or not all(isinstance(v, str) for v in value)):
        raise CheckpointError(f"architectures must be a list of class names, got {_show(value)}")
