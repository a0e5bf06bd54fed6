"""Export a checkpoint with its head to ONNX, so that it runs where Python does not (C#, Java, the browser).

    bertkit export --model DIR --out OUT      OUT/model.onnx + the tokenizer's files + config.json

The graph (int64 inputs; the batch, sequence and choices axes are dynamic):

    inputs   input_ids, attention_mask, token_type_ids     (B, T); (B, N, T) for BertForMultipleChoice
    outputs  by config.json's `architectures` (as `bertkit info` reads them):
             BertModel                       last_hidden_state (B, T, C), pooler_output (B, C) when the
                                             checkpoint has a pooler, sentence_embedding (B, C): the mean of
                                             the real tokens' hidden states, L2-normalised (embedding.py)
             BertForMaskedLM                 logits (B, T, V)
             BertForNextSentencePrediction   logits (B, 2)
             BertForPreTraining              mlm_logits (B, T, V), nsp_logits (B, 2)
             BertForSequenceClassification   logits (B, L)
             BertForTokenClassification      logits (B, T, L)
             BertForQuestionAnswering        start_logits (B, T), end_logits (B, T)
             BertForMultipleChoice           logits (B, N); a consumer with fewer choices masks the rest

The exporter is torch.onnx.export(dynamo=False), the TorchScript-based one. torch 2.13's dynamo
exporter gives the same numbers (checked on MiniLM: 7e-6 over real tokens), but takes ~4x longer
(~30 s for MiniLM, ~8 s for a 2-layer toy, against ~7 s and <1 s) and needs onnxscript and onnx-ir
besides onnx; the TorchScript one also works on every torch bertkit allows (>= 2.1). torch calls it
deprecated: when a torch drops it, switch to dynamo=True with dynamic_shapes (torch.export.Dim) and
add onnxscript to the `export` extra. Both export model.py's scaled_dot_product_attention with a
boolean mask as it is (MatMul, Where, Softmax); no change to the model was needed.

Before anything reaches OUT, onnxruntime runs the written graph on real tokenized texts of other
batch sizes and lengths than the export saw (with padding, and text pairs for token_type_ids), and
every output must be within 1e-4 of PyTorch's. Per-token outputs are compared at real tokens only:
at padding positions the hidden states mean nothing (there the two differ by up to ~2e-4).

OUT is written into a temporary sibling folder, checked there, then renamed into place, so it holds a
whole export or what it held before. An OUT that holds anything is refused unless overwrite=True
(`--overwrite`), which replaces it whole; an OUT that holds the model being exported is always refused.

This module is imported by `bertkit --help` (for ExportArgs): torch, onnx and onnxruntime are
imported inside the functions that use them.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import shutil
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from bertkit import fileio
from bertkit.errors import CheckpointError, InputError
from bertkit.models import resolve_model
from bertkit.options import choices, in_range

if TYPE_CHECKING:
    import numpy as np
    from torch import Tensor, nn

    from bertkit.config import BertConfig
    from bertkit.model import Pretrained
    from bertkit.tokenizer import Tokenizer

FORMATS = ("onnx",)
MODEL_FILE = "model.onnx"
INPUT_NAMES = ("input_ids", "attention_mask", "token_type_ids")
EMBEDDING_OUTPUT = "sentence_embedding"
DEFAULT_OPSET = 17  # LayerNormalization is one op from 17 on; onnxruntime (also -web, Java, C#) runs it
MIN_OPSET, MAX_OPSET = 14, 20  # scaled_dot_product_attention exports from 14; the TorchScript exporter stops at 20
TOLERANCE = 1e-4
OPTIMIZATION_LEVELS = ("disable", "basic", "extended", "all")  # onnxruntime's GraphOptimizationLevel

# Texts the parity check tokenizes: short and long, English and Chinese, single and paired.
CHECK_TEXTS = (
    "A man is playing a guitar.",
    "The stock market fell sharply today, as investors worried that inflation would keep interest rates "
    "high for longer than anyone had expected at the start of the year.",
    "北京是中国的首都。",
    "ok",
    "Shares dropped.",
    "Someone is strumming a guitar on stage while the crowd sings along, word for word, to every song.",
)


@dataclass
class ExportArgs:
    """`bertkit export`."""

    out: Path
    """Folder to write model.onnx, the tokenizer's files and config.json into; refused if it holds anything,
    unless --overwrite."""
    model: str | None = None
    """A checkpoint directory or a model name (`bertkit models` lists them); default: the built-in
    all-MiniLM-L6-v2."""
    format: str = field(default="onnx", metadata=choices(FORMATS))
    """Format to export to."""
    opset: int = DEFAULT_OPSET
    """ONNX opset version (14 to 20)."""
    check: bool = True
    """Run the graph with onnxruntime on tokenized texts and refuse it unless its outputs are within 1e-4
    of PyTorch's."""
    overwrite: bool = False
    """Replace an --out that holds files (all of them)."""

    def __post_init__(self) -> None:
        self.out = Path(self.out)
        in_range("opset", self.opset, MIN_OPSET, MAX_OPSET, integer=True)


