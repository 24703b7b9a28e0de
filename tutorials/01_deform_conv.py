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
# # Deformable convolution by hand
#
# This tutorial computes **one output element** of a deformable convolution with pen-and-paper
# arithmetic, then its **gradient with respect to the offsets**, and checks every number
# against `refdyn`. The derivation behind each step is in `docs/deform_conv.md`.
#
# The operator (DCNv1 Eq. 2, with the DCNv2 Eq. 1 modulation `m_k`):
#
# ```
# y(p0) = bias + sum_k  w_k * x(p0 + p_k + dp_k) * m_k
# ```
#
# `x(p)` at a fractional point `p` is bilinear interpolation (DCNv1 Eq. 3-4):
#
# ```
# x(p) = sum_q G(q, p) x(q),   G(q, p) = g(q_y, p_y) g(q_x, p_x),   g(a, b) = max(0, 1 - |a - b|)
# ```
#
# The script runs top to bottom (`python tutorials/01_deform_conv.py`) and stops
# with an `AssertionError` if the library disagrees with the hand computation.

# %%

import matplotlib

matplotlib.use("Agg")  # no window: the figure is written to a file
import matplotlib.pyplot as plt
import numpy as np

import refdyn
from refdyn.plot import figure_directory
from refdyn.bilinear_numpy import G, dg_db, g, neighbours, sample_point, sample_point_grad
from refdyn.deform_conv_numpy import deform_conv2d_literal
from refdyn.finite_differences import gradcheck, kink_free_values

np.set_printoptions(precision=4, suppress=True)

# %% [markdown]
# ## 1. A tiny layer
#
# One image, one input channel, one output channel with a bias, 5 x 5 pixels, a 3 x 3 kernel,
# padding 1, stride 1, dilation 1, so the output is 5 x 5 too
# (`H_out = floor((H + 2 pad - dil (kh - 1) - 1) / stride) + 1 = 5`).
#
# Shapes follow torchvision: `offset` has `2 * kh * kw = 18` channels, the pair
# `(dy, dx)` of tap `k = a * kw + b` at channels `2k` and `2k + 1`; `mask` has one channel per tap.
#
# The offsets come from `refdyn.finite_differences.kink_free_values`: their fractional part stays at
# least 0.1 away from every integer, so no sampling point sits on a kink of `g` (section 4
# explains why that matters for the finite-difference check). They are rounded to two
# decimals so that the printed numbers are exact.

# %%
rng = np.random.default_rng(7)
KH = KW = 3
PAD = 1
image = rng.integers(0, 10, size=(1, 1, 5, 5)).astype(np.float64)
offset = np.round(kink_free_values(rng, (1, 2 * KH * KW, 5, 5), -1, 1, margin=0.1), 2)
mask = np.round(rng.uniform(0, 1, size=(1, KH * KW, 5, 5)), 2)
weight = np.round(rng.normal(size=(1, 1, KH, KW)), 1)
bias = np.array([0.5])
layer = dict(offset=offset, weight=weight, bias=bias, padding=PAD, mask=mask)

print("image x (rows are p_y, columns are p_x):")
print(image[0, 0])
print("weight w:")
print(weight[0, 0])

# %% [markdown]
# ## 2. One output element by hand
#
# We compute `y[0, 0, i, j]` for the output position `(i, j) = (2, 1)`.
#
# In the code's coordinates the sampling point of tap `(a, b)` is
#
# ```
# p_y = i * stride - pad + a * dil + dy_k      p_x = j * stride - pad + b * dil + dx_k
# ```
#
# i.e. `p = p0 + p_k + dp_k` with `p0 = (i - 1, j - 1)` the top-left of the 3 x 3 window and
# `p_k = (a, b)`. (The paper centres the grid `R = {-1, 0, 1}^2` on the output position instead;
# with padding 1 both give the same points.)
#
# For each tap: `floor(p)` gives the top-left of the four neighbours `q`; only those four have
# `G(q, p) != 0`. A neighbour outside the image reads 0 (the `zeros` boundary rule). The sum
# starts from the bias, 0.5.

# %%
I, J = 2, 1


def inside(img, qy, qx):
    """Whether the integer point q is a pixel of the image."""
    height, width = img.shape
    return 0 <= qy < height and 0 <= qx < width


def pixel(img, qy, qx):
    """x(q) under the zeros rule: the pixel, or 0 outside the image."""
    return img[qy, qx] if inside(img, qy, qx) else 0.0


