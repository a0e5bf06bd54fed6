"""The unpadded encoder against the padded one, and the attention variants tried for it.

bertkit.model runs a batch with padding unpadded: the real tokens are gathered once into an (R, C)
matrix, every Linear, GELU, LayerNorm and dropout runs on it, and only attention needs the rows
apart. This measures, in one run, with the two variants taking turns batch by batch (alternating
which goes first) and the median pass reported:

  embed     all-MiniLM-L6-v2 forward + mean pooling of a Penn Treebank mix (single sentences and
            passages of 2-8 sentences, as bench/inference.py), batches in the texts' own order and
            length-sorted: padded vs unpadded, and each attention variant for the unpadded path
            (--attention): repad (kept in model.py), nested (jagged tensors + SDPA), buckets
            (rows sorted by length, 4 groups each padded to its own longest), per_row (one SDPA
            call per row), blockdiag (all R tokens, one (R, R) block-diagonal mask)
  pretrain  a pretraining step (MLM + NSP, AdamW) on bench/pretrain.py's batches, padded vs unpadded
  finetune  a sequence-classification step (MiniLM + a new head, AdamW) on single treebank sentences

Throughput counts real (non-padding) tokens. Agreement: the largest |difference| of the pooled
vectors (embed) against the padded path.

    python bench/unpadded.py --threads 2 --what embed
    python bench/unpadded.py --threads 2 --what pretrain,finetune --repeats 5

Measured 2026-12-01 on the shared 2-core CPU (load average 4-11 from other work: absolute tok/s are
~10x below an idle machine, ratios are what the turn-taking makes comparable), vs padded:
  embed, 128 texts (--texts 128; "groups" was a variant of repad since dropped), given order, 66% padding:
    repad 1.53x, rows in <=4 length groups 1.49x, buckets 0.99x, per_row 0.51x
  embed, length-sorted, 34% padding: repad 1.55x, groups 1.44x, buckets 0.93x, per_row 0.44x
  embed, 64 texts, 1 pass: nested 0.12x / 0.13x, blockdiag 0.60x / 0.21x (given / sorted)
  pretraining step, mini, 32 x 128, 9% padding (--steps 8): 1.06x
  fine-tuning step, MiniLM + classifier, single sentences, 49% padding (--steps 8): 0.97x (the AdamW
    step over 22M parameters and the word-embedding gradient dominate short-sentence steps; noisy)
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import sys
import tempfile
import time
import warnings
from pathlib import Path

import torch
import torch.nn.functional as F

import bertkit.model as M
from bertkit import BertModel, Tokenizer
from bertkit.embedding import default_model_dir
from bertkit.padding import pad_inputs

sys.path.insert(0, str(Path(__file__).parent))
from inference import build_texts, by_length  # noqa: E402  (bench/inference.py: the same text mix)

# ---- attention variants for the unpadded path: (R, 3C) fused q/k/v -> (R, C) -------------------------


def _offsets(u: M.Unpadding) -> list[int]:
    return [0, *u.lengths.cumsum(0).tolist()]


def per_row(qkv, u: M.Unpadding, H: int, p: float):
    R, C3 = qkv.shape
    D, cu = C3 // (3 * H), _offsets(u)
    outs = []
    for b in range(len(cu) - 1):
        x = qkv[cu[b]: cu[b + 1]].view(-1, 3, H, D).permute(1, 2, 0, 3)  # (3, H, l, D)
        y = F.scaled_dot_product_attention(x[0], x[1], x[2], dropout_p=p)  # (H, l, D)
        outs.append(y.transpose(0, 1).reshape(-1, C3 // 3))  # (l, C)
    return torch.cat(outs)  # (R, C)


def buckets(qkv, u: M.Unpadding, H: int, p: float, n: int = 4):
    R, C3 = qkv.shape
    D, cu, lengths = C3 // (3 * H), _offsets(u), u.lengths.tolist()
    order = sorted(range(len(lengths)), key=lambda b: lengths[b])
    out = qkv.new_empty(R, C3 // 3)
    size = -(-len(order) // n)
    for s in range(0, len(order), size):
        rows = order[s: s + size]
        L = max(lengths[b] for b in rows)
        idx = torch.cat([torch.arange(cu[b], cu[b + 1]) for b in rows])  # (r,)
        slots = torch.cat([torch.arange(lengths[b]) + i * L for i, b in enumerate(rows)])  # (r,)
        laid = qkv.new_zeros(len(rows) * L, C3).index_copy(0, slots, qkv.index_select(0, idx))
        q, k, v = laid.view(len(rows), L, 3, H, D).permute(2, 0, 3, 1, 4)  # (b, H, L, D) each
        keys = torch.arange(L)[None, :] < torch.tensor([lengths[b] for b in rows])[:, None]  # (b, L)
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=keys[:, None, None, :], dropout_p=p)
        out.index_copy_(0, idx, y.transpose(1, 2).reshape(len(rows) * L, C3 // 3).index_select(0, slots))
    return out


def nested(qkv, u: M.Unpadding, H: int, p: float):
    R, C3 = qkv.shape
    D = C3 // (3 * H)
    offsets = F.pad(u.lengths.cumsum(0), (1, 0))  # (B + 1,)
    parts = qkv.view(R, 3, H, D).unbind(1)  # (R, H, D) each
    q, k, v = (torch.nested.nested_tensor_from_jagged(t.contiguous(), offsets).transpose(1, 2) for t in parts)
    y = F.scaled_dot_product_attention(q, k, v, dropout_p=p)  # (B, H, j, D)
    return y.transpose(1, 2).values().reshape(R, C3 // 3)


def blockdiag(qkv, u: M.Unpadding, H: int, p: float):
    R, C3 = qkv.shape
    D = C3 // (3 * H)
    row = torch.repeat_interleave(torch.arange(len(u.lengths)), u.lengths)  # (R,)
    q, k, v = qkv.view(R, 3, H, D).permute(1, 2, 0, 3)  # (H, R, D) each
    y = F.scaled_dot_product_attention(q, k, v, attn_mask=row[:, None] == row[None, :], dropout_p=p)
    return y.transpose(0, 1).reshape(R, C3 // 3)


ATTENTION = {"repad": M.varlen_attention, "nested": nested, "buckets": buckets, "per_row": per_row,
             "blockdiag": blockdiag}


@contextlib.contextmanager
def variant(name: str):
    """'padded', or the unpadded path with one of ATTENTION."""
    saved = M.worth_unpadding, M.varlen_attention
    if name == "padded":
        M.worth_unpadding = lambda mask: False
    else:
        M.varlen_attention = ATTENTION[name]
    try:
        yield
    finally:
        M.worth_unpadding, M.varlen_attention = saved


# ---- timing ------------------------------------------------------------------------------------------


def interleaved(step, batches: list[dict], names: list[str], repeats: int) -> tuple[dict[str, float], dict]:
    """Median seconds per pass of `step(batch)` under each variant, variants taking turns batch by batch;
    and each variant's outputs of the last pass."""
    times = {n: [] for n in names}
    outputs: dict[str, list] = {}
    for r in range(repeats):
        spent = dict.fromkeys(names, 0.0)
        outputs = {n: [] for n in names}
        for j, batch in enumerate(batches):
            for name in names if (r + j) % 2 == 0 else names[::-1]:
                with variant(name):
                    start = time.perf_counter()
                    out = step(name, batch)
                    spent[name] += time.perf_counter() - start
                outputs[name].append(out)
        for n in names:
            times[n].append(spent[n])
    return {n: statistics.median(t) for n, t in times.items()}, outputs


