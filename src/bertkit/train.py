"""The one training loop, for pretraining and fine-tuning alike.

It knows nothing of BERT's tasks. It is given
  * an *objective*: an nn.Module holding the model (`objective.model`) whose forward turns a batch
    into loss *sums* per term (e.g. {"mlm": ..., "nsp": ...}) and metric sums, and whose
    `counts(batch)` says how many labelled items each term has;
  * a *batch source* with random access, `batch(epoch, index, batch_size, rank=, world_size=)`, so
    that a resumed run continues at the exact batch it stopped at without replaying data.

Each loss term is divided by its count over the whole accumulation window and all processes
(torchtitan's rule), so gradient accumulation and multi-process runs give the same update as one
big batch. Checkpoints are written to a temporary directory and renamed into place, and `latest`
is only updated after that, so no half-written checkpoint is ever resumed from.
"""

from __future__ import annotations

import contextlib
import json
import math
import signal
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import NamedTuple, Protocol

import torch
from torch import Tensor, nn

from bertkit import distributed, runs
from bertkit.distributed import World
from bertkit.errors import BertkitError
from bertkit.options import PRECISIONS, SCHEDULES, choices


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
        from bertkit.options import check_train_config

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


class BatchSource(Protocol):
    def num_batches(self, epoch: int, batch_size: int, *, rank: int = 0, world_size: int = 1) -> int: ...

    def batch(
        self, epoch: int, index: int, batch_size: int, *, rank: int = 0, world_size: int = 1
    ) -> dict[str, Tensor]: ...


class StepSums(NamedTuple):
    losses: dict[str, Tensor]  # per loss term: sum over labelled items (with grad)
    metrics: dict[str, Tensor]  # per metric: a sum (no grad), e.g. correct predictions


class Objective(Protocol):
    model: nn.Module

    def __call__(self, batch: dict[str, Tensor]) -> StepSums: ...

    def counts(self, batch: dict[str, Tensor]) -> dict[str, float]: ...

    def summarize(self, sums: dict[str, float]) -> dict[str, float]: ...


@dataclass
class Position:
    """Where in the data the next micro-batch comes from."""

    epoch: int = 0
    index: int = 0


@dataclass
class TrainState:
    step: int = 0
    position: Position = field(default_factory=Position)
    history: list[dict] = field(default_factory=list)
    window: dict[str, float] = field(default_factory=dict)
    """Metric sums of the steps since the last log row (kept across a resume, so rows match)."""
    window_steps: int = 0


# ---- small pure pieces ------------------------------------------------------------------------------


def lr_factor(step: int, *, warmup: int, total: int, schedule: str) -> float:
    """Multiplier of the peak learning rate at `step`: linear warm-up, then the chosen decay."""
    if step < warmup:
        return (step + 1) / warmup
    if schedule == "constant":
        return 1.0
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    if schedule == "linear":
        return 1.0 - progress
    if schedule == "cosine":
        return 0.5 * (1.0 + math.cos(math.pi * progress))
    raise BertkitError(f"unknown schedule {schedule!r}; choose {', '.join(SCHEDULES)}")


def param_groups(model: nn.Module, weight_decay: float, layer_lr_decay: float = 1.0) -> list[dict]:
    """No weight decay on biases and LayerNorm weights (the 1-D parameters), as in BERT's optimiser.

    With layer_lr_decay < 1 each group also carries `lr_scale`: 1 for the heads and pooler, then a
    factor of layer_lr_decay per layer further down, the embeddings lowest (ELECTRA, Clark et al. 2020).
    """
    depth_of = _layer_depth(model)
    top = max(depth_of.values(), default=0)
    groups: dict[tuple[int, bool], list[nn.Parameter]] = {}
    for name, p in model.named_parameters():
        if p.requires_grad:
            depth = depth_of.get(name, top) if layer_lr_decay != 1.0 else top
            groups.setdefault((depth, p.ndim >= 2), []).append(p)
    return [
        {"params": params, "weight_decay": weight_decay if decays else 0.0,
         "lr_scale": layer_lr_decay ** (top - depth)}
        for (depth, decays), params in sorted(groups.items(), key=lambda kv: (kv[0][0], not kv[0][1]))
    ]


