"""The bertkit command: each subcommand once, and one-line errors for bad input."""

import dataclasses
import json
import subprocess
import sys

import numpy as np
import pytest

from bertkit.cli import main


def run(capsys, *argv):
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_similarity_demo(capsys):
    code, out, _ = run(capsys, "similarity")
    assert code == 0 and "cosine similarity" in out and "A man is playing a guitar." in out


def test_embed_to_npy_and_jsonl(capsys, tmp_path):
    src = tmp_path / "texts.txt"
    src.write_text("hello world\n\nsecond line\n", encoding="utf-8")
    code, _, err = run(capsys, "embed", "-i", str(src), "-o", str(tmp_path / "v.npy"))
    assert code == 0 and "wrote 2 vectors" in err
    vectors = np.load(tmp_path / "v.npy")
    assert vectors.shape == (2, 384)
    code, _, _ = run(capsys, "embed", "-i", str(src), "-o", str(tmp_path / "v.jsonl"))
    rows = [json.loads(line) for line in (tmp_path / "v.jsonl").read_text().splitlines()]
    assert [r["text"] for r in rows] == ["hello world", "second line"]
    np.testing.assert_allclose(np.array(rows[0]["embedding"]), vectors[0], atol=1e-6)


@pytest.mark.parametrize("output_precision", ["float32", "ubinary", "int8"])
def test_embed_streams_slices_to_the_output_as_one_call_would(capsys, tmp_path, monkeypatch, output_precision):
    """`bertkit embed` reads, embeds and writes a slice of texts at a time (here 3): the file holds what
    embedding every text in one call gives (int8 still takes its ranges from all the vectors)."""
    from bertkit.embedding import embed

    texts = ["a short one", "a somewhat longer sentence than the others here", "x", "héllo wörld", "", "7 8 9",
             "the last text, in a slice of its own"]
    src = tmp_path / "texts.txt"
    src.write_text("\n".join(texts) + "\n", encoding="utf-8")
    monkeypatch.setattr("bertkit.embedding.TEXTS_AT_ONCE", 3)
    expected = embed([t for t in texts if t], output_precision=output_precision, batch_size=2)
    for output in ("v.npy", "v.jsonl"):
        code, _, err = run(capsys, "embed", "-i", str(src), "-o", str(tmp_path / output), "--batch-size", "2",
                           "--output-precision", output_precision)
        assert code == 0 and "wrote 6 vectors" in err
    np.testing.assert_allclose(np.load(tmp_path / "v.npy"), expected, atol=1e-6)
    assert np.load(tmp_path / "v.npy").dtype == expected.dtype
    rows = [json.loads(line) for line in (tmp_path / "v.jsonl").read_text().splitlines()]
    assert [r["text"] for r in rows] == [t for t in texts if t]
    np.testing.assert_allclose(np.array([r["embedding"] for r in rows]), expected, atol=1e-6)


def test_embed_reads_stdin_in_slices(capsys, tmp_path, monkeypatch):
    import io

    from bertkit.embedding import embed

    monkeypatch.setattr("bertkit.embedding.TEXTS_AT_ONCE", 2)
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(b"one\r\ntwo\n\nthree\nfour\nfive")))
    code, out, _ = run(capsys, "embed", "-i", "-", "-o", "-")
    rows = [json.loads(line) for line in out.splitlines()]
    assert code == 0 and [r["text"] for r in rows] == ["one", "two", "three", "four", "five"]
    np.testing.assert_allclose(np.array([r["embedding"] for r in rows]), embed([r["text"] for r in rows]),
                               atol=1e-6)


def test_embed_reads_a_pipe_once(capsys, tmp_path):
    import os
    import threading

    fifo = tmp_path / "texts.fifo"
    os.mkfifo(fifo)
    writer = threading.Thread(target=lambda: fifo.write_text("one\ntwo\n"))  # blocks until embed opens it
    writer.start()
    code, out, err = run(capsys, "embed", "-i", str(fifo), "-o", "-")
    writer.join(5)
    assert code == 0 and [json.loads(line)["text"] for line in out.splitlines()] == ["one", "two"]


