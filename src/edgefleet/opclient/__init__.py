"""The operator's side of the control plane: an HTTP client of the ``/api/v1`` API and CLI output helpers.

Used by ``edgefleet fleet|device|model|deploy``. Needs httpx (``server`` extra); never imports the
server package, so it talks to any edgefleet server over HTTP only.
"""

from __future__ import annotations