def _layer_depth(model: nn.Module) -> dict[str, int]:
    """0 for embeddings, k for encoder layer k-1, L+1 for everything above the encoder."""
    names = [n for n, _ in model.named_parameters()]
    layers = {int(n.split(".layers.")[1].split(".")[0]) for n in names if ".layers." in n}
    top = len(layers) + 1
    depth = {}
    for n in names:
        if ".embeddings." in n or n.startswith("embeddings."):
            depth[n] = 0
        elif ".layers." in n or n.startswith("layers."):
            depth[n] = int(n.split("layers.")[1].split(".")[0]) + 1
        else:
            depth[n] = top
    return depth


def bf16_supported(device: torch.device) -> bool:
    """Native bf16 matrix units: CUDA with bf16, or a CPU with AVX512-BF16 or AMX."""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return " avx512_bf16" in flags or " amx_bf16" in flags


def use_bf16(precision: str, device: torch.device) -> bool:
    if precision not in PRECISIONS:
        raise BertkitError(f"unknown precision {precision!r}; choose {', '.join(PRECISIONS)}")
    return precision == "bf16" or (precision == "auto" and bf16_supported(device))


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


def _add(into: dict[str, float], values: dict[str, float | Tensor]) -> None:
    for k, v in values.items():
        into[k] = into.get(k, 0.0) + float(v)


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


# ---- checkpoints ------------------------------------------------------------------------------------


def latest_checkpoint(out: Path) -> Path | None:
    return runs.latest_checkpoint(out)


def save_checkpoint(objective: Objective, optimizer, scheduler, state: TrainState, config: TrainConfig,
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
            "config": {k: str(v) for k, v in asdict(config).items()},
        }
        path = runs.write_checkpoint(config.out, state.step, objective.model, trainer_state,
                                     tokenizer=tokenizer, keep=config.keep_checkpoints)
    distributed.barrier(world)
    return path


def load_checkpoint(directory: Path, objective: Objective, optimizer, scheduler, world: World,
                    config: TrainConfig) -> TrainState:
    """Restore a checkpoint; on another number of processes the data continues where it stopped
    (in units of this run's micro-batches) and each rank starts a fresh dropout stream."""
    from bertkit.checkpoint import load_state_into

    saved = runs.read_trainer_state(directory)
    load_state_into(objective.model, directory)
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
    epoch, index = runs.moved_position(saved, config.batch_size * world.world_size)
    return TrainState(saved["step"], Position(epoch, index), list(saved.get("history", [])),
                      _resumed_window(saved.get("windows", []), world), int(saved.get("window_steps", 0)))


def _resumed_window(windows: list[dict], world: World) -> dict[str, float]:
    """This rank's unlogged metric sums; on another number of processes the main one takes them all."""
    if len(windows) == world.world_size:
        return dict(windows[world.rank])
    if not world.is_main or not windows:
        return {}
    total: dict[str, float] = {}
    for w in windows:
        _add(total, {k: v for k, v in w.items() if k != "grad_norm"})
    if "grad_norm" in windows[0]:  # the same on every process
        total["grad_norm"] = windows[0]["grad_norm"]
    return total


def adapt_to_checkpoint(config: TrainConfig, world: World) -> TrainConfig:
    """With --resume on another number of processes: the batch layout that keeps the global batch."""
    found = runs.latest_checkpoint(config.out) if config.resume else None
    if found is None:
        return config
    saved = runs.read_trainer_state(found)
    batch_size, grad_accum = runs.resume_layout(saved, batch_size=config.batch_size,
                                                grad_accum=config.grad_accum, world_size=world.world_size)
    if (batch_size, grad_accum) != (config.batch_size, config.grad_accum) and world.is_main:
        print(f"resuming on {world.world_size} process(es): {grad_accum} accumulated micro-batch(es) of "
              f"{batch_size} per process keep the global batch", flush=True)
    return replace(config, batch_size=batch_size, grad_accum=grad_accum)


