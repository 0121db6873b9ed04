"""Drift monitoring on the control plane: live summary windows from heartbeats, baselines, reports.

Devices send each loaded model version's live summary (mergeable KLL sketches and class counts,
:mod:`edgefleet.monitoring`) per window with their heartbeats (``ModelSummaries``);
:func:`check_windows` bounds them (refused as INVALID_ARGUMENT) and :func:`store_windows` keeps
them, once each, on the heartbeat's own transaction (the ordinary path and the group commit alike).

A model version's **baseline** (:func:`put_baseline`) is the same kind of summary made from
reference data (``edgefleet baseline create``). The **drift report** (:func:`fleet_drift`) merges
a fleet's windows of a model per version and time bucket (optionally only devices with a tag) and
scores each bucket against the version's baseline with :func:`edgefleet.monitoring.compare`: PSI and
KS per input and output feature, Jensen-Shannon per output's predicted classes, worst first.

The **time series** (:class:`DriftScorer`, run by the periodic work) stores those scores for every
complete bucket of each fleet's model version (``drift_buckets``, ``drift_scores``), scored again
when late windows arrive or the baseline is replaced; the alert rules (server/alerts.py) watch it,
and a report answers the complete buckets it holds from it.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, NamedTuple, cast

from sqlalchemy import Connection, delete, func, insert, select
from sqlalchemy.orm import Session

from edgefleet.core import deviceplane as dp
from edgefleet.core.errors import AlreadyExists, FailedPrecondition, InvalidArgument, NotFound
from edgefleet.monitoring import ClassDrift, DriftReport, FeatureDrift, ModelSummary, compare
from edgefleet.server import registry
from edgefleet.server.db.engine import Database, one_of
from edgefleet.server.db.schema import (
    Baseline,
    Device,
    DeviceTag,
    DriftBucketRow,
    DriftScoreRow,
    Fleet,
    Model,
    ModelVersion,
    SummaryWindowRow,
)
from edgefleet.server.fleets import get_fleet

log = logging.getLogger(__name__)

_WINDOW_KEY = ["device_id", "model_name", "model_version", "window_start"]


def check_windows(windows: Sequence[dp.SummaryWindow]) -> None:
    """INVALID_ARGUMENT naming the first window that does not fit: too many windows, a summary
    over :data:`~edgefleet.core.deviceplane.MAX_SUMMARY_BYTES` (or all of them over
    :data:`~edgefleet.core.deviceplane.MAX_HEARTBEAT_SUMMARY_BYTES`), names too long, a window that
    ends before it starts, or a summary that is not a model summary."""
    if len(windows) > dp.MAX_HEARTBEAT_SUMMARIES:
        raise InvalidArgument(
            f"a heartbeat carries at most {dp.MAX_HEARTBEAT_SUMMARIES} model summaries (got {len(windows)})"
        )
    total = 0
    for index, window in enumerate(windows):
        what = f"ModelSummaries[{index}] ({window.model_name!r} {window.model_version!r})"
        if not 1 <= len(window.model_name) <= 63 or len(window.model_version) > 30:
            raise InvalidArgument(f"{what}: model names are 1-63, versions 0-30 characters")
        if window.calls < 0:
            raise InvalidArgument(f"{what}: Calls must not be negative")
        if window.window_end < window.window_start:
            raise InvalidArgument(f"{what}: WindowEnd is before WindowStart")
        size = dp.summary_bytes(window.summary)
        if size > dp.MAX_SUMMARY_BYTES:
            raise InvalidArgument(f"{what}: a summary is at most {dp.MAX_SUMMARY_BYTES} bytes (got {size})")
        total += size
        if total > dp.MAX_HEARTBEAT_SUMMARY_BYTES:
            raise InvalidArgument(
                f"a heartbeat's model summaries are at most {dp.MAX_HEARTBEAT_SUMMARY_BYTES} bytes in all"
            )
        try:
            ModelSummary.from_wire(window.summary)
        except InvalidArgument as exc:
            raise InvalidArgument(f"{what}: {exc}") from exc


def store_windows(
    conn: Connection, windows: Sequence[tuple[int, Sequence[dp.SummaryWindow]]], now: datetime
) -> int:
    """Store ``(device id, windows)`` pairs (checked by :func:`check_windows`) on ``conn``'s
    transaction; a window already stored (same device, model, version and start) is kept as it
    was. Returns the number of windows offered."""
    wanted = [(device_id, w) for device_id, ws in windows for w in ws]
    if not wanted:
        return 0
    device_ids = sorted({device_id for device_id, _ in wanted})
    query = select(Device.id, Device.fleet_id).where(one_of(conn, Device.id, device_ids))
    fleets = {device_id: fleet_id for device_id, fleet_id in conn.execute(query)}
    rows = [
        {
            "device_id": device_id,
            "fleet_id": fleets[device_id],
            "model_name": w.model_name,
            "model_version": w.model_version,
            "window_start": w.window_start,
            "window_end": w.window_end,
            "calls": w.calls,
            "summary": dict(w.summary),
            "received_at": now,
        }
        for device_id, w in wanted
        if device_id in fleets
    ]
    if rows:
        conn.execute(_insert_new(conn), rows)
    return len(rows)


def purge_windows(session: Session, before: datetime) -> int:
    """Delete the summary windows that ended before ``before`` (their retention passed); returns how many."""
    result = session.execute(delete(SummaryWindowRow).where(SummaryWindowRow.window_end < before))
    count = int(getattr(result, "rowcount", 0) or 0)
    if count:
        log.info("deleted %d model summary windows that ended before %s", count, before.isoformat())
    return count


def _insert_new(conn: Connection) -> Any:
    """INSERT of summary windows that skips the ones already stored."""
    if conn.dialect.name == "postgresql":
        from sqlalchemy.dialects.postgresql import insert as pg_insert

        return pg_insert(SummaryWindowRow).on_conflict_do_nothing(index_elements=_WINDOW_KEY)
    from sqlalchemy.dialects.sqlite import insert as sqlite_insert

    return sqlite_insert(SummaryWindowRow).on_conflict_do_nothing(index_elements=_WINDOW_KEY)


# ------------------------------------------------------------------------------------- baselines


def put_baseline(
    session: Session, model_name: str, version: str, summary: Mapping[str, Any], actor: str, now: datetime
) -> Baseline:
    """Attach (or replace) the baseline of a registered model version; NOT_FOUND for an unknown
    model or version, INVALID_ARGUMENT for a summary that is not one or summarises nothing."""
    row = registry.get_version(session, model_name, version)
    parsed = ModelSummary.from_wire(summary)
    if parsed.calls <= 0 or not (parsed.inputs or parsed.outputs):
        raise InvalidArgument("a baseline must summarise at least one reference sample")
    baseline = session.get(Baseline, row.id)
    if baseline is None:
        baseline = Baseline(model_version_id=row.id)
        session.add(baseline)
    baseline.summary = dict(summary)
    baseline.samples = parsed.calls
    baseline.created_at = now
    baseline.created_by = actor
    session.flush()
    return baseline


def get_baseline(session: Session, model_name: str, version: str) -> Baseline:
    """The baseline of a model version; NOT_FOUND if the version is unknown or has none."""
    baseline = _baseline(session, model_name, version)
    if baseline is None:
        raise NotFound(
            f"model {model_name!r} version {version!r} has no baseline (edgefleet baseline create)"
        )
    return baseline


def _baseline(session: Session, model_name: str, version: str) -> Baseline | None:
    """The version's baseline or None; NOT_FOUND for an unknown model or version."""
    return session.get(Baseline, registry.get_version(session, model_name, version).id)


