"""packing.py and the packed path of the model: several examples to a row give what each alone gives."""

from __future__ import annotations

import json
import random

import pytest
import torch

from bertkit import BertForPreTraining, BertForSequenceClassification, BertForTokenClassification, BertModel
from bertkit.cli import main
from bertkit.labels import IGNORE
from bertkit.model import packed_positions, same_example
from bertkit.packing import (
    PackedBatches,
    first_fit_decreasing,
    pack_batch,
    packed_padding,
    padding_report,
)
from bertkit.padding import pad, pad_inputs
from bertkit.pretrain import pretraining_step
from bertkit.tasks.base import FeatureBatches
from tests.conftest import tiny_config
from tests.test_pretrain import prepared  # noqa: F401 (the prepared Penn Treebank shards)

TOKENS = ("input_ids", "token_type_ids")
LENGTHS = [9, 3, 5, 12, 2, 7, 4, 1]


def config(**changes):
    # large weights, so that a position or a key attended by mistake shows in every output
    return tiny_config(initializer_range=0.3, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0, **changes)


def examples(lengths=LENGTHS, *, seed=0, vocab=99):
    g = random.Random(seed)
    ids = [[g.randrange(1, vocab) for _ in range(n)] for n in lengths]
    types = [[0] * (n // 2) + [1] * (n - n // 2) for n in lengths]
    return ids, types


def unpacked(lengths=LENGTHS, **extra):
    ids, types = examples(lengths)
    batch = pad_inputs(ids, 0, token_types=types)
    batch.update(extra)
    return batch


def packed(batch, row_length=14, token_keys=TOKENS):
    return pack_batch(batch, row_length=row_length, token_keys=token_keys, pads={"input_ids": 0, "labels": IGNORE})


def order_of(batch_with_index):
    return batch_with_index["index"].tolist()


def per_example(hidden, mask, lengths, order=None):
    """(B, T, C) states of a batch -> the real tokens of every example, in `order`, one after another."""
    if order is None:  # packed: the real tokens row after row are the examples in packed order
        return hidden[mask > 0]
    return torch.cat([hidden[b, : lengths[b]] for b in order])


# ---- the packing algorithm ------------------------------------------------------------------------------


def test_first_fit_decreasing_by_hand():
    # longest first: 6 opens row 0, 5 row 1, 4 fills row 0, 3 and 2 fill row 1, 1 opens row 2
    assert first_fit_decreasing([3, 5, 1, 6, 2, 4], 10) == [[3, 5], [1, 0, 4], [2]]
    assert first_fit_decreasing([], 8) == []
    assert first_fit_decreasing([12, 2], 8) == [[0], [1]]  # too long for a row: a row of its own


@pytest.mark.parametrize("seed", range(5))
def test_first_fit_decreasing_properties(seed):
    g = random.Random(seed)
    lengths = [g.randint(1, 128) for _ in range(g.randint(1, 400))]
    rows = first_fit_decreasing(lengths, 128)
    assert sorted(i for row in rows for i in row) == list(range(len(lengths)))  # each example once
    assert all(sum(lengths[i] for i in row) <= 128 for row in rows)
    lower = -(-sum(lengths) // 128)
    assert len(rows) <= 11 / 9 * lower + 1  # FFD's bound (Johnson 1973; Dósa 2007: 11/9 OPT + 6/9)
    assert rows == first_fit_decreasing(lengths, 128)  # a pure function of the lengths
    # first fit: no example could have gone into an earlier row than its own when it was placed
    placed = [0] * len(rows)
    for i in sorted(range(len(lengths)), key=lambda i: -lengths[i]):
        r = next(k for k, row in enumerate(rows) if i in row)
        assert all(placed[k] + lengths[i] > 128 for k in range(r) if placed[k])
        placed[r] += lengths[i]


def test_pack_batch_by_hand():
    batch = pad_inputs([[11, 12, 13], [21, 22], [31, 32, 33, 34]], 0, token_types=[[0, 0, 1], [0, 1], [0, 0, 1, 1]])
    batch["labels"] = pad([[1, IGNORE, 3], [4, 5], [6, 7, 8, 9]], IGNORE)
    batch["next_sentence_label"] = torch.tensor([0, 1, 0])
    out = packed(batch, row_length=5, token_keys=("input_ids", "token_type_ids", "labels"))
    # 4 tokens open row 0, 3 tokens row 1, and the 2 fit beside the 3
    assert out["input_ids"].tolist() == [[31, 32, 33, 34, 0], [11, 12, 13, 21, 22]]
    assert out["attention_mask"].tolist() == [[1, 1, 1, 1, 0], [1, 1, 1, 2, 2]]
    assert out["token_type_ids"].tolist() == [[0, 0, 1, 1, 0], [0, 0, 1, 0, 1]]
    assert out["labels"].tolist() == [[6, 7, 8, 9, IGNORE], [1, IGNORE, 3, 4, 5]]
    assert out["next_sentence_label"].tolist() == [0, 0, 1]  # per example, in the packed order: 2, 0, 1


def test_positions_and_attention_of_packed_rows_by_hand():
    mask = torch.tensor([[1, 1, 2, 2, 2, 0], [1, 1, 1, 1, 0, 0]])
    assert packed_positions(mask).tolist() == [[0, 1, 0, 1, 2, 0], [0, 1, 2, 3, 0, 1]]
    attend = same_example(mask)[0, 0].long()
    assert attend[2].tolist() == [0, 0, 1, 1, 1, 0] and attend[5].tolist() == [0, 0, 0, 0, 0, 1]


# ---- packed == unpacked ---------------------------------------------------------------------------------


def test_encoder_packed_equals_each_example_alone():
    torch.manual_seed(0)
    model = BertModel(config()).eval()
    batch = unpacked(index=torch.arange(len(LENGTHS)))
    p = packed(batch)
    assert p["attention_mask"].max() > 1 and p["input_ids"].shape[0] < len(LENGTHS)
    with torch.no_grad():
        a = model(batch["input_ids"], batch["token_type_ids"], batch["attention_mask"])
        b = model(p["input_ids"], p["token_type_ids"], p["attention_mask"])
    order = order_of(p)
    torch.testing.assert_close(per_example(b.last_hidden_state, p["attention_mask"], LENGTHS),
                               per_example(a.last_hidden_state, None, LENGTHS, order), atol=1e-5, rtol=0)
    torch.testing.assert_close(b.pooler_output, a.pooler_output[order], atol=1e-5, rtol=0)


def test_hidden_states_of_packed_rows_take_the_padded_path():
    torch.manual_seed(0)
    model = BertModel(config()).eval()
    p = packed(unpacked())
    with torch.no_grad():
        plain = model(p["input_ids"], p["token_type_ids"], p["attention_mask"])
        extra = model(p["input_ids"], p["token_type_ids"], p["attention_mask"], output_hidden_states=True)
    real = p["attention_mask"] > 0
    torch.testing.assert_close(extra.hidden_states[-1][real], plain.last_hidden_state[real], atol=1e-5, rtol=0)


def test_a_mask_of_ones_and_zeros_is_one_example_per_row():
    torch.manual_seed(0)
    model = BertModel(config()).eval()
    batch = unpacked([9, 12, 7, 10])
    p = packed(batch, row_length=12)  # no two examples fit a row: one each, longest first
    assert p["attention_mask"].max() == 1
    with torch.no_grad():
        a = model(batch["input_ids"], batch["token_type_ids"], batch["attention_mask"])
        b = model(p["input_ids"], p["token_type_ids"], p["attention_mask"])
    order = [1, 3, 0, 2]
    torch.testing.assert_close(b.pooler_output, a.pooler_output[order], atol=1e-5, rtol=0)


def _grads(model):
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


def _same_grads(a, b):
    assert a.keys() == b.keys() and len(a) > 10
    for name in a:
        torch.testing.assert_close(a[name], b[name], atol=1e-5, rtol=1e-5, msg=name)


def _run(model, batch):
    """The head's output on a batch with labels, and the gradients of its loss (zeroed after)."""
    out = model(batch["input_ids"], batch["token_type_ids"], batch["attention_mask"], labels=batch["labels"])
    out.loss.backward()
    grads = _grads(model)
    model.zero_grad()
    return out, grads


def test_classification_logits_loss_and_gradients():
    torch.manual_seed(0)
    model = BertForSequenceClassification(config(id2label={0: "a", 1: "b", 2: "c"}))
    labels = torch.tensor([0, 1, 2, 1, 0, 2, 2, 1])
    batch = unpacked(labels=labels)
    p = packed(batch)
    (a, ga), (b, gb) = _run(model, batch), _run(model, p)
    assert b.logits.shape == (len(LENGTHS), 3)
    # one logit row per example, in the packed order (the packed labels' order)
    order = packed(unpacked(index=torch.arange(len(LENGTHS))))["index"]
    assert p["labels"].tolist() == labels[order].tolist()
    torch.testing.assert_close(b.logits, a.logits[order], atol=1e-5, rtol=0)
    torch.testing.assert_close(b.loss, a.loss, atol=1e-6, rtol=0)
    _same_grads(ga, gb)


def test_token_classification_logits_loss_and_gradients():
    torch.manual_seed(0)
    model = BertForTokenClassification(config(id2label={0: "a", 1: "b", 2: "c", 3: "d"}))
    g = torch.Generator().manual_seed(1)
    labels = pad([torch.randint(0, 4, (n,), generator=g).tolist() for n in LENGTHS], IGNORE)
    labels[:, 0] = IGNORE  # [CLS] takes no part, as the featurizer does it
    batch = unpacked(labels=labels, index=torch.arange(len(LENGTHS)))
    p = packed(batch, token_keys=("input_ids", "token_type_ids", "labels"))
    (a, ga), (b, gb) = _run(model, batch), _run(model, p)
    torch.testing.assert_close(per_example(b.logits, p["attention_mask"], LENGTHS),
                               per_example(a.logits, None, LENGTHS, order_of(p)), atol=1e-5, rtol=0)
    torch.testing.assert_close(b.loss, a.loss, atol=1e-6, rtol=0)
    _same_grads(ga, gb)


def test_pretraining_step_mlm_and_nsp_and_gradients():
    torch.manual_seed(0)
    model = BertForPreTraining(config())
    g = torch.Generator().manual_seed(2)
    ids = unpacked()["input_ids"]
    mlm = torch.where((torch.rand(ids.shape, generator=g) < 0.3) & (ids > 0), ids, IGNORE)
    batch = unpacked(labels=mlm, next_sentence_label=torch.tensor([0, 1, 1, 0, 1, 0, 0, 1]))
    p = packed(batch, token_keys=("input_ids", "token_type_ids", "labels"))
    steps = []
    for b in (batch, p):
        model.zero_grad()
        step = pretraining_step(model, b)
        sum(loss.total for loss in step.losses.values()).backward()
        steps.append((step, _grads(model)))
    (a, ga), (b, gb) = steps
    for key in ("mlm", "nsp"):
        torch.testing.assert_close(b.losses[key].total, a.losses[key].total, atol=1e-5, rtol=0)
    assert b.metrics == a.metrics or all(int(b.metrics[k]) == int(a.metrics[k]) for k in a.metrics)
    _same_grads(ga, gb)


# ---- batch sources and the report ---------------------------------------------------------------------


def test_packed_batches_hold_the_same_examples_as_the_source():
    ids, types = examples([g % 13 + 2 for g in range(40)])
    features = [{"input_ids": i, "token_type_ids": t, "labels": k % 3} for k, (i, t) in enumerate(zip(ids, types))]
    source = FeatureBatches(features, pad_id=0, seed=3)
    packed_source = PackedBatches(source, row_length=32, token_keys=TOKENS, pads={"input_ids": 0})
    assert packed_source.num_batches(1, 8) == source.num_batches(1, 8) == 5
    for index in range(5):
        a, b = source.batch(1, index, 8), packed_source.batch(1, index, 8)
        assert b["input_ids"].shape[1] <= 32 and b["input_ids"].shape[0] < 8
        assert int((b["attention_mask"] > 0).sum()) == int(a["attention_mask"].sum())
        assert sorted(b["labels"].tolist()) == sorted(a["labels"].tolist())
        assert sorted(b["input_ids"][b["input_ids"] > 0].tolist()) == sorted(a["input_ids"][a["input_ids"] > 0].tolist())


def test_padding_report_counts_slots():
    assert packed_padding([3, 2, 4], 5).slots == 10 and packed_padding([3, 2, 4], 5).real == 9
    ids, types = examples([30, 3, 3, 3] * 4)
    features = [{"input_ids": i, "token_type_ids": t, "labels": 0} for i, t in zip(ids, types)]
    source = FeatureBatches(features, pad_id=0, shuffle=False)
    line = padding_report(source, 4, row_length=39)  # each batch: 39 real in 4 x 30 slots, packed 1 x 39
    assert line.startswith("padding: 68% of token slots (packed with --pack: 0%")
    packed_line = padding_report(PackedBatches(source, row_length=39, token_keys=TOKENS, pads={}), 4, row_length=39)
    assert packed_line.startswith("padding: 0% of token slots, packed (unpacked: 68%")


# ---- the command line -----------------------------------------------------------------------------------


def test_pack_and_compile_are_refused_together(tmp_path):
    from bertkit.errors import InputError
    from bertkit.settings import TrainConfig

    TrainConfig(out=tmp_path, pack=True)
    with pytest.raises(InputError, match="--pack does not work with --compile"):
        TrainConfig(out=tmp_path, pack=True, compile=True)


@pytest.mark.parametrize("task", ["qa", "choice", "embed"])
def test_finetune_refuses_pack_for_other_tasks_before_any_work(tmp_path, capsys, task):
    data = tmp_path / "train.jsonl"
    data.write_text("{}\n")
    out = tmp_path / "out"
    assert main(["finetune", "--task", task, "--train", str(data), "--out", str(out), "--pack"]) == 2
    err = capsys.readouterr().err
    assert f"--pack packs pretraining and finetune --task classify or tag, not --task {task}" in err
    assert err.count("\n") == 1 and not out.exists()


def test_finetune_classify_with_pack_logs_padding(tmp_path, tiny_model_dir, capsys):
    data = tmp_path / "train.csv"
    data.write_text("text,label\n" + "".join(f"{'a short text ' * (i % 5 + 1)}{i},{'ab'[i % 2]}\n" for i in range(16)))
    out = tmp_path / "run"
    assert main(["finetune", "--task", "classify", "--model", str(tiny_model_dir), "--train", str(data),
                 "--out", str(out), "--epochs", "1", "--batch-size", "8", "--log-every", "1", "--no-progress",
                 "--max-length", "64", "--pack", "--precision", "fp32"]) == 0
    assert "of token slots, packed (unpacked:" in capsys.readouterr().out
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    train = [r for r in rows if r["split"] == "train"]
    assert len(train) == 2 and all(0 <= r["padding"] < 0.5 for r in train)


@pytest.mark.slow
def test_pretrain_with_pack_trains_exactly_as_without(prepared, tmp_path, capsys):  # noqa: F811 (the fixture)
    """No dropout (the fixture's config): the packed run sees the same examples and masks, so its
    losses are the unpacked run's. (MLM alone, half of its examples short: NSP pairs of Penn Treebank
    sentences nearly always fill 64 tokens, leaving nothing to pack.)"""
    from tests.test_pretrain import _pretrain_args, _rows

    runs = {}
    for pack in (False, True):
        out = tmp_path / f"pack-{pack}"
        args = _pretrain_args(prepared, out, "--steps", "4", "--objective", "mlm", "--short-seq-prob", "0.5")
        assert main(args + (["--pack"] if pack else [])) == 0
        runs[pack] = [r for r in _rows(out) if r["split"] == "train"]
    printed = capsys.readouterr().out
    assert "padding: 26% of token slots (packed with --pack: 17%; first 50 batches)" in printed
    assert "padding: 17% of token slots, packed (unpacked: 26%; first 50 batches)" in printed
    assert len(runs[True]) == len(runs[False]) == 2
    for a, b in zip(runs[False], runs[True]):
        assert abs(a["loss"] - b["loss"]) < 1e-5 and b["padding"] <= a["padding"]