def start_run(config: TrainConfig, world: World) -> None:
    """Refuse to write over an earlier run unless told; --overwrite clears it (main process)."""
    runs.check_run_directory(config.out, resume=config.resume, overwrite=config.overwrite)
    if config.overwrite and not config.resume and world.is_main:
        runs.clear_run(config.out)
    distributed.barrier(world)


# ---- logging ----------------------------------------------------------------------------------------


class MetricsLog:
    """metrics.jsonl (always), TensorBoard (when installed); main process only."""

    def __init__(self, out: Path, world: World, *, resume_step: int | None):
        self.enabled = world.is_main
        self.path = out / "metrics.jsonl"
        self.tb = None
        if not self.enabled:
            return
        out.mkdir(parents=True, exist_ok=True)
        if resume_step is None:
            self.path.write_text("")
        else:
            self._truncate_after(resume_step)
        with contextlib.suppress(Exception):
            from torch.utils.tensorboard import SummaryWriter

            self.tb = SummaryWriter(str(out / "tensorboard"))

    def _truncate_after(self, step: int) -> None:
        """A resumed run rewrites the rows the interrupted run logged after its last checkpoint."""
        if not self.path.exists():
            return
        rows = [line for line in self.path.read_text().splitlines() if line.strip()]
        keep = [line for line in rows if json.loads(line).get("step", 0) <= step]
        self.path.write_text("".join(line + "\n" for line in keep))

    def write(self, row: dict) -> None:
        if not self.enabled:
            return
        with self.path.open("a") as f:
            f.write(json.dumps(row) + "\n")
        if self.tb is not None:
            for k, v in row.items():
                if isinstance(v, (int, float)) and k != "step":
                    self.tb.add_scalar(f"{row.get('split', 'train')}/{k}", v, row["step"])

    def close(self) -> None:
        if self.tb is not None:
            self.tb.close()


