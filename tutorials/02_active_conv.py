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
# # Active convolution: learning where the taps sit
#
# An active convolution (Jeon & Kim 2017; the MXNet port in Wang Hao's technical note) is a
# deformable convolution whose offsets are **parameters of the layer**: one `(dy, dx)` per
# kernel tap, shared by every output position and every image,
#
# ```
# y(p0) = sum_k  w_k * x(p0 + p_k + theta_k)          (DCNv1 Eq. 2 with dp_k = theta_k)
# ```
#
# with `x(p)` the bilinear sampling of DCNv1 Eq. 3-4 and `theta` of shape `(K, 2)`.
#
# This tutorial trains `theta` by plain gradient descent in NumPy. The weights are frozen at
# the weights of a **target layer with dilation 2**, so the only thing to learn is where the nine
# taps should sit, and we know the answer. We compare the raw gradient with the per-tap
# normalized gradient of the Caffe layer and the technical note, sweep the offset learning-rate
# factor over the technical note's values `{1, 0.1, 0.05, 0.01}`, and add one run with a
# warm-up. Then come the two equivalent routes to the position gradient and the two boundary
# rules.
#
# The derivation is in `docs/active_conv.md`. The script runs top to bottom
# (`python tutorials/02_active_conv.py`, under 20 s on two cores) and stops with an
# `AssertionError` if the library stops behaving as described.

# %%
import time

import matplotlib

matplotlib.use("Agg")  # no window: the figures are written to files
import matplotlib.pyplot as plt
import numpy as np

import refdyn
from refdyn.plot import figure_directory
from refdyn.active_conv_numpy import (active_conv2d_backward_literal, active_conv2d_literal, centre_tap,
                                normalized_position_gradient, position_update, ring_positions)
from refdyn.bilinear_numpy import sample_point, sample_point_grad
from refdyn.finite_differences import kink_free_values
from refdyn.testing.independent import plain_conv2d

np.set_printoptions(precision=4, suppress=True)
started = time.perf_counter()

# %% [markdown]
# ## 1. The target, and the positions that reproduce it
#
# One image of 3 channels, 12 x 12 pixels: Gaussian-smoothed noise (sigma 1.5 pixels). The
# smoothing matters: gradient descent on positions only sees as far as the image stays
# correlated, and on white noise it gets stuck (the end of section 4 shows it). The target
# layer is a 3 x 3 convolution with 4 output channels, **dilation 2 and padding 2**, computed
# twice: with `refdyn.deform_conv2d` and zero offsets, and with `plain_conv2d`, a
# strided-window implementation that shares no code with refdyn.
#
# `active_conv2d` has no dilation argument: its taps start on the dilation-1 grid
# `p_k = (a, b)` and `theta_k` moves them. With padding 1 the sampling point of tap `(a, b)` at
# output `(i, j)` is `(i - 1 + a + dy_k, j - 1 + b + dx_k)`; the target samples
# `(i - 2 + 2a, j - 2 + 2b)`. Both layers have a 12 x 12 output, and they sample the same points
# when
#
# ```
# theta*_k = (a - 1, b - 1)
# ```
#
# i.e. every tap moves by its own place relative to the centre: the centre stays, the edge taps
# move by one pixel, the corner taps by one pixel along each axis. Measured from the centre,
# tap `k` then sits at `2 (a - 1, b - 1)`, the dilation-2 grid. Where the target reads its
# zero padding two pixels outside the image, the active layer (boundary `zeros`, the default)
# reads 0 as well, so the match is exact at the border outputs too.

# %%
KH = KW = 3
K = KH * KW
CENTRE = centre_tap(KH, KW)              # k = 4, the tap that never moves
GRID = np.array([(a - 1.0, b - 1.0) for a in range(KH) for b in range(KW)])  # place - centre


def smooth_image(rng, shape, sigma):
    """Gaussian-smoothed white noise, zero mean, unit standard deviation."""
    radius = int(np.ceil(3 * sigma))
    taps = np.exp(-np.arange(-radius, radius + 1) ** 2 / (2 * sigma ** 2))
    taps /= taps.sum()
    noise = rng.standard_normal(shape[:-2] + (shape[-2] + 2 * radius, shape[-1] + 2 * radius))
    rows = np.apply_along_axis(np.convolve, -1, noise, taps, mode="valid")
    both = np.apply_along_axis(np.convolve, -2, rows, taps, mode="valid")
    return (both - both.mean()) / both.std()


