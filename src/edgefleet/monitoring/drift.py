"""Drift scores of live data against a baseline, from the sketches of :mod:`.summary`.

Per feature: the population stability index (PSI) over the baseline's deciles and the
Kolmogorov-Smirnov statistic (the largest gap between the two CDFs, evaluated at both sketches'
quantiles). Per classifying output: the Jensen-Shannon divergence (base 2, between 0 and 1) of the
predicted-class frequencies. Usual reading of PSI: below 0.1 stable, 0.1-0.25 moderate, above 0.25
a significant shift.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from edgefleet.monitoring.summary import ModelSummary, TensorSummary

#: Bins of the PSI (the baseline's quantiles cut it into this many equal-mass bins).
PSI_BINS = 10
#: Floor of a bin's probability in the PSI, so an empty bin gives a large but finite term.
PSI_FLOOR = 1e-4
#: Ranks at which both sketches' quantiles are taken for the KS statistic.
KS_RANKS = np.linspace(0.0, 1.0, 101)


def psi(baseline: Any, live: Any, bins: int = PSI_BINS) -> float:
    """Population stability index of ``live`` against ``baseline`` (two ``kll_floats_sketch``)."""
    if baseline.is_empty() or live.is_empty():
        return 0.0
    edges = sorted({float(q) for q in baseline.get_quantiles([i / bins for i in range(1, bins)])})
    if not edges:  # a constant baseline: one bin either side of its value
        edges = [float(baseline.get_min_value())]
    expected = np.maximum(np.asarray(baseline.get_pmf(edges)), PSI_FLOOR)
    actual = np.maximum(np.asarray(live.get_pmf(edges)), PSI_FLOOR)
    return float(np.sum((actual - expected) * np.log(actual / expected)))


def ks(baseline: Any, live: Any) -> float:
    """Kolmogorov-Smirnov statistic: the largest CDF gap, in [0, 1]."""
    if baseline.is_empty() or live.is_empty():
        return 0.0
    points = sorted(
        {float(q) for q in baseline.get_quantiles(list(KS_RANKS))}
        | {float(q) for q in live.get_quantiles(list(KS_RANKS))}
    )
    a = np.asarray(baseline.get_cdf(points))[:-1]
    b = np.asarray(live.get_cdf(points))[:-1]
    return float(np.max(np.abs(a - b)))


def jensen_shannon(baseline: Mapping[str, int], live: Mapping[str, int]) -> float:
    """Jensen-Shannon divergence (base 2) of two class-count tables, in [0, 1]."""
    labels = sorted(set(baseline) | set(live))
    p = np.array([baseline.get(k, 0) for k in labels], dtype=np.float64)
    q = np.array([live.get(k, 0) for k in labels], dtype=np.float64)
    if p.sum() == 0 or q.sum() == 0:
        return 0.0
    p, q = p / p.sum(), q / q.sum()
    m = (p + q) / 2

    def kl(x: np.ndarray, y: np.ndarray) -> float:
        mask = x > 0
        return float(np.sum(x[mask] * np.log2(x[mask] / y[mask])))

    return max(0.0, min(1.0, (kl(p, m) + kl(q, m)) / 2))


@dataclass(frozen=True)
class FeatureDrift:
    """Drift of one feature of one tensor."""

    tensor: str
    #: ``input`` or ``output``
    kind: str
    feature: int
    psi: float
    ks: float
    baseline_count: int
    live_count: int


@dataclass(frozen=True)
class ClassDrift:
    """Drift of one output's predicted-class distribution."""

    output: str
    js: float
    baseline: dict[str, int]
    live: dict[str, int]


@dataclass(frozen=True)
class DriftReport:
    """Every feature's and output's scores, worst first, and the summary figures."""

    features: tuple[FeatureDrift, ...]
    classes: tuple[ClassDrift, ...]
    #: tensors in one summary but not the other, and features whose counts differ
    mismatches: tuple[str, ...]

    @property
    def max_psi(self) -> float:
        return max((f.psi for f in self.features), default=0.0)

    @property
    def max_ks(self) -> float:
        return max((f.ks for f in self.features), default=0.0)

    @property
    def max_js(self) -> float:
        return max((c.js for c in self.classes), default=0.0)

    def to_dict(self) -> dict[str, Any]:
        return {
            "max_psi": self.max_psi,
            "max_ks": self.max_ks,
            "max_js": self.max_js,
            "features": [asdict(f) for f in self.features],
            "classes": [asdict(c) for c in self.classes],
            "mismatches": list(self.mismatches),
        }


def _tensors(
    kind: str,
    base: Mapping[str, TensorSummary],
    live: Mapping[str, TensorSummary],
    out: list[FeatureDrift],
    miss: list[str],
) -> None:
    for name in sorted(set(base) | set(live)):
        if name not in base or name not in live:
            miss.append(f"{kind} {name!r} is only in the {'baseline' if name in base else 'live data'}")
            continue
        b, lv = base[name], live[name]
        if b.features != lv.features:
            miss.append(f"{kind} {name!r} has {b.features} features in the baseline, {lv.features} live")
            continue
        for index in range(b.features):
            bs, ls = b.feature(index), lv.feature(index)
            score = psi(bs, ls)
            out.append(
                FeatureDrift(
                    name, kind, index, score if math.isfinite(score) else 0.0, ks(bs, ls), bs.n, ls.n
                )
            )


def compare(baseline: ModelSummary, live: ModelSummary) -> DriftReport:
    """Drift of ``live`` against ``baseline``: every feature, worst (by PSI, then KS) first."""
    features: list[FeatureDrift] = []
    mismatches: list[str] = []
    _tensors("input", baseline.inputs, live.inputs, features, mismatches)
    _tensors("output", baseline.outputs, live.outputs, features, mismatches)
    classes = [
        ClassDrift(
            name,
            jensen_shannon(base := baseline.classes[name].counts(), now := live.classes[name].counts()),
            base,
            now,
        )
        for name in sorted(set(baseline.classes) & set(live.classes))
    ]
    features.sort(key=lambda f: (-f.psi, -f.ks, f.tensor, f.feature))
    classes.sort(key=lambda c: -c.js)
    return DriftReport(tuple(features), tuple(classes), tuple(mismatches))
