"""Model FLOPs utilisation (MFU): BERT pretraining and fine-tuning throughput against the device's peak,
and against transformers on the same batches.

Model FLOPs of a training step, summed over its sequences (row i with t_i real tokens):

    6 * N * t_i  +  12 * L * C * t_i**2  +  heads

N: the encoder's matrix-multiply weights, L * (4 C^2 + 2 C F) (Q, K, V, output; the two FFN
matrices; embeddings, biases and LayerNorms are lookups or O(C) and not counted). 6 = 2 FLOPs a
multiply-add, times 3 for forward + backward (Kaplan et al. 2020, "Scaling Laws for Neural Language
Models", §2.1 and Table 1). 12 * L * C * T per token is attention's QK^T and AV (2 * 2 * T * C a
layer forward, times 3), as in Chowdhery et al. 2022 (PaLM), appendix B, with T the row's own
length. Heads: masked LM's transform (C^2) and decoder (C V) for each masked token, the pooler
(C^2) and its classifier (NSP: 2 C; fine-tuning: C K) for each sequence, times 6. Inference would be
2 N + 4 L C T (forward only). These are *model* FLOPs: what the maths needs, whatever an
implementation spends (a recomputed activation or a decoder run on unmasked tokens does not count),
so MFU = achieved model FLOP/s / peak compares implementations fairly.

Both sides (bertkit through its pretraining objective; transformers' BertForPreTraining and
BertForSequenceClassification with SDPA attention) train the same config from the same weights on
the same batches (synthetic: random token ids, BERT's 15% of positions selected for MLM, full rows
of --max-length for pretraining as packed pretraining data has them; rows of mixed length for
fine-tuning), with AdamW (fused on CUDA) and the same precision. The batches are on the device
before timing; on CUDA the clock stops after a synchronize.

    python bench/mfu.py --device cuda --config base                   # BERT-base, seq 128, bf16 on a GPU
    python bench/mfu.py --quick                                        # a tiny smoke run on the CPU
"""

from __future__ import annotations

import argparse
import contextlib
import json
import statistics
import tempfile
import time
from pathlib import Path

import torch

# Dense peak TFLOP/s by (name fragment, precision), from the vendors' datasheets (without sparsity).
# fp32 is true fp32 (PyTorch's default matmul precision "highest", no TF32).
PEAK_TFLOPS = {
    ("H200", "bf16"): 989.4, ("H100 PCIe", "bf16"): 756.0, ("H100", "bf16"): 989.4, ("A100", "bf16"): 312.0,
    ("H200", "fp32"): 66.9, ("H100 PCIe", "fp32"): 51.2, ("H100", "fp32"): 66.9, ("A100", "fp32"): 19.5,
}


def peak_tflops(device_name: str, precision: str) -> float | None:
    """The table's peak for a device name such as 'NVIDIA H100 80GB HBM3' (the most specific entry wins)."""
    found = [(len(k), v) for (k, p), v in PEAK_TFLOPS.items() if p == precision and k in device_name]
    return max(found)[1] if found else None


# ---- model FLOPs ------------------------------------------------------------------------------------


def encoder_matmul_params(config) -> int:
    """N: Q, K, V, output and the two feed-forward matrices of every layer."""
    C, F = config.hidden_size, config.intermediate_size
    return config.num_hidden_layers * (4 * C * C + 2 * C * F)


def training_flops(config, lengths: list[int], *, masked: int, head: str) -> float:
    """Model FLOPs of one training step over rows of `lengths` real tokens (see the module docstring).
    head: "pretraining" (MLM on `masked` tokens + NSP) or "classify" (num_labels classes)."""
    N, L, C = encoder_matmul_params(config), config.num_hidden_layers, config.hidden_size
    encoder = sum(6 * N * t + 12 * L * C * t * t for t in lengths)
    if head == "pretraining":
        heads = 6 * masked * (C * C + C * config.vocab_size) + 6 * len(lengths) * (C * C + 2 * C)
    else:
        heads = 6 * len(lengths) * (C * C + C * config.num_labels)
    return float(encoder + heads)


def inference_flops(config, lengths: list[int]) -> float:
    """Forward only: 2 N + 4 L C T per token (encoder; heads left out)."""
    N, L, C = encoder_matmul_params(config), config.num_hidden_layers, config.hidden_size
    return float(sum(2 * N * t + 4 * L * C * t * t for t in lengths))


# ---- batches ----------------------------------------------------------------------------------------


