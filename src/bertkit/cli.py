"""The `bertkit` command: one subcommand per job.

Every option comes from a dataclass in settings.py, one field per option: the field's docstring line
is its --help, its default the default shown there. `add_config_options` turns a dataclass into
options and `config_from_args` turns the parsed options back into the dataclass, which checks its
values. A command builds its configs first and imports torch only after, so `bertkit --help` and a
bad option answer at once, before any data or model is loaded.

Problems a user can fix (a missing file, a bad checkpoint, bad input) end with one line on stderr
and exit status 2, never a traceback.
"""

from __future__ import annotations

import argparse
import ast
import contextlib
import dataclasses
import functools
import inspect
import itertools
import json
import logging
import re
import stat
import sys
import types
import typing
import warnings
from collections.abc import Callable, Iterator, Sequence
from typing import Any

from bertkit import fileio, options
from bertkit.errors import BertkitError, InputError
from bertkit.export import ExportArgs, cmd_export  # imports neither torch nor onnx
from bertkit.models import resolve_model
from bertkit.options import plural
from bertkit.serve import cmd_serve  # imports neither torch nor FastAPI
from bertkit.serve.settings import ServeArgs
from bertkit.settings import (
    FINETUNE_DERIVED,
    FINETUNE_TRAINING,
    SMALL_BUDGET_TRAINING,
    AttentionArgs,
    DataOptions,
    DemoConfig,
    DeviceChoice,
    EmbedArgs,
    EvaluateArgs,
    FillMaskArgs,
    FinetuneArgs,
    IndexArgs,
    InfoArgs,
    PrecisionChoice,
    PredictArgs,
    PrepareArgs,
    PretrainArgs,
    SearchArgs,
    SimilarityArgs,
    TokenizeArgs,
    TokenizerTrainArgs,
    TrainConfig,
    pretrain_training_defaults,
)


def _device(args: argparse.Namespace) -> str:
    """--device as given (its spelling checked); whether the machine has it is checked when the model loads."""
    return config_from_args(DeviceChoice, args).device


def _precision(args: argparse.Namespace) -> str:
    """--precision of an inference command (auto, fp32, bf16, int8), checked; with --compile, the models
    the command loads get compiled layers (bertkit.compiled.compile_inference)."""
    choice = config_from_args(PrecisionChoice, args)
    if choice.compile:
        from bertkit.compiled import compile_inference

        compile_inference(announce=True)  # says so once the model has loaded, before the 8-20 s
    return choice.precision


def _read_lines(source: str) -> list[str]:
    """Texts, one per line, from a file or '-' for standard input; blank lines are skipped."""
    return [line for line in fileio.read_lines(source) if line and line.strip()]  # a bad line raises


# ---- typed configs as options ------------------------------------------------------------------------


def field_docs(cls: type) -> dict[str, str]:
    """The docstring line under each field of a dataclass and of the dataclasses it derives from
    (our configs document every field that way)."""
    docs: dict[str, str] = {}
    for klass in reversed([k for k in cls.__mro__ if dataclasses.is_dataclass(k)]):
        docs.update(_module_field_docs(klass.__module__).get(klass.__qualname__, {}))
    return docs


@functools.cache
def _module_field_docs(module: str) -> dict[str, dict[str, str]]:
    """Field docstrings of every class of a module, by qualified name: one parse per module (what
    `bertkit --help` spends most of its time on otherwise)."""
    tree = ast.parse(inspect.getsource(sys.modules[module]))
    found: dict[str, dict[str, str]] = {}

    def visit(body: list[ast.stmt], prefix: str) -> None:
        for node in body:
            if isinstance(node, ast.ClassDef):
                found[prefix + node.name] = _docs_in(node.body)
                visit(node.body, f"{prefix}{node.name}.")
            elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                visit(node.body, f"{prefix}{node.name}.<locals>.")

    visit(tree.body, "")
    return found


