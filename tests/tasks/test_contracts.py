"""Contracts with the Celery and kombu internals we lean on: an upgrade that breaks one fails here.

1. tasks/protocol.py writes task messages itself: they must equal, field by field, what Celery's own
   `send_task` / `apply_async` writes for the same call (captured from a real Redis, no worker).
2. tasks/broker.py takes messages in batches and records them as unacked in kombu's format: kombu's
   own `restore_unacked` (a stopping worker) and `restore_visible` (a dead worker's messages, after
   the visibility timeout) must put them back, and a worker on kombu's stock Redis transport must
   then run them.
"""

from __future__ import annotations

import base64
import json
import os
import signal
import subprocess
import sys
import textwrap
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from kombu import Connection, Consumer, Queue

from gateway.embedded import EmbeddedRedis
from tasks import protocol
from tasks.app import app
from tasks.queues import DEFAULT, ROUTES, queue_for
from tests.conftest import ROOT, process_env, wait_for

# kombu's bookkeeping of taken, unacked messages (tasks/broker.py writes the same keys)
UNACKED, UNACKED_INDEX = "unacked", "unacked_index"


@pytest.fixture(scope="module")
def server() -> Iterator[EmbeddedRedis]:
    """A Redis of this module's own: databases flushed freely, nobody else's worker on it."""
    embedded = EmbeddedRedis().start()
    try:
        yield embedded
    finally:
        embedded.stop()


@pytest.fixture
def url(server: EmbeddedRedis) -> Iterator[str]:
    """An empty database."""
    address = f"redis://127.0.0.1:{server.port}/2"
    client = redis.Redis.from_url(address)
    client.flushdb()
    client.close()
    yield address


def decoded(raw: bytes | str) -> dict[str, Any]:
    """A queued message with its base64 body decoded to JSON."""
    message: dict[str, Any] = json.loads(raw)
    assert message["properties"]["body_encoding"] == "base64"
    message["body"] = json.loads(base64.b64decode(message["body"]))
    return message


def comparable(message: dict[str, Any]) -> dict[str, Any]:
    """The message minus what differs between any two senders by design (checked separately)."""
    message = json.loads(json.dumps(message))
    # who sent it (Celery: gen<pid>@host, ours: gateway-<pid>@host), for logs only
    assert isinstance(message["headers"].pop("origin"), str)
    # kombu's unacked bookkeeping key: unique per message, whoever writes it
    assert isinstance(message["properties"].pop("delivery_tag"), str)
    # Celery's per-process oid, where the rpc:// result backend would reply; we use Redis results
    assert isinstance(message["properties"].pop("reply_to"), str)
    return message


def celery_wrote(url: str, send: Any) -> dict[str, Any]:
    """Run ``send(connection)`` against ``url`` and return the one message it queued."""
    client = redis.Redis.from_url(url)
    client.flushdb()
    with app.connection_for_write(url) as connection:
        send(connection)
    queues = [k for k in client.keys() if client.type(k) == b"list"]
    assert len(queues) == 1, queues
    [raw] = client.lrange(queues[0], 0, -1)
    client.close()
    message = decoded(raw)
    message["queue"] = queues[0].decode()
    return message


def ours(raw: str, queue: str) -> dict[str, Any]:
    message = decoded(raw)
    message["queue"] = queue
    return message


@pytest.mark.parametrize("task", sorted(ROUTES))
@pytest.mark.parametrize("retries", [0, 3])
def test_a_job_message_equals_what_send_task_writes(url: str, task: str, retries: int) -> None:
    ident = str(uuid.uuid4())
    theirs = celery_wrote(
        url,
        lambda c: app.send_task(
            task, args=(ident,), task_id=ident, retries=retries, ignore_result=True, connection=c
        ),
    )
    mine = ours(
        protocol.job_message(task, ident, queue_for(task), retries=retries), queue_for(task)
    )
    assert comparable(mine) == comparable(theirs)


