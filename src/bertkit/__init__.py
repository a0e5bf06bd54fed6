"""bertkit: BERT end to end — WordPiece vocabularies, the encoder, checkpoints, sentence embeddings.

The names that need torch are imported on first use (PEP 562), so that `import bertkit.cli` —
and with it `bertkit --help` — does not pay for importing torch.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

from bertkit.config import BertConfig
from bertkit.errors import BertkitError, CheckpointError, InputError
from bertkit.pipeline import pipeline  # at once: a later first import of the module would shadow the function

if TYPE_CHECKING:
    from bertkit.embedding import Embedder, embed
    from bertkit.heads import (
        BertForMaskedLM,
        BertForMultipleChoice,
        BertForNextSentencePrediction,
        BertForPreTraining,
        BertForQuestionAnswering,
        BertForSequenceClassification,
        BertForTokenClassification,
    )
    from bertkit.model import BertModel
    from bertkit.tokenizer import Tokenizer

__version__ = "0.1.0"

_LAZY = {
    "Embedder": "bertkit.embedding",
    "embed": "bertkit.embedding",
    "BertForMaskedLM": "bertkit.heads",
    "BertForMultipleChoice": "bertkit.heads",
    "BertForNextSentencePrediction": "bertkit.heads",
    "BertForPreTraining": "bertkit.heads",
    "BertForQuestionAnswering": "bertkit.heads",
    "BertForSequenceClassification": "bertkit.heads",
    "BertForTokenClassification": "bertkit.heads",
    "BertModel": "bertkit.model",
    "Tokenizer": "bertkit.tokenizer",
    "VectorIndex": "bertkit.vector_index",
    "build_index": "bertkit.vector_index",
    "search": "bertkit.vector_index",
    "token_vectors": "bertkit.inside",
}


def __getattr__(name: str):
    if name not in _LAZY:
        raise AttributeError(f"module 'bertkit' has no attribute {name!r}")
    value = getattr(importlib.import_module(_LAZY[name]), name)
    globals()[name] = value  # once imported, a plain attribute
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))


__all__ = [
    "BertConfig",
    "Embedder",
    "Tokenizer",
    "embed",
    "pipeline",
    "BertModel",
    "BertForMaskedLM",
    "BertForMultipleChoice",
    "BertForNextSentencePrediction",
    "BertForPreTraining",
    "BertForQuestionAnswering",
    "BertForSequenceClassification",
    "BertForTokenClassification",
    "BertkitError",
    "CheckpointError",
    "InputError",
]
