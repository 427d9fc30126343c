"""Benchmark: how fast the gateway takes a job in, against a bare endpoint and the naive design.

Run from the repo root:  python bench/bench_ingest.py [--runs 1] [--connections 64] [--duration 10]
Measures in one run, one server at a time, each a separate uvicorn process with the settings of
`gateway api` (taken from gateway.cli.run_api itself), the same 1 KB JSON POST to:
  (a) bare  - a FastAPI endpoint that parses/validates the body and answers 202 (bench/baselines.py)
  (b) naive - a sync endpoint calling Celery's .delay() on the same Redis (the example's design)
  (c) gateway - POST /v1/jobs/echo of gateway.main:create_app, with an API key, on real Redis
Prints req/s, p50, p99 and non-2xx for each and the ratios c/a (target >= 0.8) and c/b; exits 1
if c/a misses the target.

Webhook mode (issue 3 item 8), for when POST /v1/webhooks/{source} exists:
  python bench/bench_ingest.py --webhook /v1/webhooks/bench --webhook-secret whsec_... \
      --server-env WEBHOOK_SOURCES_FILE=path/to/sources.toml
sends a 1 KB Standard Webhooks POST, freshly signed per request (unique webhook-id, current
timestamp), to the bare endpoint and to the gateway at that path; then replays the gateway at half
its measured peak at a constant rate and reports p99 there (targets: >= 0.7 of bare, p99 < 10 ms).

Redis: REDIS_URL if set (a throwaway db, --redis-db, default 15, must be empty; flushed between
phases and at the end), else an embedded redis-server. No worker runs; messages just accumulate.
Load: `wrk` if installed (apt-get install -y wrk), else bench/loadgen.py in its own process.
CPU pinning (--pin, default on a machine with >= 2 cores): the server under test on CPU 0; the
load generator and the embedded Redis on CPU 1. Same pinning for every phase.
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

REPO = Path(__file__).resolve().parents[1]
BENCH = REPO / "bench"
sys.path[:0] = [str(REPO), str(BENCH)]

API_KEY = "bench-ingest-key-0123456789abcdef"
JOB_PATH = "/v1/jobs/echo"
TARGET_CA = 0.8
TARGET_WEBHOOK = 0.7
TARGET_WEBHOOK_P99_MS = 10.0

# Serves one app with exactly the uvicorn settings `gateway api` uses: gateway.cli.run_api is
# called with uvicorn.run intercepted, and its keyword arguments are reused for our app.
SERVER = """
import sys, uvicorn
target, host, port = sys.argv[1], sys.argv[2], int(sys.argv[3])
captured = {}
real_run = uvicorn.run
uvicorn.run = lambda app, **kw: captured.update(kw)
from gateway.cli import run_api
run_api(host, port, 1)
uvicorn.run = real_run
print("uvicorn settings (from gateway.cli.run_api):", captured, flush=True)
real_run(target, **captured)
"""

WRK_LUA = """
local f = assert(io.open("{body}", "rb"))
wrk.body = f:read("*a")
f:close()
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
{headers}
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'BENCHJSON {{"requests":%d,"duration_us":%d,"p50_us":%.1f,"p99_us":%.1f,"max_us":%.1f,' ..
    '"connect":%d,"read":%d,"write":%d,"status":%d,"timeout":%d}}\\n',
    summary.requests, summary.duration, latency:percentile(50), latency:percentile(99),
    latency.max, e.connect, e.read, e.write, e.status, e.timeout))
