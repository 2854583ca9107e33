"""Plots show every bar: an AUC below the old 0.4 axis floor is still drawn."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from evaluation.evaluate import plot_auc_by_stage

C0 = np.array([0x1F, 0x77, 0xB4]) / 255  # matplotlib's first bar colour


def _bar_pixels(path: Path) -> int:
    import matplotlib.image as mpimg

    rgb = mpimg.imread(str(path))[..., :3]
    return int((np.abs(rgb - C0).max(axis=-1) < 0.02).sum())


def test_an_auc_below_0_4_is_a_visible_bar(tmp_path: Path) -> None:
    low = plot_auc_by_stage({"lgbm": {"build": 0.337}}, tmp_path / "low.png")
    high = plot_auc_by_stage({"lgbm": {"build": 0.9}}, tmp_path / "high.png")
    # the bar's area grows with its height from a zero baseline (the legend swatch is tiny)
    assert _bar_pixels(low) > 5000
    assert 0.3 < _bar_pixels(low) / _bar_pixels(high) < 0.45