rng = np.random.default_rng(0)
image = smooth_image(rng, (1, 3, 12, 12), sigma=1.5)
weight = rng.standard_normal((4, 3, KH, KW))
target = refdyn.deform_conv2d(image, np.zeros((1, 2 * K, 12, 12)), weight, padding=2, dilation=2)
assert np.allclose(target, plain_conv2d(image, weight, padding=(2, 2), dilation=(2, 2)),
                   rtol=1e-12, atol=1e-12)

THETA_STAR = GRID.copy()                 # theta*_k = (a - 1, b - 1)
PAD = 1
reproduced = refdyn.active_conv2d(image, THETA_STAR, weight, padding=PAD)
print("target output shape:", target.shape)
print("theta* (dy, dx) per tap k = 3a + b:\n", THETA_STAR)
print(f"max |active_conv2d(theta*) - target| = {np.abs(reproduced - target).max():.1e}")
assert np.allclose(reproduced, target, rtol=1e-12, atol=1e-12)

# %% [markdown]
# The same layer is a deformable convolution whose offset field repeats `theta` at every
# output position (channels `2k` and `2k + 1` hold `dy_k` and `dx_k`). Checked here for an
# arbitrary `theta`:

# %%
theta_any = rng.uniform(-1.5, 1.5, size=(K, 2))
broadcast = np.broadcast_to(theta_any.reshape(1, 2 * K, 1, 1), (1, 2 * K, 12, 12)).copy()
assert np.allclose(refdyn.active_conv2d(image, theta_any, weight, padding=PAD),
                   refdyn.deform_conv2d(image, broadcast, weight, padding=PAD),
                   rtol=1e-12, atol=1e-12)

# %% [markdown]
# ## 2. The loss and the position gradient
#
# The loss is the mean squared error against the target,
# `L = 1/2 * mean((y - target)^2)`, so `dL/dy = (y - target) / y.size` is the `grad_output`
# handed to `active_conv2d_backward`. Because `theta_k` is shared, its gradient is the sum, over
# every output position, of the per-position offset gradients of deformable convolution
# (section 2 of the doc). Checked against `deform_conv2d_backward`:

# %%
def loss_and_gradient(theta, data=None):
    """L = 1/2 mean((y - target)^2) and dL/dtheta, shape (K, 2); data = (image, target)."""
    x, wanted = (image, target) if data is None else data
    residual = refdyn.active_conv2d(x, theta, weight, padding=PAD) - wanted
    grads = refdyn.active_conv2d_backward(residual / residual.size, x, theta, weight, padding=PAD)
    return 0.5 * np.mean(residual ** 2), grads.grad_positions


loss_any, grad_any = loss_and_gradient(theta_any)
residual = refdyn.active_conv2d(image, theta_any, weight, padding=PAD) - target
per_position = refdyn.deform_conv2d_backward(residual / residual.size, image, broadcast, weight,
                                             padding=PAD).grad_offset      # (1, 2K, 12, 12)
assert np.allclose(grad_any, per_position.sum(axis=(0, 2, 3)).reshape(K, 2), rtol=1e-10,
                   atol=1e-14)

# %% [markdown]
# A central finite difference confirms the gradient at a point where no sampling point is on a
# kink (every `theta` coordinate's fractional part is at least 0.1 from an integer; see
# tutorial 01, section 4):

# %%
theta_fd = kink_free_values(rng, (K, 2), -2, 1, margin=0.1)
_, grad_fd = loss_and_gradient(theta_fd)
EPS = 1e-6
numeric = np.zeros((K, 2))
for k in range(K):
    for axis in range(2):
        plus, minus = theta_fd.copy(), theta_fd.copy()
        plus[k, axis] += EPS
        minus[k, axis] -= EPS
        numeric[k, axis] = (loss_and_gradient(plus)[0] - loss_and_gradient(minus)[0]) / (2 * EPS)
print(f"max |analytic - finite difference| = {np.abs(numeric - grad_fd).max():.1e}"
      f"   (largest gradient entry {np.abs(grad_fd).max():.2f})")
assert np.allclose(numeric, grad_fd, rtol=1e-5, atol=1e-8)

