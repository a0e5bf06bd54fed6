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
    duration,
    finite,
    greater_than,
    in_range,
    integer,
    lower_is_better,
    model_spec,
    not_empty,
    one_of,
)
from bertkit.options import seed as check_seed

OBJECTIVES = ("mlm", "mlm+nsp", "mlm+sop")
SEGMENTERS = ("jieba",)
EMBED_LOSSES = ("auto", "mnrl", "cosine")
# bertkit.sentence.POOLING_MODES, here without torch (tests/tasks/test_embed.py checks they agree)
EMBED_POOLING = ("mean", "cls", "max", "mean_sqrt_len_tokens", "weightedmean", "lasttoken")
# Task families by name, each implemented by the class named here (imported only when used).
TASKS = {
    "classify": "bertkit.tasks.classify:Classify",
    "tag": "bertkit.tasks.tag:Tag",
    "qa": "bertkit.tasks.qa:QuestionAnswering",
    "choice": "bertkit.tasks.choice:Choice",
    "embed": "bertkit.tasks.embed:Embed",
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
    """Sequences per process per micro-batch (finetune --task embed: examples, each anchor, positive and
    any negatives)."""
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
    """fp32, bf16 (autocast), or auto: bf16 on a GPU with bf16 or a CPU with AMX, else fp32."""
    compile: bool = False
    """Compile the model with torch.compile: for GPUs. On a CPU it trains slower (MiniLM classification:
    0.39x eager, which skips padding and draws cheaper dropout masks)."""
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
    time_budget: str | None = None
    """Train for this long (90m, 2h, 3600s...): warm-up (a fraction) and decay are laid over
    wall-clock time, and the run stops with a final evaluation and a saved model when it is spent
    (--steps is then not used). Resuming continues the clock."""
    device: str = "auto"
    """Where training runs: auto (under torchrun one GPU per process when there is CUDA, else the
    CPU), cpu, cuda, cuda:N or mps."""
    pack: bool = False
    """Pack each batch's examples several to a row of max_length tokens (positions restart and
    attention stays within each example): less padding, the same examples and losses (pretrain;
    finetune --task classify or tag)."""

    def __post_init__(self) -> None:
        self.out = Path(self.out)
        check_train_config(self)
        check_device(self.device)
        if self.best_metric:
            lower_is_better(self.best_metric)  # an unknown metric is refused before any work
        if self.pack and self.compile:
            raise InputError("--pack does not work with --compile: a compiled graph cannot tell packed rows apart")

    def check_steps(self) -> None:
        """Once the number of steps is final (fine-tuning derives it from epochs)."""
        if self.warmup >= 1 and self.warmup > self.steps:
            raise BertkitError(f"--warmup {self.warmup:g} steps is more than the run's {self.steps} steps; "
                               f"give fewer, or a fraction such as 0.1")

    def warmup_steps(self) -> int:
        return int(self.warmup * self.steps) if self.warmup < 1 else int(self.warmup)

    @property
    def time_budget_seconds(self) -> float | None:
        return None if self.time_budget is None else duration("time_budget", self.time_budget)


# ---- pretraining ------------------------------------------------------------------------------------------


MASK_SPLITS = {"bert": (0.8, 0.1, 0.1), "mask-only": (1.0, 0.0, 0.0), "random-only": (0.0, 1.0, 0.0)}


def mask_split_fractions(spec: str) -> tuple[float, float, float]:
    """--mask-split: a preset name, or three fractions ([MASK], random, kept) that sum to 1."""
    if spec in MASK_SPLITS:
        return MASK_SPLITS[spec]
    try:
        parts = tuple(float(x) for x in spec.split(","))
    except ValueError:
        parts = ()
    if len(parts) != 3 or not all(0 <= x <= 1 for x in parts) or abs(sum(parts) - 1) > 1e-6:
        raise InputError(f"--mask-split must be {', '.join(MASK_SPLITS)} or three fractions "
                         f"[MASK],random,kept that sum to 1 (such as 0.8,0.1,0.1); got {spec!r}")
    return parts  # type: ignore[return-value]


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
    """Fraction of real tokens selected for MLM (BERT paper §3.1: 0.15)."""
    mask_split: str = "bert"
    """What becomes of the selected tokens: [MASK],random,kept fractions such as 0.8,0.1,0.1, or a
    preset: bert (0.8,0.1,0.1, the paper's), mask-only (1,0,0), random-only (0,1,0)."""
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
        mask_split_fractions(self.mask_split)  # refused here, before any data is read
        if self.max_predictions_per_seq is not None:
            at_least("max_predictions_per_seq", self.max_predictions_per_seq, 1)
        check_seed("seed", self.seed)

    @property
    def mask_fractions(self) -> tuple[float, float, float]:
        """([MASK], random, kept) fractions of the selected tokens."""
        return mask_split_fractions(self.mask_split)

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


PAPER_MASK_RATE = 0.15
"""BERT paper §3.1: 15% of tokens selected for MLM."""
SMALL_BUDGET_MASK_RATE = {"tiny": 0.4, "mini": 0.4}
"""`bertkit pretrain`'s default --mask-rate for the small presets: on Penn Treebank `tiny` (32 x 64
tokens, lr 2e-3) 40% reaches the held-out [MASK] accuracy of 1,000 steps at 15% in ~55% of the
steps (README, Pretraining from raw text)."""


def small_budget_mask_rate(config: str) -> float:
    """The default --mask-rate of `bertkit pretrain --config config`."""
    return SMALL_BUDGET_MASK_RATE.get(config, PAPER_MASK_RATE)


SMALL_BUDGET_TRAINING = {"tiny": {"lr": 2e-3, "warmup": 0.05}, "mini": {"lr": 1e-3, "warmup": 0.05}}
"""`bertkit pretrain`'s default --lr and --warmup for the small presets, measured on Penn Treebank and
People's Daily (README, Pretraining from raw text): `tiny` learns at 1e-3 and 2e-3 and never leaves the
trivial solution at 5e-3; a warm-up of 5-10% beats 1%. Larger presets keep TrainConfig's (1e-4, 0.01)."""


def pretrain_training_defaults(config: str) -> dict[str, float]:
    """The --lr and --warmup `bertkit pretrain --config config` uses when they are not given."""
    return {"lr": TrainConfig.lr, "warmup": TrainConfig.warmup, **SMALL_BUDGET_TRAINING.get(config, {})}


@dataclass(frozen=True, kw_only=True)
class PretrainArgs(PretrainingConfig):
    """`bertkit pretrain`: how examples are made and masked (PretrainingConfig's fields), the model
    and the data; the training loop's settings are a TrainConfig. On the command line --seed is
    TrainConfig's and sets both: a run has one seed."""

    data: Path
    """Directory written by `bertkit prepare`."""
    config: str = "mini"
    """Model size: tiny, mini, small, medium, base, large, or a config.json."""
    mask_rate: float | None = None  # None: by --config, small_budget_mask_rate()
    """Fraction of real tokens selected for MLM; default by --config: 0.4 for tiny and mini (measured to
    learn faster on a small budget, see the README), 0.15 (BERT paper §3.1) for larger presets and
    config.json files. --mask-rate 0.15 --mask-split bert is the paper's masking."""
    init_from: str | None = None
    """Start from this checkpoint (continued pretraining) instead of random weights."""
    eval_batches: int = 50
    """Cap on validation batches per evaluation (0: all)."""

    def __post_init__(self) -> None:
        if self.mask_rate is None:
            object.__setattr__(self, "mask_rate", small_budget_mask_rate(self.config))
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
    loss: str = field(default="auto", metadata=choices(EMBED_LOSSES))
    """embed: mnrl (in-batch negatives, for anchor/positive[/negative] rows) or cosine (for scored
    pairs); auto: the one the training data's shape calls for."""
    scale: float = 20.0
    """embed: cosine similarities are multiplied by this before the softmax (1 / temperature)."""
    symmetric: bool = False
    """embed: also rank each positive against every anchor of the batch, and average the two losses."""
    mini_batch_size: int | None = None
    """embed: embed a batch this many texts at a time (the cached loss, GradCache), so --batch-size can
    be far larger than memory allows, with the same gradients."""
    matryoshka_dims: str | None = None
    """embed: also train truncated vectors: the loss summed over these leading dimensions, e.g.
    384,256,128,64."""
    gather_across_processes: bool = True
    """embed: under torchrun, score every anchor against the positives and negatives of all processes."""
    pooling: str | None = None
    """embed: pooling of the token vectors (mean, cls, max, mean_sqrt_len_tokens, weightedmean, lasttoken,
    or several joined by +); default: the model's own (mean for a plain BERT)."""

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
        greater_than("scale", self.scale, 0)
        if self.mini_batch_size is not None:
            at_least("mini_batch_size", self.mini_batch_size, 1)
        self.dims  # noqa: B018 (refuses a malformed --matryoshka-dims here)
        if self.pooling is not None and not all(m.strip() in EMBED_POOLING for m in self.pooling.replace(",", "+").split("+")):
            raise InputError(f"--pooling must be one or more of {', '.join(EMBED_POOLING)} joined by '+', "
                             f"got {self.pooling!r}")

    @property
    def dims(self) -> tuple[int, ...]:
        """--matryoshka-dims as numbers, largest first; () when not given."""
        if self.matryoshka_dims is None:
            return ()
        try:
            dims = tuple(int(d) for d in str(self.matryoshka_dims).split(","))
        except ValueError:
            dims = ()
        if not dims or min(dims) < 1 or len(set(dims)) != len(dims):
            raise InputError(f"--matryoshka-dims must be distinct positive integers joined by commas, such as "
                             f"384,256,128,64; got {self.matryoshka_dims!r}")
        return tuple(sorted(dims, reverse=True))


@dataclass(kw_only=True)
class FinetuneArgs:
    """`bertkit finetune` beyond the training loop's settings (TrainConfig, with the defaults of
    FINETUNE_TRAINING) and the data's (DataOptions)."""

    task: str = field(metadata=choices(TASKS))
    """classify, tag, qa, choice or embed."""
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


DEVICE_KINDS = ("auto", "cpu", "cuda", "mps")  # and cuda:N; bertkit.devices.resolve_device reads them


def check_device(spec: object) -> str:
    """--device's spelling: auto, cpu, cuda, cuda:N or mps. Whether this machine has it is
    bertkit.devices.resolve_device's question, at run time (here torch is not imported)."""
    text = spec if isinstance(spec, str) else ""
    kind, colon, index = text.partition(":")
    if text in DEVICE_KINDS or (kind == "cuda" and colon and index.isdigit() and index.isascii()):
        return text
    raise InputError(f"--device must be auto, cpu, cuda, cuda:N (N a GPU's number) or mps; got {spec!r}")


@dataclass
class DeviceChoice:
    """A command that runs a model: on which device (the commands' --device)."""

    device: str = "auto"
    """Where the model runs: auto (cuda if there is a GPU, else mps, else cpu), cpu, cuda, cuda:N or mps.
    On a GPU with bf16 the model runs in bf16 autocast; the outputs are float32 either way."""

    def __post_init__(self) -> None:
        check_device(self.device)


INFERENCE_PRECISIONS = ("auto", "fp32", "bf16", "int8")


def check_inference_precision(value: object) -> str:
    if value not in INFERENCE_PRECISIONS:
        hint = (f" ({value} is an output format: --output-precision {value})"
                if value in EMBED_PRECISIONS and value != "int8" else "")
        raise InputError(f"--precision must be one of {', '.join(INFERENCE_PRECISIONS)}, got {value!r}{hint}")
    return value


@dataclass
class PrecisionChoice:
    """A command that runs a model for inference: in which precision (the commands' --precision)."""

    precision: str = field(default="auto", metadata=choices(INFERENCE_PRECISIONS))
    """How the model computes: auto (bf16 on a GPU that has it, else fp32), fp32, bf16 (autocast), or int8 (CPU
    only: the encoder's matrix multiplies in int8, calibrated when the model loads; 1.2-1.4x fp32, vectors within
    cosine 0.99 of fp32's)."""
    compile: bool = False
    """Compile the encoder layers' projections, LayerNorms and GELU with torch.compile (once, on load: 8-20 s on
    2 cores); pays for int8 (1.1-1.3x), about even for fp32 on a CPU. Needs a C++ compiler on the CPU."""

    def __post_init__(self) -> None:
        check_inference_precision(self.precision)


# output precisions of `bertkit embed` (bertkit.embedding.quantize), sentence-transformers' names
EMBED_PRECISIONS = ("float32", "int8", "uint8", "binary", "ubinary")


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
    normalize: bool | None = None
    """Scale the vectors to unit length; default: as the model says (a sentence-transformers folder's
    Normalize module; a plain BERT: yes; --tokens: no)."""
    pooling: str | None = field(default=None, metadata=cli(metavar="MODES"))
    """How token vectors become one: mean, cls, max, mean_sqrt_len_tokens, weightedmean, lasttoken, or
    several joined by + (concatenated); default: the model's 1_Pooling/config.json, else mean."""
    prompt: str | None = field(default=None, metadata=cli(metavar="TEXT"))
    """Text put before every input, e.g. 'query: '."""
    prompt_name: str | None = field(default=None, metadata=cli(metavar="NAME"))
    """One of the model's prompts (config_sentence_transformers.json); its default_prompt_name applies
    when neither --prompt nor --prompt-name is given."""
    layer: int | None = None
    """Pool this layer's hidden states: -1 the last (default), -2 the one before (as bert-as-service did),
    0 the embeddings."""
    dimensions: int | None = None
    """Keep the first N components (Matryoshka models), rescaled to unit length when normalised."""
    output_precision: str = field(default="float32", metadata=choices(EMBED_PRECISIONS))
    """Output values as sentence-transformers' quantize_embeddings makes them (its `precision`): int8/uint8 cut each
    component's range over the texts embedded together into 256 steps; binary/ubinary pack one bit
    (> 0) per component, 8 to a byte. .npy keeps the type; JSONL writes integers."""
    tokens: bool = False
    """A contextual vector per word piece instead of one per text, as JSONL: {"text", "tokens": [{"token",
    "id", "start", "end", "embedding"}]}, start/end the piece's characters in the text (null for [CLS]
    and [SEP]); raw, unless --normalize."""

    def __post_init__(self) -> None:
        at_least("batch_size", self.batch_size, 1)
        if self.max_length is not None:
            at_least("max_length", self.max_length, 3)
        self._check_sentence_options()
        if self.tokens and self.output.endswith(".npy"):
            raise InputError(f"{self.output}: --tokens writes JSONL (texts have different numbers of pieces, "
                             "which no single .npy array holds); give a .jsonl file or - for stdout")


    def _check_sentence_options(self) -> None:
        if self.pooling is not None:
            modes = self.pooling.replace(",", "+").split("+") if isinstance(self.pooling, str) else [None]
            if not all(isinstance(m, str) and m.strip() in EMBED_POOLING for m in modes):
                raise InputError(f"--pooling must be one or more of {', '.join(EMBED_POOLING)} joined by +, "
                                 f"got {self.pooling!r}")
        not_empty("prompt_name", self.prompt_name)
        if self.prompt is not None and self.prompt_name is not None:
            raise InputError("give --prompt or --prompt-name, not both")
        if self.layer is not None:
            integer("layer", self.layer)
        if self.dimensions is not None:
            at_least("dimensions", self.dimensions, 1)
        one_of("output_precision", self.output_precision, EMBED_PRECISIONS)
        if self.tokens and (self.pooling or self.dimensions or self.output_precision != "float32"
                            or self.prompt is not None or self.prompt_name is not None):
            raise InputError("--pooling, --prompt, --prompt-name, --dimensions and --output-precision shape sentence "
                             "vectors; --tokens writes one vector per word piece of the text as it is")


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


FIGURE_SUFFIXES = (".png", ".pdf", ".svg")


def check_figure_path(name: str, path: str | Path) -> Path:
    """A picture's file name must say its format: .png, .pdf or .svg."""
    path = Path(path)
    if path.suffix.lower() not in FIGURE_SUFFIXES:
        raise InputError(f"--{name.replace('_', '-')} {path}: must end in {', '.join(FIGURE_SUFFIXES)}")
    return path


@dataclass(kw_only=True)
class AttentionArgs(ModelChoice):
    """`bertkit attention`."""

    text: str = field(metadata=cli(positional=True))
    """The sentence to look at, e.g. "The cat sat on the mat because it was tired."."""
    out: Path = field(metadata=cli(metavar="FILE"))
    """The picture to write: .png, .pdf or .svg."""
    layer: int = -1
    """Layer whose attention to draw: 0 the first, -1 the last (negative counts from the end)."""
    head: int | None = None
    """One head of the layer (0 the first, -1 the last); default: a grid of all of them."""
    pair: str | None = field(default=None, metadata=cli(metavar="TEXT"))
    """A second sentence, drawn as a pair ([CLS] text [SEP] pair [SEP])."""
    max_length: int | None = None
    """Truncate to this many tokens; default: what the model takes."""

    def __post_init__(self) -> None:
        self.out = check_figure_path("out", self.out)
        integer("layer", self.layer)
        if self.head is not None:
            integer("head", self.head)
        if self.max_length is not None:
            at_least("max_length", self.max_length, 3)


# ---- semantic search (vector_index.py) ---------------------------------------------------------------------


# usearch's own defaults but ef 128 (usearch: 64): recall@10 0.973 instead of 0.948 on 112,697 MiniLM
# vectors of real text, at about 1 ms a query (bench/search_recall.py)
HNSW_DEFAULTS = {"connectivity": 16, "expansion_add": 128, "expansion_search": 128}


@dataclass(kw_only=True)
class IndexArgs:
    """`bertkit index`: embed a corpus into an index folder for `bertkit search`."""

    corpus: list[Path] = field(metadata=cli(positional=True, metavar="CORPUS"))
    """Text files (a passage per line, its id the 0-based line number; blank lines keep their number and
    are skipped) or .jsonl files (a text field, and an id field kept as given, else the line number)."""
    out: Path = field(metadata=cli(metavar="INDEX"))
    """The index folder to write (a rerun of the same command resumes an unfinished one)."""
    model: str | None = None
    """A checkpoint directory or a model name (`bertkit models`); default: the built-in all-MiniLM-L6-v2,
    or with --add the index's own model."""
    batch_size: int = 32
    """Texts per batch."""
    max_length: int | None = None
    """Truncate passages to this many tokens; default: what the model takes."""
    add: bool = False
    """Append the corpus to an existing index (same model; ids stay unique)."""
    overwrite: bool = False
    """Replace an index (or write one into a folder that holds other files, which are kept)."""
    exact: bool = False
    """Keep the index exact (every vector searched), however large."""
    approximate: bool = False
    """Build an HNSW graph (usearch) however small the index; default: from 50,000 passages on."""
    connectivity: int | None = None
    """HNSW: links per node (usearch's M); default: 16, or with --add the index's own."""
    expansion_add: int | None = None
    """HNSW: candidates considered when adding a vector (efConstruction); default: 128, or the index's own."""
    expansion_search: int | None = None
    """HNSW: candidates considered per search (ef); more is slower and finds more of the exact top k;
    default: 128, or the index's own."""
    chunk_size: int = 8192
    """Passages embedded and saved together: an interrupted build resumes after the last complete chunk."""
    text_field: str = "text"
    """JSONL: the field with the passage's text."""
    id_field: str = "id"
    """JSONL: the field with the passage's id (a string or an integer)."""
    progress: bool | None = None
    """Show a progress bar on stderr; default: when stderr is a terminal."""

    def __post_init__(self) -> None:
        self.corpus, self.out = [Path(f) for f in self.corpus], Path(self.out)
        if not self.corpus:
            raise InputError("give at least one CORPUS file to index")
        at_least("batch_size", self.batch_size, 1)
        if self.max_length is not None:
            at_least("max_length", self.max_length, 3)
        for name, low in (("connectivity", 2), ("expansion_add", 1), ("expansion_search", 1)):
            if getattr(self, name) is not None:
                at_least(name, getattr(self, name), low)
        at_least("chunk_size", self.chunk_size, 1)
        not_empty("text_field", self.text_field)
        not_empty("id_field", self.id_field)
        not_empty("model", self.model)
        if self.exact and self.approximate:
            raise InputError("--exact and --approximate exclude each other; give one")
        if self.add and self.overwrite:
            raise InputError("--add and --overwrite exclude each other: --add keeps the index, --overwrite replaces it")


@dataclass
class SearchArgs:
    """`bertkit search`: the passages of an index nearest to each query."""

    index: Path = field(metadata=cli(positional=True, metavar="INDEX"))
    """An index folder written by `bertkit index`."""
    query: str | None = field(default=None, metadata=cli(positional=True, metavar="QUERY"))
    """The text to search for (or --queries FILE)."""
    queries: str | None = field(default=None, metadata=cli(metavar="FILE"))
    """A file of queries, one per line ('-': stdin)."""
    top_k: int = field(default=10, metadata=cli(short="-k"))
    """Results per query."""
    json: bool = False
    """Print one JSON line per query: {"query", "results": [{"id", "score", "text"}]}."""
    model: str | None = None
    """Where the index's model is now, when it moved (the same weights: another model's vectors would
    not compare with the passages')."""
    exact: bool = False
    """Search every vector, even where the index has an HNSW graph."""
    expansion_search: int | None = None
    """HNSW candidates per search; default: the index's own setting."""
    batch_size: int = 32
    """Queries per batch."""

    def __post_init__(self) -> None:
        self.index = Path(self.index)
        if (self.query is None) == (self.queries is None):
            raise InputError("give a QUERY or --queries FILE" + ("" if self.query is None else ", not both"))
        if self.query is not None and not self.query.strip():
            raise InputError("QUERY is empty")
        at_least("top_k", self.top_k, 1)
        at_least("batch_size", self.batch_size, 1)
        if self.expansion_search is not None:
            at_least("expansion_search", self.expansion_search, 1)
        not_empty("model", self.model)


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
