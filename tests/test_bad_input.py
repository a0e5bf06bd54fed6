"""Bad input across every command: exit status 2, one line on stderr, no traceback, and nothing
half-written where the output goes.

Each case is a realistic mistake or a hostile input, run as the real CLI: in-process through
`bertkit.cli.main` (with stdout/stderr captured at the file-descriptor level, logging routed to
stderr as the `bertkit` command does, Python warnings shown as the interpreter would show them,
and any escaping exception turned into the traceback the command would have printed), and a
handful of them again as a separate `bertkit` process to prove the end-to-end exit status.

Then property-based fuzzing of the readers (task files and the pretraining corpus): whatever the
bytes, a reader returns or raises BertkitError, never anything else.

What counts:
* exit status 2 (an exception escaping `main` counts as the traceback and exit status 1 it would be);
* exactly one non-blank line on stderr, containing "error", and naming what the case's `mentions`
  list (the file, the option or the value at fault). Logged warnings count as lines: the real
  command prints them to stderr. The one exception is progress bars: `predict` has no --no-progress
  option and draws a tqdm bar on stderr whenever its output is a file, so carriage-return-separated
  tqdm frames are dropped before counting (every other command runs with --no-progress, or draws
  no bar when stderr is not a terminal);
* nothing half-written: the output location (a file, a run or corpus folder) is absent afterwards
  (an empty folder is tolerated) or byte-for-byte what it was before; for commands whose results go
  to stdout (similarity, tokenize, info, fill-mask, evaluate), stdout stays empty;
* an output path under a missing folder may instead succeed (exit 0) and create it.

Speed: the shared models, corpus, shards and runs are built once per module; `main` re-reads each
config class's source for its --help texts on every call, so that lookup is memoised here (the
subprocess cases run the command untouched); the `demo` cases get a small corpus in place of the
Penn Treebank, so an option the demo fails to reject costs seconds, not minutes. A case still
running after TIMEOUT_S fails (some bad options used to make the training loop spin forever).
"""

from __future__ import annotations

import bz2
import contextlib
import gzip
import hashlib
import io
import json
import logging
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import traceback
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings  # the `test` extra
from hypothesis import strategies as st

from bertkit.cli import main
from bertkit.errors import BertkitError

TIMEOUT_S = 20  # per in-process case: some bad options (a negative batch size) make the loop spin forever

# ------------------------------------------------------------------------------------------ fixtures

WORDS = ("the a cat dog bird ran sat slept on under mat rug market stock price fell rose sharply today "
         "yesterday bank river said it expects profits company chairman quarter loss year new old big small "
         "red green house car road city north south people water fire").split()


def _sentences(n: int, seed: int) -> list[str]:
    import random

    rng = random.Random(seed)
    return [" ".join(rng.choice(WORDS) for _ in range(rng.randint(5, 11))) + " ." for _ in range(n)]


@dataclass
class World:
    """Everything the cases share, built once per module."""

    root: Path
    paths: dict[str, str] = field(default_factory=dict)

    def __getitem__(self, key: str) -> Path:
        return Path(self.paths[key])


@pytest.fixture(scope="module")
def world(tmp_path_factory, tiny_model_dir) -> World:
    import torch

    from bertkit import BertConfig, BertModel, Tokenizer
    from bertkit.heads import HEADS
    from bertkit.predict import with_settings
    from bertkit.tasks import DataOptions, make_task
    from tests.conftest import tiny_config

    root = tmp_path_factory.mktemp("bad-input")
    w = World(root)
    p = w.paths
    p["tiny"] = str(tiny_model_dir)

    # raw text: 40 documents of 6 sentences, a blank line between documents
    sentences = _sentences(240, seed=0)
    corpus = root / "corpus.txt"
    corpus.write_text("".join("\n".join(sentences[i:i + 6]) + "\n\n" for i in range(0, 240, 6)), encoding="utf-8")
    p["corpus"] = str(corpus)

    def ok(argv: list[str]) -> None:
        code = main(argv)
        assert code == 0, f"fixture command failed: {argv}"

    ok(["tokenizer", "train", str(corpus), "--vocab-size", "200", "--out", str(root / "tok")])
    p["tok"] = str(root / "tok")
    ok(["prepare", str(corpus), "--tokenizer", p["tok"], "--out", str(root / "data"), "--valid-fraction", "0.1",
        "--no-progress"])
    p["data"] = str(root / "data")
    cfg = {"vocab_size": 200, "hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 4,
           "intermediate_size": 37, "max_position_embeddings": 64}
    (root / "tiny.json").write_text(json.dumps(cfg))
    p["cfg"] = str(root / "tiny.json")

    # a finished 2-step pretraining run (checkpoints included)
    p["ptrun"] = str(root / "pt-run")
    ok(pretrain_argv(p["data"], p["cfg"], p["ptrun"]) + ["--save-every", "1"])

    # labelled files, one per task family
    rows = [("a good thing", "pos"), ("a bad thing", "neg"), ("great stuff", "pos"), ("awful stuff", "neg"),
            ("fine item", "pos"), ("poor item", "neg"), ("nice one", "pos"), ("sad one", "neg")]
    (root / "train.csv").write_text("text,label\n" + "".join(f"{t},{label}\n" for t, label in rows))
    (root / "dev.csv").write_text("text,label\n" + "".join(f"{t},{label}\n" for t, label in rows[:4]))
    p["train_csv"], p["dev_csv"] = str(root / "train.csv"), str(root / "dev.csv")
    (root / "train.conll").write_text("EU B-ORG\nrejects O\nGerman B-MISC\ncall O\n\n"
                                      "Peter B-PER\nBlackburn I-PER\nspoke O\n\n")
    p["conll"] = str(root / "train.conll")
    context = "The lighthouse was built by Henry Winstanley in 1698 and destroyed in 1703."
    squad = {"version": "v1.1", "data": [{"title": "t", "paragraphs": [{"context": context, "qas": [
        {"id": "q1", "question": "Who built the lighthouse?",
         "answers": [{"text": "Henry Winstanley", "answer_start": context.index("Henry")}]},
        {"id": "q2", "question": "When was it destroyed?",
         "answers": [{"text": "1703", "answer_start": context.index("1703")}]}]}]}]}
    (root / "train.json").write_text(json.dumps(squad, indent=1))
    p["squad"] = str(root / "train.json")
    (root / "train_mc.jsonl").write_text(
        json.dumps({"context": "A cat sat.", "choices": ["Then it slept.", "Then it flew."], "label": 0}) + "\n"
        + json.dumps({"context": "A dog ran.", "choices": ["Then it rested.", "Then it swam away."], "label": 1})
        + "\n")
    p["mc"] = str(root / "train_mc.jsonl")

    # a finished one-step fine-tuning run: also the fine-tuned classify model for evaluate/predict
    p["ftrun"] = str(root / "ft-run")
    ok(finetune_argv("classify", p["tiny"], p["train_csv"], p["ftrun"]))

    # fine-tuned qa and choice models, built without training
    tokenizer = Tokenizer.from_pretrained(tiny_model_dir)
    for name, labels in (("qa", ["span"]), ("choice", ["0", "1"])):
        task = make_task(name, DataOptions())
        changes = task.configure(BertConfig.load(tiny_model_dir), labels)
        with warnings.catch_warnings(), _quiet_logging():
            model = HEADS[task.architecture].from_pretrained(tiny_model_dir, with_head=False, **changes)
        model.config = with_settings(model.config, task)
        model.save_pretrained(root / f"{name}-model", tokenizer=tokenizer)
        p[f"{name}_model"] = str(root / f"{name}-model")

    # a model whose vocab.txt (30,522 tokens) is larger than its config's vocab_size (99)
    torch.manual_seed(0)
    BertModel(tiny_config()).save_pretrained(root / "small-vocab", tokenizer=tokenizer)
    p["small_vocab"] = str(root / "small-vocab")
    return w


@contextlib.contextmanager
def _quiet_logging():
    logger = logging.getLogger("bertkit")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(level)


