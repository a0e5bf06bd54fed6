"""Pretraining examples as Google's original BERT makes them, and dynamic masking at batch time.

Two stages, both deterministic functions of (seed, epoch):

1. **Examples** (`build_examples`, per epoch): each document is cut into chunks of consecutive
   sentences and every chunk into a pair ``[CLS] A [SEP] B [SEP]``, as the original
   create_pretraining_data.py does. With ``mlm+nsp`` half the B's come from another document
   (next sentence prediction, BERT paper §3.1 "Task #2"); with ``mlm+sop`` B always follows A and half
   the pairs are swapped (sentence order prediction, ALBERT paper §3.2); with ``mlm`` there is no
   second sentence and each example is one run of consecutive sentences. Every epoch makes new
   examples (new splits, new negatives), like the original's dupe_factor but without storing copies.
2. **Masking** (`mask_tokens`, per batch): never stored, so every epoch sees fresh masks, as
   RoBERTa's dynamic masking (RoBERTa paper §4.1). Each example's masks come from its own generator,
   seeded from (seed, epoch, example index), so a batch is the same whatever the batch size, the
   number of processes, or the step a run resumed at.

`PretrainingBatches` ties both together behind the training loop's random-access batch source
(train.BatchSource): ``batch(epoch, index, batch_size, rank=, world_size=)``.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import NamedTuple, Protocol

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from bertkit.errors import InputError
from bertkit.labels import IGNORE
from bertkit.padding import pad, pad_inputs
from bertkit.settings import OBJECTIVES, PretrainingConfig  # torch-free there, for the command line

__all__ = [
    "OBJECTIVES", "IS_NEXT", "RANDOM_NEXT", "IN_ORDER", "SWAPPED",
    "DocumentCorpus", "SpecialTokenIds", "PretrainingConfig", "Example", "Examples",
    "document_examples", "build_examples", "truncation_counts", "mask_tokens", "prediction_budget",
    "mask_seed", "collate", "PretrainingBatches", "example_stats",
]

IS_NEXT, RANDOM_NEXT = 0, 1  # NSP labels, as the original's is_random_next (and HF's next_sentence_label)
IN_ORDER, SWAPPED = 0, 1  # SOP labels (ALBERT: a swapped pair is the negative)

MASK_FRACTION, RANDOM_FRACTION = 0.8, 0.1  # of the selected tokens; the rest are kept — BERT paper §3.1
_NEGATIVE_TRIES = 10  # draws of "another document" before giving up on empty ones (the original tries 10)
# Independent random streams derived from (seed, epoch, stream[, index]) by numpy's SeedSequence.
_EXAMPLE_STREAM, _ORDER_STREAM, _MASK_STREAM = 0, 1, 2

Sentence = tuple[np.ndarray, np.ndarray]  # (token ids, word starts)


class DocumentCorpus(Protocol):
    """What example creation reads: documents by integer index, each a list of sentences
    (data.shards.ShardedCorpus, or any in-memory stand-in)."""

    def __len__(self) -> int: ...

    def document(self, i: int) -> Sequence[np.ndarray]: ...

    def document_word_starts(self, i: int) -> Sequence[np.ndarray]: ...


class SpecialTokenIds(Protocol):
    """The ids batches need; bertkit's Tokenizer has them all."""

    @property
    def pad_token_id(self) -> int: ...

    @property
    def unk_token_id(self) -> int: ...

    @property
    def cls_token_id(self) -> int: ...

    @property
    def sep_token_id(self) -> int: ...

    @property
    def mask_token_id(self) -> int: ...

    @property
    def vocab_size(self) -> int: ...


class Example(NamedTuple):
    """One training pair before masking."""

    a: np.ndarray
    b: np.ndarray  # empty for objective "mlm"
    a_word_starts: np.ndarray
    b_word_starts: np.ndarray
    label: int  # RANDOM_NEXT / IS_NEXT, SWAPPED / IN_ORDER, or IGNORE for "mlm"
    a_document: int
    b_document: int  # -1 without B


