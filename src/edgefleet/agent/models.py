"""The set of loaded models: verify-then-load, memory budget, per-model concurrency, unload.

Lifecycle of a model slot: LOADING (alias reserved, memory reserved) -> READY -> UNLOADING
(removed from lookup; waits for in-flight calls) -> gone. There is no global lock on the Predict
path: a Predict looks the alias up in a dict and then only touches that model's own limiter.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import enum
import gc
import hashlib
import logging
import os
import platform
import shutil
import stat
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import unquote, urlparse

import numpy as np

from edgefleet.agent.stats import ModelStats
from edgefleet.core.errors import (
    AlreadyExists,
    EdgefleetError,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    ResourceExhausted,
    os_error,
    quoted,
)
from edgefleet.core.manifest import Manifest, validate_model_name
from edgefleet.core.platform import host_arch
from edgefleet.core.tensors import TensorSpec
from edgefleet.runtimes.base import Backend, LoadedModel, RuntimeOptions, get_backend, version_at_least

log = logging.getLogger(__name__)


class ModelUnloading(NotFound):
    """The model was unloaded while the request was on its way to it."""


class ModelState(enum.Enum):
    LOADING = "LOADING"
    READY = "READY"
    UNLOADING = "UNLOADING"


@dataclass
class ModelSlot:
    """One loaded model under a client-chosen alias."""

    alias: str
    url: str
    package_dir: Path
    memory_bytes: int
    max_concurrent: int
    max_queued: int
    state: ModelState = ModelState.LOADING
    verified_manifest: Manifest | None = None
    model: LoadedModel | None = None
    loaded_time: float = 0.0
    stats: ModelStats = field(default_factory=ModelStats)
    owns_dir: bool = False
    #: the clock the latencies are timed with (seconds)
    timer: Callable[[], float] = time.perf_counter
    _cond: threading.Condition = field(default_factory=threading.Condition)
    in_flight: int = 0
    queued: int = 0

    @property
    def manifest(self) -> Manifest:
        """The verified manifest (set before the slot turns READY)."""
        if self.verified_manifest is None:
            raise NotFound(f"model {quoted(self.alias)} is still loading")
        return self.verified_manifest

    @property
    def inputs(self) -> tuple[TensorSpec, ...]:
        return self.model.inputs if self.model is not None else self.manifest.inputs

    @property
    def outputs(self) -> tuple[TensorSpec, ...]:
        return self.model.outputs if self.model is not None else self.manifest.outputs

    def run(self, inputs: Mapping[str, np.ndarray]) -> list[np.ndarray]:
        """Run one inference within this model's concurrency limit (queueing beyond it)."""
        with self._cond:
            if self.state is not ModelState.READY:
                raise ModelUnloading(f"model {quoted(self.alias)} is being unloaded")
            if self.in_flight >= self.max_concurrent:
                if self.queued >= self.max_queued:
                    self.stats.record(0.0, ok=False)
                    raise ResourceExhausted(
                        f"model {quoted(self.alias)} has {self.in_flight} requests running and {self.queued} queued "
                        f"(limits {self.max_concurrent}/{self.max_queued}); retry later"
                    )
                self.queued += 1
                try:
                    while self.in_flight >= self.max_concurrent and self.state is ModelState.READY:
                        self._cond.wait()
                finally:
                    self.queued -= 1
                if self.state is not ModelState.READY:
                    raise ModelUnloading(f"model {quoted(self.alias)} was unloaded while the request waited")
            self.in_flight += 1
        model = self.model
        start = self.timer()
        ok = False
        try:
            assert model is not None
            outputs = model.run(inputs)
            ok = True
            return outputs
        finally:
            self.stats.record(self.timer() - start, ok)
            with self._cond:
                self.in_flight -= 1
                # Wake a queued request, or the unload waiting for the model to drain; nobody
                # waits in the common case, and skipping the notify keeps the call cheap.
                if self.state is not ModelState.READY:
                    self._cond.notify_all()
                elif self.queued:
                    self._cond.notify()

    def drain(self, timeout: float) -> bool:
        """Wait until no request is running or queued; True if drained in time."""
        deadline = time.monotonic() + timeout
        with self._cond:
            self._cond.notify_all()
            while self.in_flight or self.queued:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return False
                self._cond.wait(remaining)
        return True


