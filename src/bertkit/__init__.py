"""bertkit: BERT end to end — WordPiece vocabularies, the encoder, checkpoints, embeddings."""

from bertkit.config import BertConfig
from bertkit.errors import BertkitError, CheckpointError, InputError
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

__version__ = "0.1.0"

__all__ = [
    "BertConfig",
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
