"""What starting an API process costs: import time, peak RSS and modules loaded.

Each figure is the median of fresh interpreters, the gateway's (``import gateway.main`` and
``create_app()``) against a bare FastAPI app's (``FastAPI()`` with one route) measured in the same
run, so the ratio holds on a noisy machine. The API imports the request half of the job kinds
only (core/kinds.py); tests/gateway/test_api_imports.py keeps the worker's libraries out.

    python bench/bench_api_start.py [--runs 7]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

PROBE = """
import json, resource, sys, time
started = time.perf_counter()
{body}
elapsed = time.perf_counter() - started
rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
print(json.dumps({{"ms": elapsed * 1000, "rss_mb": rss, "modules": len(sys.modules)}}))
"""

BARE = """
from fastapi import FastAPI
app = FastAPI()
app.get("/")(lambda: {"ok": True})
"""

GATEWAY = """
from gateway.main import create_app
app = create_app()
"""

WORKER_ONLY = ("celery", "kombu", "PIL", "aiosmtplib", "greenlet", "aiohttp")


def measure(body: str) -> dict[str, float]:
    """One fresh interpreter's figures for running ``body``."""
    out = subprocess.run(
        [sys.executable, "-c", PROBE.format(body=body)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
        timeout=120,
    ).stdout
    return dict(json.loads(out.strip().splitlines()[-1]))


def main() -> None:
    """Interleave bare and gateway runs; print medians and the ratio."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=7)
    args = parser.parse_args()
    runs: dict[str, list[dict[str, float]]] = {"bare": [], "gateway": []}
    for _ in range(args.runs):
        runs["bare"].append(measure(BARE))
        runs["gateway"].append(measure(GATEWAY))
    medians = {
        name: {key: statistics.median(r[key] for r in rows) for key in rows[0]}
        for name, rows in runs.items()
    }
    for name, figures in medians.items():
        print(
            f"{name:8} import+app {figures['ms']:6.0f} ms   peak RSS {figures['rss_mb']:5.1f} MB"
            f"   modules {figures['modules']:4.0f}"
        )
    ratio = medians["gateway"]["ms"] / medians["bare"]["ms"]
    extra = medians["gateway"]["rss_mb"] - medians["bare"]["rss_mb"]
    print(f"gateway/bare import time {ratio:.2f}x; RSS +{extra:.1f} MB ({args.runs} runs)")
    loaded = subprocess.run(
        [sys.executable, "-c", GATEWAY + "import sys; print(sorted(set(m.split('.')[0] "
         "for m in sys.modules)))"],
        cwd=ROOT, capture_output=True, text=True, check=True, timeout=120,
    ).stdout  # fmt: skip
    heavy = [name for name in WORKER_ONLY if f"'{name}'" in loaded]
    print(f"worker libraries loaded by the API: {heavy or 'none'}")


if __name__ == "__main__":
    main()