@dataclass(frozen=True)
class ExportReport:
    """What export_onnx wrote and how closely onnxruntime reproduced PyTorch."""

    out: Path
    architecture: str
    inputs: dict[str, tuple[str, ...]]
    """Input name -> its axes (all dynamic)."""
    outputs: dict[str, tuple[str | int, ...]]
    """Output name -> its axes: a name where dynamic, the size where fixed."""
    opset: int
    model_bytes: int
    max_abs_diff: float | None
    """Largest |onnxruntime - PyTorch| over every checked output (real tokens only); None unchecked."""
    checked_shapes: tuple[tuple[int, ...], ...] = ()
    """input_ids shapes of the batches the check ran."""

    def lines(self) -> list[str]:
        def axes(shape: Sequence[str | int]) -> str:
            return "(" + ", ".join(str(a) for a in shape) + ")"

        lines = [
            f"wrote {self.out}: {MODEL_FILE} ({self.architecture}, opset {self.opset}, "
            f"{self.model_bytes / 1e6:.1f} MB), the tokenizer's files, config.json",
            "  inputs:  " + ", ".join(f"{n} {axes(a)}" for n, a in self.inputs.items()) + " int64",
            "  outputs: " + ", ".join(f"{n} {axes(a)}" for n, a in self.outputs.items()) + " float32",
        ]
        if self.max_abs_diff is None:
            lines.append("  not checked against PyTorch (--no-check)")
        else:
            shapes = ", ".join("×".join(map(str, s)) for s in self.checked_shapes)
            lines.append(f"  onnxruntime vs PyTorch: max |difference| {self.max_abs_diff:.1e} (limit {TOLERANCE:.0e}) "
                         f"on inputs of shape {shapes}")
        return lines


# ---- the command ----------------------------------------------------------------------------------------


def cmd_export(args: argparse.Namespace) -> int:
    """`bertkit export`: the options of ExportArgs, parsed."""
    a = ExportArgs(**{f.name: getattr(args, f.name) for f in dataclasses.fields(ExportArgs)})
    report = export_onnx(a.model, a.out, opset=a.opset, check=a.check, overwrite=a.overwrite)
    print("\n".join(report.lines()))
    return 0


def export_onnx(model_dir: str | os.PathLike | None, out_dir: str | os.PathLike, *, opset: int = DEFAULT_OPSET,
                check: bool = True, overwrite: bool = False) -> ExportReport:
    """Write `out_dir`/model.onnx (the encoder with the head config.json names), the tokenizer's
    files and config.json; with check=True, only once onnxruntime matches PyTorch within 1e-4.

    `model_dir`: a checkpoint directory, a model name, or None for the built-in all-MiniLM-L6-v2."""
    in_range("opset", opset, MIN_OPSET, MAX_OPSET, integer=True)
    source = resolve_model(model_dir)
    out = check_out_dir(Path(out_dir), source, overwrite=overwrite)
    _require("onnx", "onnxruntime")
    model, tokenizer = load_for_export(source)
    tmp = fileio.temporary_name(out)
    try:
        fileio.make_dirs(tmp)
        graph = graph_module(model)
        outputs = write_onnx(graph, tmp / MODEL_FILE, opset=opset)
        tokenizer.save_pretrained(tmp)
        model.config.replace(architectures=[model.architecture]).save(tmp)
        diff, shapes = None, ()
        if check:
            batches = check_batches(tokenizer, model.config, multiple_choice=graph.multiple_choice)
            diff = check_parity(graph, tmp / MODEL_FILE, batches, outputs, source=source)
            shapes = tuple(tuple(b["input_ids"].shape) for b in batches)
        size = (tmp / MODEL_FILE).stat().st_size
        _move_into_place(tmp, out, overwrite=overwrite)
    except OSError as e:
        raise fileio.write_error(out, e) from None
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    inputs = dict.fromkeys(INPUT_NAMES, graph.input_axes)
    return ExportReport(out, model.architecture, inputs, outputs, opset, size, diff, shapes)


def _require(*packages: str) -> None:
    """One line naming the extra to install when an ONNX package is missing."""
    import importlib.util

    missing = [p for p in packages if importlib.util.find_spec(p) is None]
    if missing:
        raise InputError(f"ONNX export needs {' and '.join(missing)}: pip install 'bertkit[export]'")