def pretrain_argv(data: str, cfg: str, out: str) -> list[str]:
    return ["pretrain", "--data", data, "--config", cfg, "--out", out, "--steps", "2", "--batch-size", "4",
            "--max-length", "32", "--warmup", "0", "--log-every", "1", "--eval-batches", "1", "--no-progress",
            "--precision", "fp32"]


def finetune_argv(task: str, model: str, train: str, out: str) -> list[str]:
    return ["finetune", "--task", task, "--model", model, "--train", train, "--out", out, "--epochs", "1",
            "--batch-size", "8", "--no-progress", "--precision", "fp32"]


# ------------------------------------------------------------------------------- running the command


class _Hung(Exception):
    pass


@dataclass
class Result:
    code: int | None
    out: str
    err: str  # what a terminal would show on stderr, tracebacks and warnings included


def run_in_process(argv: list[str], capfd, *, stdin: bytes | None = None) -> Result:
    """`bertkit ARGV` through cli.main, with what the real process would print on stderr."""
    handler = logging.StreamHandler(sys.stderr)  # the `bertkit` command logs to stderr like this
    handler.setFormatter(logging.Formatter("bertkit: %(message)s"))
    handler.setLevel(logging.WARNING)
    root = logging.getLogger()
    saved_handlers = root.handlers[:]
    root.handlers[:] = [handler]  # alone, so that main's basicConfig adds no second one
    old_stdin = sys.stdin
    if stdin is not None:
        sys.stdin = io.TextIOWrapper(io.BytesIO(stdin), encoding="utf-8")

    def hung(signum, frame):
        raise _Hung(f"still running after {TIMEOUT_S} s")

    old_alarm = signal.signal(signal.SIGALRM, hung)
    signal.alarm(TIMEOUT_S)
    code: int | None
    escaped = None
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            code = main(argv)
        except SystemExit as e:  # argparse
            code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
        except BaseException:  # noqa: BLE001 — the real command would die with this traceback
            code = 1
            escaped = traceback.format_exc()
        finally:
            signal.alarm(0)
            signal.signal(signal.SIGALRM, old_alarm)
            sys.stdin = old_stdin
            root.handlers[:] = saved_handlers
    out, err = capfd.readouterr()
    shown = set()
    for w in caught:  # as the interpreter's default filters would show them, once per place
        key = (str(w.message), w.category, w.filename, w.lineno)
        if issubclass(w.category, (DeprecationWarning, PendingDeprecationWarning, ImportWarning,
                                   ResourceWarning)) or key in shown:
            continue
        shown.add(key)
        err += warnings.formatwarning(w.message, w.category, w.filename, w.lineno)
    if escaped:
        err += escaped
    return Result(code, out, err)


def bertkit_command() -> list[str]:
    exe = Path(sys.executable).with_name("bertkit")
    return [str(exe)] if exe.exists() else [sys.executable, "-m", "bertkit"]


_TQDM_FRAME = re.compile(r"^\s*[\w .-]*:\s*\d+%\||\d+(\.\d+)?\s*(it|seq|step|batch)/s|\|\s*\d+/\d+\s*\[")


def message_lines(err: str) -> list[str]:
    """stderr's non-blank lines, tqdm progress-bar frames dropped (see the module docstring)."""
    lines = []
    for line in err.split("\n"):
        frames = [f for f in line.split("\r") if f.strip() and not _TQDM_FRAME.search(f)]
        lines.extend(frames)
    return [line for line in lines if line.strip()]


# ---------------------------------------------------------------------------------- describing cases

DIR = object()  # a `files` value: make this directory


@dataclass
class Case:
    argv: str  # shell-like; {name} placeholders: t (this case's folder) and the World's paths
    files: dict[str, object] = field(default_factory=dict)  # relative to t: bytes, str, DIR, or Copy
    setup: Callable[[Path, World], None] | None = None
    out: str | None = None  # the output location: must not appear, or must stay as it was ("-": stdout)
    mentions: tuple[str, ...] = ()  # (case-insensitive) the one line must name these
    stdin: bytes | None = None
    may_create: bool = False  # output under a missing folder: creating it (exit 0) is fine too


@dataclass
class Copy:
    source: str  # a World path name


def case(id: str, argv: str, **kw) -> object:
    return pytest.param(Case(argv, **kw), id=id)


def materialise(c: Case, t: Path, w: World) -> tuple[list[str], dict[str, str]]:
    t.mkdir(parents=True, exist_ok=True)
    names = {**w.paths, "t": str(t)}
    for rel, value in c.files.items():
        path = t / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        if value is DIR:
            path.mkdir(parents=True, exist_ok=True)
        elif isinstance(value, Copy):
            source = Path(names[value.source])
            if source.is_dir():
                shutil.copytree(source, path)
            else:
                shutil.copy(source, path)
        elif isinstance(value, bytes):
            path.write_bytes(value)
        else:
            path.write_text(str(value), encoding="utf-8", newline="")
    if c.setup is not None:
        c.setup(t, w)
    argv = [token.format(**names) for token in shlex.split(c.argv)]
    return argv, names


def snapshot(path: Path) -> dict[str, str] | None:
    """Every file under `path` (or `path` itself) with a hash of its bytes; None when absent."""
    if not path.exists():
        return None
    if path.is_file():
        return {".": hashlib.sha256(path.read_bytes()).hexdigest()}
    return {str(p.relative_to(path)): (hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else "dir")
            for p in sorted(path.rglob("*"))}


def check(c: Case, result: Result, out: Path | None, before: dict | None) -> None:
    shown = f"exit {result.code}; stderr:\n{result.err[-3000:]}"
    assert "Traceback" not in result.err, shown
    if c.may_create and result.code == 0:
        assert out is not None and out.exists(), f"exit 0 but {out} was not written; {shown}"
        return
    assert result.code == 2, shown
    lines = message_lines(result.err)
    assert len(lines) == 1, f"expected exactly one line on stderr, got {len(lines)}; {shown}"
    assert "error" in lines[0], shown
    for word in c.mentions:
        assert word.lower() in lines[0].lower(), f"the message should name {word!r}; {shown}"
    if c.out == "-":
        assert result.out == "", f"stdout should hold nothing, got {result.out[:500]!r}"
    elif out is not None:
        after = snapshot(out)
        if before is None:
            left = [k for k, v in (after or {}).items() if v != "dir"]
            assert not left, f"half-written output left in {out}: {left[:10]}; {shown}"
        else:
            assert after == before, f"{out} was changed by a failed run; {shown}"


# ---------------------------------------------------------------------------- small corruptions


def _edit_json(rel: str, **changes) -> Callable[[Path, World], None]:
    def setup(t: Path, w: World) -> None:
        path = t / rel
        data = json.loads(path.read_text())
        data.update(changes)
        path.write_text(json.dumps(data))
    return setup


def _truncate(rel: str, keep: float | int) -> Callable[[Path, World], None]:
    def setup(t: Path, w: World) -> None:
        path = t / rel
        data = path.read_bytes()
        path.write_bytes(data[: int(len(data) * keep) if isinstance(keep, float) else keep])
    return setup


def _write(rel: str, data: bytes) -> Callable[[Path, World], None]:
    def setup(t: Path, w: World) -> None:
        (t / rel).write_bytes(data)
    return setup


def _corrupt_trainer_state(run: str) -> Callable[[Path, World], None]:
    """Garbage in every checkpoint's trainer state (trainer.pt, trainer_state.json/.safetensors, ...)."""
    def setup(t: Path, w: World) -> None:
        states = list((t / run / "checkpoints").glob("step-*/trainer*"))
        assert states, f"no trainer state in {t / run / 'checkpoints'} to corrupt"
        for state in states:
            state.write_bytes(b"PK\x03\x04 this is not a trainer state" + bytes(range(256)))
    return setup


PNG = b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR\x00\x00\x00\x10\x00\x00\x00\x10\x08\x06\x00\x00\x00\x1f\xf3\xffa" \
      + bytes(range(256)) * 4
UTF16 = "text\tlabel\nhello\tpos\nbye\tneg\n".encode("utf-16")
LONG_TEXT = " ".join(["market"] * 400)