def test_embed_finds_a_bad_line_before_loading_the_model(capsys, tmp_path, monkeypatch):
    monkeypatch.setattr("bertkit.embedding.Embedder.from_pretrained", lambda *a, **k: pytest.fail("model loaded"))
    src = tmp_path / "texts.txt"
    src.write_bytes(b"fine\n" * 20000 + b"caf\xe9\n")
    code, _, err = run(capsys, "embed", "-i", str(src), "-o", str(tmp_path / "v.npy"))
    assert code == 2 and err == f"bertkit: error: {src}:20001: not valid UTF-8 (byte 3)\n"
    assert not (tmp_path / "v.npy").exists()
    (tmp_path / "blank.txt").write_text("\n  \n")
    code, _, err = run(capsys, "embed", "-i", str(tmp_path / "blank.txt"))
    assert code == 2 and "blank.txt: no texts to embed" in err


def test_tokenize_and_info(capsys, minilm_dir):
    code, out, _ = run(capsys, "tokenize", "tokenization")
    assert code == 0 and json.loads(out)["tokens"] == ["[CLS]", "token", "##ization", "[SEP]"]
    code, out, _ = run(capsys, "info", "--model", str(minilm_dir))
    assert code == 0 and "layers 6, hidden 384" in out and "22,713,216" in out


@pytest.mark.parametrize(
    "argv, message",
    [
        (["embed", "-i", "/no/such/file.txt"], "/no/such/file.txt: no such file"),
        (["similarity", "--model", "/no/such/dir", "a"], "/no/such/dir: no such file or directory"),
        (["embed", "-i", "{bad}", "-o", "out.csv"], "output must end in .npy or .jsonl"),
        (["info", "--model", "{empty}"], "needs a config.json"),
    ],
)
def test_errors_are_one_line(capsys, tmp_path, argv, message):
    (tmp_path / "bad.txt").write_bytes(b"fine\n")
    (tmp_path / "empty").mkdir()
    argv = [a.format(bad=tmp_path / "bad.txt", empty=tmp_path / "empty") for a in argv]
    code, out, err = run(capsys, *argv)
    assert code == 2 and message in err and err.count("\n") == 1 and "Traceback" not in err


def test_undecodable_input_names_file_and_line(capsys, tmp_path):
    src = tmp_path / "latin1.txt"
    src.write_bytes(b"fine\ncaf\xe9\n")
    code, _, err = run(capsys, "embed", "-i", str(src))
    assert code == 2 and f"{src}:2: not valid UTF-8" in err


def test_module_entry_point_help():
    result = subprocess.run([sys.executable, "-m", "bertkit", "--help"], capture_output=True, text=True)
    assert result.returncode == 0 and "embed" in result.stdout and "similarity" in result.stdout


def test_config_dataclass_becomes_options():
    import argparse

    from bertkit.cli import add_config_options, config_from_args, field_docs
    from bertkit.train import TrainConfig

    docs = field_docs(TrainConfig)
    assert docs["grad_accum"] == "Micro-batches accumulated into one optimiser step."
    parser = argparse.ArgumentParser()
    add_config_options(parser, TrainConfig)
    args = parser.parse_args(["--out", "runs/x", "--steps", "5", "--no-progress", "--betas", "0.9", "0.98"])
    config = config_from_args(TrainConfig, args)
    assert config.steps == 5 and config.progress is False and config.betas == (0.9, 0.98)
    assert str(config.out) == "runs/x" and config.lr == 1e-4
    assert "Micro-batches accumulated" in parser.format_help()