# %% [markdown]
# ## 3. Training the positions
#
# Two starts:
#
# * the **ring** (`ring_positions`): the Caffe layer's start, the centre tap at the centre and
#   the other eight on a circle of radius 1 around it (the Caffe layer adds a little Gaussian
#   jitter by default; `ring_positions` does not). In `theta` terms the edge taps stay on the
#   grid and the corner taps are pulled `1 - 1/sqrt(2) = 0.29` pixels towards the centre in each
#   axis, so the corners must travel `sqrt(2) (1 + 0.29) = 1.83` pixels to the target;
# * **zero** (`theta = 0`, the plain 3 x 3 grid): the MXNet port's start, and also what the
#   published Caffe prototxt gets, because its `pos_filler_std: -1` rounds the ring to integers.
#
# `position_update` does one step of the papers' rule,
#
# ```
# theta <- theta - lr * offset_lr_factor * g
#     g = dL/dtheta (raw)   or   g_k / |g_k| for each tap k (normalized)
# ```
#
# with the centre tap (`CENTRE`, the Caffe layer's synapse 0) held fixed and, optionally, no
# step at all during the first `warmup_steps` steps. With `lr = 1` a normalized step moves every
# tap by exactly `offset_lr_factor` pixels; a raw step moves it by `offset_lr_factor * |g_k|`,
# which depends on the image contrast, the weights and how the loss is scaled. The absolute
# step sizes have nothing to do with the technical note's (its base learning rate and
# iteration count were those of a DeepLab training run); only the factors are the same values.

# %%
LR = 1.0
STEPS = 300
FACTORS = (1.0, 0.1, 0.05, 0.01)
TOLERANCE = 0.1                          # "learned": every tap within 0.1 px of theta*


def tap_errors(theta):
    """Distance of each tap from its target position, in pixels."""
    return np.hypot(*(theta - THETA_STAR).T)


def train(start, *, normalize, factor, warmup_steps=0, steps=STEPS, data=None):
    """Gradient descent on the positions only; returns the loss per step and the trajectory."""
    theta = start.copy()
    losses, trajectory = [], [theta.copy()]
    for step in range(steps):
        loss, grad = loss_and_gradient(theta, data)
        losses.append(loss)
        theta = position_update(theta, grad, LR, offset_lr_factor=factor, normalize=normalize,
                                fixed_taps=(CENTRE,), step=step, warmup_steps=warmup_steps)
        trajectory.append(theta.copy())
    losses.append(loss_and_gradient(theta, data)[0])
    return np.array(losses), np.array(trajectory)


def first_step_within(trajectory, tolerance=TOLERANCE):
    """First step after which every tap is within `tolerance` of theta* (None if never)."""
    inside = np.array([tap_errors(theta).max() < tolerance for theta in trajectory])
    hits = np.flatnonzero(inside)
    return int(hits[0]) if hits.size else None


RING = ring_positions(KH, KW)
print("ring start theta (dy, dx):\n", RING)
print("its places relative to the centre (all at distance 1 except the centre):",
      np.round(np.hypot(*(GRID + RING).T), 3))
runs = {}
for normalize in (True, False):
    for factor in FACTORS + (() if normalize else (2.0,)):
        name = f"{'normalized' if normalize else 'raw'}, factor {factor:g}"
        runs[name] = train(RING, normalize=normalize, factor=factor)

print(f"\nstart: ring, {STEPS} steps, lr {LR:g}; error = distance of the worst tap from theta*")
print(f"{'setting':26s} {'loss at start':>13s} {'final loss':>11s} {'final error':>11s}"
      f" {'max error':>9s}  within {TOLERANCE:g} px from step")
for name, (losses, trajectory) in runs.items():
    errors = [tap_errors(theta).max() for theta in trajectory]
    reached = first_step_within(trajectory)
    print(f"{name:26s} {losses[0]:13.4f} {losses[-1]:11.2e} {errors[-1]:11.4f} {max(errors):9.2f}"
          f"  {'never' if reached is None else reached}")

# %% [markdown]
# What this shows (and the asserts below pin down):
#
# * **Normalized, factor 1**: every step moves each tap by a full pixel, the size of one
#   bilinear cell, so the taps hop around near their targets and the loss stalls at about a
#   quarter of its start, never settling. This is the small-scale version of the technical
#   note's `offset_lr_rate = 1` run, whose offsets ended hundreds of pixels away on a 64 x 128
#   feature map (mIOU 68.5, the worst of the four).
# * **Normalized, 0.1 / 0.05 / 0.01**: a normalized step has a fixed length, so the taps walk
#   to the target and then **keep stepping back and forth across it**: the final error is one
#   to two steps (0.17, 0.09 and 0.010 pixels), and the loss stops decreasing at a floor set by
#   the factor. Smaller factors are more precise but slower: 0.01 needs at least 183 steps just
#   to cover the 1.83 pixels. A real training has the same trade-off between precision and
#   speed, and the technical note found a middle value (0.05) best.
# * **Raw gradient**: the step shrinks with the gradient, so with a suitable learning rate
#   (factor 1 here) the positions converge to `theta*` to machine precision. But which rate is
#   suitable depends on the scale of the gradient: factor 2 never settles (section 4 measures the
#   curvature of the loss near `theta*`; gradient descent needs `lr < 2 / curvature`, about 1.3
#   here), and factor 0.01 is still more than a pixel away after 300 steps. Summing the loss
#   instead of averaging it would multiply every raw step by 576 and change no normalized step.