PT = "pretrain --data {data} --config {cfg} --out {t}/run --steps 2 --batch-size 4 --max-length 32 --warmup 0 " \
     "--log-every 1 --eval-batches 1 --no-progress --precision fp32"
FT = "finetune --task classify --model {tiny} --train {train_csv} --out {t}/out --epochs 1 --batch-size 8 " \
     "--no-progress --precision fp32"
FT_TAG = FT.replace("classify", "tag").replace("{train_csv}", "{conll}")
FT_QA = FT.replace("classify", "qa").replace("{train_csv}", "{squad}")
FT_MC = FT.replace("classify", "choice").replace("{train_csv}", "{mc}")
EVAL = "evaluate --model {ftrun} --data {dev_csv} --json"
PRED = "predict --model {ftrun} -i {t}/in.txt -o {t}/pred.jsonl"


def squad(**qa) -> str:
    context = "The tower was built in 1698 by Henry Winstanley."
    entry = {"id": "q1", "question": "Who built it?", "answers": [{"text": "Henry Winstanley",
                                                                    "answer_start": context.index("Henry")}]}
    entry.update(qa)
    return json.dumps({"version": "v1.1", "data": [{"title": "t", "paragraphs": [
        {"context": context, "qas": [entry]}]}]}, indent=1)


