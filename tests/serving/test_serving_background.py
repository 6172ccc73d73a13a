"""The background worker: bounded, never blocking, handles every queued item in order."""

from __future__ import annotations

import logging
import threading

import pytest

from serving.recommender_service.background import BackgroundWorker


def collecting() -> tuple[BackgroundWorker[int], list[list[int]]]:
    batches: list[list[int]] = []
    worker = BackgroundWorker(name="test-worker", capacity=100, handle=batches.append)
    return worker, batches


def test_items_are_handled_in_order_in_batches_and_stop_waits_for_them() -> None:
    worker, batches = collecting()
    worker.start()
    for item in range(50):
        assert worker.submit(item)
    worker.stop(5.0)
    assert [item for batch in batches for item in batch] == list(range(50))
    # Items that arrive together are handled together, not one wake-up each.
    assert len(batches) < 50


def test_a_full_queue_refuses_without_waiting() -> None:
    release, started = threading.Event(), threading.Event()
    handled: list[int] = []

    def handle(batch: list[int]) -> None:
        started.set()
        release.wait(5.0)
        handled.extend(batch)

    worker = BackgroundWorker(name="test-worker", capacity=2, handle=handle)
    worker.start()
    assert worker.submit(0)
    assert started.wait(5.0)
    assert worker.submit(1)
    assert worker.submit(2)
    # The thread is busy with the first batch and two items wait: the queue is full.
    assert not worker.submit(3)
    release.set()
    worker.stop(5.0)
    assert handled == [0, 1, 2]


def test_a_failing_batch_is_logged_and_the_next_one_is_handled(
    caplog: pytest.LogCaptureFixture,
) -> None:
    handled: list[int] = []
    first = threading.Event()

    def handle(batch: list[int]) -> None:
        if not first.is_set():
            first.set()
            raise ZeroDivisionError("division by zero")
        handled.extend(batch)

    worker = BackgroundWorker(name="test-worker", capacity=10, handle=handle)
    worker.start()
    worker.submit(1)
    assert first.wait(5.0)
    worker.submit(2)
    worker.stop(5.0)
    assert handled == [2]
    [entry] = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert entry.getMessage() == "test-worker: a batch of 1 failed"
    assert entry.exc_info is not None
    assert entry.exc_info[0] is ZeroDivisionError


def test_an_item_after_an_idle_spell_is_still_handled() -> None:
    worker, batches = collecting()
    worker.start()
    threading.Event().wait(0.1)
    worker.submit(7)
    worker.stop(5.0)
    assert batches == [[7]]


def test_a_full_batch_is_handed_over_without_waiting_for_the_interval() -> None:
    handed = threading.Event()
    batches: list[list[int]] = []

    def handle(batch: list[int]) -> None:
        batches.append(batch)
        handed.set()

    worker = BackgroundWorker(
        name="test-worker", capacity=10, handle=handle, interval=3600.0, max_batch=3
    )
    worker.start()
    for item in range(3):
        assert worker.submit(item)
    assert handed.wait(5.0)
    assert batches == [[0, 1, 2]]
    worker.stop(5.0)
    assert batches == [[0, 1, 2]]


def test_batches_hold_at_most_max_batch_items_and_stop_hands_over_the_rest() -> None:
    batches: list[list[int]] = []
    six_handed = threading.Event()

    def handle(batch: list[int]) -> None:
        batches.append(batch)
        if sum(len(b) for b in batches) == 6:
            six_handed.set()

    worker = BackgroundWorker(
        name="test-worker", capacity=10, handle=handle, interval=3600.0, max_batch=3
    )
    for item in range(7):
        assert worker.submit(item)
    worker.start()
    # Two full batches go at once; the seventh item waits for the interval or for stop().
    assert six_handed.wait(5.0)
    assert batches == [[0, 1, 2], [3, 4, 5]]
    worker.stop(5.0)
    assert batches == [[0, 1, 2], [3, 4, 5], [6]]
