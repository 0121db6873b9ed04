"""The null backend: a model with no engine, for tests and simulated devices.

Its model file is JSON: ``{"op": "identity" | "zeros", "delay_ms": 0, "gate": null,
"memory_bytes": 0, "fail": false}``. ``identity`` returns each input cast to the matching output's
type; ``zeros`` returns zeros shaped like the output metadata (dynamic dims as 1). ``delay_ms`` sleeps
(releasing the GIL, like a real engine) so tests can observe concurrency; ``gate`` names a file that
every run waits for (up to 300 s, then the run fails), so a test can hold calls in flight for as long
as it needs, however busy the machine, and release them by creating the file; ``memory_bytes`` is what
the backend reports as its estimate (and really allocates), so memory-budget paths can be tested;
``fail`` makes every run raise, to test health gates and rollbacks.
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping
from pathlib import Path

import numpy as np

from edgefleet.core.errors import FailedPrecondition, InvalidArgument
from edgefleet.core.manifest import Manifest
from edgefleet.runtimes.base import Backend, LoadedModel, RuntimeOptions

_GATE_TIMEOUT_S = 300


def _config(package_dir: Path, manifest: Manifest) -> dict[str, object]:
    try:
        raw = json.loads((package_dir / manifest.model_file).read_text("utf-8"))
    except (OSError, ValueError) as exc:
        raise FailedPrecondition(f"null model file {manifest.model_file} is not valid JSON: {exc}") from exc
    if not isinstance(raw, dict):
        raise FailedPrecondition("null model file must hold a JSON object")
    return raw


class NullModel(LoadedModel):
    def __init__(self, manifest: Manifest, config: dict[str, object]) -> None:
        self.inputs = manifest.inputs
        self.outputs = manifest.outputs
        self._op = str(config.get("op", "identity"))
        self._delay = float(config.get("delay_ms", 0)) / 1000.0  # type: ignore[arg-type]
        gate = config.get("gate")
        self._gate = Path(str(gate)) if gate else None
        self._fail = bool(config.get("fail", False))
        size = int(config.get("memory_bytes", 0))  # type: ignore[call-overload]
        # Touch every page so the allocation is real resident memory.
        self._ballast: np.ndarray | None = np.ones(size, dtype=np.uint8) if size else None

    def run(self, inputs: Mapping[str, np.ndarray]) -> list[np.ndarray]:
        if self._gate is not None:
            deadline = time.monotonic() + _GATE_TIMEOUT_S
            while not self._gate.exists():
                if time.monotonic() > deadline:
                    raise FailedPrecondition(
                        f"null model gate {self._gate} not opened within {_GATE_TIMEOUT_S} s"
                    )
                time.sleep(0.01)
        if self._delay:
            time.sleep(self._delay)
        if self._fail:
            raise InvalidArgument("null model configured to fail")
        if self._op == "identity":
            values = [inputs[spec.name] for spec in self.inputs]
            return [
                np.ascontiguousarray(v, dtype=o.dtype.numpy)
                for v, o in zip(values, self.outputs, strict=False)
            ]
        return [np.zeros([d if d >= 0 else 1 for d in o.shape], dtype=o.dtype.numpy) for o in self.outputs]

    def close(self) -> None:
        self._ballast = None


class NullBackend(Backend):
    name = "null"

    def version(self) -> str:
        return "1.0"

    def estimate_memory(
        self, package_dir: Path, manifest: Manifest, options: RuntimeOptions | None = None
    ) -> int:
        declared = _config(package_dir, manifest).get("memory_bytes", 0)
        return (declared if isinstance(declared, int) else 0) + 64 * 1024

    def load(self, package_dir: Path, manifest: Manifest, options: RuntimeOptions) -> LoadedModel:
        return NullModel(manifest, _config(package_dir, manifest))
