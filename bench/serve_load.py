"""Load on `bertkit serve`, loopback only, bounded in requests and time: it ends by itself.

    python bench/serve_load.py load       # 16 clients, 2,000 requests of 1-8 texts to /v1/embeddings
    python bench/serve_load.py overload   # 500 clients at once against --max-concurrent-requests 64
    python bench/serve_load.py both --json result.json

`load` starts the server (MiniLM by default) in a process of its own on a free 127.0.0.1 port, then in
this process, in rounds of 100 requests: embeds the round's texts offline with `bertkit.embed`'s code
(the server idle) for the reference throughput, then sends the round's requests from N concurrent
clients and checks every answer against the offline vectors. Alternating keeps both sides under the
same outside load on a shared machine. Reports errors, requests/s, texts/s, p50/p99 latency and the
server's throughput as a share of the offline one. It stops sending after --time-limit seconds.

`overload` sends many more requests at once than the server admits, in two storms: the excess is
refused with 429 and Retry-After, nothing else fails, the server's memory (RSS, before and after each
storm) stops growing, and /health and a normal request answer after.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import os
import random
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

WORDS = ("the a of and to in is was for on with as by at from that this it are be has have an not "
         "guitar market inflation weather rain cat dog football phone recipe pasta stage music city "
         "river mountain school student teacher computer network server model language sentence "
         "embedding vector search query answer question government election economy health doctor "
         "hospital travel train airport flight coffee morning evening history science research").split()


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("run", choices=["load", "overload", "both"])
    p.add_argument("--model", default=None, help="model to serve (default: the built-in all-MiniLM-L6-v2)")
    p.add_argument("--clients", type=int, default=None, help="concurrent clients (load 16, overload 500)")
    p.add_argument("--requests", type=int, default=None, help="requests in all (load 2,000, overload 3,000)")
    p.add_argument("--max-texts", type=int, default=8, help="texts per request: 1 to this many")
    p.add_argument("--encoding", choices=["float", "base64"], default="float",
                   help="encoding_format asked for (the openai client asks for base64)")
    p.add_argument("--max-concurrent", type=int, default=64, help="overload: the server's --max-concurrent-requests")
    p.add_argument("--time-limit", type=float, default=110, help="seconds after which no new request is sent")
    p.add_argument("--malloc-mmap-threshold", type=int, default=None, metavar="BYTES",
                   help="run the server with MALLOC_MMAP_THRESHOLD_=BYTES (glibc): freed batch tensors go back "
                        "to the system instead of staying in the heap")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", type=Path, default=None, help="also write the results here")
    return p.parse_args()


def sentence(rng: random.Random) -> str:
    words = rng.choices(WORDS, k=rng.choice([3, 6, 10, 15, 25, 40]))
    return " ".join(words).capitalize() + "."


ROUND = 100  # requests per round of the load run


def make_requests(n: int, max_texts: int, seed: int) -> list[list[str]]:
    rng = random.Random(seed)
    return [[sentence(rng) for _ in range(rng.randint(1, max_texts))] for _ in range(n)]


# ---- the server process ----------------------------------------------------------------------------


def problems(server: Server) -> list[str]:
    """The server log's warnings and errors (the first few)."""
    lines = Path(server.log.name).read_text(errors="replace").splitlines()
    return [line for line in lines if line.startswith(("WARNING", "ERROR")) or "Traceback" in line][:5]


