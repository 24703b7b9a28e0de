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
# # Validate your own kernel against refdyn
#
# You have written a deformable convolution (a CUDA kernel, a Triton kernel, a port to a new
# framework) and want to know whether it is right, including at the image border where most
# bugs hide. This tutorial:
#
# 1. writes a short, readable deformable convolution in NumPy (torchvision layout), with a
#    **planted boundary bug** of the kind real kernels have;
# 2. lets `refdyn.testing.check_forward` find the bug: it draws configurations with
#    Hypothesis, compares with refdyn, and **shrinks** the failure to a minimal configuration;
# 3. fixes the bug and shows that `check_forward` and `check_backward` pass;
# 4. validates a framework, ONNX Runtime, with `refdyn validate` and reads its report.
#
# The tools are described in `docs/validation.md`. The script runs top to bottom
# (`python tutorials/06_validate_your_kernel.py`, a few seconds) and stops with an
# `AssertionError` if anything is not as described.

# %%
import math
import re

import matplotlib

matplotlib.use("Agg")  # no window: the figure is written to a file
import matplotlib.pyplot as plt
import numpy as np

import refdyn
from refdyn.plot import figure_directory
from refdyn.testing import check_backward, check_forward

# %% [markdown]
# ## 1. A deformable convolution of your own
#
# The layout is torchvision's (and refdyn's): `input (N, C_in, H, W)`,
# `offset (N, 2 G kh kw, H_out, W_out)` with the pair `(dy, dx)` of tap `k = a kw + b` of offset
# group `g` at channels `2 (g kh kw + k)` and `+ 1`, `weight (C_out, C_in / groups, kh, kw)`,
# optional `bias (C_out,)` and `mask (N, G kh kw, H_out, W_out)`.
#
# Output element `(n, o, i, j)` sums, over the input channels `c` of its group and the taps
# `(a, b)`, `weight * mask * x_c(p)` at the sampling point
# `p = (i stride - pad + a dil + dy, j stride - pad + b dil + dx)`.
# `x_c(p)` is bilinear interpolation with the **zeros** boundary rule: pixels outside the
# image are 0, so a sample strictly between -1 and 0 still sees row (or column) 0 with weight
# `1 - |p - 0|`, and a sample at -1 or beyond sees nothing.
#
# The sampling function below has a bug that is easy to write and hard to see: it finds the
# top-left neighbour with `int(p)`, which truncates towards zero, instead of `floor(p)`. The
# two agree for every `p >= 0`, so every test on interior samples passes.


# %%
def _pair(value):
    return tuple(int(v) for v in np.broadcast_to(value, 2))


def bilinear_buggy(image, y, x):
    """Bilinear sample of a 2-D image at (y, x), zeros outside. BUG: int() truncates."""
    height, width = image.shape
    if y <= -1 or y >= height or x <= -1 or x >= width:
        return 0.0
    y0, x0 = int(y), int(x)            # wrong for -1 < p < 0: int(-0.5) == 0, floor is -1
    ly, lx = y - y0, x - x0
    value = 0.0
    for qy, wy in ((y0, 1 - ly), (y0 + 1, ly)):
        for qx, wx in ((x0, 1 - lx), (x0 + 1, lx)):
            if 0 <= qy < height and 0 <= qx < width:
                value += wy * wx * float(image[qy, qx])
    return value


def bilinear_fixed(image, y, x):
    """The same with floor(): the neighbours of (y, x) are floor(y), floor(y) + 1 (and x)."""
    height, width = image.shape
    if y <= -1 or y >= height or x <= -1 or x >= width:
        return 0.0
    y0, x0 = math.floor(y), math.floor(x)
    ly, lx = y - y0, x - x0
    value = 0.0
    for qy, wy in ((y0, 1 - ly), (y0 + 1, ly)):
        for qx, wx in ((x0, 1 - lx), (x0 + 1, lx)):
            if 0 <= qy < height and 0 <= qx < width:
                value += wy * wx * float(image[qy, qx])
    return value


def _taps(input, offset, weight, stride, padding, dilation):
    """Yield every sample of the convolution: (n, o, i, j, c_in, c, a, b, mask channel, y, x)."""
    n_batch, c_in, _, _ = input.shape
    c_out, per_group, kh, kw = weight.shape
    groups = c_in // per_group
    offset_groups = offset.shape[1] // (2 * kh * kw)
    (sh, sw), (ph, pw), (dh, dw) = _pair(stride), _pair(padding), _pair(dilation)
    for n in range(n_batch):
        for o in range(c_out):
            group = o // (c_out // groups)
            for i in range(offset.shape[2]):
                for j in range(offset.shape[3]):
                    for c in range(per_group):
                        channel = group * per_group + c
                        g = channel // (c_in // offset_groups)
                        for a in range(kh):
                            for b in range(kw):
                                k = g * kh * kw + a * kw + b
                                y = i * sh - ph + a * dh + float(offset[n, 2 * k, i, j])
                                x = j * sw - pw + b * dw + float(offset[n, 2 * k + 1, i, j])
                                yield n, o, i, j, channel, c, a, b, k, y, x


