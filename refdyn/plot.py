"""Plotting support for the tutorials and docs (matplotlib, from the ``plot`` extra, is only
imported by the code that draws)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Optional

FIGURES_VARIABLE = "REFDYN_FIGURES"


def figure_directory(script: Optional[str] = None) -> Path:
    """Where a tutorial saves its figures, created if needed.

    ``$REFDYN_FIGURES`` when set; otherwise ``docs/figures`` of the repository holding the
    tutorial file ``script`` (pass ``__file__``); in a notebook, where there is no ``__file__``,
    ``../docs/figures`` of the working directory (the ``tutorials`` folder).
    """
    if os.environ.get(FIGURES_VARIABLE):
        directory = Path(os.environ[FIGURES_VARIABLE])
    else:
        tutorials = Path(script).resolve().parent if script else Path.cwd()
        directory = tutorials.parent / "docs" / "figures"
    directory.mkdir(parents=True, exist_ok=True)
    return directory


def draw_composite_locations(ax, levels, node, colors=("tab:orange", "tab:red")):
    """Draw the composite sampling locations of one node (DCNv1 Fig. 5) on ``ax``: ``levels``
    from :func:`refdyn.analysis.composite_sampling_locations` (top level first), each level in
    its colour (the last colour repeats), the node as a green star.  Coordinates must share one
    frame (stride 1 layers)."""
    for level, points in enumerate(levels):
        color = colors[min(level, len(colors) - 1)]
        size = 36 if level < len(levels) - 1 else 10
        ax.scatter(points[:, 1], points[:, 0], s=size, color=color, edgecolors="white",
                   linewidths=0.4, label=f"level {level + 1}: {len(points)} points", zorder=3)
    ax.scatter([node[1]], [node[0]], marker="*", s=160, color="tab:green", edgecolors="black",
               linewidths=0.6, label="node", zorder=4)


def draw_weighted_points(ax, points, weights, max_size=80.0):
    """Draw points (M, 2) = (y, x) with area proportional to |weight| (largest = ``max_size``),
    red for positive and blue for negative weights; zero weights are left out."""
    import numpy as np

    weights = np.asarray(weights, dtype=np.float64)
    shown = weights != 0
    if not shown.any():
        return
    sizes = max_size * np.abs(weights[shown]) / np.abs(weights[shown]).max()
    colors = np.where(weights[shown] > 0, "tab:red", "tab:blue")
    ax.scatter(points[shown, 1], points[shown, 0], s=sizes, c=colors, alpha=0.8,
               edgecolors="none", zorder=3)


def draw_region_outline(ax, mask, color="yellow"):
    """Outline the True pixels of a boolean (H, W) mask (a saliency region) on ``ax``."""
    import numpy as np

    mask = np.asarray(mask, dtype=float)
    ax.contour(np.arange(mask.shape[1]), np.arange(mask.shape[0]), mask, levels=[0.5],
               colors=[color], linewidths=1.5)
