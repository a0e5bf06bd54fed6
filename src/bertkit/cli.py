"""The `bertkit` command: one subcommand per job, each a small function over parsed arguments.

Problems a user can fix (a missing file, a bad checkpoint, bad input) end with one line on stderr
and exit status 2, never a traceback.
"""

from __future__ import annotations

import argparse
import ast
import dataclasses
import inspect
import json
import logging
import re
import sys
import textwrap
import types
import typing
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from bertkit import fileio, options
from bertkit.errors import BertkitError, InputError
from bertkit.options import float_in, int_in, non_negative_int, positive_int, seed_int

SEGMENTERS = ("jieba",)
DEMO_SENTENCES = [
    "A man is playing a guitar.",
    "Someone is strumming a guitar on stage.",
    "The stock market fell sharply today.",
    "Shares dropped as investors worried about inflation.",
    "北京是中国的首都。",
]


def _add_model(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--model",
        metavar="DIR",
        help="BERT checkpoint directory (config.json, vocab.txt, weights); default: the installed all-MiniLM-L6-v2",
    )


def _read_lines(source: str) -> list[str]:
    """Texts, one per line, from a file or '-' for standard input; blank lines are skipped."""
    if source == "-":
        data = sys.stdin.buffer.read()
        name = "<stdin>"
    else:
        data, name = fileio.check_input_file(source).read_bytes(), source
    lines = []
    for number, raw in enumerate(data.split(b"\n"), start=1):
        try:
            line = raw.decode("utf-8").rstrip("\r")
        except UnicodeDecodeError as e:
            raise InputError(f"{name}:{number}: not valid UTF-8 (byte {e.start})") from None
        if line.strip():
            lines.append(line)
    return lines


# ---- typed configs as options ------------------------------------------------------------------------


def field_docs(cls: type) -> dict[str, str]:
    """The docstring line under each field of a dataclass (our configs document every field that way)."""
    tree = ast.parse(textwrap.dedent(inspect.getsource(cls)))
    body = tree.body[0].body  # type: ignore[attr-defined]
    docs = {}
    for node, after in zip(body, body[1:]):
        if isinstance(node, ast.AnnAssign) and isinstance(after, ast.Expr) and isinstance(after.value, ast.Constant):
            docs[node.target.id] = str(after.value.value).strip()  # type: ignore[attr-defined]
    return docs


def add_config_options(parser: argparse.ArgumentParser, cls: type, *, skip: Sequence[str] = (),
                       defaults: dict[str, Any] | None = None, unset: bool = False,
                       choices: dict[str, Sequence[str]] | None = None) -> None:
    """One --option per dataclass field: the config class is the schema and the help text.

    `defaults` replaces some fields' defaults; unset=True makes every default None (options that
    only override values stored elsewhere, e.g. in a fine-tuned model's config.json). A field with a
    fixed set of values (`metadata=options.choices(...)`, a `Literal[...]` annotation, or an entry of
    `choices`) gets argparse choices, listed in --help and checked before any work."""
    docs, hints = field_docs(cls), typing.get_type_hints(cls)
    defaults = defaults or {}
    for f in dataclasses.fields(cls):
        if f.name in skip:
            continue
        flag = options.flag(f.name)
        kind = _plain_type(hints[f.name])
        default = None if f.default is dataclasses.MISSING else f.default
        default = None if unset else defaults.get(f.name, default)
        required = f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING and not unset
        help_text = docs.get(f.name, "").replace("%", "%%")
        help_text += "" if required or default is None else f" (default: {default})"
        values = field_choices(f, kind, choices or {})
        if kind is bool:
            parser.add_argument(flag, action=argparse.BooleanOptionalAction, default=default, help=help_text)
        elif typing.get_origin(kind) is tuple:
            parser.add_argument(flag, type=float, nargs=2, default=default, help=help_text)
        elif values:
            parser.add_argument(flag, type=options.choice(values), choices=values, default=default,
                                required=required, help=help_text)
        else:
            parser.add_argument(flag, type=kind, default=default, required=required, help=help_text,
                                metavar=f.name.upper())


def field_choices(f: dataclasses.Field, kind: Any, extra: dict[str, Sequence[str]]) -> tuple[str, ...] | None:
    """The fixed values of a field: its metadata's "choices", a Literal annotation, or `extra`."""
    if "choices" in f.metadata:
        return tuple(f.metadata["choices"])
    if typing.get_origin(kind) is typing.Literal:
        return typing.get_args(kind)
    return tuple(extra[f.name]) if f.name in extra else None


