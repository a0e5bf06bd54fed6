"""The training loop on a tiny model: schedule, accumulation = big batch, exact resume, checkpoints."""

import json
import math
import os
import signal
import sys

import pytest
import torch

from bertkit.heads import IGNORE, BertForPreTraining
from bertkit.optim import Clock, clip_gradients, fused_option, lr_factor, optimizer_and_schedule, param_groups
from bertkit.pretrain import PretrainingObjective
from bertkit.runs import Position, latest_checkpoint, next_positions
from bertkit.train import TrainConfig, fit
from tests.conftest import random_batch, tiny_config


class RandomSource:
    """Deterministic random pretraining batches addressed by (epoch, index): 4 batches an epoch."""

    def __init__(self, config, per_epoch=4):
        self.config, self.per_epoch = config, per_epoch

    def num_batches(self, epoch, batch_size, *, rank=0, world_size=1):
        return self.per_epoch

    def examples(self, epoch, index, n):
        seed = 1000 * epoch + index
        batch = random_batch(self.config, B=n, T=12, seed=seed)
        g = torch.Generator().manual_seed(seed)
        labels = batch["input_ids"].clone()
        labels[(torch.rand(labels.shape, generator=g) > 0.3) | (batch["attention_mask"] == 0)] = IGNORE
        batch["labels"] = labels
        batch["next_sentence_label"] = torch.randint(0, 2, (n,), generator=g)
        return batch

    def batch(self, epoch, index, batch_size, *, rank=0, world_size=1):
        full = self.examples(epoch, index, batch_size * world_size)
        return {k: v[rank * batch_size:(rank + 1) * batch_size] for k, v in full.items()}


