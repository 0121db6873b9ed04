"""Shadow models (extension ``shadow-models``): a candidate tested on a handle's live traffic.

A loaded model is paired with a handle as its *shadow* (:meth:`Shadows.load`); the handle's target
is the *champion*. The application keeps calling the handle and gets the champion's answer. A
sample of those calls (``sample_rate``, deterministic: 0.25 is exactly every 4th call) is handed to
the pair's own daemon thread through a bounded queue, which runs the shadow on the same inputs and
compares its outputs with the champion's (:func:`compare`). The request path never waits on the
shadow: a full queue drops the call (counted), inputs that live in a client's shared memory (reused
once the call returns) are copied before they are queued, inline inputs (immutable request bytes)
are queued as they are, and whatever the shadow does — raise, hang, answer garbage — is a figure of
the pair, never an error of the application's call.

:meth:`Shadows.promote` points the handle at the shadow in one step of the registry (the
``SetHandle`` seam), so concurrent calls reach the old or the new model, both loaded: none fails.

The shadow is loaded first like any model (``LoadModel``: the memory budget applies). Its CPU is
held below the champion's: the mirror thread runs under Linux's ``SCHED_IDLE`` policy (the lowest
scheduling priority, needing no privilege; where that is refused, nice 19; :func:`~edgefleet.agent.priority.lower_priority`), so the
shadow runs on CPU time nothing else asks for: when cores are short the kernel serves the champion's
calls first and the shadow falls behind (its queue fills, calls are dropped and counted), never the
other way round.
With ``agent.intra_op_threads = 1`` the runtime runs the shadow on that thread itself (on a small
device, champion and shadow then take a core each).
"""

from __future__ import annotations

import collections
import enum
import logging
import math
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from fractions import Fraction
from typing import Any

import numpy as np

from edgefleet.agent.models import ModelRegistry, ModelSlot, no_shadow
from edgefleet.agent.priority import lower_priority
from edgefleet.agent.stats import ModelStats
from edgefleet.core.errors import InvalidArgument, shorten
from edgefleet.monitoring.summary import is_class_scores
from edgefleet.protocol.agent.codec import bytes_backed

log = logging.getLogger(__name__)

#: Absolute tolerance of closeness when LoadShadow gives 0.
DEFAULT_TOLERANCE = 1e-5
#: Mirrored calls waiting for the shadow when LoadShadow gives 0, and the most it may ask for.
DEFAULT_MAX_QUEUE = 64
MAX_QUEUE_LIMIT = 4096
#: Seconds unload/promote wait for a shadow call in progress before leaving it to finish alone.
STOP_SECONDS = 30.0


class Comparison(enum.Enum):
    """How a shadow output is judged against the champion's (the wire's ``ShadowComparison``)."""

    #: class scores by arg-max, integer labels exactly, other outputs within tolerance
    AUTO = "auto"
    #: every output within tolerance
    CLOSE = "close"


@dataclass(frozen=True)
class ShadowSettings:
    """One pair's knobs (see :meth:`checked` for the wire's defaults and bounds)."""

    #: fraction of the handle's calls mirrored, 0..1
    sample_rate: float = 1.0
    #: absolute tolerance of closeness
    tolerance: float = DEFAULT_TOLERANCE
    #: mirrored calls waiting for the shadow; beyond, a call is dropped
    max_queue: int = DEFAULT_MAX_QUEUE
    comparison: Comparison = Comparison.AUTO

    @classmethod
    def checked(
        cls, sample_rate: float, tolerance: float, max_queue: int, comparison: Comparison
    ) -> ShadowSettings:
        """Settings from a request: tolerance 0 = :data:`DEFAULT_TOLERANCE`, max_queue 0 =
        :data:`DEFAULT_MAX_QUEUE`; INVALID_ARGUMENT for a rate outside 0..1, a negative or
        non-finite tolerance, a queue above :data:`MAX_QUEUE_LIMIT`."""
        if not 0.0 <= sample_rate <= 1.0:  # NaN fails too
            raise InvalidArgument(f"sample_rate must be between 0 and 1, got {sample_rate!r}")
        if not (math.isfinite(tolerance) and tolerance >= 0):
            raise InvalidArgument(f"tolerance must be a finite number >= 0, got {tolerance!r}")
        if not 0 <= max_queue <= MAX_QUEUE_LIMIT:
            raise InvalidArgument(
                f"max_queue must be between 0 (default) and {MAX_QUEUE_LIMIT}, got {max_queue}"
            )
        return cls(
            sample_rate=sample_rate,
            tolerance=tolerance or DEFAULT_TOLERANCE,
            max_queue=max_queue or DEFAULT_MAX_QUEUE,
            comparison=comparison,
        )


