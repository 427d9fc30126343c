"""The chaos suite's ledger, printed and checked: what each promise of issue 10 came to."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from typing import Any

from tests.e2e.chaos_clients import CLIENT_TIMEOUT, Answer, Submission
from tests.e2e.chaos_ledger import Outcome, end_state, tally
from tests.e2e.chaos_receiver import ReceiverProcess
from tests.e2e.chaos_support import Supervisor

INTENDED = {"echo": "succeeded", "echo_cb": "succeeded", "webhook": "routed"}
ALLOWED_ANSWERS = {"202", "503", "200-duplicate"}
RECOVERY_LIMIT = 60.0  # issue 10: a killed worker's jobs run again within 60 s (aim 15 s)


@dataclass
class Kill:
    """One SIGKILL of a worker: when, how many records it was working on, when those were final."""

    worker: str
    at: float
    in_flight: int  # records in its in-flight status once it was dead: it held them
    outstanding: int  # every record of its kind not final then (queued, prefetched, running)
    recovered_after: float | None = None  # the in-flight ones final again
    drained_after: float | None = None  # the outstanding ones final


@dataclass(frozen=True)
class RedisRestart:
    """One stop and start of Redis (monotonic times)."""

    down_at: float  # SIGTERM sent
    stopped_at: float  # the process has exited
    start_at: float  # started again
    up_at: float  # answers PING (AOF loaded)


def ledger(
    stack: Any,
    subs: list[Submission],
    outcomes: dict[int, Outcome],
    answers: list[Answer],
    t0: float,
    settled_after: float,
    records: tuple[int, int],
) -> tuple[list[str], list[str]]:
    """The ledger's lines, and the failed checks (empty: every promise held)."""
    lines = [
        f"== chaos ledger: {len(subs)} submissions, settled or gave up after {settled_after:.0f} s"
    ]
    failures: list[str] = []
    for kind, counts in sorted(tally(subs, outcomes).items()):
        lines.append(f"{kind:8} {sum(counts.values()):6}  {dict(counts.most_common())}")
        wrong = sum(n for state, n in counts.items() if state != INTENDED[kind])
        if wrong:
            failures.append(
                f"{wrong} {kind} submissions did not end {INTENDED[kind]}: {dict(counts)}"
            )
    strays = [s for s in subs if end_state(s, outcomes) != INTENDED[s.kind]]
    for sub in strays[:8]:
        at = "never" if sub.accepted_at is None else f"t={sub.accepted_at:.1f} s"
        lines.append(
            f"  e.g. #{sub.index} {sub.kind} accepted {at} after {sub.tries} tries: "
            f"{end_state(sub, outcomes)} {sub.id}"
        )
    _follow_ups(subs, outcomes, lines, failures)
    _no_double_work(subs, records, lines, failures)
    _receiver(stack.receiver, subs, outcomes, lines, failures)
    _api(answers, stack.restarts, t0, lines, failures)
    _workers(stack.supervisor, stack.kills, lines, failures)
    lines.append(
        "== " + ("all promises held" if not failures else f"{len(failures)} checks failed")
    )
    lines += [f"FAILED: {f}" for f in failures]
    return lines, failures


def _follow_ups(
    subs: list[Submission], outcomes: dict[int, Outcome], lines: list[str], failures: list[str]
) -> None:
    """Each event started one succeeded job; each callback and forward is one delivered record."""
    event_jobs: Counter[str] = Counter()
    records: Counter[str] = Counter()
    for sub in subs:
        outcome = outcomes.get(sub.index)
        if outcome is None or sub.kind == "echo":
            continue
        if sub.kind == "webhook":
            event_jobs.update([",".join(s or "missing" for _, s in outcome.jobs) or "none"])
        if sub.kind == "webhook" or outcome.status == "succeeded":
            states = ",".join(s or "missing" for _, s in outcome.deliveries) or "none"
            records.update([f"{sub.kind}:{states}"])
    lines.append(f"event jobs        {dict(event_jobs.most_common())}")
    lines.append(f"delivery records  {dict(records.most_common())}")
    bad_jobs = sum(n for state, n in event_jobs.items() if state != "succeeded")
    bad_records = sum(n for state, n in records.items() if not state.endswith(":delivered"))
    if bad_jobs:
        failures.append(f"{bad_jobs} events did not start exactly one job that succeeded")
    if bad_records:
        failures.append(f"{bad_records} callbacks/forwards are not exactly one delivered record")


def _no_double_work(
    subs: list[Submission], records: tuple[int, int], lines: list[str], failures: list[str]
) -> None:
    """No more job or event records than submissions made (one job per event): retries with the
    same Idempotency-Key or webhook-id made nothing twice."""
    events = sum(1 for s in subs if s.kind == "webhook")
    jobs = len(subs)  # each echo submission is one job, and each event starts one
    lines.append(
        f"records           jobs {records[0]} (of {jobs}), events {records[1]} (of {events})"
    )
    if records[0] > jobs or records[1] > events:
        failures.append(
            f"more records than submissions made: jobs {records[0]}, events {records[1]}"
        )


