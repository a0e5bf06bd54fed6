"""What the server does with its model, without HTTP: check inputs, batch them, run the offline code.

A served model is any BERT directory. Every model embeds (as `bertkit.embed`: what its
sentence-transformers files say, else normalised mean pooling); a model from `bertkit finetune` also predicts (its task and labels read from its
config.json by `bertkit.predict.load_finetuned`, as `bertkit predict` reads them); a checkpoint with
a masked-LM head also fills masks. One encoder is loaded and shared by all three.

Each job runs the functions the offline commands run: `Embedder._embed_batch` on token ids from the
same tokenizer call as `Embedder.__call__`, `predict_examples` on the task's own features, `FillMask`.
Only the grouping into batches differs (the Batcher's), so a vector or a prediction is the offline
one up to float rounding in differently padded batches.

`prepare_*` run in request threads and raise ApiError (413 for an input over the model's length);
`_run` runs in the batcher's one worker thread.
"""

from __future__ import annotations

from collections.abc import Hashable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from bertkit.config import BertConfig
from bertkit.devices import release_free_memory
from bertkit.embedding import Embedder
from bertkit.errors import InputError
from bertkit.models import BUILTIN_MODEL, resolve_model
from bertkit.sentence import read_settings
from bertkit.serve.batcher import Batcher, BatchStats
from bertkit.serve.errors import ApiError, input_too_long, not_supported
from bertkit.serve.settings import ServeArgs
from bertkit.settings import TASKS
from bertkit.tasks import BadInput, task_class

EMBED, FILL_MASK = "embed", "fill-mask"
MLM_ARCHITECTURES = ("BertForMaskedLM", "BertForPreTraining")


@dataclass
class Prepared:
    """A request's inputs ready for the batcher: one payload per input, its length and sequences."""

    payloads: list[Any]
    lengths: list[int]
    sequences: list[int]
    tokens: int  # real tokens, for usage counts