CASES = [
    # ---- embed -------------------------------------------------------------------------------------
    case("embed-input-missing", "embed --model {tiny} -i {t}/nope.txt -o {t}/v.npy", out="{t}/v.npy",
         mentions=("nope.txt",)),
    case("embed-input-is-a-directory", "embed --model {tiny} -i {t}/texts -o {t}/v.npy",
         files={"texts": DIR}, out="{t}/v.npy", mentions=("texts",)),
    case("embed-input-empty-file", "embed --model {tiny} -i {t}/in.txt -o {t}/v.npy",
         files={"in.txt": b""}, out="{t}/v.npy", mentions=("in.txt",)),
    case("embed-input-binary-png", "embed --model {tiny} -i {t}/in.txt -o {t}/v.npy",
         files={"in.txt": PNG}, out="{t}/v.npy", mentions=("in.txt",)),
    case("embed-input-utf16-with-bom", "embed --model {tiny} -i {t}/in.txt -o {t}/v.jsonl",
         files={"in.txt": "first line\nsecond line\n".encode("utf-16")}, out="{t}/v.jsonl", mentions=("in.txt",)),
    case("embed-stdin-latin1", "embed --model {tiny}", stdin=b"fine\ncaf\xe9 au lait\n", out="-",
         mentions=("stdin",)),
    case("embed-output-suffix-csv", "embed --model {tiny} -i {t}/in.txt -o {t}/v.csv",
         files={"in.txt": "hello\n"}, out="{t}/v.csv", mentions=("v.csv",)),
    case("embed-output-is-a-directory", "embed --model {tiny} -i {t}/in.txt -o {t}/v.npy",
         files={"in.txt": "hello\n", "v.npy": DIR}, out="{t}/v.npy", mentions=("v.npy",)),
    case("embed-output-in-missing-folder", "embed --model {tiny} -i {t}/in.txt -o {t}/no/such/v.jsonl",
         files={"in.txt": "hello\n"}, out="{t}/no/such/v.jsonl", may_create=True),
    case("embed-output-existing-kept-on-error", "embed --model {tiny} -i {t}/in.txt -o {t}/v.jsonl",
         files={"in.txt": b"ok\n\xff\xfe broken\n", "v.jsonl": '{"text": "old", "embedding": [1.0]}\n'},
         out="{t}/v.jsonl", mentions=("in.txt",)),
    case("embed-batch-size-0", "embed --model {tiny} -i {t}/in.txt -o {t}/v.npy --batch-size 0",
         files={"in.txt": "hello\n"}, out="{t}/v.npy", mentions=("batch",)),
    case("embed-batch-size-negative", "embed --model {tiny} -i {t}/in.txt -o {t}/v.npy --batch-size -1",
         files={"in.txt": "hello\n"}, out="{t}/v.npy", mentions=("batch",)),
    case("embed-max-length-0", "embed --model {tiny} -i {t}/in.txt -o {t}/v.npy --max-length 0",
         files={"in.txt": "hello\n"}, out="{t}/v.npy", mentions=("length",)),
    case("embed-max-length-over-model-limit", "embed --model {tiny} -i {t}/in.txt -o {t}/v.npy --max-length 4096",
         files={"in.txt": LONG_TEXT + "\n"}, out="{t}/v.npy", mentions=("4096",)),
    case("embed-model-is-the-weights-file", "embed --model {tiny}/model.safetensors -i {t}/in.txt -o {t}/v.npy",
         files={"in.txt": "hello\n"}, out="{t}/v.npy", mentions=("model.safetensors",)),

    # ---- similarity: broken model folders -------------------------------------------------------------
    case("similarity-model-folder-without-config", "similarity --model {t}/m a b",
         files={"m/vocab.txt": "[PAD]\n[UNK]\n[CLS]\n[SEP]\n[MASK]\n"}, mentions=("config.json",)),
    case("similarity-config-not-json", "similarity --model {t}/m a b",
         files={"m": Copy("tiny")}, setup=_write("m/config.json", b"{\"vocab_size\": 30522,\n oops"),
         mentions=("config.json",)),
    case("similarity-config-is-a-json-list", "similarity --model {t}/m a b",
         files={"m": Copy("tiny")}, setup=_write("m/config.json", b"[1, 2, 3]"), mentions=("config.json",)),
    case("similarity-config-not-utf8", "similarity --model {t}/m a b",
         files={"m": Copy("tiny")}, setup=_write("m/config.json", b'{"hidden_act": "g\xe9lu"}'),
         mentions=("config.json",)),
    case("similarity-hidden-act-unsupported", "similarity --model {t}/m a b",
         files={"m": Copy("tiny")}, setup=_edit_json("m/config.json", hidden_act="swishy"),
         mentions=("hidden_act",)),
    case("similarity-vocab-size-is-a-string", "similarity --model {t}/m a b",
         files={"m": Copy("tiny")}, setup=_edit_json("m/config.json", vocab_size="30522"),
         mentions=("vocab_size",)),
    case("similarity-heads-do-not-divide-hidden", "similarity --model {t}/m a b",
         files={"m": Copy("tiny")}, setup=_edit_json("m/config.json", num_attention_heads=5),
         mentions=("num_attention_heads",)),
    case("similarity-config-hidden-size-disagrees-with-weights", "similarity --model {t}/m a b",
         files={"m": Copy("tiny")}, setup=_edit_json("m/config.json", hidden_size=64, intermediate_size=37),
         mentions=("model.safetensors",)),
    case("similarity-vocab-txt-larger-than-vocab-size", "similarity --model {small_vocab} tokenization zebra",
         mentions=("vocab",)),
    case("similarity-truncated-safetensors", "similarity --model {t}/m a b",
         files={"m": Copy("tiny")}, setup=_truncate("m/model.safetensors", 0.5), mentions=("model.safetensors",)),
    case("similarity-zero-byte-safetensors", "similarity --model {t}/m a b",
         files={"m": Copy("tiny")}, setup=_truncate("m/model.safetensors", 0), mentions=("model.safetensors",)),
    case("similarity-safetensors-is-a-zip", "similarity --model {t}/m a b",
         files={"m": Copy("tiny")}, setup=_write("m/model.safetensors", b"PK\x03\x04" + bytes(2000)),
         mentions=("model.safetensors",)),
    # (a tokenizer.json alone is enough: sentence-transformers 5+ saves no vocab.txt)
    case("similarity-vocab-txt-missing", "similarity --model {t}/m a b",
         files={"m": Copy("tiny")}, setup=lambda t, w: [(t / "m" / n).unlink(missing_ok=True)
                                                         for n in ("vocab.txt", "tokenizer.json")],
         mentions=("vocab",)),
    case("similarity-vocab-txt-not-utf8", "similarity --model {t}/m a b",
         files={"m": Copy("tiny")}, setup=_write("m/vocab.txt", b"[PAD]\n[UNK]\n[CLS]\n[SEP]\n[MASK]\ncaf\xe9\n"),
         mentions=("vocab.txt",)),

    # ---- tokenize / info / fill-mask -----------------------------------------------------------------
    case("tokenize-model-missing", "tokenize --model {t}/nope hello", mentions=("nope",)),
    case("tokenize-model-is-config-json", "tokenize --model {tiny}/config.json hello", mentions=("config.json",)),
    case("tokenize-stdin-not-utf8", "tokenize --model {tiny}", stdin=b"ok\n\xc3\x28 broken\n", out="-",
         mentions=("stdin",)),
    case("tokenize-tokenizer-config-wrong-type", "tokenize --model {t}/m hello",
         files={"m": Copy("tiny")}, setup=_edit_json("m/tokenizer_config.json", do_lower_case="yes"),
         mentions=("tokenizer_config.json",)),
    case("info-model-is-the-weights-file", "info --model {tiny}/model.safetensors", mentions=("model.safetensors",)),
    case("info-truncated-safetensors", "info --model {t}/m",
         files={"m": Copy("tiny")}, setup=_truncate("m/model.safetensors", 0.9), mentions=("model.safetensors",)),
    case("info-sharded-index-names-missing-shard", "info --model {t}/m",
         files={"m": Copy("tiny"),
                "m/model.safetensors.index.json": json.dumps({"weight_map": {"x": "model-00001-of-00002.safetensors"}})},
         setup=lambda t, w: (t / "m" / "model.safetensors").unlink(), mentions=("model-00001-of-00002",)),
    case("info-model-folder-empty", "info --model {t}/m", files={"m": DIR}, mentions=("config.json",)),
    case("fill-mask-no-mask-token", "fill-mask --model {ptrun} 'the cat sat on the mat'", mentions=("[MASK]",)),
    case("fill-mask-top-k-0", "fill-mask --model {ptrun} 'the [MASK] sat' --top-k 0", mentions=("top",)),
    case("fill-mask-top-k-negative", "fill-mask --model {ptrun} 'the [MASK] sat' --top-k -1", mentions=("top",)),
    case("fill-mask-model-without-mlm-head", "fill-mask --model {tiny} 'the [MASK] sat'", mentions=("head",)),

    # ---- tokenizer train ------------------------------------------------------------------------------
    case("tokenizer-train-empty-corpus", "tokenizer train {t}/c.txt --vocab-size 100 --out {t}/tok",
         files={"c.txt": b""}, out="{t}/tok", mentions=("c.txt",)),
    case("tokenizer-train-blank-lines-only", "tokenizer train {t}/c.txt --vocab-size 100 --out {t}/tok",
         files={"c.txt": "\n   \n\t\n\n"}, out="{t}/tok", mentions=("c.txt",)),
    case("tokenizer-train-binary-corpus", "tokenizer train {t}/c.txt --vocab-size 100 --out {t}/tok",
         files={"c.txt": PNG}, out="{t}/tok", mentions=("c.txt",)),
    case("tokenizer-train-missing-file", "tokenizer train {t}/nope.txt --vocab-size 100 --out {t}/tok",
         out="{t}/tok", mentions=("nope.txt",)),
    case("tokenizer-train-empty-directory", "tokenizer train {t}/texts --vocab-size 100 --out {t}/tok",
         files={"texts": DIR}, out="{t}/tok", mentions=("texts",)),
    case("tokenizer-train-vocab-size-0", "tokenizer train {corpus} --vocab-size 0 --out {t}/tok",
         out="{t}/tok", mentions=("vocab",)),
    case("tokenizer-train-vocab-size-only-specials", "tokenizer train {corpus} --vocab-size 5 --out {t}/tok",
         out="{t}/tok", mentions=("vocab",)),
    case("tokenizer-train-min-frequency-negative", "tokenizer train {corpus} --min-frequency -2 --out {t}/tok",
         out="{t}/tok", mentions=("frequency",)),
    case("tokenizer-train-out-is-a-file", "tokenizer train {corpus} --vocab-size 100 --out {t}/tok",
         files={"tok": "I am a file\n"}, out="{t}/tok", mentions=("tok",)),

    # ---- prepare ------------------------------------------------------------------------------------
    case("prepare-input-missing", "prepare {t}/nope.txt --tokenizer {tok} --out {t}/data --no-progress",
         out="{t}/data", mentions=("nope.txt",)),
    case("prepare-tokenizer-missing", "prepare {corpus} --tokenizer {t}/nope --out {t}/data --no-progress",
         out="{t}/data", mentions=("nope",)),
    case("prepare-tokenizer-is-a-text-file", "prepare {corpus} --tokenizer {corpus} --out {t}/data --no-progress",
         out="{t}/data", mentions=("corpus.txt",)),
    case("prepare-empty-corpus", "prepare {t}/c.txt --tokenizer {tok} --out {t}/data --no-progress",
         files={"c.txt": b""}, out="{t}/data", mentions=("c.txt",)),
    case("prepare-binary-corpus", "prepare {t}/c.txt --tokenizer {tok} --out {t}/data --no-progress",
         files={"c.txt": PNG}, out="{t}/data", mentions=("c.txt",)),
    case("prepare-jsonl-without-text-field", "prepare {t}/c.jsonl --tokenizer {tok} --out {t}/data --no-progress",
         files={"c.jsonl": '{"body": "the cat sat ."}\n{"body": "the dog ran ."}\n'}, out="{t}/data",
         mentions=("text",)),
    case("prepare-truncated-gzip", "prepare {t}/c.txt.gz --tokenizer {tok} --out {t}/data --no-progress",
         files={"c.txt.gz": gzip.compress(("the cat sat on the mat .\n" * 500).encode())[:60]}, out="{t}/data",
         mentions=("c.txt.gz",)),
    case("prepare-valid-fraction-1.5", "prepare {corpus} --tokenizer {tok} --out {t}/data --valid-fraction 1.5 "
         "--no-progress", out="{t}/data", mentions=("valid",)),
    case("prepare-valid-fraction-negative", "prepare {corpus} --tokenizer {tok} --out {t}/data --valid-fraction -0.1 "
         "--no-progress", out="{t}/data", mentions=("valid",)),
    case("prepare-shard-tokens-0", "prepare {corpus} --tokenizer {tok} --out {t}/data --shard-tokens 0 --no-progress",
         out="{t}/data", mentions=("shard",)),
    case("prepare-document-sentences-0", "prepare {corpus} --tokenizer {tok} --out {t}/data --document-sentences 0 "
         "--no-progress", out="{t}/data", mentions=("sentences",)),
    case("prepare-text-field-empty", "prepare {corpus} --tokenizer {tok} --out {t}/data --text-field '' --no-progress",
         out="{t}/data", mentions=("text",)),
    case("prepare-out-is-a-file", "prepare {corpus} --tokenizer {tok} --out {t}/data --no-progress",
         files={"data": "precious notes\n"}, out="{t}/data", mentions=("data",)),
    case("prepare-out-holds-other-files", "prepare {corpus} --tokenizer {tok} --out {t}/data --no-progress",
         files={"data/thesis.tex": "precious\n"}, out="{t}/data", mentions=("data",)),

    # ---- pretrain -----------------------------------------------------------------------------------
    case("pretrain-data-missing", PT.replace("{data}", "{t}/nope"), out="{t}/run", mentions=("nope",)),
    case("pretrain-data-is-a-file", PT.replace("{data}", "{corpus}"), out="{t}/run", mentions=("corpus.txt",)),
    case("pretrain-data-meta-not-json", PT.replace("{data}", "{t}/data"), files={"data": Copy("data")},
         setup=_write("data/meta.json", b'{"format": "bertkit-shards", '), out="{t}/run", mentions=("meta.json",)),
    case("pretrain-data-shard-truncated", PT.replace("{data}", "{t}/data"), files={"data": Copy("data")},
         setup=lambda t, w: [_truncate(str(f.relative_to(t)), 0.5)(t, w)
                             for f in (t / "data" / "train").rglob("tokens.npy")],
         out="{t}/run", mentions=("tokens.npy",)),
    case("pretrain-batch-size-0", PT + " --batch-size 0", out="{t}/run", mentions=("batch",)),
    case("pretrain-batch-size-negative", PT + " --batch-size -1", out="{t}/run", mentions=("batch",)),
    case("pretrain-lr-0", PT + " --lr 0", out="{t}/run", mentions=("lr",)),
    case("pretrain-lr-negative", PT + " --lr -0.0001", out="{t}/run", mentions=("lr",)),
    case("pretrain-lr-nan", PT + " --lr nan", out="{t}/run", mentions=("lr",)),
    case("pretrain-steps-negative", PT + " --steps -5", out="{t}/run", mentions=("steps",)),
    case("pretrain-steps-0", PT + " --steps 0", out="{t}/run", mentions=("steps",)),
    case("pretrain-warmup-more-than-steps", PT + " --warmup 10", out="{t}/run", mentions=("warmup",)),
    case("pretrain-warmup-negative", PT + " --warmup -0.5", out="{t}/run", mentions=("warmup",)),
    case("pretrain-max-length-0", PT + " --max-length 0", out="{t}/run", mentions=("length",)),
    case("pretrain-max-length-over-model-limit", PT + " --max-length 128", out="{t}/run", mentions=("128",)),
    case("pretrain-mask-rate-0", PT + " --mask-rate 0", out="{t}/run", mentions=("mask",)),
    case("pretrain-mask-rate-over-1", PT + " --mask-rate 1.5", out="{t}/run", mentions=("mask",)),
    case("pretrain-objective-typo", PT + " --objective mlm+xyz", out="{t}/run", mentions=("mlm+xyz",)),
    case("pretrain-schedule-typo", PT + " --schedule cosin --warmup 1", out="{t}/run", mentions=("cosin",)),
    case("pretrain-precision-typo", PT + " --precision fp16x", out="{t}/run", mentions=("fp16x",)),
    case("pretrain-config-preset-typo", PT.replace("{cfg}", "minni"), out="{t}/run", mentions=("minni",)),
    case("pretrain-config-json-broken", PT.replace("{cfg}", "{t}/c.json"), files={"c.json": "{'hidden_size': 32}"},
         out="{t}/run", mentions=("c.json",)),
    case("pretrain-grad-accum-0", PT + " --grad-accum 0", out="{t}/run", mentions=("accum",)),
    case("pretrain-log-every-0", PT + " --log-every 0", out="{t}/run", mentions=("log",)),
    case("pretrain-eval-every-negative", PT + " --eval-every -1", out="{t}/run", mentions=("eval",)),
    case("pretrain-save-every-negative", PT + " --save-every -10", out="{t}/run", mentions=("save",)),
    case("pretrain-eval-batches-negative", PT + " --eval-batches -1", out="{t}/run", mentions=("eval",)),
    case("pretrain-betas-above-1", PT + " --betas 1.5 0.999", out="{t}/run", mentions=("betas",)),
    case("pretrain-weight-decay-negative", PT + " --weight-decay -0.01", out="{t}/run", mentions=("decay",)),
    case("pretrain-init-from-other-vocabulary", PT + " --init-from {tiny}", out="{t}/run", mentions=("init",)),
    case("pretrain-out-is-a-file", PT, files={"run": "not a folder\n"}, out="{t}/run", mentions=("run",)),
    case("pretrain-existing-out-without-resume", PT, files={"run": Copy("ptrun")}, out="{t}/run",
         mentions=("{t}/run", "--resume", "--overwrite")),
    case("pretrain-resume-corrupt-trainer-state", PT + " --resume", files={"run": Copy("ptrun")},
         setup=_corrupt_trainer_state("run"), out="{t}/run", mentions=("step-00000002",)),
    case("pretrain-resume-with-a-different-model-size", PT.replace("{cfg}", "{t}/wider.json") + " --resume",
         files={"run": Copy("ptrun"), "wider.json": json.dumps({"hidden_size": 64, "num_hidden_layers": 2,
                                                                "num_attention_heads": 4, "intermediate_size": 37,
                                                                "max_position_embeddings": 64})},
         out="{t}/run", mentions=("step-00000002",)),

    # ---- finetune classify ----------------------------------------------------------------------------
    case("finetune-task-typo", FT.replace("classify", "clasify"), out="{t}/out", mentions=("clasify",)),
    case("finetune-train-missing", FT.replace("{train_csv}", "{t}/nope.csv"), out="{t}/out", mentions=("nope.csv",)),
    case("finetune-train-is-a-directory", FT.replace("{train_csv}", "{t}/train.csv"), files={"train.csv": DIR},
         out="{t}/out", mentions=("train.csv",)),
    case("finetune-train-empty-file", FT.replace("{train_csv}", "{t}/train.csv"), files={"train.csv": b""},
         out="{t}/out", mentions=("train.csv",)),
    case("finetune-train-header-only", FT.replace("{train_csv}", "{t}/train.csv"), files={"train.csv": "text,label\n"},
         out="{t}/out", mentions=("train.csv",)),
    case("finetune-train-row-with-extra-field", FT.replace("{train_csv}", "{t}/train.csv"),
         files={"train.csv": "text,label\nfine,pos\nhello, world,neg\n"}, out="{t}/out", mentions=("train.csv:3",)),
    case("finetune-train-csv-unclosed-quote", FT.replace("{train_csv}", "{t}/train.csv"),
         files={"train.csv": 'text,label\nfine,pos\n"never closed,neg\nbad,neg\n'}, out="{t}/out",
         mentions=("train.csv:3",)),
    case("finetune-train-bom-crlf-without-label-column", FT.replace("{train_csv}", "{t}/train.csv"),
         files={"train.csv": "\ufefftext,stars\r\nfine,5\r\nbad,1\r\n".encode()}, out="{t}/out",
         mentions=("fields: text, stars", "--label-column")),
    case("finetune-train-utf16-tsv", FT.replace("{train_csv}", "{t}/train.tsv"), files={"train.tsv": UTF16},
         out="{t}/out", mentions=("train.tsv",)),
    case("finetune-train-jsonl-line-is-a-list", FT.replace("{train_csv}", "{t}/train.jsonl"),
         files={"train.jsonl": '{"text": "ok", "label": "pos"}\n["bad", "neg"]\n'}, out="{t}/out",
         mentions=("train.jsonl:2",)),
    case("finetune-train-jsonl-truncated-last-line", FT.replace("{train_csv}", "{t}/train.jsonl"),
         files={"train.jsonl": '{"text": "ok", "label": "pos"}\n{"text": "cut off", "lab'}, out="{t}/out",
         mentions=("train.jsonl:2",)),
    case("finetune-train-unknown-suffix", FT.replace("{train_csv}", "{t}/train.xlsx"),
         files={"train.xlsx": b"PK\x03\x04" + bytes(100)}, out="{t}/out", mentions=("train.xlsx",)),
    case("finetune-label-column-typo", FT + " --label-column lable", out="{t}/out", mentions=("lable",)),
    case("finetune-regression-label-not-a-number", FT + " --regression", out="{t}/out", mentions=("train.csv:2",)),
    case("finetune-label-separator-empty", FT + " --label-separator ''", out="{t}/out", mentions=("separator",)),
    case("finetune-dev-label-unseen-in-training", FT + " --dev {t}/dev.csv",
         files={"dev.csv": "text,label\nfine,pos\nmeh,neutral\n"}, out="{t}/out", mentions=("neutral",)),
    case("finetune-model-missing", FT.replace("{tiny}", "{t}/nope"), out="{t}/out", mentions=("nope",)),
    case("finetune-model-is-the-weights-file", FT.replace("{tiny}", "{tiny}/model.safetensors"), out="{t}/out",
         mentions=("model.safetensors",)),
    case("finetune-batch-size-0", FT + " --batch-size 0", out="{t}/out", mentions=("batch",)),
    case("finetune-batch-size-negative", FT + " --batch-size -1", out="{t}/out", mentions=("batch",)),
    case("finetune-lr-0", FT + " --lr 0", out="{t}/out", mentions=("lr",)),
    case("finetune-lr-nan", FT + " --lr nan", out="{t}/out", mentions=("lr",)),
    case("finetune-epochs-0", FT + " --epochs 0", out="{t}/out", mentions=("epochs",)),
    case("finetune-epochs-negative", FT + " --epochs -1", out="{t}/out", mentions=("epochs",)),
    case("finetune-grad-accum-0", FT + " --grad-accum 0", out="{t}/out", mentions=("accum",)),
    case("finetune-warmup-more-than-steps", FT + " --warmup 50", out="{t}/out", mentions=("warmup",)),
    case("finetune-max-length-0", FT + " --max-length 0", out="{t}/out", mentions=("length",)),
    case("finetune-max-length-just-over-model-limit", FT + " --max-length 129", out="{t}/out", mentions=("129",)),
    case("finetune-stride-equals-max-length", FT + " --long-text window --max-length 16 --stride 16", out="{t}/out",
         mentions=("stride",)),
    case("finetune-long-text-typo", FT + " --long-text windows", out="{t}/out", mentions=("windows",)),
    case("finetune-schedule-typo", FT + " --schedule cosin", out="{t}/out", mentions=("cosin",)),
    case("finetune-precision-typo", FT + " --precision fp16x", out="{t}/out", mentions=("fp16x",)),
    case("finetune-best-metric-typo", FT + " --dev {dev_csv} --best-metric acc", out="{t}/out", mentions=("acc",)),
    case("finetune-eval-batch-size-0", FT + " --dev {dev_csv} --eval-batch-size 0", out="{t}/out",
         mentions=("batch",)),
    case("finetune-out-is-a-file", FT, files={"out": "not a folder\n"}, out="{t}/out", mentions=("out",)),
    case("finetune-out-in-missing-folder", FT.replace("{t}/out", "{t}/no/such/out"), out="{t}/no/such/out",
         may_create=True),
    case("finetune-existing-out-without-resume", FT, files={"out": Copy("ftrun")}, out="{t}/out",
         mentions=("{t}/out", "--resume", "--overwrite")),
    case("finetune-resume-corrupt-trainer-state", FT + " --resume", files={"out": Copy("ftrun")},
         setup=_corrupt_trainer_state("out"), out="{t}/out", mentions=("step-00000001",)),

    # ---- finetune tag / qa / choice ---------------------------------------------------------------------
    case("finetune-tag-conll-without-tags", FT_TAG.replace("{conll}", "{t}/t.conll"),
         files={"t.conll": "EU\nrejects\n\nGerman\n"}, out="{t}/out", mentions=("t.conll:1",)),
    case("finetune-tag-conll-binary", FT_TAG.replace("{conll}", "{t}/t.conll"), files={"t.conll": PNG},
         out="{t}/out", mentions=("t.conll",)),
    case("finetune-tag-conll-blank-lines-only", FT_TAG.replace("{conll}", "{t}/t.conll"),
         files={"t.conll": "\n\n   \n\r\n"}, out="{t}/out", mentions=("t.conll",)),
    case("finetune-tag-jsonl-tokens-and-tags-differ", FT_TAG.replace("{conll}", "{t}/t.jsonl"),
         files={"t.jsonl": '{"tokens": ["EU", "rejects"], "tags": ["B-ORG"]}\n'}, out="{t}/out",
         mentions=("t.jsonl:1",)),
    case("finetune-tag-column-out-of-range", FT_TAG + " --tag-column 5", out="{t}/out", mentions=("train.conll:1",)),
    case("finetune-tag-dev-tag-unseen-in-training", FT_TAG + " --dev {t}/dev.conll",
         files={"dev.conll": "Paris B-LOC\nsleeps O\n\n"}, out="{t}/out", mentions=("B-LOC",)),
    case("finetune-qa-squad-not-json", FT_QA.replace("{squad}", "{t}/q.json"),
         files={"q.json": "{\"data\": [ {\"title\": \"t\", \n"}, out="{t}/out", mentions=("q.json",)),
    case("finetune-qa-squad-data-not-a-list", FT_QA.replace("{squad}", "{t}/q.json"),
         files={"q.json": '{"version": "1.1", "data": {"title": "t"}}'}, out="{t}/out", mentions=("q.json",)),
    case("finetune-qa-paragraphs-not-a-list", FT_QA.replace("{squad}", "{t}/q.json"),
         files={"q.json": '{"version": "1.1", "data": [{"title": "t", "paragraphs": 7}]}'}, out="{t}/out",
         mentions=("q.json",)),
    case("finetune-qa-answer-start-mismatch", FT_QA.replace("{squad}", "{t}/q.json"),
         files={"q.json": squad(answers=[{"text": "Henry Winstanley", "answer_start": 3}])}, out="{t}/out",
         mentions=("answer_start",)),
    case("finetune-qa-answer-start-is-a-string", FT_QA.replace("{squad}", "{t}/q.json"),
         files={"q.json": squad(answers=[{"text": "Henry Winstanley", "answer_start": "31"}])}, out="{t}/out",
         mentions=("answer_start",)),
    case("finetune-qa-max-length-5", FT_QA + " --max-length 5", out="{t}/out", mentions=("length",)),
    case("finetune-qa-stride-negative", FT_QA + " --stride -8", out="{t}/out", mentions=("stride",)),
    case("finetune-choice-only-one-choice", FT_MC.replace("{mc}", "{t}/m.jsonl"),
         files={"m.jsonl": '{"context": "A cat sat.", "choices": ["Then it slept."], "label": 0}\n'}, out="{t}/out",
         mentions=("m.jsonl:1",)),
    case("finetune-choice-label-out-of-range", FT_MC.replace("{mc}", "{t}/m.jsonl"),
         files={"m.jsonl": '{"context": "A cat sat.", "choices": ["slept", "flew"], "label": 2}\n'}, out="{t}/out",
         mentions=("m.jsonl:1",)),
    case("finetune-choice-choices-is-a-string", FT_MC.replace("{mc}", "{t}/m.jsonl"),
         files={"m.jsonl": '{"context": "A cat sat.", "choices": "slept|flew", "label": 0}\n'}, out="{t}/out",
         mentions=("m.jsonl:1",)),

    # ---- evaluate -----------------------------------------------------------------------------------
    case("evaluate-model-missing", EVAL.replace("{ftrun}", "{t}/nope"), mentions=("nope",)),
    case("evaluate-data-missing", EVAL.replace("{dev_csv}", "{t}/nope.csv"), mentions=("nope.csv",)),
    case("evaluate-data-empty-file", EVAL.replace("{dev_csv}", "{t}/d.csv"), files={"d.csv": b""},
         mentions=("d.csv",)),
    case("evaluate-label-unseen-in-training", EVAL.replace("{dev_csv}", "{t}/d.csv"),
         files={"d.csv": "text,label\nfine,pos\nmeh,neutral\n"}, mentions=("neutral",)),
    case("evaluate-batch-size-0", EVAL + " --batch-size 0", mentions=("batch",)),
    case("evaluate-max-length-over-model-limit", EVAL.replace("{dev_csv}", "{t}/d.csv") + " --max-length 4096",
         files={"d.csv": f"text,label\n{LONG_TEXT},pos\n"}, mentions=("4096",)),
    case("evaluate-long-text-typo", EVAL + " --long-text windows", mentions=("windows",)),
    case("evaluate-model-settings-not-an-object", EVAL.replace("{ftrun}", "{t}/m"), files={"m": Copy("ftrun")},
         setup=_edit_json("m/config.json", bertkit="classify"), mentions=("config.json",)),

    # ---- predict ------------------------------------------------------------------------------------
    case("predict-input-missing", PRED.replace("{t}/in.txt", "{t}/nope.txt"), out="{t}/pred.jsonl",
         mentions=("nope.txt",)),
    case("predict-input-empty", PRED, files={"in.txt": b""}, out="{t}/pred.jsonl", mentions=("in.txt",)),
    case("predict-input-broken-json-line", PRED, files={"in.txt": 'fine text\n{"text": "no end\n'},
         out="{t}/pred.jsonl", mentions=("in.txt:2",)),
    case("predict-input-not-utf8", PRED, files={"in.txt": b"fine\n\xff\xfebroken\n"}, out="{t}/pred.jsonl",
         mentions=("in.txt:2",)),
    case("predict-stdin-binary", "predict --model {ftrun}", stdin=PNG, out="-", mentions=("stdin",)),
    case("predict-output-is-a-directory", PRED, files={"in.txt": "hello\n", "pred.jsonl": DIR},
         out="{t}/pred.jsonl", mentions=("pred.jsonl",)),
    case("predict-output-in-missing-folder", PRED.replace("{t}/pred.jsonl", "{t}/no/such/pred.jsonl"),
         files={"in.txt": "hello\n"}, out="{t}/no/such/pred.jsonl", may_create=True),
    case("predict-batch-size-0", PRED + " --batch-size 0", files={"in.txt": "hello\n"}, out="{t}/pred.jsonl",
         mentions=("batch",)),
    case("predict-existing-output-kept-on-error", PRED, files={"in.txt": b"ok\n\xc3\x28\n", "pred.jsonl": "{}\n"},
         out="{t}/pred.jsonl", mentions=("in.txt:2",)),
    case("predict-qa-plain-text-lines", PRED.replace("{ftrun}", "{qa_model}"),
         files={"in.txt": "who built it?\n"}, out="{t}/pred.jsonl", mentions=("question",)),
    case("predict-choice-object-without-choices", PRED.replace("{ftrun}", "{choice_model}"),
         files={"in.txt": '{"context": "A cat sat."}\n'}, out="{t}/pred.jsonl", mentions=("choices",)),

    # ---- demo (the Penn Treebank replaced by a small corpus, see demo_corpus) ---------------------------
    case("demo-steps-0", "demo --out {t}/demo --steps 0", out="{t}/demo", mentions=("steps",)),
    case("demo-batch-size-0", "demo --out {t}/demo --batch-size 0", out="{t}/demo", mentions=("batch",)),
    case("demo-vocab-size-0", "demo --out {t}/demo --vocab-size 0", out="{t}/demo", mentions=("vocab",)),
    case("demo-config-typo", "demo --out {t}/demo --config tinny", out="{t}/demo", mentions=("tinny",)),
    case("demo-out-is-a-file", "demo --out {t}/demo", files={"demo": "a file\n"}, out="{t}/demo",
         mentions=("demo",)),
]


