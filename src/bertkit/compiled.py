"""torch.compile for inference, two ways.

**Compiled layers** (`compile_layers`; the inference commands' --compile): the eager unpadded path
(model.py) computes nothing for padding, but its number of real tokens is data. So only the work
around the attention is compiled, on (tokens, C) matrices with the number of tokens symbolic: one
graph for the q/k/v projection and one for everything after the attention, shared by every layer,
batch and length; the attention stays eager and unpadded. It pays for int8 (1.11-1.32x eager
int8), hardly for fp32 (1.0-1.2x): see compile_layers.

**The whole padded encoder, one graph per length bucket** (`compile_for_inference`, Python only):
every batch is padded up to its *bucket* (rows: `bucket_length(B, 1)`; tokens: `bucket_length(T)`)
so that a run sees a handful of shapes, each compiled once and reused: the buckets grow
geometrically (16, 32, 48, 64, then 1.5x or 4/3x the one before: 96, 128, 192, 256, 384, 512),
which keeps the graphs of a 512-token model at ten per batch size. The attention mask
keeps the added padding out of every real token's result, so the vectors are the eager ones
(<=1e-5, fp32), and the outputs are cut back to the batch's own shape.
Not wired into the commands, because on this 2-core CPU it does not pay
(bench/compile_inference.py, all-MiniLM-L6-v2, fp32, 512 Penn Treebank texts in length-sorted
batches of 32, 2 threads, taking turns with eager batch by batch): compiled 0.93x the eager
unpadded path in steady state (1.035x the same padded batches run eagerly: the fusions win less
than the buckets' padding costs), and compiling the 8 buckets took 125-300 s (71 s from a warm
inductor cache), so a 2,000-text run is 0.47x. For GPUs (CUDA graphs need static shapes; untested).

Shapes: B batch, T tokens, C hidden size.
"""

from __future__ import annotations

import functools
import importlib.util
import os
import shutil
import sys
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from bertkit.devices import inference_autocast, model_device
from bertkit.errors import InputError
from bertkit.model import BertModel, BertOutput, Layer, Unpadding, heads_attention, key_mask
from bertkit.options import at_least, one_of

COMPILE_MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")


@dataclass(frozen=True)
class CompileOptions:
    """How the inference encoder is compiled."""

    mode: str = "default"
    """torch.compile's mode (max-autotune-no-cudagraphs also times matmul kernels while compiling)."""
    minimum: int = 16
    """The smallest token bucket; the buckets are minimum x 1, 2, 3, 4, 6, 8, 12, ..."""
    dynamic: bool = False
    """One graph with symbolic batch and length (no buckets) instead of one graph per bucket."""

    def __post_init__(self) -> None:
        one_of("compile mode", self.mode, COMPILE_MODES)
        at_least("compile bucket minimum", self.minimum, 1)


def bucket_length(n: int, minimum: int = 16, limit: int | None = None) -> int:
    """n rounded up to the next of minimum x {1, 2, 3, 4, 6, 8, 12, 16, ...} (powers of two and
    1.5 x powers of two), never past `limit` (the model's positions) unless n itself is."""
    at_least("n", n, 0)
    bucket, step = minimum, minimum
    while bucket < n:
        bucket += step
        if bucket >= 4 * step:  # m, 2m, 3m, 4m, then 6m, 8m, 12m, 16m, ...: from 4m on at most 1.5x the last
            step *= 2
    return max(n, min(bucket, limit)) if limit is not None else bucket


def pad_to(batch: dict[str, Tensor], rows: int, tokens: int, pad_id: int) -> dict[str, Tensor]:
    """(B, T) inputs -> (rows, tokens): ids padded with pad_id, masks and token types with 0; added
    rows hold one real token ([PAD] at position 0) so that no row attends nothing (NaN)."""
    B, T = batch["input_ids"].shape
    out = {}
    for name, t in batch.items():
        fill = pad_id if name == "input_ids" else 0
        t = F.pad(t, (0, tokens - T), value=fill)  # (B, tokens)
        if rows > B:
            extra = t.new_full((rows - B, tokens), fill)
            if name == "attention_mask":
                extra[:, 0] = 1
            t = torch.cat([t, extra])  # (rows, tokens)
        out[name] = t
    return out


def encode_padded(bert: BertModel, input_ids: Tensor, token_type_ids: Tensor, attention_mask: Tensor) -> Tensor:
    """(B, T) inputs -> last_hidden_state (B, T, C) by the padded path alone: what is compiled.
    The layers' own code, without forward's data-dependent choices (each one a graph break)."""
    mask = attention_mask[:, None, None, :].bool()  # (B, 1, 1, T)
    x = bert.embeddings(input_ids, token_type_ids)  # (B, T, C)
    for layer in bert.layers:
        x, _ = layer(x, mask)  # (B, T, C)
    return x


