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
# # Seeing what deformable filters do
#
# DCNv1 and DCNv2 explain their networks with pictures: where one output node samples the
# image through a stack of layers (DCNv1 Fig. 5), how far apart a filter's samples are
# (*effective dilation*, DCNv1 Table 2), which pixels the node is sensitive to (*effective
# receptive field*), how much each sampling location matters (*effective sampling locations*)
# and which image region alone reproduces the node's response (*error-bounded saliency
# region*, DCNv2). This tutorial computes all five with `refdyn.analysis` for a small
# two-layer network, once with regular and once with deformable sampling, on a synthetic image
# with objects of two sizes. The definitions are in `docs/analysis.md`.
#
# The script runs top to bottom in a few seconds and stops with an `AssertionError` if a
# property it relies on does not hold.

# %%
import matplotlib

matplotlib.use("Agg")  # no window: the figures are written to files
import matplotlib.pyplot as plt
import numpy as np

from refdyn.analysis import OperatorLayer, composite_sampling_locations, effective_dilation, \
    effective_receptive_field, effective_sampling_locations, saliency_region, sampling_layer, \
    sampling_locations, square_window_priority
from refdyn.plot import draw_composite_locations, draw_region_outline, draw_weighted_points, \
    figure_directory

FIGURES = figure_directory(globals().get("__file__"))

# %% [markdown]
# ## 1. An image with small and large objects
#
# A 64 x 64 image: three small squares (5 x 5) and two large ones (19 x 19) on a dark
# background. As in DCNv2's masking experiments the image is mean-subtracted, so "masking a
# pixel" (setting it to 0) means replacing it by the mean. `label` records which object class
# each pixel belongs to; it is used to set the offsets and to group the statistics, as DCNv1
# groups its filters by the ground-truth box their centre falls in.

# %%
SIZE = 64
SMALL, LARGE = 5, 19
objects = {"small": [(8, 44), (54, 12), (26, 50)], "large": [(20, 20), (44, 46)]}
side = {"small": SMALL, "large": LARGE}

raw = np.zeros((SIZE, SIZE))
label = np.full((SIZE, SIZE), "background", dtype=object)
for kind, centres in objects.items():
    half = side[kind] // 2
    for cy, cx in centres:
        raw[cy - half:cy + half + 1, cx - half:cx + half + 1] = 1.0
        label[cy - half:cy + half + 1, cx - half:cx + half + 1] = kind
image = (raw - raw.mean())[None, None]                      # (N, C, H, W) = (1, 1, 64, 64)
print(f"image mean before subtraction {raw.mean():.4f}; "
      f"pixels: {({k: int((label == k).sum()) for k in ('small', 'large', 'background')})}")

# %% [markdown]
# ## 2. A regular and a deformable two-layer network
#
# Both networks are two 3 x 3 convolutions with padding 1, each a smoothing filter
# `[1, 2, 1]^T [1, 2, 1] / 16`, run by `refdyn.deform_conv2d`. The regular one has zero
# offsets. The deformable one **sets** its offsets so that each filter spreads its taps to the
# size of what it sits on: a target dilation `D = 1` on small objects, `3.5` on large ones and
# `2.5` on the background (DCNv1 found background filters between medium and large objects),
# smoothed by a 5 x 5 box filter so that it changes gradually across object edges. Tap
# `(a, b)` then moves by
#
# ```
# dp_k = (D(p0) - 1) * (a - 1, b - 1)
# ```
#
# which turns the grid `p0 + (a - 1, b - 1)` into `p0 + D(p0) (a - 1, b - 1)`: a dilated
# convolution whose dilation varies from pixel to pixel. The box smoothing is itself a
# `deform_conv2d` with zero offsets and the `border` boundary rule (edge pixels repeated).
# A trained DCN learns such offsets from data; setting them keeps the tutorial exact and fast.
#
# `OperatorLayer` names a registered operator (`refdyn.registry.OPERATORS`) and every argument
# but its input; a stack is a list of them.

# %%
KERNEL = 3
smooth = np.outer([1.0, 2.0, 1.0], [1.0, 2.0, 1.0])[None, None] / 16
target = np.vectorize({"small": 1.0, "large": 3.5, "background": 2.5}.get)(label)
box = OperatorLayer("deform_conv2d", dict(offset=np.zeros((1, 50, SIZE, SIZE)),
                                          weight=np.full((1, 1, 5, 5), 1 / 25), padding=2,
                                          boundary="border"))
dilation_map = box.forward(target[None, None])[0, 0]                # D(p0), (64, 64)

