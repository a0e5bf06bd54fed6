"""int8 inference on the CPU: the encoder's matrix multiplies in int8, close enough to fp32 to use.

Plain dynamic int8 (one scale for a whole batch of activations) moves all-MiniLM-L6-v2's sentence
vectors far from fp32 (smallest cosine 0.92 on Penn Treebank text): a few hidden channels and a few
tokens carry values tens of times larger than the rest, and one scale cannot serve both. Three
measured fixes make it usable, all exact rewrites before rounding:

- smoothing (SmoothQuant, Xiao et al. 2023): each input channel j of a layer is divided by s_j and the
  weight's column j multiplied by it, s_j = max|x_j|^a / max|W_:,j|^(1-a), with max|x_j| calibrated
  once when the model loads, on random sequences of the vocabulary's tokens (no data needed, any
  language). a = 0.8 for the attention's projections and the feed-forward's first one, 0.5 for the
  feed-forward's second (bench/int8_accuracy.py --variant; SMOOTHING);
- a scale per token: each row of the input is rounded on its own range, so every token uses the
  whole int8 range;
- for the feed-forward's second projection, whose input is GELU's output (never below -0.17, so
  one-sided), an offset per token as well (asymmetric int8): the row's [min, max] is cut into 256
  steps instead of [-max|x|, max|x|], twice as fine. The offset comes back as a rank-one term.

Weights are int8 per output channel (symmetric); the multiply is torch._int_mm (int8 x int8 -> int32,
oneDNN's VNNI kernels on x86). Measured on all-MiniLM-L6-v2 and 256 texts of bench/engines.py's mix,
smallest cosine to fp32: all four projections this way 0.9962; the second projection symmetric
instead 0.992 (a 0.5) and 0.973 (a 0.8); the earlier fbgemm kernels (7-bit activations, one scale
per batch after the per-token division) with the second projection in fp32 0.994, slower.
Embeddings, LayerNorm, attention itself, the pooler and task heads stay fp32.
`set_inference_precision` is what the commands call: auto, fp32, bf16 (autocast,
devices.inference_autocast) or int8.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

import torch
from torch import Tensor, nn

from bertkit.compiled import compile_layers, compiles_inference
from bertkit.devices import model_device
from bertkit.errors import InputError
from bertkit.model import BertModel, Layer
from bertkit.settings import check_inference_precision

QUANTIZED_LAYERS = ("qkv", "out", "up", "down")
"""Which linear layers of every encoder layer run in int8 (attention.qkv, attention.out, ffn.up, ffn.down)."""
SMOOTHING = {"qkv": 0.8, "out": 0.8, "up": 0.8, "down": 0.5}
"""SmoothQuant's alpha per layer: how much of the activations' range moves into the weights."""
ASYMMETRIC = ("down",)
"""Layers whose input is one-sided (after GELU): rounded on each token's [min, max] with an offset."""
CALIBRATION_ROWS = 32
CALIBRATION_SEED = 0


