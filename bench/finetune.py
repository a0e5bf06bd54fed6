"""Fine-tuning, bertkit vs transformers, side by side in one run: same starting weights, same
features, same batches in the same order, same optimiser, schedule and hyper-parameters, same
threads. Each side is evaluated on the dev set after every epoch with the same post-processing and
metrics (bertkit's task unit); the best epoch's score and the time are reported. Both sides are
timed end to end: loading the model, reading and featurizing the data, training, evaluating every
epoch and saving the best model (bertkit also writes a resumable checkpoint every epoch).

    python bench/datasets.py wnut /tmp/wnut
    python bench/finetune.py --task tag --model MINILM_DIR --train /tmp/wnut/train.conll --dev /tmp/wnut/dev.conll

With --against random, the other side is bertkit again, from the same architecture with every
weight re-initialised: what pretraining is worth on this task. With --against trainer, the other side
is transformers' `Trainer` (its defaults: fused AdamW, linear schedule) over the same batches in the
same order (a sequential sampler over bertkit's epoch order, bertkit's collate).

With --interleave N, training speed alone, robust to a machine whose load changes: bertkit's
train.fit and transformers' Trainer.train run N steps each, in two threads that take turns step by
step (a baton: only one computes at a time); each side's step is the time from one step's start to
the next one's (its data, forward, backward, clipping, optimiser, logging). Reported: the median
step and the total over the steps after --warmup-steps, steps/s and real tokens/s of each side.

    python bench/finetune.py --task classify --model MINILM_DIR --train /tmp/senti/train.csv \
        --dev /tmp/senti/dev.csv --interleave 30
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

import torch
from torch import nn


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--task", required=True, choices=["classify", "tag", "qa", "choice"])
    p.add_argument("--model", required=True, help="checkpoint to fine-tune (the same for both sides)")
    p.add_argument("--train", required=True, type=Path)
    p.add_argument("--dev", required=True, type=Path)
    p.add_argument("--against", choices=["transformers", "trainer", "random"], default="transformers",
                   help="transformers: a plain loop around its model; trainer: its Trainer; random: bertkit "
                        "from re-initialised weights")
    p.add_argument("--interleave", type=int, default=0, metavar="STEPS",
                   help="time STEPS training steps of bertkit and of transformers' Trainer, taking turns step by "
                        "step, instead of two whole runs")
    p.add_argument("--warmup-steps", type=int, default=3, help="with --interleave: untimed first steps of each side")
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--lr", type=float, default=5e-5)
    p.add_argument("--warmup", type=float, default=0.1)
    p.add_argument("--max-length", type=int, default=128)
    p.add_argument("--long-text", choices=["truncate", "window"], default="truncate",
                   help="inputs longer than --max-length: cut, or split into overlapping windows")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--dropout-draws", choices=["auto", "bertkit", "torch"], default="auto",
                   help="bertkit's dropout masks: its own (faster on a CPU, what a user gets) or PyTorch's (the same "
                        "random numbers as transformers, so a run against it agrees to the last digit, and the last "
                        "layer then runs at every token as transformers' does); auto: torch with --against "
                        "transformers (whole runs), bertkit's with --interleave or otherwise")
    p.add_argument("--threads", type=int, default=torch.get_num_threads())
    p.add_argument("--json", type=Path, default=None, help="also write the results here")
    return p.parse_args()


def starting_point(args, task, work: Path) -> Path:
    """The pretrained encoder plus a freshly initialised head, saved once, so both sides start equal."""
    from bertkit.config import BertConfig
    from bertkit.heads import HEADS
    from bertkit.predict import with_settings
    from bertkit.tasks import BadInput
    from bertkit.tokenizer import Tokenizer

    examples = task.read(args.train, BadInput())
    changes = task.configure(BertConfig.load(args.model), task.label_names(examples))
    torch.manual_seed(args.seed)
    model = HEADS[task.architecture].from_pretrained(args.model, with_head=False, **changes)
    model.config = with_settings(model.config, task)
    model.save_pretrained(work / "init", tokenizer=Tokenizer.from_pretrained(args.model))
    return work / "init"


def run_bertkit(args, init: Path, work: Path, *, random_init: bool = False) -> dict:
    from bertkit.finetune import FinetuneArgs, run_finetune
    from bertkit.metrics_log import iter_rows
    from bertkit.tasks import DataOptions
    from bertkit.train import TrainConfig

    out = work / ("bertkit-random" if random_init else "bertkit")
    config = TrainConfig(out=out, lr=args.lr, batch_size=args.batch_size, warmup=args.warmup, seed=args.seed,
                         precision="fp32", progress=False, keep_checkpoints=1)
    start = time.perf_counter()
    run_finetune(FinetuneArgs(task=args.task, model=str(init), train=args.train, dev=args.dev, epochs=args.epochs,
                              random_init=random_init),
                 DataOptions(max_length=args.max_length, long_text=args.long_text), config)
    seconds = time.perf_counter() - start
    epochs = [{k: v for k, v in r.items() if k != "split"} for r in iter_rows(out / "metrics.jsonl")
              if r["split"] == "valid"]
    return {"name": "bertkit (random init)" if random_init else "bertkit", "seconds": seconds, "epochs": epochs}


class Reference(nn.Module):
    """transformers' model behind bertkit's call convention (input_ids, token_type_ids, attention_mask)."""

    def __init__(self, hf):
        super().__init__()
        self.hf, self.config = hf, None

    def forward(self, input_ids, token_type_ids=None, attention_mask=None):
        return self.hf(input_ids=input_ids, token_type_ids=token_type_ids, attention_mask=attention_mask)


def run_transformers(args, task, init: Path, work: Path) -> dict:
    """A plain PyTorch loop around transformers' AutoModelFor… and its own loss."""
    import transformers

    from bertkit.config import BertConfig
    from bertkit.optim import fused_option, lr_factor, param_groups
    from bertkit.predict import evaluate_examples
    from bertkit.tasks import BadInput
    from bertkit.tasks.base import FeatureBatches
    from bertkit.tokenizer import Tokenizer

    start = time.perf_counter()
    hf_class = getattr(transformers, task.architecture.replace("Bert", "AutoModel", 1))
    hf = hf_class.from_pretrained(init)
    tokenizer = Tokenizer.from_pretrained(init)
    config = BertConfig.load(init)
    bad = BadInput()
    train = task.featurize(task.read(args.train, bad), tokenizer, config, bad).features
    dev_examples = task.read(args.dev, bad)
    dev = task.featurize(dev_examples, tokenizer, config, bad)
    source = FeatureBatches(train, pad_id=tokenizer.pad_token_id, seed=args.seed)
    per_epoch = source.num_batches(0, args.batch_size)
    steps = per_epoch * args.epochs
    warmup = int(args.warmup * steps)
    groups = param_groups(hf, 0.01)
    optimizer = torch.optim.AdamW(groups, lr=args.lr, eps=1e-6, **fused_option(groups))  # bertkit's optimiser
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: lr_factor(s, warmup=warmup, total=steps,
                                                                              schedule="linear"))
    reference = Reference(hf)
    reference.config = config
    torch.manual_seed(args.seed)
    epochs: list[dict] = []
    for epoch in range(args.epochs):
        hf.train()
        for index in range(per_epoch):
            batch = source.batch(epoch, index, args.batch_size)
            loss = hf(**batch).loss
            loss.backward()
            torch.nn.utils.clip_grad_norm_(hf.parameters(), 1.0)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
        metrics = evaluate_examples(task, reference, tokenizer, dev_examples, dev)
        if all(metrics[task.metric] > e[task.metric] for e in epochs):
            hf.save_pretrained(work / "transformers-best")
        epochs.append({"step": per_epoch * (epoch + 1), **metrics})
        print(f"transformers epoch {epoch + 1}: " + ", ".join(f"{k} {v:.4g}" for k, v in metrics.items()), flush=True)
    return {"name": "transformers", "seconds": time.perf_counter() - start, "epochs": epochs}