def _plain_type(hint: Any) -> Any:
    """`int | None` -> int; `Path` stays Path."""
    if isinstance(hint, types.UnionType) or typing.get_origin(hint) is typing.Union:
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        return args[0]
    return hint


def config_from_args(cls: type, args: argparse.Namespace, **extra: Any):
    names = {f.name for f in dataclasses.fields(cls)}
    values = {k: v for k, v in vars(args).items() if k in names}
    values.update(extra)
    if "betas" in values and values["betas"] is not None:
        values["betas"] = tuple(values["betas"])
    return cls(**values)


# ---- embed ------------------------------------------------------------------------------------------


def cmd_embed(args: argparse.Namespace) -> int:
    from bertkit.embedding import Embedder

    _check_vectors_output(args.output)
    texts = _read_lines(args.input)
    if not texts:
        raise InputError(f"{'<stdin>' if args.input == '-' else args.input}: no texts to embed (one per line)")
    embedder = Embedder.from_pretrained(args.model)
    vectors = embedder(
        texts, batch_size=args.batch_size, max_length=args.max_length,
        normalize=not args.no_normalize, progress=sys.stderr.isatty(),
    )
    _write_vectors(texts, vectors, args.output)
    if args.output != "-":
        print(f"wrote {len(texts)} vectors of dimension {embedder.dim} to {args.output}", file=sys.stderr)
    return 0


def _check_vectors_output(output: str) -> None:
    """Before any work: a .npy or .jsonl file that can be written, or '-'."""
    if output == "-":
        return
    if not output.endswith((".npy", ".jsonl")):
        raise InputError(f"{output}: output must end in .npy or .jsonl (or be - for JSONL on stdout)")
    fileio.check_output_file(output)


def _write_vectors(texts: list[str], vectors, output: str) -> None:
    """A .npy file, or JSONL (a file or '-': stdout); files are written atomically."""
    import numpy as np

    if output == "-":
        _write_vector_lines(texts, vectors, sys.stdout)
    elif output.endswith(".npy"):
        with fileio.atomic_write(output, "wb") as f:
            np.save(f, vectors)
    else:
        with fileio.atomic_write(output) as f:
            _write_vector_lines(texts, vectors, f)


def _write_vector_lines(texts: list[str], vectors, out) -> None:
    for text, vector in zip(texts, vectors):
        out.write(json.dumps({"text": text, "embedding": [round(float(x), 7) for x in vector]}, ensure_ascii=False))
        out.write("\n")


# ---- similarity -------------------------------------------------------------------------------------


def cmd_similarity(args: argparse.Namespace) -> int:
    return cmd_similarity_texts(args.model, args.texts)


def cmd_similarity_texts(model: str | None, texts: list[str] | None) -> int:
    from bertkit.embedding import Embedder

    texts = texts or DEMO_SENTENCES
    embedder = Embedder.from_pretrained(model)
    vectors = embedder(texts)
    sims = vectors @ vectors.T
    print(f"model: {model or 'all-MiniLM-L6-v2 (built-in default)'}, {len(texts)} texts, dimension {embedder.dim}")
    print("cosine similarity:")
    width = max(len(str(i)) for i in range(len(texts))) + 1
    print(" " * (width + 1) + "".join(f"{j:>7}" for j in range(len(texts))))
    for i, text in enumerate(texts):
        print(f"[{i}]".rjust(width + 1) + "".join(f"{sims[i, j]:7.3f}" for j in range(len(texts))) + f"   {text}")
    return 0


# ---- tokenize ---------------------------------------------------------------------------------------


def cmd_tokenize(args: argparse.Namespace) -> int:
    from bertkit.embedding import default_model_dir
    from bertkit.tokenizer import Tokenizer

    tok = Tokenizer.from_pretrained(args.model or default_model_dir())
    for text in args.texts or _read_lines("-"):
        enc = tok(text, args.pair, truncation=True)
        tokens = tok.convert_ids_to_tokens(enc["input_ids"])
        print(json.dumps({"tokens": tokens, "input_ids": enc["input_ids"]}, ensure_ascii=False))
    return 0


# ---- prepare and pretrain ---------------------------------------------------------------------------


def cmd_prepare(args: argparse.Namespace) -> int:
    from bertkit.data.shards import prepare
    from bertkit.tokenizer import Tokenizer

    fileio.check_output_dir(args.out)
    prepare(
        args.files, Tokenizer.from_pretrained(args.tokenizer), args.out, valid_fraction=args.valid_fraction,
        shard_tokens=args.shard_tokens, seed=args.seed, segmenter=args.segmenter, text_field=args.text_field,
        document_sentences=args.document_sentences, progress=args.progress,
    )
    print(f"prepared corpus written to {args.out}", file=sys.stderr)
    return 0