def plot_metrics(path: Path, out_png: Path) -> Path | None:
    """A PNG of the training and validation loss curves (needs matplotlib)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    train = [(r["step"], r["loss"]) for r in rows if r.get("split") == "train" and "loss" in r]
    valid = [(r["step"], r["loss"]) for r in rows if r.get("split") == "valid" and "loss" in r]
    fig, ax = plt.subplots(figsize=(7, 4))
    for points, label, style in ((train, "train", "-"), (valid, "valid", "o-")):
        if points:
            ax.plot(*zip(*points), style, label=label)
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(out_png, dpi=100)
    plt.close(fig)
    return out_png


# ---- the loop ---------------------------------------------------------------------------------------


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
def _stop_on_signals():
    stop = StopRequest()
    old = {s: signal.signal(s, stop) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield stop
    finally:
        for s, h in old.items():
            signal.signal(s, h)


def _progress_bar(config: TrainConfig, world: World, start: int):
    if not (config.progress and world.is_main):
        return None
    from tqdm import tqdm

    return tqdm(total=config.steps, initial=start, desc="train", unit="step", dynamic_ncols=True)


def _optimizer(objective: Objective, config: TrainConfig):
    groups = param_groups(objective.model, config.weight_decay, config.layer_lr_decay)
    for g in groups:
        g["lr"] = config.lr * g["lr_scale"]
    optimizer = torch.optim.AdamW(groups, lr=config.lr, betas=config.betas, eps=config.eps)
    warmup = config.warmup_steps()
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: lr_factor(s, warmup=warmup, total=config.steps, schedule=config.schedule)
    )
    return optimizer, scheduler


def fit(
    objective: Objective,
    source: BatchSource,
    config: TrainConfig,
    *,
    evaluate: Callable[[], dict[str, float]] | None = None,
    tokenizer=None,
    world: World | None = None,
) -> TrainState:
    """Train `objective.model` for config.steps optimiser steps; returns the final state.

    `evaluate` is called on every process every eval_every steps and at the end; it returns
    metrics already reduced over processes. The final model (+ tokenizer) is saved to config.out.
    SIGINT/SIGTERM stop after the current step with a checkpoint, then raise KeyboardInterrupt.
    """
    world = world or World()
    config.check_steps()
    start_run(config, world)
    config = adapt_to_checkpoint(config, world)
    device = next(objective.model.parameters()).device
    bf16 = use_bf16(config.precision, device)
    optimizer, scheduler = _optimizer(objective, config)
    state = TrainState()
    found = latest_checkpoint(config.out) if config.resume else None
    if found is not None:
        state = load_checkpoint(found, objective, optimizer, scheduler, world, config)
    else:
        torch.manual_seed(config.seed + world.rank)  # dropout streams differ by rank
    log = MetricsLog(config.out, world, resume_step=state.step if found else None)
    if found is not None and world.is_main:
        print(f"resuming from {found} (step {state.step})", flush=True)

    module: nn.Module = objective  # type: ignore[assignment]
    if world.distributed:
        module = nn.parallel.DistributedDataParallel(module, device_ids=[device.index] if device.type == "cuda" else None)
    if config.compile:
        module = torch.compile(module)
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16)

    def batches_in(epoch: int) -> int:
        return source.num_batches(epoch, config.batch_size, rank=world.rank, world_size=world.world_size)

    def checkpoint() -> Path | None:
        return save_checkpoint(objective, optimizer, scheduler, state, config, world, tokenizer=tokenizer)

    bar = _progress_bar(config, world, state.step)
    window_start = time.perf_counter()
    with _stop_on_signals() as stop:
        try:
            while state.step < config.steps and not stop.agreed(world):
                positions = next_positions(state.position, config.grad_accum, batches_in)
                sums = _train_step(module, objective, source, positions, config, world, device, autocast)
                optimizer.step()
                scheduler.step()
                optimizer.zero_grad(set_to_none=True)
                state.step += 1
                state.position = Position(positions[-1].epoch, positions[-1].index + 1)
                _add(state.window, sums)
                state.window_steps += 1
                if state.step % config.log_every == 0 or state.step == config.steps:
                    row = _log_row(objective, state.window, state.window_steps, world, state.step,
                                   time.perf_counter() - window_start, max(scheduler.get_last_lr()))
                    row["epoch"] = state.position.epoch
                    log.write(row)
                    state.history.append(row)
                    if bar is not None:
                        bar.set_postfix(loss=f"{row['loss']:.3f}", tok_s=f"{row['tokens_per_s']:.0f}")
                    state.window, state.window_steps, window_start = {}, 0, time.perf_counter()
                if bar is not None:
                    bar.update(1)
                if evaluate is not None and config.eval_every and state.step % config.eval_every == 0 \
                        and state.step < config.steps:
                    _evaluate(evaluate, objective, log, state, world, bar)
                    _keep_best(objective, state, config, world, tokenizer, bar)
                    if _should_stop(state, config, world):
                        break
                if config.save_every and state.step % config.save_every == 0 and state.step < config.steps:
                    checkpoint()
            stopped = stop.agreed(world)
        except KeyboardInterrupt:  # a second signal: stop mid-step, leaving the last checkpoint as it is
            log.close()
            if world.is_main:
                print(f"\nstopped during step {state.step + 1}; the last checkpoint is "
                      f"{latest_checkpoint(config.out)}; continue with --resume", flush=True)
            raise
        if stopped:
            if bar is not None:
                bar.close()
            path = checkpoint()
            log.close()
            if world.is_main:
                print(f"\ninterrupted ({stop.signal or 'another process'}) at step {state.step}; checkpoint "
                      f"saved to {path}; continue with --resume", flush=True)
            raise KeyboardInterrupt
    if bar is not None:
        bar.close()
    if evaluate is not None and _last_evaluated(state) != state.step:
        _evaluate(evaluate, objective, log, state, world, None)
        _keep_best(objective, state, config, world, tokenizer)
    checkpoint()
    if config.best_metric and (config.out / BEST).is_dir():
        from bertkit.checkpoint import load_state_into

        load_state_into(objective.model, config.out / BEST)  # the final model is the best one
    if world.is_main:
        objective.model.save_pretrained(config.out, tokenizer=tokenizer)
        log.close()
        plot_metrics(log.path, config.out / "loss.png")
    distributed.barrier(world)
    return state


# ---- best model and early stopping -------------------------------------------------------------------

BEST = "best"


# Every metric bertkit reports, with the direction that is better. A metric not listed here cannot
# pick the best model: guessing a direction kept the worst model for `mse` once.
HIGHER_IS_BETTER = frozenset({
    "accuracy", "f1", "macro_f1", "micro_f1", "mcc", "precision", "recall",  # classify, tag
    "pearson", "spearman",  # regression
    "exact_match", "has_answer_exact_match", "has_answer_f1", "no_answer_exact_match", "no_answer_f1",
    "best_f1", "position_accuracy",  # qa
    "mlm_accuracy", "nsp_accuracy",  # pretraining
})
LOWER_IS_BETTER = frozenset({"loss", "mlm_loss", "nsp_loss", "perplexity", "mse"})
PER_TYPE_PREFIX = "f1_"  # entity F1 per type (f1_PER, f1_LOC, ...): higher is better


def lower_is_better(metric: str) -> bool:
    if metric in LOWER_IS_BETTER:
        return True
    if metric in HIGHER_IS_BETTER or metric.startswith(PER_TYPE_PREFIX):
        return False
    known = ", ".join(sorted(HIGHER_IS_BETTER | LOWER_IS_BETTER))
    raise BertkitError(f"--best-metric {metric}: not a metric that can pick the best model; choose one of "
                       f"{known}, or f1_TYPE for an entity type")


def best_evaluation(history: list[dict], metric: str) -> dict | None:
    """The validation row with the best value of `metric` (the earliest among equals)."""
    rows = [r for r in history if r.get("split") == "valid" and metric in r]
    if not rows:
        return None
    sign = -1.0 if lower_is_better(metric) else 1.0

    def score(r: dict) -> float:  # an undefined value (a correlation of constants is NaN) is the worst
        return -math.inf if math.isnan(r[metric]) else sign * r[metric]

    return max(rows, key=lambda r: (score(r), -r["step"]))


def evaluations_since_best(history: list[dict], metric: str) -> int:
    best = best_evaluation(history, metric)
    if best is None:
        return 0
    return sum(1 for r in history if r.get("split") == "valid" and metric in r and r["step"] > best["step"])


def _last_evaluated(state: TrainState) -> int | None:
    return next((r["step"] for r in reversed(state.history) if r.get("split") == "valid"), None)


def _keep_best(objective, state: TrainState, config: TrainConfig, world: World, tokenizer, bar=None) -> None:
    """Save the model to out/best when the latest evaluation is the best so far."""
    metric = config.best_metric
    if not metric:
        return
    latest = next(r for r in reversed(state.history) if r.get("split") == "valid")
    if metric not in latest:
        shown = ", ".join(k for k in latest if k not in ("step", "split"))
        raise BertkitError(f"best metric {metric!r} is not among the validation metrics ({shown})")
    if best_evaluation(state.history, metric) is latest and world.is_main:
        objective.model.save_pretrained(config.out / BEST, tokenizer=tokenizer)
        _say(f"step {state.step}: new best {metric} {latest[metric]:.4g}, saved to {config.out / BEST}", bar)
    distributed.barrier(world)


def _should_stop(state: TrainState, config: TrainConfig, world: World) -> bool:
    if not (config.best_metric and config.patience):
        return False
    if evaluations_since_best(state.history, config.best_metric) < config.patience:
        return False
    if world.is_main:
        best = best_evaluation(state.history, config.best_metric)
        print(f"early stop at step {state.step}: no better {config.best_metric} for {config.patience} "
              f"evaluation(s); best {best[config.best_metric]:.4g} at step {best['step']}", flush=True)
    return True


def _train_step(module, objective, source, positions, config, world, device, autocast) -> dict[str, float]:
    """Accumulate gradients over the micro-batches at `positions`; return the step's metric sums."""
    batches = [
        {k: v.to(device) for k, v in
         source.batch(p.epoch, p.index, config.batch_size, rank=world.rank, world_size=world.world_size).items()}
        for p in positions
    ]
    counts: dict[str, float] = {}
    for b in batches:
        _add(counts, objective.counts(b))
    global_counts = reduce_sums(counts, world)
    sums: dict[str, float] = {f"n_{k}": v for k, v in counts.items()}
    for i, batch in enumerate(batches):
        sync = not world.distributed or i == len(batches) - 1
        with (contextlib.nullcontext() if sync else module.no_sync()), autocast:
            out = module(batch)
        # DDP averages gradients over processes; scaling by world_size turns that into a sum.
        loss = sum(out.losses[k] / max(global_counts[k], 1.0) for k in out.losses) * world.world_size
        loss.backward()
        _add(sums, {f"loss_{k}": v.detach() for k, v in out.losses.items()})
        _add(sums, {k: v.detach() for k, v in out.metrics.items()})
        sums["tokens"] = sums.get("tokens", 0.0) + float(batch["attention_mask"].sum())
    if config.max_grad_norm:
        sums["grad_norm"] = float(torch.nn.utils.clip_grad_norm_(objective.model.parameters(), config.max_grad_norm))
    return sums


