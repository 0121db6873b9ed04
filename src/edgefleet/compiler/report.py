"""The compile report: every candidate's size, latency and accuracy, the choice, and why.

Written as ``report.json`` next to the artifact and rendered as a table by the CLI.
"""

from __future__ import annotations

import enum
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from edgefleet.compiler.evaluate import Latency
from edgefleet.compiler.types import Quantization

REPORT_FILE = "report.json"


class CandidateStatus(enum.StrEnum):
    """What happened to a candidate."""

    SELECTED = "selected"
    REJECTED = "rejected"  # built and measured, but slower or outside the accuracy tolerance
    UNAVAILABLE = "unavailable"  # could not be built or loaded here (reason says why)
    UNVERIFIED = "unverified"  # built, but this host cannot run it (cross-compiled)


@dataclass
class CandidateReport:
    """One candidate's figures. Accuracy is top-1 in percent (with labels); agreement is the percent
    of validation samples on which it matches the original model."""

    name: str
    runtime: str
    quantization: Quantization
    status: CandidateStatus = CandidateStatus.REJECTED
    reason: str = ""  # one line, for the table and the progress output
    detail: str = ""  # the whole message behind ``reason`` when it was shortened
    size_bytes: int | None = None
    latency: Latency | None = None
    accuracy: float | None = None
    agreement: float | None = None
    max_abs_diff: float | None = None
    optimised: bool = True
    build_seconds: float | None = None
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "runtime": self.runtime,
            "quantization": self.quantization.value,
            "status": self.status.value,
            "reason": self.reason,
            "detail": self.detail or self.reason,
            "size_bytes": self.size_bytes,
            "latency": self.latency.to_dict() if self.latency else None,
            "accuracy": self.accuracy,
            "agreement": self.agreement,
            "max_abs_diff": self.max_abs_diff,
            "optimised": self.optimised,
            "build_seconds": self.build_seconds,
            "notes": list(self.notes),
        }


@dataclass
class CompileReport:
    """Everything ``report.json`` says about one compilation."""

    job_id: str
    model: dict[str, Any]
    target: str
    request: dict[str, Any]
    validation: dict[str, Any]
    latency_measured_on: str
    baseline: str
    selected: str
    candidates: list[CandidateReport]
    compile_seconds: float
    tool_versions: dict[str, str]
    notes: list[str] = field(default_factory=list)
    #: passes skipped because they broke this model, fallbacks taken
    warnings: list[str] = field(default_factory=list)

    def candidate(self, name: str) -> CandidateReport:
        """The report of candidate ``name``."""
        for c in self.candidates:
            if c.name == name:
                return c
        raise KeyError(name)

    def _side(self, name: str) -> dict[str, Any]:
        c = self.candidate(name)
        return {
            "candidate": c.name,
            "size_bytes": c.size_bytes,
            "latency_p50_ms": c.latency.p50_ms if c.latency else None,
            "latency_p99_ms": c.latency.p99_ms if c.latency else None,
            "accuracy": c.accuracy,
            "agreement": c.agreement,
        }

    @property
    def speedup(self) -> float | None:
        """Baseline p50 / selected p50, when both were measured."""
        before, after = self.candidate(self.baseline).latency, self.candidate(self.selected).latency
        if before is None or after is None or after.p50_ms <= 0:
            return None
        return before.p50_ms / after.p50_ms

    def to_dict(self) -> dict[str, Any]:
        return {
            "job_id": self.job_id,
            "model": self.model,
            "target": self.target,
            "request": self.request,
            "validation": self.validation,
            "latency_measured_on": self.latency_measured_on,
            "selected": self.selected,
            "before": self._side(self.baseline),
            "after": self._side(self.selected),
            "speedup": self.speedup,
            "candidates": [c.to_dict() for c in self.candidates],
            "compile_seconds": self.compile_seconds,
            "tool_versions": dict(sorted(self.tool_versions.items())),
            "notes": list(self.notes),
            "warnings": list(self.warnings),
        }

    def render_table(self) -> str:
        """A plain-text summary: before/after, then every candidate."""
        before, after = self.candidate(self.baseline), self.candidate(self.selected)
        metric = "accuracy" if self.validation.get("metric") == "top1_accuracy" else "agreement"
        rows = [
            ("", f"before ({before.name})", f"after ({after.name})"),
            ("size", _size(before.size_bytes), _size(after.size_bytes)),
            (
                "latency p50",
                _ms(before.latency.p50_ms if before.latency else None),
                _ms(after.latency.p50_ms if after.latency else None),
            ),
            (
                "latency p99",
                _ms(before.latency.p99_ms if before.latency else None),
                _ms(after.latency.p99_ms if after.latency else None),
            ),
            (metric, _pct(getattr(before, metric)), _pct(getattr(after, metric))),
        ]
        lines = [f"compiled {self.model.get('name', '?')} for {self.target}: selected {self.selected}", ""]
        lines += _columns(rows)
        speedup = self.speedup
        lines.append("")
        lines.append(f"speed-up {speedup:.2f}x" if speedup is not None else "speed-up: not measured")
        lines.append(f"latency measured on: {self.latency_measured_on}")
        lines.append(
            f"validation: {self.validation.get('source')} ({self.validation.get('samples')} samples, {metric})"
        )
        lines.append(f"compile time {self.compile_seconds:.1f} s")
        lines.append("tools: " + ", ".join(f"{k} {v}" for k, v in sorted(self.tool_versions.items())))
        lines.append("")
        table = [("candidate", "size", "p50", "p99", "accuracy", "agreement", "status")]
        for c in self.candidates:
            status = c.status.value + (f": {c.reason}" if c.reason else "")
            table.append(
                (
                    c.name,
                    _size(c.size_bytes),
                    _ms(c.latency.p50_ms if c.latency else None),
                    _ms(c.latency.p99_ms if c.latency else None),
                    _pct(c.accuracy),
                    _pct(c.agreement),
                    status,
                )
            )
        lines += _columns(table)
        for note in self.notes:
            lines.append(f"note: {note}")
        for warning in self.warnings:
            lines.append(f"warning: {warning}")
        return "\n".join(lines)


def _columns(rows: Sequence[Sequence[str]]) -> list[str]:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]) - 1)]
    return [
        "  ".join(cell.ljust(w) for cell, w in zip(r[:-1], widths, strict=True)) + "  " + r[-1] for r in rows
    ]


def _size(value: int | None) -> str:
    if value is None:
        return "-"
    size = float(value)
    for unit in ("B", "KiB", "MiB"):
        if size < 1024:
            return f"{size:.0f} B" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{size:.1f} GiB"


def _ms(value: float | None) -> str:
    if value is None:
        return "-"
    return f"{value * 1000:.0f} us" if value < 1 else f"{value:.2f} ms"


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f} %"
