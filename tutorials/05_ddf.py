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
# # Decoupled dynamic filters (DDF) by hand
#
# This tutorial computes **one output pixel** of the DDF operation from its two decoupled
# filters, shows what **filter normalization** (FN) does to predicted filter values, compares
# the **cost** of DDF with standard, depth-wise and full dynamic convolution, and fits a small
# **DDF-Up** to upsample an image with guidance. Every number is checked against `refdyn`; the
# derivations are in `docs/ddf.md`.
#
# The operation (DDF, Zhou et al., CVPR 2021), for channel `c` and output pixel `i`:
#
# ```
# out[c, i] = sum_{j in window(i)}  D_sp[i][tap(j)] * D_ch[c][tap(j)] * F[c, j]
# ```
#
# The spatial filter `D_sp` has one k x k filter **per pixel** (shared by the channels), the
# channel filter `D_ch` one k x k filter **per channel** (shared by the pixels). Their product
# is a depth-wise dynamic filter, one k x k filter per channel and pixel, that is never stored.
#
# The script runs top to bottom (`python tutorials/05_ddf.py`) and stops with an
# `AssertionError` if the library disagrees with the hand computation.

# %%

import matplotlib

matplotlib.use("Agg")  # no window: the figures are written to files
import matplotlib.pyplot as plt
import numpy as np

import refdyn
from refdyn.plot import figure_directory
from refdyn.ddf_numpy import ddf_literal
from refdyn.ddf_block import ddf_up, ddf_up_backward, init_branch_params, pixel_unshuffle, \
    spatial_branch
from refdyn.ddf_cost import conv2d_multiply_adds, conv2d_parameters, ddf_multiply_adds, \
    ddf_parameters, depthwise_conv2d_multiply_adds, dynamic_filter_multiply_adds, \
    dynamic_filter_parameters
from refdyn.ddf_filter_norm_numpy import nonlinearity_gain

np.set_printoptions(precision=4, suppress=True)

# %% [markdown]
# ## 1. A tiny layer
#
# One image with two channels of 5 x 5 pixels, a 3 x 3 kernel, stride 1, dilation 1, one head.
# Shapes: features `(N, C, H, W)`, channel filter `(N, C, k, k)`, spatial filter
# `(N, k*k, H, W)` (tap `t = ky * k + kx` in channel `t`), output `(N, C, H, W)`.

# %%
rng = np.random.default_rng(5)
K = 3
features = rng.integers(0, 10, size=(1, 2, 5, 5)).astype(np.float64)
channel_filter = np.round(rng.normal(size=(1, 2, K, K)), 1)
spatial_filter = np.round(rng.normal(size=(1, K * K, 5, 5)), 1)
print("features, channel 1:")
print(features[0, 1])
print("channel filter of channel 1:")
print(channel_filter[0, 1])

# %% [markdown]
# ## 2. One output pixel by hand
#
# We compute `out[0, 1, 0, 2]`: channel 1, the output pixel `i = (0, 2)` on the top row, so the
# top row of its window lies in the zero padding. Tap `(ky, kx)` reads the input pixel
# `p_j = p_i + (ky - 1, kx - 1)`: the window is centred on `p_i` and the filter is **not**
# flipped (a cross-correlation, as in the official CUDA code; the paper writes the index as
# `p_i - p_j`).

# %%
C, I, J = 1, 0, 2
x = features[0, C]
total = 0.0
print(" tap    p_j       F[c,j]  D_sp[i][t]  D_ch[c][t]  product")
for ky in range(K):
    for kx in range(K):
        t = ky * K + kx
        y, xx = I + ky - 1, J + kx - 1
        inside = 0 <= y < 5 and 0 <= xx < 5
        value = x[y, xx] if inside else 0.0                    # zero padding
        d_sp = spatial_filter[0, t, I, J]
        d_ch = channel_filter[0, C, ky, kx]
        term = d_sp * d_ch * value + 0.0                      # + 0.0: print 0, not -0
        total += term
        print(f"({ky},{kx})  ({y:2d},{xx:2d})  {value:6.1f}{'' if inside else '*'}"
              f"  {d_sp:+10.1f}  {d_ch:+10.1f}  {term:+9.3f}")