def sampling_point(a, b):
    """p = p0 + p_k + dp_k for tap (a, b) of output (I, J)."""
    k = a * KW + b
    return (I - PAD + a + offset[0, 2 * k, I, J],
            J - PAD + b + offset[0, 2 * k + 1, I, J])


x = image[0, 0]
total = bias[0]
for a in range(KH):
    for b in range(KW):
        k = a * KW + b
        p_y, p_x = sampling_point(a, b)
        corners = neighbours(p_y, p_x)
        weights = [G(q, (p_y, p_x)) for q in corners]            # Eq. 4
        values = [pixel(x, *q) for q in corners]
        x_p = sum(wq * vq for wq, vq in zip(weights, values))    # Eq. 3
        term = weight[0, 0, a, b] * x_p * mask[0, k, I, J]       # Eq. 2 / DCNv2 Eq. 1
        total += term
        print(f"tap k={k} (a,b)=({a},{b}): dp=({offset[0, 2 * k, I, J]:+.2f}, "
              f"{offset[0, 2 * k + 1, I, J]:+.2f})  p=({p_y:.2f}, {p_x:.2f})  "
              f"floor=({int(np.floor(p_y))}, {int(np.floor(p_x))})")
        print("    " + "  ".join(f"q={q}: G={wq:.4f} x(q)={vq:g}" + ("" if inside(x, *q) else "*")
                                 for q, wq, vq in zip(corners, weights, values)))
        print(f"    x(p)={x_p:.6f}  w_k={weight[0, 0, a, b]:+.1f}  m_k={mask[0, k, I, J]:.2f}"
              f"  w_k*x(p)*m_k={term:+.6f}")

output = refdyn.deform_conv2d(image, **layer)
print("(* = outside the image: reads 0)")
print(f"\nby hand:              y[0,0,{I},{J}] = {total:.10f}")
print(f"refdyn.deform_conv2d: y[0,0,{I},{J}] = {output[0, 0, I, J]:.10f}")
assert np.isclose(total, output[0, 0, I, J], rtol=1e-12, atol=1e-12)
assert np.allclose(deform_conv2d_literal(image, **layer), output, rtol=1e-12, atol=1e-12)

# %% [markdown]
# The last line also checks the loop-by-loop implementation `deform_conv2d_literal` against the
# vectorized `deform_conv2d` on every output element.
#
# ## 3. The offset gradient by hand (DCNv1 Appendix A, Eq. 7)
#
# `y` depends on `dy_k` only through `p_y` of tap `k`, and `d p_y / d dy_k = 1`, so
#
# ```
# d y / d dy_k = w_k * m_k * d x(p)/d p_y,    d x(p)/d p_y = sum_q  dg(q_y, p_y)/dp_y * g(q_x, p_x) * x(q)
# d y / d dx_k = w_k * m_k * d x(p)/d p_x,    d x(p)/d p_x = sum_q  g(q_y, p_y) * dg(q_x, p_x)/dp_x * x(q)
# ```
#
# `dg(a, b)/db` is +1 when `b` is just left of `a`, -1 just right of it, 0 further away
# (`refdyn.bilinear_numpy.dg_db`).
#
# Three ways to get the same numbers:
# 1. the formula above, by hand;
# 2. `refdyn.deform_conv2d_backward` with `grad_output` equal to 1 at `(0, 0, I, J)` and 0
#    elsewhere, so that `dL/d offset = d y[0,0,I,J] / d offset`;
# 3. a central finite difference `(y(dp + eps) - y(dp - eps)) / (2 eps)`.

# %%
one_hot = np.zeros_like(output)
one_hot[0, 0, I, J] = 1.0
grads = refdyn.deform_conv2d_backward(one_hot, image, **layer)
EPS = 1e-6


def central_difference(channel):
    """d y[0,0,I,J] / d offset[0, channel, I, J] by a central difference."""
    plus, minus = offset.copy(), offset.copy()
    plus[0, channel, I, J] += EPS
    minus[0, channel, I, J] -= EPS
    y_plus = refdyn.deform_conv2d(image, **{**layer, "offset": plus})[0, 0, I, J]
    y_minus = refdyn.deform_conv2d(image, **{**layer, "offset": minus})[0, 0, I, J]
    return (y_plus - y_minus) / (2 * EPS)