a, b = np.divmod(np.arange(KERNEL * KERNEL), KERNEL)
tap_place = np.stack([a - 1, b - 1], axis=1).astype(float)           # p_k - centre, (K, 2)
deformable_offset = ((dilation_map[None, None] - 1)
                     * tap_place[:, :, None, None]).reshape(1, 2 * KERNEL * KERNEL, SIZE, SIZE)
offsets = {"regular": np.zeros_like(deformable_offset), "deformable": deformable_offset}
networks = {name: [OperatorLayer("deform_conv2d", dict(offset=offset, weight=smooth, padding=1))
                   for _ in range(2)]
            for name, offset in offsets.items()}

# %% [markdown]
# ## 3. Effective dilation per object size (DCNv1 Table 2)
#
# `sampling_locations` gives `p0 + p_k + dp_k` of every tap of every output, and
# `effective_dilation` the mean distance between the 12 adjacent pairs of taps of each 3 x 3
# filter. The filters are grouped by the class of the pixel their centre sits on. A regular
# filter has effective dilation exactly 1 everywhere. Both deformable layers use the same
# offset field, so their rows agree.

# %%
print("effective dilation, mean ± std over the filters centred on each class")
print(f"{'network':11s} {'layer':8s} {'small':>12s} {'large':>12s} {'background':>12s}")
dilation_table = {}
for name, layers in networks.items():
    input_shape = image.shape
    for index, layer in enumerate(layers):
        sampler = sampling_layer(layer, input_shape)
        dilation = effective_dilation(sampling_locations(sampler), KERNEL)    # (64, 64)
        row = {kind: (dilation[label == kind].mean(), dilation[label == kind].std())
               for kind in ("small", "large", "background")}
        dilation_table[name, index] = row
        print(f"{name:11s} {'layer ' + str(index + 1):8s} "
              + " ".join(f"{m:6.2f} ± {s:4.2f}" for m, s in row.values()))
assert all(np.allclose(m, 1.0) and s < 1e-12
           for row in (dilation_table["regular", 0], dilation_table["regular", 1])
           for m, s in row.values())
assert (dilation_table["deformable", 0]["small"][0] < dilation_table["deformable", 0]["background"][0]
        < dilation_table["deformable", 0]["large"][0])

# %% [markdown]
# ## 4. Composite sampling locations (DCNv1 Fig. 5)
#
# One node of the second layer samples 9 points of the first layer's output; each of those
# samples 9 image points: 81 points in all. Where a second-layer point falls between outputs of
# the first layer, `composite_sampling_locations` interpolates the first layer's offsets there
# bilinearly. Two nodes: the centre of a small object and the centre of a large one.

# %%
NODES = {"small object": (26, 50), "large object": (20, 20)}
HALF_VIEW = 16


def show_image(ax, centre):
    """The image around ``centre``, objects white, with axes in pixel coordinates."""
    ax.imshow(raw, cmap="gray", vmin=-0.3, vmax=1.6, extent=(-0.5, SIZE - 0.5, SIZE - 0.5, -0.5))
    top, left = np.clip(np.array(centre) - HALF_VIEW, -0.5, SIZE - 0.5 - 2 * HALF_VIEW)
    ax.set_xlim(left, left + 2 * HALF_VIEW)
    ax.set_ylim(top + 2 * HALF_VIEW, top)
    ax.set_xticks([])
    ax.set_yticks([])


def grid_of_panels(title):
    """A 2 x 2 figure: rows regular / deformable network, columns small / large object node."""
    fig, axes = plt.subplots(2, 2, figsize=(8, 8.4))
    for row, name in enumerate(networks):
        for column, (where, node) in enumerate(NODES.items()):
            axes[row, column].set_title(f"{name}, node on a {where}", fontsize=10)
    fig.suptitle(title)
    return fig, axes


composite = {}
fig, axes = grid_of_panels("Composite sampling locations of one node through two layers")
for row, (name, layers) in enumerate(networks.items()):
    samplers = [sampling_layer(layer, image.shape) for layer in layers]
    for column, node in enumerate(NODES.values()):
        levels = composite_sampling_locations(samplers, node)
        composite[name, node] = levels
        show_image(axes[row, column], node)
        draw_composite_locations(axes[row, column], levels, node)
axes[0, 0].legend(loc="lower left", fontsize=7)
for node in NODES.values():
    regular_points = composite["regular", node][-1]
    assert len(np.unique(regular_points, axis=0)) == (2 * KERNEL - 1) ** 2    # 25 distinct points
fig.tight_layout()
fig.savefig(FIGURES / "analysis_composite_locations.png", dpi=100)
plt.close(fig)

for (name, node), levels in composite.items():
    spread = levels[-1].max(axis=0) - levels[-1].min(axis=0)
    print(f"{name:11s} node {node}: the 81 image points span {spread[0]:.1f} x {spread[1]:.1f} pixels")