# ---- the output folder ----------------------------------------------------------------------------------


def check_out_dir(out: Path, source: Path, *, overwrite: bool) -> Path:
    """Before any work: `out` must be new or empty (or overwrite=True), not hold the exported model,
    and its parent folder must be writable (the export is written beside it, then renamed)."""
    if _inside(source, out):
        raise InputError(f"{out}: holds the model being exported ({source}); choose another --out")
    _check_free(out, overwrite=overwrite)
    fileio.check_output_dir(out.parent)
    return out


def _check_free(out: Path, *, overwrite: bool) -> None:
    if out.exists() and not out.is_dir():
        raise InputError(f"{out}: is a file, not a directory")
    if out.is_dir() and any(out.iterdir()) and not overwrite:
        raise InputError(f"{out}: exists and is not empty; choose another --out, or replace it with --overwrite")


def _inside(path: Path, folder: Path) -> bool:
    path, folder = path.resolve(), folder.resolve()
    return path == folder or folder in path.parents


def _move_into_place(tmp: Path, out: Path, *, overwrite: bool) -> None:
    """Rename the finished folder `tmp` to `out`; an existing `out` (empty, or with overwrite) is moved
    aside first and deleted after, so `out` is never half old, half new."""
    _check_free(out, overwrite=overwrite)  # again: something may have written into it meanwhile
    old = None
    if out.exists():
        old = fileio.temporary_name(out)
        os.replace(out, old)
    os.replace(tmp, out)
    fileio.fsync_dir(out.parent)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


# ---- the model and the graph ----------------------------------------------------------------------------


def load_for_export(model_dir: Path) -> tuple[Pretrained, Tokenizer]:
    """The checkpoint as the class its config.json names (heads.HEADS), in eval mode, and its tokenizer.

    Refused: an architecture bertkit has no class for, and weights the checkpoint lacks (they would
    be exported as random values) — except a missing pooler of a plain encoder, which is left out."""
    from bertkit.config import BertConfig
    from bertkit.heads import HEADS
    from bertkit.tokenizer import Tokenizer

    config = BertConfig.load(model_dir)
    architecture = (config.architectures or ["BertModel"])[0]
    if architecture not in HEADS:
        raise CheckpointError(f"{model_dir}: architecture {architecture} has no bertkit class to export "
                              f"(one of {', '.join(HEADS)})")
    model = HEADS[architecture].from_pretrained(model_dir).eval()
    missing = model.load_report.missing
    if architecture == "BertModel" and missing and all(k.startswith("pooler.") for k in missing):
        model.pooler, missing = None, []  # e.g. sentence-transformers saved without the pooler
    if missing:
        raise CheckpointError(f"{model_dir}: the checkpoint lacks {len(missing)} weights of {architecture} "
                              f"({', '.join(missing[:3])}{', ...' if len(missing) > 3 else ''})")
    return model, Tokenizer.from_pretrained(model_dir)


def graph_module(model: Pretrained) -> nn.Module:
    """What is exported: `model` taking (input_ids, attention_mask, token_type_ids), returning a
    tuple of the tensors its output names (the loss left out), and, for the plain encoder,
    sentence_embedding too. Its `output_names`, `input_axes` and `multiple_choice` describe it."""
    import torch
    from torch import nn

    from bertkit.embedding import mean_pool

    choice = model.architecture == "BertForMultipleChoice"
    embedding = model.architecture == "BertModel"
    shape = (2, 3, 5) if choice else (2, 5)  # (B, N, T) or (B, T)
    with torch.inference_mode():
        sample = model(torch.ones(shape, dtype=torch.long), torch.zeros(shape, dtype=torch.long),
                       torch.ones(shape, dtype=torch.long))
    fields = tuple(name for name, value in zip(sample._fields, sample) if name != "loss" and value is not None)

    # Defined here, not at module level, so that importing this module does not import torch.
    class Graph(nn.Module):
        output_names = fields + ((EMBEDDING_OUTPUT,) if embedding else ())
        input_axes = ("batch", "choices", "sequence") if choice else ("batch", "sequence")
        multiple_choice = choice

        def __init__(self) -> None:
            super().__init__()
            self.model = model

        def forward(self, input_ids: Tensor, attention_mask: Tensor, token_type_ids: Tensor) -> tuple[Tensor, ...]:
            out = self.model(input_ids, token_type_ids, attention_mask)
            tensors = tuple(getattr(out, name) for name in fields)
            if embedding:  # as embedding.Embedder computes it
                pooled = mean_pool(out.last_hidden_state, attention_mask)  # (B, C)
                tensors += (nn.functional.normalize(pooled, dim=-1),)
            return tensors

    return Graph().eval()