print(" k  coord  by hand      backward     finite diff.")
for a in range(KH):
    for b in range(KW):
        k = a * KW + b
        p_y, p_x = sampling_point(a, b)
        corners = neighbours(p_y, p_x)
        dx_dpy = sum(dg_db(qy, p_y) * g(qx, p_x) * pixel(x, qy, qx) for qy, qx in corners)
        dx_dpx = sum(g(qy, p_y) * dg_db(qx, p_x) * pixel(x, qy, qx) for qy, qx in corners)
        w_m = weight[0, 0, a, b] * mask[0, k, I, J]
        for coord, channel, by_hand in (("dy", 2 * k, w_m * dx_dpy), ("dx", 2 * k + 1, w_m * dx_dpx)):
            library = grads.grad_offset[0, channel, I, J]
            numeric = central_difference(channel)
            print(f"{k:2d}  {coord}    {by_hand:+.8f}  {library:+.8f}  {numeric:+.8f}")
            assert np.isclose(by_hand, library, rtol=1e-12, atol=1e-12)
            assert np.isclose(numeric, library, rtol=1e-6, atol=1e-8)

# Only the offsets of position (I, J) move y[0, 0, I, J].
others = grads.grad_offset.copy()
others[0, :, I, J] = 0
assert not others.any()

# %% [markdown]
# ## 4. The kink convention: right derivatives at integer coordinates
#
# `g(a, b)` has a corner where `b` is an integer (`b = a - 1, a, a + 1`), so `x(p)` is not
# differentiable when `p_y` or `p_x` is an integer. Every floor-based implementation (the
# official DCN code, torchvision, mmcv, refdyn) returns the **right derivative** there: with
# `p_y` an integer, `floor(p_y) = p_y`, `ly = 0`, and the formula becomes the forward difference
# between rows `p_y + 1` and `p_y`.
#
# A central finite difference straddles the kink and returns the average of the left and right
# slopes, so it cannot check such a point. That is why section 1 drew the offsets with
# `kink_free_values`, which keeps every sampling point a margin (0.1 here) away from the integers,
# much more than the finite-difference step.

# %%
p_y, p_x = 2.0, 1.3          # an integer row: a kink in p_y
right_derivative, _ = sample_point_grad(x, p_y, p_x)
h = 1e-6
right_slope = (sample_point(x, p_y + h, p_x) - sample_point(x, p_y, p_x)) / h
left_slope = (sample_point(x, p_y, p_x) - sample_point(x, p_y - h, p_x)) / h
central = (sample_point(x, p_y + h, p_x) - sample_point(x, p_y - h, p_x)) / (2 * h)
print(f"at p = ({p_y}, {p_x}):")
print(f"  refdyn d x(p)/d p_y     = {right_derivative:+.6f}")
print(f"  right one-sided slope   = {right_slope:+.6f}")
print(f"  left one-sided slope    = {left_slope:+.6f}")
print(f"  central difference      = {central:+.6f}  (the mean of the two: useless as a check)")
assert np.isclose(right_derivative, right_slope, atol=1e-6)
assert np.isclose(central, (left_slope + right_slope) / 2, atol=1e-6)

# %% [markdown]
# ## 5. torchvision vs mmcv at the coordinate -1
#
# With zero offsets (how a DCN layer starts training: its offset branch is initialised to zero),
# padding 1 and a 3 x 3 kernel, the top row of taps of every output in the first row samples at
# `p_y = -1` **exactly**. There `x(p) = 0` (the whole row -1 is padding), but moving `p_y` up by `h`
# gives `h * x[0, p_x]`: the right derivative is `x[0, p_x]`, the left one is 0.
#
# * torchvision computes its coordinate gradient with no early exit, which gives the right
#   derivative: `w_k * m_k * x[0, p_x]` (`coord_grad="torchvision"`, refdyn's default);
# * mmcv and the official DCNv2 code return 0 whenever `p_y <= -1` (`coord_grad="mmcv"`).
#
# (pytorch/vision issue 6885.) The forward values are identical; only the offset gradient of
# these taps differs.

# %%
I0, J0 = 0, 2                # an output in the first row
zero_offsets = dict(layer, offset=np.zeros_like(offset))
one_hot = np.zeros_like(output)
one_hot[0, 0, I0, J0] = 1.0
rules = {rule: refdyn.deform_conv2d_backward(one_hot, image, **zero_offsets, coord_grad=rule)
         for rule in ("torchvision", "mmcv")}