# %% [markdown]
# ## 5. Effective receptive fields (DCNv2)
#
# `effective_receptive_field` puts a one-hot gradient at the node and runs each layer's own
# backward (`deform_conv2d_backward`, its `grad_input`) down to the image: `|d node / d pixel|`.

# %%
fig, axes = grid_of_panels("Effective receptive fields |d node / d pixel|")
receptive_fields = {}
for row, (name, layers) in enumerate(networks.items()):
    for column, node in enumerate(NODES.values()):
        erf = effective_receptive_field(layers, image, (0, 0) + node)
        receptive_fields[name, node] = erf
        show_image(axes[row, column], node)
        axes[row, column].imshow(np.ma.masked_equal(erf, 0), cmap="inferno", alpha=0.85,
                                 extent=(-0.5, SIZE - 0.5, SIZE - 0.5, -0.5))
        print(f"{name:11s} node {node}: {int((erf > 0).sum()):3d} pixels with a non-zero gradient")
fig.tight_layout()
fig.savefig(FIGURES / "analysis_effective_receptive_fields.png", dpi=100)
plt.close(fig)
# The two layers are linear, so the gradient of the regular stack is the 5 x 5 kernel
# smooth * smooth (full convolution) placed on the node.
regular_erf = receptive_fields["regular", NODES["large object"]]
assert np.isclose(regular_erf.sum(), 1.0) and (regular_erf > 0).sum() == 25

# %% [markdown]
# ## 6. Effective sampling locations (DCNv2)
#
# `effective_sampling_locations` weights every sampling location of the first layer by what it
# does to the node. It returns two readings, both from `deform_conv2d_backward` fed
# `d node / d (first layer output)`: the gradient with respect to the location itself
# (`grad_offset`; zero inside flat regions of this image), and the sample's contribution
# `m_k d node / d m_k` (`grad_mask`; with linear layers above, the contributions add up to the
# node's value). The figure draws the contributions: area proportional to the size, red
# positive, blue negative (background samples are below the mean).

# %%
fig, axes = grid_of_panels("Effective sampling locations of the first layer (contributions)")
for row, (name, layers) in enumerate(networks.items()):
    for column, node in enumerate(NODES.values()):
        effective = effective_sampling_locations(layers, image, (0, 0) + node)
        node_value = layers[1].forward(layers[0].forward(image))[(0, 0) + node]
        assert np.isclose(effective.contributions.sum(), node_value)
        show_image(axes[row, column], node)
        draw_weighted_points(axes[row, column], effective.points, effective.contributions)
fig.tight_layout()
fig.savefig(FIGURES / "analysis_effective_sampling_locations.png", dpi=100)
plt.close(fig)

# %% [markdown]
# ## 7. Error-bounded saliency regions (DCNv2)
#
# `saliency_region` masks the image progressively: it grows a square window around the node,
# one pixel ring at a time (`square_window_priority`), and stops at the first window whose
# masked image (everything outside set to 0, the mean) gives the node's response within 10 % of
# the full-image response. (Passing the effective receptive field as the priority instead adds
# pixels in order of their gradient.)

# %%
fig, axes = grid_of_panels("Error-bounded saliency regions (error bound 10 %)")
for row, (name, layers) in enumerate(networks.items()):
    for column, node in enumerate(NODES.values()):
        def response(masked, layers=layers, node=node):
            return layers[1].forward(layers[0].forward(masked))[(0, 0) + node]

        region = saliency_region(response, image, square_window_priority((SIZE, SIZE), node),
                                 error_bound=0.1)
        assert region.relative_error <= 0.1
        show_image(axes[row, column], node)
        axes[row, column].imshow(np.ma.masked_equal(region.mask, False), cmap="autumn",
                                 alpha=0.45, extent=(-0.5, SIZE - 0.5, SIZE - 0.5, -0.5))
        draw_region_outline(axes[row, column], region.mask)
        print(f"{name:11s} node {node}: region of {int(region.mask.sum()):3d} pixels, "
              f"response {region.response:+.4f} vs {region.full_response:+.4f} "
              f"(error {100 * region.relative_error:.1f} %, {region.evaluations} responses)")
fig.tight_layout()
fig.savefig(FIGURES / "analysis_saliency_regions.png", dpi=100)
plt.close(fig)

# %% [markdown]
# ## What the pictures show
#
# * The regular network samples the same 5 x 5 window whatever it sits on; the deformable one
#   keeps its samples inside the small object and spreads them over most of the large one, so
#   its effective dilation follows the object size, as in DCNv1 Table 2.
# * The effective receptive field and the sampling contributions follow the composite
#   locations: the deformable node on the large object is sensitive to pixels across the object.
# * The saliency region is the part of that support that the response actually needs.
