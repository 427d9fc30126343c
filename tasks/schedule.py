"""The schedule: due work waits in a Redis sorted set and is moved onto its queue when due.

Long delays must not ride on Celery's countdown/ETA with the Redis broker: a worker holds such a
message unacked, and after visibility_timeout the transport hands it to another worker, so it runs
twice (Celery's Redis caveats; kombu #337). Retries, run_at jobs and delayed deliveries wait here
instead. Every worker process runs a mover; the move is one Lua script, so movers never race.
"""

from __future__ import annotations

import logging
import threading
import time

import redis

log = logging.getLogger(__name__)

# Members are '<queue>\n<message>'; the queue list's name is read from the member. (Keys computed in
# a script are fine on one Redis; a Redis Cluster would need hash tags here.)
_MOVE = """
local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'LIMIT', 0, tonumber(ARGV[2]))
for _, member in ipairs(due) do
  if redis.call('ZREM', KEYS[1], member) == 1 then
    local cut = string.find(member, '\\n', 1, true)
    redis.call('LPUSH', string.sub(member, 1, cut - 1), string.sub(member, cut + 1))
  end
end
return #due
"""


def move_due(
    client: redis.Redis, schedule_key: str, now: float | None = None, limit: int = 500
) -> int:
    """Move up to ``limit`` due messages onto their queues; returns how many moved."""
    moved = client.eval(_MOVE, 1, schedule_key, time.time() if now is None else now, limit)
    return int(moved)


class Mover(threading.Thread):
    """Background thread that drains the schedule every ``interval`` seconds."""

    def __init__(self, client: redis.Redis, schedule_key: str, interval: float) -> None:
        super().__init__(name="schedule-mover", daemon=True)
        self.client = client
        self.schedule_key = schedule_key
        self.interval = interval
        self.stopped = threading.Event()

    def run(self) -> None:
        """Loop until stopped; a Redis outage is logged and waited out."""
        while not self.stopped.is_set():
            try:
                # drain a backlog in batches without waiting between them
                while move_due(self.client, self.schedule_key) == 500:
                    pass
            except redis.RedisError as exc:
                log.warning("schedule mover: %s", exc)
                self.stopped.wait(min(5.0, self.interval * 10))
            self.stopped.wait(self.interval)

    def stop(self) -> None:
        """Ask the loop to end."""
        self.stopped.set()
