"""Checkpoints in the standard BERT layout: config.json + vocab + model.safetensors.

Reads any flavour of BERT weights: safetensors or a pickle-based pytorch_model.bin (loaded
weights-only, so it can never run code), sharded or not, with or without the `bert.` prefix,
with TF-era `gamma`/`beta` LayerNorm names, with heads present or absent. Writes the standard key
names, so other BERT implementations load what bertkit saves unchanged.

Our parameter names (model.py, heads.py) differ from the standard ones; STANDARD_NAMES maps one
to the other, and the separate query/key/value projections are fused into one `qkv` on load and
split again on save.

This module knows models only by what it uses of them (`Checkpointable`): model.py imports it to
give every model from_pretrained/save_pretrained, so it never imports model.py.
"""

from __future__ import annotations

import json
import logging
import os
import pickle
import re
import stat
import warnings
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

import torch
from torch import Tensor

from bertkit.config import BertConfig
from bertkit.errors import CheckpointError
from bertkit.fileio import fsync_dir, temporary_name

if TYPE_CHECKING:
    from bertkit.tokenizer import Tokenizer

log = logging.getLogger("bertkit")

WEIGHTS_NAME = "model.safetensors"
VOCAB_NAME = "vocab.txt"
WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin", "pytorch_model.bin.index.json")

# (our name, standard name); {i} stands for a layer number. Encoder names are relative to the
# encoder; head names are relative to the model (the encoder sits under `bert.` in both worlds).
ENCODER_NAMES = [
    ("embeddings.word.", "embeddings.word_embeddings."),
    ("embeddings.position.", "embeddings.position_embeddings."),
    ("embeddings.segment.", "embeddings.token_type_embeddings."),
    ("embeddings.norm.", "embeddings.LayerNorm."),
    ("layers.{i}.attention.out.", "encoder.layer.{i}.attention.output.dense."),
    ("layers.{i}.attention_norm.", "encoder.layer.{i}.attention.output.LayerNorm."),
    ("layers.{i}.ffn.up.", "encoder.layer.{i}.intermediate.dense."),
    ("layers.{i}.ffn.down.", "encoder.layer.{i}.output.dense."),
    ("layers.{i}.ffn_norm.", "encoder.layer.{i}.output.LayerNorm."),
    ("pooler.dense.", "pooler.dense."),
]
HEAD_NAMES = [
    ("mlm.dense.", "cls.predictions.transform.dense."),
    ("mlm.norm.", "cls.predictions.transform.LayerNorm."),
    ("mlm.bias", "cls.predictions.bias"),
    ("nsp.", "cls.seq_relationship."),
    ("classifier.", "classifier."),
    ("qa.", "qa_outputs."),
]
QKV = re.compile(r"^layers\.(\d+)\.attention\.qkv\.(weight|bias)$")
STANDARD_QKV = re.compile(r"^encoder\.layer\.(\d+)\.attention\.self\.(query|key|value)\.(weight|bias)$")
# Standard keys that carry no information of their own: a buffer, and copies of tied weights.
REDUNDANT = re.compile(r"(^|\.)position_ids$|^cls\.predictions\.decoder\.(weight|bias)$")


def _pattern(template: str) -> re.Pattern:
    return re.compile("^" + re.escape(template).replace(r"\{i\}", r"(?P<i>\d+)"))


def _rename(key: str, table: list[tuple[str, str]], *, to_standard: bool) -> str | None:
    for ours, standard in table:
        src, dst = (ours, standard) if to_standard else (standard, ours)
        m = _pattern(src).match(key)
        if m:
            return dst.replace("{i}", m.groupdict().get("i") or "") + key[m.end():]
    return None


def to_standard(state: dict[str, Tensor]) -> dict[str, Tensor]:
    """Our state dict -> standard BERT key names (query/key/value split out of qkv)."""
    out: dict[str, Tensor] = {}
    for key, value in state.items():
        prefix, name = ("bert.", key[5:]) if key.startswith("bert.") else ("", key)
        m = QKV.match(name)
        if m:
            layer, kind = m.groups()
            for part, chunk in zip(("query", "key", "value"), value.chunk(3, dim=0)):
                out[f"{prefix}encoder.layer.{layer}.attention.self.{part}.{kind}"] = chunk.contiguous()
            continue
        table = ENCODER_NAMES if prefix or not _is_head(name) else HEAD_NAMES
        new = _rename(name, table, to_standard=True)
        if new is None:
            raise KeyError(f"no standard name for parameter {key!r}")
        out[prefix + new] = value
    return out


