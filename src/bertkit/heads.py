"""Task heads on top of the BERT encoder: each returns its logits and, given labels, the loss.

Every model class here holds the encoder as `self.bert` and names its head parts after what they
do; checkpoint.py maps these names to the standard ones (cls.predictions, classifier, qa_outputs).
Shapes use the letters of model.py: B batch, T tokens, C hidden, V vocabulary, N choices, L labels.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from bertkit.config import BertConfig
from bertkit.model import BertModel, Pretrained, activation

IGNORE = -100  # label value that takes no part in a loss (padding, special tokens, unmasked tokens)


class HeadOutput(NamedTuple):
    logits: Tensor
    loss: Tensor | None = None


class PreTrainingOutput(NamedTuple):
    mlm_logits: Tensor  # (B, T, V)
    nsp_logits: Tensor  # (B, 2)
    loss: Tensor | None = None


class SpanOutput(NamedTuple):
    start_logits: Tensor  # (B, T)
    end_logits: Tensor  # (B, T)
    loss: Tensor | None = None


class MLMHead(nn.Module):
    """Dense + activation + LayerNorm, then the decoder tied to the word embeddings, plus an output bias."""

    def __init__(self, config: BertConfig):
        super().__init__()
        self.dense = nn.Linear(config.hidden_size, config.hidden_size)
        self.act = activation(config.hidden_act)
        self.norm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.bias = nn.Parameter(torch.zeros(config.vocab_size))

    def forward(self, hidden: Tensor, word_embeddings: Tensor) -> Tensor:
        h = self.norm(self.act(self.dense(hidden)))  # (..., C)
        return F.linear(h, word_embeddings, self.bias)  # (..., V)


def token_loss(logits: Tensor, labels: Tensor, reduction: str = "mean") -> Tensor:
    """Cross-entropy over the labelled positions (labels == IGNORE take no part)."""
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), labels.reshape(-1), ignore_index=IGNORE,
                           reduction=reduction)


def _dropout(config: BertConfig) -> nn.Dropout:
    p = config.classifier_dropout if config.classifier_dropout is not None else config.hidden_dropout_prob
    return nn.Dropout(p)


class BertForMaskedLM(Pretrained):
    """Masked language modelling: predict the original token at every position (loss where labelled)."""

    architecture = "BertForMaskedLM"

    def __init__(self, config: BertConfig):
        super().__init__()
        self.config = config
        self.bert = BertModel(config, add_pooler=False)
        self.mlm = MLMHead(config)
        self.init_weights()

    def forward(self, input_ids, token_type_ids=None, attention_mask=None, labels=None) -> HeadOutput:
        hidden = self.bert(input_ids, token_type_ids, attention_mask).last_hidden_state  # (B, T, C)
        logits = self.mlm(hidden, self.bert.embeddings.word.weight)  # (B, T, V)
        return HeadOutput(logits, None if labels is None else token_loss(logits, labels))


class BertForNextSentencePrediction(Pretrained):
    """Next sentence prediction from the pooled [CLS]: class 0 = B follows A, 1 = B is random."""

    architecture = "BertForNextSentencePrediction"

    def __init__(self, config: BertConfig):
        super().__init__()
        self.config = config
        self.bert = BertModel(config)
        self.nsp = nn.Linear(config.hidden_size, 2)
        self.init_weights()

    def forward(self, input_ids, token_type_ids=None, attention_mask=None, labels=None) -> HeadOutput:
        logits = self.nsp(self.bert(input_ids, token_type_ids, attention_mask).pooler_output)  # (B, 2)
        return HeadOutput(logits, None if labels is None else F.cross_entropy(logits, labels))


class BertForPreTraining(Pretrained):
    """Both pretraining objectives; the loss is MLM loss + NSP loss (paper Appendix A.2)."""

    architecture = "BertForPreTraining"

    def __init__(self, config: BertConfig):
        super().__init__()
        self.config = config
        self.bert = BertModel(config)
        self.mlm = MLMHead(config)
        self.nsp = nn.Linear(config.hidden_size, 2)
        self.init_weights()

    def forward(
        self, input_ids, token_type_ids=None, attention_mask=None, labels=None, next_sentence_label=None
    ) -> PreTrainingOutput:
        out = self.bert(input_ids, token_type_ids, attention_mask)
        mlm_logits = self.mlm(out.last_hidden_state, self.bert.embeddings.word.weight)  # (B, T, V)
        nsp_logits = self.nsp(out.pooler_output)  # (B, 2)
        loss = None
        if labels is not None and next_sentence_label is not None:
            loss = token_loss(mlm_logits, labels) + F.cross_entropy(nsp_logits, next_sentence_label)
        return PreTrainingOutput(mlm_logits, nsp_logits, loss)


def infer_problem_type(num_labels: int, labels: Tensor) -> str:
    """What other BERT implementations assume when config.problem_type is not set."""
    if num_labels == 1:
        return "regression"
    if labels.dtype in (torch.long, torch.int):
        return "single_label_classification"
    return "multi_label_classification"


def classification_loss(logits: Tensor, labels: Tensor, problem_type: str | None, reduction: str = "mean") -> Tensor:
    """Cross-entropy (one class), BCE on sigmoids (several labels at once) or MSE (regression).

    The mean (reduction="mean") is over examples, or over example × label for several labels."""
    L = logits.shape[-1]
    problem_type = problem_type or infer_problem_type(L, labels)
    if problem_type == "regression":
        return F.mse_loss(logits.squeeze(-1), labels.to(logits.dtype).view(logits.shape[:-1]), reduction=reduction)
    if problem_type == "multi_label_classification":
        return F.binary_cross_entropy_with_logits(logits, labels.to(logits.dtype), reduction=reduction)
    if problem_type == "single_label_classification":
        return F.cross_entropy(logits.view(-1, L), labels.view(-1), reduction=reduction)
    raise ValueError(f"unknown problem_type {problem_type!r}")


class BertForSequenceClassification(Pretrained):
    """One text or a text pair -> L classes, several labels, or a score (L = 1), from the pooled [CLS]."""

    architecture = "BertForSequenceClassification"

    def __init__(self, config: BertConfig):
        super().__init__()
        self.config = config
        self.bert = BertModel(config)
        self.dropout = _dropout(config)
        self.classifier = nn.Linear(config.hidden_size, config.num_labels)
        self.init_weights()

    def forward(self, input_ids, token_type_ids=None, attention_mask=None, labels=None) -> HeadOutput:
        pooled = self.bert(input_ids, token_type_ids, attention_mask).pooler_output  # (B, C)
        logits = self.classifier(self.dropout(pooled))  # (B, L)
        loss = None if labels is None else classification_loss(logits, labels, self.config.problem_type)
        return HeadOutput(logits, loss)


class BertForTokenClassification(Pretrained):
    """A label per token (part of speech, entities); positions labelled IGNORE take no part in the loss."""

    architecture = "BertForTokenClassification"

    def __init__(self, config: BertConfig):
        super().__init__()
        self.config = config
        self.bert = BertModel(config, add_pooler=False)
        self.dropout = _dropout(config)
        self.classifier = nn.Linear(config.hidden_size, config.num_labels)
        self.init_weights()

    def forward(self, input_ids, token_type_ids=None, attention_mask=None, labels=None) -> HeadOutput:
        hidden = self.bert(input_ids, token_type_ids, attention_mask).last_hidden_state  # (B, T, C)
        logits = self.classifier(self.dropout(hidden))  # (B, T, L)
        return HeadOutput(logits, None if labels is None else token_loss(logits, labels))


class BertForQuestionAnswering(Pretrained):
    """Extractive QA: a start and an end score for every token (paper §4.2)."""

    architecture = "BertForQuestionAnswering"

    def __init__(self, config: BertConfig):
        super().__init__()
        self.config = config
        self.bert = BertModel(config, add_pooler=False)
        self.qa = nn.Linear(config.hidden_size, 2)
        self.init_weights()

    def forward(
        self, input_ids, token_type_ids=None, attention_mask=None, start_positions=None, end_positions=None
    ) -> SpanOutput:
        hidden = self.bert(input_ids, token_type_ids, attention_mask).last_hidden_state  # (B, T, C)
        start, end = self.qa(hidden).unbind(-1)  # (B, T) each
        loss = None
        if start_positions is not None and end_positions is not None:
            loss = (span_loss(start, start_positions) + span_loss(end, end_positions)) / 2
        return SpanOutput(start, end, loss)


def span_loss(logits: Tensor, positions: Tensor, reduction: str = "mean") -> Tensor:
    """Cross-entropy of a start (or end) position; positions outside the sequence take no part."""
    T = logits.shape[1]
    positions = positions.view(-1).clamp(0, T)  # T marks "outside", e.g. an answer cut off by truncation
    return F.cross_entropy(logits, positions, ignore_index=T, reduction=reduction)


class BertForMultipleChoice(Pretrained):
    """N candidate (context, choice) pairs per example -> one score each, softmax over the N."""

    architecture = "BertForMultipleChoice"

    def __init__(self, config: BertConfig):
        super().__init__()
        self.config = config
        self.bert = BertModel(config)
        self.dropout = _dropout(config)
        self.classifier = nn.Linear(config.hidden_size, 1)
        self.init_weights()

    def forward(self, input_ids, token_type_ids=None, attention_mask=None, labels=None) -> HeadOutput:
        B, N, T = input_ids.shape

        def flat(t: Tensor | None) -> Tensor | None:
            return None if t is None else t.reshape(B * N, T)

        pooled = self.bert(flat(input_ids), flat(token_type_ids), flat(attention_mask)).pooler_output  # (B*N, C)
        logits = self.classifier(self.dropout(pooled)).view(B, N)  # (B, N)
        return HeadOutput(logits, None if labels is None else F.cross_entropy(logits, labels))


HEADS: dict[str, type[Pretrained]] = {
    cls.architecture: cls
    for cls in (
        BertModel,
        BertForMaskedLM,
        BertForNextSentencePrediction,
        BertForPreTraining,
        BertForSequenceClassification,
        BertForTokenClassification,
        BertForQuestionAnswering,
        BertForMultipleChoice,
    )
}