def make_deform_conv2d(bilinear):
    """Your deform_conv2d, with refdyn's signature (the arguments of refdyn.deform_conv2d)."""
    def my_deform_conv2d(input, offset, weight, bias=None, stride=1, padding=0, dilation=1,
                         mask=None, boundary="zeros"):
        assert boundary == "zeros", "this kernel implements the zeros boundary rule only"
        out = np.zeros((input.shape[0], weight.shape[0], *offset.shape[2:]))
        for n, o, i, j, channel, c, a, b, k, y, x in _taps(input, offset, weight, stride,
                                                          padding, dilation):
            modulation = 1.0 if mask is None else float(mask[n, k, i, j])
            out[n, o, i, j] += (float(weight[o, c, a, b]) * modulation
                                * bilinear(input[n, channel], y, x))
        if bias is not None:
            out += np.asarray(bias, dtype=np.float64)[None, :, None, None]
        return out.astype(input.dtype)
    return my_deform_conv2d


my_deform_conv2d_buggy = make_deform_conv2d(bilinear_buggy)
my_deform_conv2d = make_deform_conv2d(bilinear_fixed)

# %% [markdown]
# A first sanity check on an easy input passes, as it would in many real test suites: zero
# offsets and no padding keep every sample on a pixel, where `int` and `floor` agree.

# %%
rng = np.random.default_rng(0)
easy = dict(input=rng.normal(size=(1, 2, 5, 5)), offset=np.zeros((1, 18, 3, 3)),
            weight=rng.normal(size=(3, 2, 3, 3)), bias=rng.normal(size=3))
easy_error = np.max(np.abs(my_deform_conv2d_buggy(**easy) - refdyn.deform_conv2d(**easy)))
print(f"zero offsets, no padding: max |mine - refdyn| = {easy_error:.1e}")
assert easy_error < 1e-12

# %% [markdown]
# ## 2. `check_forward` finds the bug
#
# `check_forward(candidate, "deform_conv2d", **knobs)` draws configurations with the
# operator's Hypothesis strategy (`refdyn.testing.strategies.deform_conv2d_configs`): every
# shape, stride, padding, dilation, groups and offset groups within the limits, optional mask
# and bias, offsets of every kind (fractional, integer, zero, far out of range, trained-like),
# float64 and float32. The knobs restrict it: our kernel has only the zeros boundary rule,
# and small images keep this pure-Python loop fast. In a pytest suite you would write the
# same call inside a test function and let the `AssertionError` fail it.
#
# On a disagreement Hypothesis *shrinks*: it tries smaller batches, fewer channels, smaller
# images and kernels, simpler offsets, and keeps the simplest configuration that still fails.
# `derandomize=True` makes the run (and this tutorial's output) reproducible.

# %%
KNOBS = dict(boundaries=("zeros",), max_extent=5, max_batch=2, derandomize=True)

try:
    check_forward(my_deform_conv2d_buggy, "deform_conv2d", max_examples=40, **KNOBS)
except AssertionError as error:
    message = str(error)
else:
    raise AssertionError("check_forward did not find the planted bug")
print(message)

# %% [markdown]
# The message names the minimal configuration, the worst output element, where that element
# samples the image, and the expected and actual values. Whatever the exact shrunk
# configuration, the sampling point it reports has a coordinate strictly between -1 and 0,
# exactly the range where `int` and `floor` differ.

# %%
assert message.startswith("forward of deform_conv2d disagrees with refdyn on the minimal "
                          "configuration Hypothesis found:"), message
assert "configuration: batch=1" in message, "Hypothesis shrinks the batch to 1"
points = [(float(py), float(px)) for py, px in
          re.findall(r"p_y=(-?[0-9.e+-]+), p_x=(-?[0-9.e+-]+)", message)]
assert points, message
assert any(-1 < coordinate < 0 for point in points for coordinate in point), points
print("reported sampling points:", points)

