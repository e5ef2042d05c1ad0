"""Control-plane metrics computed from the store at scrape time: versions by state, incidents.

``ControlPlaneCollector(db)`` is a prometheus_client collector; ``releasegate serve`` registers it
on the gateway's registry so one ``/metrics`` shows both planes. Each scrape runs two grouped
``COUNT`` queries over small tables (rollouts, incidents), never over request events.
Label values are bounded by the stored plans (models, versions, stages) and the closed sets
of states, severities and incident statuses.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.metrics_core import Metric
from sqlalchemy import func, select

from releasegate.store.db import Database
from releasegate.store.evidence import Incident
from releasegate.store.models import Rollout

log = logging.getLogger(__name__)

#: Incident statuses that still need someone's attention.
OPEN_INCIDENT_STATUSES = ("open", "triaged")


class ControlPlaneCollector:
    """Scrape-time gauges from the store; a failed query reports ``releasegate_store_up 0`` instead of raising."""

    def __init__(self, db: Database) -> None:
        self.db = db

    def describe(self) -> list[Metric]:
        # Declared so registering does not run a query (prometheus_client calls collect() otherwise).
        return []

    def collect(self) -> Iterator[Metric]:
        versions = GaugeMetricFamily("releasegate_versions", "Model versions by rollout state.", labels=("model", "state"))
        stage = GaugeMetricFamily("releasegate_version_stage", "1 for the stage and state each version is in.",
                                  labels=("model", "version", "stage", "state"))
        open_ = GaugeMetricFamily("releasegate_incidents_open", "Incidents not yet mitigated or closed.",
                                  labels=("model", "version", "stage", "severity"))
        reported = CounterMetricFamily("releasegate_incidents", "Incidents reported, whatever their status.",
                                       labels=("model", "version", "stage", "severity"))
        up = GaugeMetricFamily("releasegate_store_up", "1 if the control-plane store answered this scrape.")
        try:
            with self.db.read() as session:
                by_state: dict[tuple[str, str], int] = {}
                for model, version, stage_name, state in session.execute(
                        select(Rollout.model_name, Rollout.version, Rollout.stage_name, Rollout.state)):
                    by_state[(model, state)] = by_state.get((model, state), 0) + 1
                    stage.add_metric((model, version, stage_name or "", state), 1)
                for (model, state), n in sorted(by_state.items()):
                    versions.add_metric((model, state), n)
                is_open = Incident.status.in_(OPEN_INCIDENT_STATUSES)
                for model, version, stage_name, severity, total, still_open in session.execute(
                        select(Incident.model_name, Incident.version, Incident.stage, Incident.severity, func.count(),
                               func.count().filter(is_open))
                        .group_by(Incident.model_name, Incident.version, Incident.stage, Incident.severity)):
                    labels = (model, version, stage_name or "", severity)
                    reported.add_metric(labels, int(total))
                    open_.add_metric(labels, int(still_open or 0))
        except Exception as exc:  # a scrape must not fail because the store is away
            log.warning("metrics: control-plane store unavailable at scrape: %s", exc)
            up.add_metric((), 0)
            yield up
            return
        up.add_metric((), 1)
        yield from (versions, stage, open_, reported, up)
