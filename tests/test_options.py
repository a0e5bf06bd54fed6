"""options.py: every option is checked where it enters, with one message for CLI and API users."""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path
from typing import Literal

import pytest

from bertkit import options
from bertkit.cli import add_config_options, main
from bertkit.demo import DemoConfig
from bertkit.errors import InputError
from bertkit.finetune import FinetuneArgs
from bertkit.options import at_least, check_train_config, greater_than, in_range, one_of
from bertkit.pretrain import PretrainArgs
from bertkit.tasks import DataOptions
from bertkit.train import TrainConfig


@pytest.mark.parametrize(
    "check, message",
    [
        (lambda: at_least("batch_size", 0, 1), "--batch-size must be at least 1, got 0"),
        (lambda: at_least("batch_size", 2.5, 1), "--batch-size must be an integer, got 2.5"),
        (lambda: at_least("batch_size", True, 1), "--batch-size must be an integer, got True"),
        (lambda: at_least("steps", "10", 1), "--steps must be an integer, got '10'"),
        (lambda: greater_than("lr", 0.0, 0), "--lr must be greater than 0, got 0"),
        (lambda: greater_than("lr", float("inf"), 0), "--lr must be a finite number, got inf"),
        (lambda: in_range("mask_rate", 1.5, 0, 1, low_open=True, high_open=True),
         "--mask-rate must be greater than 0 and less than 1, got 1.5"),
        (lambda: in_range("valid_fraction", 1, 0, 1, high_open=True),
         "--valid-fraction must be at least 0 and less than 1, got 1"),
        (lambda: one_of("long_text", "windows", ("truncate", "window")),
         "--long-text must be one of truncate, window; got 'windows' (did you mean window?)"),
        (lambda: options.seed("seed", -1), "--seed must be at least 0 and at most 4294967295, got -1"),
        (lambda: options.betas((0.9,)), "--betas must be two numbers, got (0.9,)"),
        (lambda: options.model_spec("config", "tinny"),
         "--config tinny: neither a preset (tiny, mini, small, medium, base, large) nor an existing "
         "config.json (did you mean tiny?)"),
    ],
)
def test_validators_name_the_option_as_the_cli_spells_it(check, message):
    with pytest.raises(InputError) as e:
        check()
    assert str(e.value) == message


def test_validators_accept_good_values(tmp_path):
    at_least("batch_size", 1, 1)
    at_least("warmup", 0.5, 0, integer=False)
    greater_than("epochs", 0.5, 0)
    in_range("short_seq_prob", 1.0, 0, 1)
    one_of("schedule", "cosine", options.SCHEDULES)
    (tmp_path / "config.json").write_text("{}")
    options.model_spec("config", str(tmp_path))  # a directory holding a config.json
    options.model_spec("config", str(tmp_path / "config.json"))


def train_config(**changes) -> TrainConfig:
    return dataclasses.replace(TrainConfig(out=Path("runs/x")), **changes)