@pytest.fixture(scope="module", autouse=True)
def parser_docs_cached():
    """`main` rebuilds the whole argparse parser on every call, re-reading each config class's source
    for its help texts (~0.15 s); remember those texts, so that nearly 200 calls stay quick. The
    subprocess cases run the command untouched."""
    import functools

    import bertkit.cli

    with pytest.MonkeyPatch.context() as mp:
        if callable(getattr(bertkit.cli, "field_docs", None)):
            mp.setattr(bertkit.cli, "field_docs", functools.cache(bertkit.cli.field_docs))
        yield


@pytest.fixture
def demo_corpus(monkeypatch, world):
    """The demo's Penn Treebank download replaced by the small corpus: an option the demo should
    reject must fail in seconds, not after minutes of vocabulary training on the real text."""
    import bertkit.demo

    def small_penn_treebank(directory: Path) -> Path:
        directory.mkdir(parents=True, exist_ok=True)  # as the real one does
        path = directory / "ptb.train.txt"
        shutil.copy(world["corpus"], path)
        return path

    monkeypatch.setattr(bertkit.demo, "penn_treebank", small_penn_treebank)


STDOUT_RESULTS = ("similarity", "tokenize", "info", "fill-mask", "evaluate")


@pytest.mark.parametrize("c", CASES)
def test_bad_input(c: Case, world: World, tmp_path: Path, capfd, request, launched) -> None:
    # `launched`: the subprocess cases start with the first case and run alongside these
    if c.argv.startswith("demo"):
        request.getfixturevalue("demo_corpus")
    argv, names = materialise(c, tmp_path / "case", world)
    c = Case(**{**c.__dict__, "mentions": tuple(m.format(**names) for m in c.mentions)})
    if c.out is None and argv[0] in STDOUT_RESULTS:
        c.out = "-"  # their results go to stdout: a failed run must print none
    out = Path(c.out.format(**names)) if c.out and c.out != "-" else None
    before = snapshot(out) if out is not None else None
    capfd.readouterr()
    result = run_in_process(argv, capfd, stdin=c.stdin)
    check(c, result, out, before)


