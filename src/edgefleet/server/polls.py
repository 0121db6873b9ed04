"""Idle deployment polls, checked in batches.

Every device polls GetDeployments (the daemon every 30 s); almost always the answer is "nothing to
do". Answering that through the ordinary path costs a transaction and several ORM queries (the
device with its fleet, tags and models; then its outstanding deployments). :class:`IdlePolls`
checks many devices' polls with one query on a read-only connection of its own: is this
certificate still the device's (revocation is read now, as on the ordinary path), is the device in
the fleet the body names, and has it nothing outstanding? Only then is the empty answer given;
any other poll takes the ordinary path, which fetches (and so starts) deployments.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from sqlalchemy import Connection, select

from edgefleet.server.batching import Batcher
from edgefleet.server.db.engine import Database, HeldConnection
from edgefleet.server.db.schema import Device, Fleet, StageDevice
from edgefleet.server.deployments import outstanding


@dataclass(frozen=True)
class Poll:
    """A GetDeployments call: the certificate's device name and serial, the fleet the body names."""

    device_name: str
    serial: str
    fleet_name: str


class IdlePolls:
    """Answers "may this poll get the empty list?" for many polls at a time (see the module doc)."""

    def __init__(self, db: Database, *, max_batch: int = 500) -> None:
        self._held = HeldConnection(db, read_only=True)
        self._batcher: Batcher[Poll, bool] = Batcher("edgefleet-polls", self.check, max_batch=max_batch)

    async def is_idle(self, device_name: str, serial: str, fleet_name: str) -> bool:
        """True if the device (with this certificate, in that fleet) has nothing outstanding."""
        if self._batcher.closed:
            return False
        return await self._batcher.submit(Poll(device_name, serial, fleet_name))

    def check(self, polls: Sequence[Poll]) -> list[bool]:
        """One query for all ``polls``; per poll whether the empty answer is the right one."""
        return self._held.run(lambda conn: _check(conn, polls))

    def close(self, timeout: float = 10.0) -> None:
        """Answer what is queued, then stop the thread and release the connection."""
        self._batcher.close(timeout)
        self._held.close()


def _check(conn: Connection, polls: Sequence[Poll]) -> list[bool]:
    names = sorted({p.device_name for p in polls})
    busy = select(StageDevice.device_id).where(StageDevice.device_id == Device.id, outstanding()).exists()
    rows = conn.execute(
        select(Device.name, Device.cert_serial, Fleet.name, busy)
        .join(Fleet, Fleet.id == Device.fleet_id)
        .where(Device.name.in_(names), Device.deregistered_at.is_(None))
    )
    idle = {(name, serial, fleet) for name, serial, fleet, has_work in rows if serial and not has_work}
    return [(p.device_name, p.serial, p.fleet_name) in idle for p in polls]