def test_embed_creates_missing_folders_and_writes_atomically(capsys, tmp_path):
    src = tmp_path / "texts.txt"
    src.write_text("hello world\n", encoding="utf-8")
    for name in ("new/dir/v.npy", "other/v.jsonl"):
        code, _, err = run(capsys, "embed", "-i", str(src), "-o", str(tmp_path / name))
        assert code == 0 and "wrote 1 vector of dimension 384" in err
        assert [p.name for p in (tmp_path / name).parent.iterdir()] == [name.rsplit("/", 1)[1]]  # no temporary left
    assert np.load(tmp_path / "new/dir/v.npy").shape == (1, 384)


@pytest.mark.parametrize(
    "output, message",
    [
        ("{tmp}/dir.npy", "{tmp}/dir.npy: is a directory, not a file"),
        ("{tmp}/texts.txt/v.npy", "{tmp}/texts.txt/v.npy: {tmp}/texts.txt is a file, not a directory"),
        ("{tmp}/v.csv", "{tmp}/v.csv: output must end in .npy or .jsonl (or be - for JSONL on stdout)"),
    ],
)
def test_embed_checks_the_output_before_loading_the_model(capsys, tmp_path, monkeypatch, output, message):
    monkeypatch.setattr("bertkit.embedding.Embedder.from_pretrained", lambda *a: pytest.fail("model loaded"))
    (tmp_path / "texts.txt").write_text("hello\n")
    (tmp_path / "dir.npy").mkdir()
    code, _, err = run(capsys, "embed", "-i", str(tmp_path / "texts.txt"), "-o", output.format(tmp=tmp_path))
    assert code == 2 and err == f"bertkit: error: {message.format(tmp=tmp_path)}\n"


@pytest.mark.parametrize("output", ["v.npy", "v.jsonl"])
def test_embed_on_a_full_disk_keeps_the_old_file(capsys, tmp_path, monkeypatch, output):
    from bertkit import fileio

    src, target = tmp_path / "texts.txt", tmp_path / output
    src.write_text("hello world\n", encoding="utf-8")
    target.write_text("old")
    monkeypatch.setattr(fileio, "_open_new", lambda path, mode: open("/dev/full", mode))  # writes fail: ENOSPC
    code, _, err = run(capsys, "embed", "-i", str(src), "-o", str(target))
    assert code == 2 and err == f"bertkit: error: {target}: no space left on device\n"
    assert target.read_text() == "old" and sorted(p.name for p in tmp_path.iterdir()) == sorted(["texts.txt", output])


def test_directory_as_input_says_so(capsys, tmp_path):
    code, _, err = run(capsys, "embed", "-i", str(tmp_path))
    assert code == 2 and err == f"bertkit: error: {tmp_path}: is a directory, not a file\n"


def test_tokenizer_train_into_a_new_folder_and_not_into_a_file(capsys, tmp_path):
    text = tmp_path / "text.txt"
    text.write_text("".join(f"the quick brown fox {i} jumps over the lazy dog\n" for i in range(50)))
    code, _, err = run(capsys, "tokenizer", "train", str(text), "--vocab-size", "60", "--out", str(tmp_path / "a/b"))
    assert code == 0 and (tmp_path / "a/b/vocab.txt").is_file()
    code, _, err = run(capsys, "tokenizer", "train", str(text), "--out", str(text / "tok"))
    assert code == 2 and err == f"bertkit: error: {text / 'tok'}: {text} is a file, not a directory\n"


def test_argument_errors_are_one_line_too(capsys):
    code, _, err = run(capsys, "embed", "--batch-size", "0")
    assert code == 2 and err == "bertkit: error: --batch-size must be at least 1, got 0\n"
    code, _, err = run(capsys, "embed", "--no-such-option")
    assert code == 2 and err == "bertkit: error: unrecognized arguments: --no-such-option (see bertkit --help)\n"
    code, _, err = run(capsys, "finetune", "--long-text", "windows")
    assert code == 2 and err.startswith("bertkit: error: --long-text must be one of truncate, window; got 'windows'")


