"""The overview's last-hour chart, drawn on the server as SVG coordinates.

Why SVG made here and no chart library: four lines of 60 points are a few lines of arithmetic;
the page draws them from attributes (no style=, no inline script: the CSP forbids both), and the
live update (static/overview_chart.js) only sets the same attributes from the stream's data with
setAttribute/textContent. One drawing in Python serves the first render and every update, and
nothing is vendored.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

WIDTH, HEIGHT = 600, 160
# what the chart draws, from the per-minute counts (tasks/changes.py): failed counts dead too
SERIES = {
    "accepted": ("accepted",),
    "succeeded": ("succeeded",),
    "failed": ("failed", "dead"),
    "retried": ("retried",),
}
COLOURS = {"accepted": "#2563eb", "succeeded": "#16a34a", "failed": "#dc2626", "retried": "#d97706"}


def _clock(epoch_minute: int) -> str:
    return datetime.fromtimestamp(epoch_minute * 60, UTC).strftime("%H:%M")


def chart(counts: dict[str, list[int]]) -> dict[str, Any]:
    """Polyline points, totals and labels for ``counts`` (tasks/monitor.py ``last_hour``)."""
    minutes = counts["minutes"]
    values = {
        name: [sum(parts) for parts in zip(*(counts[p] for p in fields), strict=True)]
        for name, fields in SERIES.items()
    }
    top = max(1, *(max(series, default=0) for series in values.values()))
    step = WIDTH / max(1, len(minutes) - 1)
    series = {
        name: {
            "points": " ".join(
                f"{i * step:.1f},{HEIGHT - value * HEIGHT / top:.1f}"
                for i, value in enumerate(numbers)
            ),
            "total": sum(numbers),
            "last": numbers[-1] if numbers else 0,
        }
        for name, numbers in values.items()
    }
    return {
        "series": series,
        "max": top,
        "half": top / 2 if top % 2 else top // 2,
        "start": _clock(minutes[0]) + " UTC",
        "end": _clock(minutes[-1]) + " UTC",
    }
