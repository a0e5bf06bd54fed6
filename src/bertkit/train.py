"""The one training loop, for pretraining and fine-tuning alike.

It knows nothing of BERT's tasks. It is given
  * an *objective*: an nn.Module holding the model (`objective.model`) whose forward turns a batch
    into loss *sums* per term (e.g. {"mlm": ..., "nsp": ...}) and metric sums, and whose
    `counts(batch)` says how many labelled items each term has;
  * a *batch source* with random access, `batch(epoch, index, batch_size, rank=, world_size=)`, so
    that a resumed run continues at the exact batch it stopped at without replaying data.

Each loss term is divided by its count over the whole accumulation window and all processes
(torchtitan's rule), so gradient accumulation and multi-process runs give the same update as one
big batch. Beside the loop: runs.py (checkpoints, resuming, stopping on a signal), best.py
(validation, the best model, early stopping) and metrics_log.py (metrics.jsonl, TensorBoard, the
loss plot).
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Protocol

import torch
from torch import Tensor, nn

from bertkit import distributed, runs
from bertkit.best import last_evaluated, save_final, should_stop, validate
from bertkit.devices import bf16_supported, to_device
from bertkit.distributed import World
from bertkit.errors import BertkitError
from bertkit.metrics_log import MetricsLog, progress_bar
from bertkit.objective import StepSums
from bertkit.optim import Clock, clip_gradients, optimizer_and_schedule
from bertkit.options import PRECISIONS
from bertkit.runs import Position, TrainState, next_positions
from bertkit.settings import TrainConfig  # torch-free there, for the command line


class BatchSource(Protocol):
    def num_batches(self, epoch: int, batch_size: int, *, rank: int = 0, world_size: int = 1) -> int: ...

    def batch(
        self, epoch: int, index: int, batch_size: int, *, rank: int = 0, world_size: int = 1
    ) -> dict[str, Tensor]: ...


class Objective(Protocol):
    model: nn.Module

    def __call__(self, batch: dict[str, Tensor]) -> StepSums: ...

    def counts(self, batch: dict[str, Tensor]) -> dict[str, float]: ...

    def summarize(self, sums: dict[str, float]) -> dict[str, float]: ...


# ---- small pure pieces ------------------------------------------------------------------------------


def use_bf16(precision: str, device: torch.device) -> bool:
    if precision not in PRECISIONS:
        raise BertkitError(f"unknown precision {precision!r}; choose {', '.join(PRECISIONS)}")
    return precision == "bf16" or (precision == "auto" and bf16_supported(device))


def _add(into: dict[str, float | Tensor], values: dict[str, float | Tensor]) -> None:
    """Add `values` into the sums `into`. A tensor stays where it is, as float64: reading it with
    float() would wait for the GPU (a host-device sync per micro-batch); float64 holds what float()
    gives exactly, so the sums come out bit for bit as Python floats would (`_floats` reads them)."""
    for k, v in values.items():
        into[k] = into.get(k, 0.0) + _exact(v)


def _exact(v: float | Tensor) -> float | Tensor:
    if not isinstance(v, Tensor):
        return float(v)
    if v.device.type == "mps":  # MPS has no float64: read it now
        return float(v)
    return v.detach().to(torch.float64)


def _floats(sums: dict[str, float | Tensor]) -> dict[str, float]:
    """The sums as Python floats, the tensors among them read from their device in one transfer."""
    keys = [k for k, v in sums.items() if isinstance(v, Tensor)]
    if not keys:
        return dict(sums)  # type: ignore[arg-type]
    device = sums[keys[0]].device  # type: ignore[union-attr]
    values = torch.stack([sums[k].to(device) for k in keys]).tolist()  # type: ignore[union-attr]
    return {**sums, **dict(zip(keys, values))}


def reduce_sums(sums: dict[str, float], world: World) -> dict[str, float]:
    """Sum a dict of floats over all processes. Every process must call it, with the same keys
    (as in a training step); `gather_sums` is for dicts whose keys may differ by process."""
    if not world.distributed:
        return dict(sums)
    keys = sorted(sums)
    t = torch.tensor([sums[k] for k in keys], dtype=torch.float64)
    distributed.all_reduce_sum(t, world)
    return dict(zip(keys, t.tolist()))


def gather_sums(sums: dict[str, float], world: World) -> dict[str, float]:
    """Sum dicts over all processes when some may lack keys, or be empty (a process with no
    evaluation batch must still take part, or the others wait for it forever)."""
    total: dict[str, float] = {}
    for part in distributed.all_gather_objects(dict(sums), world):
        _add(total, part)
    return total


# ---- the loop ---------------------------------------------------------------------------------------


def fit(objective: Objective, source: BatchSource, config: TrainConfig, *,
        evaluate: Callable[[], dict[str, float]] | None = None, tokenizer=None,
        world: World | None = None) -> TrainState:
    """Train `objective.model` for config.steps optimiser steps; returns the final state.

    `evaluate` is called on every process every eval_every steps and at the end; it returns
    metrics already reduced over processes. The final model (+ tokenizer) is saved to config.out.
    SIGINT/SIGTERM stop after the current step with a checkpoint, then raise KeyboardInterrupt.
    """
    world = world or World()
    config.check_steps()
    runs.start_run(config, world)
    config = runs.adapt_to_checkpoint(config, world)
    device = next(objective.model.parameters()).device
    clock = Clock(config.time_budget_seconds, world)
    optimizer, scheduler = optimizer_and_schedule(objective.model, config, clock)
    state, resumed = runs.start_state(objective.model, optimizer, scheduler, config, world)
    log = MetricsLog(config.out, world, resume_step=state.step if resumed else None)
    module = _parallel(objective, config, world, device)
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=use_bf16(config.precision, device))

    def batches_in(epoch: int) -> int:
        return source.num_batches(epoch, config.batch_size, rank=world.rank, world_size=world.world_size)

    def checkpoint() -> Path | None:
        state.window = _floats(state.window)  # a checkpoint holds plain numbers
        return runs.save_checkpoint(objective.model, optimizer, scheduler, state, config, world,
                                    tokenizer=tokenizer)

    bar = progress_bar(None if clock.budget else config.steps, state.step,
                       enabled=config.progress and world.is_main)
    log.lap()  # the first row's clock starts with the first step
    untimed = float(_floats(state.window).get("tokens", 0.0))  # a resumed window's tokens: not timed here
    clock.start(state)
    with runs.stop_on_signals() as stop:
        try:
            while not clock.done(state.step, config.steps) and not stop.agreed(world):
                positions = next_positions(state.position, config.grad_accum, batches_in)
                sums = _train_step(module, objective, source, positions, config, world, device, autocast)
                optimizer.step()
                clock.tick()
                scheduler.step()
                optimizer.zero_grad(set_to_none=True)
                _advance(state, positions[-1], sums)
                last = clock.done(state.step, config.steps)
                if state.step % config.log_every == 0 or last:
                    _log_window(objective, state, log, world, max(scheduler.get_last_lr()), bar, untimed)
                    untimed = 0.0
                bar.update(1)
                if evaluate is not None and _due(config.eval_every, state.step, last):
                    validate(evaluate, objective.model, log, state, config, world, tokenizer, bar)
                    if should_stop(state, config, world):
                        break
                if _due(config.save_every, state.step, last):
                    checkpoint()
            stopped = stop.agreed(world)
        except KeyboardInterrupt:  # a second signal: stop mid-step, leaving the last checkpoint as it is
            _stopped(log, world, f"stopped during step {state.step + 1}; the last checkpoint is "
                                 f"{runs.latest_checkpoint(config.out)}")
            raise
        if stopped:
            bar.close()
            path = checkpoint()
            _stopped(log, world, f"interrupted ({stop.signal or 'another process'}) at step {state.step}; "
                                 f"checkpoint saved to {path}")
            raise KeyboardInterrupt
    bar.close()
    if evaluate is not None and last_evaluated(state.history) != state.step:
        validate(evaluate, objective.model, log, state, config, world, tokenizer)
    checkpoint()
    save_final(objective.model, config, world, tokenizer)
    log.close(plot=config.out / "loss.png")
    distributed.barrier(world)
    return state


def _stopped(log: MetricsLog, world: World, what: str) -> None:
    """After a signal: close the log and say how to continue."""
    log.close()
    if world.is_main:
        print(f"\n{what}; continue with --resume", flush=True)


def _parallel(objective: Objective, config: TrainConfig, world: World, device: torch.device) -> nn.Module:
    """The objective as the loop runs it: under DDP with several processes, compiled when asked."""
    module: nn.Module = objective  # type: ignore[assignment]
    if world.distributed:
        module = nn.parallel.DistributedDataParallel(module, device_ids=[device.index] if device.type == "cuda" else None)
    if config.compile:
        if device.type == "cpu" and world.is_main:
            print("bertkit: note: --compile trains slower on a CPU than without it (0.39x measured: the compiled "
                  "graph computes padding and draws PyTorch's dropout masks); it is meant for GPUs", file=sys.stderr)
        module = torch.compile(module)
    return module


def _due(every: int, step: int, last: bool) -> bool:
    """Periodic work (evaluation, checkpoints) falls on multiples of `every` before the last step,
    which has its own."""
    return bool(every) and step % every == 0 and not last


def _train_step(module, objective, source, positions, config, world, device, autocast) -> dict[str, float | Tensor]:
    """Accumulate gradients over the micro-batches at `positions`; return the step's metric sums
    (tensors on the device, read only when a row is logged: the step itself never waits for the GPU).

    The counts and real tokens come from the batches while they are still on the CPU, so they cost
    no sync either; the batches then go to the device (pinned, non-blocking on CUDA)."""
    on_cpu = [source.batch(p.epoch, p.index, config.batch_size, rank=world.rank, world_size=world.world_size)
              for p in positions]
    counts: dict[str, float] = {}
    for b in on_cpu:
        _add(counts, objective.counts(b))
    tokens = [float(b["attention_mask"].bool().sum()) for b in on_cpu]  # packed masks count examples 1..k
    batches = [to_device(b, device) for b in on_cpu]
    global_counts = reduce_sums(counts, world)
    sums: dict[str, float | Tensor] = {f"n_{k}": v for k, v in counts.items()}
    for i, batch in enumerate(batches):
        sync = not world.distributed or i == len(batches) - 1
        with (contextlib.nullcontext() if sync else module.no_sync()), autocast:
            out = module(batch)
        # DDP averages gradients over processes; scaling by world_size turns that into a sum.
        loss = sum(out.losses[k] / max(global_counts[k], 1.0) for k in out.losses) * world.world_size
        loss.backward()
        _add(sums, {f"loss_{k}": v for k, v in out.losses.items()})
        _add(sums, out.metrics)
        _add(sums, {"tokens": tokens[i], "slots": float(on_cpu[i]["attention_mask"].numel())})
    if config.max_grad_norm:
        _add(sums, {"grad_norm": clip_gradients(objective.model.parameters(), config.max_grad_norm)})
    return sums


def _advance(state: TrainState, last: Position, sums: dict[str, float | Tensor]) -> None:
    """One optimiser step done: the data continues after `last`, its sums join the log window."""
    state.step += 1
    state.position = Position(last.epoch, last.index + 1)
    _add(state.window, sums)
    state.window_steps += 1


def _log_window(objective: Objective, state: TrainState, log: MetricsLog, world: World, lr: float,
                bar, untimed: float = 0.0) -> None:
    """A train row of the steps since the last one (sums over processes), then a fresh window.
    untimed: this process's tokens of the window that ran before a resume (the clock never saw them)."""
    state.window = _floats(state.window)  # the one host-device sync of the window
    seconds = log.lap()
    # grad_norm is the same on every process: averaged over the window's steps, not summed
    grad_norm = state.window.pop("grad_norm", None)
    total = reduce_sums({**state.window, "untimed": untimed}, world)
    untimed = total.pop("untimed")
    row = {"step": state.step, "split": "train", "lr": lr, **objective.summarize(total)}
    row["tokens_per_s"] = (total.get("tokens", 0.0) - untimed) / max(seconds, 1e-9)
    row["padding"] = 1 - total.get("tokens", 0.0) / max(total.get("slots", 0.0), 1.0)  # share of token slots
    if grad_norm is not None:
        row["grad_norm"] = grad_norm / max(state.window_steps, 1)
    row["epoch"] = state.position.epoch
    log.write(row)
    state.history.append(row)
    bar.set_postfix(loss=f"{row['loss']:.3f}", tok_s=f"{row['tokens_per_s']:.0f}")
    state.window, state.window_steps = {}, 0


def evaluate_sums(objective: Objective, source: BatchSource, batch_size: int, world: World,
                  *, epoch: int = 0, autocast=None) -> dict[str, float]:
    """Metrics of `objective` over every batch of `source` (one fixed epoch), reduced over processes."""
    device = next(objective.model.parameters()).device
    sums: dict[str, float] = {}
    n = source.num_batches(epoch, batch_size, rank=world.rank, world_size=world.world_size)
    for i in range(n):
        on_cpu = source.batch(epoch, i, batch_size, rank=world.rank, world_size=world.world_size)
        _add(sums, {f"n_{k}": v for k, v in objective.counts(on_cpu).items()})
        with autocast or contextlib.nullcontext():
            out = objective(to_device(on_cpu, device))
        _add(sums, {f"loss_{k}": v for k, v in out.losses.items()})
        _add(sums, out.metrics)
    return objective.summarize(gather_sums(_floats(sums), world))
