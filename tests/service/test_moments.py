import numpy as np
import pytest

from service.moments import MOMENT_SHARE, make_hits, moment

TIMES = np.arange(8, dtype=np.float32) * 0.5  # frames every 0.5 s


def test_the_span_is_the_contiguous_run_around_the_peak_above_the_share():
    w = np.array([0.05, 0.3, 0.9, 1.0, 0.1, 0.8, 0.0, 0.0])
    best, start, end = moment(w, np.ones(8, bool), TIMES)
    # frame 2 passes half the peak and touches it, frame 1 does not; frame 5 passes but frame 4 cuts it off
    assert best == 3 and (start, end) == (1.0, 2.0)  # ends where frame 4 begins
    assert MOMENT_SHARE == 0.5


def test_padding_and_the_last_frame():
    mask = np.array([True] * 5 + [False] * 3)
    w = np.array([0.0, 0.0, 0.1, 0.6, 1.0, 5.0, 5.0, 5.0])  # padded frames never count, whatever their weight
    best, start, end = moment(w, mask, TIMES)
    assert best == 4 and start == 1.5 and end == pytest.approx(2.0 + 0.5)  # last real frame: one interval more
    one = moment(np.array([1.0]), np.array([True]), np.array([3.25], np.float32))
    assert one == (0, 3.25, 3.25)  # a single frame: no interval to extend by


def test_uneven_times_and_ms_rounding():
    times = np.array([0.0, 0.3333333, 0.7777777, 2.0], np.float32)
    best, start, end = moment(np.array([1.0, 0.9, 0.2, 0.0]), np.ones(4, bool), times)
    assert (best, start, end) == (0, 0.0, 0.778)
    (hit,) = make_hits(["v"], [1.5], np.array([[0.1, 0.2, 1.0, 0.7]]), np.ones((1, 4), bool), times[None])
    assert (hit.video_id, hit.best_frame, hit.best_time_s, hit.start_s, hit.end_s) == (
        "v",
        2,
        0.778,
        0.778,
        2.444,  # frames 2-3, the last real one: its time plus the median interval (0.444)
    )