output = refdyn.ddf(features, channel_filter, spatial_filter, K)
print("(* = outside the image: reads 0)")
print(f"\nby hand:    out[0,{C},{I},{J}] = {total:.10f}")
print(f"refdyn.ddf_numpy: out[0,{C},{I},{J}] = {output[0, C, I, J]:.10f}")
assert np.isclose(total, output[0, C, I, J], rtol=1e-12, atol=1e-12)
assert np.allclose(ddf_literal(features, channel_filter, spatial_filter, K), output,
                   rtol=1e-12, atol=1e-12)

# %% [markdown]
# The last line also checks the loop-by-loop `ddf_literal` against the vectorized `ddf` on every
# output pixel.
#
# ## 3. The depth-wise dynamic filter it decouples
#
# Multiplying the two filters gives one k x k filter per channel **and** pixel,
# `D[c, i][t] = D_sp[i][t] * D_ch[c][t]`: a depth-wise dynamic filter. Applying that full filter
# directly gives the same output, but it has `C * k*k * H * W` values per image where DDF
# predicts `k*k * H * W + C * k*k`.

# %%
full_filter = spatial_filter[0][None] * channel_filter[0].reshape(2, K * K)[:, :, None, None]
padded = np.pad(features[0], ((0, 0), (1, 1), (1, 1)))
direct = np.zeros((2, 5, 5))
for c in range(2):
    for i in range(5):
        for j in range(5):
            window = padded[c, i:i + K, j:j + K].reshape(-1)
            direct[c, i, j] = np.dot(full_filter[c, :, i, j], window)
assert np.allclose(direct, output[0], rtol=1e-12, atol=1e-12)
print(f"full depth-wise dynamic filter: {full_filter.size} values; "
      f"DDF: {spatial_filter[0].size} + {channel_filter[0].size} = "
      f"{spatial_filter[0].size + channel_filter[0].size} values")

# %% [markdown]
# ## 4. Filter normalization
#
# The branches predict raw filters whose scale depends on the input and on the branch weights,
# so they can be very large or very small. FN rescales each filter over its own k*k taps:
#
# ```
# D = alpha * (D_raw - mean(D_raw)) / (std(D_raw) + eps) + beta
# ```
#
# The official spatial branch uses `alpha = gain / k` (`gain = sqrt(2)` after ReLU, 1 for
# "linear"), `beta = 0`, the unbiased standard deviation and `eps = 1e-10`
# (`refdyn.ddf_filter_norm_numpy.spatial_filter_norm`). Below, a spatial branch with
# deliberately large weights predicts the raw filters of a 16 x 16 image.

# %%
layer_features = rng.normal(size=(1, 8, 16, 16))
params = init_branch_params(8, K, se_ratio=0.25, rng=rng)
params.spatial_weight *= 20.0
params.spatial_bias += 5.0
raw = (np.einsum("oc,nchw->nohw", params.spatial_weight, layer_features)
       + params.spatial_bias[None, :, None, None])
normalized = spatial_branch(layer_features, params, K)
gain = nonlinearity_gain("relu")
per_pixel = normalized.reshape(K * K, -1)
print(f"raw filters:        mean {raw.mean():+.3f}, std {raw.std():.3f}, "
      f"range [{raw.min():.1f}, {raw.max():.1f}]")
print(f"after FN:           mean {normalized.mean():+.3f}, std {normalized.std():.3f}")
print(f"each filter's std:  {per_pixel.std(axis=0, ddof=1).min():.6f} .. "
      f"{per_pixel.std(axis=0, ddof=1).max():.6f} (gain / k = {gain / K:.6f})")
assert np.allclose(per_pixel.mean(axis=0), 0, atol=1e-12)
assert np.allclose(per_pixel.std(axis=0, ddof=1), gain / K, rtol=1e-9)
assert np.allclose(refdyn.filter_norm(raw, 1, gain / K), normalized, rtol=1e-12, atol=1e-12)