@dataclass(frozen=True)
class Examples:
    """An epoch's examples back to back, as compact as the shards: example i is
    A = tokens[offsets[i] : offsets[i] + a_lengths[i]] and B = the rest up to offsets[i + 1]."""

    tokens: np.ndarray  # int32
    word_starts: np.ndarray  # uint8, 1 where a token begins a word
    offsets: np.ndarray  # int64, n + 1
    a_lengths: np.ndarray  # int64, n
    labels: np.ndarray  # int64, n
    documents: np.ndarray  # int64, (n, 2): documents of A and of B (-1: no B)

    def __len__(self) -> int:
        return len(self.a_lengths)

    def __getitem__(self, i: int) -> Example:
        start, end = int(self.offsets[i]), int(self.offsets[i + 1])
        mid = start + int(self.a_lengths[i])
        t, w = self.tokens, self.word_starts
        return Example(t[start:mid], t[mid:end], w[start:mid], w[mid:end], int(self.labels[i]),
                       int(self.documents[i, 0]), int(self.documents[i, 1]))

    def __iter__(self) -> Iterator[Example]:
        return (self[i] for i in range(len(self)))


# ------------------------------------------------------------------------------ examples


def _is_int(value: object) -> bool:
    return isinstance(value, (int, np.integer)) and not isinstance(value, bool)


def _read_document(corpus: DocumentCorpus, i: int) -> list[Sentence]:
    """The document's non-empty sentences with their word starts."""
    ids, starts = corpus.document(i), corpus.document_word_starts(i)
    if len(ids) != len(starts):
        raise InputError(f"document {i}: {len(ids)} sentences but {len(starts)} word-start arrays")
    out = []
    for s, (t, w) in enumerate(zip(ids, starts)):
        if len(t) != len(w):
            raise InputError(f"document {i}, sentence {s}: {len(t)} tokens but {len(w)} word starts")
        if len(t):  # an empty sentence can never make up a segment on its own
            out.append((np.asarray(t), np.asarray(w)))
    return out


def _join(sentences: Sequence[Sentence]) -> Sentence:
    if len(sentences) == 1:
        return sentences[0]
    return np.concatenate([s[0] for s in sentences]), np.concatenate([s[1] for s in sentences])


def _length(sentences: Sequence[Sentence]) -> int:
    return sum(len(s[0]) for s in sentences)


def _target_length(max_num_tokens: int, short_seq_prob: float, rng: np.random.Generator) -> int:
    # Usually fill the sequence, but short_seq_prob of the time aim at a random shorter length, to
    # lessen the mismatch with short fine-tuning inputs — create_pretraining_data.py. The original
    # draws once per document; we draw per example, so the share of short examples is short_seq_prob
    # whatever the document lengths (the README's "generate shorter sequences" 10% of the time).
    if rng.random() < short_seq_prob:
        return int(rng.integers(2, max_num_tokens + 1))
    return max_num_tokens


def truncation_counts(len_a: int, len_b: int, max_num_tokens: int) -> tuple[int, int]:
    """How many tokens the original's truncate_seq_pair removes from A and from B: one at a time from
    the longer of the two (from B on a tie) until both fit in max_num_tokens, computed in one go."""
    excess = len_a + len_b - max_num_tokens
    if excess <= 0:
        return 0, 0
    gap = abs(len_a - len_b)
    if excess <= gap:  # only the longer one ever gets cut
        return (excess, 0) if len_a > len_b else (0, excess)
    rest = excess - gap  # now equally long: removals alternate B, A, B, ... (ties go to B)
    return max(len_a - len_b, 0) + rest // 2, max(len_b - len_a, 0) + (rest + 1) // 2


def _trim(segment: Sentence, remove: int, rng: np.random.Generator) -> Sentence:
    # Each removed token comes from the front or the back with probability 1/2, "to add more randomness
    # and avoid biases" — truncate_seq_pair in create_pretraining_data.py. The number taken from the
    # front of `remove` such coin flips is Binomial(remove, 1/2), drawn at once.
    if remove <= 0:
        return segment
    front = int(rng.binomial(remove, 0.5))
    end = len(segment[0]) - (remove - front)
    return segment[0][front:end], segment[1][front:end]