def _is_head(name: str) -> bool:
    return any(name.startswith(ours) for ours, _ in HEAD_NAMES)


def from_standard(state: dict[str, Tensor]) -> tuple[dict[str, Tensor], dict[str, Tensor], list[str]]:
    """Standard (or older) key names -> (encoder state, head state, unrecognised keys), in our names."""
    encoder: dict[str, Tensor] = {}
    head: dict[str, Tensor] = {}
    qkv: dict[tuple[str, str], dict[str, Tensor]] = {}
    unknown: list[str] = []
    for key, value in state.items():
        name = _modernise(key)
        if REDUNDANT.search(name):
            continue
        name = name[5:] if name.startswith("bert.") else name
        m = STANDARD_QKV.match(name)
        if m:
            layer, part, kind = m.groups()
            qkv.setdefault((layer, kind), {})[part] = value
            continue
        if (new := _rename(name, ENCODER_NAMES, to_standard=False)) is not None:
            encoder[new] = value
        elif (new := _rename(name, HEAD_NAMES, to_standard=False)) is not None:
            head[new] = value
        else:
            unknown.append(key)
    for (layer, kind), parts in qkv.items():
        if set(parts) != {"query", "key", "value"}:
            unknown.extend(f"encoder.layer.{layer}.attention.self.{p}.{kind}" for p in parts)
            continue
        encoder[f"layers.{layer}.attention.qkv.{kind}"] = torch.cat([parts["query"], parts["key"], parts["value"]])
    return encoder, head, unknown


def _modernise(key: str) -> str:
    """TF-era LayerNorm names: gamma -> weight, beta -> bias."""
    return re.sub(r"(LayerNorm|layer_norm)\.gamma$", r"\1.weight", re.sub(r"(LayerNorm|layer_norm)\.beta$", r"\1.bias", key))


# ---- reading weight files -------------------------------------------------------------------------


def find_weights(directory: Path) -> Path:
    for name in WEIGHT_FILES:
        path = directory / name
        if path.is_dir():
            raise CheckpointError(f"{path}: is a directory, expected a weights file")
        if path.is_file():
            return path
    raise CheckpointError(
        f"{directory}: no weights found (expected one of {', '.join(WEIGHT_FILES)})"
    )


def read_weights(path: Path) -> dict[str, Tensor]:
    """All tensors of a weight file (or of the shards an index file lists), on the CPU.

    Never runs code from the file: safetensors holds only tensors, and a pickle-based .bin goes
    through PyTorch's weights-only unpickler, which refuses anything but tensors and containers."""
    if path.name.endswith(".index.json"):
        return _read_sharded(path)
    _check_not_empty(path)
    if path.suffix == ".safetensors":
        state = _read_safetensors(path)
    else:
        state = _read_pickled(path)
    if not isinstance(state, dict) or not all(isinstance(v, Tensor) for v in state.values()):
        raise CheckpointError(f"{path}: not a state dict of tensors")
    return state


def _check_not_empty(path: Path) -> None:
    try:
        size = path.stat().st_size
    except OSError as e:
        raise CheckpointError(f"{path}: cannot read weights ({e.strerror or e})") from None
    if size == 0:
        raise CheckpointError(f"{path}: empty weights file (0 bytes; an interrupted download or save?)")


def _read_safetensors(path: Path) -> dict[str, Tensor]:
    from safetensors.torch import load_file

    try:
        return load_file(str(path))
    except Exception as e:  # noqa: BLE001 - the library raises several types for a truncated or corrupt file
        raise CheckpointError(f"{path}: cannot read weights, the file is truncated or corrupt ({_first_line(e)})") from None


