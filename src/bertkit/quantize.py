"""int8 inference on the CPU: the encoder's matrix multiplies in int8, close enough to fp32 to use.

Plain dynamic int8 (one scale for a whole batch of activations) moves all-MiniLM-L6-v2's sentence
vectors far from fp32 (smallest cosine 0.92 on Penn Treebank text): a few hidden channels and a few
tokens carry values tens of times larger than the rest, and one scale cannot serve both. Two measured
fixes make it usable, both exact rewrites before rounding:

- smoothing (SmoothQuant, Xiao et al. 2023): each input channel j of a layer is divided by s_j and the
  weight's column j multiplied by it, s_j = max|x_j|^0.8 / max|W_:,j|^0.2, with max|x_j| calibrated
  once when the model loads, on random sequences of the vocabulary's tokens (no data needed, any
  language). 0.8 was measured against 0.5, 0.7 and 0.9 (bench/int8_accuracy.py --variant): the
  closest to fp32 on every measure;
- a scale per token: each row is divided by its largest value before the int8 multiply and the
  result multiplied back, so every token uses the whole int8 range.

Weights are int8 per output channel (symmetric); the multiplies are PyTorch's fbgemm/oneDNN dynamic
int8 kernels. The layers quantized are the attention's query/key/value and output projections and
the feed-forward's first projection; the feed-forward's second projection (after GELU) stays fp32:
quantizing it cost accuracy (smallest cosine 0.973-0.976 instead of 0.994-0.998) for ~3% more speed.
Embeddings, LayerNorm, attention itself, the pooler and task heads stay fp32. `set_inference_precision`
is what the commands call: auto, fp32, bf16 (autocast, devices.inference_autocast) or int8.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence

import torch
from torch import Tensor, nn

from bertkit.devices import model_device
from bertkit.errors import InputError
from bertkit.model import BertModel, Layer
from bertkit.settings import check_inference_precision

QUANTIZED_LAYERS = ("qkv", "out", "up")
"""Which linear layers of every encoder layer run in int8 (attention.qkv, attention.out, ffn.up; ffn.down
is the fourth)."""
SMOOTHING = 0.8
"""SmoothQuant's alpha: how much of the activations' range moves into the weights."""
CALIBRATION_ROWS = 32
CALIBRATION_SEED = 0


class Int8Linear(nn.Module):
    """nn.Linear with smoothed, per-token-scaled int8 inputs and per-channel int8 weights.

    (..., in) -> (..., out); y = ((x / s) / m) @ (W * s)^T * m + b, with s the smoothing (in,) and
    m each token's largest |x / s|: equal to the linear layer up to int8 rounding."""

    def __init__(self, linear: nn.Linear, input_max: Tensor, alpha: float = SMOOTHING):
        """input_max: (in,) the calibrated largest |x_j| of each input channel."""
        super().__init__()
        weight = linear.weight.detach().float()  # (out, in)
        smooth = (input_max.float().clamp_min(1e-5) ** alpha
                  / weight.abs().amax(0).clamp_min(1e-5) ** (1 - alpha)).clamp_min(1e-5)  # (in,)
        self.in_features, self.out_features = linear.in_features, linear.out_features
        self.register_buffer("inverse_smooth", 1.0 / smooth)
        self.register_buffer("bias", linear.bias.detach().float().clone() if linear.bias is not None else
                             torch.zeros(linear.out_features))
        self._packed = _pack(weight * smooth)  # int8 per output channel, in the kernel's layout

    def forward(self, x: Tensor) -> Tensor:
        x = x * self.inverse_smooth  # (..., in), a new tensor: the caller's x is left alone
        scale = x.abs().amax(-1, keepdim=True).clamp_min_(1e-12)  # (..., 1) each token's range (aminmax: 4x slower)
        y = torch.ops.quantized.linear_dynamic(x.div_(scale), self._packed, True)  # (..., out)
        return y.mul_(scale).add_(self.bias)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, int8"


def _pack(weight: Tensor):
    """(out, in) float -> the int8 kernel's packed weight, symmetric per output channel."""
    scales = (weight.abs().amax(1).clamp_min(1e-12) / 127).double()  # (out,)
    zeros = torch.zeros(weight.shape[0], dtype=torch.long)
    with warnings.catch_warnings():  # quantized tensors are deprecated as a public type; the kernels are not
        warnings.simplefilter("ignore")
        q = torch.quantize_per_channel(weight, scales, zeros, 0, torch.qint8)
        return torch.ops.quantized.linear_prepack(q, None)


def set_inference_precision(model: nn.Module, precision: str = "auto", tokenizer=None) -> nn.Module:
    """Make `model`, already on its device, compute in `precision` when it predicts: auto, fp32, bf16
    (autocast) or int8 (bertkit.quantize, CPU only; calibration reads `tokenizer`'s vocabulary).
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
    return model


def check_int8_supported(device: torch.device) -> None:
    """int8 runs on the CPU, with PyTorch's x86 (fbgemm/oneDNN) or ARM (qnnpack) int8 kernels."""
    if device.type != "cpu":
        raise InputError(f"--precision int8 runs on the CPU (PyTorch's int8 kernels are CPU ones); on {device} "
                         "use --precision bf16 or fp32 (or --device cpu)")
    if not torch.backends.quantized.supported_engines or torch.backends.quantized.engine == "none":
        raise InputError("--precision int8: this PyTorch build has no int8 CPU kernels; use --precision fp32")


def quantize_int8(model: nn.Module, tokenizer, *, layers: Sequence[str] = QUANTIZED_LAYERS,
                  alpha: float = SMOOTHING, calibration: Sequence[Sequence[int]] | None = None) -> nn.Module:
    """Replace, in place, the chosen linear layers of every encoder layer in `model` (a BertModel or
    any model holding one) by Int8Linear, calibrated on `calibration` (lists of token ids; default:
    random token sequences from the tokenizer's vocabulary). Returns the model, in eval mode."""
    unknown = set(layers) - {"qkv", "out", "up", "down"}
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
                setattr(parent, attr, Int8Linear(getattr(parent, attr), maxima[f"{i}.{name}"], alpha))
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
