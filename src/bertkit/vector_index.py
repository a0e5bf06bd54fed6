"""Semantic search: an index folder of sentence vectors, searched exactly (numpy) or approximately (HNSW).

`bertkit index CORPUS... --out INDEX` embeds every passage of the corpus (text files: a passage per
line, its id the 0-based line number; JSONL: a `text` field and an `id` field kept as given) and
writes the folder:

    manifest.json              what the index holds: model, dimension, count, metric, kind, HNSW
                               parameters, the corpus files (with their sha256) and how far the
                               embedding got; rewritten atomically after every chunk
    texts/PPP.jsonl            one {"id", "text", "file", "line"} record per passage of part PPP (one
                               part per `index` or `index --add` command)
    texts/PPP.offsets.npy      int64 (n + 1,): byte offsets of those records, to read any one at once
    vectors/PPP-CCCCC.npy      float32 (rows, D) unit vectors, CHUNK_SIZE passages per file,
                               memory-mapped for search
    hnsw-N.usearch             the usearch HNSW graph over the first N vectors (approximate indexes)

Every file is written to a temporary name and renamed into place, and the manifest only counts what
is complete on disk, so an interrupted build leaves a valid index: rerunning the same command
continues after the last complete chunk. Search reads the vectors of complete parts only.

Scores are cosine similarities (inner products of unit vectors). Exact search multiplies the query
vectors with every chunk and keeps a running top k; approximate search walks the HNSW graph
(usearch, metric "ip"), whose recall against exact search bench/search_recall.py measures.
"""

from __future__ import annotations

import bisect
import contextlib
import hashlib
import json
import os
import sys
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from bertkit import fileio
from bertkit.embedding import Embedder, cached_embedder
from bertkit.errors import BertkitError, InputError
from bertkit.models import BUILTIN_MODEL, WEIGHT_SUFFIXES, resolve_model
from bertkit.options import plural
from bertkit.settings import HNSW_DEFAULTS, IndexArgs

MANIFEST = "manifest.json"
FORMAT = "bertkit-index"
FORMAT_VERSION = 1
TEXTS, VECTORS = "texts", "vectors"
# Below this many passages `auto` keeps the index exact: numpy over 50k x 384 float32 answers a
# query in a few milliseconds (bench/search_recall.py), and exact search has no recall to lose.
APPROXIMATE_FROM = 50_000
FEW_QUERIES = 8  # up to this many queries, exact search runs BLAS on one thread (_one_blas_thread)
EMBED_SLICE = 512  # texts per Embedder call inside a chunk: what moves the progress bar
Say = Callable[[str], None]


def _stderr(message: str) -> None:
    print(message, file=sys.stderr)


# ---- reading a corpus ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Passage:
    id: str | int
    """As given in JSONL, else the 0-based line number."""
    text: str
    line: int
    """1-based line in its file, for messages."""
    auto_id: bool
    """The id is a line number (ids given in JSONL must be unique across the index)."""


def is_jsonl(path: Path) -> bool:
    return path.suffix.lower() == ".jsonl"


def read_corpus(path: Path, *, text_field: str = "text", id_field: str = "id") -> list[Passage]:
    """The passages of a text file (one per line; a blank line keeps its number and is skipped) or of
    a JSONL file (one object per line with `text_field`, and `id_field` or else the line number)."""
    lines = fileio.read_lines(path)  # a line that is not UTF-8 raises "FILE:LINE: ..."
    if not is_jsonl(path):
        return [Passage(i, line, i + 1, True) for i, line in enumerate(lines) if line and line.strip()]
    passages = []
    for i, line in enumerate(lines):
        if line and line.strip():
            passage = _jsonl_passage(line, f"{path}:{i + 1}", i, text_field, id_field)
            if passage.text.strip():
                passages.append(passage)
    return passages


def _jsonl_passage(line: str, where: str, number: int, text_field: str, id_field: str) -> Passage:
    try:
        record = json.loads(line)
    except json.JSONDecodeError as e:
        raise InputError(f"{where}: not valid JSON ({e.msg}, column {e.colno})") from None
    if not isinstance(record, dict):
        raise InputError(f"{where}: expected a JSON object with a {text_field!r} field")
    if text_field not in record:
        raise InputError(f"{where}: no {text_field!r} field (--text-field names the field with the text)")
    text = record[text_field]
    if not isinstance(text, str):
        raise InputError(f"{where}: {text_field!r} must be a string, got {type(text).__name__}")
    if id_field not in record:
        return Passage(number, text, number + 1, True)
    given = record[id_field]
    if isinstance(given, bool) or not isinstance(given, (str, int)):
        raise InputError(f"{where}: {id_field!r} must be a string or an integer, got {json.dumps(given)}")
    return Passage(given, text, number + 1, False)