# %%
final_error = {name: tap_errors(trajectory[-1]).max() for name, (_, trajectory) in runs.items()}
for name, (losses, _) in runs.items():
    if name in ("normalized, factor 0.1", "normalized, factor 0.05", "normalized, factor 0.01",
                "raw, factor 1", "raw, factor 0.1"):
        assert losses[-1] < 1e-2 * losses[0], name              # final loss << initial loss
assert final_error["raw, factor 1"] < 1e-6                      # exact recovery
assert final_error["normalized, factor 0.01"] < 0.02            # within about one step
assert final_error["normalized, factor 0.05"] < TOLERANCE
assert final_error["normalized, factor 0.1"] < 2 * TOLERANCE
assert final_error["normalized, factor 1"] > 0.3                # never settles
assert final_error["raw, factor 2"] > 0.3                       # step too large for the curvature
assert final_error["raw, factor 0.01"] > 0.3                    # too slow for 300 steps
assert np.all(np.array([t[CENTRE] for t in runs["raw, factor 1"][1]]) == 0)   # centre fixed

# %% [markdown]
# ## 4. Kinks, and what the target looks like to gradient descent
#
# `theta*` is an integer vector: at the target **every** sampling point lies on the integer
# lattice, which is where bilinear sampling has its kinks (tutorial 01, section 4). Along one
# coordinate of one tap the loss is piecewise quadratic, with a new piece every time that tap
# crosses an integer coordinate:
#
# * with the other taps at the target, the residual vanishes at `theta*`, so both one-sided
#   slopes are 0 there; only the curvature changes. That is why the raw gradient can converge
#   exactly onto a kink (and, one pixel either side, the slope does jump);
# * with the other taps elsewhere (here: at the ring start), the loss has a **corner** at every
#   integer: the slope jumps. refdyn returns the right derivative there (the slope of the piece
#   to the right), so a tap sitting exactly on an integer sees only one side. Starting from
#   `theta = 0` puts every tap on such a corner.
#
# The slice below moves `dy` of tap 0 (top-left) through `theta*_0 = (-1, -1)`.

# %%
TAP, AXIS = 0, 0
shifts = np.round(np.arange(-1.5, 1.5001, 0.01), 10)


def slice_of(base):
    """L and the library's dL/d theta[TAP, AXIS] along theta = base + shift * e."""
    values, slopes = [], []
    for shift in shifts:
        theta = base.copy()
        theta[TAP, AXIS] = THETA_STAR[TAP, AXIS] + shift
        loss, grad = loss_and_gradient(theta)
        values.append(loss)
        slopes.append(grad[TAP, AXIS])
    return np.array(values), np.array(slopes)


others_at_target, slope_target = slice_of(THETA_STAR)
others_at_ring, slope_ring = slice_of(RING)

h = 1e-7
for label, base in (("others at theta*", THETA_STAR), ("others at the ring start", RING)):
    for shift in (-1.0, 0.0, 1.0):
        theta = base.copy()
        theta[TAP, AXIS] = THETA_STAR[TAP, AXIS] + shift
        loss = loss_and_gradient(theta)[0]
        up, down = theta.copy(), theta.copy()
        up[TAP, AXIS] += h
        down[TAP, AXIS] -= h
        right = (loss_and_gradient(up)[0] - loss) / h
        left = (loss - loss_and_gradient(down)[0]) / h
        library = loss_and_gradient(theta)[1][TAP, AXIS]
        print(f"{label:25s} dy_0 = {theta[TAP, AXIS]:+.0f}: left slope {left:+.5f}  "
              f"right slope {right:+.5f}  refdyn {library:+.5f}")
        assert np.isclose(library, right, atol=1e-5)              # the right derivative
        if label.startswith("others at the ring"):
            assert abs(left - right) > 1e-3                       # a corner in the loss
at_target = THETA_STAR.copy()
assert loss_and_gradient(at_target)[0] < 1e-25 and not loss_and_gradient(at_target)[1].any()

# %% [markdown]
# Around `theta*` the residual is zero, so near it the loss is `1/2 d^T (J^T J) d / M` for a
# displacement `d`, with a Jacobian `J` that depends on which side of the kink each coordinate is
# on. Its largest eigenvalue (the curvature) bounds the raw learning rate: a gradient step
# multiplies the error along that direction by `1 - lr * curvature`, which grows in size once
# `lr > 2 / curvature`. We estimate the Hessian of the 16 free coordinates by differencing the
# library's gradient a little way into two of those pieces (all coordinates above `theta*`,
# all below):