@pytest.mark.parametrize(
    "changes, message",
    [
        ({"steps": -5}, "--steps must be at least 1, got -5"),
        ({"batch_size": 0}, "--batch-size must be at least 1, got 0"),
        ({"grad_accum": 0}, "--grad-accum must be at least 1, got 0"),
        ({"lr": -1e-4}, "--lr must be greater than 0, got -0.0001"),
        ({"warmup": -1.0}, "--warmup must be at least 0, got -1"),
        ({"schedule": "cosin"}, "--schedule must be one of linear, cosine, constant; got 'cosin'"),
        ({"weight_decay": -0.1}, "--weight-decay must be at least 0, got -0.1"),
        ({"layer_lr_decay": 0.0}, "--layer-lr-decay must be greater than 0 and at most 1, got 0"),
        ({"betas": (0.9, 1.0)}, "--betas must be at least 0 and less than 1, got 1"),
        ({"eps": -1e-8}, "--eps must be at least 0, got -1e-08"),
        ({"max_grad_norm": -1.0}, "--max-grad-norm must be at least 0, got -1"),
        ({"precision": "fp16"}, "--precision must be one of auto, fp32, bf16; got 'fp16'"),
        ({"seed": -1}, "--seed must be at least 0"),
        ({"eval_every": -1}, "--eval-every must be at least 0, got -1"),
        ({"save_every": -1}, "--save-every must be at least 0, got -1"),
        ({"log_every": 0}, "--log-every must be at least 1, got 0"),
        ({"keep_checkpoints": 0}, "--keep-checkpoints must be at least 1, got 0"),
        ({"patience": -1}, "--patience must be at least 0, got -1"),
        ({"best_metric": ""}, "--best-metric must be a non-empty string"),
    ],
)
def test_check_train_config(changes, message):
    check_train_config(train_config())  # the defaults pass
    with pytest.raises(InputError, match="^" + message.replace("(", r"\(").replace(")", r"\)")):
        check_train_config(train_config(**changes))


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda: PretrainArgs(data=Path("d"), objective="mlm+nps"), "--objective must be one of mlm, mlm+nsp, mlm+sop"),
        (lambda: PretrainArgs(data=Path("d"), config="huge"), "--config huge: neither a preset"),
        (lambda: PretrainArgs(data=Path("d"), max_length=4), "--max-length must be at least 5, got 4"),
        (lambda: PretrainArgs(data=Path("d"), mask_rate=0.0), "--mask-rate must be greater than 0 and less than 1"),
        (lambda: PretrainArgs(data=Path("d"), short_seq_prob=1.5), "--short-seq-prob must be at least 0 and at most 1"),
        (lambda: PretrainArgs(data=Path("d"), eval_batches=-1), "--eval-batches must be at least 0, got -1"),
        (lambda: FinetuneArgs(task="clasify", model="m", train=Path("t")), "--task must be one of classify, tag"),
        (lambda: FinetuneArgs(task="tag", model="m", train=Path("t"), epochs=0), "--epochs must be greater than 0"),
        (lambda: FinetuneArgs(task="tag", model="m", train=Path("t"), eval_batch_size=0),
         "--eval-batch-size must be at least 1, got 0"),
        (lambda: DataOptions(long_text="windows"), "--long-text must be one of truncate, window; got 'windows'"),
        (lambda: DataOptions(max_length=2), "--max-length must be at least 5, got 2"),
        (lambda: DataOptions(stride=-1), "--stride must be at least 0, got -1"),
        (lambda: DataOptions(max_length=16, long_text="window", stride=16),
         "--stride 16 must be less than --max-length 16 minus 2"),
        (lambda: DataOptions(label_separator=""), "--label-separator must be a non-empty string"),
        (lambda: DataOptions(tag_column="2"), "--tag-column must be an integer"),
        (lambda: DataOptions(no_answer_threshold=float("nan")), "--no-answer-threshold must be a finite number"),
        (lambda: DemoConfig(steps=0), "--steps must be at least 1, got 0"),
        (lambda: DemoConfig(vocab_size=5), "--vocab-size must be at least 6, got 5"),
        (lambda: DemoConfig(config="tinyy"), "--config tinyy: neither a preset"),
        (lambda: DemoConfig(lr=0.0), "--lr must be greater than 0"),
    ],
)
def test_configs_check_their_fields_for_api_users_too(make, message):
    with pytest.raises(InputError, match="^" + message.replace("+", r"\+").replace("(", r"\(")):
        make()


def test_good_configs_pass():
    PretrainArgs(data=Path("d"), objective="mlm", max_length=3)
    FinetuneArgs(task="qa", model="m", train=Path("t"), epochs=0.5)
    dataclasses.replace(DataOptions(max_length=16, long_text="window", stride=13), stride=0)
    DemoConfig()


def test_argparse_types():
    assert options.positive_int("3") == 3 and options.non_negative_int("0") == 0
    assert options.float_in(0, 1, high_open=True)("0.5") == 0.5
    assert options.seed_int("4294967295") == 4294967295
    for parse, text, message in [
        (options.positive_int, "0", "must be at least 1, got 0"),
        (options.positive_int, "1.5", "must be an integer, got '1.5'"),
        (options.float_in(0, 1, high_open=True), "1", "must be at least 0 and less than 1, got 1"),
        (options.float_in(0), "nan", "must be a finite number, got nan"),
        (options.seed_int, "4294967296", "must be at least 0 and at most 4294967295, got 4294967296"),
        (options.choice(["jieba"]), "jeiba", "must be one of jieba; got 'jeiba' (did you mean jieba?)"),
    ]:
        with pytest.raises(argparse.ArgumentTypeError) as e:
            parse(text)
        assert str(e.value) == message


