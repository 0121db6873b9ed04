"""The base of every device-plane service: two tiers over a batch, one queue on a thread of its own.

A service answers one device operation for a batch of items, per item a result or an
:class:`~edgefleet.core.errors.EdgefleetError`, in two tiers:

* :meth:`Service.batch`, set-based: a few SQL statements for the whole batch decide the common
  cases (an idle poll, a plain success, a stored heartbeat) and leave every other item undecided;
* :meth:`Service.one`, exact: one item in a transaction of its own, every rule and every error in
  the documented order.

Both entries call :meth:`Service.call` with one item: it is queued for the batch tier (when
:meth:`Service.batchable`), and what that leaves undecided runs through the exact tier on a worker
thread. Whatever queues up while a batch runs goes to the service's one batch thread as the next
batch, so batches grow with the load and nothing ever waits on a timer; the
per-call cost of the database (a transaction, a checkout, a round trip, a commit) is paid once per
batch.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import ClassVar, Generic, TypeVar

from anyio import to_thread
from sqlalchemy.orm import Session

from edgefleet.core.errors import EdgefleetError
from edgefleet.server import devices
from edgefleet.server.db.engine import Database, HeldConnection
from edgefleet.server.db.schema import Device

log = logging.getLogger(__name__)

T = TypeVar("T")
R = TypeVar("R")


@dataclass
class _Pending(Generic[T, R]):
    item: T
    loop: asyncio.AbstractEventLoop
    future: asyncio.Future[R | None]


@dataclass(frozen=True)
class DeviceCall:
    """Who makes a device call: the name and serial of its client certificate, and the DeviceName its
    body gives (``named``; None: the certificate's)."""

    device_name: str
    serial: str
    named: str | None = field(default=None, kw_only=True)

    @property
    def own(self) -> bool:
        """Whether the body names the certificate's own device (the batch tiers vouch for no other)."""
        return self.named is None or self.named == self.device_name

    def authenticate(self, session: Session, now: datetime, fleet_name: str | None = None) -> Device:
        """The caller's device row: UNAUTHENTICATED if the certificate is revoked or replaced, then
        PERMISSION_DENIED unless the body's DeviceName (and ``fleet_name``) are the caller's own."""
        device = devices.authenticate_device(session, self.device_name, self.serial, now)
        if fleet_name is not None:
            devices.check_identity(device, self.device_name if self.named is None else self.named, fleet_name)
        return device


class Service(Generic[T, R]):
    """One device operation over batches of items ``T`` answering ``R`` (see the module doc).

    Subclasses give :attr:`name`, :meth:`batch` and :meth:`one`, and may narrow :meth:`batchable`.
    The batch thread starts on the first :meth:`submit`.
    """

    #: the operation (names the batch thread, ``edgefleet-<name>``)
    name: ClassVar[str]
    #: what :meth:`batch` answers for an item it leaves to the exact tier
    UNDECIDED: ClassVar[object] = None

    def __init__(self, db: Database, *, max_batch: int = 500) -> None:
        self.db = db
        self.max_batch = max_batch
        self._connections: list[HeldConnection] = []
        self._queue: list[_Pending[T, R]] = []
        self._cond = threading.Condition()
        self._thread: threading.Thread | None = None
        self._closed = False

    def held(self, *, read_only: bool = False) -> HeldConnection:
        """A connection kept by the batch thread across batches (released by :meth:`close`)."""
        conn = HeldConnection(self.db, read_only=read_only)
        self._connections.append(conn)
        return conn

    def batch(self, items: Sequence[T]) -> list[R | None]:
        """The set-based tier: per item its answer, or :attr:`UNDECIDED` for the exact tier.

        Raises (UNAVAILABLE, ...) when the batch's transaction fails; then nothing of it was kept.
        """
        raise NotImplementedError

    def one(self, item: T) -> R:
        """The exact tier: ``item`` alone, every rule applied; raises the item's EdgefleetError."""
        raise NotImplementedError

    def batchable(self, item: T) -> bool:
        """Whether :meth:`batch` may decide ``item`` at all (otherwise it goes straight to :meth:`one`)."""
        return True

    def run(self, items: Sequence[T]) -> list[R | EdgefleetError]:
        """Both tiers, here and now: per item its answer or its error (for tests and tools)."""
        batched = [i for i, item in enumerate(items) if self.batchable(item)]
        answers = dict(zip(batched, self.batch([items[i] for i in batched]), strict=True))
        out: list[R | EdgefleetError] = []
        for index, item in enumerate(items):
            if answers.get(index, self.UNDECIDED) is not self.UNDECIDED:
                out.append(answers[index])  # type: ignore[arg-type]
                continue
            try:
                out.append(self.one(item))
            except EdgefleetError as exc:
                out.append(exc)
        return out

    async def call(self, item: T) -> R:
        """The answer for ``item`` (both tiers); raises its EdgefleetError."""
        answer: object = self.UNDECIDED
        if self.batchable(item):
            try:
                answer = await self.submit(item)
            except Exception as exc:  # the exact tier reports it, in the documented shape
                log.warning("%s: the batch failed (%s); the call takes the exact path", self.name, exc)
        if answer is not self.UNDECIDED:
            return answer  # type: ignore[return-value]
        return await to_thread.run_sync(self.one, item)

    async def submit(self, item: T) -> R | None:
        """``item`` through the queue to :meth:`batch` (a batch's error is every caller's);
        :attr:`UNDECIDED` once the service is closed."""
        loop = asyncio.get_running_loop()
        pending: _Pending[T, R] = _Pending(item, loop, loop.create_future())
        with self._cond:
            if self._closed:
                return self.UNDECIDED  # type: ignore[return-value]
            self._queue.append(pending)
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name=f"edgefleet-{self.name}", daemon=True)
                self._thread.start()
            self._cond.notify()
        return await pending.future

    def close(self, timeout: float = 10.0) -> None:
        """Answer what is queued, then stop the thread and release its connections."""
        with self._cond:
            self._closed = True
            self._cond.notify()
            thread = self._thread
        if thread is not None:
            thread.join(timeout)
        for conn in self._connections:
            conn.close()

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._queue and not self._closed:
                    self._cond.wait()
                if not self._queue:
                    return
                batch, self._queue = self._queue[: self.max_batch], self._queue[self.max_batch :]
            try:
                results = list(self.batch([p.item for p in batch]))
                if len(results) != len(batch):
                    raise AssertionError(f"{self.name}: {len(results)} results for {len(batch)} items")
            except Exception as exc:  # every caller of the batch sees it; the thread lives on
                if isinstance(exc, EdgefleetError):
                    log.warning("%s: a batch of %d failed: %s", self.name, len(batch), exc)
                else:
                    log.exception("%s: a batch of %d failed", self.name, len(batch))
                _settle(batch, [], exc)
            else:
                _settle(batch, results, None)


def _settle(batch: list[_Pending[T, R]], results: list[R | None], error: BaseException | None) -> None:
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
                pending.future.set_result(result)

    for loop, items in by_loop.items():
        try:
            loop.call_soon_threadsafe(resolve, items)
        except RuntimeError:  # that loop is closed: nobody is waiting any more
            pass