def _docs_in(body: list[ast.stmt]) -> dict[str, str]:
    docs = {}
    for node, after in zip(body, body[1:]):
        if isinstance(node, ast.AnnAssign) and isinstance(after, ast.Expr) and isinstance(after.value, ast.Constant):
            docs[node.target.id] = " ".join(str(after.value.value).split())  # type: ignore[attr-defined]
    return docs


def add_config_options(parser: argparse.ArgumentParser, cls: type, *, skip: Sequence[str] = (),
                       defaults: dict[str, Any] | None = None, unset: bool = False,
                       choices: dict[str, Sequence[str]] | None = None) -> None:
    """One option per dataclass field: the config class is the schema and the help text.

    Required fields come first. `defaults` replaces some fields' defaults; unset=True makes every
    default None (options that only override values stored elsewhere, e.g. in a fine-tuned model's
    config.json). A field with a fixed set of values (`metadata=options.choices(...)`, a `Literal[...]`
    annotation, or an entry of `choices`) gets argparse choices, listed in --help and checked before
    any work; `metadata=options.cli(positional=True)` makes a positional argument (any number of them
    for a list), `cli(short="-i")` adds a short flag."""
    docs, hints = field_docs(cls), typing.get_type_hints(cls)
    fields = [f for f in dataclasses.fields(cls) if f.name not in skip]
    for f in sorted(fields, key=lambda f: not _required(f)):
        default = defaults.get(f.name, _default(f)) if defaults else _default(f)
        _add_field(parser, f, hints[f.name], docs.get(f.name, ""), None if unset else default,
                   required=_required(f) and not unset, values=field_choices(f, _plain_type(hints[f.name]),
                                                                          choices or {}))


def _required(f: dataclasses.Field) -> bool:
    return f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING


def _default(f: dataclasses.Field) -> Any:
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    return None if f.default is dataclasses.MISSING else f.default


def _add_field(parser: argparse.ArgumentParser, f: dataclasses.Field, hint: Any, doc: str, default: Any, *,
               required: bool, values: tuple[str, ...] | None) -> None:
    kind = _plain_type(hint)
    help_text = doc.replace("%", "%%")
    if not required and default not in (None, []):
        help_text += f" (default: {default})"
    many = typing.get_origin(kind) is list
    parse = _parser_for(typing.get_args(kind)[0] if many else kind, values)
    if f.metadata.get("positional"):
        nargs = ("+" if required else "*") if many else (None if required else "?")
        parser.add_argument(f.name, nargs=nargs, type=parse, choices=values, default=default, help=help_text,
                            metavar=f.metadata.get("metavar"))
        return
    flags = [f.metadata["short"], options.flag(f.name)] if "short" in f.metadata else [options.flag(f.name)]
    if kind is bool:
        parser.add_argument(*flags, action=argparse.BooleanOptionalAction, default=default, help=help_text)
    elif typing.get_origin(kind) is tuple:
        parser.add_argument(*flags, type=options.float_in(), nargs=2, default=default, help=help_text,
                            metavar=f.name.upper())
    elif values:
        parser.add_argument(*flags, type=parse, choices=values, default=default, required=required, help=help_text)
    else:
        parser.add_argument(*flags, type=parse, default=default, required=required, help=help_text,
                            nargs="+" if many else None, metavar=f.metadata.get("metavar", f.name.upper()))


def _parser_for(kind: Any, values: tuple[str, ...] | None) -> Callable[[str], Any]:
    """How an option's text becomes the field's type, with options.py's wording for mistakes."""
    if values:
        return options.choice(values)
    if kind is int:
        return options.int_in()
    if kind is float:
        return options.float_in()
    return kind


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
    """The dataclass `cls` from the parsed options of the same names (it checks its values as it is made)."""
    names = {f.name for f in dataclasses.fields(cls)}
    values = {k: v for k, v in vars(args).items() if k in names}
    values.update(extra)
    if "betas" in values and values["betas"] is not None:
        values["betas"] = tuple(values["betas"])
    return cls(**values)


# ---- embed, similarity, tokenize, info, models -------------------------------------------------------