def test_help_lists_the_choices(capsys):
    with pytest.raises(SystemExit):
        main(["finetune", "--help"])
    out = capsys.readouterr().out
    for choices in ("{classify,tag,qa,choice,embed}", "{truncate,window}", "{linear,cosine,constant}", "{auto,fp32,bf16}"):
        assert choices in out


# ---- one mechanism: every option is a dataclass field (settings.py) ------------------------------------


def subcommand_parsers():
    from bertkit.cli import build_parser

    parsers = {}
    for name, parser in build_parser()._subparsers._group_actions[0].choices.items():
        if parser._subparsers is not None:  # `tokenizer train`
            for action, sub in parser._subparsers._group_actions[0].choices.items():
                parsers[f"{name} {action}"] = sub
        else:
            parsers[name] = parser
    return parsers


def test_every_option_has_help_and_shows_its_default():
    parsers = subcommand_parsers()
    assert {"embed", "similarity", "tokenize", "prepare", "pretrain", "finetune", "evaluate", "predict", "demo",
            "fill-mask", "tokenizer train", "info", "models"} <= set(parsers)
    for name, parser in parsers.items():
        for action in parser._actions:
            if action.dest == "help":
                continue
            assert action.help, f"bertkit {name} {action.dest}: no help"
            if action.default not in (None, []) and not action.required:
                assert "(default: " in action.help, f"bertkit {name} {action.dest}: default not shown"
    assert "(default: 0.01)" in parsers["prepare"].format_help()  # --valid-fraction
    assert "(default: 30522)" in parsers["tokenizer train"].format_help()  # --vocab-size


def test_defaults_agree_with_the_functions_the_commands_call():
    """The commands pass every value on, so these functions' own defaults serve Python callers only;
    they must say the same as the options (settings.py)."""
    import inspect

    from bertkit.data.shards import prepare
    from bertkit.embedding import Embedder
    from bertkit.fill_mask import FillMask
    from bertkit.settings import EmbedArgs, FillMaskArgs, PrepareArgs, TokenizerTrainArgs
    from bertkit.vocab import train_vocabulary

    def defaults(function):
        return {k: p.default for k, p in inspect.signature(function).parameters.items()
                if p.default is not inspect.Parameter.empty}

    for function, config, names in [
        (prepare, PrepareArgs, ("valid_fraction", "shard_tokens", "seed", "segmenter", "text_field",
                                "document_sentences", "progress")),
        (train_vocabulary, TokenizerTrainArgs, ("vocab_size", "chinese_chars", "min_frequency", "limit_alphabet")),
        (Embedder.__call__, EmbedArgs, ("batch_size", "max_length", "normalize")),
        (FillMask.__call__, FillMaskArgs, ("top_k",)),
    ]:
        fields = {f.name: f.default for f in dataclasses.fields(config)}
        assert {n: defaults(function)[n] for n in names} == {n: fields[n] for n in names}, function.__qualname__
    assert defaults(train_vocabulary)["lowercase"] is not TokenizerTrainArgs.cased


@pytest.mark.parametrize("argv", [["--help"], ["pretrain", "--help"], ["finetune", "--help"], ["tokenizer", "train",
                                  "--help"], ["embed", "--batch-size", "0"], ["finetune", "--long-text", "windows"],
                                  ["demo", "--steps", "0"]])
def test_help_and_argument_errors_never_import_torch(argv):
    result = subprocess.run([sys.executable, "-X", "importtime", "-m", "bertkit", *argv], capture_output=True,
                            text=True)
    assert result.returncode in (0, 2) and "Traceback" not in result.stderr
    imported = [line.rpartition("|")[2].strip() for line in result.stderr.splitlines() if line.startswith("import time")]
    assert "bertkit.cli" in imported
    heavy = [m for m in imported if m.split(".")[0] in ("torch", "numpy")]
    assert not heavy, f"bertkit {' '.join(argv)} imported {heavy[:3]}"


