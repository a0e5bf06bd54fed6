"""torch.compile, SDPA backends and thread counts on the inference path, side by side.

all-MiniLM-L6-v2 (bertkit's built-in model), fp32, a Penn Treebank mix (single sentences and
passages of 2-8 sentences, bench/inference.py's), length-sorted batches as the Embedder makes
them; each variant turns a batch into normalised mean-pooled vectors:

  eager           today's path: SentenceEncoder, unpadded (no compute on padding)
  eager-sdpa-math / eager-sdpa-flash   the same under sdpa_kernel(MATH) / sdpa_kernel(FLASH_ATTENTION)
  eager-1thread   the same with torch.set_num_threads(1) (set around each batch)
  padded-b16      bertkit.compiled.encode_padded, eager, each batch padded up to its bucket
  compiled-b16    the same compiled, dynamic=False: one graph per bucket (bertkit.compiled)
  compiled-b16-freeze   the same with inductor's freezing (weights folded in as constants)
  compiled-b16-autotune mode="max-autotune-no-cudagraphs"
  compiled-dynamic      compiled once with dynamic=True, batches padded to their longest row only
  compiled-unpadded     the unpadded path with every layer compiled (dynamic=True, one graph)

Each variant first makes one untimed pass over every batch (where compiling happens: its wall
time, less a timed pass, is the compile cost), then --repeats timed passes, the variants taking
turns batch by batch (alternating which goes first) so that the shared machine's load hits all
alike. Reported: the median pass, real tokens/s, the ratio to eager, the largest |difference| of
the vectors to eager, the compile seconds, and after how many texts compiling pays for itself
(compile seconds / seconds saved per text).

    OMP_NUM_THREADS=2 python bench/compile_inference.py --threads 2 --texts 512 \
        --variants eager,padded-b16,compiled-b16,compiled-dynamic

Measured 2026-12-01 on the shared 2-core CPU (load average 13-19 from other work throughout:
absolute tok/s are far below an idle machine; the ratios come from the turn-taking), torch 2.13,
fp32, max|diff| to eager <= 2.5e-7 for every variant:
  512 texts (16 batches, T 13..256), OMP_WAIT_POLICY=PASSIVE, 2 threads, 3-4 passes:
    padded-b16 0.90x, compiled-b16 0.93x (8 graphs, 125 s to compile: never pays; 2,000 texts 0.47x),
    compiled-unpadded 1.06x (one graph, 76 s cold: pays after ~25k texts; 2,000 texts 0.62x)
  160 texts (T 29, 33, 38, 126, 256), 3 passes: compiled-dynamic 0.95x (53 s), compiled-b16-freeze
    0.99x (67 s); at 1 thread compiled-b16 0.93x, freeze 0.92x, padded-b16 0.88x
  64 texts (T 29, 71), 5 passes: compiled-b16-autotune 0.92x (max-autotune-no-cudagraphs, 35 s)
  SDPA: eager-sdpa-math 0.64x, eager-sdpa-flash 0.97x (the default already picks the flash kernel)
  threads (default OMP spin-waiting, load ~17): eager-1thread 1.97x the 2-thread eager; in separate
    processes taking turns, OMP_WAIT_POLICY=PASSIVE brought 2 threads from 17-22 s to 9.5-13 s
    (1 thread 8.3-10.9 s, GOMP_SPINCOUNT=10000 11.3-12.4 s); set_num_interop_threads(1): no change
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
import warnings
from pathlib import Path

import torch

from bertkit.compiled import CompileOptions, bucket_length, compiled_encoder, encode_padded, pad_to
from bertkit.embedding import Embedder, length_batches
from bertkit.padding import pad_inputs
from bertkit.sentence import mean_tokens

sys.path.insert(0, str(Path(__file__).parent))
from inference import build_texts  # noqa: E402  (bench/inference.py: the same text mix)


def padded_variant(embedder: Embedder, encode, *, bucketed: bool):
    """batch -> vectors through `encode(ids, types, mask)` on inputs padded to the batch's buckets."""
    pad_id, limit = embedder.tokenizer.pad_token_id, embedder.model.config.max_position_embeddings

    def run(batch):
        B, T = batch["input_ids"].shape
        rows, tokens = (bucket_length(B, 1), bucket_length(T, 16, limit)) if bucketed else (B, T)
        big = pad_to(batch, rows, tokens, pad_id)
        hidden = encode(big["input_ids"], big["token_type_ids"], big["attention_mask"])[:B, :T]  # (B, T, C)
        return torch.nn.functional.normalize(mean_tokens(hidden, batch["attention_mask"]), dim=-1)  # (B, C)
    return run


