"""The operator's side of the control plane: an HTTP client of the ``/api/v1`` API and CLI output helpers.

Used by ``edgefleet fleet|device|model|deploy``. On httpx (a base dependency: the device's HTTPS
client uses it too); never imports the server package, so it talks to any edgefleet server over
HTTP only.
"""

from __future__ import annotations