@dataclasses.dataclass
class Example:
    mode: str = dataclasses.field(default="a", metadata=options.choices(("a", "b")))
    """Mode from metadata."""
    kind: Literal["x", "y"] = "x"
    """Kind from a Literal."""
    other: str = "free"
    """Anything."""


def test_config_options_take_their_choices_from_the_field():
    parser = argparse.ArgumentParser()
    add_config_options(parser, Example, choices={"other": ("free", "busy")})
    assert vars(parser.parse_args(["--mode", "b", "--kind", "y"])) == {"mode": "b", "kind": "y", "other": "free"}
    help_text = parser.format_help()
    assert "{a,b}" in help_text and "{x,y}" in help_text and "{free,busy}" in help_text


@pytest.mark.parametrize(
    "argv, message",
    [
        (["finetune", "--task", "classify", "--model", "m", "--train", "{train}", "--out", "{out}",
          "--long-text", "windows"], "--long-text must be one of truncate, window; got 'windows'"),
        (["finetune", "--task", "clasify", "--model", "m", "--train", "{train}", "--out", "{out}"],
         "--task must be one of classify, tag, qa, choice, embed; got 'clasify' (did you mean classify?)"),
        (["finetune", "--task", "classify", "--model", "m", "--train", "{train}", "--out", "{out}",
          "--batch-size", "-3"], "--batch-size must be at least 1, got -3"),
        (["finetune", "--task", "classify", "--model", "m", "--train", "{train}", "--out", "{out}",
          "--epochs", "0"], "--epochs must be greater than 0, got 0"),
        (["finetune", "--task", "classify", "--model", "m", "--train", "{train}", "--out", "{out}",
          "--precision", "fp16"], "--precision must be one of auto, fp32, bf16; got 'fp16'"),
        (["finetune", "--task", "classify", "--model", "m", "--train", "{out}", "--out", "{out}"],
         "{out}: is a directory, not a file"),
        (["pretrain", "--data", "d", "--out", "{out}", "--steps", "-5"], "--steps must be at least 1, got -5"),
        (["pretrain", "--data", "d", "--out", "{out}", "--objective", "mlm+nps"],
         "--objective must be one of mlm, mlm+nsp, mlm+sop; got 'mlm+nps' (did you mean mlm+nsp?)"),
        (["pretrain", "--data", "d", "--out", "{out}", "--schedule", "cosin"],
         "--schedule must be one of linear, cosine, constant; got 'cosin' (did you mean cosine?)"),
        (["pretrain", "--data", "d", "--out", "{out}", "--config", "tinyy"], "--config tinyy: neither a preset"),
        (["pretrain", "--data", "d", "--out", "{out}", "--lr", "nan"], "--lr must be a finite number, got nan"),
        (["pretrain", "--data", "d", "--out", "{out}", "--betas", "0.9", "1.5"],
         "--betas must be at least 0 and less than 1, got 1.5"),
        (["pretrain", "--data", "d", "--out", "{train}"], "{train}: is a file, not a directory"),
        (["evaluate", "--model", "m", "--data", "{train}", "--batch-size", "0"], "--batch-size must be at least 1, got 0"),
        (["predict", "--model", "m", "--input", "{train}", "--long-text", "windows"], "--long-text must be one of"),
        (["predict", "--model", "m", "--input", "{out}"], "{out}: is a directory, not a file"),
        (["embed", "--batch-size", "0"], "--batch-size must be at least 1, got 0"),
        (["embed", "--max-length", "-1"], "--max-length must be at least 3, got -1"),
        (["prepare", "{train}", "--tokenizer", "t", "--out", "{out}", "--valid-fraction", "1"],
         "--valid-fraction must be at least 0 and less than 1, got 1"),
        (["prepare", "{train}", "--tokenizer", "t", "--out", "{out}", "--shard-tokens", "0"],
         "--shard-tokens must be at least 1, got 0"),
        (["prepare", "{train}", "--tokenizer", "t", "--out", "{out}", "--segmenter", "jeiba"],
         "--segmenter must be one of jieba; got 'jeiba'"),
        (["prepare", "{train}", "--tokenizer", "t", "--out", "{out}", "--document-sentences", "0"],
         "--document-sentences must be at least 1, got 0"),
        (["prepare", "{train}", "--tokenizer", "t", "--out", "{out}", "--seed", "-1"], "--seed must be at least 0"),
        (["tokenizer", "train", "{train}", "--out", "{out}", "--vocab-size", "5"], "--vocab-size must be at least 6"),
        (["tokenizer", "train", "{train}", "--out", "{out}", "--min-frequency", "-1"],
         "--min-frequency must be at least 0, got -1"),
        (["tokenizer", "train", "{train}", "--out", "{train}"], "{train}: is a file, not a directory"),
        (["fill-mask", "--model", "m", "a [MASK]", "--top-k", "0"], "--top-k must be at least 1, got 0"),
        (["demo", "--steps", "0"], "--steps must be at least 1, got 0"),
        (["pretrain", "--out", "{out}"], "the following arguments are required: --data (see bertkit pretrain --help)"),
    ],
)
def test_bad_options_fail_in_one_line_before_any_work(capsys, tmp_path, monkeypatch, argv, message):
    def no_work(*args, **kwargs):
        raise AssertionError("data or a model was loaded before the options were checked")

    for target in ("bertkit.pretrain.run_pretrain", "bertkit.finetune.run_finetune", "bertkit.predict.run_evaluate",
                   "bertkit.predict.run_predict", "bertkit.demo.run_demo", "bertkit.data.shards.prepare",
                   "bertkit.vocab.train_vocabulary", "bertkit.embedding.Embedder.from_pretrained",
                   "bertkit.fill_mask.FillMask.from_pretrained", "bertkit.tokenizer.Tokenizer.from_pretrained"):
        monkeypatch.setattr(target, no_work)
    (tmp_path / "train.csv").write_text("text,label\na,b\n")
    values = {"train": tmp_path / "train.csv", "out": tmp_path}
    code = main([a.format(**values) for a in argv])
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("bertkit: error: " + message.format(**values)), err
    assert err.count("\n") == 1 and "Traceback" not in err