# %%
FREE = [(k, axis) for k in range(K) if k != CENTRE for axis in range(2)]


def hessian_near_target(side, distance=0.05, h=1e-6):
    """Central differences of dL/dtheta at theta* + side * distance (centre tap at 0)."""
    base = THETA_STAR + side * distance
    base[CENTRE] = 0.0
    hessian = np.zeros((len(FREE), len(FREE)))
    for column, (k, axis) in enumerate(FREE):
        up, down = base.copy(), base.copy()
        up[k, axis] += h
        down[k, axis] -= h
        difference = (loss_and_gradient(up)[1] - loss_and_gradient(down)[1]) / (2 * h)
        hessian[:, column] = [difference[kk, aa] for kk, aa in FREE]
    return (hessian + hessian.T) / 2


for side in (+1, -1):
    curvatures = np.linalg.eigvalsh(hessian_near_target(side))
    print(f"all coordinates {'above' if side > 0 else 'below'} theta*: curvature from "
          f"{curvatures.min():.3f} to {curvatures.max():.3f}; raw steps stable for "
          f"lr * factor < {2 / curvatures.max():.2f}")
    assert curvatures.min() > 0 and 1.0 < 2 / curvatures.max() < 2.0

# %% [markdown]
# ### Where it fails: a sharp image
#
# Gradient descent on positions is local. The gradient of a tap says how the image changes one
# pixel around where it samples now, so it can only lead the tap to its target if the image
# stays correlated over the distance still to travel. The smooth image above (sigma 1.5 pixels)
# is correlated over the 1.83 pixels the corner taps have to cover, and every run with a
# workable step size converged (from the ring here, from `theta = 0` in section 5). On **white
# noise**, with the same weights and the same target construction, the normalized run stops in
# a local minimum with most taps well away from their targets, and the raw run at factor 1 is
# no longer stable (a sharper image has larger curvature, so the stable learning rate shrinks).
# Nothing in the operator is wrong here; this is what learning positions by gradient can and
# cannot do.

# %%
noise = np.random.default_rng(2).standard_normal(image.shape)
noise_data = (noise, refdyn.deform_conv2d(noise, np.zeros((1, 2 * K, 12, 12)), weight,
                                          padding=2, dilation=2))
for normalize in (True, False):
    losses, trajectory = train(RING, normalize=normalize, factor=0.05 if normalize else 1.0,
                               data=noise_data)
    errors = tap_errors(trajectory[-1])
    label = "normalized 0.05" if normalize else "raw 1"
    print(f"white noise, {label:15s}: loss {losses[0]:.3f} -> {losses[-1]:.3f}, taps more than "
          f"0.2 px from theta*: {int((errors > 0.2).sum())} of 8, worst {errors.max():.2f} px")
    assert losses[-1] > 0.1 * losses[0] and errors.max() > 1.0    # not learned

# %% [markdown]
# ## 5. Warm-up
#
# The technical note's best Active Convolution run (mIOU 74.2) held the offsets at 0 for the
# first 20 of 53 epochs and then trained them with the normalized gradient at
# `offset_lr_rate = 0.05`. `position_update(..., step=s, warmup_steps=W)` returns the positions
# unchanged while `s < W`.
#
# In this toy the weights are already the target's, so a warm-up has nothing to wait for: it
# only shifts the run by `W` steps, as the assert shows. Its purpose in a real network is to
# let randomly initialised weights become meaningful before their random early gradients push
# the positions around; reproducing that needs the weights to train as well, which this
# tutorial does not do.

# %%
WARMUP = 50
zero = np.zeros((K, 2))
no_warmup_losses, no_warmup_path = train(zero, normalize=True, factor=0.05)
warmup_losses, warmup_path = train(zero, normalize=True, factor=0.05, warmup_steps=WARMUP)
assert np.all(warmup_path[:WARMUP + 1] == 0)                    # held at the start
assert np.allclose(warmup_losses[WARMUP:], no_warmup_losses[:STEPS + 1 - WARMUP])
for name, losses, path in (("zero start, no warm-up", no_warmup_losses, no_warmup_path),
                           (f"zero start, warm-up {WARMUP}", warmup_losses, warmup_path)):
    print(f"{name:24s} loss {losses[0]:.4f} -> {losses[-1]:.2e}, final error "
          f"{tap_errors(path[-1]).max():.4f}, within {TOLERANCE:g} px from step "
          f"{first_step_within(path)}")
    assert tap_errors(path[-1]).max() < TOLERANCE
runs[f"normalized 0.05, zero start, warm-up {WARMUP}"] = (warmup_losses, warmup_path)