def server_env(args: argparse.Namespace) -> dict[str, str]:
    if args.malloc_mmap_threshold is None:
        return {}
    return {"MALLOC_MMAP_THRESHOLD_": str(args.malloc_mmap_threshold)}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """`run_server` in a child process on a free loopback port; SIGTERM (and a wait) at the end."""

    def __init__(self, model: str | None, *, env: dict[str, str] | None = None, **settings):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        values = dict(model=model, host="127.0.0.1", port=self.port, **settings)
        code = ("import sys\nfrom bertkit.serve.server import run_server\nfrom bertkit.serve.settings import ServeArgs\n"
                f"sys.exit(run_server(ServeArgs(**{values!r})))\n")
        self.log = tempfile.NamedTemporaryFile(prefix="serve-load-", suffix=".log", delete=False)  # noqa: SIM115
        self.proc = subprocess.Popen([sys.executable, "-c", code], stdout=self.log, stderr=subprocess.STDOUT,
                                     env={**os.environ, **(env or {})})

    def __enter__(self) -> Server:
        import httpx

        deadline = time.monotonic() + 180
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise SystemExit(f"the server exited: {self.log_tail()}")
            try:
                if httpx.get(self.url + "/health", timeout=2).status_code == 200:
                    return self
            except httpx.TransportError:
                time.sleep(0.3)
        raise SystemExit("the server did not come up in 180 s")

    def log_tail(self, n: int = 2000) -> str:
        return Path(self.log.name).read_text(errors="replace")[-n:]

    def cpu_seconds(self) -> float:
        """User + system CPU time of the server process so far (Linux /proc)."""
        fields = Path(f"/proc/{self.proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def rss_mb(self) -> float:
        """The server process's resident memory (Linux /proc)."""
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
        return float("nan")

    def __exit__(self, *exc) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.exit_code = self.proc.wait(60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.exit_code = self.proc.wait()
        else:
            self.exit_code = self.proc.returncode


# ---- clients -----------------------------------------------------------------------------------------


async def fire(url: str, requests: list[list[str]], clients: int, encoding: str, time_limit: float,
               keep: int = 0) -> dict:
    """`clients` workers send the requests, each waiting for its answer before the next; no request
    starts after `time_limit` seconds. Returns statuses, latencies, and the first `keep` answers."""
    import httpx

    queue = list(enumerate(requests))[::-1]
    statuses: dict[int, int] = {}
    latencies: list[float] = []
    texts_done = 0
    kept: dict[int, np.ndarray] = {}
    errors: list[str] = []
    start = time.perf_counter()

    async def worker(client: httpx.AsyncClient) -> None:
        nonlocal texts_done
        while queue and time.perf_counter() - start < time_limit:
            i, texts = queue.pop()
            sent = time.perf_counter()
            try:
                r = await client.post(url + "/v1/embeddings", json={"input": texts, "model": "m",
                                                                     "encoding_format": encoding})
            except httpx.TransportError as e:
                statuses[-1] = statuses.get(-1, 0) + 1
                errors.append(f"{type(e).__name__} {e} ({time.perf_counter() - start:.1f} s in)")
                continue
            statuses[r.status_code] = statuses.get(r.status_code, 0) + 1
            if r.status_code == 200:
                latencies.append(time.perf_counter() - sent)
                data = r.json()["data"]
                texts_done += len(data)
                if i < keep:
                    kept[i] = np.array([_vector(d["embedding"]) for d in data])
            elif len(errors) < 5:
                errors.append(f"{r.status_code} {r.text[:200]}")

    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    async with httpx.AsyncClient(limits=limits, timeout=120) as client:
        await asyncio.gather(*(worker(client) for _ in range(clients)))
    seconds = time.perf_counter() - start
    return {"statuses": statuses, "latencies": latencies, "texts": texts_done, "seconds": seconds,
            "kept": kept, "errors": errors, "sent": sum(statuses.values())}


def _vector(embedding) -> np.ndarray:
    if isinstance(embedding, str):
        return np.frombuffer(base64.b64decode(embedding), dtype="<f4")
    return np.asarray(embedding, dtype=np.float32)


def batch_metrics(url: str) -> dict:
    """The server's own count of batches and their mean size, from /metrics."""
    import httpx

    values = {}
    for line in httpx.get(url + "/metrics", timeout=10).text.splitlines():
        name, _, value = line.partition(" ")
        if name in ("bertkit_batch_size_count", "bertkit_batch_size_sum", "bertkit_batch_tokens_sum"):
            values[name] = float(value)
    count = values.get("bertkit_batch_size_count", 0)
    return {"server_batches": int(count),
            "mean_texts_per_batch": round(values.get("bertkit_batch_size_sum", 0) / max(count, 1), 1),
            "mean_padded_tokens_per_batch": round(values.get("bertkit_batch_tokens_sum", 0) / max(count, 1))}


def percentile(values: list[float], q: float) -> float:
    return float(np.percentile(values, q)) if values else float("nan")


# ---- the two runs -------------------------------------------------------------------------------------


def run_load(args: argparse.Namespace) -> dict:
    """Rounds of (the offline embedding of a round's texts, then the round's requests to the server),
    so that both sides see the same share of whatever else the machine is doing."""
    import bertkit

    clients, n = args.clients or 16, args.requests or 2000
    requests = make_requests(n, args.max_texts, args.seed)
    totals = {"offline_texts": 0, "offline_seconds": 0.0, "offline_cpu": 0.0, "texts": 0, "seconds": 0.0,
              "cpu": 0.0, "sent": 0}
    statuses: dict[int, int] = {}
    latencies: list[float] = []
    errors: list[str] = []
    diff = 0.0
    start = time.perf_counter()
    with Server(args.model, env=server_env(args)) as server:
        embedder = bertkit.Embedder.from_pretrained(args.model)
        embedder([t for r in requests[:16] for t in r])  # warm-up, as the server's first requests are
        asyncio.run(fire(server.url, requests[:32], clients, args.encoding, 30))
        for at in range(0, n, ROUND):
            left = args.time_limit - (time.perf_counter() - start)
            if left <= 0:
                break
            part = requests[at:at + ROUND]
            texts = [t for r in part for t in r]
            t0, c0 = time.perf_counter(), time.process_time()
            offline = embedder(texts)  # bertkit.embed's path (batch_size 32) on the same texts
            totals["offline_seconds"] += time.perf_counter() - t0
            totals["offline_cpu"] += time.process_time() - c0
            totals["offline_texts"] += len(texts)
            c0 = server.cpu_seconds()
            result = asyncio.run(fire(server.url, part, clients, args.encoding, left, keep=len(part)))
            totals["cpu"] += server.cpu_seconds() - c0
            for key in ("texts", "seconds", "sent"):
                totals[key] += result[key]
            for status, count in result["statuses"].items():
                statuses[status] = statuses.get(status, 0) + count
            latencies += result["latencies"]
            errors += result["errors"][:5]
            starts = np.cumsum([0] + [len(r) for r in part])
            for i, v in result["kept"].items():
                diff = max(diff, float(np.abs(v - offline[starts[i]:starts[i + 1]]).max()))
        batches = batch_metrics(server.url)
    offline_rate = totals["offline_texts"] / totals["offline_seconds"]
    served_rate = totals["texts"] / totals["seconds"]
    return {
        "run": "load", "clients": clients, "requests_sent": totals["sent"], "statuses": statuses,
        "errors": sum(v for k, v in statuses.items() if k != 200), "error_samples": errors[:5],
        "texts": totals["texts"], "seconds": round(totals["seconds"], 2),
        "requests_per_s": round(statuses.get(200, 0) / totals["seconds"], 1),
        "texts_per_s": round(served_rate, 1),
        "p50_ms": round(percentile(latencies, 50) * 1000, 1),
        "p99_ms": round(percentile(latencies, 99) * 1000, 1),
        "offline_texts": totals["offline_texts"], "offline_seconds": round(totals["offline_seconds"], 2),
        "offline_texts_per_s": round(offline_rate, 1), "served_over_offline": round(served_rate / offline_rate, 3),
        # CPU time is less at the mercy of the machine's other users than wall time
        "server_cpu_ms_per_text": round(1000 * totals["cpu"] / max(totals["texts"], 1), 2),
        "offline_cpu_ms_per_text": round(1000 * totals["offline_cpu"] / totals["offline_texts"], 2),
        "cpu_offline_over_served": round((totals["offline_cpu"] / totals["offline_texts"])
                                         / max(totals["cpu"] / max(totals["texts"], 1), 1e-9), 3),
        "malloc_mmap_threshold": args.malloc_mmap_threshold, "max_abs_diff_vs_offline": diff, "server_exit_code": server.exit_code, "encoding": args.encoding,
        **batches, "load_average": os.getloadavg()[0], "server_log": server.log.name,
        "server_log_problems": problems(server),
    }


def run_overload(args: argparse.Namespace) -> dict:
    """Two storms of requests, each half the time limit: the second shows whether memory keeps growing."""
    import httpx

    clients, n = args.clients or 500, args.requests or 3000
    requests = make_requests(n, args.max_texts, args.seed + 1)
    statuses: dict[int, int] = {}
    latencies: list[float] = []
    errors: list[str] = []
    rss = []
    with Server(args.model, env=server_env(args), max_concurrent_requests=args.max_concurrent) as server:
        asyncio.run(fire(server.url, requests[:32], 4, args.encoding, 30))  # warm-up
        rss.append(server.rss_mb())
        seconds = 0.0
        for half in (requests[: n // 2], requests[n // 2:]):
            result = asyncio.run(fire(server.url, half, clients, args.encoding, args.time_limit / 2))
            seconds += result["seconds"]
            rss.append(server.rss_mb())
            for status, count in result["statuses"].items():
                statuses[status] = statuses.get(status, 0) + count
            latencies += result["latencies"]
            errors += [e for e in result["errors"] if not e.startswith("429")]
        health = httpx.get(server.url + "/health", timeout=10)
        metrics = httpx.get(server.url + "/metrics", timeout=10).text
        after = httpx.post(server.url + "/v1/embeddings", json={"input": "after the storm"}, timeout=30)
    refused = [line for line in metrics.splitlines()
               if line.startswith('bertkit_errors_total{endpoint="/v1/embeddings",type="overloaded"}')]
    return {
        "run": "overload", "clients": clients, "max_concurrent_requests": args.max_concurrent,
        "requests_sent": sum(statuses.values()), "statuses": statuses,
        "other_errors": sum(v for k, v in statuses.items() if k not in (200, 429)), "error_samples": errors[:5],
        "seconds": round(seconds, 2), "ok_per_s": round(statuses.get(200, 0) / seconds, 1),
        "p50_ms_ok": round(percentile(latencies, 50) * 1000, 1),
        "p99_ms_ok": round(percentile(latencies, 99) * 1000, 1),
        "rss_mb_before_first_second_storm": [round(x, 1) for x in rss],
        "malloc_mmap_threshold": args.malloc_mmap_threshold,
        "health_after": health.status_code, "request_after": after.status_code,
        "metrics_overloaded": refused[0] if refused else None, "server_exit_code": server.exit_code,
        "server_log": server.log.name, "server_log_problems": problems(server),
    }


def show(result: dict) -> None:
    print(f"== {result['run']}")
    for k, v in result.items():
        if k != "run":
            print(f"  {k:<26} {v}")


def main() -> None:
    args = parse_args()
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    results = []
    if args.run in ("load", "both"):
        results.append(run_load(args))
        show(results[-1])
    if args.run in ("overload", "both"):
        results.append(run_overload(args))
        show(results[-1])
    if args.json:
        args.json.write_text(json.dumps(results, indent=1, default=str))


if __name__ == "__main__":
    main()