@dataclass(frozen=True)
class ModelLimits:
    """Limits applied to every model and to all of them together."""

    memory_budget_bytes: int
    max_concurrent_per_model: int = 4
    max_queued_per_model: int = 256
    unload_drain_seconds: float = 30.0


class ModelRegistry:
    """Loads verified packages into runtime backends and serves lookups by alias.

    ``verifier(directory) -> Manifest`` checks a package directory's signature and digests;
    ``unpacker(archive, dest) -> Manifest`` safely extracts a ``.tar.gz``, verifying signature and
    digests while it streams (nothing unverified is left on disk). Both are injected so the
    registry stays independent of the trust-store policy; so are ``kind`` (:func:`package_kind`),
    ``backends`` (:func:`get_backend`), the Predict ``timer`` and ``release_memory`` after each load
    and unload (simulated devices, many small registries in one process, skip it).
    """

    def __init__(
        self,
        *,
        limits: ModelLimits,
        packages_dir: Path,
        verifier: Callable[[Path], Manifest],
        unpacker: Callable[[Path, Path], Manifest],
        runtime_options: RuntimeOptions | None = None,
        kind: Callable[[Path, str], str] | None = None,
        backends: Callable[[str], Backend] = get_backend,
        timer: Callable[[], float] = time.perf_counter,
        release_memory: bool = True,
    ) -> None:
        self._limits = limits
        self._kind = kind or package_kind
        self._backends = backends
        self._timer = timer
        self._release_memory = release_memory
        self._packages_dir = packages_dir
        self._verifier = verifier
        self._unpacker = unpacker
        self._runtime_options = runtime_options or RuntimeOptions(concurrency=limits.max_concurrent_per_model)
        self._lock = threading.Lock()  # guards _slots mutations and memory accounting
        self._slots: dict[str, ModelSlot] = {}
        # stable handle -> alias (extension "model-handles"); lookups are lock-free dict reads
        self._handles: dict[str, str] = {}
        # handle -> the alias paired with it as its shadow (extension "shadow-models")
        self._shadows: dict[str, str] = {}
        self._reserved_bytes = 0

    # -- lookups (lock-free reads: dict get is atomic in CPython) --------------------------------
    def get(self, name: str) -> ModelSlot:
        """The READY model under the alias or handle ``name``; INVALID_ARGUMENT when ``name`` is not
        valid model-name syntax, NOT_FOUND when no model has it."""
        slot = self._slots.get(name)
        if slot is None:
            target = self._handles.get(name)
            if target is not None:
                slot = self._slots.get(target)
                if slot is None or slot.state is not ModelState.READY:
                    # The handle moved and its old target is going away: the caller may resolve again.
                    raise ModelUnloading(f"handle {quoted(name)} is being switched")
        if slot is None or slot.state is not ModelState.READY:
            raise not_loaded(name)
        return slot

    def is_handle(self, name: str) -> bool:
        """True when ``name`` is a handle (not an alias)."""
        return name in self._handles and name not in self._slots

    # -- handles ---------------------------------------------------------------------------------
    def set_handle(self, handle: str, target: str) -> str:
        """Point ``handle`` at the loaded alias ``target`` atomically; returns the previous target or ''.

        FAILED_PRECONDITION while the handle has a shadow (its figures compare the shadow with
        this champion): promote or unload the shadow first."""
        validate_alias(handle)
        with self._lock:
            if handle in self._shadows:
                raise FailedPrecondition(
                    f"handle {quoted(handle)} has the shadow {quoted(self._shadows[handle])}; "
                    "promote or unload the shadow before moving the handle"
                )
            previous = self._point_locked(handle, target)
        log.info("handle %r -> %r (was %r)", handle, target, previous or None)
        return previous

    def _point_locked(self, handle: str, target: str) -> str:
        """The one place a handle is pointed (the caller holds ``_lock``): ``target`` must be a
        READY alias; returns the previous target or ''."""
        slot = self._slots.get(target)
        if slot is None or slot.state is not ModelState.READY:
            validate_alias(target)
            raise NotFound(f"handle target {quoted(target)} is not a loaded model")
        if handle in self._slots:
            raise AlreadyExists(f"{quoted(handle)} is a loaded model's name; a handle must not shadow it")
        previous = self._handles.get(handle, "")
        self._handles[handle] = target
        return previous

    def remove_handle(self, handle: str) -> None:
        """Forget ``handle``; NOT_FOUND if there is none, FAILED_PRECONDITION while it has a shadow."""
        with self._lock:
            if handle in self._shadows:
                raise FailedPrecondition(
                    f"handle {quoted(handle)} has the shadow {quoted(self._shadows[handle])}; "
                    "promote or unload the shadow before removing the handle"
                )
            if self._handles.pop(handle, None) is None:
                validate_alias(handle)
                raise NotFound(f"no handle named {quoted(handle)}")
        log.info("handle %r removed", handle)

    # -- shadows ---------------------------------------------------------------------------------
    def pair_shadow(self, handle: str, shadow: str) -> tuple[ModelSlot, ModelSlot]:
        """Record ``shadow`` (a loaded alias) as the shadow of ``handle``; ``(champion, shadow)`` slots.

        NOT_FOUND for an unknown handle or shadow; FAILED_PRECONDITION when ``handle`` is a model's
        alias, not a handle (shadows pair with the handle an application calls); INVALID_ARGUMENT
        when the shadow is the champion itself, a handle, or takes other inputs than the champion
        (names, data types, shapes) or gives another number of outputs; ALREADY_EXISTS when the
        handle has a shadow already.
        """
        validate_alias(handle)
        validate_alias(shadow)
        with self._lock:
            target = self._handles.get(handle)
            if target is None:
                if handle in self._slots:
                    raise FailedPrecondition(
                        f"{quoted(handle)} is a loaded model's name, not a handle: a shadow pairs with the "
                        "handle the application calls (SetHandle first and call the model through it)"
                    )
                raise NotFound(f"no handle named {quoted(handle)}")
            if handle in self._shadows:
                raise AlreadyExists(
                    f"handle {quoted(handle)} has the shadow {quoted(self._shadows[handle])} already; unload it first"
                )
            if shadow in self._handles and shadow not in self._slots:
                raise InvalidArgument(
                    f"the shadow {quoted(shadow)} is a handle; name the loaded model (alias) it points at"
                )
            candidate = self._slots.get(shadow)
            if candidate is None or candidate.state is not ModelState.READY:
                raise NotFound(f"the shadow {quoted(shadow)} is not a loaded model (LoadModel it first)")
            if shadow == target:
                raise InvalidArgument(
                    f"{quoted(shadow)} is the champion of handle {quoted(handle)}: a shadow is another model"
                )
            champion = self._slots[target]
            check_same_signature(champion, candidate)
            self._shadows[handle] = shadow
        log.info("handle %r: %r shadows %r", handle, shadow, target)
        return champion, candidate

    def unpair_shadow(self, handle: str) -> str:
        """End ``handle``'s pair; returns the shadow alias (NOT_FOUND if the handle has none)."""
        with self._lock:
            shadow = self._shadows.pop(handle, None)
        if shadow is None:
            raise no_shadow(handle)
        log.info("handle %r: shadow %r unpaired", handle, shadow)
        return shadow

    def promote_shadow(self, handle: str) -> tuple[str, str]:
        """Point ``handle`` at its shadow and end the pair, in one step under the lock, so a Predict
        resolving the handle reaches the old or the new target, both READY. Returns
        ``(previous target, shadow)``; NOT_FOUND if the handle has no shadow."""
        with self._lock:
            shadow = self._shadows.get(handle)
            if shadow is None:
                raise no_shadow(handle)
            previous = self._point_locked(handle, shadow)
            del self._shadows[handle]
        log.info("handle %r -> %r (promoted shadow; was %r)", handle, shadow, previous)
        return previous, shadow

    def shadows(self) -> dict[str, str]:
        """A snapshot of handle -> shadow alias."""
        with self._lock:
            return dict(self._shadows)

    def handles(self) -> dict[str, str]:
        """A snapshot of handle -> alias."""
        with self._lock:
            return dict(self._handles)

    def list(self) -> list[ModelSlot]:
        return [s for s in list(self._slots.values()) if s.state is ModelState.READY]

    @property
    def used_bytes(self) -> int:
        return self._reserved_bytes

    # -- load ------------------------------------------------------------------------------------
    def load(self, url: str, alias: str) -> ModelSlot:
        """Verify and load the package at ``url`` under ``alias`` (see docs/agent-protocol.md)."""
        validate_alias(alias)
        source = resolve_url(url)
        placeholder = ModelSlot(
            alias=alias,
            url=url,
            package_dir=source,
            memory_bytes=0,
            max_concurrent=self._limits.max_concurrent_per_model,
            max_queued=self._limits.max_queued_per_model,
            timer=self._timer,
        )
        with self._lock:
            if alias in self._slots:
                raise AlreadyExists(f"a model is already loaded (or loading) under the name {quoted(alias)}")
            if alias in self._handles:
                raise AlreadyExists(
                    f"{quoted(alias)} is a model handle (pointing at {quoted(self._handles[alias])})"
                )
            self._slots[alias] = placeholder
        try:
            slot = self._load_into(placeholder, source)
        except BaseException:
            with self._lock:
                self._slots.pop(alias, None)
                self._reserved_bytes -= placeholder.memory_bytes
            if placeholder.owns_dir:
                shutil.rmtree(placeholder.package_dir, ignore_errors=True)
            raise
        log.info(
            "loaded model %s (%s %s, runtime %s) as %r, ~%d MiB",
            slot.manifest.name,
            slot.manifest.name,
            slot.manifest.version,
            slot.manifest.runtime.name,
            alias,
            slot.memory_bytes >> 20,
            extra={"model": slot.manifest.name, "version": slot.manifest.version},
        )
        return slot

    def _load_into(self, slot: ModelSlot, source: Path) -> ModelSlot:
        try:
            if self._kind(source, slot.url) == "archive":
                slot.package_dir = self._unpack_destination(source)
                slot.owns_dir = True
                manifest = self._unpacker(source, slot.package_dir)
            else:
                slot.package_dir = source
                manifest = self._verifier(slot.package_dir)
        except OSError as exc:  # a file of the package the agent cannot read
            raise os_error(exc, exc.filename or source) from exc
        slot.verified_manifest = manifest
        check_compatible(manifest)
        backend = self._backends(manifest.runtime.name)
        if not version_at_least(backend.version(), manifest.runtime.min_version):
            raise FailedPrecondition(
                f"package needs {manifest.runtime.name} >= {manifest.runtime.min_version}, this device has "
                f"{backend.version()}"
            )
        estimate = backend.estimate_memory(slot.package_dir, manifest, self._runtime_options)
        with self._lock:
            budget = self._limits.memory_budget_bytes
            if self._reserved_bytes + estimate > budget:
                raise ResourceExhausted(
                    f"loading {manifest.name} needs ~{estimate >> 20} MiB but only "
                    f"{max(0, budget - self._reserved_bytes) >> 20} MiB of the {budget >> 20} MiB model memory budget "
                    "is free; unload a model or raise the budget"
                )
            self._reserved_bytes += estimate
            slot.memory_bytes = estimate
        model = backend.load(slot.package_dir, manifest, self._runtime_options)
        try:
            check_tensors_match(manifest, model)
        except EdgefleetError:
            model.close()
            raise
        slot.model = model
        slot.loaded_time = time.time()
        slot.state = ModelState.READY
        # Loading leaves freed scratch memory in the heap (ONNX Runtime's graph optimisation: for
        # ResNet-18, 94 MiB on top of the 52 MiB the session keeps); return it to the OS now.
        if self._release_memory:
            release_free_memory()
        return slot

    def _unpack_destination(self, archive: Path) -> Path:
        """A fresh directory name under the packages directory for one load of ``archive``."""
        unique = f"{archive.resolve()}:{time.time_ns()}".encode()
        digest = hashlib.sha256(unique).hexdigest()[:16]
        self._packages_dir.mkdir(parents=True, exist_ok=True)
        return self._packages_dir / f"{archive.name.removesuffix('.tar.gz').removesuffix('.tgz')}-{digest}"

    # -- unload ----------------------------------------------------------------------------------
    def unload(self, alias: str) -> None:
        """Stop new requests, wait for running ones, free the model's memory."""
        with self._lock:
            slot = self._slots.get(alias)
            if slot is None or slot.state is not ModelState.READY:
                raise not_loaded(alias)
            pointing = sorted(h for h, t in self._handles.items() if t == alias)
            if pointing:
                raise FailedPrecondition(
                    f"model {quoted(alias)} is the target of handle(s) {', '.join(pointing)}; move or remove them first"
                )
            shadowing = sorted(h for h, s in self._shadows.items() if s == alias)
            if shadowing:
                raise FailedPrecondition(
                    f"model {quoted(alias)} is the shadow of handle(s) {', '.join(shadowing)}; unload the "
                    "shadow (UnloadShadow) first"
                )
            with slot._cond:
                slot.state = ModelState.UNLOADING
        if not slot.drain(self._limits.unload_drain_seconds):
            log.warning(
                "unloading %r with requests still running after %.0fs",
                alias,
                self._limits.unload_drain_seconds,
                extra=_log_fields(slot),
            )
        model, slot.model = slot.model, None
        if model is not None:
            model.close()
        del model
        with self._lock:
            self._slots.pop(alias, None)
            self._reserved_bytes -= slot.memory_bytes
        if slot.owns_dir:
            shutil.rmtree(slot.package_dir, ignore_errors=True)
        if self._release_memory:
            release_free_memory()
        log.info("unloaded model %r", alias, extra=_log_fields(slot))

    def close(self) -> None:
        """Unload everything (agent shutdown)."""
        with self._lock:
            self._handles.clear()
            self._shadows.clear()
        for alias in [s.alias for s in self.list()]:
            try:
                self.unload(alias)
            except NotFound:
                continue


