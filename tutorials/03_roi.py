# ---
# jupyter:
#   jupytext:
#     formats: py:percent
#     text_representation:
#       extension: .py
#       format_name: percent
#       format_version: '1.3'
#       jupytext_version: 1.19.6
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # Deformable RoI pooling by hand
#
# This tutorial pools **one RoI** bin by bin with DCNv1 Eq. 5, then **deforms** it with
# normalized offsets (Eq. 6) so that its bins move onto an object, and finally computes the
# **gradient of one bin value with respect to its normalized offset** by hand (Appendix A,
# Eq. 8) and by finite differences. The derivations are in `docs/roi.md`.
#
# ```
# y(i, j) = sum_{p in bin(i, j)} x(p0 + p + dp_ij) / n_ij,     dp_ij = gamma * dp^_ij o (h, w)
# ```
#
# The script runs top to bottom and stops with an `AssertionError` if refdyn disagrees.

# %%
import os
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # no window: the figure is written to a file
import matplotlib.pyplot as plt
import numpy as np

from refdyn.bilinear_numpy import sample_point, sample_point_grad
from refdyn.finite_differences import gradcheck
from refdyn.roi_pool_numpy import deform_roi_pool, deform_roi_pool_backward, roi_pool

# %% [markdown]
# ## 1. An image with an object, and a RoI that misses it
#
# An 8 x 8 single-channel image: a dim background and a bright "object" in the lower right.
# The RoI `[batch, x1, y1, x2, y2] = [0, 1, 1, 5, 5]` (spatial_scale 1) starts at p0 = (1, 1)
# and has h = w = 4; with 2 x 2 bins, bin (i, j) holds the integer points
# `floor(i h/2) <= p_y < ceil((i+1) h/2)`, i.e. two rows and two columns per bin.

# %%
image = np.full((1, 1, 8, 8), 0.1)
image[0, 0, 4:7, 5:8] = 1.0
image[0, 0, 5, 6] = 2.0
roi = np.array([[0.0, 1.0, 1.0, 5.0, 5.0]])
gamma = 0.1
h = w = 4.0
p0 = (1.0, 1.0)

# %% [markdown]
# ## 2. RoI pooling by hand (Eq. 5)
#
# Every point p0 + p is an integer pixel here, so bilinear sampling just reads the pixel.

# %%
by_hand = np.zeros((2, 2))
for i in range(2):
    for j in range(2):
        points = [(p0[0] + py, p0[1] + px) for py in range(2 * i, 2 * i + 2)
                  for px in range(2 * j, 2 * j + 2)]
        by_hand[i, j] = np.mean([image[0, 0, int(y), int(x)] for y, x in points])
        print(f"bin ({i}, {j}): points {points} -> {by_hand[i, j]:.4f}")
pooled = roi_pool(image, roi, 2)[0, 0]
assert np.allclose(pooled, by_hand)
print("refdyn roi_pool:\n", pooled)

# %% [markdown]
# ## 3. Deform the bins onto the object (Eq. 6)
#
# Offsets are normalized: a bin moves by gamma * dp^ * (h, w) pixels. To move every bin by
# (2.3, 2.6) pixels, dp^ = (2.3, 2.6) / (gamma * 4) = (5.75, 6.5). refdyn orders the offset
# channels (dy^, dx^) like `deform_conv2d`.

# %%
shift = np.array([2.3, 2.6])
offset = np.zeros((1, 2, 2, 2))
offset[0, 0], offset[0, 1] = shift[0] / (gamma * h), shift[1] / (gamma * w)
deformed = deform_roi_pool(image, roi, offset, 2, gamma=gamma)[0, 0]
i, j = 1, 1
points = [(p0[0] + py + shift[0], p0[1] + px + shift[1]) for py in (2, 3) for px in (2, 3)]
bin_by_hand = np.mean([sample_point(image[0, 0], y, x) for y, x in points])
assert np.isclose(deformed[i, j], bin_by_hand)
assert deformed.mean() > 2 * pooled.mean()   # the deformed bins read the object
print("deformed pooling:\n", deformed)

# %% [markdown]
# The figure shows the bins before (dashed) and after (solid) the offsets, with their sample
# points. Set `REFDYN_FIGURES` to choose the output folder (default `docs/figures/`).

# %%
repo_root = Path.cwd() if "__file__" not in globals() else Path(__file__).resolve().parent.parent
figure_dir = Path(os.environ.get("REFDYN_FIGURES", repo_root / "docs" / "figures"))
figure_dir.mkdir(parents=True, exist_ok=True)
fig, ax = plt.subplots(figsize=(5, 5))
ax.imshow(image[0, 0], cmap="gray", origin="upper")
for i in range(2):
    for j in range(2):
        for moved, style in ((np.zeros(2), "--"), (shift, "-")):
            top, left = p0[0] + 2 * i + moved[0] - 0.5, p0[1] + 2 * j + moved[1] - 0.5
            ax.add_patch(plt.Rectangle((left, top), 2, 2, fill=False, linestyle=style,
                                       edgecolor="tab:orange" if style == "-" else "tab:blue"))
            ys, xs = np.meshgrid(p0[0] + 2 * i + np.arange(2) + moved[0],
                                 p0[1] + 2 * j + np.arange(2) + moved[1], indexing="ij")
            ax.plot(xs.ravel(), ys.ravel(), "o" if style == "-" else "x", markersize=4,
                    color="tab:orange" if style == "-" else "tab:blue")
ax.set_title("RoI bins before (blue, dashed) and after (orange) the offsets")
figure_path = figure_dir / "deformable_roi_pooling_bins.png"
fig.savefig(figure_path, dpi=120, bbox_inches="tight")
print("figure written to", figure_path)

# %% [markdown]
# ## 4. The gradient of one bin value with respect to its normalized offset (Eq. 8)
#
# d y(i, j) / d dp^_ij = gamma (h, w) o (1 / n_ij) sum_p d x(p) / d p, with the bilinear
# derivative of Appendix A at each sample. We use offsets whose samples are not on integers
# (the bilinear kinks), so finite differences are valid.

# %%
offset_kink_free = offset + 0.3           # samples at fractional positions
i, j = 0, 1
moved = (gamma * h * offset_kink_free[0, 0, i, j], gamma * w * offset_kink_free[0, 1, i, j])
points = [(p0[0] + py + moved[0], p0[1] + px + moved[1]) for py in (0, 1) for px in (2, 3)]
derivatives = np.array([sample_point_grad(image[0, 0], y, x) for y, x in points])
by_hand = gamma * np.array([h, w]) * derivatives.mean(axis=0)
grad_output = np.zeros((1, 1, 2, 2))
grad_output[0, 0, i, j] = 1.0
analytic = deform_roi_pool_backward(grad_output, image, roi, offset_kink_free, 2, gamma=gamma)
assert np.allclose(analytic.grad_offset[0, :, i, j], by_hand)
gradcheck(lambda offset: deform_roi_pool(image, roi, offset, 2, gamma=gamma),
          lambda go, offset: deform_roi_pool_backward(go, image, roi, offset, 2, gamma=gamma),
          {"offset": offset_kink_free}, grad_output=grad_output)
print("d y(0, 1) / d (dy^, dx^) by hand:", by_hand, "- refdyn and finite differences agree")