def _truncate_pair(a: Sentence, b: Sentence, max_num_tokens: int,
                   rng: np.random.Generator) -> tuple[Sentence, Sentence]:
    remove_a, remove_b = truncation_counts(len(a[0]), len(b[0]), max_num_tokens)
    return _trim(a, remove_a, rng), _trim(b, remove_b, rng)


def _other_document(n_documents: int, index: int, rng: np.random.Generator) -> int:
    """Uniform among the documents other than `index` (the original redraws up to 10 times instead)."""
    r = int(rng.integers(n_documents - 1))
    return r + (r >= index)


def _span_from(sentences: Sequence[Sentence], start: int, stop: int, target: int) -> Sentence:
    """Sentences from `start` (before `stop`) until at least `target` tokens; always one sentence."""
    taken, length = [], 0
    for s in sentences[start:stop]:
        taken.append(s)
        length += len(s[0])
        if length >= target:
            break
    return _join(taken)


def _random_next(corpus: DocumentCorpus, index: int, sentences: Sequence[Sentence], chunk: tuple[int, int],
                 target: int, rng: np.random.Generator) -> tuple[int, Sentence]:
    """B for an NSP negative: a random span of about `target` tokens from another document, starting
    at a random sentence — create_pretraining_data.py. Returns (document, B)."""
    n = len(corpus)
    for _ in range(_NEGATIVE_TRIES if n > 1 else 0):
        other = _other_document(n, index, rng)
        other_sentences = _read_document(corpus, other)
        if other_sentences:
            start = int(rng.integers(len(other_sentences)))
            return other, _span_from(other_sentences, start, len(other_sentences), target)
    # A one-document corpus (or only empty others): the original would silently pair the document
    # with itself. We take a random part of the same document outside the current chunk, stopping
    # before the chunk when starting ahead of it; if the chunk is the whole document there is no
    # such part and B may overlap A (a noisy negative, but never a crash).
    first, end = chunk
    outside = [j for j in range(len(sentences)) if j < first or j >= end]
    if not outside:
        start = int(rng.integers(len(sentences)))
        return index, _span_from(sentences, start, len(sentences), target)
    start = outside[int(rng.integers(len(outside)))]
    return index, _span_from(sentences, start, first if start < first else len(sentences), target)


def _split_sentence(sentence: Sentence, rng: np.random.Generator) -> tuple[Sentence, Sentence] | None:
    """A lone sentence cut at a random token boundary into two non-empty parts (None if 1 token)."""
    n = len(sentence[0])
    if n < 2:
        return None
    cut = int(rng.integers(1, n))
    return (sentence[0][:cut], sentence[1][:cut]), (sentence[0][cut:], sentence[1][cut:])


def _pair_examples(corpus: DocumentCorpus, index: int, sentences: list[Sentence], *, max_num_tokens: int,
                   objective: str, short_seq_prob: float, rng: np.random.Generator) -> list[Example]:
    """create_instances_from_document of the original, for NSP and (ALBERT's variant) SOP."""
    examples: list[Example] = []
    target = _target_length(max_num_tokens, short_seq_prob, rng)
    first, length, i = 0, 0, 0  # the chunk is sentences[first : i + 1]
    while i < len(sentences):
        length += len(sentences[i][0])
        # A chunk closes once it reaches the target length or the document ends — original.
        if i == len(sentences) - 1 or length >= target:
            n = i + 1 - first
            a_end = first + (int(rng.integers(1, n)) if n >= 2 else 1)  # A = chunk[:a_end], a_end in [1, n-1]
            a = _join(sentences[first:a_end])
            b_document = index
            if objective == "mlm+nsp":
                # 50% of the time B is a random span from another document (labelled NotNext), and
                # always when the chunk has a single sentence — BERT paper §3.1, original code.
                if n == 1 or rng.random() < 0.5:
                    label = RANDOM_NEXT
                    b_document, b = _random_next(corpus, index, sentences, (first, i + 1),
                                                 target - len(a[0]), rng)
                    i = a_end - 1  # put the chunk's unused sentences back so they are not wasted — original
                else:
                    label, b = IS_NEXT, _join(sentences[a_end:i + 1])
            else:
                # SOP: B is always the true continuation; 50% of the time the two are swapped — ALBERT
                # §3.2. A lone sentence is cut in two at a random token (ALBERT would instead fall back
                # to a random-document negative, mixing the two tasks).
                if n == 1:
                    halves = _split_sentence(sentences[first], rng)
                    if halves is None:  # a one-token document: no pair to make
                        first, length, i = i + 1, 0, i + 1
                        continue
                    a, b = halves
                else:
                    b = _join(sentences[a_end:i + 1])
                label = IN_ORDER
                if rng.random() < 0.5:
                    a, b, label = b, a, SWAPPED
            a, b = _truncate_pair(a, b, max_num_tokens, rng)
            examples.append(Example(a[0], b[0], a[1], b[1], label, index, b_document))
            first, length = i + 1, 0
            target = _target_length(max_num_tokens, short_seq_prob, rng)
        i += 1
    return examples


