import math

import numpy as np
import pytest

from model.metrics import dual_softmax, evaluate_similarity, ranks_of, retrieval_metrics

# 4 captions, 3 videos; captions 0 and 1 describe video 0. Worked by hand below.
SIM = np.array(
    [
        [0.9, 0.1, 0.5],  # gt 0 -> rank 1
        [0.2, 0.2, 0.8],  # gt 0, tied with video 1: stable order puts 0 first -> rank 2
        [0.3, 0.3, 0.3],  # gt 1, three-way tie -> rank 2
        [0.1, 0.7, 0.6],  # gt 2 -> rank 2
    ]
)
CAPTION_VIDEO = np.array([0, 0, 1, 2])


def test_metrics_equal_a_hand_worked_example_with_ties_and_several_captions():
    m = retrieval_metrics(SIM, CAPTION_VIDEO)
    assert m["t2v"] == {"R1": 25.0, "R5": 100.0, "R10": 100.0, "MdR": 2.0, "MnR": 1.75}
    # video 0: captions ranked 0 (0.9), 2, 1, 3 -> best of {0, 1} is rank 1
    # video 1: captions ranked 3, 2, 1, 0 -> caption 2 at rank 2
    # video 2: captions ranked 1, 3, 0, 2 -> caption 3 at rank 2
    v2t = m["v2t"]
    assert math.isclose(v2t["R1"], 100 / 3)
    assert v2t["MdR"] == 2.0 and math.isclose(v2t["MnR"], 5 / 3)


def test_ties_give_one_rank_per_query():
    ranks = ranks_of(np.zeros((3, 3)))
    assert ranks.shape == (3, 3)
    assert sorted(ranks[0].tolist()) == [0, 1, 2]


def test_dsl_is_reported_apart_from_the_raw_figures():
    out = evaluate_similarity(SIM, CAPTION_VIDEO)
    assert out["t2v"] == retrieval_metrics(SIM, CAPTION_VIDEO)["t2v"]
    assert set(out["dsl"]) == {"t2v", "v2t"}
    renorm = dual_softmax(SIM)
    col = np.exp(SIM[:, 1]) / np.exp(SIM[:, 1]).sum()
    np.testing.assert_allclose(renorm[:, 1], SIM[:, 1] * col)


def test_shape_errors_are_clear():
    with pytest.raises(ValueError, match="one entry per caption"):
        retrieval_metrics(SIM, np.array([0, 1]))
    with pytest.raises(ValueError, match="at least one caption"):
        retrieval_metrics(SIM[:, :3], np.array([0, 0, 0, 0]))