end
"""


def make_body(size: int = 1024) -> bytes:
    """A realistic-looking ~1 KB JSON job body the echo kind accepts (padded to ``size``)."""
    message = {
        "order_id": "ord_7f3a9c21e4b04d6a",
        "customer": {"id": "cus_19ab3f", "email": "ada@example.com", "tier": "gold"},
        "items": [
            {"sku": f"SKU-{i:05d}", "qty": i % 3 + 1, "price_cents": 1999 + 250 * i}
            for i in range(6)
        ],
        "currency": "EUR",
        "note": "",
    }
    base = len(json.dumps({"message": message}, separators=(",", ":")).encode())
    message["note"] = "x" * max(0, size - base)
    return json.dumps({"message": message}, separators=(",", ":")).encode()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def pin(cpus: set[int] | None):
    if not cpus:
        return None
    return lambda: os.sched_setaffinity(0, cpus)


def pin_all_threads(pid: int, cpus: set[int] | None) -> None:
    """Pin every thread of a running process (redis-server has background threads)."""
    if not cpus:
        return
    for tid in os.listdir(f"/proc/{pid}/task"):
        with contextlib.suppress(OSError):
            os.sched_setaffinity(int(tid), cpus)


CLK_TCK = os.sysconf("SC_CLK_TCK")


def proc_cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process (all its threads) so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def cpu_busy_seconds(cpus: set[int] | None) -> tuple[float, float]:
    """(busy, total) CPU seconds so far on ``cpus`` (all CPUs when None), from /proc/stat."""
    busy = total = 0
    for line in Path("/proc/stat").read_text().splitlines():
        name, *values = line.split()
        if not name.startswith("cpu") or name == "cpu":
            continue
        if cpus is not None and int(name[3:]) not in cpus:
            continue
        ticks = [int(v) for v in values[:8]]
        total += sum(ticks)
        busy += sum(ticks) - ticks[3] - ticks[4]  # minus idle and iowait
    return busy / CLK_TCK, total / CLK_TCK


@dataclass
class Result:
    name: str
    rps: float
    p50_ms: float
    p99_ms: float
    max_ms: float
    requests: int
    non2xx: int
    socket_errors: int
    extra: dict[str, object] = field(default_factory=dict)
    server_cpu_us: float = float("nan")  # server CPU time per measured request
    core_busy: float = float("nan")  # how busy the server's CPU(s) were, by anything
    others_busy: float = float("nan")  # ... by anything other than the server


# --- servers --------------------------------------------------------------------------------


@contextlib.contextmanager
def server(
    target: str, env: dict[str, str], cpus: set[int] | None, log: Path
) -> Iterator[tuple[int, subprocess.Popen[bytes]]]:
    """One uvicorn process serving ``target`` on a fresh loopback port, stopped on exit."""
    port = free_port()
    full_env = {**os.environ, **env, "PYTHONPATH": f"{REPO}{os.pathsep}{BENCH}"}
    with log.open("ab") as out:
        proc = subprocess.Popen(
            [sys.executable, "-c", SERVER, target, "127.0.0.1", str(port)],
            cwd=REPO, env=full_env, stdout=out, stderr=subprocess.STDOUT,
            preexec_fn=pin(cpus), start_new_session=True,
        )  # fmt: skip
    try:
        deadline = time.monotonic() + 30
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"{target} exited with {proc.returncode}; see {log}")
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"{target} did not listen within 30 s; see {log}") from None
                time.sleep(0.1)
        yield port, proc
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def check_once(port: int, path: str, headers: dict[str, str], body: bytes) -> tuple[int, bytes]:
    """One request by hand before loading: the server must answer 202 to exactly this request."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    try:
        conn.request(
            "POST", path, body=body, headers={"Content-Type": "application/json", **headers}
        )
        resp = conn.getresponse()
        return resp.status, resp.read()
    finally:
        conn.close()


# --- load -----------------------------------------------------------------------------------


def run_wrk(
    port: int,
    path: str,
    headers: dict[str, str],
    body_file: Path,
    args: argparse.Namespace,
    cpus: set[int] | None,
    seconds: float,
) -> dict[str, float]:
    lua = Path(args.workdir) / "post.lua"
    header_lines = "\n".join(
        f'wrk.headers["{k}"] = "{v}"'.replace("\\", "\\\\") for k, v in headers.items()
    )
    lua.write_text(WRK_LUA.format(body=body_file, headers=header_lines))
    cmd = [
        "wrk", "-t", str(args.threads), "-c", str(args.connections), "-d", f"{seconds:g}s",
        "--timeout", "10s", "-s", str(lua), f"http://127.0.0.1:{port}{path}",
    ]  # fmt: skip
    out = subprocess.run(
        cmd, capture_output=True, text=True, timeout=seconds + 30, preexec_fn=pin(cpus), check=True
    ).stdout
    line = next(ln for ln in out.splitlines() if ln.startswith("BENCHJSON "))
    return json.loads(line.removeprefix("BENCHJSON "))