def _log_row(objective, window, steps, world, step, seconds, lr) -> dict:
    grad_norm = window.pop("grad_norm", None)  # the same on every process: averaged over steps, not summed
    total = reduce_sums(window, world)
    row = {"step": step, "split": "train", "lr": lr}
    row.update(objective.summarize(total))
    row["tokens_per_s"] = total.get("tokens", 0.0) / max(seconds, 1e-9)
    if grad_norm is not None:
        row["grad_norm"] = grad_norm / max(steps, 1)
    return row


def _evaluate(evaluate, objective, log: MetricsLog, state: TrainState, world: World, bar) -> None:
    objective.model.eval()
    with torch.no_grad():
        metrics = evaluate()
    objective.model.train()
    row = {"step": state.step, "split": "valid", **metrics}
    log.write(row)
    state.history.append(row)
    if world.is_main:
        shown = ", ".join(f"{k} {v:.4g}" for k, v in metrics.items())
        _say(f"step {state.step}: valid {shown}", bar)


def _say(line: str, bar) -> None:
    """A line of its own, above the progress bar when there is one (a plain print glues onto it)."""
    if bar is not None:
        bar.write(line)
    else:
        print(line, flush=True)


def evaluate_sums(objective: Objective, source: BatchSource, batch_size: int, world: World,
                  *, epoch: int = 0, autocast=None) -> dict[str, float]:
    """Metrics of `objective` over every batch of `source` (one fixed epoch), reduced over processes."""
    device = next(objective.model.parameters()).device
    sums: dict[str, float] = {}
    n = source.num_batches(epoch, batch_size, rank=world.rank, world_size=world.world_size)
    for i in range(n):
        batch = {k: v.to(device) for k, v in
                 source.batch(epoch, i, batch_size, rank=world.rank, world_size=world.world_size).items()}
        with autocast or contextlib.nullcontext():
            out = objective(batch)
        _add(sums, {f"n_{k}": v for k, v in objective.counts(batch).items()})
        _add(sums, {f"loss_{k}": v for k, v in out.losses.items()})
        _add(sums, out.metrics)
    return objective.summarize(gather_sums(sums, world))


def iter_rows(path: Path) -> Iterator[dict]:
    for line in path.read_text().splitlines():
        if line.strip():
            yield json.loads(line)