def compiled_encoder(bert: BertModel, options: CompileOptions = CompileOptions()) -> Callable[..., Tensor]:
    """`encode_padded` of `bert`, compiled: call it with (B, T) input_ids, token_type_ids and
    attention_mask already padded to their buckets (`pad_to`)."""
    # one graph per (rows, tokens) bucket: a 512-token model with a short last batch needs more
    # than dynamo's default 8 before it would silently fall back to eager
    torch._dynamo.config.recompile_limit = max(torch._dynamo.config.recompile_limit, 64)
    mode = None if options.mode == "default" else options.mode
    return torch.compile(lambda ids, types, mask: encode_padded(bert, ids, types, mask),
                         mode=mode, dynamic=options.dynamic)


def compile_for_inference(bert: BertModel, options: CompileOptions = CompileOptions()) -> BertModel:
    """Make `bert`'s plain inference calls run compiled graphs, each batch padded up to its bucket
    and the outputs cut back to its own (B, T); returns `bert` itself (its weights and state_dict
    are untouched). Every other call keeps the eager forward: training, hidden states or attention
    weights wanted, packed rows (a mask numbering examples 2..k), no mask. last_hidden_state holds
    the padded path's values at padding (no caller may read them)."""
    if getattr(bert, "compiled_for_inference", False):  # the server shares one encoder: compile it once
        return bert
    eager = bert.forward
    run = compiled_encoder(bert, options)
    limit = bert.config.max_position_embeddings

    def forward(input_ids: Tensor, token_type_ids: Tensor | None = None, attention_mask: Tensor | None = None,
                **extras) -> BertOutput:
        wants_more = extras.get("output_hidden_states") or extras.get("output_attentions")
        if bert.training or wants_more or attention_mask is None or bool(attention_mask.max() > 1):
            return eager(input_ids, token_type_ids, attention_mask, **extras)
        B, T = input_ids.shape
        bert.embeddings.check_length(T)
        if token_type_ids is None:
            token_type_ids = torch.zeros_like(input_ids)
        batch = {"input_ids": input_ids, "token_type_ids": token_type_ids, "attention_mask": attention_mask}
        if not options.dynamic:
            batch = pad_to(batch, bucket_length(B, 1), bucket_length(T, options.minimum, limit),
                           bert.config.pad_token_id)
        x = run(batch["input_ids"], batch["token_type_ids"], batch["attention_mask"])[:B, :T]  # (B, T, C)
        return BertOutput(x, bert.pooler(x) if bert.pooler is not None else None)

    bert.forward = forward
    bert.compiled_for_inference = True
    return bert


# ---- compiled layers: the work around the attention, compiled, for every batch shape -------------------

_compile_inference = False
_announce = False


def compile_inference(enabled: bool = True, *, announce: bool = False) -> None:
    """From now on, every model set up for inference (quantize.set_inference_precision: what embed,
    predict, evaluate, fill-mask, index, search and serve call) gets `compile_layers`: the commands'
    --compile. Like torch.set_num_threads, a setting of the process; models loaded before it stay
    as they were (bertkit.embed's cache keeps one of each: embedding.cached_embedder). `announce`:
    say on stderr when the compiling starts, once a model has loaded (the commands do)."""
    global _compile_inference, _announce
    _compile_inference, _announce = bool(enabled), bool(enabled and announce)


def compiles_inference() -> bool:
    """Whether compile_inference turned compiled layers on."""
    return _compile_inference


def compile_layers(model: nn.Module, *, dynamic: bool = True, warm_up: bool = True) -> nn.Module:
    """Make every encoder layer in `model` (a BertModel or any model holding one) run, when it
    predicts, everything but the attention itself as compiled code (torch.compile, inductor): the
    q/k/v projection, written straight into the (B, L) layout the attention reads, in one graph;
    reading the attention's output back, the output projection, residual and LayerNorm and the
    whole feed-forward block in another. The attention between them stays eager, so the unpadded
    path still computes nothing for padding; the graphs take (tokens, C) matrices with the number of
    tokens symbolic, so two graphs serve every batch of every length (compiled once per process
    and model width, when `warm_up` on a two-row batch right away: measured 8-20 s for MiniLM on
    2 cores, less from inductor's disk cache).

    What it pays for is int8 (quantize.Int8Linear), where each projection is a chain of passes
    over memory (smoothing, per-token range, rounding, the int32 product scaled back, bias) that
    the graph fuses: 1.11-1.32x eager int8 on length-sorted batches and 1.16-1.31x in given order
    (bench/engines.py, all-MiniLM-L6-v2, 2 threads, each engine in its own process or all in one).
    fp32's projections are single MKL calls and its fused LayerNorm and GELU save little:
    1.0-1.2x. Outputs equal the eager ones in fp32 (2.4e-7 measured); in int8 the fused code
    rounds a few inputs to the neighbouring step (cosine to eager int8 >= 0.999; to fp32 0.9960
    where eager int8 gives 0.9962). Training, attention weights and gradients take the eager
    forward. `dynamic=False` leaves the shapes to torch.compile's automatic rule (static first,
    symbolic after a second shape: one more compile). Returns `model`."""
    encoders = [m for m in model.modules() if isinstance(m, BertModel)]
    if not encoders:
        raise InputError("--compile needs a BERT encoder in the model")
    check_compile_supported(model_device(model))
    for bert in encoders:
        if getattr(bert, "layers_compiled", False):  # the server shares one encoder: compile it once
            continue
        for layer in bert.layers:
            layer.forward = functools.partial(_compiled_layer_forward, layer, layer.forward, dynamic)
        bert.layers_compiled = True
        if warm_up:
            if _announce:
                print("bertkit: --compile: compiling the encoder's layers (torch.compile, 8-20 s once)", file=sys.stderr)
            _warm_up(bert)
    return model