def load_wrk(port, path, headers, body_file, args, cpus, meter) -> Result:
    run_wrk(port, path, headers, body_file, args, cpus, args.warmup)  # warm-up, discarded
    meter.start()
    r = run_wrk(port, path, headers, body_file, args, cpus, args.duration)
    meter.stop()
    seconds = r["duration_us"] / 1e6
    return Result(
        name="",
        rps=r["requests"] / seconds,
        p50_ms=r["p50_us"] / 1000,
        p99_ms=r["p99_us"] / 1000,
        max_ms=r["max_us"] / 1000,
        requests=int(r["requests"]),
        non2xx=int(r["status"]),
        socket_errors=int(r["connect"] + r["read"] + r["write"] + r["timeout"]),
    )


def run_loadgen(
    port: int,
    path: str,
    headers: dict[str, str],
    body_file: Path,
    args: argparse.Namespace,
    cpus: set[int] | None,
    seconds: float,
    rate: float,
    sign_secret: str | None,
) -> dict[str, float]:
    cmd = [
        sys.executable, str(BENCH / "loadgen.py"), "--port", str(port), "--path", path,
        "--body-file", str(body_file), "--connections", str(args.connections),
        "--duration", str(seconds), "--warmup", "0", "--rate", str(rate),
    ]  # fmt: skip
    for k, v in headers.items():
        cmd += ["--header", f"{k}: {v}"]
    if sign_secret:
        cmd += ["--sign-secret", sign_secret]
    out = subprocess.run(
        cmd, capture_output=True, text=True, check=True, preexec_fn=pin(cpus),
        timeout=seconds + 60,
    ).stdout  # fmt: skip
    return json.loads(out.strip().splitlines()[-1])


def load_python(
    port: int,
    path: str,
    headers: dict[str, str],
    body_file: Path,
    args: argparse.Namespace,
    cpus: set[int] | None,
    meter: CpuMeter,
    rate: float = 0.0,
    sign_secret: str | None = None,
) -> Result:
    run_loadgen(port, path, headers, body_file, args, cpus, args.warmup, rate, sign_secret)
    meter.start()
    r = run_loadgen(port, path, headers, body_file, args, cpus, args.duration, rate, sign_secret)
    meter.stop()
    return Result(
        name="",
        rps=r["rps"],
        p50_ms=r["p50_ms"],
        p99_ms=r["p99_ms"],
        max_ms=r["max_ms"],
        requests=r["requests"],
        non2xx=r["non2xx"],
        socket_errors=r["errors"],
    )


class CpuMeter:
    """Server CPU time and its core's business over the measured window only."""

    def __init__(self, pid: int, cpus: set[int] | None) -> None:
        self.pid, self.cpus = pid, cpus
        self.server = self.busy = self.total = 0.0

    def start(self) -> None:
        self._s0 = proc_cpu_seconds(self.pid)
        self._b0, self._t0 = cpu_busy_seconds(self.cpus)

    def stop(self) -> None:
        self.server = proc_cpu_seconds(self.pid) - self._s0
        busy, total = cpu_busy_seconds(self.cpus)
        self.busy, self.total = busy - self._b0, total - self._t0

    def apply(self, result: Result) -> None:
        if result.requests:
            result.server_cpu_us = self.server / result.requests * 1e6
        if self.total:
            result.core_busy = self.busy / self.total
            result.others_busy = max(0.0, self.busy - self.server) / self.total


# --- redis ----------------------------------------------------------------------------------


@contextlib.contextmanager
def bench_redis(args: argparse.Namespace, cpus: set[int] | None) -> Iterator[str]:
    """A Redis URL on a throwaway db: the given server's, or an embedded one's."""
    import redis

    embedded = None
    base = os.environ.get("REDIS_URL")
    if not base:
        from gateway.embedded import EmbeddedRedis

        embedded = EmbeddedRedis().start()
        assert embedded.process is not None
        pin_all_threads(embedded.process.pid, cpus)
        base = embedded.url
        print(f"redis: embedded redis-server at {base} (pid {embedded.process.pid})")
    else:
        print("redis: REDIS_URL (not pinned: not ours)")
    parts = urlsplit(base)
    url = urlunsplit((parts.scheme, parts.netloc, f"/{args.redis_db}", parts.query, ""))
    client = redis.Redis.from_url(url)
    try:
        if client.dbsize() and not args.flush_anyway:
            raise SystemExit(f"{url} is not empty; pick another --redis-db or pass --flush-anyway")
        print(f"redis: using db {args.redis_db}, flushed between phases and at the end")
        yield url
    finally:
        with contextlib.suppress(Exception):
            client.flushdb()
        client.close()
        if embedded is not None:
            embedded.stop()