def cmd_embed(args: argparse.Namespace) -> int:
    a = config_from_args(EmbedArgs, args)
    device = _device(args)
    if a.tokens:
        choice = config_from_args(PrecisionChoice, args)
        if choice.compile or choice.precision not in ("auto", "fp32"):
            raise InputError("embed --tokens reads a layer's hidden states in fp32: --precision and --compile are "
                             "for sentence vectors")
        return _embed_tokens(a, device)
    _check_vectors_output(a.output)
    texts, total = _stream_texts(a.input)
    from bertkit.embedding import Embedder

    embedder = Embedder.from_pretrained(a.model, device=device, precision=_precision(args))
    options = dict(batch_size=a.batch_size, max_length=a.max_length, normalize=a.normalize,
                   progress=sys.stderr.isatty(), pooling=a.pooling, prompt=a.prompt, prompt_name=a.prompt_name,
                   layer=a.layer, dimensions=a.dimensions, output_precision=a.output_precision)
    with _VectorWriter(a.output) as out:
        if a.output_precision in ("int8", "uint8"):  # each component's range comes from all the vectors
            texts = list(texts)
            out.write(texts, embedder(texts, **options))
        else:  # a slice at a time, straight to the output: flat memory however many texts
            for part, vectors in embedder.stream(texts, total=total, **options):
                out.write(part, vectors)
    if a.output != "-":
        packed = {"binary": " (binary: 8 components a byte)", "ubinary": " (ubinary: 8 components a byte)"}
        kind = packed.get(a.output_precision, "" if a.output_precision == "float32" else f" ({a.output_precision})")
        print(f"wrote {plural(out.count, 'vector')} of dimension {out.width}{kind} to {a.output}", file=sys.stderr)
    return 0


def _stream_texts(source: str) -> tuple[Iterator[str], int | None]:
    """The non-blank lines of a file or of stdin ('-'), read as they are needed, and their number
    (None when unknown). A regular file is read through once first: a line that is not UTF-8 fails at
    once, before the model is loaded, and the progress bar knows the total. Stdin or a pipe (which
    can be read once only) is read as it comes: a bad line there stops the run where it is."""
    regular = source != "-" and stat.S_ISREG(fileio.check_input_file(source).stat().st_mode)
    total = sum(1 for line in fileio.iter_lines(source) if line and line.strip()) if regular else None
    texts = (line for line in fileio.iter_lines(source) if line and line.strip())  # a bad line raises
    first = next(texts, None)
    if first is None:
        raise InputError(f"{'<stdin>' if source == '-' else source}: no texts to embed (one per line)")
    return itertools.chain([first], texts), total


class _VectorWriter:
    """Where `bertkit embed` writes, a block of vectors at a time: a .npy file or a .jsonl file (both
    atomically: nothing is left at the path if the run fails), or JSONL on stdout ('-')."""

    def __init__(self, output: str) -> None:
        self.output, self.count, self.width = output, 0, 0
        self._stack = contextlib.ExitStack()
        self._rows: fileio.NpyRows | None = None
        self._file: Any = sys.stdout

    def __enter__(self) -> _VectorWriter:
        if self.output.endswith(".npy"):
            self._rows = self._stack.enter_context(fileio.npy_rows(self.output))
        elif self.output != "-":
            self._file = self._stack.enter_context(fileio.atomic_write(self.output))
        return self

    def write(self, texts: list[str], vectors) -> None:
        if self._rows is not None:
            self._rows.append(vectors)
        else:
            _write_vector_lines(texts, vectors, self._file)
        self.count, self.width = self.count + len(vectors), vectors.shape[1]

    def __exit__(self, *exc: Any) -> bool:
        return self._stack.__exit__(*exc)


def _check_vectors_output(output: str) -> None:
    """Before any work: a .npy or .jsonl file that can be written, or '-'."""
    if output == "-":
        return
    if not output.endswith((".npy", ".jsonl")):
        raise InputError(f"{output}: output must end in .npy or .jsonl (or be - for JSONL on stdout)")
    fileio.check_output_file(output)


