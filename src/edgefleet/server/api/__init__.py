"""The control plane's HTTP API: operator API (``/api/v1``), enrolment (``/enrol/v1``), device plane (``/device/v1``)."""

from __future__ import annotations
