"""The figures of the fault and soak scripts (the scripts themselves run outside the suite)."""

from __future__ import annotations

import pytest

from ops.commands.cli import main
from ops.load.faults import recovery_s
from ops.load.samples import Sample
from ops.load.soak import slope_per_minute


def sample(at: float, latency: float, status: int | None, error: str | None = None) -> Sample:
    return Sample(0, at, 0.0, latency, status, error)


def test_recovery_is_the_last_failure_after_the_fault_ended():
    samples = [
        sample(1.0, 0.01, 200),
        sample(2.0, 0.5, 503),  # during the fault
        sample(3.0, 0.2, 503),  # answered at 3.2, after the fault ended at 3.0
        sample(3.5, 0.1, None, "timeout"),  # answered at 3.6: the last failure
        sample(4.0, 0.01, 200),
    ]
    assert recovery_s(samples, 3.0) == pytest.approx(0.6)
    assert recovery_s(samples, 5.0) == 0.0
    assert recovery_s([sample(1.0, 0.01, 429)], 0.5) == pytest.approx(0.51)


def test_rss_slope_is_per_minute_and_flat_for_a_flat_series():
    assert slope_per_minute([0, 60, 120], [100, 110, 120]) == pytest.approx(10)
    assert slope_per_minute([0, 30, 60], [50, 50, 50]) == pytest.approx(0, abs=1e-9)
    assert slope_per_minute([0], [1]) == 0.0


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["faults", "--duration", "0"], "--duration must be between 1 and 600"),
        (["soak", "--minutes", "500"], "--minutes must be above 0 and at most 120"),
        (["soak", "--fraction", "2"], "--fraction must be above 0 and at most 1"),
    ],
)
def test_the_scripts_refuse_unbounded_runs(argv, message, capsys):
    assert main(argv) == 1
    assert message in capsys.readouterr().err
