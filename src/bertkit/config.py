"""BertConfig: BERT's hyper-parameters, the presets of the published sizes, and config.json I/O.

The field names are those of the standard config.json, so a checkpoint written by bertkit and one
written by other BERT implementations read the same way.
"""

from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bertkit.errors import CheckpointError
from bertkit.fileio import write_text_atomically

CONFIG_NAME = "config.json"


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
        if self.hidden_size % self.num_attention_heads:
            raise CheckpointError(
                f"hidden_size={self.hidden_size} is not a multiple of "
                f"num_attention_heads={self.num_attention_heads}"
            )
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
        path = Path(path)
        if path.is_dir():
            path = path / CONFIG_NAME
        if not path.exists():
            raise CheckpointError(f"{path}: no such file (a BERT checkpoint directory needs a config.json)")
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            raise CheckpointError(f"{path}: not valid JSON ({e})") from None
        if not isinstance(data, dict):
            raise CheckpointError(f"{path}: expected a JSON object")
        if data.get("model_type", "bert") != "bert":
            raise CheckpointError(f"{path}: model_type={data['model_type']!r} is not a BERT model")
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