def _single_examples(index: int, sentences: list[Sentence], *, max_num_tokens: int, short_seq_prob: float,
                     rng: np.random.Generator) -> list[Example]:
    """Objective "mlm": runs of consecutive sentences as one segment, each closed before the sentence
    that would overshoot the target (so no tokens are cut off), like RoBERTa's DOC-SENTENCES inputs
    (RoBERTa paper §4.2). A lone sentence longer than the room is cut as the original truncates."""
    examples: list[Example] = []
    empty = np.zeros(0, dtype=np.int32), np.zeros(0, dtype=np.uint8)

    def emit(run: Sequence[Sentence]) -> None:
        a = _trim(_join(run), _length(run) - max_num_tokens, rng)
        examples.append(Example(a[0], empty[0], a[1], empty[1], IGNORE, index, -1))

    target = _target_length(max_num_tokens, short_seq_prob, rng)
    first, length = 0, 0
    for i, (ids, _) in enumerate(sentences):
        if length and length + len(ids) > target:
            emit(sentences[first:i])
            first, length = i, 0
            target = _target_length(max_num_tokens, short_seq_prob, rng)
        length += len(ids)
    if first < len(sentences):
        emit(sentences[first:])
    return examples


def document_examples(corpus: DocumentCorpus, index: int, config: PretrainingConfig,
                      rng: np.random.Generator) -> list[Example]:
    """The examples of one document, drawing every random choice from `rng`."""
    sentences = _read_document(corpus, index)
    if not sentences:
        return []
    if config.objective == "mlm":
        return _single_examples(index, sentences, max_num_tokens=config.max_num_tokens,
                                short_seq_prob=config.short_seq_prob, rng=rng)
    return _pair_examples(corpus, index, sentences, max_num_tokens=config.max_num_tokens,
                          objective=config.objective, short_seq_prob=config.short_seq_prob, rng=rng)


def _stream(seed: int, epoch: int, stream: int, *more: int) -> np.random.SeedSequence:
    return np.random.SeedSequence([seed, epoch, stream, *more])


def build_examples(corpus: DocumentCorpus, config: PretrainingConfig, epoch: int) -> Examples:
    """Every document's examples for `epoch`, in document order; a function of (config.seed, epoch).
    Each epoch draws new chunks, splits and negatives, as the original's dupe_factor copies do."""
    rng = np.random.default_rng(_stream(config.seed, epoch, _EXAMPLE_STREAM))
    tokens: list[np.ndarray] = []
    starts: list[np.ndarray] = []
    sizes, a_lengths, labels, documents = [], [], [], []
    for index in range(len(corpus)):
        for ex in document_examples(corpus, index, config, rng):
            tokens += (ex.a, ex.b)
            starts += (ex.a_word_starts, ex.b_word_starts)
            sizes.append(len(ex.a) + len(ex.b))
            a_lengths.append(len(ex.a))
            labels.append(ex.label)
            documents.append((ex.a_document, ex.b_document))
    offsets = np.zeros(len(sizes) + 1, dtype=np.int64)
    np.cumsum(sizes, out=offsets[1:])
    return Examples(
        tokens=np.concatenate(tokens).astype(np.int32) if tokens else np.zeros(0, np.int32),
        word_starts=np.concatenate(starts).astype(np.uint8) if starts else np.zeros(0, np.uint8),
        offsets=offsets,
        a_lengths=np.asarray(a_lengths, dtype=np.int64),
        labels=np.asarray(labels, dtype=np.int64),
        documents=np.asarray(documents, dtype=np.int64).reshape(-1, 2),
    )


