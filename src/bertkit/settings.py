"""Every option of every `bertkit` command, as dataclasses: the one place each default is defined.

One dataclass per command, or per part that several commands share (TrainConfig, DataOptions,
PretrainingConfig). Each field is an option: its docstring line is the option's --help, its default
the default that --help shows, a field without a default a required option; `metadata=cli(...)`
marks a fixed set of values, a positional argument or a short flag. `__post_init__` checks the
values with options.py, so the command line and the Python API refuse the same values with the same
message. cli.py builds its parser from these classes, and the modules that use them (train.py,
pretrain.py, finetune.py, tasks/, data/pretraining.py, demo.py) import them from here.

This module is imported by `bertkit --help`: like options.py, it must stay free of torch and numpy.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from bertkit.errors import BertkitError, InputError
from bertkit.options import (
    LONG_TEXT,
    MIN_VOCAB,
    PRECISIONS,
    SCHEDULES,
    at_least,
    check_choices,
    check_train_config,
    choices,
    cli,
    finite,
    greater_than,
    in_range,
    integer,
    lower_is_better,
    model_spec,
    not_empty,
)
from bertkit.options import seed as check_seed

OBJECTIVES = ("mlm", "mlm+nsp", "mlm+sop")
SEGMENTERS = ("jieba",)
# Task families by name, each implemented by the class named here (imported only when used).
TASKS = {
    "classify": "bertkit.tasks.classify:Classify",
    "tag": "bertkit.tasks.tag:Tag",
    "qa": "bertkit.tasks.qa:QuestionAnswering",
    "choice": "bertkit.tasks.choice:Choice",
}


# ---- the training loop ----------------------------------------------------------------------------------


@dataclass
class TrainConfig:
    """How to train: steps, batch, optimiser, schedule, precision, evaluation and checkpoints."""

    out: Path
    """Run directory: checkpoints/, metrics.jsonl, loss.png and the final model."""
    steps: int = 1000
    """Number of optimiser steps."""
    batch_size: int = 32
    """Sequences per process per micro-batch."""
    grad_accum: int = 1
    """Micro-batches accumulated into one optimiser step."""
    lr: float = 1e-4
    """Peak learning rate."""
    warmup: float = 0.01
    """Warm-up steps; a value below 1 is a fraction of `steps`."""
    schedule: str = field(default="linear", metadata=choices(SCHEDULES))
    """Decay after warm-up: linear or cosine (to zero at the last step), or constant."""
    weight_decay: float = 0.01
    """AdamW weight decay, not applied to biases and LayerNorm weights."""
    layer_lr_decay: float = 1.0
    """Layer-wise learning-rate decay: layer k of L gets lr × decay^(L+1-k), the embeddings decay^(L+1)."""
    betas: tuple[float, float] = (0.9, 0.999)
    """AdamW betas."""
    eps: float = 1e-6
    """AdamW epsilon (1e-6 as in the original BERT optimiser)."""
    max_grad_norm: float = 1.0
    """Clip the global gradient norm to this (0 turns clipping off)."""
    precision: str = field(default="auto", metadata=choices(PRECISIONS))
    """fp32, bf16 (autocast), or auto: bf16 where the hardware supports it natively, else fp32."""
    compile: bool = False
    """Compile the model with torch.compile."""
    seed: int = 0
    """Seed of initialisation, data order, masking and dropout."""
    eval_every: int = 0
    """Evaluate every N steps (0: only at the end)."""
    save_every: int = 0
    """Checkpoint every N steps (0: only at the end and on interrupt)."""
    log_every: int = 10
    """Write a metrics row every N steps."""
    keep_checkpoints: int = 2
    """How many recent checkpoints to keep."""
    best_metric: str | None = None
    """Keep the model with the best value of this validation metric and save it as the final model."""
    patience: int = 0
    """Stop after this many evaluations without a better best_metric (0: never stop early)."""
    resume: bool = False
    """Continue from the latest checkpoint in `out` if there is one."""
    overwrite: bool = False
    """Start afresh in an `out` that holds an earlier run, deleting its checkpoints and logs."""
    progress: bool = True
    """Show a progress bar (main process only)."""

    def __post_init__(self) -> None:
        self.out = Path(self.out)
        check_train_config(self)
        if self.best_metric:
            lower_is_better(self.best_metric)  # an unknown metric is refused before any work

    def check_steps(self) -> None:
        """Once the number of steps is final (fine-tuning derives it from epochs)."""
        if self.warmup >= 1 and self.warmup > self.steps:
            raise BertkitError(f"--warmup {self.warmup:g} steps is more than the run's {self.steps} steps; "
                               f"give fewer, or a fraction such as 0.1")

    def warmup_steps(self) -> int:
        return int(self.warmup * self.steps) if self.warmup < 1 else int(self.warmup)


# ---- pretraining ------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class PretrainingConfig:
    """How pretraining examples are made and masked (data/pretraining.py)."""

    max_length: int = 128
    """Tokens per sequence, [CLS] and [SEP]s included."""
    objective: str = field(default="mlm+nsp", metadata=choices(OBJECTIVES))
    """mlm, mlm+nsp (next sentence prediction) or mlm+sop (sentence order prediction)."""
    short_seq_prob: float = 0.1
    """Probability that an example aims at a random shorter length in [2, max] (the original's 0.1)."""
    mask_rate: float = 0.15
    """Fraction of real tokens selected for MLM (80% [MASK], 10% random, 10% kept; BERT paper §3.1)."""
    max_predictions_per_seq: int | None = None
    """Cap on selected tokens per sequence; default: max_length × mask_rate, rounded."""
    whole_word_masking: bool = False
    """Select all pieces of a word together (Google's whole-word-masking release)."""
    seed: int = 0
    """Root of every random choice; examples and masks are functions of (seed, epoch)."""

    def __post_init__(self) -> None:
        check_choices(self)
        at_least("max_length", self.max_length, 3 if self.objective == "mlm" else 5)  # specials + 1 (or 2) tokens
        in_range("short_seq_prob", self.short_seq_prob, 0, 1)
        in_range("mask_rate", self.mask_rate, 0, 1, low_open=True, high_open=True)
        if self.max_predictions_per_seq is not None:
            at_least("max_predictions_per_seq", self.max_predictions_per_seq, 1)
        check_seed("seed", self.seed)

    @property
    def max_predictions(self) -> int:
        """The effective cap on selected tokens per sequence."""
        if self.max_predictions_per_seq is not None:
            return self.max_predictions_per_seq
        return max(1, round(self.max_length * self.mask_rate))

    @property
    def max_num_tokens(self) -> int:
        """Room for A and B: [CLS] A [SEP] B [SEP] takes 3 specials, [CLS] A [SEP] takes 2."""
        return self.max_length - (2 if self.objective == "mlm" else 3)


@dataclass(frozen=True, kw_only=True)
class PretrainArgs(PretrainingConfig):
    """`bertkit pretrain`: how examples are made and masked (PretrainingConfig's fields), the model
    and the data; the training loop's settings are a TrainConfig. On the command line --seed is
    TrainConfig's and sets both: a run has one seed."""

    data: Path
    """Directory written by `bertkit prepare`."""
    config: str = "mini"
    """Model size: tiny, mini, small, medium, base, large, or a config.json."""
    init_from: str | None = None
    """Start from this checkpoint (continued pretraining) instead of random weights."""
    eval_batches: int = 50
    """Cap on validation batches per evaluation (0: all)."""

    def __post_init__(self) -> None:
        super().__post_init__()
        model_spec("config", self.config)
        at_least("eval_batches", self.eval_batches, 0)


# ---- fine-tuning, evaluation, prediction ------------------------------------------------------------------


@dataclass
class DataOptions:
    """How to read labelled files and turn them into model inputs."""

    text_column: str | None = None
    """Column (CSV/TSV) or field (JSONL) with the text; default: text, sentence, sentence1, question..."""
    text_pair_column: str | None = None
    """Column with the second text of a pair; default: text_pair, sentence2, hypothesis... when present."""
    label_column: str | None = None
    """Column with the label; default: label."""
    tag_column: int = -1
    """CoNLL: which whitespace-separated column holds the tag (-1: the last)."""
    label_separator: str | None = None
    """Several labels per text (multi-label), separated by this string in the label column (e.g. '|')."""
    regression: bool = False
    """The label is a number to predict (e.g. a similarity score), not a class."""
    max_length: int = 128
    """Tokens per sequence, [CLS] and [SEP]s included."""
    long_text: str = field(default="truncate", metadata=choices(LONG_TEXT))
    """Inputs longer than max_length: truncate, or window (overlapping windows, predictions combined)."""
    stride: int = 32
    """Tokens of overlap between consecutive windows (--long-text window, and QA contexts)."""
    skip_bad_lines: bool = False
    """Skip (and count) malformed lines instead of stopping at the first."""
    no_answer_threshold: float | None = None
    """QA: answer nothing when the [CLS] score beats the best span's by more than this (SQuAD 2.0);
    default: 0.0 when the training data has unanswerable questions, else always answer (SQuAD 1.1)."""

    def __post_init__(self) -> None:
        check_choices(self)
        integer("tag_column", self.tag_column)
        not_empty("label_separator", self.label_separator)
        at_least("max_length", self.max_length, 5)  # [CLS], two [SEP]s and a token of each text
        at_least("stride", self.stride, 0)
        if self.long_text == "window" and self.stride >= self.max_length - 2:
            raise InputError(f"--stride {self.stride} must be less than --max-length {self.max_length} minus 2 "
                             f"([CLS] and [SEP]), or consecutive windows would not move forward")
        if self.no_answer_threshold is not None:
            finite("no_answer_threshold", self.no_answer_threshold)


@dataclass(kw_only=True)
class FinetuneArgs:
    """`bertkit finetune` beyond the training loop's settings (TrainConfig, with the defaults of
    FINETUNE_TRAINING) and the data's (DataOptions)."""

    task: str = field(metadata=choices(TASKS))
    """classify, tag, qa or choice."""
    train: Path
    """Labelled training file (CSV/TSV/JSONL, CoNLL, SQuAD JSON, by task)."""
    model: str | None = None
    """Checkpoint to start from: a directory (from `bertkit pretrain`, a published BERT, a model fine-tuned
    before) or a model name (`bertkit models`); default: the built-in all-MiniLM-L6-v2."""
    dev: Path | None = None
    """Labelled file to evaluate on after every epoch (and to pick the best model with)."""
    epochs: float = 3.0
    """Passes over the training data."""
    eval_batch_size: int = 64
    """Sequences per batch when evaluating."""
    random_init: bool = False
    """Re-initialise every weight of --model, keeping only its architecture and vocabulary: the
    from-scratch baseline that shows what pretraining is worth."""

    def __post_init__(self) -> None:
        check_choices(self)
        greater_than("epochs", self.epochs, 0)
        at_least("eval_batch_size", self.eval_batch_size, 1)


# TrainConfig's defaults that fine-tuning changes: lr 5e-5 (BERT paper, appendix A.3; batch 32 is
# TrainConfig's own), 10% warm-up (the original run_classifier.py), one checkpoint kept. Its steps,
# eval_every and save_every follow from --epochs (finetune.py), so they are no options of `bertkit finetune`.
FINETUNE_TRAINING = {"lr": 5e-5, "warmup": 0.1, "keep_checkpoints": 1}
FINETUNE_DERIVED = ("steps", "eval_every", "save_every")


@dataclass
class EvaluateArgs:
    """`bertkit evaluate`; reading options (DataOptions) given with it override the model's stored ones."""

    model: str
    """A model from `bertkit finetune`: a directory, or a name (`bertkit models`)."""
    data: Path = field(metadata=cli(metavar="FILE"))
    """Labelled file in the task's format."""
    json: bool = False
    """Print the metrics as one JSON object on stdout."""
    batch_size: int = 64
    """Sequences per batch."""

    def __post_init__(self) -> None:
        at_least("batch_size", self.batch_size, 1)


@dataclass
class PredictArgs:
    """`bertkit predict`; reading options (DataOptions) given with it override the model's stored ones."""

    model: str
    """A model from `bertkit finetune`: a directory, or a name (`bertkit models`)."""
    input: str = field(default="-", metadata=cli(short="-i", metavar="FILE"))
    """A file in the task's format, or plain text with an input per line ('-': stdin)."""
    output: str = field(default="-", metadata=cli(short="-o", metavar="FILE"))
    """JSONL file ('-': stdout)."""
    batch_size: int = 64
    """Sequences per batch."""

    def __post_init__(self) -> None:
        at_least("batch_size", self.batch_size, 1)


# ---- vocabularies and prepared text -----------------------------------------------------------------------


@dataclass
class TokenizerTrainArgs:
    """`bertkit tokenizer train`."""

    files: list[Path] = field(metadata=cli(positional=True, metavar="FILE"))
    """Text files or directories (plain text, .jsonl with a text field, gzip; English or Chinese)."""
    out: Path = field(metadata=cli(metavar="DIR"))
    """Where to write vocab.txt and the tokenizer files."""
    vocab_size: int = 30522
    """Tokens in the vocabulary, BERT's five special tokens included."""
    cased: bool = False
    """Keep case and accents (else lower-case and strip accents)."""
    chinese_chars: bool = True
    """Split every CJK character into a token of its own."""
    min_frequency: int = 2
    """Ignore pieces seen fewer times."""
    limit_alphabet: int | None = None
    """Keep at most this many distinct characters, the most frequent; default: as many as the vocabulary
    holds, which Chinese needs."""

    def __post_init__(self) -> None:
        at_least("vocab_size", self.vocab_size, MIN_VOCAB)
        at_least("min_frequency", self.min_frequency, 0)
        if self.limit_alphabet is not None:
            at_least("limit_alphabet", self.limit_alphabet, 0)


@dataclass
class PrepareArgs:
    """`bertkit prepare`."""

    files: list[Path] = field(metadata=cli(positional=True, metavar="FILE"))
    """Plain text (a sentence per line, a blank line between documents), .jsonl, gzip; or directories."""
    tokenizer: Path = field(metadata=cli(metavar="DIR"))
    """A tokenizer or checkpoint directory (vocab.txt)."""
    out: Path = field(metadata=cli(metavar="DIR"))
    """Where the shards go."""
    valid_fraction: float = 0.01
    """Share of documents held out, at least 0 and below 1."""
    shard_tokens: int = 16_000_000
    """Tokens per shard."""
    seed: int = 0
    """Seed of the held-out choice."""
    segmenter: str | None = field(default=None, metadata=choices(SEGMENTERS))
    """Mark Chinese word boundaries with jieba (for --whole-word-masking)."""
    text_field: str = "text"
    """Field holding the text in .jsonl files."""
    document_sentences: int | None = None
    """Cut documents into parts of this many sentences (for text without blank lines between documents)."""
    progress: bool = True
    """Show a progress bar."""

    def __post_init__(self) -> None:
        if self.segmenter is not None:
            check_choices(self)
        in_range("valid_fraction", self.valid_fraction, 0, 1, high_open=True)
        at_least("shard_tokens", self.shard_tokens, 1)
        check_seed("seed", self.seed)
        if self.document_sentences is not None:
            at_least("document_sentences", self.document_sentences, 1)


# ---- using a model --------------------------------------------------------------------------------------


@dataclass
class ModelChoice:
    """A command that works with any BERT, the built-in one by default."""

    model: str | None = None
    """A checkpoint directory or a model name (`bertkit models` lists them); default: the built-in
    all-MiniLM-L6-v2."""


@dataclass
class EmbedArgs(ModelChoice):
    """`bertkit embed`."""

    input: str = field(default="-", metadata=cli(short="-i", metavar="FILE"))
    """Texts, one per line ('-': stdin)."""
    output: str = field(default="-", metadata=cli(short="-o", metavar="FILE"))
    """A .npy or .jsonl file ('-': JSONL on stdout)."""
    batch_size: int = 32
    """Texts per batch."""
    max_length: int | None = None
    """Truncate texts to this many tokens; default: what the model takes."""
    normalize: bool = True
    """Scale the vectors to unit length."""

    def __post_init__(self) -> None:
        at_least("batch_size", self.batch_size, 1)
        if self.max_length is not None:
            at_least("max_length", self.max_length, 3)


@dataclass
class SimilarityArgs(ModelChoice):
    """`bertkit similarity`."""

    texts: list[str] = field(default_factory=list, metadata=cli(positional=True, metavar="TEXT"))
    """Texts to compare; default: a built-in set."""


@dataclass
class TokenizeArgs(ModelChoice):
    """`bertkit tokenize`."""

    texts: list[str] = field(default_factory=list, metadata=cli(positional=True, metavar="TEXT"))
    """Texts to tokenize; default: lines of stdin."""
    pair: str | None = field(default=None, metadata=cli(metavar="TEXT"))
    """A second segment for every text (token type 1)."""


@dataclass
class InfoArgs(ModelChoice):
    """`bertkit info`."""


@dataclass
class FillMaskArgs:
    """`bertkit fill-mask`."""

    text: str = field(metadata=cli(positional=True))
    """Text with one or more [MASK] tokens, e.g. "the capital of france is [MASK] ."."""
    model: str
    """A checkpoint with a masked-LM head: one from `bertkit pretrain`, or a published BERT (the built-in
    all-MiniLM-L6-v2 has none, so there is no default)."""
    top_k: int = 5
    """Candidates per [MASK]."""

    def __post_init__(self) -> None:
        at_least("top_k", self.top_k, 1)


# ---- the demo -------------------------------------------------------------------------------------------


@dataclass
class DemoConfig:
    """`bertkit demo`: sizes of the demo run."""

    out: Path = Path("runs/demo")
    """Where the vocabulary, shards and pretrained model go."""
    config: str = "tiny"
    """Model size to pretrain."""
    steps: int = 2000
    """Pretraining steps."""
    batch_size: int = 32
    """Sequences per step."""
    max_length: int = 64
    """Tokens per sequence."""
    vocab_size: int = 8000
    """WordPiece vocabulary size."""
    lr: float = 2e-3
    """Peak learning rate (small models take a large one)."""

    def __post_init__(self) -> None:
        model_spec("config", self.config)
        at_least("steps", self.steps, 1)
        at_least("batch_size", self.batch_size, 1)
        at_least("max_length", self.max_length, 5)  # [CLS], two [SEP]s and a token of each sentence
        at_least("vocab_size", self.vocab_size, MIN_VOCAB)
        greater_than("lr", self.lr, 0)
