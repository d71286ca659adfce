"""Pictures of training runs."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # no display on servers
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402


def plot_training_curve(history: dict[str, list[dict[str, Any]]], path: Path) -> Path:
    """Training loss (raw and smoothed) and validation text-to-video recall against steps."""
    fig, (ax_loss, ax_val) = plt.subplots(1, 2, figsize=(11, 4))
    train = history.get("train", [])
    if train:
        steps = np.array([r["step"] for r in train])
        loss = np.array([r["loss"] for r in train])
        ax_loss.plot(steps, loss, alpha=0.3, label="loss")
        window = max(1, len(loss) // 20)
        smooth = np.convolve(loss, np.ones(window) / window, mode="valid")
        ax_loss.plot(steps[window - 1 :], smooth, label=f"mean of {window}")
        for key in ("contrastive_loss", "csc_loss"):
            if key in train[0]:
                ax_loss.plot(steps, [r[key] for r in train], alpha=0.5, lw=0.8, label=key)
    ax_loss.set(xlabel="step", ylabel="loss", title="training loss")
    ax_loss.legend()
    val = history.get("val", [])
    if val:
        steps = [r["step"] for r in val]
        for key in ("t2v_R1", "t2v_R5", "t2v_R10"):
            ax_val.plot(steps, [r[key] for r in val], marker="o", label=key.replace("t2v_", "R@").replace("R@R", "R@"))
    ax_val.set(xlabel="step", ylabel="recall (%)", title="validation text-to-video", ylim=(0, 100))
    ax_val.legend()
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