def test_old_homes_of_the_configs_still_work():
    from bertkit import settings
    from bertkit.data.pretraining import OBJECTIVES, PretrainingConfig
    from bertkit.demo import DemoConfig
    from bertkit.finetune import FinetuneArgs
    from bertkit.pretrain import OBJECTIVES as PRETRAIN_OBJECTIVES
    from bertkit.pretrain import PretrainArgs
    from bertkit.tasks import TASKS, DataOptions
    from bertkit.train import TrainConfig

    assert (TrainConfig, PretrainArgs, PretrainingConfig, FinetuneArgs, DataOptions, DemoConfig) == (
        settings.TrainConfig, settings.PretrainArgs, settings.PretrainingConfig, settings.FinetuneArgs,
        settings.DataOptions, settings.DemoConfig)
    assert OBJECTIVES is PRETRAIN_OBJECTIVES is settings.OBJECTIVES and TASKS is settings.TASKS


# ---- commands ---------------------------------------------------------------------------------------


def test_tokenize_shows_token_types_and_pairs(capsys):
    code, out, _ = run(capsys, "tokenize", "hello world", "--pair", "hi")
    row = json.loads(out)
    assert code == 0 and row["tokens"] == ["[CLS]", "hello", "world", "[SEP]", "hi", "[SEP]"]
    assert row["token_type_ids"] == [0, 0, 0, 0, 1, 1] and len(row["input_ids"]) == 6
    code, out, _ = run(capsys, "tokenize", "a", "b")
    assert [json.loads(line)["token_type_ids"] for line in out.splitlines()] == [[0, 0, 0], [0, 0, 0]]


def test_finetune_starts_from_the_builtin_model_by_default(capsys, tmp_path, monkeypatch, minilm_dir):
    seen = {}
    monkeypatch.setattr("bertkit.finetune.run_finetune", lambda args, data, train: seen.update(model=args.model))
    (tmp_path / "train.csv").write_text("text,label\na,b\n")
    code, _, err = run(capsys, "finetune", "--task", "classify", "--train", str(tmp_path / "train.csv"),
                       "--out", str(tmp_path / "out"))
    assert code == 0, err
    assert seen["model"] == str(minilm_dir)


def test_fill_mask_needs_a_model_with_a_masked_lm_head(capsys, minilm_dir):
    code, _, err = run(capsys, "fill-mask", "the [MASK] is red")
    assert code == 2 and err == ("bertkit: error: the following arguments are required: --model "
                                 "(see bertkit fill-mask --help)\n")
    with pytest.raises(SystemExit):
        main(["fill-mask", "--help"])
    # argparse may wrap the help at the name's hyphen ("all-" / "MiniLM-L6-v2"), as the column width allows
    assert "all-MiniLM-L6-v2 has none" in " ".join(capsys.readouterr().out.split()).replace("all- ", "all-")
    code, _, err = run(capsys, "fill-mask", "--model", "all-MiniLM-L6-v2", "the [MASK] is red")
    assert code == 2 and "masked-LM head" in err and err.count("\n") == 1


def test_non_numbers_are_one_line_too(capsys):
    code, _, err = run(capsys, "embed", "--batch-size", "many")
    assert code == 2 and err == "bertkit: error: --batch-size must be an integer, got 'many'\n"
    code, _, err = run(capsys, "pretrain", "--data", "d", "--out", "o", "--lr", "fast")
    assert code == 2 and err == "bertkit: error: --lr must be a number, got 'fast'\n"


def test_demo_says_what_prepare_wrote():
    from types import SimpleNamespace

    from bertkit.demo import shards_summary

    stats = SimpleNamespace(train=SimpleNamespace(documents=2_061, tokens=1_015_000),
                            valid=SimpleNamespace(documents=1, tokens=1))
    assert shards_summary(stats, "runs/demo/data") == (
        "2,062 documents, 1,015,001 tokens in runs/demo/data: train 2,061 documents (1,015,000 tokens), "
        "held out 1 document (1 token)")
