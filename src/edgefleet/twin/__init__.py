"""Digital-twin fleets: N real devices (agent on ONNX Runtime + device daemon) on one machine.

See :class:`edgefleet.twin.fleet.TwinFleet` and ``edgefleet twin up|status|down``.
"""

from __future__ import annotations

from edgefleet.twin.device_class import DeviceClass, resolve_device_class
from edgefleet.twin.fleet import PRE_PRODUCTION, STAGE_TAG, Twin, TwinFleet, TwinStatus, TwinTiming

__all__ = [
    "PRE_PRODUCTION",
    "STAGE_TAG",
    "DeviceClass",
    "Twin",
    "TwinFleet",
    "TwinStatus",
    "TwinTiming",
    "resolve_device_class",
]
