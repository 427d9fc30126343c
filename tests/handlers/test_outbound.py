"""The guarded outbound client: address classifier, submit-time and connect-time checks, limits."""

from __future__ import annotations

import asyncio
import ipaddress
import shutil
import socket
import ssl
import subprocess
import threading
import time
from collections.abc import Awaitable, Callable, Coroutine, Iterator
from email.message import Message
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, TypeVar

import httpx
import pytest
import respx

from handlers.delivery import signed_headers
from handlers.errors import PermanentError, TransientError
from handlers.outbound import OutboundPolicy, UrlRejected, blocked_reason, check_url
from handlers.outbound.client import build_client
from handlers.outbound.transfer import (
    error_for_status,
    fetch_to_file,
    post_limited,
    request_limited,
    retry_after_seconds,
)

BIG = 64 * 1024 * 1024
T = TypeVar("T")
LOOPBACK = OutboundPolicy(allow_http=True, allow_networks=["127.0.0.1/32"])


def run(coro: Coroutine[Any, Any, T]) -> T:
    return asyncio.run(coro)


def fixed(*answers: str) -> Callable[[str, int], Awaitable[list[str]]]:
    async def resolve(host: str, port: int) -> list[str]:
        return list(answers)

    return resolve


# --- a real HTTP server on 127.0.0.1 ------------------------------------------------------


class Handler(BaseHTTPRequestHandler):
    server: Server

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def do_GET(self) -> None:
        self.server.requests.append(f"GET {self.path}")
        if self.path == "/big":
            self.send_response(200)
            self.send_header("Content-Length", str(BIG))
            self.end_headers()
            chunk = b"x" * 65536
            try:
                while self.server.sent < BIG:
                    self.wfile.write(chunk)
                    self.server.sent += len(chunk)
            except OSError:
                pass  # the client hung up: the point of the test
            finally:
                self.server.done.set()
            return
        if self.path.startswith("/bytes/"):
            body = b"y" * int(self.path.rsplit("/", 1)[1])
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
            return
        if self.path == "/chunked-big":
            # No Content-Length: the limit must hold while streaming, not only from the header.
            self.protocol_version = "HTTP/1.1"
            self.send_response(200)
            self.send_header("Transfer-Encoding", "chunked")
            self.send_header("Connection", "close")
            self.end_headers()
            try:
                for _ in range(BIG // 65536):
                    self.wfile.write(b"10000\r\n" + b"z" * 65536 + b"\r\n")
                self.wfile.write(b"0\r\n\r\n")
            except OSError:
                pass
            return
        if self.path.startswith("/status/"):
            self.send_response(int(self.path.rsplit("/", 1)[1]))
            self.send_header("Retry-After", "7")
            self.send_header("Location", "http://169.254.169.254/")
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        self._ok(b"hello")

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
        self.server.requests.append(f"POST {self.path} {body.decode()}")
        self.server.received.append((self.headers, body))
        self._ok(b"thanks")

    def _ok(self, body: bytes) -> None:
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


class Server(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), Handler)
        self.requests: list[str] = []
        self.received: list[tuple[Message, bytes]] = []
        self.sent = 0
        self.done = threading.Event()

    @property
    def port(self) -> int:
        return int(self.server_address[1])


