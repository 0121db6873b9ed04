"""Disk with periodic upload: what was written to Disk goes to the cloud store later, none lost.

The Disk tree stays the primary destination and complete: a batch is SUCCESS once Disk has it.
Finishing the batch also queues its object in the spool's ``transfers`` table (same transaction).
Every ``period_seconds`` the :class:`TransferWorker` takes the queue from its head, oldest first,
and uploads each object's raw-data files, then the ``.jsonl`` object, to the cloud sink under the
same keys. The ``.jsonl`` is rewritten so that its ``data-ref`` URIs name the cloud objects
(:func:`~edgefleet.capture.records.rebase_data_refs`): the bucket then holds the bytes a Cloud
destination would have written.

Progress is durable per part: after each raw-data file the store confirmed, the transfer's
``parts_done`` is committed; after the ``.jsonl``, the transfer leaves the queue and its upload-log
entry (the cloud object, what the device daemon reports to the capture index) is written in one
transaction. A SIGKILL therefore re-uploads at most the part in flight, to the same key.

A failed part stops the round; the head is retried with exponential backoff and jitter (the
capture service's :class:`RetryPolicy`, never giving up) for as long as it takes. A transfer whose
Disk object is gone or unreadable as records (removed or edited by hand) can never succeed: it is
given up, counted and logged, so it does not block the queue for ever. A raw-data file missing
on Disk is skipped the same way (the records still go up, counted as ``transfer_given_up``).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import datetime

from edgefleet.capture.records import rebase_data_refs
from edgefleet.capture.sinks import DiskSink, Sink
from edgefleet.capture.spool import Spool, Transfer
from edgefleet.core.errors import EdgefleetError, InvalidArgument, NotFound, Unavailable

log = logging.getLogger(__name__)

#: Transfers read from the queue per round trip to the spool.
_PAGE = 100


@dataclass
class TransferCounters:
    """What the worker did since start."""

    #: objects the cloud store confirmed (raw-data files not counted)
    transferred: int = 0
    #: failed attempts (a part the store did not confirm)
    errors: int = 0
    #: transfers or raw-data files given up (gone from Disk, or not records)
    given_up: int = 0
    last_error: str | None = None
    last_transfer_time: datetime | None = None


class TransferWorker:
    """Uploads the Disk objects queued in ``spool`` to ``cloud`` every ``period_seconds`` (module doc).

    ``delay(attempts)`` gives the wait after the n-th failed attempt in a row. With
    ``start=False`` no thread runs: call :meth:`run_once`.
    """

    def __init__(
        self,
        spool: Spool,
        disk: DiskSink,
        cloud: Sink,
        *,
        period_seconds: float,
        delay: Callable[[int], float],
        clock: Callable[[], datetime],
        start: bool = True,
    ) -> None:
        if period_seconds <= 0:
            raise InvalidArgument("the periodic upload period must be positive")
        self.disk = disk
        self.cloud = cloud
        self.period_seconds = period_seconds
        self._spool = spool
        self._delay = delay
        self._clock = clock
        self._failures = 0  # failed rounds in a row (the backoff's attempt count)
        self._lock = threading.Lock()  # one round at a time
        self._counters = TransferCounters()
        self._counters_lock = threading.Lock()
        self._stopped = threading.Event()
        self._thread: threading.Thread | None = None
        if start:
            self._thread = threading.Thread(target=self._run, name="edgefleet-capture-transfer", daemon=True)
            self._thread.start()

    def run_once(self) -> EdgefleetError | None:
        """One round: transfer the queue from its head until it is empty or a part fails (returned)."""
        with self._lock:
            while not self._stopped.is_set():
                batch = self._spool.transfers(_PAGE)
                if not batch:
                    self._failures = 0
                    return None
                for transfer in batch:
                    if self._stopped.is_set():  # closing: the rest waits for the next start
                        return None
                    error = self._transfer(transfer)
                    if error is not None:
                        self._failures += 1
                        return error
            return None

    def counters(self) -> TransferCounters:
        """A copy of the counters."""
        with self._counters_lock:
            return replace(self._counters)

    def close(self) -> None:
        """Stop the thread after the part in flight (what is left stays queued for the next start)."""
        self._stopped.set()
        if self._thread is not None:
            self._thread.join()

    # --- internals --------------------------------------------------------------------------------

    def _run(self) -> None:
        wait = 0.0  # a queue left by an earlier run goes up at once
        while not self._stopped.wait(wait):
            try:
                error = self.run_once()
            except Exception:  # the spool itself failed: keep the worker alive, nothing is lost
                log.exception("capture transfer: round failed; retrying")
                error = Unavailable("the capture spool failed")
                self._failures += 1
            wait = self.period_seconds if error is None else self._delay(self._failures)

    def _transfer(self, transfer: Transfer) -> EdgefleetError | None:
        key = transfer.upload.key
        directory = key.rsplit("/", 1)[0]
        try:
            body = self.disk.get(key)
            rebased, raw_keys = rebase_data_refs(body, directory, self.cloud.uri)
        except (NotFound, InvalidArgument) as exc:
            self._give_up(transfer, exc)
            return None
        except EdgefleetError as exc:  # Disk unreadable for now: retried
            return self._failed(transfer, exc)
        parts = [*raw_keys, key]
        for index in range(transfer.parts_done, len(parts)):
            part = parts[index]
            try:
                if part == key:
                    self.cloud.put(key, rebased)
                else:
                    try:
                        data = self.disk.get(part)
                    except NotFound as exc:
                        self._count_given_up(exc)
                        log.error("capture transfer: %s; its records go up without it", exc)
                        continue
                    self.cloud.put(part, data)
            except Exception as exc:  # any sink failure: the part is retried
                error = exc if isinstance(exc, EdgefleetError) else Unavailable(f"{self.cloud!r}: {exc}")
                return self._failed(transfer, error)
            if part != key:
                self._spool.transfer_progress(transfer.transfer_id, index + 1)
        upload = replace(transfer.upload, size=len(rebased))
        self._spool.finish_transfer(transfer.transfer_id, upload, self._clock().timestamp())
        with self._counters_lock:
            self._counters.transferred += 1
            self._counters.last_transfer_time = self._clock()
        log.info("capture: uploaded %s (written to Disk earlier) to %s", key, self.cloud.store.uri)
        return None

    def _failed(self, transfer: Transfer, error: EdgefleetError) -> EdgefleetError:
        self._spool.transfer_failed(transfer.transfer_id, str(error))
        with self._counters_lock:
            self._counters.errors += 1
            self._counters.last_error = str(error)
        log.warning(
            "capture transfer of %s failed (attempt %d), retrying later: %s",
            transfer.upload.key,
            transfer.attempts + 1,
            error,
        )
        return error

    def _count_given_up(self, error: EdgefleetError) -> None:
        with self._counters_lock:
            self._counters.given_up += 1
            self._counters.last_error = str(error)

    def _give_up(self, transfer: Transfer, error: EdgefleetError) -> None:
        self._count_given_up(error)
        self._spool.finish_transfer(transfer.transfer_id, None, self._clock().timestamp())
        log.error("capture transfer of %s given up: it can never be uploaded: %s", transfer.upload.key, error)


__all__ = ["TransferCounters", "TransferWorker"]