# --------------------------------------------------------------------- the same, as separate processes

SUBPROCESS_CASES = {
    "subprocess-embed-input-missing": Case("embed --model {tiny} -i {t}/nope.txt -o {t}/v.npy", out="{t}/v.npy",
                                           mentions=("nope.txt",)),
    "subprocess-finetune-task-typo": Case(FT.replace("classify", "clasify"), out="{t}/out", mentions=("clasify",)),
    "subprocess-info-truncated-safetensors": Case("info --model {t}/m", files={"m": Copy("tiny")},
                                                  setup=_truncate("m/model.safetensors", 0.5),
                                                  mentions=("model.safetensors",)),
    "subprocess-fill-mask-top-k-negative": Case("fill-mask --model {ptrun} 'the [MASK] sat' --top-k -1",
                                                mentions=("top",)),
    "subprocess-predict-output-is-a-directory": Case(PRED, files={"in.txt": "hello\n", "pred.jsonl": DIR},
                                                     out="{t}/pred.jsonl", mentions=("pred.jsonl",)),
}


@pytest.fixture(scope="module")
def launched(world, tmp_path_factory):
    """Start every subprocess case at once (each spends most of its time importing torch)."""
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONWARNINGS="")
    running = {}
    for name, c in SUBPROCESS_CASES.items():
        t = tmp_path_factory.mktemp(name)
        argv, names = materialise(c, t / "case", world)
        out = Path(c.out.format(**names)) if c.out and c.out != "-" else None
        proc = subprocess.Popen(bertkit_command() + argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                stdin=subprocess.DEVNULL, env=env)
        running[name] = (proc, names, out, snapshot(out) if out is not None else None)
    yield running
    for proc, *_ in running.values():
        if proc.poll() is None:
            proc.kill()