def flush(url: str) -> None:
    import redis

    with redis.Redis.from_url(url) as client:
        client.flushdb()


def llen(url: str, key: str) -> int:
    import redis

    with redis.Redis.from_url(url) as client:
        return int(client.llen(key))


# --- phases ---------------------------------------------------------------------------------


@dataclass
class Phase:
    name: str
    target: str
    env: dict[str, str]
    queue: str | None  # Redis list the phase enqueues to, to cross-check the client's count
    expect: int = 202


def measure(
    phase: Phase,
    url: str,
    path: str,
    headers: dict[str, str],
    body: bytes,
    body_file: Path,
    args: argparse.Namespace,
    cpus: dict[str, set[int] | None],
    sign_secret: str | None = None,
    rate: float = 0.0,
) -> Result:
    flush(url)
    log = Path(args.workdir) / f"server-{phase.name}.log"
    with server(phase.target, phase.env, cpus["server"], log) as (port, proc):
        check_headers = dict(headers)
        if sign_secret:
            from loadgen import decode_secret, standard_webhooks_headers

            check_headers.update(standard_webhooks_headers(decode_secret(sign_secret), body))
        status, answer = check_once(port, path, check_headers, body)
        if status != phase.expect:
            raise SystemExit(
                f"{phase.name}: expected {phase.expect}, got {status}: {answer[:300]!r}"
            )
        profiler = start_profiler(phase, proc.pid, args, cpus["client"])
        use_wrk = args.loader == "wrk" and not sign_secret and not rate
        meter = CpuMeter(proc.pid, cpus["server"])
        if use_wrk:
            result = load_wrk(port, path, headers, body_file, args, cpus["client"], meter)
        else:
            result = load_python(
                port, path, headers, body_file, args, cpus["client"], meter, rate, sign_secret
            )
        meter.apply(result)
        stop_profiler(profiler)
        result.name = phase.name
        result.extra["loader"] = "wrk" if use_wrk else "loadgen.py"
        if phase.queue:
            result.extra["enqueued"] = llen(url, phase.queue)
    flush(url)
    return result


def start_profiler(phase, pid, args, cpus):
    if not args.profile or phase.name not in args.profile_phases:
        return None
    if shutil.which("py-spy") is None:
        raise SystemExit("--profile needs py-spy (pip install py-spy)")
    out = (
        Path(args.profile)
        / f"{phase.name}.{'svg' if args.profile_format == 'flamegraph' else 'txt'}"
    )
    out.parent.mkdir(parents=True, exist_ok=True)
    seconds = int(args.warmup + args.duration)
    cmd = ["py-spy", "record", "--pid", str(pid), "--duration", str(seconds), "--rate", "250",
           "--format", args.profile_format, "--output", str(out), "--nonblocking"]  # fmt: skip
    print(f"  profiling {phase.name} (pid {pid}) -> {out}", flush=True)
    return subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            preexec_fn=pin(cpus))  # fmt: skip


def stop_profiler(proc: subprocess.Popen[bytes] | None) -> None:
    if proc is not None:
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.send_signal(signal.SIGINT)
            proc.wait(10)


def show(r: Result) -> None:
    enq = r.extra.get("enqueued")
    tail = f"  enqueued {enq}" if enq is not None else ""
    print(
        f"  {r.name:<11} {r.rps:9.0f} req/s   p50 {r.p50_ms:7.2f} ms   p99 {r.p99_ms:7.2f} ms   "
        f"non-2xx {r.non2xx}   errors {r.socket_errors}   "
        f"server CPU {r.server_cpu_us:5.0f} us/req   core busy {r.core_busy:4.0%} "
        f"(others {r.others_busy:4.0%})   ({r.requests} req, {r.extra.get('loader')}){tail}",
        flush=True,
    )


def median(values: list[float]) -> float:
    ordered = sorted(values)
    mid = len(ordered) // 2
    return ordered[mid] if len(ordered) % 2 else (ordered[mid - 1] + ordered[mid]) / 2


