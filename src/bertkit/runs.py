"""Run directories: resumable checkpoints, a trainer state stored without pickle, the rules for
starting, continuing, stopping or overwriting a run.

A checkpoint is `OUT/checkpoints/step-NNNNNNNN/`: the model in the standard layout (config.json,
model.safetensors, tokenizer files) plus the trainer state in two files that cannot run code when
read:
  trainer_state.safetensors   every tensor (optimiser moments, RNG states), by a dotted name
  trainer_state.json          everything else (step, data position, schedule, history, settings),
                              with {"$tensor": name} where a tensor stood
`trainer_state.json` is written last, inside a temporary directory that is renamed into place, so a
directory that has it is complete. `checkpoints/latest` names the newest one; if it names one that
is gone (killed between two renames), the newest complete directory is used. A signal stops a run
only between complete optimiser steps, with a checkpoint. (`OUT/best/`, the model of the best
evaluation so far, is best.py's.)
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import shutil
import signal
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from bertkit import distributed
from bertkit.checkpoint import restore_weights
from bertkit.distributed import World
from bertkit.errors import BertkitError, CheckpointError, InputError
from bertkit.fileio import write_text_atomically
from bertkit.settings import TrainConfig

CHECKPOINTS = "checkpoints"
LATEST = "latest"
STATE_JSON = "trainer_state.json"
STATE_TENSORS = "trainer_state.safetensors"
LEGACY_STATE = "trainer.pt"  # bertkit 0.1's pickled state: read weights-only, never written
FORMAT = 1
BEST = "best"

# What an earlier run leaves in OUT; a new run without --resume or --overwrite refuses to mix with it.
RUN_FILES = ("metrics.jsonl", CHECKPOINTS, BEST, "model.safetensors", "dev_metrics.json", "tensorboard",
             "loss.png")


@dataclass
class Position:
    """Where in the data the next micro-batch comes from."""

    epoch: int = 0
    index: int = 0


@dataclass
class TrainState:
    """Where a run is: what a checkpoint saves besides the weights, optimiser and schedule."""

    step: int = 0
    position: Position = field(default_factory=Position)
    history: list[dict] = field(default_factory=list)
    window: dict[str, float] = field(default_factory=dict)
    """Metric sums of the steps since the last log row (kept across a resume, so rows match)."""
    window_steps: int = 0
    elapsed: float = 0.0
    """Seconds of training so far, over every resume (what --time-budget measures)."""


def next_positions(position: Position, n: int, batches_in: Callable[[int], int]) -> list[Position]:
    """The next n data positions, rolling over into the next epoch at its end."""
    out, p = [], Position(position.epoch, position.index)
    for _ in range(n):
        while p.index >= batches_in(p.epoch):
            if batches_in(p.epoch) == 0:
                raise BertkitError("the training data yields no batch: it is empty or smaller than one batch")
            p = Position(p.epoch + 1, 0)
        out.append(Position(p.epoch, p.index))
        p = Position(p.epoch, p.index + 1)
    return out


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


# ---- saving and restoring a run ---------------------------------------------------------------------


def save_checkpoint(model: nn.Module, optimizer, scheduler, state: TrainState, config: TrainConfig,
                    world: World, *, tokenizer=None) -> Path | None:
    """Write model + optimiser + schedule + RNG + data position; only the main process writes.

    Called only between complete optimiser steps, so the weights always belong to `state.step`."""
    rng = distributed.all_gather_objects(torch.get_rng_state(), world)  # every rank's dropout stream
    windows = distributed.all_gather_objects(state.window, world)  # every rank's unlogged metric sums
    path = None
    if world.is_main:
        trainer_state = {
            "step": state.step,
            "position": asdict(state.position),
            "layout": {"batch_size": config.batch_size, "grad_accum": config.grad_accum,
                       "world_size": world.world_size},
            "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict(),
            "rng": rng,
            "history": state.history,
            "windows": windows,
            "window_steps": state.window_steps,
            "elapsed": state.elapsed,
            "config": {k: str(v) for k, v in asdict(config).items()},
        }
        path = write_checkpoint(config.out, state.step, model, trainer_state, tokenizer=tokenizer,
                                keep=config.keep_checkpoints)
    distributed.barrier(world)
    return path


def load_checkpoint(directory: Path, model: nn.Module, optimizer, scheduler, world: World,
                    config: TrainConfig) -> TrainState:
    """Restore a checkpoint; on another number of processes the data continues where it stopped
    (in units of this run's micro-batches) and each rank starts a fresh dropout stream."""
    saved = read_trainer_state(directory)
    restore_weights(model, directory)
    try:
        optimizer.load_state_dict(saved["optimizer"])
        scheduler.load_state_dict(saved["scheduler"])
    except (KeyError, ValueError, TypeError) as e:
        raise BertkitError(f"{directory}: its optimiser state does not fit this model ({e})") from None
    rng = saved["rng"]
    if len(rng) == world.world_size:  # same number of processes: every rank continues its own stream
        torch.set_rng_state(rng[world.rank])
    else:
        torch.manual_seed(config.seed + 1000 * (saved["step"] + 1) + world.rank)
    epoch, index = moved_position(saved, config.batch_size * world.world_size)
    return TrainState(saved["step"], Position(epoch, index), list(saved.get("history", [])),
                      _resumed_window(saved.get("windows", []), world), int(saved.get("window_steps", 0)),
                      float(saved.get("elapsed", 0.0)))


def _resumed_window(windows: list[dict], world: World) -> dict[str, float]:
    """This rank's unlogged metric sums; on another number of processes the main one takes them all."""
    if len(windows) == world.world_size:
        return dict(windows[world.rank])
    if not world.is_main or not windows:
        return {}
    total: dict[str, float] = {}
    for w in windows:
        for k, v in w.items():
            if k != "grad_norm":
                total[k] = total.get(k, 0.0) + float(v)
    if "grad_norm" in windows[0]:  # the same on every process
        total["grad_norm"] = windows[0]["grad_norm"]
    return total


def start_state(model: nn.Module, optimizer, scheduler, config: TrainConfig,
                world: World) -> tuple[TrainState, bool]:
    """(state, resumed): the latest checkpoint's with --resume when there is one, else a fresh one."""
    found = latest_checkpoint(config.out) if config.resume else None
    if found is None:
        torch.manual_seed(config.seed + world.rank)  # dropout streams differ by rank
        return TrainState(), False
    state = load_checkpoint(found, model, optimizer, scheduler, world, config)
    if world.is_main:
        print(f"resuming from {found} (step {state.step})", flush=True)
    return state, True


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


def start_run(config: TrainConfig, world: World) -> None:
    """Refuse to write over an earlier run unless told; --overwrite clears it (main process)."""
    check_run_directory(config.out, resume=config.resume, overwrite=config.overwrite)
    if config.overwrite and not config.resume and world.is_main:
        clear_run(config.out)
    distributed.barrier(world)


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


def adapt_to_checkpoint(config: TrainConfig, world: World) -> TrainConfig:
    """With --resume on another number of processes: the batch layout that keeps the global batch."""
    found = latest_checkpoint(config.out) if config.resume else None
    if found is None:
        return config
    saved = read_trainer_state(found)
    batch_size, grad_accum = resume_layout(saved, batch_size=config.batch_size, grad_accum=config.grad_accum,
                                           world_size=world.world_size)
    if (batch_size, grad_accum) != (config.batch_size, config.grad_accum) and world.is_main:
        print(f"resuming on {world.world_size} process(es): {grad_accum} accumulated micro-batch(es) of "
              f"{batch_size} per process keep the global batch", flush=True)
    return replace(config, batch_size=batch_size, grad_accum=grad_accum)


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


# ---- stopping on a signal ---------------------------------------------------------------------------


class StopRequest:
    """SIGINT/SIGTERM only set a flag; the loop looks at it between complete optimiser steps, so a
    checkpoint never holds weights of a half-done step. A second signal stops at once (the last
    checkpoint written stays intact)."""

    def __init__(self) -> None:
        self.signal: str | None = None

    def __call__(self, signum, frame) -> None:
        if self.signal is not None:
            raise KeyboardInterrupt
        self.signal = signal.Signals(signum).name

    def agreed(self, world: World) -> bool:
        """Whether any process was signalled: every process must stop after the same step."""
        if not world.distributed:
            return self.signal is not None
        flag = torch.tensor([1.0 if self.signal else 0.0], dtype=torch.float64)
        return bool(distributed.all_reduce_sum(flag, world).item() > 0)


@contextlib.contextmanager
def stop_on_signals() -> Iterator[StopRequest]:
    """SIGINT and SIGTERM set the StopRequest it yields, until the block ends."""
    stop = StopRequest()
    old = {s: signal.signal(s, stop) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield stop
    finally:
        for s, h in old.items():
            signal.signal(s, h)