def _write_vector_lines(texts: list[str], vectors, out) -> None:
    integers = vectors.dtype.kind in "iu"  # --output-precision int8, uint8, binary, ubinary
    for text, vector in zip(texts, vectors):
        values = vector.tolist() if integers else [round(float(x), 7) for x in vector]
        out.write(json.dumps({"text": text, "embedding": values}, ensure_ascii=False))
        out.write("\n")


def cmd_similarity(args: argparse.Namespace) -> int:
    a = config_from_args(SimilarityArgs, args)
    device = _device(args)
    from bertkit.embedding import similarity_table

    print(similarity_table(a.texts, a.model, device=device, precision=_precision(args)))
    return 0


def cmd_tokenize(args: argparse.Namespace) -> int:
    a = config_from_args(TokenizeArgs, args)
    from bertkit.tokenizer import Tokenizer

    tok = Tokenizer.from_pretrained(resolve_model(a.model))
    for text in a.texts or _read_lines("-"):
        enc = tok(text, a.pair, truncation=True)
        tokens = tok.convert_ids_to_tokens(enc["input_ids"])
        print(json.dumps({"tokens": tokens, "input_ids": enc["input_ids"], "token_type_ids": enc["token_type_ids"]},
                         ensure_ascii=False))
    return 0


def cmd_info(args: argparse.Namespace) -> int:
    a = config_from_args(InfoArgs, args)
    directory = resolve_model(a.model)
    from bertkit.config import BertConfig
    from bertkit.heads import HEADS
    from bertkit.model import num_parameters

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


def cmd_models(args: argparse.Namespace) -> int:
    from bertkit.models import HOME_VARIABLE, available_models, models_dir

    print("\n".join(models_table(available_models())))
    print(f"\nlocal models: {models_dir()} (a checkpoint directory NAME there is --model NAME; "
          f"${HOME_VARIABLE} moves the folder)")
    return 0


def models_table(models: Sequence[Any]) -> list[str]:
    """`bertkit models`: a line per model (models.ModelInfo) under a header, columns aligned."""
    rows = [("NAME", "ARCHITECTURE", "LAYERS", "HIDDEN", "SIZE", "PATH")]
    for m in models:
        rows.append((m.name, m.architecture, "?" if m.layers is None else str(m.layers),
                     "?" if m.hidden is None else str(m.hidden), f"{m.size_bytes / 1e6:,.1f} MB",
                     f"{m.path}{' (built-in)' if m.builtin else ''}"))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]) - 1)]
    right = {2, 3, 4}  # numbers
    return ["  ".join([(c.rjust(w) if i in right else c.ljust(w)) for i, (c, w) in enumerate(zip(r, widths))]
                      + [r[-1]]) for r in rows]


# ---- prepare, pretrain, demo ------------------------------------------------------------------------


def cmd_prepare(args: argparse.Namespace) -> int:
    a = config_from_args(PrepareArgs, args)
    fileio.check_output_dir(a.out)
    from bertkit.data.shards import prepare
    from bertkit.tokenizer import Tokenizer

    prepare(
        a.files, Tokenizer.from_pretrained(a.tokenizer), a.out, valid_fraction=a.valid_fraction,
        shard_tokens=a.shard_tokens, seed=a.seed, segmenter=a.segmenter, text_field=a.text_field,
        document_sentences=a.document_sentences, progress=a.progress,
    )
    print(f"prepared corpus written to {a.out}", file=sys.stderr)
    return 0


def cmd_pretrain(args: argparse.Namespace) -> int:
    pretrain = config_from_args(PretrainArgs, args)  # its seed is --seed, TrainConfig's: a run has one seed
    unset = {k: v for k, v in pretrain_training_defaults(pretrain.config).items() if getattr(args, k) is None}
    train = _train_config(args, **unset)  # --lr and --warmup not given: measured ones for tiny and mini
    from bertkit.pretrain import run_pretrain

    try:
        run_pretrain(pretrain, train)
    except KeyboardInterrupt:
        return 130
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    demo = config_from_args(DemoConfig, args)
    fileio.check_output_dir(demo.out)
    from bertkit.demo import run_demo

    try:
        run_demo(demo)
    except KeyboardInterrupt:
        return 130
    return 0