def _log_fields(slot: ModelSlot) -> dict[str, str]:
    """The log record fields of a slot's model: its package's name and version."""
    manifest = slot.verified_manifest
    return {} if manifest is None else {"model": manifest.name, "version": manifest.version}


def validate_alias(alias: str) -> str:
    """INVALID_ARGUMENT unless ``alias`` is a valid model name."""
    try:
        return validate_model_name(alias, "model name")
    except EdgefleetError as exc:
        raise InvalidArgument(exc.message) from exc


def not_loaded(name: str) -> EdgefleetError:
    """The error for a lookup of ``name`` that found no model: INVALID_ARGUMENT when the name is
    not model-name syntax (every RPC answers the same, docs/agent-protocol.md), else NOT_FOUND."""
    validate_alias(name)
    return NotFound(f"no model is loaded under the name {quoted(name)}")


def no_shadow(handle: str) -> EdgefleetError:
    """NOT_FOUND for a handle without a shadow (INVALID_ARGUMENT for a name that is no valid name)."""
    validate_alias(handle)
    return NotFound(f"handle {quoted(handle)} has no shadow")


def check_same_signature(champion: ModelSlot, shadow: ModelSlot) -> None:
    """INVALID_ARGUMENT unless ``shadow`` takes exactly the champion's inputs (names, data types,
    shapes: every call the champion accepts must be one the shadow can run) and gives as many outputs."""

    def text(specs: tuple[TensorSpec, ...]) -> str:
        return ", ".join(f"{s.name}:{s.dtype.name}{list(s.shape)}" for s in specs) or "none"

    if champion.inputs != shadow.inputs:
        raise InvalidArgument(
            f"the shadow {quoted(shadow.alias)} takes inputs ({text(shadow.inputs)}), the champion "
            f"{quoted(champion.alias)} takes ({text(champion.inputs)}): a shadow must take the same inputs"
        )
    if len(champion.outputs) != len(shadow.outputs):
        raise InvalidArgument(
            f"the shadow {quoted(shadow.alias)} gives {len(shadow.outputs)} output(s) ({text(shadow.outputs)}), "
            f"the champion {quoted(champion.alias)} {len(champion.outputs)} ({text(champion.outputs)})"
        )