# ---------------------------------------------------------------------------------- drift report

#: Default and bounds of the report's time buckets (seconds).
DEFAULT_BUCKET_SECONDS = 3600
MIN_BUCKET_SECONDS = 60
MAX_BUCKET_SECONDS = 31 * 24 * 3600
#: Default look-back of a report.
DEFAULT_SINCE = timedelta(days=1)
#: Windows one report merges at most (a longer range must be asked for in parts).
MAX_REPORT_WINDOWS = 50_000
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


@dataclass(frozen=True)
class Bucket:
    """One model version's windows merged over one time bucket, scored against its baseline."""

    model_version: str
    start: datetime
    end: datetime
    windows: int
    devices: int
    calls: int
    report: DriftReport


@dataclass(frozen=True)
class FleetDrift:
    """A fleet's drift for one model: per version and bucket, and versions that have no baseline."""

    fleet: str
    model_name: str
    since: datetime
    bucket_seconds: int
    buckets: tuple[Bucket, ...]
    missing_baselines: tuple[str, ...]

    def features(self) -> list[tuple[Bucket, FeatureDrift]]:
        """Every feature's scores in every bucket, worst (PSI, then KS) first."""
        rows = [(b, f) for b in self.buckets for f in b.report.features]
        rows.sort(key=lambda r: (-r[1].psi, -r[1].ks, r[0].start, r[1].tensor, r[1].feature))
        return rows

    def classes(self) -> list[tuple[Bucket, ClassDrift]]:
        """Every output's class-distribution score in every bucket, worst (JS) first."""
        rows = [(b, c) for b in self.buckets for c in b.report.classes]
        rows.sort(key=lambda r: (-r[1].js, r[0].start, r[1].output))
        return rows