def compare(
    champion: Sequence[np.ndarray], shadow: Sequence[np.ndarray], settings: ShadowSettings
) -> tuple[bool, float]:
    """``(agreed, max |champion - shadow|)`` of one call, output by output in order.

    A call agrees when every output does. With :attr:`Comparison.AUTO` class scores
    (:func:`~edgefleet.monitoring.summary.is_class_scores`) agree when their arg-max over the last
    axis is the same, integer outputs when equal, others when within ``tolerance``; with
    :attr:`Comparison.CLOSE` every output within ``tolerance``. Outputs of another count or shape
    disagree (and give no difference).
    """
    agreed = len(champion) == len(shadow)
    largest = 0.0
    for want, got in zip(champion, shadow, strict=False):
        want, got = np.asarray(want), np.asarray(got)
        if want.shape != got.shape:
            agreed = False
            continue
        if want.size:
            with np.errstate(invalid="ignore", over="ignore"):
                diff = float(np.max(np.abs(want.astype(np.float64) - got.astype(np.float64))))
            if not math.isnan(diff):
                largest = max(largest, diff)
        if settings.comparison is Comparison.AUTO and is_class_scores(want):
            ok = bool(np.array_equal(np.argmax(want, axis=-1), np.argmax(got, axis=-1)))
        elif settings.comparison is Comparison.AUTO and want.dtype.kind in "biu":
            ok = bool(np.array_equal(want, got))
        else:
            ok = bool(np.allclose(want, got, rtol=0.0, atol=settings.tolerance, equal_nan=True))
        agreed = agreed and ok
    return agreed, largest


_Item = tuple[dict[str, np.ndarray], Sequence[np.ndarray]]


