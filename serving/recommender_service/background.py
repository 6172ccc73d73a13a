"""Work done off the response path: a bounded queue of items and one thread that handles them.

A request hands an item to :meth:`BackgroundWorker.submit`, which never blocks: when the
queue is full the item is dropped and ``False`` returned, so the caller can count the drop.
The thread sleeps while there is nothing to do; the first item wakes it, it lets
``interval`` seconds of items gather, or fewer once ``max_batch`` items wait, then hands
them, in order, to ``handle``, at most ``max_batch`` at a time (a batch that raises is
logged and the next one is handled). Waking once per batch rather than per item matters
twice: a thread woken for every request would take the interpreter lock from the event loop
on every request, and a batch lets the store write many records at once.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable
from typing import Generic, TypeVar

from serving.recommender_service.logs import LOGGER

Item = TypeVar("Item")
DEFAULT_INTERVAL_SECONDS = 0.02


class BackgroundWorker(Generic[Item]):
    """Hands queued items to ``handle`` in batches on one thread; holds ``capacity`` items.

    ``max_batch`` defaults to ``capacity``: every queued item in one batch.
    """

    def __init__(
        self,
        *,
        name: str,
        capacity: int,
        handle: Callable[[list[Item]], None],
        interval: float = DEFAULT_INTERVAL_SECONDS,
        max_batch: int | None = None,
    ) -> None:
        self.name = name
        self._items: queue.Queue[Item] = queue.Queue(maxsize=capacity)
        self._handle = handle
        self._interval = interval
        self._max_batch = capacity if max_batch is None else max_batch
        self._has_items = threading.Event()
        # Ends the wait for more items early: set by a full batch and by stop().
        self._wake = threading.Event()
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)

    def start(self) -> None:
        self._thread.start()

    def submit(self, item: Item) -> bool:
        """Queue ``item``; return False, without waiting, when the queue is full."""
        try:
            self._items.put_nowait(item)
        except queue.Full:
            return False
        if not self._has_items.is_set():
            self._has_items.set()
        if not self._wake.is_set() and self._items.qsize() >= self._max_batch:
            self._wake.set()
        return True

    def stop(self, timeout: float) -> None:
        """Handle the queued items, then end the thread; give up waiting after ``timeout``."""
        self._stopping.set()
        self._wake.set()
        self._has_items.set()
        if self._thread.is_alive():
            self._thread.join(timeout)
        if self._thread.is_alive():
            LOGGER.warning("%s: %d items still queued at shutdown", self.name, self._items.qsize())

    def _run(self) -> None:
        while True:
            self._has_items.wait()
            self._wake.wait(self._interval)
            # Cleared before the queue is read, so an item queued from now on sets them again;
            # read after, so a stop() from now on is seen at the next turn at the latest.
            self._has_items.clear()
            self._wake.clear()
            stopping = self._stopping.is_set()
            self._handle_queued(drain=stopping)
            if stopping:
                return

    def _handle_queued(self, *, drain: bool) -> None:
        """Hand over a batch, and more while full ones wait (or until none is left to drain)."""
        while batch := self._take(self._max_batch):
            try:
                self._handle(batch)
            # A failing batch must not end the thread that handles all later ones.
            except Exception:
                LOGGER.exception("%s: a batch of %d failed", self.name, len(batch))
            if not drain and self._items.qsize() < self._max_batch:
                break
        # Items queued before the events were cleared set neither: start their wait here.
        if not self._items.empty():
            self._has_items.set()

    def _take(self, limit: int) -> list[Item]:
        batch: list[Item] = []
        while len(batch) < limit:
            try:
                batch.append(self._items.get_nowait())
            except queue.Empty:
                break
        return batch