# ---- transformers' Trainer over bertkit's batches ------------------------------------------------------


def batch_order(source, batch_size: int, steps: int) -> list[int]:
    """The feature indices of bertkit's first `steps` batches, batch after batch (FeatureBatches'
    epoch order, a short last batch filled from the epoch's start)."""
    per_epoch = source.num_batches(0, batch_size)
    order = []
    for s in range(steps):
        epoch, index = divmod(s, per_epoch)
        perm = source.order(epoch)
        order += [int(perm[(index * batch_size + i) % len(perm)]) for i in range(batch_size)]
    return order


def make_trainer(args, task, init: Path, work: Path, steps: int, callbacks: list):
    """transformers' Trainer with its defaults (fused AdamW, linear decay), bertkit's hyper-parameters
    and bertkit's batches in bertkit's order."""
    import transformers

    from bertkit.config import BertConfig
    from bertkit.tasks import BadInput
    from bertkit.tasks.base import FeatureBatches, collate
    from bertkit.tokenizer import Tokenizer

    transformers.logging.set_verbosity_error()
    hf_class = getattr(transformers, task.architecture.replace("Bert", "AutoModel", 1))
    hf = hf_class.from_pretrained(init)
    tokenizer = Tokenizer.from_pretrained(init)
    features = task.featurize(task.read(args.train, BadInput()), tokenizer, BertConfig.load(init), BadInput()).features
    source = FeatureBatches(features, pad_id=tokenizer.pad_token_id, seed=args.seed)
    dataset = [features[i] for i in batch_order(source, args.batch_size, steps)]
    training = transformers.TrainingArguments(
        output_dir=str(work / "trainer"), per_device_train_batch_size=args.batch_size, max_steps=steps,
        learning_rate=args.lr, warmup_steps=int(args.warmup * steps), lr_scheduler_type="linear",
        weight_decay=0.01, adam_epsilon=1e-6, max_grad_norm=1.0, logging_steps=10, save_strategy="no",
        eval_strategy="no", report_to="none", seed=args.seed, train_sampling_strategy="sequential",
        dataloader_num_workers=0, dataloader_pin_memory=False, use_cpu=True, disable_tqdm=True)
    return transformers.Trainer(model=hf, args=training, train_dataset=dataset, callbacks=callbacks,
                                data_collator=lambda fs: collate(fs, tokenizer.pad_token_id)), source, tokenizer


