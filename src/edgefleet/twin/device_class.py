"""A twin's device class: run natively, under qemu-user, or refused with the reason.

A device class is a compile target name (``linux-x86_64``, ``linux-aarch64`` ...: docs/targets.md).
A twin of the host's class runs natively. A twin of another architecture runs its whole process
(agent, runtime, daemon) under qemu-user with an interpreter of that architecture, which needs both
``qemu-<arch>`` on the PATH and such an interpreter with edgefleet and ONNX Runtime installed (and,
for ONNX Runtime's aarch64 wheel, an ARM ``/proc/cpuinfo``: see /work/shared/notes/stack-notes.md);
without them the twin is refused before anything is registered.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from edgefleet.core.errors import FailedPrecondition, InvalidArgument
from edgefleet.core.platform import host_arch

#: architectures qemu-user can stand in for, by manifest spelling -> the qemu binary
EMULATORS: dict[str, str] = {"aarch64": "qemu-aarch64"}


@dataclass(frozen=True)
class DeviceClass:
    """How twins of one device class run here."""

    #: the compile target name
    name: str
    #: its architecture (manifest spelling)
    arch: str
    #: the command prefix that runs a Python interpreter of that architecture (``[sys.executable]``
    #: natively, ``[qemu-aarch64, PYTHON]`` under emulation)
    python: tuple[str, ...]

    @property
    def emulated(self) -> bool:
        """Whether the twins run under qemu-user."""
        return self.arch != host_arch()


def host_device_class() -> str:
    """The most specific device class this machine belongs to (``linux-<arch>`` if none fits)."""
    from edgefleet.compiler.targets import host_target

    target = host_target()
    return target.name if target is not None else f"linux-{host_arch()}"


def resolve_device_class(
    name: str | None,
    *,
    python: str,
    emulator_python: Path | None = None,
    which: Callable[[str], str | None] = shutil.which,
) -> DeviceClass:
    """How twins of device class ``name`` (None: the host's) run; INVALID_ARGUMENT for an unknown
    class, FAILED_PRECONDITION when this host can run it neither natively nor under qemu-user."""
    from edgefleet.compiler.targets import get_target, matches_host

    target = get_target(name or host_device_class())
    if target.os != "linux":
        raise InvalidArgument(f"device class {target.name} is not a Linux one: twins run on Linux")
    if target.arch == host_arch():
        if not matches_host(target):
            raise FailedPrecondition(
                f"this host lacks CPU features of device class {target.name} "
                f"({', '.join(target.cpu_features)}): a twin of it would not be one; "
                f"use the host's class {host_device_class()}"
            )
        return DeviceClass(target.name, target.arch, (python,))
    emulator = EMULATORS.get(target.arch)
    if emulator is None:
        raise FailedPrecondition(
            f"cannot emulate {target.arch} here (qemu-user stands in for: {', '.join(EMULATORS)})"
        )
    found = which(emulator)
    if found is None:
        raise FailedPrecondition(
            f"{emulator} not found: cannot emulate {target.arch} (install Debian's qemu-user to run "
            f"{target.name} twins)"
        )
    if emulator_python is None:
        raise FailedPrecondition(
            f"{emulator} found, but no {target.arch} Python to run the twin under it: give one "
            "(an interpreter of that architecture with edgefleet and onnxruntime installed)"
        )
    return DeviceClass(target.name, target.arch, (found, str(emulator_python)))
