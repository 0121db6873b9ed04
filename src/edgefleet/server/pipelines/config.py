"""A model's pipeline configuration: a small TOML file, checked once here.

Example (every table but ``[model]`` and ``[source]`` is optional; a missing step is skipped)::

    [model]
    name = "digits"                      # the registry's model name, and the pipeline's

    [source]
    model = "/models/digits.onnx"        # absolute paths: the workers read them
    framework = "onnx"
    inputs = ["X:1x64:float32"]          # NAME:SHAPE[:DTYPE], when the model does not say
    calibration = "/data/calib.npz"      # optional (int8)
    validation = "/data/val.npz"         # optional: the inputs by name, and "labels"

    [compile]                            # the compiler per device class (absent: the source is packaged as is)
    targets = []                         # default: the device classes present in the fleets
    backend = "auto"
    quantize = "none"
    benchmark_seconds = 0.5

    [deploy]
    fleets = ["production"]              # the production fleets (rollout and device classes)

    [twin]                               # deploy to the twin fleet and validate there
    fleet = "twins"
    workdir = "/srv/twins"               # where `edgefleet twin up` keeps twins.json
    min_accuracy = 0.9                   # against the validation set's labels
    max_p99_ms = 50.0
    load_seconds = 0                     # optional load test: seconds, concurrent clients
    load_concurrency = 4

    [shadow]                             # the candidate as shadow on production devices
    fleet = "production"
    duration_seconds = 300
    sample_rate = 0.1
    min_agreement = 0.98
    max_latency_ratio = 1.5

    [approval]
    mode = "manual"                      # or "auto"

    [rollout]                            # the deployment plan spec of the operator API
    watch_seconds = 0
    health_gate = { MaxErrorRate = 0.05 }
    stages = [
      { StageName = "canary", DeviceSelectionConfig = { DeviceSubsetType = "PERCENTAGE", Percentage = 10 } },
      { StageName = "all", DeviceSelectionConfig = { DeviceSubsetType = "PERCENTAGE", Percentage = 100 } },
    ]

    [webhook]                            # state changes of runs are posted here
    url = "https://hooks.example.com/edgefleet"
    secret = "..."

Every error names the key (``twin.min_accuracy``) and is INVALID_ARGUMENT; unknown keys are
errors too, so a typo never silently disables a check.
"""

from __future__ import annotations

import math
import tomllib
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from edgefleet.core.errors import InvalidArgument
from edgefleet.server.validation import validate_name

#: the order steps run in
STEPS = ("compile", "package", "twin", "shadow", "approval", "rollout")
FRAMEWORKS = ("onnx", "pytorch", "sklearn", "xgboost", "lightgbm", "tflite")
APPROVAL_MODES = ("manual", "auto")
MAX_TEXT = 64 * 1024


@dataclass(frozen=True)
class SourceConfig:
    model: str
    framework: str
    inputs: tuple[str, ...] = ()
    calibration: str | None = None
    validation: str | None = None


@dataclass(frozen=True)
class CompileConfig:
    targets: tuple[str, ...] = ()
    backend: str = "auto"
    quantize: str = "auto"
    max_accuracy_drop: float = 1.0
    benchmark_seconds: float = 0.5
    threads: int = 0


@dataclass(frozen=True)
class TwinConfig:
    fleet: str
    workdir: str
    min_accuracy: float | None = None
    min_agreement: float | None = None
    max_p99_ms: float | None = None
    load_seconds: float = 0.0
    load_concurrency: int = 1
    labels: str = "labels"
    reference: str = "reference"
    output: str | None = None
    deploy_timeout_seconds: float = 300.0


@dataclass(frozen=True)
class ShadowConfig:
    fleet: str
    duration_seconds: float = 60.0
    sample_rate: float = 0.1
    min_agreement: float = 0.99
    max_latency_ratio: float = 2.0


