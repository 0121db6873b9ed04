"""What each heartbeat says about shadow models: the agent's shadow pairs and their figures.

The agent keeps per pair (a handle, its champion and the shadow mirrored a sample of its calls)
counters and latencies since the pair started (extension ``shadow-models``,
``GetShadowStatistics``). The daemon sends them in every heartbeat's ``Shadows`` as they are,
cumulative, so a heartbeat that is lost or queued loses nothing: the server keeps the latest
report per device and pair. A heartbeat carries at most
:data:`~edgefleet.core.deviceplane.MAX_HEARTBEAT_SHADOWS` pairs (an agent has one per handle at
most, so more is a device with very many handles; the rest are left out, said once).

An agent without the extension (or one that refuses the call) costs a warning, said once until it
answers again: heartbeats go on without ``Shadows``.
"""

from __future__ import annotations

import logging

from edgefleet.client import ShadowStatistics
from edgefleet.core.deviceplane import MAX_HEARTBEAT_SHADOWS, ShadowReport
from edgefleet.core.errors import Code, EdgefleetError
from edgefleet.device.agentlink import AgentConnection

log = logging.getLogger(__name__)

#: The agent extension this needs (agents without it: heartbeats carry no ``Shadows``).
SHADOW_MODELS_EXTENSION = "shadow-models"


def shadow_report(stats: ShadowStatistics) -> ShadowReport:
    """The heartbeat's form of one pair's figures as the agent gives them."""
    return ShadowReport(
        handle=stats.handle,
        champion_model=stats.champion_model_name,
        champion_version=stats.champion_model_version,
        shadow_model=stats.shadow_model_name,
        shadow_version=stats.shadow_model_version,
        mirrored=stats.mirrored,
        completed=stats.completed,
        agreed=stats.agreed,
        disagreed=stats.disagreed,
        shadow_errors=stats.shadow_errors,
        dropped=stats.dropped,
        champion_p50_ms=stats.champion_p50_ms,
        champion_p99_ms=stats.champion_p99_ms,
        shadow_p50_ms=stats.shadow_p50_ms,
        shadow_p99_ms=stats.shadow_p99_ms,
    )


class ShadowReporter:
    """Builds each heartbeat's ``Shadows`` from the agent's GetShadowStatistics."""

    def __init__(self, agent: AgentConnection, *, max_pairs: int = MAX_HEARTBEAT_SHADOWS) -> None:
        self._agent = agent
        self.max_pairs = max_pairs
        self._warned = False
        self._truncated = False

    def _warn_once(self, why: str) -> None:
        if not self._warned:
            log.warning("heartbeats carry no shadow figures: %s", why)
            self._warned = True

    def report(self) -> tuple[ShadowReport, ...]:
        """Every pair's figures now; empty when the agent has none or cannot say (no
        ``shadow-models`` extension or the call refused: a WARNING, once; unreachable: nothing)."""
        api = self._agent.api
        try:
            if SHADOW_MODELS_EXTENSION not in api.server_metadata().extensions:
                self._warn_once(f"the agent does not offer the {SHADOW_MODELS_EXTENSION} extension")
                return ()
            pairs = api.shadow_statistics()
        except EdgefleetError as exc:
            if exc.code is Code.UNIMPLEMENTED:
                self._warn_once(f"the agent refused GetShadowStatistics: {exc}")
            else:
                log.debug("no shadow figures for this heartbeat: %s", exc)
            return ()
        if self._warned:
            log.info("the agent gives shadow figures again")
        self._warned = False
        reports = sorted((shadow_report(p) for p in pairs), key=lambda r: r.pair)
        if len(reports) > self.max_pairs:
            if not self._truncated:
                log.warning(
                    "the agent has %d shadow pairs; heartbeats report the first %d (by handle)",
                    len(reports),
                    self.max_pairs,
                )
            self._truncated = True
            reports = reports[: self.max_pairs]
        else:
            self._truncated = False
        return tuple(reports)