@pytest.fixture
def server() -> Iterator[Server]:
    srv = Server()
    thread = threading.Thread(target=srv.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    yield srv
    srv.shutdown()
    srv.server_close()
    thread.join(5)


@pytest.fixture
def silent_port() -> Iterator[int]:
    """A port whose listener never accepts: connects complete in the kernel, no byte comes back."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(8)
    yield sock.getsockname()[1]
    sock.close()


# --- the address classifier ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("address", "reason"),
    [
        ("127.0.0.1", "loopback"),
        ("127.255.255.254", "loopback"),
        ("::1", "loopback"),
        ("10.1.2.3", "private"),
        ("172.16.0.1", "private"),
        ("172.31.255.255", "private"),
        ("192.168.1.1", "private"),
        ("169.254.169.254", "link-local"),
        ("fe80::1", "link-local"),
        ("fe80::1%eth0", "link-local"),
        ("100.64.0.1", "carrier-grade NAT"),
        ("100.127.255.255", "carrier-grade NAT"),
        ("224.0.0.1", "multicast"),
        ("239.255.255.250", "multicast"),
        ("ff02::1", "multicast"),
        ("240.0.0.1", "reserved"),
        ("255.255.255.255", "reserved"),
        ("0.0.0.0", "unspecified"),
        ("0.1.2.3", "unspecified"),
        ("::", "unspecified"),
        ("fc00::1", "unique local"),
        ("fd12:3456::1", "unique local"),
        ("192.0.2.1", "documentation"),
        ("2001:db8::1", "documentation"),
        ("::ffff:127.0.0.1", "loopback"),
        ("::ffff:10.0.0.1", "private"),
        ("::ffff:169.254.169.254", "link-local"),
        ("::127.0.0.1", "IPv4-compatible"),
        ("64:ff9b::127.0.0.1", "NAT64 of loopback"),
        ("64:ff9b::10.0.0.1", "NAT64 of private"),
        ("2002:7f00:1::", "6to4 of loopback"),
        ("2002:a9fe:a9fe::", "6to4 of link-local"),
        ("2001:0:4136:e378:8000:63bf:3fff:fdd2", "Teredo"),
    ],
)
def test_blocked_ranges_are_named(address: str, reason: str) -> None:
    assert blocked_reason(ipaddress.ip_address(address)) == reason


@pytest.mark.parametrize(
    "address",
    [
        "93.184.216.34",
        "8.8.8.8",
        "1.1.1.1",
        "2606:4700:4700::1111",
        "::ffff:8.8.8.8",
        "64:ff9b::8.8.8.8",
        "100.63.255.255",
        "100.128.0.0",
        "172.32.0.1",
    ],
)
def test_public_addresses_pass(address: str) -> None:
    assert blocked_reason(ipaddress.ip_address(address)) is None


def test_allow_networks_admits_only_their_range_and_unmaps_ipv4() -> None:
    policy = OutboundPolicy(allow_networks=["127.0.0.1/32", "fd00::/8"])
    assert policy.address_allowed(ipaddress.ip_address("127.0.0.1"))
    assert policy.address_allowed(ipaddress.ip_address("::ffff:127.0.0.1"))
    assert policy.address_allowed(ipaddress.ip_address("fd00::5"))
    assert not policy.address_allowed(ipaddress.ip_address("127.0.0.2"))
    assert not policy.address_allowed(ipaddress.ip_address("::1"))


def test_policy_refuses_bad_networks_and_redirects() -> None:
    with pytest.raises(ValueError):
        OutboundPolicy(allow_networks=["not-a-network"])
    with pytest.raises(ValueError):
        OutboundPolicy(max_redirects=3)


# --- check_url (submit time) --------------------------------------------------------------


def rejected(url: str, policy: OutboundPolicy, *answers: str) -> str:
    with pytest.raises(UrlRejected) as info:
        run(check_url(url, policy, resolver=fixed(*answers)))
    assert isinstance(info.value, PermanentError)
    return info.value.code


def test_check_url_passes_a_public_https_url() -> None:
    run(check_url("https://hooks.example.com/cb?t=1", OutboundPolicy(), resolver=fixed("8.8.8.8")))


@pytest.mark.parametrize(
    ("url", "code"),
    [
        ("/relative/path", "url_invalid"),
        ("https://", "url_invalid"),
        ("https://user:pw@hooks.example.com/", "url_invalid"),
        ("https://[::1/", "url_invalid"),
        ("ftp://hooks.example.com/", "url_scheme_not_allowed"),
        ("file:///etc/passwd", "url_scheme_not_allowed"),
        ("http://hooks.example.com/", "url_scheme_not_allowed"),
    ],
)
def test_check_url_refuses_malformed_urls_and_schemes(url: str, code: str) -> None:
    assert rejected(url, OutboundPolicy(), "8.8.8.8") == code


def test_check_url_allows_http_only_when_enabled() -> None:
    run(check_url("http://h.example/", OutboundPolicy(allow_http=True), resolver=fixed("8.8.8.8")))


def test_check_url_refuses_a_private_answer() -> None:
    assert rejected("https://h.example/", OutboundPolicy(), "10.0.0.7") == "url_blocked_address"


def test_check_url_refuses_mixed_public_and_private_answers() -> None:
    code = rejected("https://h.example/", OutboundPolicy(), "8.8.8.8", "169.254.169.254")
    assert code == "url_blocked_address"


def test_check_url_refuses_ip_literals_without_asking_the_resolver() -> None:
    for url in ["https://127.0.0.1/", "https://[::1]/", "https://[::ffff:127.0.0.1]/"]:
        assert rejected(url, OutboundPolicy(), "8.8.8.8") == "url_blocked_address"


def test_check_url_refuses_an_unresolvable_name() -> None:
    async def fails(host: str, port: int) -> list[str]:
        raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")

    with pytest.raises(UrlRejected) as info:
        run(check_url("https://nowhere.invalid/", OutboundPolicy(), resolver=fails))
    assert info.value.code == "url_unresolvable"
    assert rejected("https://h.example/", OutboundPolicy()) == "url_unresolvable"


def test_check_url_allowlists() -> None:
    hosts = OutboundPolicy(allow_hosts=["Internal.Example."])
    run(check_url("https://internal.example/x", hosts, resolver=fixed("10.0.0.7")))
    nets = OutboundPolicy(allow_networks=["10.0.0.0/24"])
    run(check_url("https://h.example/", nets, resolver=fixed("10.0.0.7")))
    assert rejected("https://h.example/", nets, "10.0.1.7") == "url_blocked_address"


def test_check_url_default_resolver_uses_getaddrinfo() -> None:
    # "localhost" resolves through the system resolver to loopback on any machine.
    with pytest.raises(UrlRejected) as info:
        run(check_url("https://localhost/", OutboundPolicy()))
    assert info.value.code == "url_blocked_address"


# --- the guarded client against a real server (connect time) ------------------------------


def get(url: str, policy: OutboundPolicy, resolver: Any = None, **kwargs: Any) -> Any:
    async def go() -> Any:
        async with build_client(policy, resolver=resolver) as client:
            return await request_limited(client, "GET", url, **kwargs)

    return run(go())


def test_loopback_is_refused_at_connect_time_and_the_server_sees_nothing(server: Server) -> None:
    with pytest.raises(UrlRejected) as info:
        get(f"http://127.0.0.1:{server.port}/", OutboundPolicy(allow_http=True))
    assert info.value.code == "url_blocked_address"
    assert server.requests == []


def test_a_plain_client_call_is_refused_too(server: Server) -> None:
    async def go() -> None:
        async with build_client(OutboundPolicy(allow_http=True)) as client:
            await client.get(f"http://localhost:{server.port}/")

    with pytest.raises(UrlRejected) as info:
        run(go())
    assert info.value.code == "url_blocked_address"
    assert server.requests == []


def test_allowlisted_loopback_is_reached(server: Server) -> None:
    result = get(f"http://127.0.0.1:{server.port}/hi", LOOPBACK)
    assert (result.status_code, result.body, result.truncated) == (200, b"hello", False)
    assert server.requests == ["GET /hi"]


def test_allow_hosts_reaches_a_name_that_resolves_privately(server: Server) -> None:
    policy = OutboundPolicy(allow_http=True, allow_hosts=["internal.test"])
    result = get(f"http://internal.test:{server.port}/", policy, fixed("127.0.0.1"))
    assert result.status_code == 200


def test_post_limited_sends_the_body(server: Server) -> None:
    async def go() -> Any:
        async with build_client(LOOPBACK) as client:
            return await post_limited(
                client, f"http://127.0.0.1:{server.port}/cb", content=b"{}", headers={"x": "1"}
            )

    result = run(go())
    assert result.status_code == 200 and result.body == b"thanks"
    assert server.requests == ["POST /cb {}"]


def test_http_is_refused_by_the_client_unless_enabled(server: Server) -> None:
    policy = OutboundPolicy(allow_networks=["127.0.0.1/32"])
    with pytest.raises(UrlRejected) as info:
        get(f"http://127.0.0.1:{server.port}/", policy)
    assert info.value.code == "url_scheme_not_allowed"
    assert server.requests == []


def test_dns_rebinding_between_submit_and_connect_is_refused(server: Server) -> None:
    answers = iter([["93.184.216.34"], ["127.0.0.1"]])

    async def rebinding(host: str, port: int) -> list[str]:
        return next(answers)

    policy = OutboundPolicy(allow_http=True)
    url = f"http://rebind.test:{server.port}/"

    async def go() -> None:
        await check_url(url, policy, resolver=rebinding)  # submit time: public, passes
        async with build_client(policy, resolver=rebinding) as client:
            await request_limited(client, "GET", url)

    with pytest.raises(UrlRejected) as info:
        run(go())
    assert info.value.code == "url_blocked_address"
    assert server.requests == []


def recording(*answers: str) -> tuple[list[str], Callable[[str, int], Awaitable[list[str]]]]:
    asked: list[str] = []

    async def resolve(host: str, port: int) -> list[str]:
        asked.append(host)
        return list(answers)

    return asked, resolve


@pytest.mark.parametrize(
    "host",
    ["127.0.0.1", "[::1]", "169.254.169.254", "10.0.0.1", "0.0.0.0", "[::ffff:127.0.0.1]"],
)
def test_ip_literals_are_checked_at_connect_time(server: Server, host: str) -> None:
    # aiohttp dials an IP literal without asking its resolver; the transport must check it anyway.
    # The injected DNS would answer the live receiver, so a literal that slipped through to a
    # lookup would be dialled there; a literal is never looked up at all.
    asked, resolver = recording("127.0.0.1")
    with pytest.raises(UrlRejected) as info:
        get(f"http://{host}:{server.port}/", OutboundPolicy(allow_http=True), resolver)
    assert info.value.code == "url_blocked_address"
    assert asked == []
    assert server.requests == []


@pytest.mark.parametrize(
    "answers",
    [["127.0.0.1"], ["10.0.0.7"], ["8.8.8.8", "127.0.0.1"], ["::1"], ["::ffff:127.0.0.1"]],
)
def test_a_name_resolving_to_a_blocked_address_is_refused_at_connect_time(
    server: Server, answers: list[str]
) -> None:
    asked, resolver = recording(*answers)
    with pytest.raises(UrlRejected) as info:
        get(f"http://callback.test:{server.port}/", OutboundPolicy(allow_http=True), resolver)
    assert info.value.code == "url_blocked_address"
    assert asked == ["callback.test"]
    assert server.requests == []


def test_an_allowed_receiver_gets_the_body_and_headers_intact(server: Server) -> None:
    body = '{"type":"job.done","text":"h\u00e9llo \u2713"}'.encode()
    headers = signed_headers([b"k" * 32], "msg_2b9c", body, timestamp=1_700_000_000)
    headers["x-trace"] = "a, b"

    async def go() -> Any:
        async with build_client(LOOPBACK, resolver=fixed("127.0.0.1")) as client:
            url = f"http://callback.test:{server.port}/cb?x=1%2F2"
            return await post_limited(client, url, content=body, headers=headers)

    assert run(go()).body == b"thanks"
    [(received, received_body)] = server.received
    assert received_body == body
    assert server.requests == [f"POST /cb?x=1%2F2 {body.decode()}"]
    for name, value in headers.items():
        assert received.get_all(name) == [value]
    assert received.get_all("host") == [f"callback.test:{server.port}"]
    assert received.get_all("content-length") == [str(len(body))]
    assert received.get_all("accept-encoding") == ["identity"]
    assert "cookie" not in received


def test_proxies_from_the_environment_are_ignored(
    server: Server, monkeypatch: pytest.MonkeyPatch
) -> None:
    proxy = Server()
    thread = threading.Thread(target=proxy.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    try:
        for name in ("HTTP_PROXY", "http_proxy", "ALL_PROXY", "all_proxy"):
            monkeypatch.setenv(name, f"http://127.0.0.1:{proxy.port}")
        for name in ("NO_PROXY", "no_proxy"):
            monkeypatch.delenv(name, raising=False)
        result = get(f"http://callback.test:{server.port}/p", LOOPBACK, fixed("127.0.0.1"))
    finally:
        proxy.shutdown()
        proxy.server_close()
        thread.join(5)
    assert result.status_code == 200
    assert server.requests == ["GET /p"]
    assert proxy.requests == []


def test_the_checked_address_is_the_one_dialled(server: Server) -> None:
    # The resolver answers loopback; no system resolver is asked, so the name need not exist.
    result = get(f"http://callback.invalid:{server.port}/", LOOPBACK, fixed("127.0.0.1"))
    assert result.status_code == 200


def test_connect_time_resolution_failure_is_transient() -> None:
    # The name passed check_url earlier, so failing now is likelier a DNS outage: retry it.
    with pytest.raises(TransientError) as info:
        get("https://h.test/", OutboundPolicy(), fixed())
    assert info.value.code == "connection_error"


def test_refused_connection_is_transient(silent_port: int) -> None:
    free = socket.socket()
    free.bind(("127.0.0.1", 0))
    port = free.getsockname()[1]
    free.close()
    with pytest.raises(TransientError) as info:
        get(f"http://127.0.0.1:{port}/", LOOPBACK)
    assert info.value.code == "connection_error"


def test_big_response_is_truncated_without_reading_it_all(server: Server) -> None:
    policy = LOOPBACK.model_copy(update={"max_response_bytes": 100_000})
    result = get(f"http://127.0.0.1:{server.port}/big", policy)
    assert result.truncated and len(result.body) == 100_000
    assert server.done.wait(10)
    assert server.sent < BIG


def test_chunked_response_is_truncated_at_the_limit(server: Server) -> None:
    result = get(f"http://127.0.0.1:{server.port}/chunked-big", LOOPBACK, max_bytes=1000)
    assert result.truncated and result.body == b"z" * 1000


def test_body_exactly_at_the_limit_is_not_truncated(server: Server) -> None:
    result = get(f"http://127.0.0.1:{server.port}/bytes/1000", LOOPBACK, max_bytes=1000)
    assert not result.truncated and len(result.body) == 1000


def test_redirects_are_not_followed(server: Server) -> None:
    result = get(f"http://127.0.0.1:{server.port}/status/302", LOOPBACK)
    assert result.status_code == 302
    assert server.requests == ["GET /status/302"]
    with pytest.raises(PermanentError) as info:
        result.raise_for_status("callback")
    assert info.value.code == "http_redirect"


def test_hanging_server_times_out_quickly(silent_port: int) -> None:
    policy = LOOPBACK.model_copy(update={"timeout": 0.3, "connect_timeout": 0.3})
    started = time.monotonic()
    with pytest.raises(TransientError) as info:
        get(f"http://127.0.0.1:{silent_port}/", policy)
    assert info.value.code == "timeout"
    assert time.monotonic() - started < 3


def test_a_silent_receiver_raises_httpx_timeout(silent_port: int) -> None:
    policy = LOOPBACK.model_copy(update={"timeout": 0.3})

    async def go() -> None:
        async with build_client(policy) as client:
            await client.post(f"http://127.0.0.1:{silent_port}/cb", content=b"{}")

    started = time.monotonic()
    with pytest.raises(httpx.TimeoutException):
        run(go())
    assert time.monotonic() - started < 3


def test_error_details_carry_no_query_string(silent_port: int) -> None:
    policy = LOOPBACK.model_copy(update={"timeout": 0.2})
    with pytest.raises(TransientError) as info:
        get(f"http://127.0.0.1:{silent_port}/cb?token=s3cret", policy)
    assert "s3cret" not in str(info.value) and "/cb" in str(info.value)


# --- fetch_to_file ------------------------------------------------------------------------


def fetch(url: str, dest: Path, max_bytes: int, **kwargs: Any) -> int:
    async def go() -> int:
        async with build_client(LOOPBACK) as client:
            return await fetch_to_file(client, url, dest, max_bytes=max_bytes, **kwargs)

    return run(go())


def test_fetch_to_file_writes_the_whole_file(server: Server, tmp_path: Path) -> None:
    seen: list[int] = []
    dest = tmp_path / "out.bin"
    size = fetch(
        f"http://127.0.0.1:{server.port}/bytes/200000", dest, 300_000, chunk_cb=seen.append
    )
    assert size == 200_000 and dest.read_bytes() == b"y" * 200_000
    assert seen[-1] == 200_000
    assert list(tmp_path.iterdir()) == [dest]


@pytest.mark.parametrize("path", ["/big", "/chunked-big"])
def test_fetch_to_file_over_the_limit_leaves_nothing(
    server: Server, tmp_path: Path, path: str
) -> None:
    dest = tmp_path / "out.bin"
    with pytest.raises(PermanentError) as info:
        fetch(f"http://127.0.0.1:{server.port}{path}", dest, 100_000)
    assert info.value.code == "too_large"
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    ("status", "kind", "retry_after"),
    [(503, TransientError, 7.0), (429, TransientError, 7.0), (404, PermanentError, None)],
)
def test_fetch_to_file_maps_statuses(
    server: Server, tmp_path: Path, status: int, kind: type[Exception], retry_after: float | None
) -> None:
    with pytest.raises(kind) as info:
        fetch(f"http://127.0.0.1:{server.port}/status/{status}", tmp_path / "f", 10)
    assert info.value.code == "http_status"  # type: ignore[attr-defined]
    assert getattr(info.value, "retry_after", None) == retry_after
    assert list(tmp_path.iterdir()) == []


# --- pure httpx pieces (respx) ------------------------------------------------------------


def test_request_limited_reads_a_mocked_response() -> None:
    async def go() -> Any:
        async with httpx.AsyncClient() as client:
            return await request_limited(client, "GET", "https://api.example/x", max_bytes=3)

    with respx.mock:
        respx.get("https://api.example/x").mock(return_value=httpx.Response(200, content=b"abcdef"))
        result = run(go())
    assert (result.body, result.truncated) == (b"abc", True)


def test_connect_errors_map_to_transient() -> None:
    async def go() -> Any:
        async with httpx.AsyncClient() as client:
            return await request_limited(client, "GET", "https://api.example/x")

    with respx.mock:
        respx.get("https://api.example/x").mock(side_effect=httpx.ConnectError("refused"))
        with pytest.raises(TransientError) as info:
            run(go())
    assert info.value.code == "connection_error"


def test_status_mapping_and_retry_after() -> None:
    headers = httpx.Headers({"Retry-After": "12"})
    assert error_for_status(204, headers, "x") is None
    transient = error_for_status(502, headers, "x")
    assert isinstance(transient, TransientError) and transient.retry_after == 12
    assert isinstance(error_for_status(400, headers, "x"), PermanentError)
    assert retry_after_seconds("Wed, 21 Oct 2015 07:28:00 GMT") == 0
    assert retry_after_seconds("soon") is None


# --- TLS: the name, not the dialled IP, is what the certificate is checked against ---------


@pytest.fixture
def tls_server(tmp_path: Path) -> Iterator[tuple[int, ssl.SSLContext]]:
    if shutil.which("openssl") is None:
        pytest.skip("openssl not installed")
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(
        [
            "openssl",
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-days",
            "1",
            "-subj",
            "/CN=callback.test",
            "-addext",
            "subjectAltName=DNS:callback.test",
            "-keyout",
            str(key),
            "-out",
            str(cert),
        ],
        check=True,
        capture_output=True,
    )
    srv = Server()
    server_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_ctx.load_cert_chain(cert, key)
    srv.socket = server_ctx.wrap_socket(srv.socket, server_side=True)
    thread = threading.Thread(target=srv.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    client_ctx = ssl.create_default_context(cafile=str(cert))
    yield srv.port, client_ctx
    srv.shutdown()
    srv.server_close()
    thread.join(5)


def test_tls_verifies_the_hostname_while_dialling_the_checked_ip(
    tls_server: tuple[int, ssl.SSLContext],
) -> None:
    port, ctx = tls_server
    policy = OutboundPolicy(allow_networks=["127.0.0.1/32"])

    async def go(host: str) -> Any:
        async with build_client(policy, resolver=fixed("127.0.0.1"), ssl_context=ctx) as client:
            return await request_limited(client, "GET", f"https://{host}:{port}/")

    assert run(go("callback.test")).status_code == 200
    with pytest.raises(TransientError) as info:
        run(go("other.test"))  # same IP, wrong name: the certificate check must fail
    assert info.value.code == "connection_error"