# ------------------------------------------------------------------------------- masking


def prediction_budget(n_real: Tensor, rate: float, max_predictions: int | None) -> Tensor:
    """Tokens to select per sequence: round(rate * real tokens), at least 1, at most max_predictions
    — create_masked_lm_predictions (which counts [CLS]/[SEP] too; we count only maskable tokens)."""
    n = torch.round(n_real.double() * rate).long().clamp(min=1)
    if max_predictions is not None:
        n = n.clamp(max=max_predictions)
    return torch.where(n_real > 0, n, torch.zeros_like(n))


def _greedy_fill(lengths: Tensor, budget: Tensor) -> Tensor:
    """take[b, k]: scanning row b left to right, take item k when its length still fits in what is left
    of budget[b], else skip it and go on — the whole-word loop of create_masked_lm_predictions.

    Vectorized over rows: each round takes, from the scan position on, the longest run of items that
    fit; the first item that does not fit is skipped and the next round resumes after it. Rounds
    end when no row skips anything, usually after one or two."""
    B, W = lengths.shape
    pos = torch.arange(W, device=lengths.device)
    take = torch.zeros(B, W, dtype=torch.bool, device=lengths.device)
    left = budget.clone()
    start = torch.zeros(B, dtype=torch.long, device=lengths.device)
    while True:
        candidate = (pos >= start[:, None]) & (lengths > 0) & (lengths <= left[:, None])
        running = (lengths * candidate).cumsum(1)
        fits = candidate & (running <= left[:, None])  # a prefix of the candidates: running only grows
        skipped = candidate & ~fits
        take |= fits
        left = left - (lengths * fits).sum(1)
        has_skip = skipped.any(1)
        if not bool(has_skip.any()):
            return take
        first_skip = torch.where(has_skip, skipped.long().argmax(1), torch.full_like(start, W))
        start = first_skip + 1


def _select(candidate: Tensor, word_starts: Tensor | None, scores: Tensor, budget: Tensor) -> Tensor:
    """Positions to predict: words (single tokens when word_starts is None) in the random order of
    `scores`, each taken whole when it fits in the budget — create_masked_lm_predictions."""
    B, T = candidate.shape
    if word_starts is None:
        starts = candidate
    else:
        # A word is a word-start token and the non-start tokens after it; a piece right after a special
        # (a word cut by truncation) starts a word of its own.
        before = F.pad(candidate[:, :-1], (1, 0), value=False)
        starts = candidate & (word_starts.bool() | ~before)
    word = torch.where(candidate, starts.long().cumsum(1) - 1, T)  # (B, T) word slot; T: not maskable
    lengths = torch.zeros(B, T + 1, dtype=torch.long, device=candidate.device)
    lengths = lengths.scatter_add_(1, word, candidate.long())[:, :T]  # tokens per word slot
    n_words = starts.sum(1)
    slots = torch.arange(T, device=candidate.device)
    keys = torch.where(slots < n_words[:, None], scores, torch.full_like(scores, 2.0))  # unused slots last
    order = keys.sort(dim=1, stable=True).indices  # word slots in random order
    take = _greedy_fill(lengths.gather(1, order), budget)
    chosen = torch.zeros(B, T + 1, dtype=torch.bool, device=candidate.device).scatter_(1, order, take)
    return chosen.gather(1, word) & candidate


