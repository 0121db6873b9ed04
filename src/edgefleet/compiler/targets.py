"""The target catalogue: the device classes ``edgefleet compile --target`` knows.

Each target names an OS and architecture (as package manifests spell them), the runtime backends
that can serve it in order of preference, and the CPU features artifacts may assume. Feature names
are those of Linux's ``/proc/cpuinfo`` (``flags`` on x86, ``Features`` on ARM) so the host check is
a set comparison. docs/targets.md documents the same table for users.
"""

from __future__ import annotations

from pathlib import Path

from edgefleet.compiler.types import TargetSpec
from edgefleet.core.errors import InvalidArgument
from edgefleet.core.platform import host_arch

_CPUINFO = Path("/proc/cpuinfo")

TARGETS: dict[str, TargetSpec] = {
    t.name: t
    for t in (
        TargetSpec(
            name="linux-x86_64",
            os="linux",
            arch="x86_64",
            description="Any 64-bit x86 Linux box (x86-64-v2: Atom/Celeron and newer, any AMD64 since 2009)",
            backends=("onnxruntime", "openvino", "tvm", "litert"),
            cpu_features=("sse4_2", "popcnt"),
            llvm_triple="x86_64-linux-gnu",
            llvm_mcpu="x86-64-v2",
        ),
        TargetSpec(
            name="linux-x86_64-avx2",
            os="linux",
            arch="x86_64",
            description="x86-64-v3 CPUs: Intel Haswell (2013) and newer Core/Xeon, AMD Zen and newer",
            backends=("onnxruntime", "openvino", "tvm", "litert"),
            cpu_features=("sse4_2", "popcnt", "avx", "avx2", "fma", "f16c", "bmi2"),
            llvm_triple="x86_64-linux-gnu",
            llvm_mcpu="x86-64-v3",
        ),
        TargetSpec(
            name="linux-x86_64-avx512",
            os="linux",
            arch="x86_64",
            description="x86-64-v4 CPUs: Intel Skylake-SP/Ice Lake and newer Xeon, AMD Zen 4",
            backends=("onnxruntime", "openvino", "tvm", "litert"),
            cpu_features=(
                "sse4_2",
                "popcnt",
                "avx",
                "avx2",
                "fma",
                "f16c",
                "bmi2",
                "avx512f",
                "avx512bw",
                "avx512cd",
                "avx512dq",
                "avx512vl",
            ),
            llvm_triple="x86_64-linux-gnu",
            llvm_mcpu="x86-64-v4",
        ),
        TargetSpec(
            name="linux-aarch64",
            os="linux",
            arch="aarch64",
            description="Any 64-bit ARM Linux board (ARMv8-A, NEON: Raspberry Pi 3/4, Jetson Nano)",
            backends=("onnxruntime", "tvm", "litert"),
            cpu_features=("fp", "asimd"),
            llvm_triple="aarch64-linux-gnu",
            llvm_mcpu="generic",
            llvm_mattr=("+neon",),
            cross_compiler="aarch64-linux-gnu-gcc",
        ),
        TargetSpec(
            name="linux-aarch64-armv8.2",
            os="linux",
            arch="aarch64",
            description=(
                "ARMv8.2-A boards with half-precision and dot-product instructions "
                "(Cortex-A55/A76/A78: Raspberry Pi 5, Jetson Orin, RK3588)"
            ),
            backends=("onnxruntime", "tvm", "litert"),
            cpu_features=("fp", "asimd", "fphp", "asimdhp", "asimddp"),
            llvm_triple="aarch64-linux-gnu",
            llvm_mcpu="generic",
            llvm_mattr=("+neon", "+v8.2a", "+fullfp16", "+dotprod"),
            cross_compiler="aarch64-linux-gnu-gcc",
            fp16_compute=True,
        ),
    )
}


def known_targets() -> list[str]:
    """Names of every target in the catalogue."""
    return sorted(TARGETS)


def get_target(name: str) -> TargetSpec:
    """The target called ``name``; INVALID_ARGUMENT naming the known ones otherwise."""
    try:
        return TARGETS[name]
    except KeyError:
        raise InvalidArgument(
            f"unknown target {name!r}: known targets are {', '.join(known_targets())} (see docs/targets.md)"
        ) from None


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
