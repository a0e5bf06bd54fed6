"""Pretraining: the MLM (+ NSP or SOP) objective for the training loop, and `bertkit pretrain`.

The MLM decoder (a V-wide projection, the largest matrix in a small BERT) runs only at the masked
positions, about 15% of tokens, rather than at every token.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from bertkit.config import BertConfig
from bertkit.errors import BertkitError, InputError
from bertkit.heads import IGNORE, BertForMaskedLM, BertForPreTraining
from bertkit.train import StepSums

OBJECTIVES = ("mlm", "mlm+nsp", "mlm+sop")


class PretrainingObjective(nn.Module):
    """Loss sums of masked LM (and of the sentence task, when the model has its head) for a batch."""

    def __init__(self, model: BertForPreTraining | BertForMaskedLM):
        super().__init__()
        self.model = model

    @property
    def has_sentence_task(self) -> bool:
        return isinstance(self.model, BertForPreTraining)

    def counts(self, batch: dict[str, Tensor]) -> dict[str, float]:
        counts = {"mlm": float((batch["labels"] != IGNORE).sum())}
        if self.has_sentence_task:
            counts["nsp"] = float((batch["next_sentence_label"] != IGNORE).sum())
        return counts

    def forward(self, batch: dict[str, Tensor]) -> StepSums:
        m = self.model
        out = m.bert(batch["input_ids"], batch["token_type_ids"], batch["attention_mask"])
        labels = batch["labels"]
        selected = labels != IGNORE  # (B, T)
        hidden = out.last_hidden_state[selected]  # (M, C): only the masked positions
        logits = m.mlm(hidden, m.bert.embeddings.word.weight).float()  # (M, V)
        targets = labels[selected]  # (M,)
        losses = {"mlm": F.cross_entropy(logits, targets, reduction="sum")}
        metrics = {"mlm_correct": (logits.argmax(-1) == targets).sum().detach()}
        if self.has_sentence_task:
            nsp_logits = m.nsp(out.pooler_output).float()  # (B, 2)
            nsp_labels = batch["next_sentence_label"]
            losses["nsp"] = F.cross_entropy(nsp_logits, nsp_labels, ignore_index=IGNORE, reduction="sum")
            metrics["nsp_correct"] = ((nsp_logits.argmax(-1) == nsp_labels) & (nsp_labels != IGNORE)).sum().detach()
        return StepSums(losses, metrics)

    def summarize(self, sums: dict[str, float]) -> dict[str, float]:
        n_mlm = max(sums.get("n_mlm", 0.0), 1.0)
        out = {"mlm_loss": sums.get("loss_mlm", 0.0) / n_mlm, "mlm_accuracy": sums.get("mlm_correct", 0.0) / n_mlm}
        out["perplexity"] = float(torch.tensor(out["mlm_loss"]).clamp(max=50).exp())
        loss = out["mlm_loss"]
        if "n_nsp" in sums:
            n_nsp = max(sums["n_nsp"], 1.0)
            out["nsp_loss"] = sums.get("loss_nsp", 0.0) / n_nsp
            out["nsp_accuracy"] = sums.get("nsp_correct", 0.0) / n_nsp
            loss += out["nsp_loss"]
        return {"loss": loss, **out}


def model_config(spec: str, vocab_size: int, max_length: int) -> BertConfig:
    """A preset name (tiny/mini/small/medium/base/large) or a config.json path, sized to the vocabulary."""
    from bertkit.config import PRESETS

    if spec in PRESETS:
        config = BertConfig.preset(spec, vocab_size=vocab_size)
    else:
        path = Path(spec)
        if not path.exists():
            raise InputError(f"--config {spec}: neither a preset ({', '.join(PRESETS)}) nor an existing config.json")
        config = BertConfig.load(path).replace(vocab_size=vocab_size)
    if max_length > config.max_position_embeddings:
        raise InputError(
            f"--max-length {max_length} exceeds the model's max_position_embeddings={config.max_position_embeddings}"
        )
    return config


def build_model(objective: str, config: BertConfig, init_from: str | None) -> BertForPreTraining | BertForMaskedLM:
    if objective not in OBJECTIVES:
        raise InputError(f"unknown objective {objective!r}; choose one of {', '.join(OBJECTIVES)}")
    cls = BertForMaskedLM if objective == "mlm" else BertForPreTraining
    if init_from is None:
        return cls(config)
    model = cls.from_pretrained(init_from)
    if model.config.vocab_size != config.vocab_size:
        raise InputError(
            f"--init-from {init_from}: its vocabulary has {model.config.vocab_size} tokens but the prepared data "
            f"was tokenized with {config.vocab_size}; prepare the data with that checkpoint's tokenizer"
        )
    return model


@dataclass
class PretrainArgs:
    """What `bertkit pretrain` needs beyond the training loop's own settings."""

    data: Path
    """Directory written by `bertkit prepare`."""
    config: str = "mini"
    """Model size: tiny, mini, small, medium, base, large, or a config.json."""
    objective: str = "mlm+nsp"
    """mlm, mlm+nsp (next sentence prediction) or mlm+sop (sentence order prediction)."""
    max_length: int = 128
    """Tokens per sequence, [CLS] and [SEP]s included."""
    mask_rate: float = 0.15
    """Fraction of tokens selected for MLM (80% [MASK], 10% random, 10% kept)."""
    whole_word_masking: bool = False
    """Mask all pieces of a word together."""
    short_seq_prob: float = 0.1
    """Probability of a shorter target length for an example (as the original)."""
    init_from: str | None = None
    """Start from this checkpoint (continued pretraining) instead of random weights."""
    eval_batches: int = 50
    """Cap on validation batches per evaluation (0: all)."""


def guard_not_empty(num_batches: int, what: str) -> None:
    if num_batches == 0:
        raise BertkitError(f"{what} yields no batch: too little text for the batch size")