# %%
figure_dir = figure_directory(globals().get("__file__"))

fig, (before, after) = plt.subplots(1, 2, figsize=(9, 3.4))
before.hist(raw.ravel(), bins=60, color="tab:gray")
before.set_title("raw spatial filter values")
before.set_xlabel("value")
after.hist(normalized.ravel(), bins=60, color="tab:orange")
for edge in (-gain / K, gain / K):
    after.axvline(edge, color="black", linestyle="--", linewidth=1)
after.set_title("after FN (dashed: +- gain / k)")
after.set_xlabel("value")
fig.tight_layout()
histogram_path = figure_dir / "ddf_filter_norm_histogram.png"
fig.savefig(histogram_path, dpi=120)
plt.close(fig)
print(f"wrote {histogram_path}")

# %% [markdown]
# ## 5. Cost: parameters and multiply-adds
#
# A 3 x 3 layer with C = 256 channels on a 28 x 28 map (the size of a ResNet-50 stage-3 layer),
# counted with `refdyn.ddf_cost` (one multiply-add per product; the DDF count includes both
# branches and FN). The "full dynamic filter" predicts a `C x C x k x k` filter per pixel with a
# 1 x 1 convolution.

# %%
CH, SIZE = 256, 28
rows = [
    ("standard convolution", conv2d_parameters(CH, CH, K),
     conv2d_multiply_adds(1, CH, CH, SIZE, SIZE, K)),
    ("depth-wise convolution", conv2d_parameters(CH, CH, K, groups=CH),
     depthwise_conv2d_multiply_adds(1, CH, SIZE, SIZE, K)),
    ("full dynamic filter", dynamic_filter_parameters(CH, CH, K),
     dynamic_filter_multiply_adds(1, CH, CH, SIZE, SIZE, K)),
    ("DDF block", ddf_parameters(CH, K), ddf_multiply_adds(1, CH, SIZE, SIZE, K).total),
]
print(f"{'layer':24s} {'parameters':>14s} {'multiply-adds':>16s} {'/ depth-wise':>13s}")
depthwise_cost = rows[1][2]
for name, parameters, multiply_adds in rows:
    ratio = multiply_adds / depthwise_cost
    print(f"{name:24s} {parameters:14,d} {multiply_adds:16,d} {ratio:13.1f}")
ddf_cost = ddf_multiply_adds(1, CH, SIZE, SIZE, K)
print(f"DDF by piece: operator {ddf_cost.operator:,}, spatial branch {ddf_cost.spatial_branch:,}, "
      f"channel branch {ddf_cost.channel_branch:,}")
assert rows[3][2] < 6 * depthwise_cost < rows[0][2]       # depth-wise level, far below standard
assert rows[3][1] < rows[0][1]                            # fewer parameters than the convolution

# %% [markdown]
# ## 6. DDF-Up: upsampling with guidance
#
# DDF-Up upsamples by `r` with `r*r` DDF operations at stride 1, one per sub-pixel offset
# `(a, b)`, each with its own pair of branches; its spatial branches read **guidance** features
# instead of the input. The `r*r` outputs are interleaved (pixel shuffle): term `a * r + b`
# fills the output pixels `(r y + a, r x + b)`.
#
# The task: a 32 x 32 depth map (piecewise constant: a disc and a box in front of a wall) is
# known only at 16 x 16 (averages of 2 x 2 blocks), and a 32 x 32 colour photo of the same scene
# is the guide. The photo's pixels are rearranged to the 16 x 16 grid with `pixel_unshuffle`
# (each low-resolution pixel gets the 3 x 2 x 2 = 12 photo values it covers), so the spatial
# filters can see where inside a low-resolution pixel an edge lies.
#
# The branch weights are fitted to this one image with Adam, using `ddf_up_backward`. This
# demonstrates the operator and its gradients, not a trained model: the comparison that
# matters is with the same fit **without guidance** (the spatial branches then read the
# low-resolution depth itself) and with nearest-neighbour upsampling.

