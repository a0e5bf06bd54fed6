"""Dynamic batching: inputs of concurrent requests run through the model together, in one thread.

A request submits its inputs as items, each with its length in tokens and the number of sequences it
becomes (a question split into windows is several). One worker thread owns the model: it takes the
oldest waiting item, waits at most `max_wait_ms` from that item's arrival for others to join (less
when enough tokens are already waiting), and runs a batch made of that item and the waiting items
of the same kind closest to it in length, as many as fit in `max_batch_tokens` counted with padding
(sequences × longest). Sorting by length keeps padding small; always taking the oldest item bounds
every item's wait. Results go back to each request in the order of its own inputs.

Nothing here knows about models or HTTP: `run(key, payloads) -> results` does the work (service.py),
and a request waits on a concurrent.futures.Future (`asyncio.wrap_future` in the server).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Hashable, Sequence
from concurrent.futures import Future, InvalidStateError
from dataclasses import dataclass, field
from typing import Any

log = logging.getLogger("bertkit.serve")

Runner = Callable[[Hashable, list[Any]], list[Any]]


class Closed(RuntimeError):
    """The batcher takes no more work: the server is shutting down."""


@dataclass(frozen=True)
class BatchStats:
    """What one batch was, for the server's metrics."""

    key: Hashable
    items: int
    sequences: int
    padded_tokens: int  # sequences × longest sequence
    seconds: float


class _Request:
    """One submit: its future, and its results filled in as the items' batches finish."""

    def __init__(self, n: int):
        self.future: Future = Future()
        self.results: list[Any] = [None] * n
        self.remaining = n

    def done(self, index: int, result: Any) -> None:
        self.results[index] = result
        self.remaining -= 1
        if self.remaining == 0:
            self._settle(lambda: self.future.set_result(self.results))

    def fail(self, error: BaseException) -> None:
        self.remaining = -1  # its other items are skipped
        self._settle(lambda: self.future.set_exception(error))

    def _settle(self, action: Callable[[], None]) -> None:
        try:
            if not self.future.cancelled():
                action()
        except InvalidStateError:  # cancelled (the client went away) between the check and the call
            pass


@dataclass
class _Item:
    key: Hashable
    payload: Any
    length: int  # tokens of its longest sequence
    sequences: int
    request: _Request
    index: int
    arrived: float = field(default_factory=time.monotonic)

    @property
    def tokens(self) -> int:
        return self.length * self.sequences


class Batcher:
    """A queue of items and the one worker thread that runs them in batches (see the module docstring)."""

    def __init__(self, run: Runner, *, max_batch_tokens: int, max_wait_ms: float,
                 on_batch: Callable[[BatchStats], None] | None = None, on_idle: Callable[[], None] | None = None):
        """on_idle: called in the worker when the queue runs empty after batches (the service hands
        freed memory back to the OS there, out of every request's way)."""
        self._run = run
        self._on_idle = on_idle
        self.max_batch_tokens = max_batch_tokens
        self.max_wait = max_wait_ms / 1000
        self._on_batch = on_batch
        self._cond = threading.Condition()
        self._pending: list[_Item] = []  # in arrival order
        self._tokens: dict[Hashable, int] = {}  # waiting tokens per key
        self._thread: threading.Thread | None = None
        self._closed = False

    # ---- the requests' side (any thread)

    def submit(self, key: Hashable, payloads: Sequence[Any], lengths: Sequence[int],
               sequences: Sequence[int] | None = None) -> Future:
        """A future of the results of `payloads` (a list, in their order), run with others of the same `key`."""
        request = _Request(len(payloads))
        if not payloads:
            request.future.set_result([])
            return request.future
        sequences = sequences if sequences is not None else [1] * len(payloads)
        now = time.monotonic()
        items = [_Item(key, p, max(1, n), max(1, s), request, i, now)
                 for i, (p, n, s) in enumerate(zip(payloads, lengths, sequences, strict=True))]
        with self._cond:
            if self._closed:
                raise Closed("the server is shutting down")
            self._start()
            self._pending.extend(items)
            self._tokens[key] = self._tokens.get(key, 0) + sum(it.tokens for it in items)
            self._cond.notify()
        return request.future

    @property
    def pending(self) -> int:
        """Items waiting for a batch."""
        return len(self._pending)

    @property
    def alive(self) -> bool:
        """False once the worker thread has died or the batcher was closed."""
        return not self._closed and (self._thread is None or self._thread.is_alive())

    def close(self, timeout: float | None = None) -> None:
        """Refuse new items, finish the waiting ones, and stop the worker."""
        with self._cond:
            self._closed = True
            self._cond.notify()
        if self._thread is not None:
            self._thread.join(timeout)

    def _start(self) -> None:
        if self._thread is None:  # on first use, so that an app made and never served starts no thread
            self._thread = threading.Thread(target=self._work, name="bertkit-batcher", daemon=True)
            self._thread.start()

    # ---- the worker

    def _work(self) -> None:
        busy = False
        while True:
            if busy and self._on_idle is not None and not self._pending:
                busy = False
                try:
                    self._on_idle()
                except Exception:  # housekeeping: never the end of the worker every request waits on
                    log.exception("the batcher's idle callback failed")
            batch = self._next_batch()
            if batch is None:
                return
            self._run_batch(batch)
            busy = True

    def _next_batch(self) -> list[_Item] | None:
        with self._cond:
            while not self._pending:
                if self._closed:
                    return None
                self._cond.wait()
            oldest = self._pending[0]
            deadline = oldest.arrived + self.max_wait
            while not self._closed and self._tokens[oldest.key] < self.max_batch_tokens:
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                self._cond.wait(left)
            chosen = pick_batch(self._pending, self.max_batch_tokens)
            taken = {id(it) for it in chosen}
            self._pending = [it for it in self._pending if id(it) not in taken]
            self._tokens[oldest.key] -= sum(it.tokens for it in chosen)
            return [it for it in chosen if it.request.remaining > 0 and not it.request.future.cancelled()]

    def _run_batch(self, items: list[_Item]) -> None:
        if not items:
            return
        start = time.perf_counter()
        try:
            results = self._run(items[0].key, [it.payload for it in items])
            if len(results) != len(items):
                raise RuntimeError(f"the batch runner returned {len(results)} results for {len(items)} inputs")
        except Exception as e:  # the requests of this batch fail; the worker goes on with the next
            log.exception("batch of %d inputs failed", len(items))
            for request in {id(it.request): it.request for it in items}.values():
                request.fail(e)
            return
        for it, result in zip(items, results):
            if it.request.remaining > 0:
                it.request.done(it.index, result)
        if self._on_batch is not None:
            sequences = sum(it.sequences for it in items)
            self._on_batch(BatchStats(items[0].key, len(items), sequences,
                                      sequences * max(it.length for it in items), time.perf_counter() - start))


def pick_batch(pending: Sequence[_Item], max_batch_tokens: int) -> list[_Item]:
    """The oldest item, and the items of its key closest to it in length (earlier ones first among
    equals) while sequences × longest stays within `max_batch_tokens`. The oldest item goes even when
    it alone is over the budget: the runner splits it."""
    oldest = pending[0]
    same = [it for it in pending[1:] if it.key == oldest.key]
    same.sort(key=lambda it: abs(it.length - oldest.length))  # stable: arrival order among equals
    chosen, sequences, longest = [oldest], oldest.sequences, oldest.length
    for it in same:
        grown = max(longest, it.length)
        if (sequences + it.sequences) * grown <= max_batch_tokens:
            chosen.append(it)
            sequences, longest = sequences + it.sequences, grown
    return chosen