def cmd_pretrain(args: argparse.Namespace) -> int:
    from bertkit.pretrain import PretrainArgs, run_pretrain
    from bertkit.train import TrainConfig

    pretrain = config_from_args(PretrainArgs, args)
    train = _train_config(TrainConfig, args)
    try:
        run_pretrain(pretrain, train)
    except KeyboardInterrupt:
        return 130
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from bertkit.demo import DemoConfig, run_demo

    demo = config_from_args(DemoConfig, args)
    fileio.check_output_dir(demo.out)
    try:
        run_demo(demo)
    except KeyboardInterrupt:
        return 130
    return 0


# ---- finetune, evaluate, predict ----------------------------------------------------------------------

FINETUNE_DEFAULTS = {"lr": 5e-5, "warmup": 0.1, "batch_size": 32, "log_every": 10, "keep_checkpoints": 1}


def cmd_finetune(args: argparse.Namespace) -> int:
    from bertkit.finetune import FinetuneArgs, run_finetune
    from bertkit.tasks import DataOptions
    from bertkit.train import TrainConfig

    finetune, data = config_from_args(FinetuneArgs, args), config_from_args(DataOptions, args)
    train = _train_config(TrainConfig, args, steps=1)  # steps follow from --epochs
    fileio.check_input_file(finetune.train)
    if finetune.dev is not None:
        fileio.check_input_file(finetune.dev)
    try:
        run_finetune(finetune, data, train)
    except KeyboardInterrupt:
        return 130
    return 0


def _train_config(cls: type, args: argparse.Namespace, **extra: Any):
    """The TrainConfig of the options, checked (values and --out) before any data or model is loaded."""
    config = config_from_args(cls, args, **extra)  # TrainConfig checks its values as it is made
    fileio.check_output_dir(config.out)
    return config


def _data_overrides(args: argparse.Namespace) -> dict[str, Any]:
    from bertkit.tasks import DataOptions

    return {f.name: getattr(args, f.name) for f in dataclasses.fields(DataOptions)}


def cmd_evaluate(args: argparse.Namespace) -> int:
    from bertkit.finetune import run_evaluate

    fileio.check_input_file(args.data)
    run_evaluate(args.model, Path(args.data), _data_overrides(args), batch_size=args.batch_size, as_json=args.json)
    return 0


def cmd_predict(args: argparse.Namespace) -> int:
    from bertkit.finetune import run_predict

    if args.input != "-":
        fileio.check_input_file(args.input)
    if args.output != "-":
        fileio.check_output_file(args.output)
    run_predict(args.model, args.input, args.output, _data_overrides(args), batch_size=args.batch_size)
    return 0


# ---- fill-mask --------------------------------------------------------------------------------------


def cmd_fill_mask(args: argparse.Namespace) -> int:
    from bertkit.fill_mask import FillMask

    fill = FillMask.from_pretrained(args.model)
    for n, candidates in enumerate(fill(args.text, top_k=args.top_k), start=1):
        print(f"[MASK] {n}:" if args.text.count("[MASK]") > 1 else "[MASK]:")
        for c in candidates:
            print(f"  {c.token:<20} {c.probability:.4f}")
    return 0


# ---- tokenizer train --------------------------------------------------------------------------------


def cmd_tokenizer_train(args: argparse.Namespace) -> int:
    from bertkit.vocab import train_vocabulary

    fileio.check_output_dir(args.out)
    train_vocabulary(
        args.files, out=args.out, vocab_size=args.vocab_size, lowercase=not args.cased,
        chinese_chars=not args.no_chinese_chars, min_frequency=args.min_frequency,
        limit_alphabet=args.limit_alphabet,
    )
    return 0


# ---- info -------------------------------------------------------------------------------------------


def cmd_info(args: argparse.Namespace) -> int:
    from bertkit.config import BertConfig
    from bertkit.embedding import default_model_dir
    from bertkit.heads import HEADS
    from bertkit.model import num_parameters

    directory = Path(args.model) if args.model else default_model_dir()
    config = BertConfig.load(directory)
    architecture = (config.architectures or ["BertModel"])[0]
    model = HEADS.get(architecture, HEADS["BertModel"]).from_pretrained(directory)
    print(f"{directory}: {architecture}")
    print(
        f"  layers {config.num_hidden_layers}, hidden {config.hidden_size}, heads {config.num_attention_heads}, "
        f"feed-forward {config.intermediate_size}, vocabulary {config.vocab_size}, "
        f"max length {config.max_position_embeddings}"
    )
    print(f"  parameters: {num_parameters(model):,}")
    if config.id2label:
        print(f"  labels: {', '.join(config.id2label[i] for i in sorted(config.id2label))}")
    return 0