def _train_config(args: argparse.Namespace, **extra: Any) -> TrainConfig:
    """The TrainConfig of the options, checked (values and --out) before any data or model is loaded."""
    config = config_from_args(TrainConfig, args, **extra)  # TrainConfig checks its values as it is made
    fileio.check_output_dir(config.out)
    return config


# ---- finetune, evaluate, predict, fill-mask ----------------------------------------------------------


def cmd_finetune(args: argparse.Namespace) -> int:
    finetune, data = config_from_args(FinetuneArgs, args), config_from_args(DataOptions, args)
    train = _train_config(args, steps=1)  # steps follow from --epochs
    fileio.check_input_file(finetune.train)
    if finetune.dev is not None:
        fileio.check_input_file(finetune.dev)
    finetune = dataclasses.replace(finetune, model=str(resolve_model(finetune.model)))
    from bertkit.finetune import run_finetune

    try:
        run_finetune(finetune, data, train)
    except KeyboardInterrupt:
        return 130
    return 0


def _data_overrides(args: argparse.Namespace) -> dict[str, Any]:
    return {f.name: getattr(args, f.name) for f in dataclasses.fields(DataOptions)}


def cmd_evaluate(args: argparse.Namespace) -> int:
    a = config_from_args(EvaluateArgs, args)
    device = _device(args)
    fileio.check_input_file(a.data)
    model = str(resolve_model(a.model))
    from bertkit.predict import run_evaluate

    run_evaluate(model, a.data, _data_overrides(args), batch_size=a.batch_size, as_json=a.json, device=device,
                 precision=_precision(args))
    return 0


def cmd_predict(args: argparse.Namespace) -> int:
    a = config_from_args(PredictArgs, args)
    device = _device(args)
    if a.input != "-":
        fileio.check_input_file(a.input)
    if a.output != "-":
        fileio.check_output_file(a.output)
    model = str(resolve_model(a.model))
    from bertkit.predict import run_predict

    run_predict(model, a.input, a.output, _data_overrides(args), batch_size=a.batch_size, device=device,
                precision=_precision(args))
    return 0


def cmd_fill_mask(args: argparse.Namespace) -> int:
    a = config_from_args(FillMaskArgs, args)
    device = _device(args)
    from bertkit.fill_mask import FillMask

    fill = FillMask.from_pretrained(resolve_model(a.model), device=device, precision=_precision(args))
    for n, candidates in enumerate(fill(a.text, top_k=a.top_k), start=1):
        print(f"[MASK] {n}:" if a.text.count("[MASK]") > 1 else "[MASK]:")
        for c in candidates:
            print(f"  {c.token:<20} {c.probability:.4f}")
    return 0


# ---- a look inside the model: embed --tokens, attention --------------------------------------------


def _embed_tokens(a: EmbedArgs, device: str = "auto") -> int:
    """`bertkit embed --tokens`: a JSONL line per text, with a vector per word piece and its characters."""
    _check_vectors_output(a.output)  # .npy was refused by EmbedArgs: the pieces are ragged
    texts = _read_lines(a.input)
    if not texts:
        raise InputError(f"{'<stdin>' if a.input == '-' else a.input}: no texts to embed (one per line)")
    from bertkit.inside import token_records, token_vectors

    pieces = token_vectors(texts, a.model, layer=-1 if a.layer is None else a.layer, batch_size=a.batch_size,
                           max_length=a.max_length, normalize=bool(a.normalize), device=device)
    lines = (json.dumps(token_records(text, p), ensure_ascii=False) + "\n" for text, p in zip(texts, pieces))
    if a.output == "-":
        sys.stdout.writelines(lines)
        return 0
    with fileio.atomic_write(a.output) as f:
        f.writelines(lines)
    print(f"wrote the vectors of {plural(sum(map(len, pieces)), 'word piece')} of {plural(len(texts), 'text')} "
          f"to {a.output}", file=sys.stderr)
    return 0