def run_trainer(args, task, init: Path, work: Path) -> dict:
    """Trainer.train over the same epochs, evaluated after each (bertkit's task unit) from a callback."""
    import transformers

    from bertkit.config import BertConfig
    from bertkit.predict import evaluate_examples
    from bertkit.tasks import BadInput
    from bertkit.tokenizer import Tokenizer

    start = time.perf_counter()
    tokenizer = Tokenizer.from_pretrained(init)
    config = BertConfig.load(init)
    dev_examples = task.read(args.dev, BadInput())
    dev = task.featurize(dev_examples, tokenizer, config, BadInput())
    epochs: list[dict] = []

    class EvaluateEachEpoch(transformers.TrainerCallback):
        def on_step_end(self, _args, state, control, model=None, **kwargs):
            if state.global_step % per_epoch == 0:
                reference = Reference(model)
                reference.config = config
                metrics = evaluate_examples(task, reference, tokenizer, dev_examples, dev)
                if all(metrics[task.metric] > e[task.metric] for e in epochs):
                    model.save_pretrained(work / "trainer-best")
                epochs.append({"step": state.global_step, **metrics})
                print(f"Trainer epoch {len(epochs)}: " + ", ".join(f"{k} {v:.4g}" for k, v in metrics.items()), flush=True)

    from bertkit.tasks.base import FeatureBatches

    train = task.featurize(task.read(args.train, BadInput()), tokenizer, config, BadInput()).features
    per_epoch = FeatureBatches(train, pad_id=tokenizer.pad_token_id).num_batches(0, args.batch_size)
    trainer, _, _ = make_trainer(args, task, init, work, per_epoch * args.epochs, [EvaluateEachEpoch()])
    trainer.train()
    return {"name": "transformers Trainer", "seconds": time.perf_counter() - start, "epochs": epochs}


