"""The runtime's Prometheus metrics, one registry per service (never the global one)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram


class Metrics:
    def __init__(self, service: str):
        self.service = service
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.published = Counter(
            "wabus_events_published_total", "Events confirmed by the broker.",
            ["service", "event"], registry=r,
        )
        self.publish_failures = Counter(
            "wabus_publish_failures_total", "Publishes the broker did not confirm (timeout, nack, unroutable).",
            ["service", "reason"], registry=r,
        )
        self.consumed = Counter(
            "wabus_events_consumed_total", "Deliveries settled, by outcome: applied, duplicate, retried, dead_lettered.",
            ["service", "subscription", "event", "outcome"], registry=r,
        )
        self.handler_duration = Histogram(
            "wabus_handler_duration_seconds", "Time from delivery to commit of a handler's transaction.",
            ["service", "subscription", "event"], registry=r,
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
        )
        self.group_size = Histogram(
            "wabus_group_events", "Events applied together in one transaction (a subscription's group commit).",
            ["service", "subscription"], registry=r, buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256, 512),
        )
        self.retries = Counter(
            "wabus_event_retries_total", "Deliveries sent back through a delay queue.",
            ["service", "subscription", "event"], registry=r,
        )
        self.dead_letters = Counter(
            "wabus_dead_letters_total", "Events stored as failed, by why.",
            ["service", "subscription", "reason"], registry=r,
        )
        self.database_waits = Counter(
            "wabus_database_unavailable_total", "Times work waited because PostgreSQL could not be reached.",
            ["service"], registry=r,
        )
        self.outbox_backlog = Gauge(
            "wabus_outbox_backlog", "Outbox rows not yet confirmed by the broker.", ["service"], registry=r,
        )
        self.outbox_oldest_age = Gauge(
            "wabus_outbox_oldest_age_seconds", "Age of the oldest unpublished outbox row.", ["service"], registry=r,
        )
        self.failed_stored = Gauge(
            "wabus_failed_events", "Failed events waiting in the dead-letter store.", ["service"], registry=r,
        )
        self.job_runs = Counter(
            "wabus_job_runs_total", "Periodic job runs, by outcome: ok, error, stale_leader.",
            ["service", "job_name", "outcome"], registry=r,
        )
        self.job_leader = Gauge(
            "wabus_job_leader", "1 where this replica leads the job, 0 where it follows.",
            ["service", "job_name"], registry=r,
        )