def cmd_attention(args: argparse.Namespace) -> int:
    a = config_from_args(AttentionArgs, args)
    device = _device(args)
    fileio.check_output_file(a.out)
    from bertkit.inside import attention_map

    path = attention_map(a.text, a.model, a.layer, a.head, out=a.out, pair=a.pair, max_length=a.max_length,
                         device=device)
    print(f"wrote {path}", file=sys.stderr)
    return 0


# ---- index, search ----------------------------------------------------------------------------------


def cmd_index(args: argparse.Namespace) -> int:
    a = config_from_args(IndexArgs, args)
    device = _device(args)
    for file in a.corpus:
        fileio.check_input_file(file)
    fileio.check_output_dir(a.out)
    from bertkit.vector_index import run_index

    index = run_index(a, device=device, precision=_precision(args))
    print(f"{a.out}: an {index.kind} index of {plural(index.count, 'passage')} (dimension {index.dim})",
          file=sys.stderr)
    return 0


def cmd_search(args: argparse.Namespace) -> int:
    a = config_from_args(SearchArgs, args)
    device = _device(args)
    queries = [a.query] if a.query is not None else _read_lines(a.queries)
    if not queries:
        raise InputError(f"{'<stdin>' if a.queries == '-' else a.queries}: no queries (one per line)")
    from bertkit.vector_index import VectorIndex, format_results, json_line

    index = VectorIndex(a.index)
    if index.unfinished:
        print(f"bertkit: note: {index.unfinished}", file=sys.stderr)
    results = index.search(queries, a.top_k, model=a.model, exact=a.exact or None,
                           expansion_search=a.expansion_search, batch_size=a.batch_size, device=device,
                           precision=_precision(args))
    for query, found in zip(queries, results):
        print(json_line(query, found) if a.json else format_results(query, found))
    return 0


# ---- tokenizer train --------------------------------------------------------------------------------


