"""The batcher alone, with a runner that records its batches: budget, grouping by length, the wait,
answers in each request's order, failures, cancellation, and closing."""

from __future__ import annotations

import random
import threading
import time

import pytest

from bertkit.serve.batcher import Batcher, Closed, _Item, _Request, pick_batch


class Recorder:
    """A runner: result = (key, payload); every batch's (key, lengths) kept; optionally held until released."""

    def __init__(self, hold: bool = False, fail_on=None):
        self.batches: list[tuple] = []
        self.gate = threading.Event()
        if not hold:
            self.gate.set()
        self.fail_on = fail_on

    def __call__(self, key, payloads):
        self.gate.wait(10)
        self.batches.append((key, [p[1] for p in payloads]))
        if self.fail_on is not None and self.fail_on in [p[0] for p in payloads]:
            raise ValueError("bad payload")
        return [(key, p) for p in payloads]


def item(length: int, key="k", sequences: int = 1, index: int = 0) -> _Item:
    return _Item(key, None, length, sequences, _Request(1), index)


def test_pick_batch_takes_the_oldest_and_its_neighbours_in_length_within_the_budget():
    pending = [item(10), item(500), item(12), item(11), item(480), item(9, key="other")]
    chosen = pick_batch(pending, max_batch_tokens=100)
    assert [it.length for it in chosen] == [10, 11, 12]  # 3 x 12 = 36 tokens; 500 would make 4 x 500
    chosen = pick_batch(pending, max_batch_tokens=1000)
    assert [it.length for it in chosen] == [10, 11, 12]  # + 480 would be 4 x 480 = 1920
    chosen = pick_batch(pending, max_batch_tokens=2000)
    assert [it.length for it in chosen] == [10, 11, 12, 480]  # 4 x 480 = 1920; 5 x 500 = 2500 is over
    assert [it.length for it in pick_batch(pending[1:], 1000)] == [500, 480]  # 2 x 500 = 1000


def test_pick_batch_counts_sequences_and_takes_an_oversized_oldest_alone():
    assert len(pick_batch([item(100, sequences=8), item(100, sequences=3)], max_batch_tokens=1000)) == 1  # 11 x 100
    assert len(pick_batch([item(100, sequences=7), item(100, sequences=3)], max_batch_tokens=1000)) == 2
    assert len(pick_batch([item(5000), item(10)], max_batch_tokens=1000)) == 1