# %% [markdown]
# ## 3. Where the bug lies
#
# The figure maps `|bilinear_buggy - bilinear_fixed|` for one sample on a 4 x 4 image over
# the whole range of sampling points the zeros rule can see, `-1 < p < H`. The error is
# confined to the bands `-1 < p_y < 0` and `-1 < p_x < 0`, the strip just outside the top and
# left borders; the counterexample Hypothesis found is marked.

# %%
image = np.random.default_rng(3).uniform(0.5, 1.5, size=(4, 4))
coordinates = np.linspace(-1.5, 4.5, 241)
error_map = np.array([[abs(bilinear_buggy(image, y, x) - bilinear_fixed(image, y, x))
                       for x in coordinates] for y in coordinates])
band = (coordinates > -1) & (coordinates < 0)
outside_band = ~band[:, None] & ~band[None, :]
assert np.all(error_map[outside_band] == 0), "the bug only acts for -1 < p < 0"
assert error_map[band][:, band].max() > 0.1

figure_dir = figure_directory(globals().get("__file__"))
fig, ax = plt.subplots(figsize=(5.2, 4.4))
extent = (coordinates[0], coordinates[-1], coordinates[-1], coordinates[0])
shown = ax.imshow(error_map, extent=extent, cmap="magma", interpolation="nearest")
fig.colorbar(shown, ax=ax, label="|buggy - correct| of one bilinear sample")
ax.add_patch(plt.Rectangle((-0.5, -0.5), 4, 4, fill=False, edgecolor="white", lw=1, ls="--"))
ax.text(1.5, 1.5, "pixels of the\n4 x 4 image", color="white", ha="center", va="center",
        fontsize=8)
for py, px in points:
    ax.scatter([px], [py], marker="x", color="tab:cyan", s=60, zorder=3)
ax.scatter([], [], marker="x", color="tab:cyan", label="shrunk counterexample's sample")
ax.set_xlabel("p_x (column)")
ax.set_ylabel("p_y (row)")
ax.set_title("int() instead of floor(): wrong only for -1 < p < 0", fontsize=10)
ax.legend(loc="lower right", fontsize=8)
figure_path = figure_dir / "validate_your_kernel_bug.png"
fig.savefig(figure_path, dpi=110, bbox_inches="tight")
plt.close(fig)
print(f"wrote {figure_path}")

# %% [markdown]
# ## 4. The fix passes, forward and backward
#
# With `floor` the forward agrees with refdyn on every drawn configuration, within refdyn's
# tolerances (float64: 1e-10 relative; float32: 2e-4 relative plus 2e-5 of the largest
# magnitude).

# %%
check_forward(my_deform_conv2d, "deform_conv2d", max_examples=40, **KNOBS)
print("check_forward: the fixed kernel agrees with refdyn")


# %% [markdown]
# A kernel used for training also needs its gradients. `check_backward` calls
# `candidate(grad_output, **arguments)` and compares every `grad_<input>` (a dict or an
# object with attributes) with `refdyn.deform_conv2d_backward`. The derivative of a bilinear
# sample with respect to its coordinate jumps where the coordinate crosses an integer (a
# kink); frameworks choose different one-sided values there (`docs/validation.md`). Our
# backward does not pick a rule, so we ask for kink-free configurations, `kink_free=True`;
# a kernel that follows torchvision's or mmcv's rule would pass `coord_grads=("mmcv",)` and
# keep the kinks.

# %%
def bilinear_with_grad(image, y, x):
    """The sample, its derivatives by y and x, and the (row, column, weight) it reads."""
    height, width = image.shape
    if y <= -1 or y >= height or x <= -1 or x >= width:
        return 0.0, 0.0, 0.0, []
    y0, x0 = math.floor(y), math.floor(x)
    ly, lx = y - y0, x - x0
    value = d_y = d_x = 0.0
    reads = []
    for qy, wy, sy in ((y0, 1 - ly, -1.0), (y0 + 1, ly, 1.0)):
        for qx, wx, sx in ((x0, 1 - lx, -1.0), (x0 + 1, lx, 1.0)):
            if 0 <= qy < height and 0 <= qx < width:
                pixel = float(image[qy, qx])
                value += wy * wx * pixel
                d_y += sy * wx * pixel
                d_x += sx * wy * pixel
                reads.append((qy, qx, wy * wx))
    return value, d_y, d_x, reads


