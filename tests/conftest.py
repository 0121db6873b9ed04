"""Fixtures shared by every test tier."""

from __future__ import annotations

from pathlib import Path

import pytest
import support


@pytest.fixture(scope="session", autouse=True)
def _scratch_root(tmp_path_factory: pytest.TempPathFactory) -> None:
    """Helpers in support.py make their scratch directories under pytest's base temporary dir."""
    support.use_scratch_root(tmp_path_factory.getbasetemp())


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
