"""`run_server(args)`: the app under uvicorn, stopped gracefully by SIGTERM or Ctrl-C.

On SIGTERM (or SIGINT) uvicorn stops accepting connections, lets the requests in flight finish (for
at most GRACEFUL_SHUTDOWN_S), then the app's shutdown drains the batcher; the process exits 0.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import sys
import threading

from bertkit.serve.settings import GRACEFUL_SHUTDOWN_S, ServeArgs

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)
M_MMAP_THRESHOLD = -3  # glibc's malloc.h
MMAP_THRESHOLD = 128 * 1024  # glibc's default before it starts adjusting it
BACKLOG = 2048  # connections waiting to be accepted (uvicorn's default): a burst of clients is not dropped


def require_serve_packages() -> None:
    """A one-line error naming the extra to install when FastAPI, uvicorn or prometheus-client is missing."""
    from bertkit.errors import BertkitError

    missing = []
    for module, package in (("fastapi", "fastapi"), ("uvicorn", "uvicorn"), ("prometheus_client", "prometheus-client")):
        try:
            __import__(module)
        except ImportError:
            missing.append(package)
    if missing:
        raise BertkitError(f"bertkit serve needs {', '.join(missing)}: pip install 'bertkit[serve]'")


def make_server(args: ServeArgs):
    """A uvicorn server for the app of `args`, the model loaded, the port not yet opened."""
    require_serve_packages()
    import uvicorn

    from bertkit.serve.app import create_app

    class Server(uvicorn.Server):
        @contextlib.contextmanager
        def capture_signals(self):
            # uvicorn's own re-raises the signal once it has shut down, so the process would die by
            # it (status 143); here a stop signal is the normal way to end: exit 0.
            if threading.current_thread() is not threading.main_thread():
                yield
                return
            previous = {sig: signal.signal(sig, self.handle_exit) for sig in STOP_SIGNALS}
            try:
                yield
            finally:
                for sig, handler in previous.items():
                    signal.signal(sig, handler)

    config = uvicorn.Config(create_app(args), host=args.host, port=args.port, log_level="info",
                            timeout_graceful_shutdown=GRACEFUL_SHUTDOWN_S, access_log=False)
    return Server(config)


def listen(host: str, port: int) -> socket.socket:
    """The listening socket, opened before the model loads: a port in use is a one-line error at once."""
    from bertkit.errors import BertkitError

    try:
        family = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0][0]
        return socket.create_server((host, port), family=family, backlog=BACKLOG)
    except OSError as e:
        # create_server's own text repeats the address; a name that does not resolve has its own words
        reason = e.strerror if isinstance(e, socket.gaierror) or not e.errno else os.strerror(e.errno)
        raise BertkitError(f"cannot listen on {host}:{port}: {reason}") from None


def return_freed_memory(threshold: int = MMAP_THRESHOLD) -> bool:
    """Have glibc's malloc serve blocks from `threshold` bytes up with mmap, so a freed batch tensor
    goes back to the system. By default glibc raises that threshold after each large free (up to
    32 MiB, mallopt(3)), and a server whose batch shapes keep changing then holds in its heap the
    largest batches it has ever run: its RSS crept from 420 to 770 MB over ten 500-client storms in
    bench/serve_load.py, and stayed at 385-405 MB with this, at the same throughput. A no-op off
    glibc, or when MALLOC_MMAP_THRESHOLD_ is set in the environment (the user's choice wins)."""
    if os.environ.get("MALLOC_MMAP_THRESHOLD_") or not sys.platform.startswith("linux"):
        return False
    import ctypes
    import ctypes.util

    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        return bool(libc.mallopt(M_MMAP_THRESHOLD, threshold))
    except (OSError, AttributeError):  # not glibc (musl has no mallopt)
        return False


def run_server(args: ServeArgs) -> int:
    """Serve until SIGTERM or Ctrl-C; 0 once the requests in flight have been answered."""
    require_serve_packages()
    sock = listen(args.host, args.port)
    return_freed_memory()
    try:
        server = make_server(args)
        host, port = sock.getsockname()[:2]
        print(f"bertkit serve: {server.config.app.state.service.name} on http://{host}:{port} (try it at /; "
              f"API key {'required' if args.api_key else 'not required'})", file=sys.stderr)
        server.run(sockets=[sock])
    finally:
        sock.close()
    return 0