# %%
R, HIGH = 2, 32
yy, xx = np.mgrid[0:HIGH, 0:HIGH] + 0.5
regions = np.zeros((HIGH, HIGH), dtype=int)
regions[(yy - 13) ** 2 + (xx - 12) ** 2 < 8.5 ** 2] = 1
regions[(yy > 20) & (xx > 17) & (xx < 29)] = 2
depth = np.array([0.2, 0.8, 0.5])[regions]
colours = np.array([[0.3, 0.5, 0.7], [0.9, 0.4, 0.2], [0.2, 0.8, 0.3]])
photo = colours[regions].transpose(2, 0, 1) + 0.05 * rng.standard_normal((3, HIGH, HIGH))
target = depth[None, None]
low = depth.reshape(HIGH // R, R, HIGH // R, R).mean(axis=(1, 3))[None, None]
guide = pixel_unshuffle(photo[None], R).reshape(1, 3 * R * R, HIGH // R, HIGH // R)


def fit(guidance, guide_channels, steps=400, learning_rate=0.02):
    """Adam on the mean squared error of ddf_up(low, guidance) against the target."""
    fit_rng = np.random.default_rng(1)
    branches = [init_branch_params(1, K, guide_channels=guide_channels, se_ratio=1.0,
                                   nonlinearity="linear", rng=fit_rng) for _ in range(R * R)]
    moments = [{name: (np.zeros_like(v), np.zeros_like(v)) for name, v in b.arrays().items()}
               for b in branches]
    for step in range(1, steps + 1):
        upsampled = ddf_up(low, guidance, R, branches)
        grads = ddf_up_backward(2 * (upsampled - target) / upsampled.size, low, guidance, R,
                                branches)
        for params, grad, moment in zip(branches, grads.grad_branches, moments):
            for name, gradient in grad.arrays().items():
                first, second = moment[name]
                first[...] = 0.9 * first + 0.1 * gradient
                second[...] = 0.999 * second + 0.001 * gradient ** 2
                step_size = learning_rate * (first / (1 - 0.9 ** step))
                getattr(params, name)[...] -= step_size / (
                    np.sqrt(second / (1 - 0.999 ** step)) + 1e-8)
    return ddf_up(low, guidance, R, branches)


guided = fit(guide, 3 * R * R)
self_guided = fit(None, 1)
nearest = np.kron(low, np.ones((R, R)))
errors = {name: float(np.mean((image - target) ** 2)) for name, image in
          (("nearest neighbour", nearest), ("DDF-Up, no guidance", self_guided),
           ("DDF-Up, photo guidance", guided))}
for name, error in errors.items():
    print(f"{name:24s} mean squared error {error:.5f}")
assert errors["DDF-Up, photo guidance"] < 0.5 * errors["DDF-Up, no guidance"]
assert errors["DDF-Up, photo guidance"] < 0.5 * errors["nearest neighbour"]

# %%
panels = [("low resolution 16 x 16", low[0, 0]), ("nearest neighbour", nearest[0, 0]),
          ("DDF-Up, no guidance", self_guided[0, 0]),
          ("DDF-Up, photo guidance", guided[0, 0]), ("target 32 x 32", depth)]
fig, axes = plt.subplots(1, 6, figsize=(15, 2.9))
axes[0].imshow(np.clip(photo.transpose(1, 2, 0), 0, 1))
axes[0].set_title("guide photo 32 x 32", fontsize=9)
for axis, (title, image) in zip(axes[1:], panels):
    axis.imshow(image, cmap="viridis", vmin=0.1, vmax=0.9)
    axis.set_title(title, fontsize=9)
for axis in axes:
    axis.set_xticks([])
    axis.set_yticks([])
fig.tight_layout()
upsampling_path = figure_dir / "ddf_up_guided_upsampling.png"
fig.savefig(upsampling_path, dpi=120)
plt.close(fig)
print(f"wrote {upsampling_path}")