def _draws(candidate: Tensor, pool_size: int,
           generator: torch.Generator | Sequence[torch.Generator]) -> tuple[Tensor, Tensor, Tensor]:
    """Uniform scores (word order), uniform decisions (80/10/10) and random pool indices, (B, T) each.
    With one generator per row, row b draws as many values as it has positions up to its last
    maskable token, so its draws do not depend on padding or on the other rows."""
    B, T = candidate.shape
    if isinstance(generator, torch.Generator):
        return (torch.rand(B, T, generator=generator), torch.rand(B, T, generator=generator),
                torch.randint(pool_size, (B, T), generator=generator))
    generators = list(generator)
    if len(generators) != B:
        raise InputError(f"got {len(generators)} generators for a batch of {B} rows")
    ends = (candidate.cpu().long() * torch.arange(1, T + 1)).amax(1).tolist() if T else [0] * B
    scores, decisions = torch.ones(B, T), torch.ones(B, T)
    picks = torch.zeros(B, T, dtype=torch.long)
    for b, (g, n) in enumerate(zip(generators, ends)):
        scores[b, :n] = torch.rand(n, generator=g)
        decisions[b, :n] = torch.rand(n, generator=g)
        picks[b, :n] = torch.randint(pool_size, (n,), generator=g)
    return scores, decisions, picks


def _random_pool(vocab_size: int, excluded: Iterable[int]) -> Tensor:
    keep = torch.ones(vocab_size, dtype=torch.bool)
    excluded = [i for i in excluded if 0 <= i < vocab_size]
    keep[excluded] = False
    pool = keep.nonzero().squeeze(1)
    if len(pool) == 0:
        raise InputError(f"no token id left to draw random replacements from (vocab_size={vocab_size})")
    return pool


def mask_tokens(
    input_ids: Tensor,
    *,
    special: Tensor,
    word_starts: Tensor | None = None,
    vocab_size: int,
    mask_id: int,
    special_ids: Iterable[int] = (),
    rate: float = 0.15,
    max_predictions: int | None = None,
    whole_word: bool = False,
    split: tuple[float, float, float] = (MASK_FRACTION, RANDOM_FRACTION, 1 - MASK_FRACTION - RANDOM_FRACTION),
    generator: torch.Generator | Sequence[torch.Generator],
) -> tuple[Tensor, Tensor]:
    """BERT's masked-LM corruption of a (B, T) batch; returns (masked input_ids, labels).

    `special` (B, T) marks positions never selected ([CLS], [SEP], padding). Per sequence,
    round(rate * maskable tokens) positions are selected (at least 1, at most max_predictions); with
    `whole_word` all pieces of a word are selected together, words in random order, skipping words
    that would overshoot the budget (so a sequence may get a little less). Of the selected tokens
    split[0] become mask_id, split[1] a random id (uniform over the vocabulary without `special_ids`
    and mask_id), the rest stay — 80/10/10 in BERT paper §3.1 (the decision is made per token, also
    within a whole word, as the original does). labels hold the original id at selected positions and IGNORE (-100) elsewhere.
    `generator` is one torch.Generator for the batch or one per row (see _draws)."""
    if input_ids.dim() != 2 or special.shape != input_ids.shape:
        raise InputError(f"input_ids and special must be (B, T) alike, got {tuple(input_ids.shape)} "
                         f"and {tuple(special.shape)}")
    if whole_word and word_starts is None:
        raise InputError("whole-word masking needs word_starts")
    device = input_ids.device
    candidate = ~special.bool()
    pool = _random_pool(vocab_size, [*special_ids, mask_id])
    scores, decisions, picks = (x.to(device) for x in _draws(candidate, len(pool), generator))
    budget = prediction_budget(candidate.sum(1), rate, max_predictions)
    selected = _select(candidate, word_starts if whole_word else None, scores, budget)
    to_mask = selected & (decisions < split[0])
    to_random = selected & (decisions >= split[0]) & (decisions < split[0] + split[1])
    masked = torch.where(to_mask, torch.full_like(input_ids, mask_id), input_ids)
    masked = torch.where(to_random, pool.to(device)[picks].to(input_ids.dtype), masked)
    labels = torch.where(selected, input_ids, torch.full_like(input_ids, IGNORE))
    return masked, labels


