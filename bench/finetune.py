"""Fine-tuning, bertkit vs transformers, side by side in one run: same starting weights, same
features, same batches in the same order, same optimiser, schedule and hyper-parameters, same
threads. Each side is evaluated on the dev set after every epoch with the same post-processing and
metrics (bertkit's task unit); the best epoch's score and the time are reported. Both sides are
timed end to end: loading the model, reading and featurizing the data, training, evaluating every
epoch and saving the best model (bertkit also writes a resumable checkpoint every epoch).

    python bench/datasets.py wnut /tmp/wnut
    python bench/finetune.py --task tag --model MINILM_DIR --train /tmp/wnut/train.conll --dev /tmp/wnut/dev.conll

With --against random, the other side is bertkit again, from the same architecture with every
weight re-initialised: what pretraining is worth on this task.
"""

from __future__ import annotations

import argparse
import json
import platform
import tempfile
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
    p.add_argument("--against", choices=["transformers", "random"], default="transformers")
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--lr", type=float, default=5e-5)
    p.add_argument("--warmup", type=float, default=0.1)
    p.add_argument("--max-length", type=int, default=128)
    p.add_argument("--long-text", choices=["truncate", "window"], default="truncate",
                   help="inputs longer than --max-length: cut, or split into overlapping windows")
    p.add_argument("--seed", type=int, default=0)
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
    from bertkit.optim import lr_factor, param_groups
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
    optimizer = torch.optim.AdamW(param_groups(hf, 0.01), lr=args.lr, eps=1e-6)
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


def main() -> None:
    args = parse_args()
    torch.set_num_threads(args.threads)
    from bertkit.tasks import DataOptions, make_task

    task = make_task(args.task, DataOptions(max_length=args.max_length, long_text=args.long_text))
    metric = task.metric
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        init = starting_point(args, task, work)
        ours = run_bertkit(args, init, work)
        other = run_transformers(args, task, init, work) if args.against == "transformers" else \
            run_bertkit(args, init, work, random_init=True)
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
    if args.against == "transformers":
        print(f"time ratio transformers/bertkit: {other['seconds'] / ours['seconds']:.2f}")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    from bertkit.errors import run_script

    run_script(main, "bench/finetune.py")
