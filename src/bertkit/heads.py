"""Task heads on top of the BERT encoder: each returns its logits and, given labels, the loss.

The loss is the mean (what transformers' heads return) of the same LossSum that training sums
(objective.py): one function per loss, shared by the heads and the tasks.

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
from bertkit.dropout import Dropout
from bertkit.labels import IGNORE as IGNORE  # re-exported: it lived here before labels.py
from bertkit.model import BertModel, Pretrained, activation
from bertkit.objective import classification_loss, cross_entropy_loss, mask_choices, span_loss
from bertkit.sentence import SentenceEncoder


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


def _dropout(config: BertConfig) -> Dropout:
    p = config.classifier_dropout if config.classifier_dropout is not None else config.hidden_dropout_prob
    return Dropout(p)


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
        return HeadOutput(logits, None if labels is None else cross_entropy_loss(logits, labels).mean())


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
        logits = self.nsp(self.bert.forward_at(input_ids, token_type_ids, attention_mask).pooler_output)  # (B, 2)
        return HeadOutput(logits, None if labels is None else cross_entropy_loss(logits, labels).mean())


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
            loss = (cross_entropy_loss(mlm_logits, labels).mean()
                    + cross_entropy_loss(nsp_logits, next_sentence_label).mean())
        return PreTrainingOutput(mlm_logits, nsp_logits, loss)


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
        pooled = self.bert.forward_at(input_ids, token_type_ids, attention_mask).pooler_output  # (B, C)
        logits = self.classifier(self.dropout(pooled))  # (B, L)
        if labels is None:
            return HeadOutput(logits)
        return HeadOutput(logits, classification_loss(logits, labels, self.config.problem_type).mean())


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
        return HeadOutput(logits, None if labels is None else cross_entropy_loss(logits, labels).mean())

    def logits_at(self, input_ids, token_type_ids, attention_mask, at: Tensor) -> Tensor:
        """forward's logits[at], (M, L), with the encoder's last layer run at `at` alone (training
        reads the labelled pieces only: BertModel.forward_at)."""
        hidden = self.bert.forward_at(input_ids, token_type_ids, attention_mask, at).last_hidden_state  # (M, C)
        return self.classifier(self.dropout(hidden))  # (M, L)


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
        # padded: this head's own loss is a softmax over every position, padding included, as in
        # transformers (task training masks padding itself: tasks/qa.py), so padding must be computed
        hidden = self.bert(input_ids, token_type_ids, attention_mask, unpadded=False).last_hidden_state  # (B, T, C)
        start, end = self.qa(hidden).unbind(-1)  # (B, T) each
        loss = None
        if start_positions is not None and end_positions is not None:
            # transformers' rule: the mean of each end's mean (training sums both ends: answer_loss)
            loss = (span_loss(start, start_positions).mean() + span_loss(end, end_positions).mean()) / 2
        return SpanOutput(start, end, loss)


class BertForMultipleChoice(Pretrained):
    """N candidate (context, choice) pairs per example -> one score each, softmax over the N.

    Examples with fewer candidates are padded to N; choice_mask (B, N), 0 at padding, takes those
    out of the softmax: their logits come back at the lowest finite value and they change no loss."""

    architecture = "BertForMultipleChoice"

    def __init__(self, config: BertConfig):
        super().__init__()
        self.config = config
        self.bert = BertModel(config)
        self.dropout = _dropout(config)
        self.classifier = nn.Linear(config.hidden_size, 1)
        self.init_weights()

    def forward(
        self, input_ids, token_type_ids=None, attention_mask=None, labels=None, choice_mask=None
    ) -> HeadOutput:
        B, N, T = input_ids.shape

        def flat(t: Tensor | None) -> Tensor | None:
            return None if t is None else t.reshape(B * N, T)

        pooled = self.bert.forward_at(flat(input_ids), flat(token_type_ids), flat(attention_mask)).pooler_output  # (B*N, C)
        logits = self.classifier(self.dropout(pooled)).view(B, N)  # (B, N)
        if choice_mask is not None:
            logits = mask_choices(logits, choice_mask)
        return HeadOutput(logits, None if labels is None else cross_entropy_loss(logits, labels).mean())


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
HEADS["SentenceEncoder"] = SentenceEncoder  # its config.json says BertModel, so it is registered by name