class Int8Linear(nn.Module):
    """nn.Linear with smoothed, per-token int8 inputs and per-channel int8 weights.

    (..., in) -> (..., out); y = q(x / s) @ q(W * s)^T + b, s the smoothing (in,), q rounding to int8:
    per output channel for the weight, per token for the input (symmetric, or with an offset when
    `asymmetric`). Equal to the linear layer up to int8 rounding."""

    def __init__(self, linear: nn.Linear, input_max: Tensor, alpha: float = 0.8, *, asymmetric: bool = False):
        """input_max: (in,) the calibrated largest |x_j| of each input channel."""
        super().__init__()
        weight = linear.weight.detach().float()  # (out, in)
        smooth = (input_max.float().clamp_min(1e-5) ** alpha
                  / weight.abs().amax(0).clamp_min(1e-5) ** (1 - alpha)).clamp_min(1e-5)  # (in,)
        weight = weight * smooth
        weight_step = weight.abs().amax(1).clamp_min(1e-12) / 127  # (out,)
        weight_int8 = (weight / weight_step[:, None]).round_().clamp_(-127, 127).to(torch.int8)  # (out, in)
        bias = linear.bias.detach().float() if linear.bias is not None else torch.zeros(linear.out_features)
        self.in_features, self.out_features, self.asymmetric = linear.in_features, linear.out_features, asymmetric
        # not in state_dict: an int8 model is never saved (it is rebuilt from the fp32 weights when loaded)
        self.register_buffer("inverse_smooth", 1.0 / smooth, persistent=False)  # (in,)
        self.register_buffer("weight_int8", weight_int8, persistent=False)  # (out, in)
        self.register_buffer("weight_step", weight_step, persistent=False)  # (out,)
        self.register_buffer("bias", bias.clone(), persistent=False)  # (out,)
        # sum_j W_ij, dequantized: what an input offset adds to each output (asymmetric only)
        self.register_buffer("weight_sums", weight_int8.sum(1).float() * weight_step, persistent=False)  # (out,)

    def forward(self, x: Tensor) -> Tensor:
        shape = x.shape
        x = x.reshape(-1, self.in_features) * self.inverse_smooth  # (M, in), a new tensor: the caller's x is left alone
        high, low = x.amax(-1, keepdim=True), x.amin(-1, keepdim=True)  # (M, 1) each (aminmax: slower)
        if self.asymmetric:  # x = step * q + zero, q in [-128, 127]
            step = (high - low).clamp_min_(1e-12) / 255  # (M, 1)
            zero = low + 128 * step  # (M, 1)
            q = x.sub_(zero).div_(step).round_().clamp_(-128, 127).to(torch.int8)  # (M, in); clamp: fp32 rounding of zero
        else:  # x = step * q, q in [-127, 127]
            step = torch.maximum(high, low.neg_()).clamp_min_(1e-12) / 127  # (M, 1)
            q = x.div_(step).round_().to(torch.int8)  # (M, in)
        y = torch._int_mm(q, self.weight_int8.t()).float().mul_(self.weight_step).mul_(step)  # (M, out)
        if self.asymmetric:
            y.addcmul_(zero, self.weight_sums)  # + zero * sum_j W_ij: the offset's share
        return y.add_(self.bias).view(*shape[:-1], self.out_features)

    def extra_repr(self) -> str:
        kind = "asymmetric" if self.asymmetric else "symmetric"
        return f"in_features={self.in_features}, out_features={self.out_features}, int8 ({kind} per token)"


@functools.cache
def int8_matmul_error() -> str | None:
    """Why this PyTorch cannot multiply int8 matrices on the CPU (torch._int_mm), or None if it can."""
    try:
        a = torch.ones(17, 8, dtype=torch.int8)
        if not torch.equal(torch._int_mm(a, a.t().contiguous()), torch.full((17, 17), 8, dtype=torch.int32)):
            return "its int8 matrix multiply gives wrong results"
    except (AttributeError, RuntimeError, NotImplementedError) as e:
        return f"it has no int8 matrix multiply on the CPU ({str(e).splitlines()[0] if str(e) else type(e).__name__})"
    return None


def set_inference_precision(model: nn.Module, precision: str = "auto", tokenizer=None) -> nn.Module:
    """Make `model`, already on its device, compute in `precision` when it predicts: auto, fp32, bf16
    (autocast) or int8 (bertkit.quantize, CPU only; calibration reads `tokenizer`'s vocabulary);
    compiled (compiled.compile_layers) after compiled.compile_inference() (--compile).
    Every submodule is marked, so a model built around one of them (the server's embedder around
    a classifier's encoder) computes the same way."""
    check_inference_precision(precision)
    if precision == "int8":
        check_int8_supported(model_device(model))
        if tokenizer is None:
            raise InputError("int8 needs the model's tokenizer (its vocabulary calibrates the int8 ranges)")
        quantize_int8(model, tokenizer)  # layers already int8 are kept
    elif getattr(model, "inference_precision", None) == "int8":
        raise InputError(f"this model was quantized to int8; load it again to run it in {precision}")
    for module in model.modules():
        module.inference_precision = precision
    if compiles_inference():  # --compile
        compile_layers(model)
    return model


def check_int8_supported(device: torch.device) -> None:
    """int8 runs on the CPU, through PyTorch's int8 matrix multiply (torch._int_mm)."""
    if device.type != "cpu":
        raise InputError(f"--precision int8 runs on the CPU (PyTorch's int8 kernels are CPU ones); on {device} "
                         "use --precision bf16 or fp32 (or --device cpu)")
    error = int8_matmul_error()
    if error:
        raise InputError(f"--precision int8: this PyTorch ({torch.__version__}) cannot run it: {error}; "
                         "use --precision fp32, or a newer PyTorch")