def check_compile_supported(device: torch.device) -> None:
    """What inductor builds its kernels with: C++ on the CPU (a compiler), Triton on a CUDA GPU.
    Refused early, in one line, where it is missing."""
    if device.type == "cpu" and not any(shutil.which(c) for c in (os.environ.get("CXX", "g++"), "g++", "clang++", "c++")):
        raise InputError("--compile on the CPU needs a C++ compiler (g++ or clang++; torch.compile builds its "
                         "kernels with it): install one, or leave --compile out")
    if device.type == "cuda" and importlib.util.find_spec("triton") is None:
        raise InputError("--compile on a CUDA GPU needs Triton (pip install triton; PyTorch's CUDA wheels bring "
                         "it), or leave --compile out")


@torch.inference_mode()
def _warm_up(bert: BertModel) -> None:
    """Compile the graphs now, on a batch of two rows of different lengths (the unpadded path), in
    the autocast the model will predict in (a graph is compiled for one autocast state)."""
    device = next(bert.parameters()).device
    ids = torch.full((2, 3), bert.config.pad_token_id, dtype=torch.long, device=device)
    ids[:, 0], ids[0, 1:] = 1, 2  # any ids: the graphs depend on shapes alone
    mask = torch.tensor([[1, 1, 1], [1, 0, 0]], device=device)
    was_training = bert.training
    bert.eval()
    with inference_autocast(bert):
        bert(ids, torch.zeros_like(ids), mask)
    bert.train(was_training)


def _compiled_layer_forward(layer: Layer, eager: Callable, dynamic: bool, x: Tensor,
                            mask: Tensor | Unpadding | None, *, need_weights: bool = False):
    """Layer.forward with everything around the attention compiled: (R, C) real tokens (mask an
    Unpadding) or (B, T, C) -> the same. Packed rows' (B, 1, T, T) masks take the eager forward."""
    pairs = isinstance(mask, Tensor) and mask.shape[-2] != 1
    if layer.training or need_weights or pairs or torch.is_grad_enabled() or torch.jit.is_tracing():
        return eager(x, mask, need_weights=need_weights)
    project, rest = _compiled_parts(dynamic)
    if isinstance(mask, Unpadding):  # the real tokens, laid out (B, L) for the attention
        rows, slots, B, L = x, mask.slots, mask.lengths.shape[0], mask.max_length
        keys = key_mask(mask)  # (B, 1, 1, L)
    else:  # the padded path: every position a row, in its own place
        (B, L, C), keys = x.shape, mask
        rows, slots = x.reshape(B * L, C), torch.arange(B * L, device=x.device)
    laid = project(layer, rows, slots, B * L)  # (B*L, 3C)
    y = heads_attention(laid.view(B, L, -1), keys, layer.attention.n_heads, 0.0)  # (B, H, L, D)
    # (B*L, C): a view where SDPA wrote (B, L, H, D), as its fused CPU kernel does
    return rest(layer, y.transpose(1, 2).reshape(B * L, -1), slots, rows).view(x.shape), None


def _project(layer: Layer, rows: Tensor, slots: Tensor, n: int) -> Tensor:
    """(N, C) rows -> (n, 3C): their fused q/k/v at `slots` (N,) of the attention's layout, zeros
    elsewhere (the scatter fused with the projection's last pass)."""
    qkv = layer.attention.qkv(rows)  # (N, 3C)
    return qkv.new_zeros(n, qkv.shape[-1]).index_copy(0, slots, qkv)


def _after_attention(layer: Layer, laid: Tensor, slots: Tensor, x: Tensor) -> Tensor:
    """(B*L, C) attention output in its layout, read back at `slots` (N,) (the gather fused with the
    output projection's first pass), and the (N, C) layer input -> (N, C) layer output (eval: no
    dropout)."""
    context = laid[slots]  # (N, C)
    x = layer.attention_norm(x + layer.attention.out(context))
    return layer.ffn_norm(x + layer.ffn(x))


@functools.cache
def _compiled_parts(dynamic: bool) -> tuple[Callable, Callable]:
    # modules are arguments, so every layer of every model shares the graphs (parameters are graph
    # inputs); another width or kind of projection (nn.Linear, Int8Linear) compiles once more
    torch._dynamo.config.recompile_limit = max(torch._dynamo.config.recompile_limit, 64)
    return (torch.compile(_project, dynamic=dynamic or None),
            torch.compile(_after_attention, dynamic=dynamic or None))
