"""The fleet control plane (``edgefleet server``).

Layout: ``config`` (typed knobs), ``db`` (schema, engine, migrations), ``artifacts`` (object store
seam), ``ca`` (fleet certificate authority), the domain services (``tokens``, ``fleets``,
``devices``, ``registry``, ``deployments``, ``reports``), ``api`` (the ASGI application), ``tls`` and
``runner`` (serving), ``jobs`` (periodic work) and ``client`` (the operator HTTP client).

Everything here needs the ``server`` extra; device-side code never imports this package.
"""

from __future__ import annotations
