"""Fill in [MASK] tokens with a masked-language model: the quickest look at what pretraining learned."""

from __future__ import annotations

import os
from typing import NamedTuple

import torch

from bertkit.devices import (
    inference_autocast,
    model_device,
    resolve_device,
    to_device,
)
from bertkit.errors import InputError
from bertkit.heads import BertForMaskedLM
from bertkit.quantize import set_inference_precision
from bertkit.tokenizer import Tokenizer


class Candidate(NamedTuple):
    token: str
    probability: float


class FillMask:
    def __init__(self, model: BertForMaskedLM, tokenizer: Tokenizer, *, device: str | torch.device | None = None,
                 precision: str = "auto"):
        """device: where to run the model (auto, cpu, cuda, cuda:N, mps); None leaves it where it is.
        precision: how it computes (auto, fp32, bf16, int8)."""
        if device is not None:
            model = model.to(resolve_device(device))
        self.model = set_inference_precision(model.eval(), precision, tokenizer)
        self.device = model_device(self.model)
        self.tokenizer = tokenizer

    @classmethod
    def from_pretrained(cls, path: str | os.PathLike, *, device: str | torch.device = "auto",
                        precision: str = "auto") -> FillMask:
        model = BertForMaskedLM.from_pretrained(
            path, require=("mlm.", "masked-LM head (cls.predictions), so it cannot fill masks"))
        return cls(model, Tokenizer.from_pretrained(path), device=device, precision=precision)

    @torch.inference_mode()
    def __call__(self, text: str, *, top_k: int = 5) -> list[list[Candidate]]:
        """For each [MASK] in `text`, the top_k tokens with their probabilities."""
        # truncation reads a long text only as far as the kept tokens need
        enc = self.tokenizer(text, truncation=True, max_length=self.model.config.max_position_embeddings,
                             return_tensors="pt")
        where = (enc["input_ids"][0] == self.tokenizer.mask_token_id).nonzero().flatten()
        if len(where) == 0:
            raise InputError(f"no [MASK] token in {text!r}")
        batch = to_device({k: enc[k] for k in ("input_ids", "token_type_ids", "attention_mask")}, self.device)
        at = batch["input_ids"] == self.tokenizer.mask_token_id  # (1, T)
        with inference_autocast(self.model):  # the last layer and the decoder at the masks alone
            hidden = self.model.bert.forward_at(batch["input_ids"], batch["token_type_ids"], batch["attention_mask"],
                                                at).last_hidden_state  # (masks, C)
            logits = self.model.mlm(hidden, self.model.bert.embeddings.word.weight)  # (masks, V)
        probs = logits.float().softmax(-1).cpu()  # (masks, V), float32 on the CPU
        top = probs.topk(min(top_k, probs.shape[-1]), dim=-1)
        return [
            [Candidate(self.tokenizer.convert_ids_to_tokens(int(i)), float(p)) for p, i in zip(ps, ids)]
            for ps, ids in zip(top.values, top.indices)
        ]