@dataclass(frozen=True)
class RolloutConfig:
    stages: tuple[dict[str, Any], ...]
    health_gate: dict[str, Any] | None = None
    watch_seconds: float = 0.0
    watch_policy: str | None = None
    device_timeout_seconds: float | None = None
    stage_timeout_seconds: float = 1800.0


@dataclass(frozen=True)
class WebhookConfig:
    url: str
    secret: str | None = None


@dataclass(frozen=True)
class PipelineConfig:
    """One model's pipeline, checked; :meth:`to_dict` gives the form stored (and re-read by
    :func:`check_config`)."""

    name: str
    source: SourceConfig
    fleets: tuple[str, ...] = ()
    compile: CompileConfig | None = None
    twin: TwinConfig | None = None
    shadow: ShadowConfig | None = None
    approval: str = "manual"
    rollout: RolloutConfig | None = None
    webhook: WebhookConfig | None = None
    package: bool = True
    extra: dict[str, Any] = field(default_factory=dict, compare=False)

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "model": {"name": self.name},
            "source": _plain(asdict(self.source)),
            "deploy": {"fleets": list(self.fleets)},
            "approval": {"mode": self.approval},
        }
        for key in ("compile", "twin", "shadow", "rollout", "webhook"):
            value = getattr(self, key)
            if value is not None:
                out[key] = _plain(asdict(value))
        return out

    def steps(self) -> list[str]:
        """The steps this configuration runs, in order."""
        wanted = {
            "compile": self.compile is not None,
            "package": True,
            "twin": self.twin is not None,
            "shadow": self.shadow is not None,
            "approval": True,
            "rollout": self.rollout is not None,
        }
        return [s for s in STEPS if wanted[s]]


def _plain(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items() if v is not None}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    return value


def parse_toml(text: str) -> PipelineConfig:
    """The configuration in TOML ``text``; INVALID_ARGUMENT naming the line or the key."""
    if len(text) > MAX_TEXT:
        raise InvalidArgument(f"a pipeline configuration is at most {MAX_TEXT} characters")
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise InvalidArgument(f"pipeline configuration is not valid TOML: {exc}") from exc
    return check_config(raw)


class _Table:
    """Reads one TOML table, each key once; :meth:`done` rejects the keys nobody asked for."""

    def __init__(self, raw: Any, where: str) -> None:
        if not isinstance(raw, dict):
            raise InvalidArgument(f"{where} must be a table, got {type(raw).__name__}")
        self.raw, self.where, self.seen = raw, where, set[str]()

    def key(self, name: str) -> str:
        return f"{self.where}.{name}"

    def get(self, name: str, default: Any = None) -> Any:
        self.seen.add(name)
        return self.raw.get(name, default)

    def text(self, name: str, default: str | None = None, *, required: bool = False) -> str | None:
        value = self.get(name)
        if value is None:
            if required:
                raise InvalidArgument(f"{self.key(name)} is required")
            return default
        if not isinstance(value, str) or not value or len(value) > 1000:
            raise InvalidArgument(f"{self.key(name)} must be a non-empty string, got {value!r:.100}")
        return value

    def path(self, name: str, *, required: bool = False) -> str | None:
        value = self.text(name, required=required)
        if value is not None and not Path(value).is_absolute():
            raise InvalidArgument(
                f"{self.key(name)} {value!r:.200} must be an absolute path (the workers read it)"
            )
        return value

    def number(
        self,
        name: str,
        default: float | None,
        *,
        least: float = 0.0,
        most: float = math.inf,
        above: bool = False,
    ) -> float | None:
        value = self.get(name)
        if value is None:
            return default
        if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
            raise InvalidArgument(f"{self.key(name)} must be a number, got {value!r:.100}")
        if value < least or value > most or (above and value <= least):
            bound = f"above {least:g}" if above else f"at least {least:g}"
            if most < math.inf:
                bound += f" and at most {most:g}"
            raise InvalidArgument(f"{self.key(name)} must be {bound}, got {value!r}")
        return float(value)

    def integer(self, name: str, default: int, *, least: int = 0) -> int:
        value = self.get(name)
        if value is None:
            return default
        if isinstance(value, bool) or not isinstance(value, int) or value < least:
            raise InvalidArgument(
                f"{self.key(name)} must be a whole number of at least {least}, got {value!r:.100}"
            )
        return int(value)

    def strings(self, name: str) -> tuple[str, ...]:
        value = self.get(name, [])
        if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
            raise InvalidArgument(f"{self.key(name)} must be a list of strings, got {value!r:.100}")
        return tuple(value)

    def done(self) -> None:
        unknown = sorted(set(self.raw) - self.seen)
        if unknown:
            raise InvalidArgument(
                f"{self.where}: unknown key(s) {', '.join(unknown)} (known: {', '.join(sorted(self.seen))})"
            )


