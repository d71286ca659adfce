"""Figures of a load test: percentiles, the JSON report and the latency-over-time picture."""

from __future__ import annotations

import math
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ops.load.samples import LoadConfig, Sample


def percentile(values: list[float], q: float) -> float:
    """Linear interpolation between closest ranks (numpy's default); nan for no values."""
    if not values:
        return math.nan
    xs = sorted(values)
    pos = (len(xs) - 1) * q / 100
    lo, hi = math.floor(pos), math.ceil(pos)
    return xs[lo] + (xs[hi] - xs[lo]) * (pos - lo)


def latency_figures(latencies_s: list[float]) -> dict[str, float | None]:
    ms = [x * 1000 for x in latencies_s]
    if not ms:
        return {"p50": None, "p95": None, "p99": None, "max": None, "mean": None}
    out = {f"p{q}": percentile(ms, q) for q in (50, 95, 99)}
    out |= {"max": max(ms), "mean": sum(ms) / len(ms)}
    return {k: round(v, 2) for k, v in out.items()}


def summarize(config: LoadConfig, samples: list[Sample], wall_s: float) -> dict[str, Any]:
    answered = [s for s in samples if s.status is not None]
    status_counts: dict[str, int] = {}
    for s in answered:
        status_counts[str(s.status)] = status_counts.get(str(s.status), 0) + 1
    errors: dict[str, int] = {"timeout": 0, "connect": 0}
    for s in samples:
        if s.error is not None:
            errors[s.error] = errors.get(s.error, 0) + 1
    # Answers per second over the run: the sending window, or longer when the last answers came later.
    last_answer = max((s.scheduled_s + s.latency_s for s in answered), default=0.0)
    window = max(config.duration_s, last_answer)
    last_send = max((s.scheduled_s + s.send_lag_s for s in samples), default=0.0)
    lags = [s.send_lag_s * 1000 for s in samples]
    timeline = []
    for second in range(math.ceil(config.requests / config.rate)):
        in_bin = [s for s in samples if second <= s.scheduled_s < second + 1]
        lat = [s.latency_s for s in in_bin if s.status is not None]
        figures = latency_figures(lat)
        timeline.append(
            {
                "t_s": second,
                "sent": len(in_bin),
                "p50_ms": figures["p50"],
                "p99_ms": figures["p99"],
                "non_2xx": sum(1 for s in in_bin if s.status is not None and not 200 <= s.status < 300),
                "errors": sum(1 for s in in_bin if s.error is not None),
            }
        )
    report: dict[str, Any] = {
        "url": config.url,
        "offered_rate": config.rate,
        "duration_s": config.duration_s,
        "requests": config.requests,
        "sent_rate": round(len(samples) / (last_send + 1 / config.rate), 2) if samples else 0.0,
        "achieved_rate": round(len(answered) / window, 2),
        "wall_s": round(wall_s, 3),
        "status_counts": dict(sorted(status_counts.items())),
        "errors": errors,
        "latency_ms": latency_figures([s.latency_s for s in answered]),
        "latency_ms_2xx": latency_figures([s.latency_s for s in answered if 200 <= s.status < 300]),
        "send_lag_ms": {"p99": round(percentile(lags, 99), 2), "max": round(max(lags), 2)} if lags else {},
        "timeline": timeline,
    }
    if lags and percentile(lags, 99) > 10:
        report["warning"] = "the load generator fell behind its schedule; latencies include that lag"
    return report


def plot(samples: list[Sample], report: dict[str, Any], path: Path) -> None:
    """Latency against scheduled send time, one colour per status class, errors as crosses, the p99 line."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    groups = {"2xx": ("tab:green", "o"), "4xx": ("tab:orange", "o"), "5xx": ("tab:red", "o"), "error": ("k", "x")}
    fig, ax = plt.subplots(figsize=(10, 5))
    for name, (colour, marker) in groups.items():
        if name == "error":
            pts = [s for s in samples if s.status is None]
        else:
            pts = [s for s in samples if s.status is not None and s.status // 100 == int(name[0])]
        if pts:
            ax.scatter(
                [s.scheduled_s for s in pts],
                [s.latency_s * 1000 for s in pts],
                s=8,
                c=colour,
                marker=marker,
                label=f"{name} ({len(pts)})",
            )
    p99 = report["latency_ms"]["p99"]
    if p99 is not None:
        ax.axhline(p99, color="tab:blue", linestyle="--", linewidth=1, label=f"p99 {p99:.1f} ms")
    ax.set_xlabel("scheduled send time (s)")
    ax.set_ylabel("latency from scheduled send (ms)")
    ax.set_title(f"{report['url']}: offered {report['offered_rate']:g}/s, achieved {report['achieved_rate']:g}/s")
    ax.grid(alpha=0.3)
    ax.legend(loc="upper left")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
