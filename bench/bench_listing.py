"""Benchmark: how fast the console lists jobs with 1,000,000 job records in Redis (issue 14).

Run from the repo root:  python bench/bench_listing.py [--jobs 1000000] [--db 14] [--repeat 200]

Writes ``--jobs`` job records and their index entries into one Redis database through the real
create script (tasks/store.py ``_CREATE`` with ``create_call``'s KEYS and ARGV, pipelined in
batches), each with a creation time spread over the last 7 days and a realistic mix of kinds and
statuses (the status and its index set given to the script as it would be after the job's life).
Then times ``tasks.job_index.list_jobs`` (the function the console's jobs page calls, on the same
redis.asyncio client the API uses), 50 jobs a page: the first page unfiltered, by kind, by kind and
status, by status alone, by a one-day time range, and a page 200 pages deep (its cursor found by
following the cursors). Each is requested ``--repeat`` times; prints the median and p99.

Redis: ``--url`` (default redis://127.0.0.1:6379), database ``--db``: refused unless empty; flushed
(that database only) at the end.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO)]

import redis  # noqa: E402
from redis.asyncio import Redis as AsyncRedis  # noqa: E402

from core.kinds import KINDS  # noqa: E402
from tasks.job_index import Filters, list_jobs  # noqa: E402
from tasks.keys import Keys  # noqa: E402
from tasks.store import _CREATE, NewJob, create_call, now_iso  # noqa: E402
from tasks.submit import dispatch  # noqa: E402

KIND_MIX = {"echo": 70, "email": 15, "llm": 10, "file": 5}
STATUS_MIX = {
    "succeeded": 90,
    "failed": 3,
    "dead": 1,
    "queued": 3,
    "running": 1,
    "retrying": 1,
    "scheduled": 1,
}
SPAN_SECONDS = 7 * 24 * 3600
BATCH = 2000
PAGE = 50
SMALL = 20_000  # the same listings at this size first


def write_jobs(client: redis.Redis, keys: Keys, count: int, first: int = 0) -> float:
    """``count`` records through the create script (ids numbered from ``first``); returns the
    seconds it took."""
    sha = client.script_load(_CREATE)
    kinds = random.choices(list(KIND_MIX), weights=list(KIND_MIX.values()), k=count)
    statuses = random.choices(list(STATUS_MIX), weights=list(STATUS_MIX.values()), k=count)
    now = time.time()
    started = time.perf_counter()
    pipe = client.pipeline(transaction=False)
    for i in range(count):
        n = first + i
        kind, status = KINDS[kinds[i]], statuses[i]
        job_id = f"{n:08d}-{random.getrandbits(64):016x}"
        queue, message, budget = dispatch(kind, job_id)
        payload = {"message": {"order": n, "note": "a realistic little payload"}, "sleep_ms": 10}
        job = NewJob(id=job_id, kind=kind.name, owner="bench", payload=payload, max_attempts=budget)
        script_keys, args = create_call(keys, 7 * 24 * 3600, job, message, queue, None)
        created = now - random.random() * SPAN_SECONDS
        fields = json.loads(args[6])
        fields.update(status=status, created_at=now_iso(created), attempts="1")
        args[6], args[8], args[9] = json.dumps(fields), status, round(created * 1000)
        script_keys[1] = f"{keys.prefix}bench-queue"  # not the real queue: dropped per batch
        script_keys[7] = keys.jobs_by(kind.name, status)
        pipe.evalsha(sha, len(script_keys), *script_keys, *args)
        if (i + 1) % BATCH == 0 or i + 1 == count:
            pipe.delete(f"{keys.prefix}bench-queue")
            pipe.execute()
            if (n + 1) % 100_000 == 0:
                print(f"  {n + 1} written ({time.perf_counter() - started:.0f} s)", flush=True)
    return time.perf_counter() - started


async def timed(
    client: AsyncRedis, keys: Keys, filters: Filters, repeat: int, cursor: str | None = None
) -> tuple[float, float, int]:
    """(median ms, p99 ms, jobs on the page) of ``repeat`` listings."""
    times = []
    shown = 0
    for _ in range(repeat):
        start = time.perf_counter()
        page = await list_jobs(client, keys, filters, kinds=KINDS, limit=PAGE, cursor=cursor)
        times.append((time.perf_counter() - start) * 1000)
        shown = len(page.jobs)
    times.sort()
    return statistics.median(times), times[min(len(times) - 1, int(len(times) * 0.99))], shown


async def measure(url: str, keys: Keys, repeat: int) -> None:
    client = AsyncRedis.from_url(url)
    try:
        cursor: str | None = None
        for _ in range(200):  # 200 pages deep: 10,000 jobs
            page = await list_jobs(client, keys, Filters(), kinds=KINDS, limit=PAGE, cursor=cursor)
            cursor = page.next_cursor
        day_ms = 24 * 3600 * 1000
        now_ms = int(time.time() * 1000)
        cases: list[tuple[str, Filters, str | None]] = [
            ("first page, unfiltered", Filters(), None),
            ("kind=email", Filters(kind="email"), None),
            ("kind=email status=failed", Filters(kind="email", status="failed"), None),
            ("status=dead (4 kinds merged)", Filters(status="dead"), None),
            (
                "created 3 to 2 days ago",
                Filters(since_ms=now_ms - 3 * day_ms, until_ms=now_ms - 2 * day_ms),
                None,
            ),
            ("page 201, unfiltered (cursor)", Filters(), cursor),
        ]
        for name, filters, at in cases:
            median, p99, shown = await timed(client, keys, filters, repeat, at)
            print(f"  {name:32} median {median:6.2f} ms   p99 {p99:6.2f} ms   ({shown} jobs)")
    finally:
        await client.aclose()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", default="redis://127.0.0.1:6379")
    parser.add_argument("--db", type=int, default=14)
    parser.add_argument("--jobs", type=int, default=1_000_000)
    parser.add_argument("--repeat", type=int, default=200)
    args = parser.parse_args()
    url = f"{args.url.rstrip('/')}/{args.db}"
    client = redis.Redis.from_url(url, socket_timeout=300)  # FLUSHDB of a million keys: seconds
    if client.dbsize():
        print(f"{url} is not empty; pick an empty database (--db)", file=sys.stderr)
        return 2
    keys = Keys("benchlist:")
    try:
        # the same listings at 20,000 records first: what the machine gives at a small scale,
        # in the same run (a busy machine moves absolute times; the comparison holds)
        written = 0
        for target in (min(SMALL, args.jobs), args.jobs):
            count = target - written
            print(f"writing {count} job records into {url} ...", flush=True)
            took = write_jobs(client, keys, count, written)
            written = target
            memory = client.info("memory")["used_memory_human"]
            print(f"written in {took:.0f} s ({count / took:.0f} creates/s); Redis uses {memory}")
            print(f"index: {client.zcard(keys.jobs_by_time)} jobs in {keys.jobs_by_time}")
            print(f"listing {PAGE} jobs a page, {args.repeat} requests each (list_jobs):")
            asyncio.run(measure(url, keys, args.repeat))
    finally:
        client.flushdb()
        client.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
