"""Run directories: resumable checkpoints, a trainer state stored without pickle, and the rules for
starting, continuing or overwriting a run.

A checkpoint is `OUT/checkpoints/step-NNNNNNNN/`: the model in the standard layout (config.json,
model.safetensors, tokenizer files) plus the trainer state in two files that cannot run code when
read:
  trainer_state.safetensors   every tensor (optimiser moments, RNG states), by a dotted name
  trainer_state.json          everything else (step, data position, schedule, history, settings),
                              with {"$tensor": name} where a tensor stood
`trainer_state.json` is written last, inside a temporary directory that is renamed into place, so a
directory that has it is complete. `checkpoints/latest` names the newest one; if it names one that
is gone (killed between two renames), the newest complete directory is used.
"""

from __future__ import annotations

import json
import math
import os
import shutil
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from bertkit.errors import CheckpointError, InputError
from bertkit.fileio import write_text_atomically

CHECKPOINTS = "checkpoints"
LATEST = "latest"
STATE_JSON = "trainer_state.json"
STATE_TENSORS = "trainer_state.safetensors"
LEGACY_STATE = "trainer.pt"  # bertkit 0.1's pickled state: read weights-only, never written
FORMAT = 1

# What an earlier run leaves in OUT; a new run without --resume or --overwrite refuses to mix with it.
RUN_FILES = ("metrics.jsonl", CHECKPOINTS, "best", "model.safetensors", "dev_metrics.json", "tensorboard",
             "loss.png")


# ---- trainer state without pickle -------------------------------------------------------------------


def encode(obj: Any, tensors: dict[str, Tensor], name: str = "state") -> Any:
    """A JSON-able copy of `obj` with each tensor moved into `tensors` under a dotted name.

    Dicts whose keys are not all strings (an optimiser's per-parameter state is keyed by int) and
    tuples are tagged so that `decode` gives back exactly what went in."""
    if isinstance(obj, Tensor):
        tensors[name] = obj.detach().cpu().contiguous()
        return {"$tensor": name}
    if isinstance(obj, dict):
        if all(isinstance(k, str) and not k.startswith("$") for k in obj):
            return {k: encode(v, tensors, f"{name}.{k}") for k, v in obj.items()}
        return {"$items": [[k, encode(v, tensors, f"{name}.{k}")] for k, v in obj.items()]}
    if isinstance(obj, tuple):
        return {"$tuple": [encode(v, tensors, f"{name}.{i}") for i, v in enumerate(obj)]}
    if isinstance(obj, list):
        return [encode(v, tensors, f"{name}.{i}") for i, v in enumerate(obj)]
    if obj is None or isinstance(obj, (bool, int, float, str)):
        return obj
    raise TypeError(f"{name}: cannot store a {type(obj).__name__} in the trainer state")


def decode(obj: Any, tensors: dict[str, Tensor]) -> Any:
    if isinstance(obj, list):
        return [decode(v, tensors) for v in obj]
    if not isinstance(obj, dict):
        return obj
    if len(obj) == 1 and "$tensor" in obj:
        if obj["$tensor"] not in tensors:
            raise KeyError(f"tensor {obj['$tensor']!r} is missing")
        return tensors[obj["$tensor"]]
    if len(obj) == 1 and "$items" in obj:
        return {k: decode(v, tensors) for k, v in obj["$items"]}
    if len(obj) == 1 and "$tuple" in obj:
        return tuple(decode(v, tensors) for v in obj["$tuple"])
    return {k: decode(v, tensors) for k, v in obj.items()}


def write_trainer_state(directory: Path, state: dict[str, Any]) -> None:
    """The tensors first, the JSON that refers to them last (its presence marks a complete state)."""
    from safetensors.torch import save_file

    tensors: dict[str, Tensor] = {}
    document = {"format": FORMAT, **encode(state, tensors)}
    save_file(tensors, str(directory / STATE_TENSORS))
    write_text_atomically(directory / STATE_JSON, json.dumps(document) + "\n")


def read_trainer_state(directory: Path) -> dict[str, Any]:
    """The trainer state of a checkpoint directory; anything unreadable is one CheckpointError line."""
    if (directory / STATE_JSON).is_file():
        return _read_json_state(directory)
    if (directory / LEGACY_STATE).is_file():
        return _read_legacy_state(directory / LEGACY_STATE)
    raise CheckpointError(f"{directory}: no {STATE_JSON}: not a complete checkpoint")


def _read_json_state(directory: Path) -> dict[str, Any]:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    path = directory / STATE_JSON
    try:
        document = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise CheckpointError(f"{path}: unreadable trainer state ({_reason(e)}); resume from an earlier "
                              f"checkpoint or start over with --overwrite") from None
    if not isinstance(document, dict) or document.get("format") != FORMAT:
        raise CheckpointError(f"{path}: not a bertkit trainer state (format {FORMAT})")
    try:
        tensors = load_file(str(directory / STATE_TENSORS))
        return decode(document, tensors)
    except (OSError, SafetensorError, KeyError, ValueError, TypeError) as e:
        raise CheckpointError(f"{directory / STATE_TENSORS}: truncated or corrupt trainer state "
                              f"({_reason(e)})") from None


def _read_legacy_state(path: Path) -> dict[str, Any]:
    """bertkit 0.1 pickled the state; read it with PyTorch's weights-only unpickler, which builds
    tensors and plain containers only and refuses anything that would call code."""
    try:
        saved = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - any failure of the restricted unpickler is a bad file
        raise CheckpointError(f"{path}: refused to load: {_reason(e)}") from None
    if not isinstance(saved, dict) or "step" not in saved:
        raise CheckpointError(f"{path}: not a bertkit trainer state")
    return saved


