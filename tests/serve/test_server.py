"""run_server as a process: SIGTERM stops accepting, lets the request in flight finish, exits 0; and
what `bertkit serve` needs before it loads anything."""

from __future__ import annotations

import argparse
import signal
import subprocess
import sys
import threading
import time

import pytest

from bertkit.errors import BertkitError, InputError
from tests.serve.conftest import NEEDS_SERVE, free_port


def wait_until_up(url: str, proc: subprocess.Popen, seconds: float = 120) -> None:
    import httpx

    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"the server exited: {proc.stderr.read().decode()[-2000:]}")
        try:
            if httpx.get(f"{url}/health", timeout=1).status_code == 200:
                return
        except httpx.TransportError:
            time.sleep(0.2)
    raise AssertionError("the server did not come up")


@pytest.mark.skipif(sys.platform == "win32", reason="SIGTERM")
def test_sigterm_finishes_the_request_in_flight_and_exits_0(minilm_dir):
    pytest.importorskip("uvicorn", reason=NEEDS_SERVE)
    import httpx

    port = free_port()
    url = f"http://127.0.0.1:{port}"
    code = ("import sys\nfrom bertkit.serve.server import run_server\nfrom bertkit.serve.settings import ServeArgs\n"
            f"sys.exit(run_server(ServeArgs(model={str(minilm_dir)!r}, port={port}, max_wait_ms=5000)))\n")
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        wait_until_up(url, proc)
        answers = []
        # alone, the request waits max_wait_ms (5 s) in the batcher for others: in flight when SIGTERM comes
        caller = threading.Thread(target=lambda: answers.append(httpx.post(f"{url}/embed", json={"inputs": "x"},
                                                                           timeout=60)))
        caller.start()
        until(lambda: "bertkit_requests_in_flight 1.0" in httpx.get(f"{url}/metrics").text)
        proc.send_signal(signal.SIGTERM)
        until(lambda: refused(f"{url}/health"))  # no longer accepting...
        assert not answers  # ...while the request is still in flight
        caller.join(60)
        assert answers and answers[0].status_code == 200 and len(answers[0].json()[0]) == 384
        assert proc.wait(60) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def until(condition, seconds: float = 30) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


def refused(url: str) -> bool:
    import httpx

    try:
        httpx.get(url, timeout=1)
    except httpx.TransportError:
        return True
    return False


def test_cmd_serve_checks_its_options_before_loading_anything():
    from bertkit.serve import cmd_serve

    args = argparse.Namespace(model="/no/such/model", host="127.0.0.1", port=8080, max_batch_tokens=0,
                              max_wait_ms=5, max_concurrent_requests=512, max_client_batch_size=64,
                              truncate=False, api_key=None, command="serve")
    with pytest.raises(InputError, match="--max-batch-tokens must be at least 1, got 0"):
        cmd_serve(args)


def test_without_the_serve_extra_the_message_is_one_line(monkeypatch):
    from bertkit.serve.server import require_serve_packages

    monkeypatch.setitem(sys.modules, "uvicorn", None)  # makes `import uvicorn` fail
    with pytest.raises(BertkitError, match=r"^bertkit serve needs uvicorn: pip install 'bertkit\[serve\]'$"):
        require_serve_packages()


def test_bertkit_and_the_serve_options_import_without_torch_or_the_server_packages():
    code = ("import sys\nfor m in ('fastapi', 'uvicorn', 'prometheus_client', 'starlette'):\n    sys.modules[m] = None\n"
            "import bertkit, bertkit.serve, bertkit.serve.settings, bertkit.serve.batcher\n"
            "assert 'torch' not in sys.modules, 'torch imported'\nprint('ok')\n")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.stdout.strip() == "ok", result.stderr[-2000:]


def test_a_port_in_use_is_a_one_line_error_before_the_model_loads():
    import socket

    pytest.importorskip("uvicorn", reason=NEEDS_SERVE)
    from bertkit.serve.server import run_server
    from bertkit.serve.settings import ServeArgs

    with socket.create_server(("127.0.0.1", 0)) as taken:
        port = taken.getsockname()[1]
        with pytest.raises(BertkitError, match=f"^cannot listen on 127.0.0.1:{port}: Address already in use$"):
            run_server(ServeArgs(model="/no/such/model", port=port))  # the port is tried first


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt")
def test_freed_batches_go_back_to_the_system_unless_the_environment_says_otherwise(monkeypatch):
    from bertkit.serve.server import return_freed_memory

    monkeypatch.setenv("MALLOC_MMAP_THRESHOLD_", "65536")
    assert return_freed_memory() is False  # the user's setting stands
    monkeypatch.delenv("MALLOC_MMAP_THRESHOLD_")
    import platform

    assert return_freed_memory() is (platform.libc_ver()[0] == "glibc")