def pretraining_batches(n: int, batch_size: int, T: int, vocab: int, seed: int = 0) -> list[dict]:
    """Full rows of T tokens, two segments, 15% of the non-special positions selected (80/10/10 is
    the data's business; the FLOPs and the work are the same)."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n):
        ids = torch.randint(5, vocab, (batch_size, T), generator=g)
        ids[:, 0], ids[:, -1] = 2, 3
        types = (torch.arange(T) >= T // 2).long().expand(batch_size, T).clone()
        selected = torch.rand(batch_size, T, generator=g) < 0.15
        selected[:, 0] = selected[:, -1] = False
        labels = torch.where(selected, ids, torch.full_like(ids, -100))
        ids = torch.where(selected, torch.full_like(ids, 4), ids)
        out.append({"input_ids": ids, "token_type_ids": types, "attention_mask": torch.ones_like(ids),
                    "labels": labels, "next_sentence_label": torch.randint(0, 2, (batch_size,), generator=g)})
    return out


def finetuning_batches(n: int, batch_size: int, T: int, vocab: int, labels: int, seed: int = 1) -> list[dict]:
    """Rows of mixed length (T/8..T real tokens), right-padded: what classification data looks like."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n):
        lengths = torch.randint(max(2, T // 8), T + 1, (batch_size,), generator=g)
        mask = (torch.arange(T)[None, :] < lengths[:, None]).long()  # (B, T)
        ids = torch.randint(5, vocab, (batch_size, T), generator=g) * mask
        out.append({"input_ids": ids, "token_type_ids": torch.zeros_like(ids), "attention_mask": mask,
                    "labels": torch.randint(0, labels, (batch_size,), generator=g)})
    return out


# ---- one side's training step -----------------------------------------------------------------------


def bertkit_pretraining(model):
    from bertkit.pretrain import PretrainingObjective

    objective = PretrainingObjective(model)

    def loss(batch):
        out = objective(batch)
        counts = objective.counts(batch)  # computed from the labels; a sync on CUDA, as in a real run
        return sum(out.losses[k] / counts[k] for k in out.losses)

    return loss


def transformers_loss(model):
    def loss(batch):
        return model(**batch).loss

    return loss


def bertkit_classify_loss(model):
    def loss(batch):
        return model(batch["input_ids"], batch["token_type_ids"], batch["attention_mask"],
                     labels=batch["labels"]).loss

    return loss


def timed(loss_of, model, batches, warmup: int, device: torch.device, autocast) -> float:
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=device.type == "cuda")

    def step(batch):
        with autocast():
            loss = loss_of(batch)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    for b in batches[:warmup]:
        step(b)
    _sync(device)
    start = time.perf_counter()
    for b in batches[warmup:]:
        step(b)
    _sync(device)
    return time.perf_counter() - start


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


# ---- the run ----------------------------------------------------------------------------------------


def run_pair(name: str, ours, ref, loss_fns, batches, flops_per_step, args, device, autocast) -> dict:
    """Time both sides (alternating who goes first), report tokens/s, TFLOP/s, MFU and the ratio."""
    times: dict[str, list[float]] = {"bertkit": [], "transformers": []}
    models = {"bertkit": ours, "transformers": ref}
    for r in range(args.repeats):
        for side in (list(times) if r % 2 == 0 else list(reversed(times))):
            times[side].append(timed(loss_fns[side], models[side], batches, args.warmup, device, autocast))
    timed_batches = batches[args.warmup:]
    tokens = sum(int(b["attention_mask"].sum()) for b in timed_batches)
    flops = sum(flops_per_step(b) for b in timed_batches)
    rows = {}
    for side, ts in times.items():
        seconds = statistics.median(ts)
        tflops = flops / seconds / 1e12
        rows[side] = {"seconds": seconds, "tokens_per_s": tokens / seconds, "tflops": tflops,
                      "mfu": tflops / args.peak if args.peak else None}
    rows["bertkit"]["ratio"] = rows["transformers"]["seconds"] / rows["bertkit"]["seconds"]
    return {"what": name, **rows}


def print_table(results: list[dict], header: str) -> None:
    print(header)
    print("| run | side | real tokens/s | model TFLOP/s | MFU | ratio |")
    print("|---|---|---|---|---|---|")
    for r in results:
        for side in ("bertkit", "transformers"):
            x = r[side]
            mfu = "—" if x["mfu"] is None else f"{100 * x['mfu']:.1f}%"
            ratio = f"{x['ratio']:.2f}x" if "ratio" in x else "1.00x"
            print(f"| {r['what']} | {side} | {x['tokens_per_s']:,.0f} | {x['tflops']:.3g} | {mfu} | {ratio} |")


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N, mps (default: auto)")
    p.add_argument("--config", default="base", help="preset size (default: base)")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--max-length", type=int, default=128)
    p.add_argument("--steps", type=int, default=20, help="timed steps per repeat")
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--precision", choices=["auto", "fp32", "bf16"], default="auto",
                   help="auto: bf16 on a GPU that has it natively, else fp32")
    p.add_argument("--peak-tflops", type=float, default=None,
                   help="the device's peak at this precision; default: the built-in table for known GPUs")
    p.add_argument("--only", choices=["pretrain", "finetune"], default=None)
    p.add_argument("--threads", type=int, default=None, help="CPU threads (default: torch's)")
    p.add_argument("--json", type=Path, default=None, help="also write the results here")
    p.add_argument("--quick", action="store_true", help="a tiny config for a smoke run: tiny, 4 x 32, 2 steps")
    args = p.parse_args()
    if args.quick:
        args.config, args.batch_size, args.max_length, args.steps, args.warmup, args.repeats = "tiny", 4, 32, 2, 1, 1
    return args


