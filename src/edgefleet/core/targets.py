"""The target catalogue: the device classes ``edgefleet compile --target`` knows.

Each target names an OS and architecture (as package manifests spell them), the runtime backends
that can serve it in order of preference, and the CPU features artifacts may assume. Pure data in
core because the compiler builds for these targets and the control plane checks job requests
against them (docs/targets.md documents the same table for users); the host checks stay in
``edgefleet.compiler.targets``.
"""

from __future__ import annotations

from dataclasses import dataclass

from edgefleet.core.errors import InvalidArgument


@dataclass(frozen=True)
class TargetSpec:
    """A device class from the target catalogue (see docs/targets.md).

    ``backends``: runtime names that can serve this target, in order of preference.
    ``cpu_features``: the instruction-set extensions artifacts may assume on the device.
    ``llvm_triple``/``llvm_mcpu``/``llvm_mattr``: what native-code builders (TVM) compile for.
    ``cross_compiler``: the C compiler/linker for shared libraries when it differs from the host's
    (``None`` = the host's ``cc``).
    ``fp16_compute``: whether the CPU computes fp16 natively (else fp16 only halves the size).
    """

    name: str
    os: str
    arch: str
    description: str
    backends: tuple[str, ...]
    cpu_features: tuple[str, ...]
    llvm_triple: str
    llvm_mcpu: str
    llvm_mattr: tuple[str, ...] = ()
    accelerator: str = "none"
    cross_compiler: str | None = None
    fp16_compute: bool = False


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
