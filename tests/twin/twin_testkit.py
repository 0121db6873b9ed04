"""What the twin-fleet tests share (not fixtures: the control plane's record)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any


@dataclass
class Plane:
    """The running control plane, its operator URL, token and CA, and a client."""

    running: Any
    url: str
    token: str
    ca_cert: Path
    op: Any