def eager_variant(embedder: Embedder, context=None, threads: int | None = None):
    def run(batch):
        before = torch.get_num_threads()
        if threads:
            torch.set_num_threads(threads)
        try:
            if context is None:
                return embedder.model(**batch)
            with context():
                return embedder.model(**batch)
        finally:
            torch.set_num_threads(before)
    return run


def unpadded_compiled_variant(embedder: Embedder):
    """The unpadded path with each layer compiled (dynamic=True: one graph for every R and L, shared
    by all layers): fusion without computing padding. Bench-only; model.py's own loop eager."""
    import bertkit.model as M

    bert = embedder.model.bert
    step = torch.compile(lambda layer, x, u: layer(x, u)[0], dynamic=True)

    def run(batch):
        ids, types, mask = batch["input_ids"], batch["token_type_ids"], batch["attention_mask"]
        B, T = ids.shape
        u = M.unpad(mask)
        x = bert.embeddings(ids.reshape(-1)[u.indices], types.reshape(-1)[u.indices], u.positions)  # (R, C)
        for layer in bert.layers:
            x = step(layer, x, u)  # (R, C)
        hidden = M.pad_back(x, u, B, T)  # (B, T, C)
        return torch.nn.functional.normalize(mean_tokens(hidden, mask), dim=-1)
    return run


def make_variants(names: list[str], embedder: Embedder) -> dict:
    from torch.nn.attention import SDPBackend, sdpa_kernel

    bert = embedder.model.bert
    out = {}
    for name in names:
        if name == "eager":
            out[name] = eager_variant(embedder)
        elif name == "eager-sdpa-math":
            out[name] = eager_variant(embedder, lambda: sdpa_kernel(SDPBackend.MATH))
        elif name == "eager-sdpa-flash":
            out[name] = eager_variant(embedder, lambda: sdpa_kernel(SDPBackend.FLASH_ATTENTION))
        elif name == "eager-1thread":
            out[name] = eager_variant(embedder, threads=1)
        elif name == "padded-b16":
            out[name] = padded_variant(embedder, lambda i, t, m: encode_padded(bert, i, t, m), bucketed=True)
        elif name == "compiled-b16":
            out[name] = padded_variant(embedder, compiled_encoder(bert), bucketed=True)
        elif name == "compiled-b16-autotune":
            out[name] = padded_variant(embedder, compiled_encoder(bert, CompileOptions(mode="max-autotune-no-cudagraphs")),
                                       bucketed=True)
        elif name == "compiled-b16-freeze":
            fn = torch.compile(lambda i, t, m: encode_padded(bert, i, t, m), dynamic=False, options={"freezing": True})
            out[name] = padded_variant(embedder, fn, bucketed=True)
        elif name == "compiled-unpadded":
            out[name] = unpadded_compiled_variant(embedder)
        elif name == "compiled-dynamic":
            out[name] = padded_variant(embedder, compiled_encoder(bert, CompileOptions(dynamic=True)), bucketed=False)
        else:
            sys.exit(f"unknown variant {name}")
    return out


def one_pass(run, batches) -> tuple[float, list]:
    start = time.perf_counter()
    outs = [run(b) for b in batches]
    return time.perf_counter() - start, outs


def interleaved(variants: dict, batches: list, repeats: int) -> dict[str, list[list[float]]]:
    """Seconds per variant, per repeat, per batch: the variants take turns batch by batch."""
    names = list(variants)
    times = {n: [[0.0] * len(batches) for _ in range(repeats)] for n in names}
    for r in range(repeats):
        for i, batch in enumerate(batches):
            order = names if (r + i) % 2 == 0 else names[::-1]
            for n in order:
                start = time.perf_counter()
                variants[n](batch)
                times[n][r][i] = time.perf_counter() - start
    return times