class Service:
    """The loaded model, its tokenizer, and the batcher that runs every model call."""

    def __init__(self, args: ServeArgs, *, on_batch=None):
        directory = resolve_model(args.model)
        self.name = model_name(args.model, directory)
        _, encoder_dir = read_settings(directory)  # the folder itself, or a sentence-transformers subfolder
        config = BertConfig.load(encoder_dir)
        architecture = (config.architectures or ["BertModel"])[0]
        self.loaded = self.fill = None
        if args.compile:
            from bertkit.compiled import compile_inference

            compile_inference()
        if architecture in _task_architectures():
            from bertkit.predict import load_finetuned

            self.loaded = load_finetuned(directory, device=args.device, precision=args.precision)
            self.embedder = Embedder.around(self.loaded.model.bert, self.loaded.tokenizer, directory)
        elif architecture in MLM_ARCHITECTURES:
            from bertkit.fill_mask import FillMask

            self.fill = FillMask.from_pretrained(directory, device=args.device, precision=args.precision)
            self.embedder = Embedder.around(self.fill.model.bert, self.fill.tokenizer, directory)
        else:  # a plain BERT or a sentence-transformers folder: vectors as its files say
            self.embedder = Embedder.from_pretrained(directory, device=args.device, precision=args.precision)
        self.tokenizer = self.embedder.tokenizer
        self.config = self.embedder.model.config
        self.max_length = self.embedder._limit(None)  # the offline rule: the tokenizer's and the positions' limit
        if args.max_batch_tokens < self.max_length:
            raise InputError(f"--max-batch-tokens {args.max_batch_tokens} is less than one input of the model's "
                             f"maximum length ({self.max_length} tokens)")
        self.max_batch_tokens = args.max_batch_tokens
        # what one request may cost: as many full-length inputs as it may send. Bounds the windows of
        # long contexts (qa, --long-text window), which would otherwise hold the model for minutes.
        self.max_request_tokens = args.max_client_batch_size * self.max_length
        self.batcher = Batcher(self._run, max_batch_tokens=args.max_batch_tokens, max_wait_ms=args.max_wait_ms,
                               on_batch=on_batch, on_idle=release_free_memory)

    # ---- what the model is

    @property
    def task(self) -> str:
        """embed, fill-mask, or the fine-tuning task (classify, tag, qa, choice)."""
        if self.loaded is not None:
            return self.loaded.task.name
        return FILL_MASK if self.fill is not None else EMBED

    @property
    def labels(self) -> list[str] | None:
        if self.loaded is None or self.task in ("qa", "choice"):
            return None
        id2label = self.loaded.config.id2label
        return [id2label[i] for i in sorted(id2label)]

    def info(self) -> dict[str, Any]:
        from bertkit import __version__

        task_length = self.loaded.task.options.max_length if self.loaded is not None else None
        return {"model": self.name, "task": self.task, "labels": self.labels,
                "max_length": task_length or self.max_length, "dimension": self.embedder.dim,
                "version": __version__,
                "endpoints": ["/v1/embeddings", "/embed", "/tokenize"]
                + (["/predict"] if self.loaded is not None else []) + (["/fill-mask"] if self.fill else [])}

    # ---- preparing requests (request threads)

    def prepare_embeddings(self, texts: list[str], *, truncate: bool) -> Prepared:
        """Token ids as `Embedder.__call__` makes them (the model's default prompt before each text,
        lower-cased if its files say so); an input over the model's length is a 413 unless truncate."""
        rows = self._encode(self.embedder.prepare_texts(texts, self.embedder.prompt()), truncate)
        lengths = [len(r) for r in rows]
        return Prepared(rows, lengths, [1] * len(rows), sum(lengths))

    def tokenize(self, texts: list[str], *, truncate: bool) -> list[dict[str, Any]]:
        if not truncate:
            self._check_lengths(texts)
        enc = self.tokenizer(texts, truncation=True, max_length=self.max_length, return_offsets_mapping=True)
        return [{"tokens": self.tokenizer.convert_ids_to_tokens(ids), "input_ids": ids, "token_type_ids": types,
                 "offsets": [list(o) for o in offsets]}
                for ids, types, offsets in zip(enc["input_ids"], enc["token_type_ids"], enc["offset_mapping"])]

    def prepare_predictions(self, inputs: list[Any], *, truncate: bool) -> Prepared:
        """The task's examples of `inputs` with their features (`bertkit predict`'s featurizer): a payload
        is (example, its features), all the windows of a long input together."""
        if self.loaded is None:
            raise not_supported(f"/predict needs a model from `bertkit finetune`; {self.name} has no task head "
                                "(it serves /v1/embeddings and /embed)")
        task = self.loaded.task
        examples = task.parse(inputs)
        featurized = task.featurize(examples, self.tokenizer, self.loaded.config, BadInput())
        if featurized.long and task.options.long_text == "truncate" and not truncate:
            raise ApiError(413, "input_too_long", f"{featurized.long:,} of {len(examples):,} inputs are longer than "
                           f"this model's max_length of {task.options.max_length} tokens ([CLS] and [SEP] "
                           f"included); send \"truncate\": true to cut them to that length")
        per_example: list[list[dict]] = [[] for _ in examples]
        for f in featurized.features:
            per_example[f["_example"]].append(f)
        lengths = [max(_longest(f["input_ids"]) for f in fs) for fs in per_example]
        sequences = [sum(_rows(f["input_ids"]) for f in fs) for fs in per_example]
        cost = sum(n * s for n, s in zip(lengths, sequences))
        if cost > self.max_request_tokens:
            raise ApiError(413, "too_large", f"the inputs make {sum(sequences):,} sequences ({cost:,} tokens), more "
                           f"than one request may ({self.max_request_tokens:,} tokens: max_client_batch_size x "
                           f"{self.max_length}); send shorter contexts or fewer inputs per request")
        tokens = sum(_real_tokens(f["input_ids"]) for f in featurized.features)
        return Prepared(list(zip(examples, per_example)), lengths, sequences, tokens)

    def prepare_fill_mask(self, texts: list[str], *, truncate: bool) -> Prepared:
        if self.fill is None:
            raise not_supported(f"/fill-mask needs a checkpoint with a masked-LM head (from `bertkit pretrain`, "
                                f"or a published BERT); {self.name} has none")
        rows = self._encode(texts, truncate)
        mask = self.tokenizer.mask_token_id
        for i, row in enumerate(rows):
            if mask not in row:
                where = "" if len(row) < self.max_length else f" within its first {self.max_length} tokens"
                raise ApiError(400, "invalid_input", f"input {i} has no [MASK] token{where}")
        lengths = [len(r) for r in rows]
        return Prepared(list(texts), lengths, [1] * len(rows), sum(lengths))

    def _encode(self, texts: list[str], truncate: bool) -> list[list[int]]:
        if not truncate:
            self._check_lengths(texts)
        # the call Embedder.__call__ makes, so the ids are the offline ones
        return self.tokenizer(texts, truncation=True, max_length=self.max_length)["input_ids"]

    def _check_lengths(self, texts: list[str]) -> None:
        """413 for the first text over the model's length. Only a text's first pieces are read to tell
        (a long one shows itself within room + 1 pieces); the one refused is then counted whole."""
        room = self.max_length - 2  # [CLS] and [SEP]
        for i, p in enumerate(self.tokenizer.pieces(texts, max_pieces=room)):
            if len(p.ids) > room:
                raise input_too_long(i, len(self.tokenizer.pieces([texts[i]])[0].ids) + 2, self.max_length)

    # ---- running batches (the batcher's worker thread)

    def _run(self, key: Hashable, payloads: list[Any]) -> list[Any]:
        kind, option = key
        if kind == EMBED:
            return list(self.embedder._embed_batch(payloads, normalize=option))
        if kind == FILL_MASK:
            return [self.fill(text, top_k=option) for text in payloads]
        return self._predict(payloads)

    def _predict(self, payloads: list[tuple[Any, list[dict]]]) -> list[Any]:
        """`predict_examples` on the examples of several requests at once, each example with its features."""
        from bertkit.predict import predict_examples
        from bertkit.tasks.base import Featurized

        examples, features = [], []
        for k, (example, own) in enumerate(payloads):
            examples.append(example)
            features += [{**f, "_example": k} for f in own]
        per_feature = max(_rows(f["input_ids"]) * _longest(f["input_ids"]) for f in features)
        loaded = self.loaded
        return predict_examples(loaded.task, loaded.model, loaded.tokenizer, examples, Featurized(features),
                                batch_size=max(1, self.max_batch_tokens // per_feature))

    async def run(self, key: Hashable, prepared: Prepared) -> list[Any]:
        """The results of a prepared request, from the batcher."""
        import asyncio

        future = self.batcher.submit(key, prepared.payloads, prepared.lengths, prepared.sequences)
        return await asyncio.wrap_future(future)

    def close(self, timeout: float | None = None) -> None:
        """Finish the queued inputs (waiting at most `timeout` seconds) and stop the worker."""
        self.batcher.close(timeout)


def model_name(given: str | None, directory: Path) -> str:
    """What /info and OpenAI's "model" field say: the built-in model's name, a model folder's name
    (not the whole path: the answer need not show how the server's disk is laid out), or the name given."""
    if given is None or given == BUILTIN_MODEL:
        return BUILTIN_MODEL
    return directory.resolve().name if Path(given).exists() else given


def _task_architectures() -> set[str]:
    return {task_class(name).architecture for name in TASKS}


def _longest(ids: list) -> int:
    return max(len(row) for row in ids) if ids and isinstance(ids[0], list) else len(ids)


def _rows(ids: list) -> int:
    return len(ids) if ids and isinstance(ids[0], list) else 1


def _real_tokens(ids: list) -> int:
    return sum(len(row) for row in ids) if ids and isinstance(ids[0], list) else len(ids)


def matryoshka(vectors: np.ndarray, dimensions: int | None) -> np.ndarray:
    """The first `dimensions` components of unit vectors (N, C), scaled back to unit length — how
    Matryoshka-trained models are shortened; None keeps them whole."""
    if dimensions is None or dimensions == vectors.shape[-1]:
        return vectors
    cut = vectors[:, :dimensions]  # (N, d)
    return cut / np.maximum(np.linalg.norm(cut, axis=-1, keepdims=True), 1e-12)


__all__ = ["BatchStats", "EMBED", "FILL_MASK", "Prepared", "Service", "matryoshka"]