def test_results_come_back_in_each_requests_order_and_batches_respect_the_budget():
    runner = Recorder()
    batcher = Batcher(runner, max_batch_tokens=256, max_wait_ms=20)
    rng = random.Random(0)
    submitted, futures = [], []
    lock = threading.Lock()

    def client(seed: int) -> None:
        r = random.Random(seed)
        for _ in range(5):
            key = r.choice(["a", "b"])
            lengths = [r.choice([3, 8, 40, 100]) for _ in range(r.randint(1, 6))]
            payloads = [(f"{seed}-{i}", n) for i, n in enumerate(lengths)]
            future = batcher.submit(key, payloads, lengths)
            with lock:
                submitted.append((key, payloads))
                futures.append(future)
            time.sleep(r.random() / 100)

    threads = [threading.Thread(target=client, args=(rng.randint(0, 10**6),)) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for (key, payloads), future in zip(submitted, futures):
        assert future.result(timeout=10) == [(key, p) for p in payloads]
    batcher.close()
    assert sum(len(lengths) for _, lengths in runner.batches) == sum(len(p) for _, p in submitted)
    for _, lengths in runner.batches:
        assert len(lengths) * max(lengths) <= 256
    assert len(runner.batches) < len(submitted)  # inputs of different requests shared batches


def test_a_lone_request_waits_at_most_max_wait():
    batcher = Batcher(Recorder(), max_batch_tokens=10_000, max_wait_ms=100)
    start = time.monotonic()
    assert batcher.submit("k", [("x", 1)], [5]).result(timeout=5) == [("k", ("x", 1))]
    waited = time.monotonic() - start
    batcher.close()
    assert 0.09 <= waited < 2.0  # slack for a busy machine


def test_on_idle_runs_once_each_time_the_queue_empties_after_work():
    idle = threading.Event()
    calls = []
    batcher = Batcher(Recorder(), max_batch_tokens=100, max_wait_ms=0,
                      on_idle=lambda: (calls.append(time.monotonic()), idle.set()))
    time.sleep(0.05)
    assert calls == []  # a server that has done nothing has nothing to hand back
    for round_ in range(2):
        idle.clear()
        batcher.submit("k", [("x", 5), ("y", 6)], [5, 6]).result(timeout=5)
        assert idle.wait(5) and len(calls) == round_ + 1
    batcher.close()
    assert len(calls) == 2


def test_a_failing_idle_callback_is_logged_and_the_worker_goes_on(caplog):
    def broken():
        raise OSError("no")

    batcher = Batcher(Recorder(), max_batch_tokens=100, max_wait_ms=0, on_idle=broken)
    for _ in range(2):
        assert batcher.submit("k", [("x", 5)], [5]).result(timeout=5) == [("k", ("x", 5))]
        time.sleep(0.05)
    batcher.close()
    assert "idle callback failed" in caplog.text


def test_a_full_budget_does_not_wait():
    batcher = Batcher(Recorder(), max_batch_tokens=100, max_wait_ms=5000)
    start = time.monotonic()
    batcher.submit("k", [("x", 50), ("y", 50)], [50, 50]).result(timeout=5)  # 100 tokens waiting: a full batch
    batcher.close()
    assert time.monotonic() - start < 2


def test_a_failing_batch_fails_its_requests_only():
    runner = Recorder(hold=True, fail_on="bad")
    batcher = Batcher(runner, max_batch_tokens=1000, max_wait_ms=50)
    good = batcher.submit("k", [("good", 1)], [1])
    bad = batcher.submit("k", [("bad", 1)], [1])
    other = batcher.submit("other-key", [("fine", 1)], [1])
    runner.gate.set()
    with pytest.raises(ValueError, match="bad payload"):
        bad.result(timeout=5)
    with pytest.raises(ValueError):
        good.result(timeout=5)  # in the same batch
    assert other.result(timeout=5) == [("other-key", ("fine", 1))]
    assert batcher.submit("k", [("later", 1)], [1]).result(timeout=5) == [("k", ("later", 1))]
    assert batcher.alive
    batcher.close()


def test_a_cancelled_request_is_skipped():
    runner = Recorder(hold=True)
    batcher = Batcher(runner, max_batch_tokens=1000, max_wait_ms=0)
    first = batcher.submit("k", [("first", 1)], [1])  # taken by the worker, which the gate holds
    time.sleep(0.2)
    gone = batcher.submit("k", [("gone", 1)], [1])
    assert gone.cancel()
    kept = batcher.submit("k", [("kept", 1)], [1])
    runner.gate.set()
    assert first.result(timeout=5) and kept.result(timeout=5)
    batcher.close()
    assert [lengths for _, lengths in runner.batches] == [[1], [1]]  # "gone" never ran


def test_close_finishes_the_waiting_items_then_refuses():
    runner = Recorder(hold=True)
    batcher = Batcher(runner, max_batch_tokens=2, max_wait_ms=1000)
    futures = [batcher.submit("k", [(i, 1)], [1]) for i in range(5)]
    runner.gate.set()
    batcher.close(timeout=10)
    assert [f.result(timeout=0) for f in futures] == [[("k", (i, 1))] for i in range(5)]
    assert not batcher.alive
    with pytest.raises(Closed):
        batcher.submit("k", [("late", 1)], [1])


def test_an_empty_submit_is_answered_at_once():
    batcher = Batcher(Recorder(), max_batch_tokens=10, max_wait_ms=10)
    assert batcher.submit("k", [], []).result(timeout=0) == []
    assert batcher.pending == 0
