"""core.platform: one spelling for every architecture name, used by agent, compiler and runtimes."""

from __future__ import annotations

import platform

import pytest

from edgefleet.core.platform import ARCH_ALIASES, host_arch, normalize_arch


@pytest.mark.parametrize(
    ("alias", "canonical"),
    [("amd64", "x86_64"), ("x64", "x86_64"), ("arm64", "aarch64"), ("armv8", "aarch64")],
)
def test_every_alias_maps_to_the_manifest_spelling(alias: str, canonical: str) -> None:
    assert normalize_arch(alias) == canonical
    assert normalize_arch(alias.upper()) == canonical


def test_the_alias_table_is_exactly_the_tested_one() -> None:
    # A new alias must be added to the parametrised test above as well.
    assert ARCH_ALIASES == {"amd64": "x86_64", "x64": "x86_64", "arm64": "aarch64", "armv8": "aarch64"}


@pytest.mark.parametrize("name", ["x86_64", "aarch64", "armv7l", "riscv64"])
def test_canonical_and_unknown_names_are_only_lower_cased(name: str) -> None:
    assert normalize_arch(name) == name
    assert normalize_arch(name.upper()) == name


def test_host_arch_is_this_machine_normalized() -> None:
    assert host_arch() == normalize_arch(platform.machine())
    assert host_arch() not in ARCH_ALIASES


def test_agent_compiler_and_tvm_runtime_agree_on_the_host() -> None:
    from edgefleet.agent import models
    from edgefleet.compiler import targets

    assert models.host_arch is host_arch
    assert targets.host_arch is host_arch