class SplitSource(RandomSource):
    """The same global batches as RandomSource(2b), served as two micro-batches of b."""

    def num_batches(self, epoch, batch_size, *, rank=0, world_size=1):
        return 2 * self.per_epoch

    def batch(self, epoch, index, batch_size, *, rank=0, world_size=1):
        full = self.examples(epoch, index // 2, 2 * batch_size)
        half = index % 2
        return {k: v[half * batch_size:(half + 1) * batch_size] for k, v in full.items()}


def _objective(seed=0, dropout=0.0):
    torch.manual_seed(seed)
    config = tiny_config(hidden_dropout_prob=dropout, attention_probs_dropout_prob=dropout)
    return PretrainingObjective(BertForPreTraining(config)), config


def _config(tmp_path, **changes):
    base = dict(out=tmp_path, steps=6, batch_size=4, lr=1e-3, warmup=2, log_every=1, progress=False, precision="fp32")
    base.update(changes)
    return TrainConfig(**base)


def test_lr_schedule_by_hand():
    assert [lr_factor(s, warmup=2, total=6, schedule="linear") for s in range(6)] == [0.5, 1.0, 1.0, 0.75, 0.5, 0.25]
    assert lr_factor(4, warmup=2, total=6, schedule="cosine") == pytest.approx(0.5)
    assert lr_factor(100, warmup=2, total=6, schedule="constant") == 1.0


def test_no_weight_decay_on_biases_and_layernorm():
    objective, _ = _objective()
    decay, no_decay = param_groups(objective.model, 0.01)
    assert all(p.ndim >= 2 for p in decay["params"]) and all(p.ndim == 1 for p in no_decay["params"])
    assert no_decay["weight_decay"] == 0.0


def test_adamw_runs_fused_on_the_cpu_and_agrees_with_the_loop(tmp_path):
    """The fused kernel (one pass per weight) does the for-loop AdamW's arithmetic, rounded in another
    order: after a few steps with weight decay, the weights agree to float tolerance."""
    from bertkit.distributed import World

    objective, _ = _objective()
    loop = BertForPreTraining(objective.model.config)
    loop.load_state_dict(objective.model.state_dict())
    fused, _ = optimizer_and_schedule(objective.model, _config(tmp_path, warmup=0), Clock(None, World()))
    assert fused.defaults["fused"] is True
    plain = torch.optim.AdamW(param_groups(loop, 0.01), lr=1e-3, eps=1e-6, foreach=False)
    torch.manual_seed(0)
    for _ in range(3):
        for a, b in zip(objective.model.parameters(), loop.parameters()):
            a.grad = torch.randn_like(a)
            b.grad = a.grad.clone()
        fused.step()
        plain.step()
    for a, b in zip(objective.model.parameters(), loop.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-7)
    assert fused_option([{"params": []}]) == {}  # nothing to update: the default


def test_clip_gradients_equals_the_per_tensor_loop_bit_for_bit():
    torch.manual_seed(0)
    shapes = [(300, 64), (64,), (64, 64), (2, 64)]
    ours = [torch.nn.Parameter(torch.randn(s)) for s in shapes]
    loop = [torch.nn.Parameter(p.detach().clone()) for p in ours]
    for a, b in zip(ours, loop):
        a.grad = torch.randn_like(a)
        b.grad = a.grad.clone()
    ours.append(torch.nn.Parameter(torch.ones(3)))  # no gradient: left out, as torch does
    norm = clip_gradients(ours, 1.0)
    expected = torch.nn.utils.clip_grad_norm_(loop, 1.0, foreach=False)
    assert torch.equal(norm, expected) and float(norm) > 1.0  # it did clip
    assert all(torch.equal(a.grad, b.grad) for a, b in zip(ours, loop))


def test_positions_roll_over_epochs():
    got = next_positions(Position(0, 3), 3, lambda epoch: 4)
    assert [(p.epoch, p.index) for p in got] == [(0, 3), (1, 0), (1, 1)]


def test_sparse_objective_equals_the_dense_head_loss():
    objective, config = _objective()
    objective.eval()
    batch = RandomSource(config).batch(0, 0, 4)
    sums = objective(batch)
    counts = objective.counts(batch)
    dense = objective.model(**batch).loss
    sparse = sums.losses["mlm"] / counts["mlm"] + sums.losses["nsp"] / counts["nsp"]
    torch.testing.assert_close(sparse, dense, atol=1e-5, rtol=1e-5)


def test_loss_falls(tmp_path):
    objective, config = _objective()
    fit(objective, RandomSource(config, per_epoch=1), _config(tmp_path, steps=40, warmup=3, lr=1e-2, schedule="constant"))
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    train = [r for r in rows if r["split"] == "train"]
    assert train[-1]["loss"] < 0.7 * train[0]["loss"]
    assert (tmp_path / "model.safetensors").exists() and (tmp_path / "config.json").exists()


def test_accumulation_equals_one_big_batch(tmp_path):
    a, config = _objective()
    fit(a, RandomSource(config), _config(tmp_path / "big", batch_size=8, steps=3))
    b, _ = _objective()
    fit(b, SplitSource(config), _config(tmp_path / "accum", batch_size=4, grad_accum=2, steps=3))
    for (name, p), q in zip(a.model.named_parameters(), b.model.parameters()):
        torch.testing.assert_close(p, q, atol=1e-6, rtol=1e-5, msg=name)


class SignalAt(RandomSource):
    """Sends this process SIGINT, as Ctrl-C would, when the loop asks for micro-batch `at`."""

    def __init__(self, config, at, signum=signal.SIGINT):
        super().__init__(config)
        self.at, self.signum = at, signum

    def batch(self, epoch, index, batch_size, *, rank=0, world_size=1):
        if epoch * self.per_epoch + index == self.at:
            os.kill(os.getpid(), self.signum)
        return super().batch(epoch, index, batch_size, rank=rank, world_size=world_size)


def _rows(directory):
    return [json.loads(x) for x in (directory / "metrics.jsonl").read_text().splitlines()]


def test_interrupt_saves_and_resume_continues_exactly(tmp_path, capsys):
    straight, config = _objective(dropout=0.1)
    fit(straight, RandomSource(config), _config(tmp_path / "straight", steps=6))
    first, _ = _objective(dropout=0.1)
    with pytest.raises(KeyboardInterrupt):
        fit(first, SignalAt(config, at=4), _config(tmp_path / "resumed", steps=6))
    assert "interrupted (SIGINT) at step 5" in capsys.readouterr().out  # step 5 (micro-batch 4) completed
    second, _ = _objective(seed=123, dropout=0.1)  # different init: everything must come from the checkpoint
    fit(second, RandomSource(config), _config(tmp_path / "resumed", steps=6, resume=True))
    for p, q in zip(straight.model.parameters(), second.model.parameters()):
        assert torch.equal(p, q)
    assert [r["loss"] for r in _rows(tmp_path / "straight")] == [r["loss"] for r in _rows(tmp_path / "resumed")]


def test_the_first_row_after_a_resume_times_only_the_steps_it_ran(tmp_path, capsys, monkeypatch):
    """The window of steps restored from the checkpoint keeps its sums (so the rows equal an
    uninterrupted run's), but tokens/s counts only the tokens of steps this process timed."""
    from bertkit.metrics_log import MetricsLog

    monkeypatch.setattr(MetricsLog, "lap", lambda self: 1.0)  # every row covers "1 second"
    straight, config = _objective(dropout=0.1)
    fit(straight, RandomSource(config), _config(tmp_path / "straight", steps=6, log_every=6))
    first, _ = _objective(dropout=0.1)
    with pytest.raises(KeyboardInterrupt):
        fit(first, SignalAt(config, at=4), _config(tmp_path / "resumed", steps=6, log_every=6))
    second, _ = _objective(dropout=0.1)
    fit(second, RandomSource(config), _config(tmp_path / "resumed", steps=6, log_every=6, resume=True))
    (whole,), (resumed,) = _rows(tmp_path / "straight"), _rows(tmp_path / "resumed")
    assert resumed["loss"] == whole["loss"]
    assert resumed["tokens_per_s"] == pytest.approx(whole["tokens_per_s"] / 6)  # 1 step of 6, equal batches


# Where a signal can land: the loop's own code, data loading, forward, backward, clipping, inside the
# optimiser's update (AdamW runs fused on the CPU: between the updates of two parameter groups), the
# schedule, logging, evaluation and checkpoint writing.
_PLACES = {"batch", "forward", "backward", "clip_grad_norm_", "step", "_single_tensor_adamw", "adamw",
           "_fused_adam", "_fused_adamw_", "lerp_", "addcdiv_", "mul_", "zero_grad", "_log_window", "write", "validate", "save_checkpoint",
           "write_checkpoint", "save_pretrained", "save_file", "write_text_atomically", "next_positions",
           "_train_step", "agreed"}


class _SignalAtEvent:
    """A profiler that counts calls to the functions in _PLACES and, at call number `at`, sends the
    process a signal (twice, when `twice`: the second one stops mid-step)."""

    def __init__(self, at=None, signum=signal.SIGTERM, twice=False):
        self.at, self.signum, self.twice, self.count = at, signum, twice, 0
        self.names: list[str] = []

    def __call__(self, frame, event, arg):
        if event not in ("call", "c_call"):
            return
        name = arg.__name__ if event == "c_call" else frame.f_code.co_name
        if name not in _PLACES:
            return
        self.count += 1
        self.names.append(name)
        if self.count == self.at or (self.twice and self.count == self.at + 40):
            os.kill(os.getpid(), self.signum)


def _run(out, profiler=None, resume=False, seed=0):
    objective, config = _objective(seed=seed, dropout=0.1)
    train = _config(out, steps=6, log_every=2, save_every=2, eval_every=3, resume=resume)

    def evaluate():
        with torch.no_grad():
            return {"loss": float(objective.model.bert.embeddings.word.weight.square().sum())}

    sys.setprofile(profiler)
    try:
        fit(objective, RandomSource(config), train, evaluate=evaluate)
    finally:
        sys.setprofile(None)
    return objective


def _final_state(out):
    from bertkit.runs import read_trainer_state

    return read_trainer_state(latest_checkpoint(out))


@pytest.mark.slow
def test_a_signal_anywhere_in_a_step_resumes_bitwise(tmp_path, capsys):
    """SIGTERM/SIGINT at evenly spaced points of the whole run (and a second signal mid-step), then
    --resume: the weights, the optimiser state and the logged metrics equal the uninterrupted run's."""
    counter = _SignalAtEvent()
    straight = _run(tmp_path / "straight", counter)
    total = counter.count
    reference = _final_state(tmp_path / "straight")
    points = [round(total * (i + 0.5) / 12) for i in range(12)]
    # and for certain, a third of the way in: inside the optimiser's update, backward, evaluation,
    # writing a checkpoint's tensors, writing a metrics row
    points += [counter.names.index(name, total // 3) + 1
               for name in ("_fused_adamw_", "backward", "validate", "save_file", "write")]
    stopped = 0
    for n, at in enumerate(points):
        out = tmp_path / f"run{n}"
        signum = signal.SIGINT if n % 2 else signal.SIGTERM
        try:
            _run(out, _SignalAtEvent(at, signum, twice=n % 5 == 4))
        except KeyboardInterrupt:
            stopped += 1
        resumed = _run(out, resume=latest_checkpoint(out) is not None, seed=123) \
            if latest_checkpoint(out) is not None else _run(out / "fresh")
        for (name, p), q in zip(straight.model.named_parameters(), resumed.model.parameters()):
            assert torch.equal(p, q), f"signal at place {at} of {total}: {name} differs"
        if latest_checkpoint(out) is not None:
            state = _final_state(out)
            for k, v in reference["optimizer"]["state"].items():
                for name, t in v.items():
                    assert torch.equal(t, state["optimizer"]["state"][k][name]), f"at {at}: optimiser {k}.{name}"
            assert [(r["step"], r["loss"]) for r in _rows(out)] == \
                [(r["step"], r["loss"]) for r in _rows(tmp_path / "straight")], f"at {at}: metrics"
    assert stopped >= 15  # all but the points after the last step stopped the run
    capsys.readouterr()


def test_checkpoints_are_complete_and_pruned(tmp_path):
    objective, config = _objective()
    fit(objective, RandomSource(config), _config(tmp_path, steps=6, save_every=2, keep_checkpoints=2))
    root = tmp_path / "checkpoints"
    assert sorted(p.name for p in root.iterdir() if p.is_dir()) == ["step-00000004", "step-00000006"]
    assert latest_checkpoint(tmp_path) == root / "step-00000006"
    assert not [p for p in root.iterdir() if "tmp" in p.name]


def test_a_leftover_temporary_checkpoint_is_never_resumed(tmp_path):
    objective, config = _objective()
    fit(objective, RandomSource(config), _config(tmp_path, steps=2))
    (tmp_path / "checkpoints" / ".step-00000009.tmp-1").mkdir()  # as if killed while writing
    assert latest_checkpoint(tmp_path).name == "step-00000002"


def test_perplexity_is_exp_of_mlm_loss():
    objective, _ = _objective()
    out = objective.summarize({"n_mlm": 10, "loss_mlm": 20.0, "mlm_correct": 3, "n_nsp": 4, "loss_nsp": 2.0, "nsp_correct": 2})
    assert out["perplexity"] == pytest.approx(math.exp(2.0), rel=1e-6)
    assert out["selected_accuracy"] == 0.3 and out["nsp_accuracy"] == 0.5 and out["loss"] == pytest.approx(2.5)


def test_tensorboard_scalars_match_metrics_jsonl(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    objective, config = _objective()
    source = RandomSource(config)

    def evaluate():
        return {"loss": 1.5, "mlm_accuracy": 0.25}

    fit(objective, source, _config(tmp_path, steps=4, eval_every=2), evaluate=evaluate)
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    events = EventAccumulator(str(tmp_path / "tensorboard"))
    events.Reload()
    for split, tag in (("train", "train/loss"), ("train", "train/lr"), ("valid", "valid/loss")):
        logged = [(e.step, e.value) for e in events.Scalars(tag)]
        expected = [(r["step"], pytest.approx(r[tag.split("/")[1]], rel=1e-6)) for r in rows if r["split"] == split]
        assert logged == expected, tag
    assert [e.step for e in events.Scalars("train/loss")] == [1, 2, 3, 4]
    assert "valid/mlm_accuracy" in events.Tags()["scalars"] and "train/step" not in events.Tags()["scalars"]


# ---- layer-wise learning-rate decay, best model, early stopping ------------------------------------


def test_layer_wise_lr_decay_scales_by_depth(tmp_path):
    objective, config = _objective()
    groups = param_groups(objective.model, 0.01, layer_lr_decay=0.5)
    scale_of = {id(p): g["lr_scale"] for g in groups for p in g["params"]}
    named = dict(objective.model.named_parameters())
    L = config.num_hidden_layers
    assert scale_of[id(named["bert.embeddings.word.weight"])] == 0.5 ** (L + 1)
    assert scale_of[id(named["bert.layers.0.ffn.up.weight"])] == 0.5 ** L
    assert scale_of[id(named[f"bert.layers.{L - 1}.attention.qkv.bias"])] == 0.5
    assert scale_of[id(named["nsp.weight"])] == scale_of[id(named["bert.pooler.dense.weight"])] == 1.0
    assert all(g["weight_decay"] == (0.01 if g["params"][0].ndim >= 2 else 0.0) for g in groups)
    assert sum(len(g["params"]) for g in groups) == len(named)
    # in the loop: each optimiser group's peak lr is lr × its scale
    fit(objective, RandomSource(config), _config(tmp_path, steps=1, warmup=1, lr=1e-3, layer_lr_decay=0.5))
    from bertkit.runs import read_trainer_state

    saved = read_trainer_state(latest_checkpoint(tmp_path))["optimizer"]["param_groups"]
    assert sorted(g["initial_lr"] for g in saved) == pytest.approx(
        sorted(1e-3 * g["lr_scale"] for g in groups))
    assert {round(g["initial_lr"] / 1e-3, 6) for g in saved} == {0.5 ** k for k in range(L + 2)}


def test_best_evaluation_and_patience_by_hand():
    from bertkit.best import best_evaluation, evaluations_since_best

    history = [{"split": "valid", "step": s, "f1": f, "loss": x}
               for s, f, x in ((10, 0.5, 2.0), (20, 0.7, 1.5), (30, 0.7, 1.7), (40, 0.6, 1.4))]
    history.insert(1, {"split": "train", "step": 15, "f1": 0.99})
    assert best_evaluation(history, "f1")["step"] == 20  # the earliest of equals
    assert evaluations_since_best(history, "f1") == 2
    assert best_evaluation(history, "loss")["step"] == 40  # lower is better for losses
    assert evaluations_since_best(history, "loss") == 0


def test_fit_keeps_the_best_model_and_stops_early(tmp_path):
    from bertkit.checkpoint import read_weights

    objective, config = _objective()
    scores = iter([0.3, 0.9, 0.4, 0.5, 0.8, 0.95])
    snapshots = []

    def evaluate():
        snapshots.append(objective.model.bert.embeddings.word.weight.detach().clone())
        return {"accuracy": next(scores)}

    state = fit(objective, RandomSource(config), _config(tmp_path, steps=12, eval_every=2, best_metric="accuracy",
                                                          patience=2), evaluate=evaluate)
    valid = [r for r in state.history if r["split"] == "valid"]
    assert [r["accuracy"] for r in valid] == [0.3, 0.9, 0.4, 0.5]  # stopped: two evaluations without a better one
    assert state.step == 8
    final = read_weights(tmp_path / "model.safetensors")["bert.embeddings.word_embeddings.weight"]
    torch.testing.assert_close(final, snapshots[1])  # the final model is the best one (step 4), not the last


def test_an_unknown_best_metric_is_a_clear_error(tmp_path):
    from bertkit.errors import BertkitError

    objective, config = _objective()
    with pytest.raises(BertkitError, match=r"best metric 'f1' is not among the validation metrics \(accuracy\)"):
        fit(objective, RandomSource(config), _config(tmp_path, steps=2, eval_every=1, best_metric="f1"),
            evaluate=lambda: {"accuracy": 0.5})


def test_mse_and_every_metric_have_an_explicit_direction():
    from bertkit.best import best_evaluation
    from bertkit.errors import BertkitError
    from bertkit.options import lower_is_better

    history = [{"split": "valid", "step": s, "mse": m, "pearson": p}
               for s, m, p in ((1, 0.9, 0.1), (2, 0.2, float("nan")), (3, 0.5, 0.4))]
    assert best_evaluation(history, "mse")["step"] == 2  # lower is better: the worst model was kept once
    assert best_evaluation(history, "pearson")["step"] == 3  # an undefined correlation is never the best
    assert not lower_is_better("f1_PER") and lower_is_better("perplexity")
    with pytest.raises(BertkitError, match="--best-metric best_f1_threshold: not a metric"):
        lower_is_better("best_f1_threshold")
    with pytest.raises(BertkitError, match="--best-metric acuracy"):
        TrainConfig(out="x", best_metric="acuracy")


# ---- the run directory: no silent overwrite, a trainer state that cannot run code ----------------------


def test_an_earlier_run_is_never_overwritten_silently(tmp_path):
    from bertkit.errors import BertkitError

    objective, config = _objective()
    fit(objective, RandomSource(config), _config(tmp_path, steps=2))
    before = (tmp_path / "metrics.jsonl").read_text()
    with pytest.raises(BertkitError, match=r"holds an earlier run \(metrics.jsonl, checkpoints, model.safetensors.*"
                                           r"continue it with --resume or start over with --overwrite"):
        fit(objective, RandomSource(config), _config(tmp_path, steps=3))
    assert (tmp_path / "metrics.jsonl").read_text() == before and latest_checkpoint(tmp_path).name == "step-00000002"
    (tmp_path / "notes.txt").write_text("mine")
    fit(objective, RandomSource(config), _config(tmp_path, steps=3, overwrite=True))
    assert [p.name for p in (tmp_path / "checkpoints").glob("step-*")] == ["step-00000003"]
    assert [r["step"] for r in _rows(tmp_path)] == [1, 2, 3] and (tmp_path / "notes.txt").read_text() == "mine"


class _Payload:
    """Unpickling this would create the marker file: the code an attacker would run."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


def test_a_planted_pickle_in_a_run_directory_never_runs(tmp_path):
    """A crafted trainer.pt (transformers' Trainer CVE-2024-3568 class of bug) is refused by --resume."""
    from bertkit.errors import BertkitError

    objective, config = _objective()
    fit(objective, RandomSource(config), _config(tmp_path, steps=2, save_every=1))
    marker = tmp_path / "PWNED"
    attack = tmp_path / "checkpoints" / "step-00000009"
    attack.mkdir()
    torch.save({"step": 9, "payload": _Payload(marker)}, attack / "trainer.pt")
    (tmp_path / "checkpoints" / "latest").write_text("step-00000009\n")
    with pytest.raises(BertkitError, match="trainer.pt: refused to load"):
        fit(objective, RandomSource(config), _config(tmp_path, steps=4, resume=True))
    assert not marker.exists()
    # the trainer state bertkit writes holds no pickle at all: JSON and safetensors
    assert sorted(p.name for p in (tmp_path / "checkpoints" / "step-00000002").iterdir() if "trainer" in p.name) \
        == ["trainer_state.json", "trainer_state.safetensors"]


@pytest.mark.parametrize("damage", ["truncated tensors", "truncated json", "missing tensor"])
def test_a_damaged_trainer_state_is_one_line(tmp_path, damage):
    from bertkit.errors import BertkitError

    objective, config = _objective()
    fit(objective, RandomSource(config), _config(tmp_path, steps=2))
    directory = latest_checkpoint(tmp_path)
    if damage == "truncated tensors":
        path = directory / "trainer_state.safetensors"
        path.write_bytes(path.read_bytes()[:200])
    elif damage == "truncated json":
        path = directory / "trainer_state.json"
        path.write_text(path.read_text()[:100])
    else:
        path = directory / "trainer_state.json"
        path.write_text(path.read_text().replace('"$tensor": "state.rng.0"', '"$tensor": "state.rng.7"'))
    with pytest.raises(BertkitError) as caught:
        fit(objective, RandomSource(config), _config(tmp_path, steps=3, resume=True))
    assert "\n" not in str(caught.value) and "trainer_state" in str(caught.value)


def test_the_trainer_state_codec_round_trips_exactly():
    from bertkit.runs import decode, encode

    state = {"state": {0: {"step": torch.tensor(3.0), "exp_avg": torch.randn(2, 3)}},
             "param_groups": [{"betas": (0.9, 0.999), "params": [0], "foreach": None, "lr": 1e-3}],
             "history": [{"loss": float("nan")}], "$odd": 1}
    tensors = {}
    document = json.loads(json.dumps(encode(state, tensors)))
    back = decode(document, tensors)
    assert back["param_groups"] == state["param_groups"] and back["$odd"] == 1
    assert torch.equal(back["state"][0]["exp_avg"], state["state"][0]["exp_avg"])
    assert list(back["state"]) == [0] and math.isnan(back["history"][0]["loss"])


# ---- a time budget (issue 15) --------------------------------------------------------------------------


class FakeTime:
    """time.monotonic for train.py: each call moves the clock on by `step` seconds."""

    def __init__(self, step):
        self.now, self.step = 0.0, step

    def __call__(self):
        self.now += self.step
        return self.now


def test_a_time_budget_lays_the_schedule_over_time_and_stops_when_spent(tmp_path, monkeypatch):
    import bertkit.optim as optim

    monkeypatch.setattr(optim.time, "monotonic", FakeTime(1.0))  # one call per step: a step "takes" 1 s
    objective, config = _objective()
    state = fit(objective, RandomSource(config), _config(tmp_path, steps=1000, warmup=0.2, time_budget="10s",
                                                           schedule="linear", lr=1e-3))
    assert state.step == 10 and state.elapsed == pytest.approx(10.0)  # --steps is not used
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    lrs = [r["lr"] for r in rows if r["split"] == "train"]
    # the lr after step k is set for elapsed k s of 10: warm-up over the first 2 s, then linear decay
    assert lrs[:3] == pytest.approx([5e-4, 1e-3, 1e-3 * 7 / 8], rel=1e-4)
    assert lrs[-1] == pytest.approx(0.0, abs=1e-6)
    assert (tmp_path / "model.safetensors").exists()


def test_a_time_budget_resumes_with_the_time_already_spent(tmp_path, monkeypatch):
    import bertkit.optim as optim

    monkeypatch.setattr(optim.time, "monotonic", FakeTime(1.0))
    objective, config = _objective()
    straight = fit(objective, RandomSource(config), _config(tmp_path / "straight", warmup=0.1, time_budget="10s"))
    objective, _ = _objective()
    with pytest.raises(KeyboardInterrupt):  # Ctrl-C during step 5: it completes, then a checkpoint
        fit(objective, SignalAt(config, at=4), _config(tmp_path / "resumed", warmup=0.1, time_budget="10s"))
    objective, _ = _objective(seed=123)
    state = fit(objective, RandomSource(config), _config(tmp_path / "resumed", warmup=0.1, time_budget="10s",
                                                           resume=True))
    assert state.step == straight.step == 10 and state.elapsed == pytest.approx(10.0)  # 5 s before, 5 after
    assert [r["lr"] for r in _rows(tmp_path / "straight")] == [r["lr"] for r in _rows(tmp_path / "resumed")]


def test_time_budget_options_are_checked():
    from bertkit.errors import InputError

    for bad in ("0", "-1h", "soon", "2x"):
        with pytest.raises(InputError, match="--time-budget"):
            TrainConfig(out="x", time_budget=bad)
    with pytest.raises(InputError, match="fraction of the budget"):
        TrainConfig(out="x", time_budget="1h", warmup=100)
    assert TrainConfig(out="x", time_budget="1.5h").time_budget_seconds == 5400


def test_compile_on_a_cpu_says_it_trains_slower(tmp_path, capsys):
    """--compile is for GPUs (0.39x eager measured on this CPU): a CPU run says so once, at start."""
    from bertkit.distributed import World
    from bertkit.train import _parallel

    objective = PretrainingObjective(BertForPreTraining(tiny_config()))
    module = _parallel(objective, TrainConfig(out=tmp_path, compile=True), World(), torch.device("cpu"))
    assert "--compile trains slower on a CPU" in capsys.readouterr().err
    _parallel(objective, TrainConfig(out=tmp_path), World(), torch.device("cpu"))
    assert capsys.readouterr().err == "" and module is not objective