def check_unique_ids(files: Sequence[tuple[str, list[Passage]]], taken: dict[Any, str] | None = None) -> None:
    """Ids given in JSONL are unique across the index: the first duplicate names both lines.
    `taken` maps ids already in the index to where they came from."""
    seen = dict(taken or {})
    for name, passages in files:
        for p in passages:
            if p.auto_id:
                continue
            key = (type(p.id).__name__, p.id)  # 1 and "1" are different ids
            where = f"{name}:{p.line}"
            if key in seen:
                raise InputError(f"{where}: duplicate id {json.dumps(p.id)} (first on {seen[key]})")
            seen[key] = where


# ---- exact and approximate top k ---------------------------------------------------------------------


def exact_top_k(chunks: Iterable[np.ndarray], queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Scores (Q, k') and rows (Q, k') of the k best inner products of each query (Q, D) with the
    rows of the chunks, taken in order as one matrix; k' = min(k, rows). Best first; ties by row."""
    Q = len(queries)
    best_scores = np.empty((Q, 0), dtype=np.float32)
    best_rows = np.empty((Q, 0), dtype=np.int64)
    offset = 0
    with _one_blas_thread(Q <= FEW_QUERIES):
        for chunk in chunks:
            scores = queries @ np.asarray(chunk).T  # (Q, n)
            if scores.shape[1] > k:  # the chunk's own top k first: the merge below then stays (Q, 2k)
                top = np.argpartition(-scores, k - 1, axis=1)[:, :k]  # (Q, k)
                scores, rows = np.take_along_axis(scores, top, 1), top + offset
            else:
                rows = np.broadcast_to(np.arange(offset, offset + len(chunk)), scores.shape)
            best_scores, best_rows = _keep_top(np.hstack([best_scores, scores]), np.hstack([best_rows, rows]), k)
            offset += len(chunk)
    order = np.lexsort((best_rows, -best_scores), axis=1)  # last key first: score, then row
    return np.take_along_axis(best_scores, order, 1), np.take_along_axis(best_rows, order, 1)


def _one_blas_thread(enabled: bool):
    """A few queries against a chunk is a matrix-vector product, bound by memory: BLAS threads only
    add their wake-up per chunk, which on a busy 2-core machine made one query over 112k vectors
    take 85-105 ms instead of 15 (bench/search_recall.py). threadpoolctl comes with scikit-learn."""
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:
        return contextlib.nullcontext()
    return threadpool_limits(1, user_api="blas") if enabled else contextlib.nullcontext()


def _keep_top(scores: np.ndarray, rows: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """The k highest of each row of scores (Q, n), unordered, with their rows."""
    if scores.shape[1] <= k:
        return scores, rows
    top = np.argpartition(-scores, k - 1, axis=1)[:, :k]  # (Q, k)
    return np.take_along_axis(scores, top, 1), np.take_along_axis(rows, top, 1)


def _usearch():
    try:
        from usearch import index
    except ImportError:
        raise InputError("approximate search needs usearch: pip install 'bertkit[search]'") from None
    return index


def new_hnsw(dim: int, hnsw: dict[str, int]):
    """An empty usearch HNSW index for unit vectors: inner product ("ip"), so 1 - distance is the cosine."""
    return _usearch().Index(ndim=dim, metric="ip", dtype="f32", connectivity=hnsw["connectivity"],
                            expansion_add=hnsw["expansion_add"], expansion_search=hnsw["expansion_search"])


def add_to_hnsw(graph, chunks: Iterable[np.ndarray], start: int) -> None:
    """Add the chunks' rows, keyed by their row number from `start` on (usearch keys are uint64)."""
    for chunk in chunks:
        graph.add(np.arange(start, start + len(chunk), dtype=np.uint64), np.ascontiguousarray(chunk), threads=0)
        start += len(chunk)


def hnsw_top_k(graph, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Scores (Q, k') and rows (Q, k') from the graph, best first; k' = min(k, size). Approximate."""
    k = min(k, len(graph))
    matches = graph.search(np.ascontiguousarray(queries), k, threads=0)
    keys = np.asarray(matches.keys, dtype=np.int64).reshape(len(queries), -1)  # (Q, k)
    scores = (1.0 - np.asarray(matches.distances, dtype=np.float32)).reshape(len(queries), -1)
    counts = np.asarray(getattr(matches, "counts", [keys.shape[1]] * len(queries)))
    if (counts < k).any():  # a query the graph could not answer fully: no row is -1 in what we return
        keys[np.arange(k)[None, :] >= counts[:, None]] = -1
    return scores[:, :k], keys[:, :k]


# ---- the index folder ---------------------------------------------------------------------------------


def _read_manifest(path: Path) -> dict[str, Any]:
    file = path / MANIFEST
    if not path.exists():
        raise InputError(f"{path}: no such index")
    if not file.is_file():
        raise InputError(f"{path}: not an index (no {MANIFEST}; `bertkit index` writes one)")
    try:
        manifest = json.loads(file.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise InputError(f"{file}: not valid JSON ({e}); the index is damaged, rebuild it") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise InputError(f"{file}: not a bertkit index manifest (no \"format\": \"{FORMAT}\")")
    if manifest.get("format_version") != FORMAT_VERSION:
        raise InputError(f"{file}: index format version {manifest.get('format_version')!r}; this bertkit reads "
                         f"version {FORMAT_VERSION}: rebuild the index")
    for key in ("model", "dimension", "count", "parts", "kind", "settings"):
        if key not in manifest:
            raise InputError(f"{file}: damaged manifest (no {key!r}); rebuild the index")
    return manifest


def _write_manifest(path: Path, manifest: dict[str, Any]) -> None:
    manifest["count"] = sum(p["count"] for p in manifest["parts"] if p["done"])
    fileio.write_text_atomically(path / MANIFEST, json.dumps(manifest, indent=1, ensure_ascii=False) + "\n")


def _chunk_name(part: int, chunk: int) -> str:
    return f"{VECTORS}/{part:03d}-{chunk:05d}.npy"


def _chunk_rows(count: int, chunk_size: int) -> list[int]:
    return [min(chunk_size, count - start) for start in range(0, count, chunk_size)]


class VectorIndex:
    """An index folder opened for search: the manifest, the vectors of its complete parts
    (memory-mapped), the passages' ids and texts, and the HNSW graph when there is one."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self.manifest = _read_manifest(self.path)
        self.parts = [p for p in self.manifest["parts"] if p["done"]]
        if not self.parts:
            pending = self.manifest["parts"][-1] if self.manifest["parts"] else None
            done = f" ({pending['chunks_done']} of {len(pending['chunks'])} chunks embedded)" if pending else ""
            raise InputError(f"{self.path}: unfinished index{done}; rerun the `bertkit index` command that "
                             f"started it to finish it")
        self._starts = [p["start"] for p in self.parts]
        self._graph = None

    @classmethod
    def load(cls, path: str | os.PathLike) -> VectorIndex:
        return cls(path)

    @property
    def unfinished(self) -> str | None:
        """What an interrupted `--add` left undone (search reads the complete parts), or None."""
        last = self.manifest["parts"][-1]
        if last["done"]:
            return None
        names = ", ".join(f["path"] for f in last["files"])
        return (f"{self.path}: the passages of {names} are not searchable yet ({last['chunks_done']} of "
                f"{len(last['chunks'])} chunks embedded); rerun that `bertkit index --add` to finish")

    @property
    def count(self) -> int:
        return int(self.manifest["count"])

    @property
    def dim(self) -> int:
        return int(self.manifest["dimension"])

    @property
    def kind(self) -> str:
        return self.manifest["kind"]

    def files(self) -> list[str]:
        return [f["path"] for p in self.parts for f in p["files"]]

    def chunks(self) -> Iterator[np.ndarray]:
        """The (rows, D) float32 vector chunks of complete parts, in row order, memory-mapped."""
        for p in self.parts:
            for c, rows in enumerate(p["chunks"]):
                yield self._load_chunk(_chunk_name(p["part"], c), rows)

    def _load_chunk(self, name: str, rows: int) -> np.ndarray:
        file = self.path / name
        try:
            chunk = np.load(file, mmap_mode="r", allow_pickle=False)
        except (OSError, ValueError) as e:
            raise InputError(f"{file}: cannot be read ({e}); the index is damaged, rebuild it") from None
        if chunk.shape != (rows, self.dim) or chunk.dtype != np.float32:
            raise InputError(f"{file}: holds {chunk.dtype} {chunk.shape}, the manifest says float32 "
                             f"({rows}, {self.dim}); the index is damaged, rebuild it")
        return chunk

    def graph(self):
        """The HNSW graph, memory-mapped (usearch's view), checked against the manifest."""
        if self._graph is None:
            hnsw = self.manifest["hnsw"]
            file = self.path / hnsw["file"]
            try:
                graph = _usearch().Index.restore(str(file), view=True)
            except (ValueError, RuntimeError, OSError) as e:
                raise InputError(f"{file}: cannot be read ({e}); rebuild the index") from None
            if graph is None or len(graph) != self.count or graph.ndim != self.dim:
                raise InputError(f"{file}: does not match the manifest ({self.count} vectors of dimension "
                                 f"{self.dim}); rebuild the index")
            graph.expansion_search = hnsw["expansion_search"]
            self._graph = graph
        return self._graph

    def search_vectors(self, queries: np.ndarray, k: int = 10, *, exact: bool | None = None,
                       expansion_search: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Query vectors (Q, D) -> scores (Q, k') and rows (Q, k'), best first, k' = min(k, count).
        exact=None: the index's kind (HNSW for an approximate index); True: every vector."""
        if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
            raise InputError(f"-k must be an integer of at least 1, got {k!r}")
        queries = np.asarray(queries, dtype=np.float32).reshape(-1, self.dim)  # (Q, D)
        if exact or (exact is None and self.kind == "exact") or self.manifest.get("hnsw") is None:
            return exact_top_k(self.chunks(), queries, k)
        graph = self.graph()
        if expansion_search is not None:
            graph.expansion_search = expansion_search
        return hnsw_top_k(graph, queries, k)

    def passage(self, row: int) -> dict[str, Any]:
        """{"id", "text"} of a row (plus "file" when the index holds several files)."""
        i = bisect.bisect_right(self._starts, row) - 1
        part = self.parts[i]
        offsets = self._offsets(part["part"])
        local = row - part["start"]
        with open(self.path / f"{TEXTS}/{part['part']:03d}.jsonl", "rb") as f:
            f.seek(int(offsets[local]))
            record = json.loads(f.read(int(offsets[local + 1] - offsets[local])))
        out = {"id": record["id"], "text": record["text"]}
        if len(self.files()) > 1:
            out["file"] = part["files"][record["file"]]["path"]
        return out

    def _offsets(self, part: int) -> np.ndarray:
        return np.load(self.path / f"{TEXTS}/{part:03d}.offsets.npy", mmap_mode="r", allow_pickle=False)

    def embedder(self, model: str | os.PathLike | None = None, *, device: str = "auto",
                 precision: str = "auto") -> Embedder:
        """The index's model, or `model`: the same weights found elsewhere (the index's folder moved);
        a different model's query vectors would not compare with the passages', so it is refused."""
        if model is None:
            try:
                found = resolve_model(self.manifest["model"]).is_dir()
            except BertkitError:
                found = False
            if not found:
                raise InputError(f"{self.path}: the index's model {self.manifest['model']} is not there any more; "
                                 "give --model where it is now")
        else:
            directory = resolve_model(model)
            if not directory.is_dir():
                raise InputError(f"--model {model}: no such model folder")
            if self.manifest.get("model_fingerprint") not in (None, model_fingerprint(directory)):
                raise InputError(f"--model {model}: not the model the index at {self.path} was built with "
                                 f"({self.manifest['model']}); queries and passages must be embedded by one model")
        embedder = _load_embedder(str(model) if model is not None else self.manifest["model"], device, precision)
        if embedder.dim != self.dim:
            raise InputError(f"--model {model}: gives vectors of dimension {embedder.dim}, the index at {self.path} "
                             f"holds dimension {self.dim}")
        return embedder

    def search(self, queries: str | Sequence[str], k: int = 10, *, model: str | os.PathLike | None = None,
               exact: bool | None = None, expansion_search: int | None = None, batch_size: int = 32,
               device: str = "auto", precision: str = "auto"):
        """Top-k passages per query: a list (per query) of [{"id", "score", "text"}, ...], best first;
        a single string query gives one list. device, precision: where and how the queries are embedded."""
        if isinstance(queries, str):
            return self.search([queries], k, model=model, exact=exact, expansion_search=expansion_search,
                               batch_size=batch_size, device=device, precision=precision)[0]
        queries = list(queries)
        embedder = self.embedder(model, device=device, precision=precision)
        vectors = embedder(queries, batch_size=batch_size, max_length=self.manifest["settings"]["max_length"],
                           normalize=True, **prompt_kwargs(embedder, "query"))  # (Q, D)
        scores, rows = self.search_vectors(vectors, k, exact=exact, expansion_search=expansion_search)
        return [[{**self.passage(int(r)), "score": float(s)} for s, r in zip(srow, rrow) if r >= 0]
                for srow, rrow in zip(scores, rows)]

    def add(self, corpus: Sequence[str | os.PathLike], **options: Any) -> VectorIndex:
        """Append passages (`bertkit index --add`); returns the index reopened."""
        return build_index(corpus, out=self.path, add=True, **options)


def _load_embedder(model: str, device: str = "auto", precision: str = "auto") -> Embedder:
    return cached_embedder(str(resolve_model(model)), device, precision)


def prompt_kwargs(embedder: Embedder, kind: str) -> dict[str, str]:
    """prompt_name for the embedder when its model defines a prompt for queries ("query") or for
    passages ("document", "passage" or "corpus", sentence-transformers' usual names); else nothing."""
    prompts = getattr(getattr(embedder, "settings", None), "prompts", None) or {}  # config_sentence_transformers.json
    names = ("query",) if kind == "query" else ("document", "passage", "corpus")
    return next(({"prompt_name": n} for n in names if n in prompts), {})


def search(index: str | os.PathLike | VectorIndex, queries: str | Sequence[str], k: int = 10,
           **options: Any) -> list[list[dict[str, Any]]] | list[dict[str, Any]]:
    """`bertkit search` in Python: [{"id", "score", "text"}, ...] per query, best first (one list
    for a single string). `options`: model, exact, expansion_search, batch_size, device, precision
    (VectorIndex.search)."""
    index = index if isinstance(index, VectorIndex) else VectorIndex(index)
    return index.search(queries, k, **options)


# ---- building -----------------------------------------------------------------------------------------


def build_index(corpus: str | os.PathLike | Sequence[str | os.PathLike], model: str | os.PathLike | None = None,
                *, out: str | os.PathLike, say: Say = _stderr, device: str = "auto", precision: str = "auto",
                **options: Any) -> VectorIndex:
    """`bertkit index` in Python: embed the corpus files into the index folder `out` (options as
    IndexArgs: add, overwrite, batch_size, max_length, exact, approximate, chunk_size, ...), the
    model on `device`, computing in `precision`."""
    files = [corpus] if isinstance(corpus, (str, os.PathLike)) else list(corpus)
    args = IndexArgs(corpus=[Path(f) for f in files], out=Path(out),
                     model=None if model is None else str(model), **options)
    return run_index(args, say=say, device=device, precision=precision)


def run_index(a: IndexArgs, *, say: Say = _stderr, device: str = "auto", precision: str = "auto") -> VectorIndex:
    """Read and check the corpus, then embed chunk by chunk, resuming an unfinished build of the
    same corpus; then build or extend the HNSW graph when the index is approximate."""
    files = [fileio.check_input_file(f) for f in a.corpus]
    read = [(str(f), read_corpus(f, text_field=a.text_field, id_field=a.id_field)) for f in files]
    for name, passages in read:
        if not passages:
            raise InputError(f"{name}: no passages (a text file has one per line; JSONL a {a.text_field!r} field)")
    manifest, part = _start_or_resume(a, files, read, say)
    embedder = _load_embedder(_model_name(a.model) if a.model is not None else manifest["model"], device, precision)
    if embedder.dim != manifest["dimension"]:
        raise InputError(f"--model {a.model}: gives vectors of dimension {embedder.dim}, the index at {a.out} "
                         f"holds dimension {manifest['dimension']}")
    texts = [p.text for _, passages in read for p in passages]
    _embed_chunks(a, manifest, part, texts, embedder, say)
    _finish(a, manifest, part, say)
    return VectorIndex(a.out)


def model_fingerprint(directory: Path) -> str:
    """sha256 over the model's config.json, vocab.txt and weight files: the same model, wherever it lies."""
    digest = hashlib.sha256()
    for file in sorted(directory.iterdir()):
        if file.name in ("config.json", "vocab.txt") or file.suffix in WEIGHT_SUFFIXES:
            digest.update(file.name.encode() + b"\0")
            with open(file, "rb") as f:
                for block in iter(lambda: f.read(1 << 20), b""):
                    digest.update(block)
    return digest.hexdigest()


def _model_name(model: str | None) -> str:
    """How the manifest names the model: the built-in's or a models-folder name as given, else an
    absolute path (so that search finds it from any working directory)."""
    if model is None:
        return BUILTIN_MODEL
    path = Path(model).expanduser()
    return str(path.resolve()) if path.exists() else model


def _file_entry(path: Path, passages: list[Passage]) -> dict[str, Any]:
    return {"path": str(path), "absolute": str(path.resolve()), "format": "jsonl" if is_jsonl(path) else "text",
            "passages": len(passages), "sha256": hashlib.sha256(path.read_bytes()).hexdigest()}


def _settings(a: IndexArgs) -> dict[str, Any]:
    """What makes two builds of a part the same: a resumed build must use what the first run used."""
    return {"max_length": a.max_length, "chunk_size": a.chunk_size, "text_field": a.text_field,
            "id_field": a.id_field}


def _hnsw_params(a: IndexArgs, manifest: dict[str, Any]) -> dict[str, int]:
    """The HNSW parameters asked for; those not given are the index's own (--add), else the defaults."""
    own = manifest["hnsw"] or {}
    return {k: getattr(a, k) if getattr(a, k) is not None else own.get(k, default) for k, default in HNSW_DEFAULTS.items()}


def _start_or_resume(a: IndexArgs, files: list[Path], read: list[tuple[str, list[Passage]]],
                     say: Say) -> tuple[dict[str, Any], dict[str, Any]]:
    """The manifest and the part to embed: a new index, an unfinished part of the same corpus to
    resume, or (--add) a new part of an existing index."""
    entries = [_file_entry(f, passages) for f, (_, passages) in zip(files, read)]
    has_manifest = (a.out / MANIFEST).exists()
    if a.overwrite or not has_manifest:
        _check_fresh_out(a, has_manifest)
        clear_index(a.out)
        manifest = _new_manifest(a, read)
    else:
        manifest = _read_manifest(a.out)
        resumed = _resumable_part(a, manifest, entries)
        if resumed is not None:
            say(f"resuming the unfinished index in {a.out}: {resumed['chunks_done']} of {len(resumed['chunks'])} "
                f"chunks done, continuing from passage {resumed['chunks_done'] * resumed['chunk_size']:,}")
            return manifest, resumed
        _check_add(a, manifest, entries)
    check_unique_ids(read, _ids_in(a.out, manifest))
    part = _new_part(a, manifest, entries, read)
    manifest["parts"].append(part)
    _write_manifest(a.out, manifest)
    return manifest, part


def _check_fresh_out(a: IndexArgs, has_manifest: bool) -> None:
    if a.add and not has_manifest:
        raise InputError(f"--add: {a.out} is no index yet (no {MANIFEST}); build it first without --add")
    if a.overwrite or not a.out.exists():
        return
    if not a.out.is_dir():
        raise InputError(f"--out {a.out}: is a file, not a directory")
    if any(a.out.iterdir()):
        raise InputError(f"--out {a.out}: exists and is not an index (no {MANIFEST}); choose a new folder, or "
                         f"--overwrite to write the index into it")


def clear_index(out: Path) -> None:
    """What an index consists of, removed (--overwrite); nothing else the folder holds."""
    import shutil

    for name in (TEXTS, VECTORS):
        if (out / name).is_dir():
            shutil.rmtree(out / name)
    for file in [out / MANIFEST, *out.glob("hnsw-*.usearch")] if out.is_dir() else []:
        file.unlink(missing_ok=True)


def _new_manifest(a: IndexArgs, read: list[tuple[str, list[Passage]]]) -> dict[str, Any]:
    # the package's version without importing bertkit/__init__.py (a layer above this module); Python
    # imported the package before this module
    version = sys.modules["bertkit"].__version__
    directory = resolve_model(a.model)
    embedder = _load_embedder(_model_name(a.model), "cpu")  # for its dimension and prompts only
    return {"format": FORMAT, "format_version": FORMAT_VERSION, "bertkit_version": version,
            "model": _model_name(a.model), "model_fingerprint": model_fingerprint(directory),
            "dimension": embedder.dim, "count": 0, "normalized": True,
            "metric": "cosine (inner product of unit vectors)", "document_prompt":
            prompt_kwargs(embedder, "document").get("prompt_name"), "kind": "exact", "requested_kind": _kind(a),
            "hnsw": None, "settings": {"max_length": a.max_length}, "parts": []}


def _kind(a: IndexArgs) -> str:
    return "exact" if a.exact else "approximate" if a.approximate else "auto"


def _resumable_part(a: IndexArgs, manifest: dict[str, Any], entries: list[dict[str, Any]]) -> dict[str, Any] | None:
    """The unfinished last part when it is the same corpus (files and contents) built the same way."""
    if not manifest["parts"] or manifest["parts"][-1]["done"]:
        return None
    part = manifest["parts"][-1]
    same_files = [(f["absolute"], f["sha256"]) for f in part["files"]] == [(e["absolute"], e["sha256"])
                                                                             for e in entries]
    if same_files and part["settings"] == _settings(a) and (a.model is None or _same_model(a, manifest)):
        return part
    names = ", ".join(f["path"] for f in part["files"])
    raise InputError(f"--out {a.out}: holds an unfinished build of {names} ({part['chunks_done']} of "
                     f"{len(part['chunks'])} chunks); rerun that command to finish it, or --overwrite to start over")


def _same_model(a: IndexArgs, manifest: dict[str, Any]) -> bool:
    return model_fingerprint(resolve_model(a.model)) == manifest["model_fingerprint"]


def _check_add(a: IndexArgs, manifest: dict[str, Any], entries: list[dict[str, Any]]) -> None:
    if not a.add:
        raise InputError(f"--out {a.out}: already an index of {plural(manifest['count'], 'passage')}; --add to "
                         f"append to it, or --overwrite to replace it")
    if a.model is not None and not _same_model(a, manifest):
        raise InputError(f"--model {a.model}: not the model the index at {a.out} was built with "
                         f"({manifest['model']}); an index holds one model's vectors")
    if a.max_length is not None and a.max_length != manifest["settings"]["max_length"]:
        raise InputError(f"--max-length {a.max_length}: the index was built with --max-length "
                         f"{manifest['settings']['max_length']}; an index embeds every passage the same way")
    known = {f["sha256"]: f["path"] for p in manifest["parts"] for f in p["files"]}
    for e in entries:
        if e["sha256"] in known:
            raise InputError(f"{e['path']}: already in the index (as {known[e['sha256']]})")


def _ids_in(out: Path, manifest: dict[str, Any]) -> dict[Any, str]:
    """Ids given in JSONL by the index's complete parts -> 'FILE:LINE' (for --add's duplicate check)."""
    taken = {}
    for part in manifest["parts"]:
        if not part["done"]:
            continue
        with open(out / f"{TEXTS}/{part['part']:03d}.jsonl", encoding="utf-8") as f:
            for line in f:
                r = json.loads(line)
                if not r.get("auto_id"):
                    taken[(type(r["id"]).__name__, r["id"])] = f"{part['files'][r['file']]['path']}:{r['line']}"
    return taken


def _new_part(a: IndexArgs, manifest: dict[str, Any], entries: list[dict[str, Any]],
              read: list[tuple[str, list[Passage]]]) -> dict[str, Any]:
    """Write the part's texts and offsets now (small next to the vectors); its vectors follow."""
    number = len(manifest["parts"])
    lines = [json.dumps({"id": p.id, "text": p.text, "file": i, "line": p.line,
                         **({"auto_id": True} if p.auto_id else {})}, ensure_ascii=False).encode() + b"\n"
             for i, (_, passages) in enumerate(read) for p in passages]
    offsets = np.zeros(len(lines) + 1, dtype=np.int64)
    offsets[1:] = np.cumsum([len(line) for line in lines])
    with fileio.atomic_write(a.out / f"{TEXTS}/{number:03d}.jsonl", "wb") as f:
        f.writelines(lines)
    with fileio.atomic_write(a.out / f"{TEXTS}/{number:03d}.offsets.npy", "wb") as f:
        np.save(f, offsets)
    start = sum(p["count"] for p in manifest["parts"])
    return {"part": number, "files": entries, "settings": _settings(a), "start": start, "count": len(lines),
            "chunk_size": a.chunk_size,
            "chunks": _chunk_rows(len(lines), a.chunk_size), "chunks_done": 0, "done": False}


def _embed_chunks(a: IndexArgs, manifest: dict[str, Any], part: dict[str, Any], texts: list[str],
                  embedder: Embedder, say: Say) -> None:
    """Embed the chunks not yet on disk; after each, the manifest records it (so a rerun resumes)."""
    size = part["chunk_size"]
    progress = a.progress if a.progress is not None else sys.stderr.isatty()
    done_rows = part["chunks_done"] * size
    from tqdm import tqdm

    with tqdm(total=len(texts), initial=done_rows, desc="indexing", unit="passage", disable=not progress,
              file=sys.stderr) as bar:
        for c in range(part["chunks_done"], len(part["chunks"])):
            chunk = texts[c * size : c * size + part["chunks"][c]]
            vectors = np.zeros((len(chunk), manifest["dimension"]), dtype=np.float32)  # (rows, D)
            for s in range(0, len(chunk), EMBED_SLICE):
                vectors[s : s + EMBED_SLICE] = embedder(chunk[s : s + EMBED_SLICE], batch_size=a.batch_size,
                                                        max_length=manifest["settings"]["max_length"],
                                                        normalize=True, **prompt_kwargs(embedder, "document"))
                bar.update(len(chunk[s : s + EMBED_SLICE]))
            save_chunk(a.out / _chunk_name(part["part"], c), vectors)
            part["chunks_done"] = c + 1
            _write_manifest(a.out, manifest)


def save_chunk(path: Path, vectors: np.ndarray) -> None:
    with fileio.atomic_write(path, "wb") as f:
        np.save(f, vectors)


def _finish(a: IndexArgs, manifest: dict[str, Any], part: dict[str, Any], say: Say) -> None:
    """Exact, or build/extend the HNSW graph; then the part counts (the manifest says done)."""
    requested = _kind(a) if (a.exact or a.approximate) else manifest["requested_kind"]
    total = sum(p["count"] for p in manifest["parts"])
    kind = requested if requested != "auto" else ("approximate" if total >= APPROXIMATE_FROM else "exact")
    old = manifest["hnsw"]
    if kind == "approximate":
        manifest["hnsw"] = _write_graph(a, manifest, part, total, say)
    else:
        manifest["hnsw"] = None
    manifest.update(kind=kind, requested_kind=requested)
    part["done"] = True
    _write_manifest(a.out, manifest)
    if old and (manifest["hnsw"] is None or old["file"] != manifest["hnsw"]["file"]):
        (a.out / old["file"]).unlink(missing_ok=True)  # the manifest no longer names it


def _write_graph(a: IndexArgs, manifest: dict[str, Any], part: dict[str, Any], total: int, say: Say) -> dict:
    """Extend the graph of the complete parts with the new part's vectors when its parameters are
    those asked for; else build one over every vector. Saved under a new name, then renamed."""
    import time

    params = _hnsw_params(a, manifest)
    old = manifest["hnsw"]
    index = VectorIndex.__new__(VectorIndex)  # the chunks of every part, this one included
    index.path, index.manifest, index.parts = a.out, manifest, [p for p in manifest["parts"] if p["done"] or p is part]
    start = time.perf_counter()
    same_graph = old and all(old[k] == params[k] for k in ("connectivity", "expansion_add"))  # ef: search only
    if same_graph and old["count"] == part["start"]:
        graph = _usearch().Index.restore(str(a.out / old["file"]))
        add_to_hnsw(graph, (index._load_chunk(_chunk_name(part["part"], c), rows)
                            for c, rows in enumerate(part["chunks"])), part["start"])
    else:
        graph = new_hnsw(manifest["dimension"], params)
        add_to_hnsw(graph, index.chunks(), 0)
    name = f"hnsw-{total}.usearch"
    tmp = fileio.temporary_name(a.out / name)
    try:
        graph.save(str(tmp))
        os.replace(tmp, a.out / name)
    except (OSError, RuntimeError) as e:
        tmp.unlink(missing_ok=True)
        raise InputError(f"{a.out / name}: cannot be written ({e})") from None
    seconds = time.perf_counter() - start
    say(f"HNSW graph of {plural(total, 'vector')} built in {seconds:.1f} s "
        f"(connectivity {params['connectivity']}, expansion_add {params['expansion_add']})")
    return {**params, "file": name, "count": total, "build_seconds": round(seconds, 2)}


# ---- `bertkit search` output ----------------------------------------------------------------------------


def format_results(query: str, results: list[dict[str, Any]], *, width: int = 100) -> str:
    """Human output: the query, then one line per result: rank, score, id, text (shortened)."""
    lines = [f"query: {query}"]
    for rank, r in enumerate(results, start=1):
        text = " ".join(r["text"].split())
        text = text if len(text) <= width else text[: width - 1] + "…"
        where = f"{r['file']}:{r['id']}" if "file" in r else str(r["id"])
        lines.append(f"{rank:4d}  {r['score']:.4f}  {where}  {text}")
    return "\n".join(lines)


def json_line(query: str, results: list[dict[str, Any]]) -> str:
    """--json: {"query": ..., "results": [{"id", "score", "text"}, ...]} on one line."""
    rows = [{"id": r["id"], "score": round(r["score"], 6), "text": r["text"],
             **({"file": r["file"]} if "file" in r else {})} for r in results]
    return json.dumps({"query": query, "results": rows}, ensure_ascii=False)


