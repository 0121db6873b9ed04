"""``python -m edgefleet`` runs the command line."""

from __future__ import annotations

import sys

from edgefleet.cli.main import main

sys.exit(main())