def resolve_url(url: str) -> Path:
    """A LoadModel url (a path or ``file://`` URL) as an absolute local path: a relative path is
    taken relative to the agent's working directory (clients send absolute paths)."""
    if not url:
        raise InvalidArgument("LoadModel needs a url: the path of a model package directory or .tar.gz")
    if "://" in url:
        parsed = urlparse(url)
        if parsed.scheme != "file":
            raise InvalidArgument(
                f"unsupported url scheme {quoted(parsed.scheme)}: give a local path or a file:// URL"
            )
        path = unquote(parsed.path)
    else:
        path = url
    if "\x00" in path:
        raise InvalidArgument(f"the url {quoted(url)} contains a NUL character")
    return Path(os.path.abspath(path))


def package_kind(path: Path, url: str) -> str:
    """``"archive"`` (a regular file: a packed package) or ``"directory"`` for the LoadModel source
    ``path`` (resolved from ``url``); NOT_FOUND naming the resolved path when nothing is there, and
    INVALID_ARGUMENT for anything else (a FIFO, socket or device is never opened: reading one could
    block the agent or consume someone else's data)."""
    try:
        mode = os.stat(path).st_mode
    except (FileNotFoundError, NotADirectoryError):
        relative = (
            ""
            if url.startswith("/") or "://" in url
            else (
                f" (the url {quoted(url)} is relative: the agent resolved it against its working directory; "
                "send an absolute path)"
            )
        )
        raise NotFound(f"no model package at {quoted(str(path))}{relative}") from None
    except OSError as exc:
        raise os_error(exc, path) from exc
    if stat.S_ISREG(mode):
        return "archive"
    if stat.S_ISDIR(mode):
        return "directory"
    kind = {
        stat.S_IFIFO: "a FIFO",
        stat.S_IFSOCK: "a socket",
        stat.S_IFCHR: "a character device",
        stat.S_IFBLK: "a block device",
    }.get(stat.S_IFMT(mode), "not a regular file")
    raise InvalidArgument(f"{quoted(str(path))} is {kind}: a package is a directory or a .tar.gz file")


