"""Which device a model runs on, and getting batches there: one resolver for every command.

`--device` (settings.check_device spells it: auto, cpu, cuda, cuda:N, mps) is checked for its
spelling where it enters, without torch; whether the machine has that device is known only here,
at run time. auto takes the best there is: CUDA, else Apple's MPS, else the CPU.

The model code never mentions a device (STYLE.md habit 3): callers put the model on
`resolve_device(spec)` and move each batch with `to_device`, and read outputs back as float32 on
the CPU.
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
from pathlib import Path

import torch
from torch import Tensor, nn

from bertkit.errors import InputError
from bertkit.settings import check_device


def _cuda_available() -> bool:
    return torch.cuda.is_available()


def _mps_available() -> bool:
    backend = getattr(torch.backends, "mps", None)
    return bool(backend is not None and backend.is_available())


def best_device() -> torch.device:
    """What `auto` means on this machine: cuda, else mps, else cpu."""
    if _cuda_available():
        return torch.device("cuda")
    if _mps_available():
        return torch.device("mps")
    return torch.device("cpu")


def resolve_device(spec: str | torch.device | None = "auto") -> torch.device:
    """`--device` as a torch.device, refused with one line when this machine lacks it.

    None and "auto": best_device(). "cuda" is the current CUDA device; "cuda:N" must exist."""
    if isinstance(spec, torch.device):
        spec = str(spec)
    spec = check_device("auto" if spec is None else spec)
    if spec == "auto":
        return best_device()
    device = torch.device(spec)
    if device.type == "cuda":
        if not _cuda_available():
            raise InputError(f"--device {spec}: CUDA is not available on this machine")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise InputError(f"--device {spec}: this machine has {torch.cuda.device_count()} CUDA device(s), "
                             f"0..{torch.cuda.device_count() - 1}")
    if device.type == "mps" and not _mps_available():
        raise InputError(f"--device {spec}: MPS (Apple's GPU) is not available on this machine")
    return device


def model_device(model: nn.Module) -> torch.device:
    """Where a model's weights are (the CPU for a model without parameters)."""
    return next((p.device for p in model.parameters()), torch.device("cpu"))


def to_device(batch: dict[str, Tensor], device: torch.device) -> dict[str, Tensor]:
    """A batch of CPU tensors on `device`. On CUDA through pinned (page-locked) memory with
    non_blocking copies, so the copy overlaps the work already queued on the GPU instead of
    waiting for it (PyTorch's "pin_memory" note); elsewhere a plain move, a no-op on the CPU."""
    if device.type != "cuda":
        return {k: v.to(device) for k, v in batch.items()}
    return {k: _pinned(v).to(device, non_blocking=True) for k, v in batch.items()}


def _pinned(t: Tensor) -> Tensor:
    return t if t.device.type != "cpu" or t.is_pinned() else t.pin_memory()


# ---- precision --------------------------------------------------------------------------------------


def bf16_supported(device: torch.device) -> bool:
    """bf16 matrix units that make it pay (precision auto): CUDA with bf16 (Ampere and later), or a
    CPU with AMX. AVX512-BF16 alone does not: on such a 2-core Xeon, bf16 autocast pretraining ran at
    0.83x fp32 (`tiny`) and 0.77x (`mini`) (bench/pretrain.py --precision bf16 against fp32)."""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    if device.type != "cpu":
        return False
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return " amx_bf16" in flags


def inference_precision(model: nn.Module) -> str:
    """The precision set_inference_precision gave `model` (auto when none)."""
    return getattr(model, "inference_precision", "auto")


def inference_bf16(device: torch.device, bf16: bool | None = None) -> bool:
    """Whether inference runs under bf16 autocast: bf16=None (the default) turns it on for a CUDA
    device with native bf16 only. A CPU stays fp32 unless asked (bf16=True): on a CPU without
    AMX it is slower, and embeddings drift from sentence-transformers' fp32 ones."""
    if bf16 is not None:
        return bf16
    return device.type == "cuda" and bf16_supported(device)


def inference_autocast(device: torch.device | nn.Module, bf16: bool | None = None) -> contextlib.AbstractContextManager:
    """The autocast context inference runs in (a no-op when inference_bf16 says fp32). Given a model
    instead of a device: its device, and bf16 as its inference precision says (auto: inference_bf16's
    rule). Outputs are read back with `.float()`, so callers see float32 either way."""
    if isinstance(device, nn.Module):
        precision = inference_precision(device)
        device, bf16 = model_device(device), {"bf16": True, "auto": bf16}.get(precision, False)
    if not inference_bf16(device, bf16):
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=torch.bfloat16)


def to_numpy(t: Tensor):
    """A model output as float32 numpy on the CPU, from any device and precision."""
    return t.detach().float().cpu().numpy()


@functools.cache
def _libc_trim():
    """glibc's malloc_trim, or None (another C library, another OS)."""
    try:
        return ctypes.CDLL("libc.so.6").malloc_trim
    except (OSError, AttributeError):
        return None


def release_free_memory() -> None:
    """Hand the host memory that freed tensors leave behind back to the OS. glibc keeps it, fragmented,
    so a long run of differently shaped batches grows the resident size slowly without it: measured
    +4 MB per 2,048 texts embedded (all-MiniLM-L6-v2), +0.5 MB with a trim after each slice. Not after
    every batch: the pages handed back are faulted in again by the next one (19% slower, measured)."""
    trim = _libc_trim()
    if trim is not None:
        trim(0)