def table(title: str, seconds: dict[str, float], real: int, computed: int, diffs: dict[str, float] | None = None):
    print(f"\n{title}: {real:,} real tokens, {computed:,} padded positions ({1 - real / computed:.0%} padding)")
    print("| variant | real tokens/s | vs padded | max abs diff |")
    print("|---|--:|--:|--:|")
    for n, s in seconds.items():
        d = "" if diffs is None else f"{diffs.get(n, 0.0):.1e}"
        print(f"| {n} | {real / s:,.0f} | {seconds['padded'] / s:.2f}x | {d} |")


# ---- the three measurements ----------------------------------------------------------------------------


def embed(args) -> None:
    path = default_model_dir()
    tokenizer = Tokenizer.from_pretrained(path)
    model = BertModel.from_pretrained(path, with_head=False).eval()
    texts = build_texts(args.texts, args.seed)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ids = tokenizer(texts, truncation=True, max_length=args.max_length)["input_ids"]
    names = ["padded", *args.attention]

    def step(name, batch):
        with torch.inference_mode():
            hidden = model(batch["input_ids"], None, batch["attention_mask"]).last_hidden_state  # (B, T, C)
            m = batch["attention_mask"][..., None].float()  # (B, T, 1)
            return (hidden * m).sum(1) / m.sum(1)  # (B, C)

    lengths = [len(r) for r in ids]
    for setting, order in (("given order", list(range(len(ids)))), ("length-sorted", by_length(lengths))):
        batches = [pad_inputs([ids[i] for i in order[s: s + args.batch_size]], tokenizer.pad_token_id)
                   for s in range(0, len(order), args.batch_size)]
        interleaved(step, batches[:1], names, 1)  # warm-up
        seconds, outs = interleaved(step, batches, names, args.repeats)
        diffs = {n: max((a - b).abs().max().item() for a, b in zip(outs[n], outs["padded"])) for n in names}
        table(f"embed, all-MiniLM-L6-v2, {len(texts)} texts, batches of {args.batch_size}, {setting}", seconds,
              sum(lengths), sum(b["input_ids"].numel() for b in batches), diffs)