def quantize_int8(model: nn.Module, tokenizer, *, layers: Sequence[str] = QUANTIZED_LAYERS,
                  alpha: float | None = None, asymmetric: Sequence[str] = ASYMMETRIC,
                  calibration: Sequence[Sequence[int]] | None = None) -> nn.Module:
    """Replace, in place, the chosen linear layers of every encoder layer in `model` (a BertModel or
    any model holding one) by Int8Linear, calibrated on `calibration` (lists of token ids; default:
    random token sequences from the tokenizer's vocabulary). `alpha`: one smoothing for every layer
    (default: SMOOTHING's, per layer); `asymmetric`: the layers rounded with a per-token offset.
    Returns the model, in eval mode."""
    unknown = (set(layers) | set(asymmetric)) - set(SMOOTHING)
    if unknown:
        raise InputError(f"layers to quantize must be among qkv, out, up, down; got {sorted(unknown)}")
    encoders = [m for m in model.modules() if isinstance(m, BertModel)]
    if not encoders:
        raise InputError("int8 quantization needs a BERT encoder in the model")
    model.eval()
    # layers already in int8 are left as they are (a model quantized once, shared)
    targets = {f"{i}.{name}": linear for i, layer in enumerate(m for m in model.modules() if isinstance(m, Layer))
               for name, linear in _linears(layer).items() if name in layers and isinstance(linear, nn.Linear)}
    if not targets:
        return model
    rows = list(calibration) if calibration is not None else random_token_rows(tokenizer)
    maxima = _calibrate(encoders[0], targets, rows, tokenizer.pad_token_id)
    for i, layer in enumerate(m for m in model.modules() if isinstance(m, Layer)):
        for name in layers:
            parent, attr = _parent(layer, name)
            if f"{i}.{name}" in targets:
                setattr(parent, attr, Int8Linear(getattr(parent, attr), maxima[f"{i}.{name}"],
                                                 SMOOTHING[name] if alpha is None else alpha,
                                                 asymmetric=name in asymmetric))
    return model


def _linears(layer: Layer) -> dict[str, nn.Module]:
    return {"qkv": layer.attention.qkv, "out": layer.attention.out, "up": layer.ffn.up, "down": layer.ffn.down}


def _parent(layer: Layer, name: str) -> tuple[nn.Module, str]:
    return (layer.attention, name) if name in ("qkv", "out") else (layer.ffn, name)


def random_token_rows(tokenizer, n: int = CALIBRATION_ROWS, seed: int = CALIBRATION_SEED) -> list[list[int]]:
    """n rows [CLS] + random ordinary tokens + [SEP], 8 to 128 tokens long, the same on every call.
    Activation outliers sit in fixed channels whatever the text, so random tokens calibrate as well
    as real text (measured: smallest cosine 0.988 vs 0.990 calibrated on the texts themselves)."""
    # [PAD], [CLS], [unused0]...: every bracketed name is a special or reserved token
    ordinary = sorted(i for token, i in tokenizer.vocab.items() if not (token.startswith("[") and token.endswith("]")))
    if not ordinary:
        raise InputError("int8 calibration: the vocabulary has no ordinary tokens")
    g = torch.Generator().manual_seed(seed)
    pool = torch.tensor(ordinary)
    rows = []
    for _ in range(n):
        length = int(torch.randint(8, 129, (1,), generator=g))
        ids = pool[torch.randint(len(pool), (length - 2,), generator=g)].tolist()
        rows.append([tokenizer.cls_token_id, *ids, tokenizer.sep_token_id])
    return rows


@torch.inference_mode()
def _calibrate(encoder: BertModel, targets: dict[str, nn.Linear], rows: list[list[int]],
               pad_id: int) -> dict[str, Tensor]:
    """The largest |input| of each channel of each target layer over the rows: {name: (in,)}."""
    from bertkit.padding import pad_inputs

    if not rows:
        raise InputError("int8 calibration needs at least one sequence")
    maxima: dict[str, Tensor] = {}

    def hook(name):
        def record(module, inputs, output):
            x = inputs[0].detach().reshape(-1, inputs[0].shape[-1]).abs().amax(0).float()  # (in,)
            maxima[name] = torch.maximum(maxima[name], x) if name in maxima else x.clone()
        return record

    handles = [linear.register_forward_hook(hook(name)) for name, linear in targets.items()]
    try:
        for start in range(0, len(rows), 16):
            batch = pad_inputs([list(r) for r in rows[start:start + 16]], pad_id)
            encoder(batch["input_ids"], None, batch["attention_mask"])
    finally:
        for h in handles:
            h.remove()
    return maxima