def main() -> None:
    args = parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    import transformers

    from bertkit import BertConfig
    from bertkit.devices import bf16_supported, resolve_device, to_device
    from bertkit.heads import BertForPreTraining, BertForSequenceClassification

    transformers.logging.set_verbosity_error()
    device = resolve_device(args.device)
    # auto: bf16 on a GPU that has it natively; a CPU stays fp32 unless asked (bf16 autocast there
    # is a lever only with AMX, and its fp32 peak is the honest reference)
    bf16 = args.precision == "bf16" or (args.precision == "auto" and device.type == "cuda" and bf16_supported(device))
    precision = "bf16" if bf16 else "fp32"
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else device.type
    args.peak = args.peak_tflops or (peak_tflops(name, precision) if device.type == "cuda" else None)
    autocast = lambda: torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16)  # noqa: E731
    vocab = 30522
    config = BertConfig.preset(args.config, vocab_size=vocab, max_position_embeddings=max(512, args.max_length))
    n = args.warmup + args.steps
    results = []

    def pair(ours_cls, ref_cls, cfg):
        torch.manual_seed(0)
        ours = ours_cls(cfg)
        with tempfile.TemporaryDirectory() as tmp:
            ours.save_pretrained(tmp)
            ref = ref_cls.from_pretrained(tmp, attn_implementation="sdpa")
        return ours.to(device).train(), ref.to(device).train()

    if args.only in (None, "pretrain"):
        ours, ref = pair(BertForPreTraining, transformers.BertForPreTraining, config)
        batches = [to_device(b, device) for b in pretraining_batches(n, args.batch_size, args.max_length, vocab)]

        def flops(b):
            return training_flops(config, b["attention_mask"].sum(1).tolist(), masked=int((b["labels"] != -100).sum()),
                                  head="pretraining")

        results.append(run_pair(f"pretraining seq {args.max_length}", ours, ref,
                                {"bertkit": bertkit_pretraining(ours), "transformers": transformers_loss(ref)},
                                batches, flops, args, device, autocast))
        del ours, ref, batches
    if args.only in (None, "finetune"):
        cfg = config.replace(id2label={0: "neg", 1: "pos"}, problem_type="single_label_classification")
        ours, ref = pair(BertForSequenceClassification, transformers.BertForSequenceClassification, cfg)
        batches = [to_device(b, device) for b in finetuning_batches(n, args.batch_size, args.max_length, vocab, 2)]

        def flops(b):
            return training_flops(cfg, b["attention_mask"].sum(1).tolist(), masked=0, head="classify")

        results.append(run_pair(f"fine-tuning (classify), mixed lengths <= {args.max_length}", ours, ref,
                                {"bertkit": bertkit_classify_loss(ours), "transformers": transformers_loss(ref)},
                                batches, flops, args, device, autocast))
    peak = f"peak {args.peak:g} TFLOP/s" if args.peak else "no peak known (give --peak-tflops)"
    header = (f"MFU, {args.config} ({encoder_matmul_params(config) / 1e6:.1f}M encoder matmul weights), batch "
              f"{args.batch_size} x {args.max_length}, {precision}, {name}, {peak}, torch {torch.__version__}, "
              f"transformers {transformers.__version__}")
    print_table(results, header)
    if args.json:
        args.json.write_text(json.dumps({"header": header, "device": name, "precision": precision,
                                         "peak_tflops": args.peak, "runs": results}, indent=1))


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        main()
