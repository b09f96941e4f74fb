"""GET /metrics: the store's studies, trials and workers in the Prometheus text format, read at scrape time."""

from __future__ import annotations

import re
import threading
import time
from collections import Counter
from collections.abc import Iterable, Iterator, Sequence

from fastapi import APIRouter, Request, Response
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.core import GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector

from studies import StudyRepository
from studies.fleet import Fleet
from studies.states import WORKER_ALIVE, WorkerState
from studies.tables import utcnow

router = APIRouter(tags=["metrics"])

CLAIM_BUCKETS_S = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)
DURATION_BUCKETS_S = (0.1, 0.5, 1.0, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0, 3600.0, 4 * 3600.0)


def reason_label(reason: str) -> str:
    """A fail reason with its numbers folded, so `NaN loss at epoch 3` and `... epoch 7` share a series."""
    return re.sub(r"\d+(\.\d+)?", "N", reason)[:120]


def _histogram(name: str, doc: str, buckets: Sequence[float], samples: dict[str, list[float]]) -> Metric:
    family = HistogramMetricFamily(name, doc, labels=["study"])
    for study, values in samples.items():
        counts = [sum(1 for v in values if v <= bound) for bound in buckets]
        family.add_metric(
            [study],
            buckets=[*((str(b), c) for b, c in zip(buckets, counts, strict=True)), ("+Inf", len(values))],
            sum_value=sum(values),
        )
    return family


class StoreCollector(Collector):
    """Reads the store once per scrape (at most once per cache_s) and renders every tunefleet metric."""

    def __init__(self, repository: StudyRepository, *, grace_s: float, cache_s: float = 2.0) -> None:
        self.repository = repository
        self.fleet = Fleet(repository)
        self.grace_s = grace_s
        self.cache_s = cache_s
        self._lock = threading.Lock()
        self._cached: tuple[float, list[Metric]] | None = None

    def collect(self) -> Iterator[Metric]:
        with self._lock:
            if self._cached is None or time.monotonic() - self._cached[0] > self.cache_s:
                self._cached = (time.monotonic(), list(self._read()))
            yield from self._cached[1]

    def _read(self) -> Iterable[Metric]:
        trials = GaugeMetricFamily(
            "tunefleet_trials", "Trials by study and state.", labels=["study", "state"]
        )
        studies = GaugeMetricFamily("tunefleet_studies", "Studies by state.", labels=["state"])
        failed = GaugeMetricFamily(
            "tunefleet_failed_trials", "Failed trials by study and reason.", labels=["study", "reason"]
        )
        running_total = 0
        study_states: Counter[str] = Counter()
        durations: dict[str, list[float]] = {}
        claims: dict[str, list[float]] = {}
        # A fixed number of queries for any number of studies and trials: a scrape never loads a trial.
        records = self.repository.list_studies()
        facts = self.repository.finished_trial_facts(records)
        for summary in self.repository.summaries(records):
            record, progress = summary.progress.record, summary.progress
            study_states[progress.state] += 1
            for state, count in progress.trial_counts.items():
                trials.add_metric([record.name, state], count)
            running_total += progress.trial_counts["running"]
            finished = facts[record.optuna_study_id]
            durations[record.name] = finished.durations_s
            claims[record.name] = finished.claims_s
            reasons: Counter[str] = Counter()
            for reason, count in finished.fail_reasons.items():
                reasons[reason_label(reason)] += count
            # The summary counted every failed trial: those that recorded no reason are "unknown".
            unknown = progress.trial_counts["fail"] - finished.fail_reasons.total()
            if unknown > 0:
                reasons["unknown"] += unknown
            for reason, count in reasons.items():
                failed.add_metric([record.name, reason], count)
        for state, count in study_states.items():
            studies.add_metric([state], count)
        yield trials
        yield studies
        yield failed
        yield GaugeMetricFamily(
            "tunefleet_running_trials", "Trials running now, all studies.", value=running_total
        )

        workers = GaugeMetricFamily(
            "tunefleet_workers", "Workers by status (busy, idle, lost).", labels=["status"]
        )
        now = utcnow()
        statuses = Counter(w.status(grace_s=self.grace_s, now=now) for w in self.fleet.workers())
        for status in (WorkerState.BUSY, WorkerState.IDLE, WorkerState.LOST):
            workers.add_metric([status.value], statuses.get(status, 0))
        yield workers
        yield GaugeMetricFamily(
            "tunefleet_live_workers",
            "Workers heartbeating now.",
            value=sum(statuses.get(state, 0) for state in WORKER_ALIVE),
        )
        yield _histogram(
            "tunefleet_trial_duration_seconds", "Wall time of finished trials.", DURATION_BUCKETS_S, durations
        )
        yield _histogram(
            "tunefleet_claim_latency_seconds", "Time a worker took to claim a trial.", CLAIM_BUCKETS_S, claims
        )


def build_registry(repository: StudyRepository, *, grace_s: float) -> CollectorRegistry:
    """A registry of our own: the process-wide default one would leak between app instances."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(StoreCollector(repository, grace_s=grace_s))
    return registry


@router.get("/metrics", response_class=Response, responses={200: {"content": {CONTENT_TYPE_LATEST: {}}}})
def metrics(request: Request) -> Response:
    """Prometheus text format: studies, trials by state, failed trials by reason, workers, latencies."""
    registry: CollectorRegistry = request.app.state.metrics_registry
    return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)