def output_axes(graph: nn.Module) -> dict[str, tuple[str | int, ...]]:
    """Each output's axes, found by running `graph` at two input shapes: an axis that follows the
    batch, choices or sequence size is named after it; one that stays put keeps its size."""
    import torch

    probes = [(2, 3, 5), (3, 4, 7)] if graph.multiple_choice else [(2, 5), (3, 7)]
    results = []
    with torch.inference_mode():
        for shape in probes:
            ones = torch.ones(shape, dtype=torch.long)
            results.append([tuple(t.shape) for t in graph(ones, ones, torch.zeros_like(ones))])
    axes = {}
    for name, small, large in zip(graph.output_names, *results):
        named = []
        for i, (a, b) in enumerate(zip(small, large)):
            follows = [n for n, p, q in zip(graph.input_axes, probes[0], probes[1]) if (p, q) == (a, b)]
            named.append(follows[0] if follows else a)
            if not follows and a != b:
                raise AssertionError(f"output {name} axis {i} grows as no input axis does: {a} -> {b}")
        axes[name] = tuple(named)
    return axes


def write_onnx(graph: nn.Module, path: Path, *, opset: int) -> dict[str, tuple[str | int, ...]]:
    """Export `graph` to `path` with dynamic axes, check the file with onnx's checker, and return
    each output's axes."""
    import onnx
    import torch

    axes = output_axes(graph)
    shape = (2, 3, 5) if graph.multiple_choice else (2, 5)
    sample = tuple(torch.ones(shape, dtype=torch.long) for _ in INPUT_NAMES)
    dynamic = {name: dict(enumerate(graph.input_axes)) for name in INPUT_NAMES}
    dynamic.update({name: {i: a for i, a in enumerate(ax) if isinstance(a, str)} for name, ax in axes.items()})
    with warnings.catch_warnings():
        # Expected, and harmless here: torch's notice that this exporter is deprecated (see the module
        # docstring), and the TracerWarning for Embeddings' "sequence longer than the positions" check,
        # which a graph cannot raise (onnxruntime refuses such input in the position Gather instead).
        warnings.simplefilter("ignore", DeprecationWarning)
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        torch.onnx.export(graph, sample, str(path), dynamo=False, opset_version=opset, input_names=list(INPUT_NAMES),
                          output_names=list(graph.output_names), dynamic_axes=dynamic)
    onnx.checker.check_model(str(path), full_check=True)
    return axes


# ---- the parity check -----------------------------------------------------------------------------------


def check_batches(tokenizer: Tokenizer, config: BertConfig, *,
                  multiple_choice: bool = False) -> list[dict[str, Tensor]]:
    """Tokenized CHECK_TEXTS in batches of other sizes and lengths than the export's sample:
    one text alone; three, padded; four pairs (token_type_ids 1 in the second segment), padded.
    For multiple choice: (1, 2, T) and (2, 3, T) of context-choice pairs."""

    limit = min(tokenizer.model_max_length, config.max_position_embeddings)

    def encode(texts, pairs=None) -> dict[str, Tensor]:
        enc = tokenizer(list(texts), None if pairs is None else list(pairs), padding=True, truncation=True,
                        max_length=limit, return_tensors="pt")
        return {name: enc[name].long() for name in INPUT_NAMES}

    t = CHECK_TEXTS
    if not multiple_choice:
        return [encode(t[:1]), encode(t[1:4]), encode(t[2:6], t[0:4])]
    out = []
    for B, N in ((1, 2), (2, 3)):
        flat = encode([t[b] for b in range(B) for _ in range(N)], [t[(b + n + 2) % len(t)]
                                                                  for b in range(B) for n in range(N)])
        out.append({name: v.view(B, N, -1) for name, v in flat.items()})  # (B, N, T)
    return out


