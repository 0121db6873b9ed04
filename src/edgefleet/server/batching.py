"""Batching many request handlers' database work into one round trip, on a thread of its own.

The device plane's frequent calls (heartbeats, idle deployment polls) each need very little of the
database, so per-call overhead — a transaction, a connection checkout, a round trip, a commit —
is most of their cost. :class:`Batcher` lets request handlers on the event loop hand an item to a
worker thread that processes whatever has queued up meanwhile as one batch and gives each caller
its own result. While one batch runs the next one queues, so batches grow with the load and
nothing ever waits on a timer.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Generic, TypeVar

from sqlalchemy import ColumnElement, Connection, SQLColumnExpression, any_, inspect, literal
from sqlalchemy.dialects.postgresql import ARRAY

from edgefleet.core.errors import EdgefleetError, Unavailable

log = logging.getLogger(__name__)

T = TypeVar("T")
R = TypeVar("R")
V = TypeVar("V")


def one_of(conn: Connection, column: SQLColumnExpression[V], values: Sequence[V]) -> ColumnElement[bool]:
    """``column IN (values)`` for a batch's values, as the database handles it best.

    On PostgreSQL ``column = ANY(:array)``: one parameter, so the statement text is the same
    whatever the batch size and psycopg prepares it once (an IN list of a new length is a new
    statement, planned again: that costs more than running it). Elsewhere a plain IN list.
    """
    if conn.dialect.name == "postgresql":
        element_type = inspect(column).type  # the column's own type, whether mapped attribute or column
        return column == any_(literal(list(values), ARRAY(element_type)))
    return column.in_(values)


@dataclass
class _Pending(Generic[T, R]):
    item: T
    loop: asyncio.AbstractEventLoop
    future: asyncio.Future[R]


class Batcher(Generic[T, R]):
    """Runs ``process`` over batches of submitted items on one thread (see the module doc).

    ``process(items)`` returns one result per item, in order; if it raises, every caller of that
    batch gets the exception. The thread starts on the first :meth:`submit`; :meth:`close`
    processes what is queued and stops it.
    """

    def __init__(
        self, name: str, process: Callable[[Sequence[T]], Sequence[R]], *, max_batch: int = 500
    ) -> None:
        self.name = name
        self.max_batch = max_batch
        self._process = process
        self._queue: list[_Pending[T, R]] = []
        self._cond = threading.Condition()
        self._thread: threading.Thread | None = None
        self._closed = False
        #: batches processed and items in them (for logs and tests)
        self.batches = 0
        self.items = 0

    @property
    def closed(self) -> bool:
        """Whether :meth:`close` was called (submissions are refused from then on)."""
        return self._closed

    async def submit(self, item: T) -> R:
        """Queue ``item`` and wait for its result (UNAVAILABLE once the batcher is closed)."""
        loop = asyncio.get_running_loop()
        pending: _Pending[T, R] = _Pending(item, loop, loop.create_future())
        with self._cond:
            if self._closed:
                raise Unavailable(f"{self.name} is shutting down")
            self._queue.append(pending)
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name=self.name, daemon=True)
                self._thread.start()
            self._cond.notify()
        return await pending.future

    def close(self, timeout: float = 10.0) -> None:
        """Process what is queued, then stop the thread."""
        with self._cond:
            self._closed = True
            self._cond.notify()
            thread = self._thread
        if thread is not None:
            thread.join(timeout)

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._queue and not self._closed:
                    self._cond.wait()
                if not self._queue:
                    return
                batch, self._queue = self._queue[: self.max_batch], self._queue[self.max_batch :]
            try:
                results = list(self._process([p.item for p in batch]))
                if len(results) != len(batch):
                    raise AssertionError(f"{self.name}: {len(results)} results for {len(batch)} items")
            except Exception as exc:  # every caller of the batch sees it; the thread lives on
                if isinstance(exc, EdgefleetError):
                    log.warning("%s: a batch of %d failed: %s", self.name, len(batch), exc)
                else:
                    log.exception("%s: a batch of %d failed", self.name, len(batch))
                _settle(batch, [], exc)
            else:
                self.batches += 1
                self.items += len(batch)
                _settle(batch, results, None)


def _settle(batch: list[_Pending[T, R]], results: list[R], error: BaseException | None) -> None:
    """Resolve the futures of a batch on their event loops (one wake-up per loop)."""
    by_loop: dict[asyncio.AbstractEventLoop, list[tuple[_Pending[T, R], R | None]]] = {}
    for index, pending in enumerate(batch):
        by_loop.setdefault(pending.loop, []).append((pending, results[index] if results else None))

    def resolve(items: list[tuple[_Pending[T, R], R | None]]) -> None:
        for pending, result in items:
            if pending.future.done():  # the caller went away (cancelled)
                continue
            if error is not None:
                pending.future.set_exception(error)
            else:
                pending.future.set_result(result)  # type: ignore[arg-type]

    for loop, items in by_loop.items():
        try:
            loop.call_soon_threadsafe(resolve, items)
        except RuntimeError:  # that loop is closed: nobody is waiting any more
            pass