def train_steps(model, batches, loss_fn, names, repeats, title) -> None:
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-5)
    model.train()

    def step(name, batch):
        loss_fn(batch).backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    interleaved(step, batches[:2], names, 1)  # warm-up
    seconds, _ = interleaved(step, batches, names, repeats)
    table(title, seconds, sum(int(b["attention_mask"].sum()) for b in batches),
          sum(b["input_ids"].numel() for b in batches))


def pretrain(args) -> None:
    from pretrain import build_batches  # bench/pretrain.py: MLM + NSP examples from the treebank

    from bertkit import BertConfig, BertForPreTraining
    from bertkit.pretrain import PretrainingObjective

    ns = argparse.Namespace(max_length=128, batch_size=args.batch_size, warmup=0, steps=args.steps)
    with tempfile.TemporaryDirectory() as tmp:
        batches, vocab_size = build_batches(ns, Path(tmp))
    torch.manual_seed(0)
    model = BertForPreTraining(BertConfig.preset(args.config, vocab_size=vocab_size))
    objective = PretrainingObjective(model)

    def loss(batch):
        out, counts = objective(batch), objective.counts(batch)
        return sum(out.losses[k] / counts[k] for k in out.losses)

    train_steps(model, batches, loss, ["padded", "repad"], args.repeats,
                f"pretraining step, {args.config}, batch {args.batch_size} x up to 128, AdamW")


def finetune(args) -> None:
    from inference import load_sentences

    from bertkit.heads import BertForSequenceClassification

    path = default_model_dir()
    tokenizer = Tokenizer.from_pretrained(path)
    model = BertForSequenceClassification.from_pretrained(path, id2label={0: "a", 1: "b"})
    sentences = load_sentences()[: args.batch_size * args.steps]
    g = torch.Generator().manual_seed(0)
    batches = []
    for s in range(0, len(sentences), args.batch_size):
        enc = tokenizer(sentences[s: s + args.batch_size], truncation=True, max_length=128)
        batch = pad_inputs(enc["input_ids"], tokenizer.pad_token_id)
        batch["labels"] = torch.randint(0, 2, (len(enc["input_ids"]),), generator=g)
        batches.append(batch)
    train_steps(model, batches, lambda b: model(**b).loss, ["padded", "repad"], args.repeats,
                f"fine-tuning step, all-MiniLM-L6-v2 + classifier, {len(sentences)} treebank sentences, "
                f"batches of {args.batch_size}, AdamW")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--what", default="embed,pretrain,finetune")
    p.add_argument("--attention", default="repad,nested,buckets,per_row,blockdiag",
                   help="unpadded attention variants to time in `embed`")
    p.add_argument("--texts", type=int, default=256)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--max-length", type=int, default=256)
    p.add_argument("--config", default="mini", help="pretraining preset (default: mini)")
    p.add_argument("--steps", type=int, default=12, help="training batches per pass")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=torch.get_num_threads())
    args = p.parse_args()
    args.attention = [a for a in args.attention.split(",") if a]
    unknown = set(args.attention) - set(ATTENTION)
    if unknown:
        p.error(f"--attention: unknown {', '.join(sorted(unknown))}; choose from {', '.join(ATTENTION)}")
    torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {args.threads} threads; median of {args.repeats} passes")
    for what in args.what.split(","):
        {"embed": embed, "pretrain": pretrain, "finetune": finetune}[what](args)


if __name__ == "__main__":
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*nested tensors is in prototype.*")
        main()