def per_shape(times: dict, batches: list) -> None:
    """Each batch's median seconds per variant, as a ratio to the first variant's."""
    names = list(times)
    print("per batch (B x T): median ms, then each variant's ratio to " + names[0])
    for i, b in enumerate(batches):
        meds = {n: statistics.median(rep[i] for rep in times[n]) for n in names}
        ratios = "  ".join(f"{n} {meds[names[0]] / meds[n]:.2f}x" for n in names[1:])
        print(f"  {tuple(b['input_ids'].shape)}: {meds[names[0]] * 1000:.0f} ms  {ratios}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--texts", type=int, default=512)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--variants", default="eager,padded-b16,compiled-b16,compiled-dynamic")
    ap.add_argument("--only-lengths", default="", help="keep only batches whose longest row is in these ranges, e.g. 1-40,100-140")
    ap.add_argument("--run-texts", type=int, default=2000, help="the realistic run the payoff is computed for")
    args = ap.parse_args()
    warnings.filterwarnings("ignore")
    torch.set_num_threads(args.threads)
    embedder = Embedder.from_pretrained(None, device="cpu")
    rows, _ = embedder.encode(build_texts(args.texts, args.seed))
    pad_id = embedder.tokenizer.pad_token_id
    groups = length_batches([len(r) for r in rows], args.batch_size)
    batches = [pad_inputs([rows[i] for i in g], pad_id, token_types=[[0] * len(rows[i]) for i in g]) for g in groups]
    if args.only_lengths:
        spans = [tuple(map(int, s.split("-"))) for s in args.only_lengths.split(",")]
        batches = [b for b in batches if any(lo <= b["input_ids"].shape[1] <= hi for lo, hi in spans)]
    n_texts = sum(b["input_ids"].shape[0] for b in batches)
    real = sum(int(b["attention_mask"].sum()) for b in batches)
    print(f"{n_texts} texts, {len(batches)} batches, longest rows {[b['input_ids'].shape[1] for b in batches]}, "
          f"{real} real tokens, threads {args.threads}, OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS')}, "
          f"torch {torch.__version__}", flush=True)
    print(f"load before: {os.getloadavg()}", flush=True)
    variants = make_variants(args.variants.split(","), embedder)
    first, results = {}, {}
    with torch.inference_mode():
        for name, run in variants.items():
            first[name], results[name] = one_pass(run, batches)
            print(f"  {name}: first pass {first[name]:.1f}s", flush=True)
        per_batch = interleaved(variants, batches, args.repeats)
    times = {n: [sum(rep) for rep in reps] for n, reps in per_batch.items()}
    print(f"load after: {os.getloadavg()}")
    base = statistics.median(times["eager"]) if "eager" in times else None
    ref = results.get("eager")
    print(f"{'variant':24} {'median s':>9} {'tok/s':>7} {'vs eager':>8} {'max|diff|':>9} {'compile s':>9} "
          f"{'pays after':>10} {f'{args.run_texts}-text run':>14}")
    for name in variants:
        med = statistics.median(times[name])
        diff = max(float((a - b).abs().max()) for a, b in zip(results[name], ref)) if ref else float("nan")
        compile_s = max(first[name] - med, 0.0) if name.startswith("compiled") else 0.0
        ratio = base / med if base else float("nan")
        pays, run_ratio = "-", float("nan")
        if base:
            saved = (base - med) / n_texts
            pays = f"{compile_s / saved:.0f}" if saved > 0 and compile_s > 1 else ("never" if compile_s > 1 else "-")
            run_ratio = (base * args.run_texts / n_texts) / (compile_s + med * args.run_texts / n_texts)
        print(f"{name:24} {med:9.2f} {real / med:7.0f} {ratio:7.2f}x {diff:9.1e} {compile_s:9.1f} {pays:>10} "
              f"{run_ratio:13.2f}x")
    per_shape(per_batch, batches)
    print("  passes (s): " + "; ".join(f"{n} {', '.join(f'{t:.2f}' for t in times[n])}" for n in variants))


if __name__ == "__main__":
    main()