print(f"output ({I0}, {J0}), zero offsets: d y / d dy_k for the top row of taps (p_y = -1)")
print(" k  p            torchvision   mmcv   w_k*m_k*x[0,p_x]")
for b in range(KW):
    k = b                     # a = 0
    p_x = J0 - PAD + b
    expected = weight[0, 0, 0, b] * mask[0, k, I0, J0] * x[0, p_x]
    tv = rules["torchvision"].grad_offset[0, 2 * k, I0, J0]
    mm = rules["mmcv"].grad_offset[0, 2 * k, I0, J0]
    print(f"{k:2d}  (-1, {p_x})     {tv:+.6f}    {mm:+.1f}   {expected:+.6f}")
    assert np.isclose(tv, expected, rtol=1e-12) and mm == 0.0
# The other taps of this output sample inside the image, where the two rules agree.
assert np.array_equal(rules["torchvision"].grad_offset[0, 2 * KW:, I0, J0],
                      rules["mmcv"].grad_offset[0, 2 * KW:, I0, J0])

# %% [markdown]
# ## 6. The sampling grid, drawn
#
# The regular 3 x 3 grid `p0 + p_k` of output `(2, 1)` (hollow circles) and the deformed grid
# `p0 + p_k + dp_k` (dots) over the input image, whose pixel values are printed in the corner of
# each cell; the grey ring is the zero padding. For the tap with the largest offset, the four
# neighbours `q` that bilinear sampling reads are marked with squares. Set `REFDYN_FIGURES` to choose the output folder (default `docs/figures/`).

# %%
figure_dir = figure_directory(globals().get("__file__"))

fig, ax = plt.subplots(figsize=(6, 6.6))
padded = np.pad(x, PAD)       # the zero ring that the zeros rule reads outside the image
ax.add_patch(plt.Rectangle((-1.5, -1.5), 7, 7, facecolor="0.93", edgecolor="0.5",
                           linestyle="--", zorder=0))
ax.imshow(x, cmap="Blues", extent=(-0.5, 4.5, 4.5, -0.5), alpha=0.6, zorder=1)
for (row, col), v in np.ndenumerate(padded):
    ax.text(col - PAD - 0.42, row - PAD - 0.32, f"{v:g}", ha="left", va="center",
            color="0.35", fontsize=7, zorder=2)
regular = np.array([(I - PAD + a, J - PAD + b) for a in range(KH) for b in range(KW)], dtype=float)
deformed = np.array([sampling_point(a, b) for a in range(KH) for b in range(KW)])
for (ry, rx), (sy, sx) in zip(regular, deformed):
    ax.annotate("", xy=(sx, sy), xytext=(rx, ry),
                arrowprops=dict(arrowstyle="->", color="tab:red", lw=1))
ax.scatter(regular[:, 1], regular[:, 0], s=80, facecolors="none", edgecolors="black",
           label="regular grid  p0 + p_k")
ax.scatter(deformed[:, 1], deformed[:, 0], s=30, color="tab:red",
           label="deformed grid  p0 + p_k + dp_k")
k_big = int(np.argmax(np.hypot(*(deformed - regular).T)))
corners = np.array(neighbours(*deformed[k_big]))
ax.scatter(corners[:, 1], corners[:, 0], marker="s", s=120, facecolors="none",
           edgecolors="tab:orange", linewidths=1.5, label=f"neighbours q of tap k={k_big}")
ax.set_xlim(-1.6, 5.6)
ax.set_ylim(5.6, -1.6)
ax.set_xlabel("p_x (column)")
ax.set_ylabel("p_y (row)")
ax.set_title(f"Sampling points of output ({I}, {J}), 3x3 kernel, padding 1")
ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.09), ncol=2, fontsize=8)
figure_path = figure_dir / "deformable_sampling_grid.png"
fig.savefig(figure_path, dpi=120, bbox_inches="tight")
plt.close(fig)
print(f"wrote {figure_path}")

# %% [markdown]
# ## 7. Every gradient at once
#
# `refdyn.finite_differences.gradcheck` repeats the finite-difference check of section 3 for every entry
# of every input, with a random `grad_output`. It passes here because no sampling point is near
# a kink.

# %%
result = gradcheck(lambda **kw: refdyn.deform_conv2d(padding=PAD, **kw),
                   lambda go, **kw: refdyn.deform_conv2d_backward(go, padding=PAD, **kw),
                   dict(input=image, offset=offset, weight=weight, bias=bias, mask=mask))
for name, error in result.max_abs_error.items():
    print(f"grad_{name:7s} max |analytic - finite difference| = {error:.2e}")