def my_deform_conv2d_backward(grad_output, input, offset, weight, bias=None, stride=1,
                              padding=0, dilation=1, mask=None, boundary="zeros",
                              coord_grad=None):
    assert boundary == "zeros"
    grads = {name: np.zeros(array.shape) for name, array in
             dict(input=input, offset=offset, weight=weight, mask=mask).items()
             if array is not None}
    for n, o, i, j, channel, c, a, b, k, y, x in _taps(input, offset, weight, stride, padding,
                                                      dilation):
        value, d_y, d_x, reads = bilinear_with_grad(input[n, channel], y, x)
        modulation = 1.0 if mask is None else float(mask[n, k, i, j])
        upstream = float(grad_output[n, o, i, j])
        w = float(weight[o, c, a, b])
        grads["weight"][o, c, a, b] += upstream * modulation * value
        if mask is not None:
            grads["mask"][n, k, i, j] += upstream * w * value
        grads["offset"][n, 2 * k, i, j] += upstream * w * modulation * d_y
        grads["offset"][n, 2 * k + 1, i, j] += upstream * w * modulation * d_x
        for qy, qx, share in reads:
            grads["input"][n, channel, qy, qx] += upstream * w * modulation * share
    if bias is not None:
        grads["bias"] = grad_output.astype(np.float64).sum(axis=(0, 2, 3))
    return {f"grad_{name}": (grads[name].astype(input.dtype) if name in grads else None)
            for name in ("input", "offset", "weight", "bias", "mask")}


check_backward(my_deform_conv2d_backward, "deform_conv2d", max_examples=25, kink_free=True,
               **KNOBS)
print("check_backward: the fixed kernel's gradients agree with refdyn (kink-free samples)")

# %% [markdown]
# ## 5. Validate a framework: `refdyn validate onnxruntime`
#
# The same machinery checks other implementations. `refdyn validate TARGET` (targets:
# `onnxruntime`, `onnx-reference`, `torchvision`) runs the target's operators through
# adapters to refdyn's signature, one configuration class at a time (interior samples, border
# samples, kinks, far out-of-range, trained-like offsets; each dtype), and writes a report.
# From a shell:
#
# ```
# refdyn validate onnxruntime --json report.json --markdown report.md
# ```
#
# Here we use the Python API behind the command, `refdyn.validate.validate`, with a few
# examples per class to keep the tutorial short (the command's default is
# `DEFAULT_EXAMPLES = 100`). ONNX Runtime is an optional dependency
# (`pip install 'refdyn[validate]'`); without it the report says "not installed", which is
# not a failure.

# %%
from refdyn.testing.targets import TARGETS
from refdyn.validate import format_text, validate

report = validate(TARGETS["onnxruntime"], max_examples=4)
print(format_text(report))

# %% [markdown]
# How to read it:
#
# - **The table**: one row per operator, direction and configuration class, with the number
#   of examples, the largest absolute error, the largest error relative to the largest
#   expected magnitude, and the verdict. A `DISAGREES` row is a *real* disagreement and is
#   followed by its minimal counterexample, in the same format as section 2.
# - **Known convention differences** are documented differences (here: whether ONNX Runtime
#   skips the interpolation where the mask is 0, visible only with a non-finite input),
#   measured on a fixed input and reported with their source. They never fail the run.
# - The summary line and the exit status of the command (1 on a real disagreement, 0
#   otherwise, also when the target is not installed).
#
# The JSON report (`report.to_json()`, or `--json PATH`) holds the same content for a CI job.

# %%
data = report.to_json()
if report.not_installed:
    assert data["status"] == "not installed"
    assert "pip install" in report.not_installed
    print("ONNX Runtime is not installed here: the report above says how to install it.")
else:
    classes = [(row.operator, row.config_class) for row in report.classes]
    assert ("deform_conv2d", "border samples (zero offsets, taps at -1 and H), float32") \
        in classes
    assert all(row.examples > 0 for row in report.classes)
    assert len(report.known_differences) == 1
    assert data["status"] in ("agrees", "disagreements")
    print(f"status: {data['status']}; {len(report.classes)} configuration classes, "
          f"{len(report.disagreements)} real disagreements, "
          f"{len(report.known_differences)} known convention difference")
    for row in report.disagreements:
        print(f"real disagreement: {row.operator} {row.direction}, {row.config_class}")
    print("known difference measured:", report.known_differences[0].measured)

# %% [markdown]
# ## Summary
#
# - Give your kernel refdyn's signature (or wrap it with `refdyn.testing.adapters`) and call
#   `check_forward` / `check_backward` from your test suite; restrict the strategy with knobs
#   only where your kernel really has a narrower scope (boundary rule, offset-gradient rule).
# - A failure comes shrunk: the smallest configuration, the worst element and where it
#   samples. Here it pointed straight at a sample between -1 and 0.
# - `refdyn validate TARGET` does the same for a framework and separates real disagreements
#   from known convention differences.