def test_the_examples_message_equals_what_send_task_writes(url: str) -> None:
    ident = str(uuid.uuid4())
    theirs = celery_wrote(
        url,
        lambda c: app.send_task(
            "tasks.add", args=(2, 5), task_id=ident, ignore_result=False, connection=c
        ),
    )
    mine = ours(
        protocol.task_message("tasks.add", ident, DEFAULT, [2, 5], ignore_result=False), DEFAULT
    )
    assert comparable(mine) == comparable(theirs)


def test_keyword_arguments_travel_as_send_task_writes_them(url: str) -> None:
    ident = str(uuid.uuid4())
    kwargs = {"a": 2, "b": "ünï", "c": [1, None]}
    theirs = celery_wrote(
        url,
        lambda c: app.send_task(
            "tasks.add", kwargs=kwargs, task_id=ident, ignore_result=True, connection=c
        ),
    )
    mine = ours(protocol.task_message("tasks.add", ident, DEFAULT, kwargs=kwargs), DEFAULT)
    assert comparable(mine) == comparable(theirs)


@pytest.mark.parametrize("task", ["jobs.echo", "jobs.file", "callbacks.deliver"])
def test_apply_async_differs_only_by_the_time_limit_the_worker_applies_anyway(
    url: str, task: str
) -> None:
    """`apply_async` copies the task's own limits into the message; our null means the same."""
    import tasks.callbacks
    import tasks.jobs  # noqa: F401  (registers the tasks)

    registered = app.tasks[task]
    ident = str(uuid.uuid4())
    theirs = comparable(
        celery_wrote(
            url, lambda c: registered.apply_async(args=(ident,), task_id=ident, connection=c)
        )
    )
    mine = comparable(ours(protocol.job_message(task, ident, queue_for(task)), queue_for(task)))
    assert theirs["headers"].pop("timelimit") == [registered.time_limit, registered.soft_time_limit]
    assert mine["headers"].pop("timelimit") == [None, None]
    assert mine == theirs


# --- 2. unacked messages taken by tasks/broker.py, restored by kombu, run by a stock worker ---


def push_adds(url: str, n: int) -> list[str]:
    """Queue ``n`` example tasks (a + b, result kept) as the API writes them."""
    client = redis.Redis.from_url(url)
    ids = [str(uuid.uuid4()) for _ in range(n)]
    for i, ident in enumerate(ids):
        client.lpush(
            DEFAULT, protocol.task_message("tasks.add", ident, DEFAULT, [i, 1], ignore_result=False)
        )
    client.close()
    return ids


def take_with_our_transport(url: str, n: int) -> tuple[Connection, Any]:
    """Take ``n`` messages through tasks.broker's transport without acking; return it open."""
    connection = Connection(url, transport="tasks.broker:Transport")
    channel = connection.channel()
    taken: list[Any] = []
    consumer = Consumer(channel, [Queue(DEFAULT)], callbacks=[lambda _body, msg: taken.append(msg)])
    consumer.qos(prefetch_count=n)
    consumer.consume()

    def took_all() -> bool:
        try:
            connection.drain_events(timeout=0.5)
        except TimeoutError:
            pass
        return len(taken) == n

    wait_for(took_all, timeout=20)
    # one BRPOP, then the batch script: the path under contract was taken
    assert "_fetch_script" in channel.__dict__
    return connection, channel


def results(url: str, ids: list[str]) -> list[Any]:
    """The Celery results of ``ids`` in the Redis backend (None where not there yet)."""
    client = redis.Redis.from_url(url)
    raws = [client.get(f"celery-task-meta-{ident}") for ident in ids]
    client.close()
    return [json.loads(raw)["result"] if raw else None for raw in raws]