def _receiver(
    receiver: ReceiverProcess,
    subs: list[Submission],
    outcomes: dict[int, Outcome],
    lines: list[str],
    failures: list[str],
) -> None:
    """Exactly one webhook-id per job callback and per forwarded event, as the receiver saw it."""
    for path, kind in (("/cb", "echo_cb"), ("/fwd", "webhook")):
        seen = receiver.ids_by_subject(path)
        expected = {s.id for s in subs if s.kind == kind and s.id is not None}
        ids = Counter(len(seen.get(subject, [])) for subject in expected)
        repeats = sum(entry.count - 1 for entries in seen.values() for entry in entries)
        extra = len(set(seen) - expected)
        lines.append(
            f"receiver {path:4}     expected {len(expected)}; distinct webhook-ids per subject "
            f"{dict(sorted(ids.items()))}; repeats with the same id {repeats}; "
            f"unknown subjects {extra}"
        )
        if set(ids) - {1} or extra:
            failures.append(
                f"receiver {path}: not exactly one webhook-id each: {dict(ids)}, {extra} unknown"
            )
    if receiver.bad:
        failures.append(
            f"receiver: {len(receiver.bad)} requests failed verification: {receiver.bad[:3]}"
        )


def _api(
    answers: list[Answer], restarts: list[Any], t0: float, lines: list[str], failures: list[str]
) -> None:
    """Only 202/503 (200 for a duplicate webhook), none over 2 s; how soon 202s came back."""
    outcomes = Counter(a.outcome for a in answers)
    latencies = sorted(a.latency for a in answers) or [0.0]
    p99 = latencies[int(len(latencies) * 0.99) - 1 if len(latencies) > 1 else 0]
    slowest = max(answers, key=lambda a: a.latency, default=None)
    lines.append(
        f"API answers       {dict(outcomes.most_common())}; latency p99 {p99 * 1000:.0f} ms, "
        f"max {latencies[-1] * 1000:.0f} ms"
        + (f" (sent at t={slowest.at - t0:.1f} s)" if slowest else "")
    )
    wrong = {k: n for k, n in outcomes.items() if k not in ALLOWED_ANSWERS}
    # the client's timeout bounds each read, not the whole request: the total is checked here
    slow = [a for a in answers if a.latency > CLIENT_TIMEOUT and a.outcome != "timeout"]
    if slow:
        wrong[f"answered after more than {CLIENT_TIMEOUT:.0f} s"] = len(slow)
    if wrong:
        bad = [a for a in answers if a.outcome not in ALLOWED_ANSWERS or a in slow]
        when = ", ".join(f"{a.outcome} at t={a.at - t0:.1f} s" for a in bad[:5])
        failures.append(f"API answered outside 202/503 or too late: {wrong} (e.g. {when})")
    for restart in restarts:
        after = [
            a.at + a.latency for a in answers if a.outcome == "202" and a.at >= restart.stopped_at
        ]
        first = min(after) - restart.start_at if after else None
        lines.append(
            f"Redis restart     down {restart.start_at - restart.down_at:.1f} s, ready "
            f"{restart.up_at - restart.start_at:.1f} s after start; first 202 "
            + (f"{first:.2f} s after start" if first is not None else "never")
        )
        if first is None:
            failures.append("no 202 after the Redis restart")


def _workers(
    supervisor: Supervisor, kills: list[Any], lines: list[str], failures: list[str]
) -> None:
    """No worker exited by itself; a killed worker's in-flight work was final again in time."""
    for kill in kills:
        held = _secs(kill.recovered_after) if kill.in_flight else "(none held)"
        lines.append(
            f"SIGKILL {kill.worker:9} in flight {kill.in_flight:4}, final again after {held}; "
            f"outstanding {kill.outstanding:4}, all final after {_secs(kill.drained_after)}"
        )
        checks = [("outstanding", kill.drained_after)]
        if kill.in_flight:
            checks.insert(0, ("in-flight", kill.recovered_after))
        for what, after in checks:
            if after is None or after > RECOVERY_LIMIT:
                failures.append(
                    f"SIGKILL {kill.worker}: {what} work not final within {RECOVERY_LIMIT:.0f} s"
                )
    exits = [f"{e.name} (exit {e.returncode})" for e in supervisor.self_exits]
    lines.append(
        f"self-exits        {len(exits)} {exits}; restarts by the supervisor {supervisor.restarts}"
    )
    if exits:
        failures.append(f"workers exited by themselves (needed a restart): {exits}")


def _secs(value: float | None) -> str:
    return "never" if value is None else f"{value:.1f} s"