def check_compatible(manifest: Manifest) -> None:
    """FAILED_PRECONDITION when the package is built for another OS or architecture."""
    arch = host_arch()
    if manifest.target.arch not in ("any", arch):
        raise FailedPrecondition(
            f"package {manifest.name} {manifest.version} is compiled for {manifest.target.arch}, this device is {arch}"
        )
    if manifest.target.os not in ("any", "linux") or platform.system() != "Linux":
        raise FailedPrecondition(
            f"package targets OS {manifest.target.os!r}, this device runs {platform.system()}"
        )
    if manifest.target.accelerator not in ("none", ""):
        raise FailedPrecondition(
            f"package needs accelerator {manifest.target.accelerator!r}, which this agent does not drive"
        )


def check_tensors_match(manifest: Manifest, model: LoadedModel) -> None:
    """The manifest's tensor metadata must agree with what the runtime reports for the artifact."""
    for kind, declared, actual in (
        ("input", manifest.inputs, model.inputs),
        ("output", manifest.outputs, model.outputs),
    ):
        if not declared:
            continue
        if [t.name for t in declared] != [t.name for t in actual] or [t.dtype for t in declared] != [
            t.dtype for t in actual
        ]:
            raise FailedPrecondition(
                f"manifest {kind}s {[(t.name, t.dtype.name) for t in declared]} do not match the model's "
                f"{[(t.name, t.dtype.name) for t in actual]}"
            )


_libc_trim: Callable[[int], int] | None = None
_libc_name = ctypes.util.find_library("c")
if _libc_name:
    try:
        _libc_trim = ctypes.CDLL(_libc_name).malloc_trim
    except (OSError, AttributeError):
        _libc_trim = None


def release_free_memory() -> None:
    """Return freed heap to the OS (glibc keeps it otherwise, and RSS would not drop on unload)."""
    gc.collect()
    if _libc_trim is not None:
        _libc_trim(0)
