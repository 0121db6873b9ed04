"""Model monitoring: mergeable summaries of inputs and outputs, and drift scores against a baseline.

Shared by the agent (which summarises live traffic), the packager (baselines from reference data)
and the control plane (which merges per fleet and model version and scores drift), so it imports
nothing above ``core``.
"""

from __future__ import annotations

from edgefleet.monitoring.drift import ClassDrift, DriftReport, FeatureDrift, compare, jensen_shannon, ks, psi
from edgefleet.monitoring.summary import ClassCounts, ModelSummary, TensorSummary

__all__ = [
    "ClassCounts",
    "ClassDrift",
    "DriftReport",
    "FeatureDrift",
    "ModelSummary",
    "TensorSummary",
    "compare",
    "jensen_shannon",
    "ks",
    "psi",
]
