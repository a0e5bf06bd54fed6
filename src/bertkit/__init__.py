"""bertkit: BERT end to end — WordPiece vocabularies, the encoder, checkpoints, sentence embeddings."""

from bertkit.config import BertConfig
from bertkit.embedding import Embedder, embed
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
from bertkit.pipeline import pipeline
from bertkit.tokenizer import Tokenizer

__version__ = "0.1.0"

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