class ShadowPair:
    """One handle's champion and shadow: the sampler, the queue, the mirror thread and the figures."""

    def __init__(
        self,
        handle: str,
        champion: ModelSlot,
        shadow: ModelSlot,
        settings: ShadowSettings,
        *,
        timer: Callable[[], float] = time.perf_counter,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.handle = handle
        self.champion = champion.alias
        self.shadow = shadow.alias
        self.settings = settings
        self._names = (
            champion.manifest.name,
            champion.manifest.version,
            shadow.manifest.name,
            shadow.manifest.version,
        )
        self._slot = shadow
        self._timer = timer
        self.loaded_time = clock()
        # rate as an exact fraction: an integer accumulator mirrors exactly `numerator` calls of
        # every `denominator` (0.1 as 1/10, not a float that drifts)
        rate = Fraction(settings.sample_rate).limit_denominator(1_000_000)
        self._numerator, self._denominator = rate.numerator, rate.denominator
        self._accumulator = 0
        self._cond = threading.Condition()
        self._queue: collections.deque[_Item] = collections.deque()
        self._stopping = False
        self.mirrored = self.completed = self.agreed = self.disagreed = 0
        self.shadow_errors = self.dropped = 0
        self.max_abs_diff = 0.0
        self.last_error = ""
        self._champion_latency = ModelStats()
        self._shadow_latency = ModelStats()
        self._thread = threading.Thread(target=self._run, name=f"shadow-{handle}", daemon=True)
        self._thread.start()

    # -- the request path (never raises, never waits on the shadow) -----------------------------
    def offer(
        self, champion: str, inputs: Mapping[str, np.ndarray], outputs: Sequence[np.ndarray], latency_s: float
    ) -> None:
        """One answered call of the handle (served by alias ``champion`` in ``latency_s``)."""
        if champion != self.champion:  # the handle was promoted while this call resolved it
            return
        try:
            self._champion_latency.record(latency_s, True)
            with self._cond:
                self._accumulator += self._numerator
                if self._accumulator < self._denominator:
                    return
                self._accumulator -= self._denominator
                if self._stopping:
                    return
                if len(self._queue) >= self.settings.max_queue:
                    self.dropped += 1
                    return
            # a client's shared memory is reused once the call returns: copy it (outside the lock);
            # so are outputs that may view it (a runtime may answer with its input's memory)
            kept = {name: a if bytes_backed(a) else a.copy() for name, a in inputs.items()}
            answers = [
                a if a.flags.owndata or bytes_backed(a) else a.copy() for a in map(np.asarray, outputs)
            ]
            with self._cond:
                if len(self._queue) >= self.settings.max_queue:
                    self.dropped += 1
                    return
                self._queue.append((kept, answers))
                self.mirrored += 1
                self._cond.notify()
        except Exception:  # a bug here must not fail the champion's call
            log.exception("shadow %r of handle %r: a call could not be mirrored", self.shadow, self.handle)

    # -- the mirror thread ----------------------------------------------------------------------
    def _run(self) -> None:
        lower_priority("shadow mirror thread")
        while True:
            with self._cond:
                while not self._queue and not self._stopping:
                    self._cond.wait()
                if self._stopping:
                    return
                inputs, expected = self._queue.popleft()
            start = self._timer()
            try:
                outputs = self._slot.run(inputs)
            except Exception as exc:  # the shadow's failure is a figure, never the application's error
                self._shadow_latency.record(0.0, ok=False)
                self._failed(exc)
                continue
            self._shadow_latency.record(self._timer() - start, True)
            try:
                agreed, diff = compare(expected, outputs, self.settings)
            except Exception as exc:  # outputs numpy cannot compare: the shadow's fault
                self._failed(exc)
                continue
            with self._cond:
                self.completed += 1
                if agreed:
                    self.agreed += 1
                else:
                    self.disagreed += 1
                self.max_abs_diff = max(self.max_abs_diff, diff)

    def _failed(self, exc: Exception) -> None:
        message = shorten(f"{type(exc).__name__}: {exc}")
        with self._cond:
            self.shadow_errors += 1
            first = not self.last_error
            self.last_error = message
        if first:
            log.warning(
                "shadow %r of handle %r failed a mirrored call: %s", self.shadow, self.handle, message
            )
        else:
            log.debug("shadow %r of handle %r failed a mirrored call: %s", self.shadow, self.handle, message)

    def stop(self, timeout: float = STOP_SECONDS) -> None:
        """Stop mirroring: calls still queued are discarded, the one in progress may finish."""
        with self._cond:
            self._stopping = True
            self._queue.clear()
            self._cond.notify_all()
        self._thread.join(timeout)
        if self._thread.is_alive():
            log.warning(
                "shadow %r of handle %r: a mirrored call still runs after %.0f s",
                self.shadow,
                self.handle,
                timeout,
            )

    # -- figures --------------------------------------------------------------------------------
    def statistics(self) -> dict[str, Any]:
        """The pair's figures as a plain dict (the wire's ``ShadowStatistics`` field names;
        latencies in milliseconds)."""
        champion, shadow = self._champion_latency.snapshot(), self._shadow_latency.snapshot()
        with self._cond:
            counts: dict[str, Any] = {
                "mirrored": self.mirrored,
                "completed": self.completed,
                "agreed": self.agreed,
                "disagreed": self.disagreed,
                "shadow_errors": self.shadow_errors,
                "dropped": self.dropped,
                "queued": len(self._queue),
                "max_abs_diff": self.max_abs_diff,
                "last_error": self.last_error,
            }
        return {
            "handle": self.handle,
            "champion": self.champion,
            "champion_model_name": self._names[0],
            "champion_model_version": self._names[1],
            "shadow": self.shadow,
            "shadow_model_name": self._names[2],
            "shadow_model_version": self._names[3],
            "sample_rate": self.settings.sample_rate,
            "tolerance": self.settings.tolerance,
            "comparison": self.settings.comparison.value,
            "max_queue": self.settings.max_queue,
            **counts,
            "agreement_rate": counts["agreed"] / counts["completed"] if counts["completed"] else 0.0,
            "champion_p50_ms": champion.p50_ms,
            "champion_p99_ms": champion.p99_ms,
            "shadow_p50_ms": shadow.p50_ms,
            "shadow_p99_ms": shadow.p99_ms,
            "loaded_time": self.loaded_time,
        }


class Shadows:
    """Every handle's shadow pair. :meth:`get` is the request path's lock-free lookup; pairing,
    unpairing and promotion go through the registry, which refuses what would break a pair (moving
    or removing its handle, unloading its shadow)."""

    def __init__(self, registry: ModelRegistry) -> None:
        self._registry = registry
        self._pairs: dict[str, ShadowPair] = {}
        self._lock = threading.Lock()  # serialises load / unload / promote

    def get(self, handle: str) -> ShadowPair | None:
        """The pair of ``handle`` (None for names without one: aliases, handles without a shadow)."""
        return self._pairs.get(handle)

    def load(self, handle: str, shadow: str, settings: ShadowSettings) -> dict[str, Any]:
        """Pair the loaded model ``shadow`` with ``handle`` (errors: :meth:`ModelRegistry.pair_shadow`)."""
        with self._lock:
            champion, candidate = self._registry.pair_shadow(handle, shadow)
            pair = ShadowPair(handle, champion, candidate, settings)
            self._pairs[handle] = pair
        return pair.statistics()

    def unload(self, handle: str) -> dict[str, Any]:
        """End ``handle``'s pair (the shadow model stays loaded); its final figures."""
        with self._lock:
            self._registry.unpair_shadow(handle)
            pair = self._pairs.pop(handle)
        pair.stop()
        return pair.statistics()

    def promote(self, handle: str) -> tuple[str, dict[str, Any]]:
        """Point ``handle`` at its shadow atomically and end the pair: ``(previous target, final
        figures)``. The previous target stays loaded."""
        with self._lock:
            previous, _ = self._registry.promote_shadow(handle)
            pair = self._pairs.pop(handle)
        pair.stop()
        return previous, pair.statistics()

    def statistics(self, handle: str = "") -> list[dict[str, Any]]:
        """The figures of ``handle``'s pair (NOT_FOUND if it has none), or of every pair."""
        if handle:
            pair = self._pairs.get(handle)
            if pair is None:
                raise no_shadow(handle)
            return [pair.statistics()]
        return [p.statistics() for _, p in sorted(self._pairs.items())]

    def close(self) -> None:
        """Stop every pair (agent shutdown)."""
        with self._lock:
            pairs = list(self._pairs.values())
            self._pairs.clear()
        for pair in pairs:
            pair.stop(timeout=5.0)