def parse_env(items: list[str]) -> dict[str, str]:
    env = {}
    for item in items:
        name, sep, value = item.partition("=")
        if not sep:
            raise SystemExit(f"--server-env wants NAME=VALUE, got {item!r}")
        env[name] = value
    return env


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--connections", type=int, default=64)
    parser.add_argument("--duration", type=float, default=10.0, help="measured seconds per phase")
    parser.add_argument("--warmup", type=float, default=2.0, help="seconds of load not measured")
    parser.add_argument("--threads", type=int, default=1, help="wrk threads")
    parser.add_argument("--runs", type=int, default=1, help="rounds of a, b, c; medians reported")
    # gateway: METRICS_ENABLED=true (the default); gateway-off: the same app with metrics off
    parser.add_argument("--phases", default="bare,naive,gateway,gateway-off")
    parser.add_argument("--loader", choices=("wrk", "python"), default="wrk")
    parser.add_argument("--rate", type=float, default=0.0, help="constant total req/s (python)")
    parser.add_argument("--pin", choices=("auto", "off"), default="auto")
    parser.add_argument("--redis-db", type=int, default=15)
    parser.add_argument("--flush-anyway", action="store_true", help="flush a non-empty --redis-db")
    parser.add_argument("--body-bytes", type=int, default=1024)
    parser.add_argument("--webhook", metavar="PATH", help="webhook mode: POST signed to PATH")
    parser.add_argument("--webhook-secret", default="whsec_YmVuY2gtaW5nZXN0LXdlYmhvb2stc2VjcmV0")
    parser.add_argument("--server-env", action="append", default=[], help="NAME=VALUE (gateway)")
    parser.add_argument(
        "--gateway-target",
        default="gateway.main:create_app",
        help="app factory for (c); bench/variants.py:create_app prices candidate optimisations",
    )
    parser.add_argument("--profile", metavar="DIR", help="py-spy the server of --profile-phases")
    parser.add_argument("--profile-phases", default="gateway")
    parser.add_argument("--profile-format", choices=("flamegraph", "raw", "speedscope"),
                        default="raw")  # fmt: skip
    args = parser.parse_args()

    if args.loader == "wrk" and shutil.which("wrk") is None:
        print(
            "wrk not found: install it for the cheapest load generator "
            "(sudo apt-get install -y wrk); falling back to bench/loadgen.py (Python, asyncio, "
            "its own process), which costs more CPU per request on the shared cores",
            file=sys.stderr,
        )
        args.loader = "python"
    if args.rate and args.loader == "wrk":
        print("--rate needs the Python generator; using bench/loadgen.py", file=sys.stderr)
        args.loader = "python"

    ncpu = len(os.sched_getaffinity(0))
    if args.pin == "auto" and ncpu >= 2:
        cpus: dict[str, set[int] | None] = {"server": {0}, "client": {1}}
        pinning = "server on CPU 0; load generator and embedded Redis on CPU 1"
    else:
        cpus = {"server": None, "client": None}
        pinning = "none"

    with tempfile.TemporaryDirectory(prefix="bench-ingest-") as tmp:
        args.workdir = tmp
        body = make_body(args.body_bytes)
        body_file = Path(tmp) / "body.json"
        body_file.write_bytes(body)
        print(
            f"load: {args.loader}, {args.connections} connections, {args.warmup:g} s warm-up + "
            f"{args.duration:g} s measured per phase, {len(body)}-byte JSON body, "
            f"{'constant ' + format(args.rate, 'g') + ' req/s' if args.rate else 'closed loop'}"
        )
        print(f"cpus: {ncpu}; pinning: {pinning}")
        with bench_redis(args, cpus["client"]) as url:
            if args.webhook:
                return webhook_mode(args, url, body, body_file, cpus)
            return ingest_mode(args, url, body, body_file, cpus)