# ---- --interleave: the two training loops taking turns step by step ----------------------------------


class Baton:
    """Two training loops in two threads, one step at a time: `boundary(side)` ends that side's step
    (timing it), hands the turn to the other and waits for it to come back."""

    def __init__(self, sides: tuple[str, str]):
        self.sides, self.turn = sides, sides[0]
        self.cond = threading.Condition()
        self.started: dict[str, float] = {}
        self.times: dict[str, list[float]] = {s: [] for s in sides}
        self.finished: set[str] = set()

    def _other(self, side: str) -> str:
        return self.sides[1] if side == self.sides[0] else self.sides[0]

    def boundary(self, side: str) -> None:
        if side in self.started:
            self.times[side].append(time.perf_counter() - self.started[side])
            with self.cond:
                if self._other(side) not in self.finished:
                    self.turn = self._other(side)
                self.cond.notify_all()
        with self.cond:
            self.cond.wait_for(lambda: self.turn == side)
        self.started[side] = time.perf_counter()

    def finish(self, side: str) -> None:
        with self.cond:
            self.finished.add(side)
            self.turn = self._other(side)
            self.cond.notify_all()


class TimedSource:
    """bertkit's batch source, each batch request the start of a step on the baton."""

    def __init__(self, source, baton: Baton):
        self.source, self.baton = source, baton

    def num_batches(self, *a, **k):
        return self.source.num_batches(*a, **k)

    def batch(self, *a, **k):
        self.baton.boundary("bertkit")
        return self.source.batch(*a, **k)