def test_plural():
    assert [options.plural(n, "example") for n in (0, 1, 2, 2000)] == \
        ["0 examples", "1 example", "2 examples", "2,000 examples"]
    assert options.plural(1, "process", "processes") == "1 process" and options.plural(3, "entry", "entries") == \
        "3 entries"


@dataclasses.dataclass
class Files:
    files: list[Path] = dataclasses.field(metadata=options.cli(positional=True, metavar="FILE"))
    """Inputs."""
    output: str = dataclasses.field(default="-", metadata=options.cli(short="-o", metavar="FILE"))
    """Where to write."""
    count: int = 3
    """How many."""


def test_positional_fields_short_flags_and_typed_values():
    parser = argparse.ArgumentParser()
    add_config_options(parser, Files)
    assert vars(parser.parse_args(["a", "b", "-o", "x", "--count", "4"])) == \
        {"files": [Path("a"), Path("b")], "output": "x", "count": 4}
    help_text = parser.format_help()
    assert "FILE [FILE ...]" in help_text and "-o FILE, --output FILE" in help_text and "(default: 3)" in help_text
    assert options.int_in()("-7") == -7
    with pytest.raises(argparse.ArgumentTypeError, match="must be an integer, got 'x'"):
        options.int_in()("x")


def test_pretraining_options_are_defined_once():
    from bertkit.data.pretraining import PretrainingConfig

    assert issubclass(PretrainArgs, PretrainingConfig)  # the example and masking fields are PretrainingConfig's
    own = {f.name for f in dataclasses.fields(PretrainArgs)} - {f.name for f in dataclasses.fields(PretrainingConfig)}
    assert own == {"data", "config", "init_from", "eval_batches"}
    with pytest.raises(InputError, match=r"^--objective must be one of mlm, mlm\+nsp, mlm\+sop; got 'nsp'"):
        PretrainingConfig(objective="nsp")
    with pytest.raises(InputError, match="^--max-predictions-per-seq must be at least 1, got 0"):
        PretrainingConfig(max_predictions_per_seq=0)
    with pytest.raises(InputError, match="^--max-length must be at least 3, got 2"):
        PretrainingConfig(objective="mlm", max_length=2)