def _reason(e: BaseException) -> str:
    return (str(e).strip().splitlines() or [type(e).__name__])[0][:200]


# ---- checkpoint directories -------------------------------------------------------------------------


def is_complete(directory: Path) -> bool:
    return (directory / STATE_JSON).is_file() or (directory / LEGACY_STATE).is_file()


def step_directories(out: Path) -> list[Path]:
    """Complete checkpoint directories of a run, oldest first (temporary ones never count)."""
    root = out / CHECKPOINTS
    if not root.is_dir():
        return []
    return sorted(p for p in root.glob("step-*") if p.is_dir() and is_complete(p))


def latest_checkpoint(out: Path) -> Path | None:
    pointer = out / CHECKPOINTS / LATEST
    if pointer.is_file():
        named = out / CHECKPOINTS / pointer.read_text().strip()
        if named.name.startswith("step-") and is_complete(named):
            return named
    found = step_directories(out)
    return found[-1] if found else None


def write_checkpoint(out: Path, step: int, model, trainer_state: dict[str, Any], *, tokenizer=None,
                     keep: int = 2) -> Path:
    """Model + trainer state into checkpoints/step-N, atomically; then `latest`, then pruning."""
    root = out / CHECKPOINTS
    root.mkdir(parents=True, exist_ok=True)
    name = f"step-{step:08d}"
    tmp = root / f".{name}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        model.save_pretrained(tmp, tokenizer=tokenizer)
        write_trainer_state(tmp, trainer_state)
        final = root / name
        if final.exists():  # the same step saved again (e.g. stopped right after a periodic save)
            old = root / f".{name}.old-{os.getpid()}"
            os.replace(final, old)
            os.replace(tmp, final)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, final)
    except OSError as e:
        shutil.rmtree(tmp, ignore_errors=True)
        raise InputError(f"{root}: cannot write a checkpoint ({e.strerror or e}); the earlier "
                         f"checkpoints are intact") from None
    write_text_atomically(root / LATEST, name + "\n")
    prune(out, keep)
    return final


def prune(out: Path, keep: int) -> None:
    steps = sorted(p for p in (out / CHECKPOINTS).glob("step-*") if p.is_dir())
    for old in steps[: max(0, len(steps) - max(1, keep))]:
        shutil.rmtree(old, ignore_errors=True)


# ---- starting, continuing or overwriting a run ------------------------------------------------------


def earlier_run(out: Path) -> list[str]:
    """What an earlier run left in `out` (empty when there is none)."""
    if not out.is_dir():
        return []
    return [name for name in RUN_FILES if (out / name).exists()]


def check_run_directory(out: Path, *, resume: bool, overwrite: bool) -> None:
    """Refuse to start a new run on top of an earlier one, unless told to continue or to overwrite."""
    if out.exists() and not out.is_dir():
        raise InputError(f"--out {out}: is a file; the run directory must be a folder")
    if resume or overwrite:
        return
    found = earlier_run(out)
    if found:
        raise InputError(f"--out {out}: holds an earlier run ({', '.join(found)}); continue it with --resume "
                         f"or start over with --overwrite")


def clear_run(out: Path) -> None:
    """--overwrite: remove what an earlier run left (and nothing else the folder holds)."""
    for name in RUN_FILES:
        path = out / name
        if path.is_dir():
            shutil.rmtree(path)
        elif path.exists():
            path.unlink()


# ---- resuming on a different number of processes ----------------------------------------------------


def resume_layout(saved: dict[str, Any], *, batch_size: int, grad_accum: int, world_size: int) -> tuple[int, int]:
    """(batch_size, grad_accum) that keep the checkpoint's global batch on `world_size` processes.

    The rule: the global batch (batch size × accumulation × processes) of the run is kept. The
    batch size per process stays as given and the accumulation changes to make up the difference;
    when that is not a whole number, the error says which --batch-size would work."""
    layout = saved.get("layout")
    if not layout:  # a state from before layouts were stored: the run must continue as it was
        return batch_size, grad_accum
    global_batch = layout["batch_size"] * layout["grad_accum"] * layout["world_size"]
    if batch_size * grad_accum * world_size == global_batch:
        return batch_size, grad_accum
    if global_batch % (batch_size * world_size) == 0:
        return batch_size, global_batch // (batch_size * world_size)
    options = [b for b in range(1, global_batch + 1) if global_batch % (b * world_size) == 0]
    hint = f"--batch-size {max(options)}" if options else f"a number of processes that divides {global_batch}"
    raise InputError(f"the checkpoint's global batch is {global_batch} sequences ({layout['batch_size']} × "
                     f"{layout['grad_accum']} accumulation × {layout['world_size']} processes), which "
                     f"--batch-size {batch_size} on {world_size} process(es) cannot make up; use {hint}")


def moved_position(saved: dict[str, Any], micro_batch: int) -> tuple[int, int]:
    """(epoch, index) of the next micro-batch of `micro_batch` sequences (all processes together).

    Positions count global micro-batches; a checkpoint is written at a step boundary, so the number
    of sequences consumed in the epoch is a whole number of the new micro-batches too."""
    epoch, index = saved["position"]["epoch"], saved["position"]["index"]
    layout = saved.get("layout")
    if not layout:
        return epoch, index
    consumed = index * layout["batch_size"] * layout["world_size"]
    return epoch, math.ceil(consumed / micro_batch)