def ingest_mode(args, url, body, body_file, cpus) -> int:
    from tasks.queues import queue_for

    headers = {"Authorization": f"Bearer {API_KEY}"}
    gateway_env = {
        "REDIS_URL": url,
        "API_KEYS": API_KEY,
        "ENVIRONMENT": "dev",
        **parse_env(args.server_env),
    }
    echo_queue = queue_for("jobs.echo")
    phases = {
        "bare": Phase("bare", "baselines:bare_app", {}, None),
        "naive": Phase("naive", "baselines:naive_app", {"BENCH_REDIS_URL": url}, "celery"),
        "gateway": Phase(
            "gateway", args.gateway_target, {**gateway_env, "METRICS_ENABLED": "true"}, echo_queue
        ),
        "gateway-off": Phase(
            "gateway-off",
            args.gateway_target,
            {**gateway_env, "METRICS_ENABLED": "false"},
            echo_queue,
        ),
    }
    chosen = [phases[name] for name in args.phases.split(",")]
    results: dict[str, list[Result]] = {p.name: [] for p in chosen}
    for round_no in range(1, args.runs + 1):
        print(f"round {round_no}/{args.runs}: POST {JOB_PATH}", flush=True)
        for phase in chosen:
            r = measure(phase, url, JOB_PATH, headers, body, body_file, args, cpus, rate=args.rate)
            show(r)
            results[phase.name].append(r)
            time.sleep(1)
    rps = {name: median([r.rps for r in rs]) for name, rs in results.items()}
    print(f"summary (median of {args.runs} round(s)):")
    for name, rs in results.items():
        print(
            f"  {name:<11} {rps[name]:9.0f} req/s   p50 {median([r.p50_ms for r in rs]):7.2f} ms"
            f"   p99 {median([r.p99_ms for r in rs]):7.2f} ms   non-2xx {sum(r.non2xx for r in rs)}"
            f"   server CPU {median([r.server_cpu_us for r in rs]):5.0f} us/req"
        )
    ok = True
    if "gateway" in rps and "bare" in rps:
        ca = rps["gateway"] / rps["bare"]
        ok = ca >= TARGET_CA
        print(f"  c/a gateway/bare  = {ca:5.2f}   (target >= {TARGET_CA})")
        cpu = {n: median([r.server_cpu_us for r in rs]) for n, rs in results.items()}
        print(
            f"      by server CPU per request (bare/gateway) = {cpu['bare'] / cpu['gateway']:5.2f}"
        )
    if "gateway-off" in rps and "bare" in rps:
        print(f"      gateway-off/bare = {rps['gateway-off'] / rps['bare']:5.2f}   (metrics off)")
    if "gateway-off" in rps and "gateway" in rps:
        cpu = {n: median([r.server_cpu_us for r in rs]) for n, rs in results.items()}
        print(
            f"      metrics on/off: {rps['gateway'] / rps['gateway-off']:5.2f} req/s, "
            f"{cpu['gateway'] - cpu['gateway-off']:+.1f} us/req server CPU"
        )
    if "gateway" in rps and "naive" in rps:
        print(f"  c/b gateway/naive = {rps['gateway'] / rps['naive']:5.2f}")
    if "naive" in rps and "bare" in rps:
        print(f"  b/a naive/bare    = {rps['naive'] / rps['bare']:5.2f}")
    bad = sum(r.non2xx + r.socket_errors for rs in results.values() for r in rs)
    if bad:
        ok = False
        print(f"  {bad} non-2xx responses or socket errors")
    print("PASS" if ok else "FAIL")
    return 0 if ok else 1


def webhook_mode(args, url, body, body_file, cpus) -> int:
    """Signed 1 KB Standard Webhooks POSTs: bare vs the gateway's path, then half-peak p99."""
    path = args.webhook
    bare = Phase("bare", "baselines:bare_app", {}, None)
    gateway = Phase(
        "webhook",
        args.gateway_target,
        {"REDIS_URL": url, "API_KEYS": API_KEY, "ENVIRONMENT": "dev", **parse_env(args.server_env)},
        None,
    )
    secret = args.webhook_secret
    print(f"webhook mode: POST {path}, Standard Webhooks signature per request (loadgen.py)")
    peak: dict[str, list[float]] = {"bare": [], "webhook": []}
    half: list[Result] = []
    for round_no in range(1, args.runs + 1):
        print(f"round {round_no}/{args.runs}", flush=True)
        for phase in (bare, gateway):
            r = measure(phase, url, path, {}, body, body_file, args, cpus, sign_secret=secret)
            show(r)
            peak[phase.name].append(r.rps)
        rate = peak["webhook"][-1] / 2
        r = measure(gateway, url, path, {}, body, body_file, args, cpus, secret, rate=rate)
        r.name = "webhook@½"
        show(r)
        half.append(r)
    ratio = median(peak["webhook"]) / median(peak["bare"])
    p99_half = median([r.p99_ms for r in half])
    print(f"  webhook/bare throughput = {ratio:5.2f}   (target >= {TARGET_WEBHOOK})")
    print(f"  p99 at half peak rate   = {p99_half:6.2f} ms (target < {TARGET_WEBHOOK_P99_MS} ms)")
    ok = ratio >= TARGET_WEBHOOK and p99_half < TARGET_WEBHOOK_P99_MS
    print("PASS" if ok else "FAIL")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