def cmd_tokenizer_train(args: argparse.Namespace) -> int:
    a = config_from_args(TokenizerTrainArgs, args)
    fileio.check_output_dir(a.out)
    from bertkit.vocab import train_vocabulary

    train_vocabulary(
        a.files, out=a.out, vocab_size=a.vocab_size, lowercase=not a.cased, chinese_chars=a.chinese_chars,
        min_frequency=a.min_frequency, limit_alphabet=a.limit_alphabet,
    )
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


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(prog="bertkit", description="BERT end to end: vocabularies, pretraining, embeddings.")
    parser.add_argument("--version", action="version", version=_version())
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    def command(name: str, func: Callable[[argparse.Namespace], int], help: str,
                *configs: type) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help, description=help)
        p.set_defaults(func=func)
        for cls in configs:
            add_config_options(p, cls)
        return p

    command("embed", cmd_embed, "Sentence embeddings for texts, one per line, as sentence-transformers makes them "
            "(the model's pooling and normalisation; a plain BERT: normalised mean pooling).", EmbedArgs,
            DeviceChoice, PrecisionChoice)
    command("similarity", cmd_similarity, "Cosine similarities between texts (a built-in set if none given).",
            SimilarityArgs, DeviceChoice, PrecisionChoice)
    command("tokenize", cmd_tokenize, "Show the WordPiece tokens, ids and token types of texts (stdin if none "
            "given).", TokenizeArgs)
    command("prepare", cmd_prepare, "Tokenize raw text into memory-mapped shards for pretraining.", PrepareArgs)

    p = command("pretrain", cmd_pretrain, "Pretrain BERT (MLM + NSP/SOP) on prepared shards; torchrun for many "
                "processes.")
    add_config_options(p, PretrainArgs, skip=("seed",))  # --seed is TrainConfig's: a run has one seed
    add_config_options(p, TrainConfig, defaults={"lr": None, "warmup": None})  # by --config: cmd_pretrain
    for action in p._actions:
        if action.dest in ("lr", "warmup"):
            by_preset = ", ".join(f"{v[action.dest]:g} for {k}" for k, v in SMALL_BUDGET_TRAINING.items())
            action.help += f" (default by --config: {by_preset}, else {getattr(TrainConfig, action.dest):g})"

    p = command("finetune", cmd_finetune, "Fine-tune a BERT checkpoint for classify, tag, qa, choice or embed "
                "(sentence embeddings, contrastive); evaluates on --dev every epoch and keeps the best model.",
                FinetuneArgs, DataOptions)
    add_config_options(p, TrainConfig, skip=FINETUNE_DERIVED, defaults=FINETUNE_TRAINING)

    p = command("evaluate", cmd_evaluate, "Score a fine-tuned model on a labelled file.", EvaluateArgs,
                DeviceChoice, PrecisionChoice)
    add_config_options(p, DataOptions, unset=True)
    p = command("predict", cmd_predict, "Predict with a fine-tuned model; writes JSONL, one line per input.",
                PredictArgs, DeviceChoice, PrecisionChoice)
    add_config_options(p, DataOptions, unset=True)

    command("demo", cmd_demo, "Embed with MiniLM, then train a vocabulary, prepare and pretrain a small BERT "
            "on the Penn Treebank, and fill masks with it (about 10 minutes on 2 cores).", DemoConfig)
    command("fill-mask", cmd_fill_mask, "Predict the tokens behind [MASK] with a masked-LM checkpoint.",
            FillMaskArgs, DeviceChoice, PrecisionChoice)

    p = command("tokenizer", lambda a: (p_tok.print_help(), 2)[1], "Train WordPiece vocabularies.")
    p_tok = p
    tsub = p.add_subparsers(dest="tokenizer_command", metavar="ACTION")
    t = tsub.add_parser("train", help="Train a WordPiece vocabulary from text files.",
                        description="Train a WordPiece vocabulary with BERT's special tokens from text files "
                        "(plain text, .jsonl with a text field, gzip; English or Chinese).")
    t.set_defaults(func=cmd_tokenizer_train)
    add_config_options(t, TokenizerTrainArgs)

    command("index", cmd_index, "Embed text or JSONL passages into an index folder for `bertkit search` "
            "(resumable; --add appends).", IndexArgs, DeviceChoice, PrecisionChoice)
    command("search", cmd_search, "The passages of an index nearest to a query (or to each line of --queries "
            "FILE): exact, or HNSW for large indexes.", SearchArgs, DeviceChoice, PrecisionChoice)
    command("info", cmd_info, "Describe a checkpoint: architecture, sizes, parameters, labels.", InfoArgs)
    command("attention", cmd_attention, "Draw a layer's attention weights over a text: one head as a heat map "
            "of word pieces, or a grid of all heads.", AttentionArgs, DeviceChoice)
    command("models", cmd_models, "List the models --model can name: the built-in one and those in the local "
            "models folder ($BERTKIT_HOME/models).")
    command("serve", cmd_serve, "Serve a model over HTTP (127.0.0.1:8080 by default): OpenAI /v1/embeddings, "
            "TEI /embed, /predict, /fill-mask, /tokenize, /metrics and a page at /, with dynamic batching.",
            ServeArgs)
    command("export", cmd_export, "Export a checkpoint with its head to ONNX (+ tokenizer files), checked "
            "against PyTorch with onnxruntime.", ExportArgs)
    return parser


def _version() -> str:
    from bertkit import __version__

    return f"bertkit {__version__}"


def _one_line_warning(message, category, filename, lineno, line=None) -> str:
    """A warning as a command's user reads it (e.g. texts cut at the model's length), without the
    file, line and source of bertkit's code that raised it."""
    return f"bertkit: warning: {message}\n"


def main(argv: Sequence[str] | None = None) -> int:
    logging.basicConfig(level=logging.WARNING, format="bertkit: %(message)s")
    warnings.formatwarning = _one_line_warning
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