# %% [markdown]
# ## 6. The figures
#
# `active_conv_loss.png`: the loss of every run against the step (log scale), normalized runs
# on the left, raw runs on the right (the raw factor-1 run leaves the plot at the bottom: it
# reaches about 1e-31). `active_conv_positions.png`: the path of every tap, drawn
# at its place relative to the centre tap (`(a - 1, b - 1) + theta_k`), from the start
# (open circle) to the end (dot), over the dilation-1 grid (grey squares) and the dilation-2
# target (red crosses). `active_conv_kinks.png`: the loss slice of section 4 and the library's
# right derivative along it. Set `REFDYN_FIGURES` to choose the folder (default `docs/figures/`).

# %%
figure_dir = figure_directory(globals().get("__file__"))


def save(fig, name):
    path = figure_dir / name
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)
    print(f"wrote {path}")


fig, axes = plt.subplots(1, 2, figsize=(11, 4), sharey=True)
colours = dict(zip(FACTORS + (2.0,),
                   ("tab:red", "tab:orange", "tab:green", "tab:blue", "tab:purple")))
for name, (losses, _) in runs.items():
    if "warm-up" in name:
        axes[0].plot(losses, color="black", ls="--", lw=1, label=name)
        continue
    factor = float(name.rsplit(" ", 1)[1])
    ax = axes[0] if name.startswith("normalized") else axes[1]
    ax.plot(losses, color=colours[factor], lw=1.2, label=name)
for ax, title in zip(axes, ("normalized gradient (step = factor px per tap)",
                            "raw gradient (step = factor x gradient)")):
    ax.set_yscale("log")
    ax.set_xlabel("step")
    ax.set_title(title, fontsize=10)
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
axes[0].set_ylabel("L = 1/2 mean (y - target)^2")
axes[1].set_ylim(1e-9, 30)                # raw, factor 1 goes on down to about 1e-31
save(fig, "active_conv_loss.png")

panels = ("normalized, factor 1", "normalized, factor 0.05", "raw, factor 1",
          f"normalized 0.05, zero start, warm-up {WARMUP}")
fig, axes = plt.subplots(1, 4, figsize=(16, 4.4))
for ax, name in zip(axes, panels):
    trajectory = runs[name][1]
    places = GRID[None] + trajectory                            # (steps + 1, K, 2)
    ax.scatter(GRID[:, 1], GRID[:, 0], marker="s", s=70, facecolors="none", edgecolors="0.6",
               label="dilation-1 grid")
    ax.scatter(2 * GRID[:, 1], 2 * GRID[:, 0], marker="x", s=80, color="tab:red",
               label="dilation-2 target")
    for k in range(K):
        ax.plot(places[:, k, 1], places[:, k, 0], lw=0.8, color=plt.cm.tab10(k))
        ax.scatter(places[0, k, 1], places[0, k, 0], s=30, facecolors="none",
                   edgecolors=plt.cm.tab10(k))
        ax.scatter(places[-1, k, 1], places[-1, k, 0], s=18, color=plt.cm.tab10(k))
    ax.set_xlim(-3.2, 3.2)
    ax.set_ylim(3.2, -3.2)
    ax.set_aspect("equal")
    ax.set_xticks(range(-3, 4))
    ax.set_yticks(range(-3, 4))
    ax.grid(alpha=0.3)
    ax.set_xlabel("x relative to the centre tap (px)")
    ax.set_title(f"{name}\nfinal error {tap_errors(trajectory[-1]).max():.3g} px", fontsize=9)
axes[0].set_ylabel("y relative to the centre tap (px)")
axes[0].legend(loc="lower left", fontsize=7)
save(fig, "active_conv_positions.png")

fig, axes = plt.subplots(2, 1, figsize=(7, 6), sharex=True)
axes[0].plot(shifts + THETA_STAR[TAP, AXIS], others_at_target, label="other taps at theta*")
axes[0].plot(shifts + THETA_STAR[TAP, AXIS], others_at_ring, label="other taps at the ring start")
axes[1].plot(shifts + THETA_STAR[TAP, AXIS], slope_target, ".", ms=2)
axes[1].plot(shifts + THETA_STAR[TAP, AXIS], slope_ring, ".", ms=2)
for ax in axes:
    for kink in (-2, -1, 0):
        ax.axvline(kink, color="0.7", lw=0.8, ls=":")
    ax.grid(alpha=0.3)
axes[0].set_ylabel("L")
axes[0].legend(fontsize=8)
axes[0].set_title("Loss along dy of tap 0 (top-left); dotted: integer coordinates (kinks)",
                  fontsize=10)
axes[1].set_ylabel("dL/d dy_0 (refdyn, right derivative)")
axes[1].set_xlabel("dy_0 (target -1)")
save(fig, "active_conv_kinks.png")