STOCK_WORKER = textwrap.dedent(
    """
    from tasks.app import app
    app.conf.broker_transport = "redis"  # kombu's own transport, not tasks.broker's
    with app.connection_for_read() as c:
        assert type(c.transport).__module__ == "kombu.transport.redis", type(c.transport)
    app.worker_main(["worker", "-Q", "default", "-P", "solo", "--without-mingle",
                     "--without-gossip", "--without-heartbeat", "-l", "INFO"])
    """
)


def start_stock_worker(url: str, log: Path, **extra: str) -> subprocess.Popen[bytes]:
    """A Celery worker on kombu's stock Redis transport, consuming `default`."""
    env = process_env(url, f"contract-{uuid.uuid4().hex[:6]}:", **extra)
    with log.open("wb") as out:
        return subprocess.Popen(
            [sys.executable, "-c", STOCK_WORKER],
            cwd=ROOT,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )


def stop(worker: subprocess.Popen[bytes]) -> None:
    worker.send_signal(signal.SIGTERM)
    try:
        worker.wait(20)
    except subprocess.TimeoutExpired:
        worker.kill()
        worker.wait()


@pytest.mark.e2e
def test_messages_our_transport_took_come_back_by_kombus_restore_unacked(
    url: str, tmp_path: Path
) -> None:
    n = 12
    ids = push_adds(url, n)
    client = redis.Redis.from_url(url)
    connection, channel = take_with_our_transport(url, n)
    try:
        assert client.hlen(UNACKED) == n and client.zcard(UNACKED_INDEX) == n
        assert client.llen(DEFAULT) == 0
        # kombu's restore (what a stopping worker runs) reads our records back into the queue
        channel.qos.restore_unacked()
        assert client.llen(DEFAULT) == n
        assert client.hlen(UNACKED) == 0
    finally:
        connection.release()
    worker = start_stock_worker(url, tmp_path / "stock.log")
    try:
        wait_for(lambda: None not in results(url, ids), timeout=60)
        assert results(url, ids) == [i + 1 for i in range(n)]
        wait_for(lambda: client.hlen(UNACKED) == 0 and client.llen(DEFAULT) == 0, timeout=10)
    except AssertionError as exc:
        raise AssertionError(f"{exc}\n{(tmp_path / 'stock.log').read_text()[-3000:]}") from None
    finally:
        stop(worker)
        client.close()


TAKE_AND_DIE = textwrap.dedent(
    """
    import os, sys
    from tests.tasks.test_contracts import take_with_our_transport
    take_with_our_transport(sys.argv[1], int(sys.argv[2]))
    os._exit(0)  # as a killed worker: nothing acked, nothing restored
    """
)


@pytest.mark.e2e
def test_a_dead_takers_messages_come_back_by_kombus_restore_visible(
    url: str, tmp_path: Path
) -> None:
    n = 12
    ids = push_adds(url, n)
    client = redis.Redis.from_url(url)
    env = {k: v for k, v in os.environ.items() if k != "REDIS_URL"}
    subprocess.run(
        [sys.executable, "-c", TAKE_AND_DIE, url, str(n)], cwd=ROOT, env=env, check=True, timeout=60
    )
    assert client.hlen(UNACKED) == n and client.llen(DEFAULT) == 0
    # the stock worker's own restore of messages unacked past the visibility timeout
    short = {
        "VISIBILITY_TIMEOUT_SECONDS": "2",
        "DEFAULT_TASK_TIME_LIMIT_SECONDS": "1",
        "FILES_TASK_TIME_LIMIT_SECONDS": "1",
    }
    worker = start_stock_worker(url, tmp_path / "stock.log", **short)
    try:
        wait_for(lambda: None not in results(url, ids), timeout=60)
        assert results(url, ids) == [i + 1 for i in range(n)]
        wait_for(lambda: client.hlen(UNACKED) == 0 and client.llen(DEFAULT) == 0, timeout=10)
    except AssertionError as exc:
        raise AssertionError(f"{exc}\n{(tmp_path / 'stock.log').read_text()[-3000:]}") from None
    finally:
        stop(worker)
        client.close()
