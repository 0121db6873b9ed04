"""The device-plane contract (edgefleet.core.deviceplane): its JSON form round-trips, bad input is refused."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from edgefleet.core.deviceplane import (
    DEFAULT_MIN_INFERENCES,
    DEFAULT_OBSERVATION_SECONDS,
    Action,
    Definition,
    Deployment,
    DesiredState,
    EdgeMetric,
    FailurePolicy,
    HealthGate,
    HealthVerdict,
    Heartbeat,
    ModelReport,
    PackageRef,
    Verdict,
)
from edgefleet.core.errors import InvalidArgument

# generation stays cheap so that the health check holds on a busy machine
relaxed = settings(suppress_health_check=[HealthCheck.too_slow], deadline=None)

words = st.text(alphabet="abcdefghijklmnopqrstuvwxyz0123456789-_", min_size=1, max_size=12)
digests = st.text(alphabet="0123456789abcdef", min_size=40, max_size=64)
finite = st.floats(allow_nan=False, allow_infinity=False, width=32)
# whole microseconds in UTC: what the ISO text carries exactly
moments = st.datetimes(min_value=datetime(2000, 1, 1), max_value=datetime(2100, 1, 1), timezones=st.just(UTC))

gates = st.builds(
    HealthGate,
    max_error_rate=st.none() | st.floats(min_value=0, max_value=1),
    max_p99_latency_ms=st.none() | st.floats(min_value=0.001, max_value=1e6),
    min_inferences=st.integers(min_value=1, max_value=2**31 - 1),
    observation_seconds=st.floats(min_value=0, max_value=1e7),
    max_drift_score=st.none() | st.floats(min_value=0.001, max_value=1e3),
)


@st.composite
def packages(draw: st.DrawFn) -> PackageRef:
    sha256 = draw(st.none() | digests)
    return PackageRef(
        url=draw(words),
        sha256=sha256,
        sha1=draw(digests) if sha256 is None else None,
        size=draw(st.none() | st.integers(min_value=0, max_value=2**40)),
    )


definitions = st.builds(
    Definition,
    handle=words,
    model_name=words,
    model_version=words,
    package=packages(),
    state=st.sampled_from(DesiredState),
)
deployments = st.builds(
    Deployment,
    name=st.builds(lambda a, b: f"{a}.{b}", words, words),
    definitions=st.lists(definitions, max_size=3).map(tuple),
    failure_policy=st.sampled_from(FailurePolicy),
    action=st.sampled_from(Action),
    health_gate=st.none() | gates,
)
metrics = st.builds(EdgeMetric, dimension=words, name=words, value=finite, at=moments)
heartbeats = st.builds(
    Heartbeat,
    agent_version=words,
    taken_at=moments,
    agent_metrics=st.lists(metrics, max_size=3).map(tuple),
    models=st.lists(
        st.builds(
            ModelReport,
            model_name=words,
            model_version=words,
            handle=words,
            latest_inference=st.none() | moments,
            latest_sample=st.none() | moments,
            metrics=st.lists(metrics, max_size=2).map(tuple),
        ),
        max_size=3,
    ).map(tuple),
    platform=st.none() | st.tuples(words, words, words),
)


@relaxed
@given(gates)
def test_health_gate_round_trips(gate: HealthGate) -> None:
    assert HealthGate.from_wire(gate.to_wire()) == gate


@relaxed
@given(deployments)
def test_deployment_round_trips(deployment: Deployment) -> None:
    assert Deployment.from_wire(deployment.to_wire()) == deployment


@relaxed
@given(heartbeats)
def test_heartbeat_round_trips(heartbeat: Heartbeat) -> None:
    assert Heartbeat.from_wire(heartbeat.to_wire()) == heartbeat


@relaxed
@given(st.builds(HealthVerdict, verdict=st.sampled_from(Verdict), reason=words, rollback=st.booleans()))
def test_health_verdict_round_trips(verdict: HealthVerdict) -> None:
    wire = verdict.to_wire()
    assert wire["Action"] == ("ROLLBACK" if verdict.rollback else "NONE") == verdict.action
    assert HealthVerdict.from_wire(wire) == verdict


def test_health_gate_defaults_are_the_documented_ones() -> None:
    gate = HealthGate.from_wire({"MaxErrorRate": 0.1})
    assert (gate.min_inferences, gate.observation_seconds) == (10, 60.0)
    assert HealthGate() == HealthGate(None, None, DEFAULT_MIN_INFERENCES, DEFAULT_OBSERVATION_SECONDS)
    assert not HealthGate().enabled
    assert gate.enabled and HealthGate(max_p99_latency_ms=5).enabled
    # a drift limit alone is a gate too (judged by the server; devices still report their figures)
    assert HealthGate(max_drift_score=0.25).enabled and gate.max_drift_score is None


def test_unknown_enum_values_are_refused_with_the_known_ones() -> None:
    raw = Deployment(name="p.s", definitions=()).to_wire()
    with pytest.raises(
        InvalidArgument,
        match=r"FailureHandlingPolicy 'RETRY' is invalid \(known: ROLLBACK_ON_FAILURE, DO_NOTHING\)",
    ):
        Deployment.from_wire({**raw, "FailureHandlingPolicy": "RETRY"})
    with pytest.raises(
        InvalidArgument, match=r"health Verdict 'MAYBE' is invalid \(known: PASS, FAIL, PENDING\)"
    ):
        HealthVerdict.from_wire({"Verdict": "MAYBE"})