def check_parity(graph: nn.Module, path: Path, batches: list[dict[str, Tensor]],
                 axes: Mapping[str, tuple[str | int, ...]], *, source: Path | str = "") -> float:
    """Run `path` with onnxruntime and `graph` with PyTorch on `batches`; the largest |difference|
    over all outputs (per-token outputs at real tokens only). Raises CheckpointError above TOLERANCE."""
    import numpy as np
    import torch

    session = ort_session(path)
    worst, where = 0.0, ""
    for batch in batches:
        with torch.inference_mode():
            expected = [t.numpy() for t in graph(**batch)]
        got = session.run(list(graph.output_names), {k: v.numpy() for k, v in batch.items()})
        real = batch["attention_mask"].numpy().astype(bool)  # (B, T) for the outputs with a sequence axis
        for name, e, g in zip(graph.output_names, expected, got):
            if g.shape != e.shape:
                raise CheckpointError(f"{source}: the ONNX graph's {name} has shape {g.shape}, PyTorch's {e.shape}")
            diff = np.abs(g.astype(np.float64) - e)
            if axes[name][:2] == ("batch", "sequence"):
                diff = diff[real]
            if diff.size and float(diff.max()) > worst:
                worst, where = float(diff.max()), name
    if not worst <= TOLERANCE:  # also NaN
        raise CheckpointError(f"{source}: onnxruntime's {where} differs from PyTorch's by {worst:.1e} "
                              f"(more than {TOLERANCE:.0e}); nothing was written (--no-check writes it anyway)")
    return worst


# ---- running an export ----------------------------------------------------------------------------------


def ort_session(path: str | os.PathLike, *, threads: int | None = None, optimization: str = "all"):
    """An onnxruntime CPU session for `path`: `threads` for the operators (None: onnxruntime's
    choice), graph optimisation `optimization` (one of OPTIMIZATION_LEVELS)."""
    _require("onnxruntime")
    import onnxruntime as ort

    if optimization not in OPTIMIZATION_LEVELS:
        raise InputError(f"optimization must be one of {', '.join(OPTIMIZATION_LEVELS)}, got {optimization!r}")
    options = ort.SessionOptions()
    options.graph_optimization_level = {
        "disable": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
        "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
        "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
        "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
    }[optimization]
    if threads is not None:
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
    options.log_severity_level = 3  # errors only: its warnings are about its own optimiser's choices
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


class OnnxModel:
    """An exported folder as its users run it: bertkit's tokenizer and an onnxruntime session."""

    def __init__(self, directory: str | os.PathLike, *, threads: int | None = None, optimization: str = "all"):
        from bertkit.tokenizer import Tokenizer

        directory = Path(directory)
        self.session = ort_session(fileio.check_input_file(directory / MODEL_FILE), threads=threads,
                                   optimization=optimization)
        self.tokenizer = Tokenizer.from_pretrained(directory)
        config = json.loads(fileio.check_input_file(directory / "config.json").read_text(encoding="utf-8"))
        self.max_length = min(self.tokenizer.model_max_length, int(config["max_position_embeddings"]))
        self.output_names = [o.name for o in self.session.get_outputs()]

    def run(self, features: Mapping[str, Any]) -> dict[str, np.ndarray]:
        """input_ids, attention_mask, token_type_ids (arrays or tensors) -> every output, by name."""
        import numpy as np

        feed = {name: np.asarray(features[name], dtype=np.int64) for name in INPUT_NAMES}
        return dict(zip(self.output_names, self.session.run(self.output_names, feed)))

    def __call__(self, texts: Sequence[str], pairs: Sequence[str] | None = None) -> dict[str, np.ndarray]:
        """Texts (and their pairs) tokenized as one padded batch, truncated to what the model takes."""
        enc = self.tokenizer(list(texts), None if pairs is None else list(pairs), padding=True, truncation=True,
                             max_length=self.max_length, return_tensors="np")
        return self.run(enc)

    def embed(self, texts: Sequence[str], *, batch_size: int = 32) -> np.ndarray:
        """Sentence embeddings (N, C) as embedding.Embedder batches them: by length, in the texts' order."""
        import numpy as np

        from bertkit.embedding import length_batches
        from bertkit.padding import pad_inputs

        if EMBEDDING_OUTPUT not in self.output_names:
            raise InputError(f"this export has no {EMBEDDING_OUTPUT} output (only a BertModel export has)")
        dim = self.session.get_outputs()[self.output_names.index(EMBEDDING_OUTPUT)].shape[-1]
        out = np.zeros((len(texts), dim), dtype=np.float32)
        if not texts:
            return out
        enc = self.tokenizer(list(texts), truncation=True, max_length=self.max_length)
        for idx in length_batches([len(ids) for ids in enc["input_ids"]], batch_size):
            batch = pad_inputs([enc["input_ids"][i] for i in idx], self.tokenizer.pad_token_id,
                               token_types=[enc["token_type_ids"][i] for i in idx])
            out[idx] = self.run(batch)[EMBEDDING_OUTPUT]
        return out


def run_onnx(out_dir: str | os.PathLike, texts: Sequence[str], pairs: Sequence[str] | None = None
             ) -> dict[str, np.ndarray]:
    """Every output of an exported folder for `texts` (one padded batch), by name."""
    return OnnxModel(out_dir)(texts, pairs)
