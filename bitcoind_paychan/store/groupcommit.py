"""GroupCommit: one thread that commits what asyncio code hands it, in batches.

Committing each write alone costs one fsync apiece. The thread takes every item queued by the
time it is free and commits them together (`_commit`: one transaction, one fsync). When idle
it commits a lone item at once, so batching adds no latency; under load a batch is what
arrived during the previous commit, so the window follows the load. The thread ends after a
moment without work and starts again with the next item. Subclasses answer each item's caller
(on its event loop) once the commit that holds it is durable: the payments' writer
(writer.py) and the gateway's credit takes (gateway/credit.py).
"""

from __future__ import annotations

import queue
import threading
from typing import Generic, TypeVar

MAX_BATCH = 512  # writes per commit (a larger hand-over is committed whole)
IDLE_EXIT = 2.0  # seconds without work before the thread ends
Item = TypeVar("Item")


class GroupCommit(Generic[Item]):
    """`_put(item)` from any thread; the thread calls `_commit(batch)` with what it took."""

    thread_name = "group-commit"

    def __init__(self) -> None:
        self._queue: queue.SimpleQueue[Item] = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._running = False
        self.commits = 0  # commits made, and the writes they held (batch size = their ratio)
        self.committed = 0

    def _put(self, item: Item) -> None:
        self._queue.put(item)
        with self._lock:
            if not self._running:
                self._running = True
                threading.Thread(target=self._work, name=self.thread_name,
                                 daemon=True).start()

    def _size(self, item: Item) -> int:
        """Writes `item` holds."""
        return 1

    def _alone(self, item: Item) -> bool:
        """Must `item` be committed alone (after the batch before it, before any after)?"""
        return False

    def _commit(self, batch: list[Item]) -> None:
        """Commit `batch` in one transaction and answer its callers (never raises)."""
        raise NotImplementedError

    def _work(self) -> None:
        waiting: Item | None = None  # taken off the queue, not in the last batch
        while True:
            try:
                first = waiting if waiting is not None else self._queue.get(
                    timeout=IDLE_EXIT)
            except queue.Empty:
                with self._lock:
                    if self._queue.empty():
                        self._running = False
                        return
                continue
            waiting = None
            batch, size = [first], self._size(first)
            while size < MAX_BATCH and not self._alone(first):
                try:
                    item = self._queue.get_nowait()
                except queue.Empty:
                    break
                if self._alone(item):  # committed after this batch, alone
                    waiting = item
                    break
                batch.append(item)
                size += self._size(item)
            self.commits += 1  # counted before the callers are answered
            self.committed += size
            self._commit(batch)
