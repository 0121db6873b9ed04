"""Fixtures shared by every test tier."""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def keys(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A signing key directory (root CA + signer); ``keys / "trust"`` is the trust store."""
    from edgefleet.core.signing import init_keys

    directory = tmp_path_factory.mktemp("keys")
    init_keys(directory)
    return directory


@pytest.fixture(scope="session")
def trust(keys: Path) -> Path:
    return keys / "trust"
