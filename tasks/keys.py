"""Every Redis key the gateway writes, under one prefix, each with its time to live beside it.

Celery's own keys (queue lists named after the queues, `unacked*`, `celery-task-meta-*`) are kombu's
and Celery's, not ours, and are not prefixed.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Keys:
    """Key names for one deployment (one prefix)."""

    prefix: str = "gw:"

    def job(self, job_id: str) -> str:
        """Hash: one job's record. TTL: settings.job_ttl_seconds, renewed on every update."""
        return f"{self.prefix}job:{job_id}"

    def idempotency(self, owner: str, key: str) -> str:
        """String: '<job id> <body sha256>' of an Idempotency-Key. TTL: idempotency_ttl_seconds."""
        return f"{self.prefix}idem:{owner}:{key}"

    @property
    def schedule(self) -> str:
        """Sorted set: '<queue>\\n<message>' by due time (epoch s). No TTL: workers drain it."""
        return f"{self.prefix}schedule"

    def delivery(self, delivery_id: str) -> str:
        """Hash: one outbound delivery. TTL: job_ttl_seconds; persisted while a dead letter."""
        return f"{self.prefix}delivery:{delivery_id}"

    def delivery_attempts(self, delivery_id: str) -> str:
        """List: a delivery's attempts, JSON each. TTL: as its delivery."""
        return f"{self.prefix}delivery:{delivery_id}:attempts"

    def deliveries(self, parent: str) -> str:
        """List: delivery ids made for a parent ('job:<id>' or 'event:<id>'). TTL: job_ttl."""
        return f"{self.prefix}deliveries:{parent}"

    def event(self, event_id: str) -> str:
        """Hash: one inbound webhook event, raw body included. TTL: job_ttl_seconds, renewed."""
        return f"{self.prefix}event:{event_id}"

    def webhook_seen(self, source: str, delivery_id: str) -> str:
        """String: our event id for a sender's delivery id (dedup). TTL: webhook_dedup_seconds."""
        return f"{self.prefix}whseen:{source}:{delivery_id}"

    @property
    def beat_leader(self) -> str:
        """String: token of the beat process allowed to fire periodic jobs. TTL: 30 s, renewed."""
        return f"{self.prefix}beat:leader"

    @property
    def dead_letters(self) -> str:
        """Sorted set: dead-letter ids by time of death. No TTL: kept until replayed or purged."""
        return f"{self.prefix}dead"

    def endpoint(self, endpoint_id: str) -> str:
        """Hash: one endpoint (tasks/endpoints.py has its fields). No TTL: kept until deleted."""
        return f"{self.prefix}endpoint:{endpoint_id}"

    @property
    def endpoints(self) -> str:
        """Sorted set: endpoint ids by creation time (epoch s). No TTL."""
        return f"{self.prefix}endpoints"

    def endpoint_deliveries(self, endpoint_id: str) -> str:
        """Sorted set: an endpoint's delivery ids by offer time (epoch µs), the newest
        ENDPOINT_DELIVERIES_KEPT only. No TTL: deleted with its endpoint."""
        return f"{self.prefix}endpoint:{endpoint_id}:deliveries"

    @property
    def endpoints_version(self) -> str:
        """String: INCRed with every endpoint change; workers' caches compare it. No TTL."""
        return f"{self.prefix}endpoints:version"

    @property
    def dead_letter_counts(self) -> str:
        """Hash: dead letters by kind (job kind or 'callback'), kept with the set. No TTL."""
        return f"{self.prefix}dead:counts"

    def endpoint_limit(self, endpoint_id: str, part: str) -> str:
        """A delivery limit's state for one endpoint (tasks/endpoint_limits.py names each part).

        inflight (zset, delivery id -> lease end), rate (string, GCRA arrival time), slots
        (string, last wait slot handed out), probe (string, while a paused endpoint's probe is
        not due): each expires on its own. sequence (zset, an ordered endpoint's undelivered ids
        by acceptance), held (zset, ids held while disabled), parked / parked_order (hash + zset,
        deliveries waiting out a pause): no TTL, emptied as deliveries go.
        """
        return f"{self.prefix}endpoint:{endpoint_id}:{part}"

    @property
    def counters(self) -> str:
        """Hash: event counters by name ('endpoint.disabled'). No TTL."""
        return f"{self.prefix}counters"

    def job_changes(self, job_id: str) -> str:
        """Pub/sub channel: one job's changes (tasks/changes.py has the messages). No state."""
        return f"{self.prefix}jobch:{job_id}"

    @property
    def job_changes_pattern(self) -> str:
        """PSUBSCRIBE pattern matching every job's change channel."""
        return f"{self.prefix}jobch:*"

    def activity(self, minute: int) -> str:
        """Hash: job counts in one minute (epoch // 60) by what happened (tasks/changes.py).
        TTL: changes.ACTIVITY_TTL_SECONDS (the console's chart shows the last hour)."""
        return f"{self.prefix}activity:{minute}"

    @property
    def jobs_by_time(self) -> str:
        """Sorted set: every job id by creation time (epoch ms), written with the record.
        No TTL: entries older than job_ttl_seconds are trimmed (tasks/job_index.py)."""
        return f"{self.prefix}jobs:all"

    def jobs_by(self, kind: str, status: str) -> str:
        """Sorted set: the ids of jobs of ``kind`` now in ``status``, by creation time (epoch ms);
        a job moves between these in the script or transaction that changes its status. No TTL:
        trimmed as jobs_by_time."""
        return f"{self.jobs_by_prefix}{kind}:{status}"

    @property
    def jobs_by_prefix(self) -> str:
        """What ``jobs_by`` puts before '<kind>:<status>' (Lua scripts build the name from it)."""
        return f"{self.prefix}jobs:by:"

    def job_attempts(self, job_id: str) -> str:
        """List: a job's ended attempts, JSON each (tasks/job_attempts.py). TTL: as its record,
        persisted while a dead letter. Not under 'job:': a scan for job records finds only them."""
        return f"{self.prefix}jobtries:{job_id}"
