"""The target catalogue and the host checks: the device classes ``edgefleet compile --target`` knows
(the catalogue itself is :mod:`edgefleet.core.targets`, shared with the control plane).

Each target names an OS and architecture (as package manifests spell them), the runtime backends
that can serve it in order of preference, and the CPU features artifacts may assume. Feature names
are those of Linux's ``/proc/cpuinfo`` (``flags`` on x86, ``Features`` on ARM) so the host check is
a set comparison. docs/targets.md documents the same table for users.
"""

from __future__ import annotations

from pathlib import Path

from edgefleet.core.platform import host_arch
from edgefleet.core.targets import TARGETS as TARGETS
from edgefleet.core.targets import TargetSpec as TargetSpec
from edgefleet.core.targets import get_target as get_target
from edgefleet.core.targets import known_targets as known_targets

_CPUINFO = Path("/proc/cpuinfo")


def host_cpu_features(cpuinfo: str | None = None) -> frozenset[str]:
    """CPU feature names of this machine, from ``/proc/cpuinfo`` (or the text given)."""
    if cpuinfo is None:
        try:
            cpuinfo = _CPUINFO.read_text(encoding="utf-8", errors="replace")
        except OSError:
            return frozenset()
    features: set[str] = set()
    for line in cpuinfo.splitlines():
        key, sep, value = line.partition(":")
        if sep and key.strip().lower() in ("flags", "features"):
            features.update(value.split())
    return frozenset(features)


def matches_host(target: TargetSpec, arch: str | None = None, features: frozenset[str] | None = None) -> bool:
    """True when artifacts for ``target`` run natively here (same arch, every assumed feature present)."""
    if (arch or host_arch()) != target.arch:
        return False
    have = host_cpu_features() if features is None else features
    return set(target.cpu_features) <= have


def host_target() -> TargetSpec | None:
    """The most specific catalogue target this machine satisfies, if any."""
    best: TargetSpec | None = None
    for target in TARGETS.values():
        if matches_host(target) and (best is None or len(target.cpu_features) > len(best.cpu_features)):
            best = target
    return best