def check_bucket(seconds: int | None) -> int:
    """The bucket length to use; INVALID_ARGUMENT outside the bounds."""
    if seconds is None:
        return DEFAULT_BUCKET_SECONDS
    if not MIN_BUCKET_SECONDS <= seconds <= MAX_BUCKET_SECONDS:
        raise InvalidArgument(
            f"the bucket must be {MIN_BUCKET_SECONDS}-{MAX_BUCKET_SECONDS} seconds (got {seconds})"
        )
    return seconds


def fleet_drift(
    session: Session,
    fleet_name: str,
    model_name: str,
    *,
    version: str | None,
    since: datetime | None,
    now: datetime,
    bucket_seconds: int | None = None,
    tag: tuple[str, str] | None = None,
) -> FleetDrift:
    """Merge the fleet's stored windows of ``model_name`` (one ``version``, or each version seen)
    per time bucket (by window end, buckets aligned to the epoch), only of devices tagged ``tag``
    if given, and score each bucket against its version's baseline.

    NOT_FOUND for an unknown fleet, model or version; FAILED_PRECONDITION when no version asked
    for has a baseline; INVALID_ARGUMENT for a bad bucket or range.
    """
    fleet = get_fleet(session, fleet_name)
    model = registry.get_model(session, model_name)
    seconds = check_bucket(bucket_seconds)
    start = since if since is not None else now - DEFAULT_SINCE
    if start.tzinfo is None:
        raise InvalidArgument("Since must carry a time zone (e.g. 2030-01-01T00:00:00Z)")
    baselines: dict[str, ModelSummary] = {}
    if version is not None:
        baseline = _baseline(session, model_name, version)
        if baseline is None:
            raise FailedPrecondition(
                f"model {model_name!r} version {version!r} has no baseline to compare with: "
                "edgefleet baseline create"
            )
        baselines[version] = ModelSummary.from_wire(baseline.summary)
    else:
        stored = session.execute(
            select(ModelVersion.version, Baseline.summary)
            .join(Baseline, Baseline.model_version_id == ModelVersion.id)
            .where(ModelVersion.model_id == model.id)
        )
        baselines = {str(v): ModelSummary.from_wire(cast(dict[str, Any], summary)) for v, summary in stored}
    baseline_times = _baseline_times(session, model.id)
    query = select(*_WINDOW_META).where(
        SummaryWindowRow.fleet_id == fleet.id,
        SummaryWindowRow.model_name == model_name,
        SummaryWindowRow.window_end >= start,
    )
    if version is not None:
        query = query.where(SummaryWindowRow.model_version == version)
    if tag is not None:
        query = query.join(
            DeviceTag,
            (DeviceTag.device_id == SummaryWindowRow.device_id)
            & (DeviceTag.key == tag[0])
            & (DeviceTag.value == tag[1]),
        )
    rows = [
        _WindowMeta(*r)
        for r in session.execute(query.order_by(SummaryWindowRow.window_end).limit(MAX_REPORT_WINDOWS + 1))
    ]
    if len(rows) > MAX_REPORT_WINDOWS:
        raise InvalidArgument(
            f"more than {MAX_REPORT_WINDOWS} summary windows since {start.isoformat()}: ask for a later Since"
        )
    seen = sorted({r.model_version for r in rows})
    missing = tuple(v for v in seen if v not in baselines)
    if version is None and seen and not set(seen) & set(baselines):
        raise FailedPrecondition(
            f"no version of model {model_name!r} seen in fleet {fleet_name!r} has a baseline "
            f"({', '.join(seen)}): edgefleet baseline create"
        )
    groups: dict[tuple[str, int], list[_WindowMeta]] = {}
    for row in rows:
        if row.model_version in baselines:
            groups.setdefault((row.model_version, bucket_index(row.window_end, seconds)), []).append(row)
    # complete buckets the periodic work scored from exactly these windows are answered from the
    # stored series; the rest (the current bucket, a first bucket cut by Since, a device tag) live
    scored = _stored_buckets(session, fleet.id, model_name, version, start, seconds) if tag is None else {}
    buckets = []
    for (model_version, index), members in sorted(groups.items()):
        begin, end = bucket_bounds(index, seconds)
        known = scored.get((model_version, begin))
        inputs = _Inputs.of(members, baseline_times.get(model_version))
        if known is not None and begin >= start and _Inputs.stored(known[0]) == inputs:
            kept, scores = known
            report = _report(kept, scores)
            buckets.append(Bucket(model_version, begin, end, kept.windows, kept.devices, kept.calls, report))
            continue
        merged = _merge(session, [m.id for m in members])
        buckets.append(
            Bucket(
                model_version,
                begin,
                end,
                len(members),
                len({m.device_id for m in members}),
                sum(m.calls for m in members),
                compare(baselines[model_version], merged),
            )
        )
    return FleetDrift(fleet_name, model_name, start, seconds, tuple(buckets), missing)


