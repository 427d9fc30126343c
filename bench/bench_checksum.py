"""Benchmark: our `sha256` file operation against coreutils `sha256sum` on the same file.

Run from the repo root:  python bench/bench_checksum.py [--size-mb 1024] [--runs 3]
Prints MB/s for both, the ratio ours/sha256sum (target >= 0.8) and our peak RSS (target < 100 MB);
exits 1 if a target is missed.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
CHUNK = 4 << 20

# Runs in a fresh interpreter so ru_maxrss is this hash's peak alone, not the benchmark's.
OURS = """
import json, resource, sys, time
from pathlib import Path
from handlers.files import FileStore, OpContext
from handlers.files.job import OPERATIONS
op = OPERATIONS["sha256"]
ctx = OpContext(FileStore(Path(sys.argv[2])), lambda fraction: None)
start = time.perf_counter()
result = op.func(Path(sys.argv[1]), op.params_model(), ctx)
seconds = time.perf_counter() - start
rss_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(json.dumps({"seconds": seconds, "sha256": result["sha256"], "rss_kb": rss_kb}))
"""


def make_file(path: Path, size_mb: int) -> None:
    """Write random bytes, so neither tool can gain from sparse or repeated data."""
    with path.open("wb") as fp:
        for _ in range(size_mb * (1 << 20) // CHUNK):
            fp.write(os.urandom(CHUNK))


def warm_up(path: Path) -> None:
    """Read the file once so both tools start from the same (hot) page cache."""
    with path.open("rb", buffering=0) as fp:
        while fp.read(CHUNK):
            pass


def time_sha256sum(path: Path) -> tuple[float, str]:
    """Wall time of one sha256sum process (its startup is ~1 ms, negligible here)."""
    start = time.perf_counter()
    out = subprocess.run(["sha256sum", str(path)], capture_output=True, text=True, check=True)
    return time.perf_counter() - start, out.stdout.split()[0]


def time_ours(path: Path, scratch: Path) -> tuple[float, float, str, int]:
    """Op time (measured inside), wall time with interpreter start, digest, peak RSS in KiB."""
    start = time.perf_counter()
    out = subprocess.run(
        [sys.executable, "-c", OURS, str(path), str(scratch)],
        capture_output=True, text=True, check=True, cwd=REPO,
    )  # fmt: skip
    wall = time.perf_counter() - start
    report = json.loads(out.stdout)
    return report["seconds"], wall, report["sha256"], report["rss_kb"]


def main() -> int:
    """Run the benchmark and print the comparison."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size-mb", type=int, default=1024)
    parser.add_argument("--runs", type=int, default=3, help="best of this many runs per tool")
    parser.add_argument("--dir", type=Path, default=None, help="where to put the test file")
    args = parser.parse_args()
    if shutil.which("sha256sum") is None:
        print("sha256sum not found", file=sys.stderr)
        return 2

    with tempfile.TemporaryDirectory(dir=args.dir, prefix="bench-checksum-") as tmp:
        path = Path(tmp) / "data.bin"
        print(f"writing {args.size_mb} MB of random data to {path} ...", flush=True)
        make_file(path, args.size_mb)
        size = path.stat().st_size
        warm_up(path)

        theirs = [time_sha256sum(path) for _ in range(args.runs)]
        ours = [time_ours(path, Path(tmp) / "store") for _ in range(args.runs)]

    digests = {d for _, d in theirs} | {d for _, _, d, _ in ours}
    best_theirs = min(t for t, _ in theirs)
    best_ours = min(t for t, _, _, _ in ours)
    best_ours_wall = min(w for _, w, _, _ in ours)
    peak_mb = max(r for _, _, _, r in ours) / 1024
    ratio = best_theirs / best_ours  # throughput ratio ours/sha256sum

    mb = size / 1e6
    print(f"file: {size} bytes, best of {args.runs} runs each, page cache warm")
    print(f"sha256sum                      : {best_theirs:7.3f} s  {mb / best_theirs:8.1f} MB/s")
    print(f"ours (sha256 op)               : {best_ours:7.3f} s  {mb / best_ours:8.1f} MB/s")
    print(
        f"ours incl. interpreter start   : {best_ours_wall:7.3f} s  {mb / best_ours_wall:8.1f} MB/s"
    )
    print(f"ratio ours/sha256sum           : {ratio:7.2f}  (target >= 0.8)")
    print(f"peak RSS of our subprocess     : {peak_mb:7.1f} MB (target < 100 MB)")
    print(f"digests agree                  : {len(digests) == 1}")
    ok = ratio >= 0.8 and peak_mb < 100 and len(digests) == 1
    print("PASS" if ok else "FAIL")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
