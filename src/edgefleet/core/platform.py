"""Architecture names: the one spelling manifests, targets and runtimes use for a CPU architecture.

Operating systems and tools spell the same architecture several ways (``amd64``/``x64`` for
``x86_64``, ``arm64``/``armv8`` for ``aarch64``); every part of edgefleet compares architectures
through :func:`normalize_arch` so the agent, the compiler and the runtimes never disagree.
"""

from __future__ import annotations

import platform

#: other spellings -> the manifest spelling
ARCH_ALIASES: dict[str, str] = {"amd64": "x86_64", "x64": "x86_64", "arm64": "aarch64", "armv8": "aarch64"}


def normalize_arch(name: str) -> str:
    """``name`` in manifest spelling (``AMD64`` -> ``x86_64``); unknown names are only lower-cased."""
    machine = name.lower()
    return ARCH_ALIASES.get(machine, machine)


def host_arch() -> str:
    """This machine's architecture in manifest spelling (``x86_64``, ``aarch64``, ...)."""
    return normalize_arch(platform.machine())