# %% [markdown]
# ## 7. Two routes to the position gradient
#
# The technical note points out that the DCN code (and its MXNet Active Convolution port)
# computes the offset gradient as `dL/dcol * dcol/dtheta`, first back-propagating through the
# matrix product to the sampled columns, while the Active Convolution paper writes
# `dL/dy * dy/dtheta`, first differentiating every output with respect to `theta`.
# `active_conv2d_backward_literal` does either, loop by loop (`route="columns"` or
# `route="output"`). They add up the same terms in a different order, so they agree to rounding;
# both agree with the vectorized backward.
#
# A tiny layer with kink-free positions in two **position groups** (output channels 0-1 use
# `theta[0]`, 2-3 use `theta[1]`), then the same with one position set per output channel
# (`(C_out, K, 2)`, the technical note's proposed extension), under both boundary rules.

# %%
tiny_rng = np.random.default_rng(1)
tiny_image = tiny_rng.standard_normal((1, 2, 4, 4))
tiny_weight = tiny_rng.standard_normal((4, 2, KH, KW))
tiny_bias = tiny_rng.standard_normal(4)
tiny_grad_out = tiny_rng.standard_normal((1, 4, 4, 4))
for groups in (2, 4):
    tiny_theta = kink_free_values(tiny_rng, (groups, K, 2), -2, 1, margin=0.1)
    for boundary in ("zeros", "border"):
        args = dict(padding=1, boundary=boundary)
        forward = refdyn.active_conv2d(tiny_image, tiny_theta, tiny_weight, tiny_bias, **args)
        literal = active_conv2d_literal(tiny_image, tiny_theta, tiny_weight, tiny_bias, **args)
        assert np.allclose(forward, literal, rtol=1e-12, atol=1e-12)
        by_route = {route: active_conv2d_backward_literal(tiny_grad_out, tiny_image, tiny_theta,
                                                          tiny_weight, tiny_bias, route=route,
                                                          **args)
                    for route in ("columns", "output")}
        vectorized = refdyn.active_conv2d_backward(tiny_grad_out, tiny_image, tiny_theta,
                                                   tiny_weight, tiny_bias, **args)
        columns, output = by_route["columns"].grad_positions, by_route["output"].grad_positions
        print(f"positions {tiny_theta.shape}, {boundary:6s}: |columns - output| = "
              f"{np.abs(columns - output).max():.1e}, |columns - vectorized| = "
              f"{np.abs(columns - vectorized.grad_positions).max():.1e}")
        assert np.allclose(columns, output, rtol=1e-12, atol=1e-12)
        assert np.allclose(columns, vectorized.grad_positions, rtol=1e-10, atol=1e-12)
        for field in ("grad_input", "grad_weight", "grad_bias"):
            assert np.allclose(getattr(by_route["output"], field), getattr(vectorized, field),
                               rtol=1e-10, atol=1e-12)
print("dL/dtheta of group 0, taps 0-2 (columns route):\n", columns[0, :3])

# %% [markdown]
# ## 8. `zeros` vs `border`
#
# The Caffe layer reads 0 outside the image (`boundary="zeros"`); the technical note's MXNet
# port clamps the sampling point into the image first (`"border"`), which replicates the edge.
# With padding 0 and every tap pulled 0.25 pixels towards the centre, every sample lies in
# `[0.25, H - 1.25]`, strictly inside the image, and the two rules give the same outputs and the
# same gradients:

# %%
go = rng.standard_normal((1, 4, 10, 10))


def both_rules(positions, padding, grad_output):
    """Outputs and position gradients under zeros and border."""
    outs = [refdyn.active_conv2d(image, positions, weight, padding=padding, boundary=b)
            for b in ("zeros", "border")]
    grads = [refdyn.active_conv2d_backward(grad_output, image, positions, weight, padding=padding,
                                           boundary=b).grad_positions for b in ("zeros", "border")]
    return outs, grads


inward = -0.25 * GRID
outs, grads = both_rules(inward, 0, go)
assert np.allclose(outs[0], outs[1], rtol=1e-12, atol=1e-12)
assert np.allclose(grads[0], grads[1], rtol=1e-12, atol=1e-12)

# %% [markdown]
# "Inside" has to mean strictly inside `[0, H - 1)` for the gradients. The ring start with
# padding 0 also keeps every sample in the image (the corner taps move inwards, the edge taps
# stay on the grid), and the outputs agree; but the bottom tap (k = 7) of the last output row
# samples exactly on row `H - 1`, and the right tap (k = 5) of the last column exactly on
# column `W - 1`. There the right derivative looks one pixel outside: under `zeros` it is the
# ramp down to the zero padding, `-x[H - 1]`, under `border` it is the slope of the flat clamp,
# 0. So exactly those two gradient entries differ:

# %%
outs, grads = both_rules(RING, 0, go)
assert np.allclose(outs[0], outs[1], rtol=1e-12, atol=1e-12)
differs = ~np.isclose(grads[0], grads[1], rtol=1e-12, atol=1e-12)
print("entries (k, axis) where the ring start's position gradients differ:",
      [tuple(int(v) for v in index) for index in np.argwhere(differs)])
assert sorted(map(tuple, np.argwhere(differs))) == [(5, 1), (7, 0)]

# %% [markdown]
# With padding 1 the border outputs read the padding, and the rules differ in value there
# (zeros vs the replicated edge), while the interior agrees:

# %%
go = rng.standard_normal((1, 4, 12, 12))
outs, _ = both_rules(RING, 1, go)
print(f"padding 1: max |zeros - border| = {np.abs(outs[0] - outs[1]).max():.3f} on the border, "
      f"{np.abs(outs[0] - outs[1])[..., 1:-1, 1:-1].max():.1e} inside")
assert np.allclose(outs[0][..., 1:-1, 1:-1], outs[1][..., 1:-1, 1:-1], rtol=1e-12, atol=1e-12)
assert not np.allclose(outs[0], outs[1])

# %% [markdown]
# They differ most for the gradient of a tap that has left the image. Move tap 1 (the top edge
# tap) 20 pixels up, so that it is above the image for **every** output position:
#
# * `zeros`: the tap reads 0 everywhere, so its gradient is `(0, 0)`: the tap is dead, and a
#   normalized gradient of zero stays zero (the division is skipped);
# * `border`: the clamp is flat outside the image, so `dL/d dy = 0`, but the tap still reads the
#   top row and `dL/d dx` is not zero. A normalized step is then a full step sideways, with
#   nothing ever pulling the tap back in `y`. Taps that have left the map keep moving along the
#   border: one mechanism consistent with the offsets of tens to hundreds of pixels that paper
#   002 reports on a 64 x 128 map.

# %%
far = RING.copy()
far[1] = (-20.0, 0.3)
for boundary in ("zeros", "border"):
    grad = refdyn.active_conv2d_backward(go, image, far, weight, padding=1,
                                         boundary=boundary).grad_positions
    print(f"{boundary:6s}: dL/dtheta_1 = {grad[1]},  normalized step direction "
          f"{normalized_position_gradient(grad)[1]}")
    if boundary == "zeros":
        assert not grad[1].any()
    else:
        assert grad[1, 0] == 0 and grad[1, 1] != 0

# %% [markdown]
# The same in one dimension: the value `x(p)` read by one tap as `p_y` crosses the top and
# bottom edges of a 5-row image (column `p_x = 2`), and its derivative. Under `zeros` the value
# ramps linearly to 0 over the last pixel outside the image and the derivative there is the ramp;
# under `border` the value is constant outside `[0, H - 1]` and the derivative is 0 (the right
# derivative of the clamp: 1 on `[0, H - 1)`, 0 from `H - 1` on).

# %%
column_image = np.arange(1.0, 26.0).reshape(5, 5) % 7 + 1
p_ys = np.linspace(-2.5, 6.5, 901)
profile = {b: np.array([sample_point(column_image, y, 2.0, b) for y in p_ys])
           for b in ("zeros", "border")}
profile_slope = {b: np.array([sample_point_grad(column_image, y, 2.0, b)[0] for y in p_ys])
                 for b in ("zeros", "border")}
assert sample_point_grad(column_image, 4.0, 2.0, "border")[0] == 0.0           # at H - 1
assert sample_point_grad(column_image, -0.5, 2.0, "zeros")[0] == column_image[0, 2]

fig, axes = plt.subplots(2, 1, figsize=(7, 5.5), sharex=True)
for b, style in (("zeros", "-"), ("border", "--")):
    axes[0].plot(p_ys, profile[b], style, label=b)
    axes[1].plot(p_ys, profile_slope[b], style, label=b)
for ax in axes:
    ax.axvspan(-2.5, 0, color="0.92")
    ax.axvspan(4, 6.5, color="0.92")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
axes[0].set_ylabel("x(p_y, p_x = 2)")
axes[0].set_title("Sampling across the image edge (grey: outside [0, H-1])", fontsize=10)
axes[1].set_ylabel("d x / d p_y (right derivative)")
axes[1].set_xlabel("p_y")
save(fig, "active_conv_boundary.png")

elapsed = time.perf_counter() - started
print(f"\nran in {elapsed:.1f} s")