def interleaved(args, task, init: Path, work: Path) -> dict:
    import transformers

    from bertkit.finetune import FinetuneArgs, run_finetune
    from bertkit.tasks import DataOptions
    from bertkit.train import TrainConfig

    steps, baton = args.interleave, Baton(("trainer", "bertkit"))

    class OnBaton(transformers.TrainerCallback):
        def on_step_begin(self, *a, **k):
            baton.boundary("trainer")

    trainer, source, _ = make_trainer(args, task, init, work, steps, [OnBaton()])
    errors: list[BaseException] = []

    def train_trainer():
        try:
            trainer.train()
        except BaseException as e:  # noqa: BLE001 - reported by the main thread
            errors.append(e)
        finally:
            baton.finish("trainer")

    thread = threading.Thread(target=train_trainer, daemon=True)
    thread.start()
    import bertkit.finetune

    real_fit = bertkit.finetune.fit  # bertkit's fit draws its batches through the baton
    bertkit.finetune.fit = lambda objective, source, *a, **k: real_fit(objective, TimedSource(source, baton), *a, **k)
    config = TrainConfig(out=work / "bertkit", lr=args.lr, batch_size=args.batch_size, warmup=args.warmup,
                         seed=args.seed, precision="fp32", progress=False, keep_checkpoints=1, log_every=10)
    per_epoch = source.num_batches(0, args.batch_size)
    try:
        run_finetune(FinetuneArgs(task=args.task, model=str(init), train=args.train, dev=None,
                                  epochs=(steps - 0.5) / per_epoch), DataOptions(max_length=args.max_length,
                                                                                  long_text=args.long_text), config)
    finally:
        baton.finish("bertkit")
        bertkit.finetune.fit = real_fit
    thread.join()
    if errors:
        raise errors[0]
    tokens = [int(source.batch(s // per_epoch, s % per_epoch, args.batch_size)["attention_mask"].sum())
              for s in range(steps)]
    result = {}
    for side, times in baton.times.items():
        timed = times[args.warmup_steps:]  # step k's time is times[k]: from its start to the next one's
        result[side] = {"steps": len(timed), "median_s": statistics.median(timed), "total_s": sum(timed),
                        "tokens": sum(tokens[args.warmup_steps:args.warmup_steps + len(timed)])}
    return result


def main_interleaved(args, task) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        init = starting_point(args, task, work)
        result = interleaved(args, task, init, work)
    machine = f"{platform.processor() or platform.machine()}, {args.threads} threads, torch {torch.__version__}"
    print(f"\n{args.task} on {args.train.name}: training steps taking turns, batch {args.batch_size}, max length "
          f"{args.max_length}, steps {args.warmup_steps + 1}..{args.interleave - 1} of {args.interleave} timed, {machine}")
    print("| side | steps | median step (s) | steps/s | real tokens/s | ratio |")
    print("|---|---|---|---|---|---|")
    ref = result["trainer"]
    for side, r in (("bertkit", result["bertkit"]), ("transformers Trainer", ref)):
        print(f"| {side} | {r['steps']} | {r['median_s']:.3f} | {r['steps'] / r['total_s']:.3f} | "
              f"{r['tokens'] / r['total_s']:,.0f} | {ref['total_s'] / r['total_s'] * r['steps'] / ref['steps']:.2f}x |")
    if args.json:
        args.json.write_text(json.dumps({"settings": {k: str(v) for k, v in vars(args).items()}, "machine": machine,
                                         "interleaved": result}, indent=2) + "\n")


def main() -> None:
    # bench/datasets.py would shadow Hugging Face's `datasets`, which transformers' Trainer imports
    sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]
    args = parse_args()
    torch.set_num_threads(args.threads)
    from bertkit.dropout import use_torch_dropout
    from bertkit.tasks import DataOptions, make_task

    use_torch_dropout(args.dropout_draws == "torch" or (args.dropout_draws == "auto" and args.against == "transformers"
                                                        and not args.interleave))

    task = make_task(args.task, DataOptions(max_length=args.max_length, long_text=args.long_text))
    if args.interleave:
        return main_interleaved(args, task)
    metric = task.metric
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        init = starting_point(args, task, work)
        ours = run_bertkit(args, init, work)
        if args.against == "transformers":
            other = run_transformers(args, task, init, work)
        elif args.against == "trainer":
            other = run_trainer(args, task, init, work)
        else:
            other = run_bertkit(args, init, work, random_init=True)
    results = {"task": args.task, "model": args.model, "train": str(args.train), "dev": str(args.dev),
               "metric": metric, "settings": {k: str(v) for k, v in vars(args).items()},
               "machine": f"{platform.processor() or platform.machine()}, {args.threads} threads, torch {torch.__version__}",
               "runs": [ours, other]}
    print(f"\n{args.task} on {args.train.name}/{args.dev.name}, {args.epochs} epochs, batch {args.batch_size}, "
          f"lr {args.lr:g}, max length {args.max_length}, {results['machine']}")
    print(f"{'':<24} {'best ' + metric:>12} {'last ' + metric:>12} {'seconds':>13}")
    for run in results["runs"]:
        best = max(e[metric] for e in run["epochs"])
        print(f"{run['name']:<24} {best:>12.4f} {run['epochs'][-1][metric]:>12.4f} {run['seconds']:>13.1f}")
    if args.against != "random":
        print(f"time ratio {other['name']}/bertkit: {other['seconds'] / ours['seconds']:.2f}")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    from bertkit.errors import run_script

    run_script(main, "bench/finetune.py")