@pytest.mark.parametrize("name", list(SUBPROCESS_CASES))
def test_bad_input_subprocess(name: str, launched) -> None:
    proc, names, out, before = launched[name]
    try:
        stdout, stderr = proc.communicate(timeout=120)
    except subprocess.TimeoutExpired:
        proc.kill()
        pytest.fail("still running after 120 s")
    c = SUBPROCESS_CASES[name]
    c = Case(**{**c.__dict__, "mentions": tuple(m.format(**names) for m in c.mentions)})
    if c.out is None and c.argv.split()[0] in STDOUT_RESULTS:
        c.out = "-"
    result = Result(proc.returncode, stdout.decode("utf-8", "replace"), stderr.decode("utf-8", "replace"))
    check(c, result, out, before)


# ------------------------------------------------------------------------------ fuzzing the readers

FUZZ = settings(max_examples=150, deadline=None, derandomize=True, database=None,
                suppress_health_check=list(HealthCheck))

# characters that mean something to one format or another, and some that mean trouble
_ALPHABET = list(",;\t\n\r \"'{}[]:#-.\\0123456789abAB_\ufeff\u00e9\u4e2d\x00\x85\u2028")
_text = st.text(alphabet=st.sampled_from(_ALPHABET), max_size=200)
_short = st.text(max_size=12)
_scalars = st.one_of(st.none(), st.booleans(), st.integers(-3, 40), st.floats(allow_nan=True), _short,
                     st.sampled_from(["A", "B", "0", "1", "pos", "B-PER", "O", ""]))
_json_values = st.recursive(_scalars, lambda inner: st.one_of(
    st.lists(inner, max_size=4), st.dictionaries(_short, inner, max_size=4)), max_leaves=12)