# ------------------------------------------------------------------------------- batches


def mask_seed(seed: int, epoch: int, index: int) -> int:
    """Seed of the masking generator of example `index` of `epoch`."""
    state = _stream(seed, epoch, _MASK_STREAM, index).generate_state(2, np.uint32)
    return (int(state[0]) << 31) ^ int(state[1])  # 63 bits: a valid torch seed


def collate(examples: Sequence[Example], seeds: Sequence[int], ids: SpecialTokenIds,
            config: PretrainingConfig) -> dict[str, Tensor]:
    """Encode [CLS] A [SEP] B [SEP] (or [CLS] A [SEP]) with token types 0 then 1, pad to the longest,
    and mask each row with the generator seeded by its seed. The sentence label is left out for "mlm"."""
    pair = config.objective != "mlm"
    cls, sep = ids.cls_token_id, ids.sep_token_id
    sequences = [_sequence(e, cls, sep, pair) for e in examples]
    inputs = pad_inputs([s[0] for s in sequences], ids.pad_token_id, token_types=[s[1] for s in sequences])
    input_ids = inputs["input_ids"]  # (B, T)
    specials = [ids.pad_token_id, ids.unk_token_id, cls, sep, ids.mask_token_id]
    # [CLS], [SEP] and padding hold special ids, and so does a literal "[SEP]" inside the text (tokenized
    # as such): none of them is ever selected.
    masked, labels = mask_tokens(
        input_ids, special=torch.isin(input_ids, torch.tensor(specials)),
        word_starts=pad([s[2] for s in sequences]).bool(), vocab_size=ids.vocab_size,
        mask_id=ids.mask_token_id, special_ids=specials, rate=config.mask_rate,
        max_predictions=config.max_predictions, whole_word=config.whole_word_masking,
        split=config.mask_fractions, generator=[torch.Generator().manual_seed(s) for s in seeds],
    )
    batch = {"input_ids": masked, "token_type_ids": inputs["token_type_ids"],
             "attention_mask": inputs["attention_mask"], "labels": labels}
    if pair:
        batch["next_sentence_label"] = torch.tensor([e.label for e in examples], dtype=torch.long)
    return batch


