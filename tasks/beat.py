"""Beat that fires only while it leads: two beats started by mistake still fire each job once.

The leader holds a Redis key (SET NX PX) and renews it on every tick; a standby beat ticks too,
finds the key taken, and fires nothing. If the leader dies, its key expires within LOCK_TTL and a
standby takes over.
"""

from __future__ import annotations

import logging
import uuid
from typing import Any

from celery.beat import PersistentScheduler

from core.settings import get_settings
from tasks.runtime import keys, worker_redis

log = logging.getLogger(__name__)

LOCK_TTL_MS = 30_000
# Beat must tick well inside the lock's life to renew it.
MAX_TICK_SECONDS = 5.0

_LEAD = """
local holder = redis.call('GET', KEYS[1])
if holder == ARGV[1] then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  return 1
end
if not holder then
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
  return 1
end
return 0
"""

_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""


class LeaderScheduler(PersistentScheduler):  # type: ignore[misc]
    """PersistentScheduler gated by a Redis leader lock."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self.token = uuid.uuid4().hex
        self.leading: bool | None = None  # unknown until the first tick
        super().__init__(*args, **kwargs)

    def tick(self, *args: Any, **kwargs: Any) -> float:
        """Fire due entries only while leading; otherwise wait and try to become leader."""
        # liveness for `gateway beat --healthcheck`: this loop turns, whether leading or not
        get_settings().beat_alive_file.touch()
        try:
            leading = bool(
                worker_redis().eval(_LEAD, 1, keys().beat_leader, self.token, LOCK_TTL_MS)
            )
        except Exception as exc:  # Redis away: fire nothing rather than risk firing twice
            log.warning("beat: cannot reach Redis for the leader lock: %s", exc)
            leading = False
        if leading != self.leading:
            log.info("beat: %s", "leading: firing periodic jobs" if leading else "standby")
            self.leading = leading
        if not leading:
            return MAX_TICK_SECONDS
        return float(min(super().tick(*args, **kwargs), MAX_TICK_SECONDS))

    def close(self) -> None:
        """Give up the lock on shutdown so a standby takes over at once."""
        try:
            worker_redis().eval(_RELEASE, 1, keys().beat_leader, self.token)
        except Exception as exc:
            log.warning("beat: could not release the leader lock: %s", exc)
        super().close()
