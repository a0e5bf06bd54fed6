"""`bertkit serve`'s options: one dataclass, one field per option (cli.py turns it into flags).

Like bertkit.settings, this module is imported by `bertkit --help`: it must stay free of torch,
numpy and the server's own packages (FastAPI, uvicorn).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

from bertkit.errors import InputError
from bertkit.options import at_least, choices, in_range, not_empty
from bertkit.settings import INFERENCE_PRECISIONS, ModelChoice, check_device, check_inference_precision

API_KEY_VARIABLE = "BERTKIT_API_KEY"
MAX_BODY_BYTES = 2 * 1024 * 1024
"""A request body larger than this is refused (413) before it is read: 64 texts of 32 KB each."""
GRACEFUL_SHUTDOWN_S = 30
"""After SIGTERM, how long requests still running may take before the server stops anyway."""


@dataclass
class ServeArgs(ModelChoice):
    """`bertkit serve`: the model, where to listen, and the batching and safety limits."""

    host: str = "127.0.0.1"
    """Address to listen on; the default answers this machine only (0.0.0.0: every interface)."""
    port: int = 8080
    """Port to listen on (0: any free port)."""
    max_batch_tokens: int = 16384
    """Cap on one batch's size in tokens, padding included: sequences x longest sequence."""
    max_wait_ms: float = 5
    """How long a request may wait for others to share its batch, in milliseconds (0: never wait)."""
    max_concurrent_requests: int = 512
    """Requests waiting for or using the model at once; more are refused with 429 and Retry-After."""
    max_client_batch_size: int = 64
    """Most inputs (texts, questions) in one request; more are refused with 413."""
    truncate: bool = False
    """Cut inputs longer than the model takes instead of refusing them with 413 (a request may also ask)."""
    api_key: str | None = None
    """Require `Authorization: Bearer KEY` on every endpoint but /health and the page at / (which asks for
    it); default: $BERTKIT_API_KEY, else none. Prefer the variable: a command line is visible to `ps`."""
    device: str = "auto"
    """Where the model runs: auto (cuda if there is a GPU, else mps, else cpu), cpu, cuda, cuda:N or mps.
    On a GPU with bf16 the model runs in bf16 autocast; the outputs are float32 either way."""
    precision: str = field(default="auto", metadata=choices(INFERENCE_PRECISIONS))
    """How the model computes: auto (bf16 on a GPU that has it, else fp32), fp32, bf16, or int8 (CPU only: the
    encoder's matrix multiplies in int8, calibrated at start; 1.2-1.4x fp32, vectors within cosine 0.99 of fp32's)."""
    compile: bool = False
    """Compile the encoder layers' projections, LayerNorms and GELU with torch.compile at start (8-20 s on 2 cores);
    pays for int8 (1.1-1.3x), about even for fp32 on a CPU. Needs a C++ compiler on the CPU."""

    def __post_init__(self) -> None:
        if self.api_key is None:
            self.api_key = os.environ.get(API_KEY_VARIABLE) or None
        not_empty("host", self.host)
        in_range("port", self.port, 0, 65535, integer=True)
        at_least("max_batch_tokens", self.max_batch_tokens, 1)
        in_range("max_wait_ms", self.max_wait_ms, 0, 60_000)
        at_least("max_concurrent_requests", self.max_concurrent_requests, 1)
        at_least("max_client_batch_size", self.max_client_batch_size, 1)
        not_empty("api_key", self.api_key)
        check_device(self.device)
        check_inference_precision(self.precision)
        if self.api_key is not None and (self.api_key != self.api_key.strip() or not self.api_key.isprintable()
                                         or not self.api_key.isascii()):
            raise InputError("--api-key must be printable ASCII, without spaces at either end "
                             f"(it travels in an HTTP header); check ${API_KEY_VARIABLE}")