def _read_pickled(path: Path) -> object:
    try:
        with warnings.catch_warnings():  # e.g. "Detected pickle protocol 4": noise for a user
            warnings.simplefilter("ignore")
            # weights_only: a pickle may hold arbitrary code; only tensors and plain containers are allowed.
            return torch.load(str(path), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        raise CheckpointError(
            f"{path}: cannot read weights, refused: the pickle holds objects other than tensors, "
            "which could run code (re-save it as model.safetensors from a trusted source)"
        ) from None
    except Exception as e:  # noqa: BLE001 - torch raises RuntimeError, EOFError, ... for a damaged file
        raise CheckpointError(f"{path}: cannot read weights, the file is truncated or corrupt ({_first_line(e)})") from None


def _read_sharded(index: Path) -> dict[str, Tensor]:
    weight_map = _read_weight_map(index)
    state: dict[str, Tensor] = {}
    for shard in sorted(set(weight_map.values())):
        if (index.parent / shard).is_dir():
            raise CheckpointError(f"{index}: shard {shard} is a directory, expected a weights file")
        if not (index.parent / shard).is_file():
            raise CheckpointError(f"{index}: shard {shard} is missing")
        state.update(read_weights(index.parent / shard))
    return state


def _read_weight_map(index: Path) -> dict[str, str]:
    """The index's key -> shard file map; shards must be weight files beside the index."""
    try:
        weight_map = json.loads(index.read_text(encoding="utf-8"))["weight_map"]
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise CheckpointError(f"{index}: not a weight index ({_first_line(e)})") from None
    if not isinstance(weight_map, dict) or not all(isinstance(v, str) for v in weight_map.values()):
        raise CheckpointError(f"{index}: not a weight index (weight_map must map names to shard files)")
    for shard in set(weight_map.values()):
        if Path(shard).name != shard or shard in ("", ".", "..") or shard.endswith(".index.json"):
            raise CheckpointError(f"{index}: shard {shard!r} is not a weight file in the checkpoint folder")
    return weight_map


def _first_line(e: BaseException, limit: int = 160) -> str:
    """The first sentence of an exception's message, short enough for a one-line error."""
    text = str(e).strip().splitlines()
    line = text[0] if text else type(e).__name__
    line = line.split(". ")[0]
    return line if len(line) <= limit else line[: limit - 3] + "..."


# ---- loading into a model -------------------------------------------------------------------------


class Checkpointable(Protocol):
    """What loading and saving use of a model (model.Pretrained and every head are ones): an
    nn.Module built from a BertConfig, with the class name other BERT implementations know it by.
    A model with an encoder under `bert.` (a head) also takes head weights."""

    config: BertConfig
    architecture: str

    def state_dict(self) -> dict[str, Tensor]: ...

    def load_state_dict(self, state_dict: Mapping[str, Any], strict: bool = True) -> Any: ...


M = TypeVar("M", bound=Checkpointable)


@dataclass
class LoadReport:
    """What loading a checkpoint did not match exactly."""

    missing: list[str] = field(default_factory=list)  # initialised afresh
    unexpected: list[str] = field(default_factory=list)  # in the file, not used by this model


def load_pretrained(cls: type[M], path: str | os.PathLike, *, with_head: bool = True,
                    require: tuple[str, str] | None = None, **config_changes) -> M:
    """A `cls(config)` with the checkpoint's weights (model.Pretrained.from_pretrained says more).

    `require=(prefix, what)`: refuse a checkpoint whose weights lack `prefix...` (e.g. an MLM head),
    before anything is logged about initialising them."""
    directory = _checkpoint_dir(path)
    config = BertConfig.load(directory)
    if config_changes:
        config = config.replace(**config_changes)
    check_vocab_file_fits(config, directory)
    model = cls(config)
    report = load_state_into(model, directory, with_head=with_head)
    if require and any(k.startswith(require[0]) for k in report.missing):
        raise CheckpointError(f"{directory}: the checkpoint has no {require[1]}")
    _log_report(report, cls, directory)
    model.load_report = report
    return model


def load_state_into(model: Checkpointable, directory: Path, *, with_head: bool = True) -> LoadReport:
    """Copy the weights of a checkpoint directory into an existing model of a matching config.

    with_head=False takes the encoder only and leaves the model's head as initialised (a new task).
    """
    weights_path = find_weights(Path(directory))
    encoder, head, unknown = from_standard(read_weights(weights_path))
    _check_vocab(model.config, encoder, weights_path)
    has_encoder_prefix = hasattr(model, "bert")
    state = {("bert." + k if has_encoder_prefix else k): v for k, v in encoder.items()}
    takes_head = has_encoder_prefix and with_head
    if takes_head:
        state.update(head)
    report = LoadReport(unexpected=unknown + ([] if takes_head else sorted(head)))
    _check_shapes(model, state, weights_path)
    result = model.load_state_dict(state, strict=False)
    report.missing = list(result.missing_keys)
    report.unexpected += list(result.unexpected_keys)
    return report


def restore_weights(model: Checkpointable, directory: Path) -> None:
    """Every weight of a model from a folder its own save_pretrained wrote (a checkpoint being
    resumed, the best model restored): a model that writes more than the standard files (such as
    sentence-transformers' Dense modules) reads them back with its own `restore_weights`."""
    own = getattr(model, "restore_weights", None)
    if own is not None:
        own(directory)
    else:
        load_state_into(model, directory)


def _checkpoint_dir(path: str | os.PathLike) -> Path:
    directory = Path(path).expanduser()
    if not directory.exists():
        raise CheckpointError(f"{directory}: no such file or directory")
    if not directory.is_dir():
        folder = directory.parent if (directory.parent / "config.json").is_file() else "with config.json and weights"
        raise CheckpointError(f"{directory} is a file; --model takes the checkpoint folder ({folder})")
    if (directory / "config.json").is_dir():
        raise CheckpointError(f"{directory / 'config.json'}: is a directory, expected the checkpoint's JSON config file")
    if not (directory / "config.json").is_file():
        raise CheckpointError(f"{directory}: not a BERT checkpoint directory (no config.json)")
    return directory


def check_vocab_fits(config: BertConfig, tokenizer: Tokenizer | int, source: str | os.PathLike) -> None:
    """Refuse a tokenizer whose ids reach past the model's embedding table (an IndexError later).

    `tokenizer`: a Tokenizer or its vocabulary size; `source`: the file or folder to name."""
    size = tokenizer if isinstance(tokenizer, int) else tokenizer.vocab_size
    if size > config.vocab_size:
        raise CheckpointError(
            f"{source}: the vocabulary has {size} tokens but config.json says vocab_size={config.vocab_size}, "
            f"so ids {config.vocab_size}..{size - 1} have no embedding (vocab.txt and config.json do not belong together)"
        )


def check_vocab_file_fits(config: BertConfig, directory: Path) -> None:
    """check_vocab_fits for the vocab.txt beside config.json, if there is one (counted, not parsed)."""
    path = directory / VOCAB_NAME
    try:
        data = path.read_bytes()
    except OSError:  # absent or unreadable: the tokenizer's loader says so when it is needed
        return
    lines = data.count(b"\n") + (0 if not data or data.endswith(b"\n") else 1)  # as the tokenizer counts
    check_vocab_fits(config, lines, path)


def _check_vocab(config: BertConfig, encoder: dict[str, Tensor], path: Path) -> None:
    word = encoder.get("embeddings.word.weight")
    if word is not None and word.shape[0] != config.vocab_size:
        raise CheckpointError(
            f"{path}: word embeddings have {word.shape[0]} rows but config.json says vocab_size={config.vocab_size}"
        )


def _check_shapes(model: Checkpointable, state: dict[str, Tensor], path: Path) -> None:
    own = model.state_dict()
    for key, value in state.items():
        if key in own and own[key].shape != value.shape:
            name = next(iter(to_standard({key: own[key]})))  # the name the user sees in the file
            raise CheckpointError(
                f"{path}: {name} has shape {tuple(value.shape)} but config.json implies {tuple(own[key].shape)}"
            )


def _log_report(report: LoadReport, cls: type, directory: Path) -> None:
    if report.missing:
        log.warning(
            "%s: %d weights not in %s were initialised: %s",
            cls.__name__, len(report.missing), directory, ", ".join(report.missing),
        )
    if report.unexpected:
        log.info(
            "%s: %d weights in %s were not used: %s",
            cls.__name__, len(report.unexpected), directory, ", ".join(report.unexpected),
        )


# ---- saving ---------------------------------------------------------------------------------------


def save_pretrained(model: Checkpointable, directory: str | os.PathLike, *, tokenizer=None) -> Path:
    """Write config.json + model.safetensors (+ tokenizer files) in the standard layout.

    Each file is written atomically: a crash or a full disk leaves the previous file or the new
    one in place, never a part of one."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    config = model.config.replace(architectures=[model.architecture])
    state = to_standard({k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()})
    write_weights(state, directory / WEIGHTS_NAME)
    config.save(directory)
    if tokenizer is not None:
        tokenizer.save_pretrained(directory)
    return directory


def write_weights(state: dict[str, Tensor], path: Path) -> None:
    """safetensors into a temporary sibling (which readers ignore), flushed to disk, then renamed
    over `path`; on any failure the temporary file is removed and `path` is left as it was."""
    from safetensors.torch import save_file

    tmp = temporary_name(path)
    try:
        with open(tmp, "xb"):  # created as open() creates files: the mode the umask gives
            mode = stat.S_IMODE(os.stat(tmp).st_mode)
        save_file(state, str(tmp), metadata={"format": "pt"})  # replaces it with a file of mode 0600
        os.chmod(tmp, mode)
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    fsync_dir(path.parent)