def bucket_index(when: datetime, seconds: int) -> int:
    """The epoch-aligned bucket of ``seconds`` that a window ending at ``when`` falls in."""
    return int((when - _EPOCH).total_seconds() // seconds)


def bucket_bounds(index: int, seconds: int) -> tuple[datetime, datetime]:
    """Start and end of bucket ``index``."""
    begin = _EPOCH + timedelta(seconds=index * seconds)
    return begin, begin + timedelta(seconds=seconds)


_WINDOW_META = (
    SummaryWindowRow.id,
    SummaryWindowRow.device_id,
    SummaryWindowRow.fleet_id,
    SummaryWindowRow.model_name,
    SummaryWindowRow.model_version,
    SummaryWindowRow.window_end,
    SummaryWindowRow.calls,
    SummaryWindowRow.received_at,
)


class _WindowMeta(NamedTuple):
    """A stored window without its summary."""

    id: int
    device_id: int
    fleet_id: int
    model_name: str
    model_version: str
    window_end: datetime
    calls: int
    received_at: datetime


@dataclass(frozen=True)
class _Inputs:
    """What a bucket's scores were computed from: its windows (stored once, never changed) and the
    baseline (its creation time)."""

    windows: int
    last_received_at: datetime
    baseline_at: datetime | None

    @classmethod
    def of(cls, members: Sequence[_WindowMeta], baseline_at: datetime | None) -> _Inputs:
        return cls(len(members), max(m.received_at for m in members), baseline_at)

    @classmethod
    def stored(cls, row: DriftBucketRow) -> _Inputs:
        return cls(row.windows, row.last_received_at, row.baseline_at)


def _baseline_times(session: Session, model_id: int) -> dict[str, datetime]:
    """version -> its baseline's creation time, for the versions of a model that have one."""
    rows = session.execute(
        select(ModelVersion.version, Baseline.created_at)
        .join(Baseline, Baseline.model_version_id == ModelVersion.id)
        .where(ModelVersion.model_id == model_id)
    )
    return {str(v): created for v, created in rows}


def _merge(session: Session, window_ids: Sequence[int]) -> ModelSummary:
    """The windows' summaries merged into one."""
    merged = ModelSummary.empty()
    for start in range(0, len(window_ids), 500):
        chunk = list(window_ids[start : start + 500])
        query = (
            select(SummaryWindowRow.summary)
            .where(SummaryWindowRow.id.in_(chunk))
            .order_by(SummaryWindowRow.id)
        )
        summary: dict[str, Any]
        for summary in session.scalars(query):
            merged.merge(ModelSummary.from_wire(summary))
    return merged


def _stored_buckets(
    session: Session, fleet_id: int, model_name: str, version: str | None, start: datetime, seconds: int
) -> dict[tuple[str, datetime], tuple[DriftBucketRow, list[DriftScoreRow]]]:
    """(version, bucket start) -> the stored bucket of ``seconds`` and its scores, from ``start`` on."""
    query = select(DriftBucketRow).where(
        DriftBucketRow.fleet_id == fleet_id,
        DriftBucketRow.model_name == model_name,
        DriftBucketRow.bucket_start >= start,
    )
    if version is not None:
        query = query.where(DriftBucketRow.model_version == version)
    rows = [r for r in session.scalars(query) if (r.bucket_end - r.bucket_start).total_seconds() == seconds]
    if not rows:
        return {}
    scores: dict[int, list[DriftScoreRow]] = {r.id: [] for r in rows}
    ids = list(scores)
    for begin in range(0, len(ids), 500):
        chunk = ids[begin : begin + 500]
        for score in session.scalars(select(DriftScoreRow).where(DriftScoreRow.bucket_id.in_(chunk))):
            scores[score.bucket_id].append(score)
    return {(r.model_version, r.bucket_start): (r, scores[r.id]) for r in rows}


# ----------------------------------------------------------------------- the stored time series

#: score kinds of the time series
PSI, KS, JS = "PSI", "KS", "JS"
SCORE_KINDS = (PSI, KS, JS)


def feature_name(kind: str, tensor: str, index: int) -> str:
    """How a feature is named in the time series and in alerts: ``input x[3]``."""
    return f"{kind} {tensor}[{index}]"


def _score_rows(report: DriftReport) -> list[dict[str, Any]]:
    """The time series rows (without bucket columns) of one bucket's report."""
    rows: list[dict[str, Any]] = []
    for f in report.features:
        detail = {
            "Kind": f.kind,
            "Tensor": f.tensor,
            "Feature": f.feature,
            "BaselineCount": f.baseline_count,
            "LiveCount": f.live_count,
        }
        name = feature_name(f.kind, f.tensor, f.feature)
        rows.append({"feature": name, "kind": PSI, "score": f.psi, "detail": detail})
        rows.append({"feature": name, "kind": KS, "score": f.ks, "detail": detail})
    for c in report.classes:
        detail = {"Output": c.output, "Baseline": c.baseline, "Live": c.live}
        rows.append({"feature": f"output {c.output}", "kind": JS, "score": c.js, "detail": detail})
    return rows


def _report(bucket: DriftBucketRow, scores: Sequence[DriftScoreRow]) -> DriftReport:
    """The drift report of a stored bucket, as :func:`~edgefleet.monitoring.compare` made it."""
    pairs: dict[str, dict[str, DriftScoreRow]] = {}
    classes: list[ClassDrift] = []
    for row in scores:
        if row.kind == JS:
            d = row.detail
            classes.append(ClassDrift(str(d["Output"]), row.score, dict(d["Baseline"]), dict(d["Live"])))
        else:
            pairs.setdefault(row.feature, {})[row.kind] = row
    features = []
    for pair in pairs.values():
        d = pair[PSI].detail
        features.append(
            FeatureDrift(
                str(d["Tensor"]),
                str(d["Kind"]),
                int(d["Feature"]),
                pair[PSI].score,
                pair[KS].score,
                int(d["BaselineCount"]),
                int(d["LiveCount"]),
            )
        )
    features.sort(key=lambda f: (-f.psi, -f.ks, f.tensor, f.feature))
    classes.sort(key=lambda c: (-c.js, c.output))
    return DriftReport(tuple(features), tuple(classes), tuple(str(m) for m in bucket.mismatches))


@dataclass(frozen=True)
class SeriesKey:
    """One stored series: a fleet's model version."""

    fleet_id: int
    model_name: str
    model_version: str


class DriftScorer:
    """Scores complete buckets into the stored time series (:meth:`run`, from the periodic work).

    A bucket is scored once it is complete (ended ``grace`` ago) and again whenever its windows or
    its version's baseline changed since; buckets that ended before ``lookback`` are left as they
    are. The scorer remembers when it last looked, so a round reads only the windows that arrived
    since (and the buckets that completed since) instead of the whole look-back; the first round
    of a process reads it all. Nothing of this memory matters for correctness: every bucket is
    compared with what is stored before it is scored again.

    Safe on several replicas: each bucket is written under its row's lock (PostgreSQL) or the one
    writer (SQLite), and a bucket another replica stored from the same inputs meanwhile is kept.
    """

    #: windows committed this long after the time they were received at are still seen
    COMMIT_MARGIN = timedelta(minutes=2)

    def __init__(self, db: Database, *, bucket_seconds: int, grace: timedelta, lookback: timedelta) -> None:
        self.db = db
        self.seconds = check_bucket(bucket_seconds)
        self.grace = grace
        self.lookback = lookback
        self._last: datetime | None = None

    def run(self, now: datetime) -> list[tuple[SeriesKey, datetime]]:
        """One round; returns (series, bucket start) of the buckets stored."""
        seconds = self.seconds
        first = bucket_bounds(bucket_index(now - self.lookback, seconds), seconds)[0]
        complete_before = now - self.grace
        with self.db.session() as session:
            candidates = self._candidates(session, first)
            known = {
                (SeriesKey(b.fleet_id, b.model_name, b.model_version), b.bucket_start): _Inputs.stored(b)
                for b in session.scalars(select(DriftBucketRow).where(DriftBucketRow.bucket_start >= first))
                if (b.bucket_end - b.bucket_start).total_seconds() == seconds
            }
            versions = {(k.model_name, k.model_version) for k, _ in candidates}
            versions |= {(k.model_name, k.model_version) for k, _ in known}
            baselines = _baselines_of(session, versions)
        # a bucket scored against an older baseline is scored again
        for (key, begin), inputs in known.items():
            baseline = baselines.get((key.model_name, key.model_version))
            if baseline is not None and inputs.baseline_at != baseline[0]:
                candidates.add((key, bucket_index(begin, seconds)))
        due = sorted(
            (
                (index, key.fleet_id, key.model_name, key.model_version)
                for key, index in candidates
                if first <= bucket_bounds(index, seconds)[0]
                and bucket_bounds(index, seconds)[1] <= complete_before
            )
        )
        stored: list[tuple[SeriesKey, datetime]] = []
        for index, fleet_id, model_name, model_version in due:
            key = SeriesKey(fleet_id, model_name, model_version)
            baseline = baselines.get((model_name, model_version))
            if baseline is None:
                continue
            begin, end = bucket_bounds(index, seconds)
            with self.db.session() as session:
                members = _members(session, key, begin, end)
                if not members:
                    continue
                inputs = _Inputs.of(members, baseline[0])
                if known.get((key, begin)) == inputs:
                    continue
                try:
                    merged = _merge(session, [m.id for m in members])
                except InvalidArgument as exc:
                    # e.g. devices summarising one tensor with different feature counts: the
                    # other buckets are still scored; this one is tried again next round
                    log.error("drift bucket %s of %s cannot be scored: %s", begin.isoformat(), key, exc)
                    continue
            scored = _Scored(key, begin, end, members, inputs, compare(baseline[1], merged))
            try:
                if _store_bucket(self.db, scored, now):
                    stored.append((key, begin))
            except AlreadyExists:  # another replica stored this bucket first
                log.debug("bucket %s of %s was stored by another replica", begin.isoformat(), key)
        self._last = now
        if stored:
            log.info("scored %d drift buckets", len(stored))
        return stored

    def _candidates(self, session: Session, first: datetime) -> set[tuple[SeriesKey, int]]:
        """(series, bucket) of the windows that arrived since the last round, or of the buckets
        that completed since; on the first round every bucket in the look-back."""
        columns = (
            SummaryWindowRow.fleet_id,
            SummaryWindowRow.model_name,
            SummaryWindowRow.model_version,
            SummaryWindowRow.window_end,
        )
        queries = []
        if self._last is None:
            queries.append(select(*columns).where(SummaryWindowRow.window_end >= first))
        else:
            arrived = self._last - self.COMMIT_MARGIN
            queries.append(
                select(*columns).where(
                    SummaryWindowRow.window_end >= first, SummaryWindowRow.received_at > arrived
                )
            )
            pending = bucket_bounds(bucket_index(self._last - self.grace, self.seconds), self.seconds)[0]
            queries.append(select(*columns).where(SummaryWindowRow.window_end >= max(first, pending)))
        found: set[tuple[SeriesKey, int]] = set()
        for query in queries:
            for fleet_id, model_name, model_version, window_end in session.execute(query.distinct()):
                found.add(
                    (SeriesKey(fleet_id, model_name, model_version), bucket_index(window_end, self.seconds))
                )
        return found


def _in_bucket(key: SeriesKey, begin: datetime, end: datetime) -> tuple[Any, ...]:
    return (
        SummaryWindowRow.fleet_id == key.fleet_id,
        SummaryWindowRow.model_name == key.model_name,
        SummaryWindowRow.model_version == key.model_version,
        SummaryWindowRow.window_end >= begin,
        SummaryWindowRow.window_end < end,
    )


def _members(session: Session, key: SeriesKey, begin: datetime, end: datetime) -> list[_WindowMeta]:
    """The windows (without summaries) of one series' bucket."""
    return [
        _WindowMeta(*r) for r in session.execute(select(*_WINDOW_META).where(*_in_bucket(key, begin, end)))
    ]


def _baselines_of(
    session: Session, versions: set[tuple[str, str]]
) -> dict[tuple[str, str], tuple[datetime, ModelSummary]]:
    """(model, version) -> (baseline time, baseline) for those of ``versions`` that have one."""
    if not versions:
        return {}
    names = sorted({m for m, _ in versions})
    rows = session.execute(
        select(Model.name, ModelVersion.version, Baseline.created_at, Baseline.summary)
        .join(ModelVersion, ModelVersion.model_id == Model.id)
        .join(Baseline, Baseline.model_version_id == ModelVersion.id)
        .where(Model.name.in_(names))
    )
    return {
        (str(m), str(v)): (cast(datetime, created), ModelSummary.from_wire(cast(dict[str, Any], summary)))
        for m, v, created, summary in rows
        if (m, v) in versions
    }


@dataclass(frozen=True)
class _Scored:
    key: SeriesKey
    start: datetime
    end: datetime
    members: Sequence[_WindowMeta]
    inputs: _Inputs
    report: DriftReport


def _store_bucket(db: Database, scored: _Scored, now: datetime) -> bool:
    """Replace the stored bucket with ``scored`` in one transaction; False if an equal one is stored."""
    key = scored.key
    with db.session() as session:
        row = session.scalar(
            select(DriftBucketRow)
            .where(
                DriftBucketRow.fleet_id == key.fleet_id,
                DriftBucketRow.model_name == key.model_name,
                DriftBucketRow.model_version == key.model_version,
                DriftBucketRow.bucket_start == scored.start,
                DriftBucketRow.bucket_end == scored.end,
            )
            .with_for_update()
        )
        if row is not None and _Inputs.stored(row) == scored.inputs:
            return False
        if row is None:
            row = DriftBucketRow(
                fleet_id=key.fleet_id,
                model_name=key.model_name,
                model_version=key.model_version,
                bucket_start=scored.start,
                bucket_end=scored.end,
            )
            session.add(row)
        else:
            session.execute(delete(DriftScoreRow).where(DriftScoreRow.bucket_id == row.id))
        devices = len({m.device_id for m in scored.members})
        calls = sum(m.calls for m in scored.members)
        row.windows = scored.inputs.windows
        row.last_received_at = scored.inputs.last_received_at
        assert scored.inputs.baseline_at is not None
        row.baseline_at = scored.inputs.baseline_at
        row.devices = devices
        row.calls = calls
        row.mismatches = list(scored.report.mismatches)
        row.scored_at = now
        session.flush()
        series = {
            "bucket_id": row.id,
            "fleet_id": key.fleet_id,
            "model_name": key.model_name,
            "model_version": key.model_version,
            "bucket_start": scored.start,
            "bucket_end": scored.end,
            "devices": devices,
            "calls": calls,
        }
        values = [{**series, **r} for r in _score_rows(scored.report)]
        if values:
            session.execute(insert(DriftScoreRow), values)
    return True


def purge_scores(session: Session, before: datetime) -> int:
    """Delete the stored buckets (and their scores) that ended before ``before``; returns how many."""
    ids = list(session.scalars(select(DriftBucketRow.id).where(DriftBucketRow.bucket_end < before)))
    for start in range(0, len(ids), 500):
        chunk = ids[start : start + 500]
        session.execute(delete(DriftScoreRow).where(DriftScoreRow.bucket_id.in_(chunk)))
        session.execute(delete(DriftBucketRow).where(DriftBucketRow.id.in_(chunk)))
    if ids:
        log.info("deleted %d scored drift buckets that ended before %s", len(ids), before.isoformat())
    return len(ids)


@dataclass(frozen=True)
class ScorePoint:
    """The highest score of one kind over a stored bucket's features (one point of the time series)."""

    fleet: str
    model_name: str
    model_version: str
    kind: str
    bucket_start: datetime
    score: float


def score_series(
    session: Session, since: datetime, *, fleet_name: str | None = None, model_name: str | None = None
) -> list[ScorePoint]:
    """The stored drift time series from ``since``: per fleet, model version, score kind (PSI, KS,
    JS) and bucket, the highest score over features; ordered by series, then time."""
    stmt = (
        select(
            Fleet.name,
            DriftScoreRow.model_name,
            DriftScoreRow.model_version,
            DriftScoreRow.kind,
            DriftScoreRow.bucket_start,
            func.max(DriftScoreRow.score),
        )
        .join(Fleet, Fleet.id == DriftScoreRow.fleet_id)
        .where(DriftScoreRow.bucket_start >= since)
        .group_by(
            Fleet.name,
            DriftScoreRow.model_name,
            DriftScoreRow.model_version,
            DriftScoreRow.kind,
            DriftScoreRow.bucket_start,
        )
        .order_by(
            Fleet.name,
            DriftScoreRow.model_name,
            DriftScoreRow.model_version,
            DriftScoreRow.kind,
            DriftScoreRow.bucket_start,
        )
    )
    if fleet_name is not None:
        stmt = stmt.where(DriftScoreRow.fleet_id == get_fleet(session, fleet_name).id)
    if model_name is not None:
        stmt = stmt.where(DriftScoreRow.model_name == model_name)
    return [
        ScorePoint(str(f), str(m), str(v), str(k), t, float(s)) for f, m, v, k, t, s in session.execute(stmt)
    ]