# ---- entry point ------------------------------------------------------------------------------------


class Parser(argparse.ArgumentParser):
    """argparse with bertkit's one-line errors: an InputError that `main` prints as
    'bertkit: error: --batch-size must be at least 1, got 0' (exit status 2)."""

    def error(self, message: str) -> typing.NoReturn:
        raise InputError(usage_error(message, self.prog))


def usage_error(message: str, prog: str) -> str:
    """argparse's 'argument --batch-size: must be at least 1, got 0' -> '--batch-size must be at least 1,
    got 0'; other complaints (a missing or unknown option) point to --help."""
    match = re.fullmatch(r"argument ([^\s:/]+)(?:/\S+)?: (.*)", message, flags=re.DOTALL)
    if match and match.group(2).startswith("must "):
        return f"{match.group(1)} {match.group(2)}"
    if match:
        message = f"{match.group(1)}: {match.group(2)}"
    return f"{message} (see {prog} --help)"


# TrainConfig's fields with a fixed set of values (until train.py declares them with options.choices)


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(prog="bertkit", description="BERT end to end: vocabularies, pretraining, embeddings.")
    parser.add_argument("--version", action="version", version=_version())
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    def command(name: str, func: Callable[[argparse.Namespace], int], help: str) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help, description=help)
        p.set_defaults(func=func)
        return p

    p = command("embed", cmd_embed, "Sentence embeddings (normalised mean pooling) for texts, one per line.")
    _add_model(p)
    p.add_argument("--input", "-i", default="-", metavar="FILE", help="texts, one per line (default: stdin)")
    p.add_argument("--output", "-o", default="-", metavar="FILE", help=".npy or .jsonl file (default: JSONL on stdout)")
    p.add_argument("--batch-size", type=positive_int, default=32)
    p.add_argument("--max-length", type=int_in(3), default=None, help="truncate texts to this many tokens")
    p.add_argument("--no-normalize", action="store_true", help="leave vectors unnormalised")

    p = command("similarity", cmd_similarity, "Cosine similarities between texts (a built-in set if none given).")
    _add_model(p)
    p.add_argument("texts", nargs="*", metavar="TEXT")

    p = command("tokenize", cmd_tokenize, "Show the WordPiece tokens and ids of texts (stdin if none given).")
    _add_model(p)
    p.add_argument("texts", nargs="*", metavar="TEXT")
    p.add_argument("--pair", default=None, metavar="TEXT", help="a second segment for every text")

    p = command("prepare", cmd_prepare, "Tokenize raw text into memory-mapped shards for pretraining.")
    p.add_argument("files", nargs="+", metavar="FILE",
                   help="plain text (a sentence per line, blank line between documents), .jsonl, gzip; or directories")
    p.add_argument("--tokenizer", required=True, metavar="DIR", help="a tokenizer or checkpoint directory (vocab.txt)")
    p.add_argument("--out", required=True, metavar="DIR")
    p.add_argument("--valid-fraction", type=float_in(0, 1, high_open=True), default=0.01,
                   help="share of documents held out, at least 0 and below 1 (default: 0.01)")
    p.add_argument("--shard-tokens", type=positive_int, default=16_000_000, help="tokens per shard (default: 16M)")
    p.add_argument("--seed", type=seed_int, default=0)
    p.add_argument("--segmenter", type=options.choice(SEGMENTERS), choices=SEGMENTERS, default=None,
                   help="mark Chinese word boundaries with jieba (for --whole-word-masking)")
    p.add_argument("--text-field", default="text", help="field holding the text in .jsonl files (default: text)")
    p.add_argument("--document-sentences", type=positive_int, default=None, metavar="N",
                   help="cut documents into parts of N sentences (for text without blank lines between documents)")
    p.add_argument("--progress", action=argparse.BooleanOptionalAction, default=True,
                   help="show a progress bar (default: on)")

    from bertkit.pretrain import PretrainArgs
    from bertkit.train import TrainConfig

    p = command("pretrain", cmd_pretrain, "Pretrain BERT (MLM + NSP/SOP) on prepared shards; torchrun for many processes.")
    add_config_options(p, PretrainArgs)
    add_config_options(p, TrainConfig)

    from bertkit.finetune import FinetuneArgs
    from bertkit.tasks import DataOptions

    p = command("finetune", cmd_finetune, "Fine-tune a BERT checkpoint for classify, tag, qa or choice; "
                "evaluates on --dev every epoch and keeps the best model.")
    add_config_options(p, FinetuneArgs)
    add_config_options(p, DataOptions)
    add_config_options(p, TrainConfig, skip=("steps", "eval_every", "save_every"), defaults=FINETUNE_DEFAULTS)

    p = command("evaluate", cmd_evaluate, "Score a fine-tuned model on a labelled file.")
    p.add_argument("--model", required=True, metavar="DIR", help="a model from bertkit finetune")
    p.add_argument("--data", required=True, metavar="FILE", help="labelled file in the task's format")
    p.add_argument("--json", action="store_true", help="print the metrics as one JSON object on stdout")
    p.add_argument("--batch-size", type=positive_int, default=64)
    add_config_options(p, DataOptions, unset=True)

    p = command("predict", cmd_predict, "Predict with a fine-tuned model; writes JSONL, one line per input.")
    p.add_argument("--model", required=True, metavar="DIR", help="a model from bertkit finetune")
    p.add_argument("--input", "-i", default="-", metavar="FILE",
                   help="a file in the task's format, or plain text with an input per line ('-': stdin)")
    p.add_argument("--output", "-o", default="-", metavar="FILE", help="JSONL file (default: stdout)")
    p.add_argument("--batch-size", type=positive_int, default=64)
    add_config_options(p, DataOptions, unset=True)

    from bertkit.demo import DemoConfig

    p = command("demo", cmd_demo, "Embed with MiniLM, then train a vocabulary, prepare and pretrain a small BERT "
                "on the Penn Treebank, and fill masks with it (about three minutes on 2 cores).")
    add_config_options(p, DemoConfig)

    p = command("fill-mask", cmd_fill_mask, "Predict the tokens behind [MASK] with a masked-LM checkpoint.")
    p.add_argument("--model", required=True, metavar="DIR", help="checkpoint with an MLM head (e.g. from bertkit pretrain)")
    p.add_argument("text", help='text with one or more [MASK] tokens, e.g. "the capital of france is [MASK] ."')
    p.add_argument("--top-k", type=positive_int, default=5)

    p = command("tokenizer", lambda a: (p_tok.print_help(), 2)[1], "Train WordPiece vocabularies.")
    p_tok = p
    tsub = p.add_subparsers(dest="tokenizer_command", metavar="ACTION")
    t = tsub.add_parser("train", help="Train a WordPiece vocabulary from text files.",
                        description="Train a WordPiece vocabulary with BERT's special tokens from text files "
                        "(plain text, .jsonl with a text field, gzip; English or Chinese).")
    t.set_defaults(func=cmd_tokenizer_train)
    t.add_argument("files", nargs="+", metavar="FILE", help="text files or directories")
    t.add_argument("--vocab-size", type=int_in(options.MIN_VOCAB), default=30522)
    t.add_argument("--out", required=True, metavar="DIR", help="where to write vocab.txt and the tokenizer files")
    t.add_argument("--cased", action="store_true", help="keep case and accents (default: lower-case, strip accents)")
    t.add_argument("--no-chinese-chars", action="store_true", help="do not split every CJK character into its own token")
    t.add_argument("--min-frequency", type=non_negative_int, default=2,
                   help="ignore pieces seen fewer times (default: 2)")
    t.add_argument("--limit-alphabet", type=non_negative_int, metavar="N",
                   help="keep at most N distinct characters, the most frequent (default: as many as the "
                        "vocabulary holds, which Chinese needs)")

    p = command("info", cmd_info, "Describe a checkpoint: architecture, sizes, parameters, labels.")
    _add_model(p)
    return parser


def _version() -> str:
    from bertkit import __version__

    return f"bertkit {__version__}"


def main(argv: Sequence[str] | None = None) -> int:
    logging.basicConfig(level=logging.WARNING, format="bertkit: %(message)s")
    try:
        args = build_parser().parse_args(argv)
        return args.func(args)
    except BertkitError as e:
        print(f"bertkit: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("bertkit: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        return 0
    except OSError as e:
        if e.errno not in fileio.ENVIRONMENT_ERRNOS:
            raise
        print(f"bertkit: error: {fileio.os_error_message(e)}", file=sys.stderr)  # a full disk, permissions
        return 2


if __name__ == "__main__":
    sys.exit(main())
