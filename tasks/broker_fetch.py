"""The broker channel's fetch: take messages with their record, atomically; reconcile a lost reply.

Nothing is taken from a queue without being recorded. kombu's BRPOP takes a message and records it
as unacked with a second round trip: a Redis restart or a lost reply in between loses the message
for good. Here one script pops each message and records it as unacked in kombu's format (kombu
5.x, major pinned; the top of tasks/broker.py says why and which tests guard it) and under this
process's consumer id (tasks/liveness.py), atomically.

A fetch whose reply is lost (the connection drops after Redis ran the script: a Redis stop, a
reset) leaves messages recorded under this live consumer that it never received; the reaper would
leave them alone until their queue's time limit. So the fetch is sent once, outside redis-py's
retry (kombu's pool sets none today; redis-py's own default retries, and a retried script takes a
second batch and hides the loss), and a failed fetch marks the process: before its next fetch, on
the consumer thread (so no fetch is in progress), the channel reconciles: every tag recorded under
this consumer that it does not hold (delivered and unacked on its channel, running or reserved in
Celery, acked with the removal pending, or waiting to be given back) goes back at once with the
reaper's restore (tasks/reaper.py, one Lua for both). We keep the consumer id rather than take a
new one per connection: the liveness thread, the registry and the running tasks' records all stay
as they are, and nothing runs unless a fetch failed.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import Any

import redis

from tasks.broker_qos import active_tags, pending_tags
from tasks.reaper import Restorer

# the transport's one logger, as before the split: the same name whichever of its modules logs
log = logging.getLogger("tasks.broker")

# KEYS: the queue's lists, highest priority first, then kombu's unacked hash and index, then
# this consumer's taken hash. ARGV: how many, now. Each popped message is recorded in kombu's
# format, [message, exchange, routing key] under its delivery tag, and under the consumer, before
# the next pop; one that is not a kombu message goes back where it was and ends the batch, for
# kombu's own path to deal with.
FETCH_SCRIPT = """
local n = #KEYS - 3
local unacked, index, taken = KEYS[n + 1], KEYS[n + 2], KEYS[n + 3]
local out = {}
for _ = 1, tonumber(ARGV[1]) do
  local raw, from
  for i = 1, n do
    raw = redis.call('RPOP', KEYS[i])
    if raw then from = KEYS[i]; break end
  end
  if not raw then break end
  local ok, msg = pcall(cjson.decode, raw)
  local props = ok and type(msg) == 'table' and msg['properties']
  local info = props and props['delivery_info']
  local tag = props and props['delivery_tag']
  if type(info) ~= 'table' or type(tag) ~= 'string' then
    redis.call('RPUSH', from, raw)
    break
  end
  redis.call('ZADD', index, ARGV[2], tag)
  redis.call('HSET', unacked, tag,
    '[' .. raw .. ',' .. cjson.encode(info['exchange']) .. ',' ..
    cjson.encode(info['routing_key']) .. ']')
  redis.call('HSET', taken, tag, from)
  out[#out + 1] = raw
end
return out
"""

# Set when a fetch failed after it may have run (its reply lost); cleared by the reconcile.
_fetch_lost: list[bool] = [False]


def fetch_was_lost() -> bool:
    """Whether a fetch failed after it may have run, with no reconcile since."""
    return _fetch_lost[0]


def fetch_once(
    pool: redis.ConnectionPool, script: Any, keys: list[str], args: list[Any]
) -> list[bytes]:
    """Run the fetch script once on a pool connection: never retried (see the top)."""
    conn = pool.get_connection()
    try:
        try:
            conn.send_command("EVALSHA", script.sha, len(keys), *keys, *args)
            return conn.read_response()  # type: ignore[no-any-return]
        except redis.exceptions.NoScriptError:  # nothing ran: send the script itself
            conn.send_command("EVAL", script.script, len(keys), *keys, *args)
            return conn.read_response()  # type: ignore[no-any-return]
    except redis.ResponseError:
        raise  # Redis answered: the script ran to its end or not at all
    except BaseException:
        # the script may have run with its reply lost: reconcile before the next fetch
        _fetch_lost[0] = True
        conn.disconnect()
        raise
    finally:
        pool.release(conn)


def reconcile(
    client: redis.Redis, taken_key: str, delivered: Iterable[Any], restorer: Restorer
) -> int:
    """Give back what this consumer's record holds but the process never received."""
    # Held tags are read around the round trip so that a tag moving between sets is seen in
    # one or the other: an acked tag leaves kombu's delivered set only at this thread's next
    # poll, and a task that just finished (Celery: task_ready, then the ack) is a pending ack
    # by the time the reply is back. A miss would only re-deliver a finished job: dropped.
    held = active_tags(reserved=True) | {str(tag) for tag in tuple(delivered)}
    recorded: dict[Any, Any] = client.hgetall(taken_key)
    held |= pending_tags()
    lost = {tag: source for tag, source in recorded.items() if tag.decode() not in held}
    restored = restorer.restore(taken_key, lost) if lost else 0
    _fetch_lost[0] = False
    if restored:
        log.warning(
            "a fetch's reply was lost: %d messages taken but never received given back",
            restored,
        )
    return restored
