"""The targets of issue 6, read off a `glccl bench service` result: each figure, whether it is met,
and by how much it is missed."""

from __future__ import annotations

from typing import Any


def targets(r: dict[str, Any]) -> dict[str, Any]:
    """Each target of issue 6 with the figure, whether it is met, and by how much it is missed."""
    ratios, scale = r["ratios"], r["scale"]
    rows = {
        "service_over_naive_at_least_5": ratios["service_over_naive"],
        "service_over_limit_at_least_0.7": ratios["service_over_limit"],
        "exact_share_at_least_0.99": r["exactness"]["exact_share"],
        "scale_p99_ratio_at_most_2": scale["p99_ratio_vs_first_size"] if scale else None,
    }
    bounds = {"service_over_naive_at_least_5": 5, "service_over_limit_at_least_0.7": 0.7}
    bounds |= {"exact_share_at_least_0.99": 0.99}
    if r.get("exactness_trained"):
        rows["exact_share_trained_at_least_0.99"] = r["exactness_trained"]["exact_share"]
        bounds["exact_share_trained_at_least_0.99"] = 0.99
    out = {}
    for name, value in rows.items():
        if value is None:
            out[name] = {"value": None, "met": False}
        elif name.startswith("scale"):
            out[name] = {"value": value, "met": value <= 2}
        else:
            out[name] = {
                "value": value,
                "met": value >= bounds[name],
                "short_by": round(max(0, bounds[name] - value), 3),
            }
    return out