def _sequence(e: Example, cls: int, sep: int, pair: bool) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Token ids, token types and word starts of [CLS] A [SEP] B [SEP], or of [CLS] A [SEP] without pair."""
    tokens, starts = [[cls], e.a, [sep]], [[0], e.a_word_starts, [0]]
    if pair:
        tokens += [e.b, [sep]]
        starts += [e.b_word_starts, [0]]
    n, n_a = sum(len(t) for t in tokens), len(e.a) + 2
    types = np.repeat([0, 1], [n_a, n - n_a])  # B and its [SEP] are segment B — BERT paper §3, Figure 2
    return np.concatenate(tokens), types, np.concatenate(starts)


class PretrainingBatches:
    """Random-access pretraining batches (the training loop's BatchSource).

    Epoch e's examples are build_examples(corpus, config, e), visited in a shuffled order that is
    also a function of (seed, e). Global batch i of size batch_size * world_size is the slice i of
    that order; rank r takes its r-th part, so the ranks' batches partition the global batch and,
    concatenated, equal the one-process batch of size batch_size * world_size.

    With drop_last (the default, needed for training so that every rank runs the same steps) the
    last incomplete global batch of an epoch is left out; the shuffle leaves out different examples
    each epoch. Without it (for evaluation) the last global batch is shared out in the same way,
    and ranks whose part is empty have one batch fewer."""

    def __init__(self, corpus: DocumentCorpus, ids: SpecialTokenIds,
                 config: PretrainingConfig | None = None, *, drop_last: bool = True):
        self.corpus = corpus
        self.ids = ids
        self.config = config or PretrainingConfig()
        self.drop_last = drop_last
        self._cached: tuple[int, Examples, np.ndarray] | None = None

    def _epoch(self, epoch: int) -> tuple[Examples, np.ndarray]:
        if not _is_int(epoch) or epoch < 0:
            raise InputError(f"epoch must be a non-negative integer, got {epoch!r}")
        if self._cached is None or self._cached[0] != epoch:  # one epoch cached: training goes epoch by epoch
            examples = build_examples(self.corpus, self.config, epoch)
            shuffle = np.random.default_rng(_stream(self.config.seed, epoch, _ORDER_STREAM))
            order = shuffle.permutation(len(examples))
            self._cached = (epoch, examples, order)
        return self._cached[1], self._cached[2]

    def examples(self, epoch: int) -> Examples:
        """The examples of `epoch`, in document order."""
        return self._epoch(epoch)[0]

    def order(self, epoch: int) -> np.ndarray:
        """The shuffled order in which `epoch` visits its examples."""
        return self._epoch(epoch)[1]

    def _slice(self, n: int, index: int, batch_size: int, rank: int, world_size: int) -> tuple[int, int]:
        global_size = batch_size * world_size
        start = index * global_size + rank * batch_size
        return min(start, n), min(start + batch_size, n, (index + 1) * global_size)

    def num_batches(self, epoch: int, batch_size: int, *, rank: int = 0, world_size: int = 1) -> int:
        """Batches of this rank in `epoch`."""
        _check_sharding(batch_size, rank, world_size)
        n = len(self.examples(epoch))
        full = n // (batch_size * world_size)
        if self.drop_last:
            return full
        start, end = self._slice(n, full, batch_size, rank, world_size)
        return full + (end > start)

    def batch_indices(self, epoch: int, index: int, batch_size: int, *, rank: int = 0,
                      world_size: int = 1) -> np.ndarray:
        """Indices (into examples(epoch)) of the examples of this rank's batch `index`."""
        n_batches = self.num_batches(epoch, batch_size, rank=rank, world_size=world_size)
        if not _is_int(index) or not 0 <= index < n_batches:
            raise InputError(f"batch {index!r} out of range: epoch {epoch} has {n_batches} batches of "
                             f"{batch_size} for rank {rank} of {world_size}")
        start, end = self._slice(len(self.examples(epoch)), index, batch_size, rank, world_size)
        return self.order(epoch)[start:end]

    def batch(self, epoch: int, index: int, batch_size: int, *, rank: int = 0,
              world_size: int = 1) -> dict[str, Tensor]:
        """input_ids, token_type_ids, attention_mask, labels (and next_sentence_label unless "mlm")."""
        chosen = self.batch_indices(epoch, index, batch_size, rank=rank, world_size=world_size)
        examples = self.examples(epoch)
        seeds = [mask_seed(self.config.seed, epoch, int(i)) for i in chosen]
        return collate([examples[int(i)] for i in chosen], seeds, self.ids, self.config)


def _check_sharding(batch_size: int, rank: int, world_size: int) -> None:
    if not _is_int(batch_size) or batch_size < 1:
        raise InputError(f"batch_size must be a positive integer, got {batch_size!r}")
    if not _is_int(world_size) or world_size < 1 or not _is_int(rank) or not 0 <= rank < world_size:
        raise InputError(f"rank {rank!r} of world_size {world_size!r}: need 0 <= rank < world_size")


# ---------------------------------------------------------------------------- statistics


def example_stats(examples: Examples) -> dict[str, float]:
    """Summary numbers for logs and tests: counts, mean lengths of A and B (tokens, no specials),
    and the share of label 1 (NSP random / SOP swapped) among labelled examples (nan without labels)."""
    n = len(examples)
    sizes = np.diff(examples.offsets)
    labelled = examples.labels[examples.labels != IGNORE]
    return {
        "examples": float(n),
        "tokens": float(sizes.sum()),
        "mean_tokens": float(sizes.mean()) if n else float("nan"),
        "mean_a": float(examples.a_lengths.mean()) if n else float("nan"),
        "mean_b": float((sizes - examples.a_lengths).mean()) if n else float("nan"),
        "label_1_fraction": float((labelled == 1).mean()) if len(labelled) else float("nan"),
        "documents": float(len(np.unique(examples.documents[:, 0]))) if n else 0.0,
    }