def _maybe(strategy):
    """Usually the right type, sometimes any JSON value at all."""
    return st.one_of(strategy, strategy, strategy, strategy, _scalars, _json_values)


def _object(**fields):
    return st.fixed_dictionaries({}, optional={k: _maybe(v) for k, v in fields.items()})


_words = st.lists(_short, max_size=5)
_tags = st.lists(st.sampled_from(["O", "B-PER", "I-PER", "B-LOC", "", "X"]), max_size=5)
_answer = _object(text=_short, answer_start=st.integers(-5, 80))
_answers = st.one_of(st.lists(_maybe(_answer), max_size=3),
                     _object(text=st.lists(_short, max_size=3), answer_start=st.lists(st.integers(-2, 60), max_size=3)))
_record = _object(
    text=_short, text_pair=_short, sentence1=_short, sentence2=_short, label=_scalars, labels=_words,
    tokens=_words, words=_words, tags=_tags, ner_tags=_tags,
    id=_short, question=st.one_of(_short, _object(stem=_short, choices=st.lists(_object(label=_short, text=_short),
                                                                                 max_size=4))),
    context=st.text(max_size=60), answers=_answers, is_impossible=st.booleans(),
    choices=st.lists(_short, max_size=5), endings=st.lists(_short, max_size=5), ending0=_short, ending1=_short,
    sent1=_short, sent2=_short, answerKey=st.sampled_from(["A", "B", "C", "1", "z", ""]),
)
_squad_qa = st.fixed_dictionaries(
    {"id": _maybe(_short), "question": _maybe(_short), "answers": _maybe(_answers)},
    optional={"is_impossible": _maybe(st.booleans())})
_paragraph = st.fixed_dictionaries({"context": _maybe(st.text(max_size=60)),
                                    "qas": _maybe(st.lists(_maybe(_squad_qa), min_size=1, max_size=3))})
_article = st.fixed_dictionaries({"paragraphs": _maybe(st.lists(_maybe(_paragraph), min_size=1, max_size=3))},
                                 optional={"title": _short})
_squad = st.builds(lambda data, version: {"version": version, "data": data},
                   st.lists(_maybe(_article), min_size=1, max_size=3), st.sampled_from(["v1.1", "v2.0"]))


def _lines(parts: list, end: str) -> bytes:
    """A file from pieces: JSON objects become lines, text stays text, bytes stay bytes."""
    out = b""
    for part in parts:
        if isinstance(part, bytes):
            out += part
        elif isinstance(part, str):
            out += (part + end).encode("utf-8")
        else:
            out += (json.dumps(part, ensure_ascii=False) + end).encode("utf-8")
    return out


_ends = st.sampled_from(["\n", "\r\n", "\r"])
_bom = st.sampled_from([b"", b"\xef\xbb\xbf"])
_jsonl = st.builds(lambda bom, parts, end: bom + _lines(parts, end), _bom,
                   st.lists(st.one_of(_record, _record, _text, _json_values, st.binary(max_size=8)), max_size=6), _ends)
_columns = ["text", "label", "sentence1", "sentence2", "question", "sentence", "ending0", "ending1", "sent1",
            "sent2", "A", "B", "answerKey", "context", "score", ""]
_cell = st.one_of(st.text(alphabet=st.sampled_from(_ALPHABET), max_size=12), st.sampled_from(["pos", "neg", "0", "1", ""]))


def _table(delimiter: str):
    def build(bom, header, rows, end):
        lines = [delimiter.join(header)] + [delimiter.join(row) for row in rows]
        return bom + end.join(lines).encode("utf-8")
    return st.builds(build, _bom, st.lists(st.sampled_from(_columns), min_size=1, max_size=5),
                     st.lists(st.lists(_cell, max_size=6), max_size=6), _ends)


_conll_line = st.one_of(
    st.builds(lambda w, t, sep: f"{w}{sep}{t}", _short, st.sampled_from(["O", "B-PER", "I-LOC", ""]),
              st.sampled_from([" ", "\t", "  ", " X "])),
    st.builds(lambda cols: "\t".join(cols), st.lists(_short, max_size=11)),  # CoNLL-U-ish rows
    st.sampled_from(["", "   ", "-DOCSTART- -X- O", "# sent_id = 1", "1-2\tdu\t_\t_", "1.1\tx\t_\tNOUN"]),
    _text,
)
_conll = st.builds(lambda bom, lines, end: bom + end.join(lines).encode("utf-8", "surrogatepass"),
                   _bom, st.lists(_conll_line, max_size=12), _ends)
_raw = st.one_of(st.binary(max_size=300), _text.map(lambda s: s.encode("utf-8")),
                 _json_values.map(lambda v: json.dumps(v).encode()))

FORMATS = {
    ".csv": _table(","), ".tsv": _table("\t"), ".jsonl": _jsonl, ".conll": _conll, ".conllu": _conll,
    ".json": _squad.map(lambda d: json.dumps(d, indent=1).encode()),
}

READERS = [("classify", ".csv"), ("classify", ".tsv"), ("classify", ".jsonl"), ("tag", ".conll"),
           ("tag", ".conllu"), ("tag", ".jsonl"), ("qa", ".json"), ("qa", ".jsonl"), ("choice", ".jsonl"),
           ("choice", ".csv")]


@pytest.fixture(scope="module")
def fuzz_dir():
    with tempfile.TemporaryDirectory(prefix="bertkit-fuzz-") as d:
        yield Path(d)


@pytest.mark.parametrize("task, suffix", READERS, ids=[f"{t}-reader-{s[1:]}" for t, s in READERS])
def test_fuzz_task_readers(task: str, suffix: str, fuzz_dir: Path) -> None:
    """Whatever the file holds, the task's reader returns examples or raises BertkitError."""
    from bertkit.tasks import BadInput, DataOptions, make_task

    path = fuzz_dir / f"{task}-input{suffix}"

    @FUZZ
    @given(data=st.one_of(FORMATS[suffix], FORMATS[suffix], _raw), skip=st.booleans(), labelled=st.booleans())
    def read(data: bytes, skip: bool, labelled: bool) -> None:
        path.write_bytes(data)
        with warnings.catch_warnings(), _quiet_logging():
            warnings.simplefilter("ignore")
            try:
                make_task(task, DataOptions(skip_bad_lines=skip)).read(path, BadInput(skip), labelled=labelled)
            except BertkitError:
                pass

    read()


_corpus_jsonl = st.builds(lambda parts, end: _lines(parts, end), st.lists(st.one_of(
    _object(text=st.text(max_size=40), body=_short), _text, st.binary(max_size=8)), max_size=6), _ends)
_corpus_bytes = st.one_of(
    _raw, _conll, _corpus_jsonl,
    _text.map(lambda s: gzip.compress(s.encode("utf-8"))),
    st.tuples(_text, st.integers(1, 40)).map(lambda p: gzip.compress(p[0].encode("utf-8"))[: p[1]]),
    st.tuples(_text, st.integers(1, 60)).map(lambda p: bz2.compress(p[0].encode("utf-8"))[: p[1]]),
    st.just(b"\x28\xb5\x2f\xfd" + bytes(20)),  # zstd
)


@pytest.mark.parametrize("suffix", [".txt", ".jsonl", ".txt.gz"], ids=["txt", "jsonl", "txt.gz"])
def test_fuzz_corpus_reader(suffix: str, fuzz_dir: Path) -> None:
    """Whatever the file holds, the pretraining corpus reader yields documents or raises BertkitError."""
    from bertkit.data.corpus import iter_documents

    path = fuzz_dir / f"corpus{suffix}"

    @FUZZ
    @given(data=_corpus_bytes, max_line_chars=st.sampled_from([1, 5, 100_000]))
    def read(data: bytes, max_line_chars: int) -> None:
        path.write_bytes(data)
        with _quiet_logging():
            try:
                for doc in iter_documents([path], warn=lambda message: None, max_line_chars=max_line_chars):
                    assert len(doc.sentences) == len(doc.lines)
            except BertkitError:
                pass

    read()