def _fleet(table: _Table, name: str) -> str:
    value = table.text(name, required=True)
    assert value is not None
    _name_check(value, table.key(name))
    return value


def _name_check(value: str, where: str) -> None:
    validate_name(value, where)


def check_config(raw: dict[str, Any]) -> PipelineConfig:
    """The configuration in a parsed TOML document (or the stored form); INVALID_ARGUMENT naming
    the key for anything wrong, missing or unknown."""
    known = {"model", "source", "compile", "deploy", "twin", "shadow", "approval", "rollout", "webhook"}
    unknown = sorted(set(raw) - known)
    if unknown:
        raise InvalidArgument(
            f"pipeline configuration: unknown table(s) {', '.join(unknown)} (known: {', '.join(sorted(known))})"
        )
    if "model" not in raw:
        raise InvalidArgument("pipeline configuration needs [model] with name = the model's name")
    model = _Table(raw["model"], "model")
    name = model.text("name", required=True)
    assert name is not None
    _name_check(name, "model.name")
    model.done()

    if "source" not in raw:
        raise InvalidArgument("pipeline configuration needs [source] (model, framework)")
    src = _Table(raw["source"], "source")
    model_path = src.path("model", required=True)
    framework = src.text("framework", required=True)
    if framework not in FRAMEWORKS:
        raise InvalidArgument(
            f"source.framework {framework!r:.50} is not known (known: {', '.join(FRAMEWORKS)})"
        )
    inputs = src.strings("inputs")
    for spec in inputs:
        if spec.count(":") not in (1, 2):
            raise InvalidArgument(f"source.inputs: {spec!r:.100} is not NAME:SHAPE[:DTYPE]")
    source = SourceConfig(
        model=model_path or "",
        framework=framework or "",
        inputs=inputs,
        calibration=src.path("calibration"),
        validation=src.path("validation"),
    )
    for key in ("calibration", "validation"):
        value = getattr(source, key)
        if value is not None and not value.endswith(".npz"):
            raise InvalidArgument(f"source.{key} {value!r:.200} must be an .npz file")
    src.done()

    compile_cfg = None
    if "compile" in raw:
        t = _Table(raw["compile"], "compile")
        targets = t.strings("targets")
        from edgefleet.core.targets import get_target

        for target in targets:
            try:
                get_target(target)
            except InvalidArgument as exc:
                raise InvalidArgument(f"compile.targets: {exc.message}") from exc
        compile_cfg = CompileConfig(
            targets=targets,
            backend=t.text("backend", "auto") or "auto",
            quantize=t.text("quantize", "auto") or "auto",
            max_accuracy_drop=t.number("max_accuracy_drop", 1.0) or 0.0,
            benchmark_seconds=t.number("benchmark_seconds", 0.5, least=0.01) or 0.5,
            threads=t.integer("threads", 0),
        )
        t.done()

    fleets: tuple[str, ...] = ()
    if "deploy" in raw:
        t = _Table(raw["deploy"], "deploy")
        fleets = t.strings("fleets")
        for fleet in fleets:
            _name_check(fleet, "deploy.fleets")
        if len(set(fleets)) != len(fleets):
            raise InvalidArgument("deploy.fleets lists a fleet twice")
        t.done()

    twin = None
    if "twin" in raw:
        t = _Table(raw["twin"], "twin")
        twin = TwinConfig(
            fleet=_fleet(t, "fleet"),
            workdir=t.path("workdir", required=True) or "",
            min_accuracy=t.number("min_accuracy", None, most=1.0),
            min_agreement=t.number("min_agreement", None, most=1.0),
            max_p99_ms=t.number("max_p99_ms", None, above=True),
            load_seconds=t.number("load_seconds", 0.0, most=3600) or 0.0,
            load_concurrency=t.integer("load_concurrency", 1, least=1),
            labels=t.text("labels", "labels") or "labels",
            reference=t.text("reference", "reference") or "reference",
            output=t.text("output"),
            deploy_timeout_seconds=t.number("deploy_timeout_seconds", 300.0, above=True) or 300.0,
        )
        t.done()
        if twin.fleet in fleets:
            raise InvalidArgument(f"twin.fleet {twin.fleet!r} is also a production fleet in deploy.fleets")
        if (twin.min_accuracy is not None or twin.min_agreement is not None) and source.validation is None:
            raise InvalidArgument("twin.min_accuracy and twin.min_agreement need source.validation (an .npz)")

    shadow = None
    if "shadow" in raw:
        t = _Table(raw["shadow"], "shadow")
        shadow = ShadowConfig(
            fleet=_fleet(t, "fleet"),
            duration_seconds=t.number("duration_seconds", 60.0, above=True) or 60.0,
            sample_rate=t.number("sample_rate", 0.1, most=1.0, above=True) or 0.1,
            min_agreement=t.number("min_agreement", 0.99, most=1.0) or 0.0,
            max_latency_ratio=t.number("max_latency_ratio", 2.0, above=True) or 2.0,
        )
        t.done()

    approval = "manual"
    if "approval" in raw:
        t = _Table(raw["approval"], "approval")
        approval = t.text("mode", "manual") or "manual"
        if approval not in APPROVAL_MODES:
            raise InvalidArgument(f"approval.mode {approval!r:.50} is not one of {', '.join(APPROVAL_MODES)}")
        t.done()

    rollout = None
    if "rollout" in raw:
        t = _Table(raw["rollout"], "rollout")
        stages = t.get("stages")
        if not isinstance(stages, list) or not stages or not all(isinstance(s, dict) for s in stages):
            raise InvalidArgument(
                "rollout.stages must be a non-empty list of stages "
                '({ StageName = "...", DeviceSelectionConfig = { DeviceSubsetType = "PERCENTAGE", Percentage = 100 } })'
            )
        gate = t.get("health_gate")
        if gate is not None and not isinstance(gate, dict):
            raise InvalidArgument("rollout.health_gate must be a table (MaxErrorRate, MaxP99LatencyMs, ...)")
        rollout = RolloutConfig(
            stages=tuple(stages),
            health_gate=gate,
            watch_seconds=t.number("watch_seconds", 0.0) or 0.0,
            watch_policy=t.text("watch_policy"),
            device_timeout_seconds=t.number("device_timeout_seconds", None, above=True),
            stage_timeout_seconds=t.number("stage_timeout_seconds", 1800.0, above=True) or 1800.0,
        )
        t.done()
        if not fleets:
            raise InvalidArgument("[rollout] needs deploy.fleets (the production fleets to roll out to)")
        from edgefleet.server.pipelines.plans import check_rollout

        check_rollout(rollout, name)

    webhook = None
    if "webhook" in raw:
        t = _Table(raw["webhook"], "webhook")
        url = t.text("url", required=True) or ""
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise InvalidArgument(f"webhook.url {url!r:.100} must be an http or https URL with a host")
        webhook = WebhookConfig(url=url, secret=t.text("secret"))
        t.done()

    return PipelineConfig(
        name=name,
        source=source,
        fleets=fleets,
        compile=compile_cfg,
        twin=twin,
        shadow=shadow,
        approval=approval,
        rollout=rollout,
        webhook=webhook,
    )
