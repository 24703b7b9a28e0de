"""The sort of the deterministic grad_input's per-pixel lists, and the order it gives the sums.

``deform_conv2d_backward(..., deterministic=True)`` sorts each (image, offset group, pixel)
list of contribution ids (heapsort, one thread per list) and sums every list in increasing id
order.  Here: both sort kernels (the CUDA C one through the host build, the Numba one under the
CUDA simulator without a GPU) on hand-made lists of every shape against ``numpy.sort``; the
grad_input of a layer whose every contribution lands on one pixel (the sort's worst case, one
long list per image) against a float32 sum in id order, bit for bit; and the benchmark section
``refdyn bench --case deterministic`` that times the sort.
"""

import numpy as np
import pytest

from refdyn import bench, bench_deterministic, cli
from refdyn.testing.deform_conv_cases import DeformConvConfig


#: Ids the sort must leave alone: the slots after the last list.
UNTOUCHED = -7


def hand_made_lists() -> list[np.ndarray]:
    """Lists of every shape the sort meets: empty ones side by side, one id, two ids in both
    orders, every size 3..17 shuffled (each shape of a small heap, the last parent with one or
    two children), reversed and already sorted runs, and long shuffled lists of power-of-two
    and odd sizes; ids distinct within a list, with gaps, as contribution ids are."""
    rng = np.random.default_rng(0)

    def distinct(size):
        return rng.choice(10**6, size=size, replace=False)

    lists = [[], [], [7], [5, 3], [3, 5], []]
    lists += [distinct(size) for size in range(3, 18)]
    lists += [np.arange(40, 0, -1), np.arange(0, 64, 4), [], distinct(256), distinct(301), [9]]
    return [np.asarray(ids, dtype=np.int64) for ids in lists]


def csr(lists, extra=3):
    """(sizes, entries): the lists one after the other, then ``extra`` UNTOUCHED slots."""
    sizes = np.array([len(ids) for ids in lists], dtype=np.int64)
    entries = np.concatenate([*lists, np.full(extra, UNTOUCHED, dtype=np.int64)])
    return sizes, entries


def assert_each_list_sorted(sizes, entries, lists, extra=3):
    ends = np.cumsum(sizes)
    for ids, end, size in zip(lists, ends, sizes):
        np.testing.assert_array_equal(entries[end - size:end], np.sort(ids))
    np.testing.assert_array_equal(entries[len(entries) - extra:], UNTOUCHED)


@pytest.mark.backend("host")
@pytest.mark.parametrize("grid", [(1, 1), (2, 3), (4, 7)])
def test_cuda_c_sort_kernel_sorts_every_list(grid):
    """deform_conv_sort_contributions of deform_conv.cu, compiled for the CPU, on any grid."""
    from refdyn.gpu import host
    lists = hand_made_lists()
    sizes, entries = csr(lists)
    with host.launch_grid(*grid):
        bench_deterministic.host_sort_contributions(sizes, entries)
    assert_each_list_sorted(sizes, entries, lists)


@pytest.mark.backend("numba")
def test_numba_sort_kernel_sorts_every_list(deform_conv_kernels, cuda):
    """_sort_contributions_kernel on two rows of lists (starts per row, as _contribution_lists
    makes them), each row's slots after its last list left alone."""
    lists = hand_made_lists()
    halves = [lists[::2], lists[1::2]]
    width = max(sum(len(ids) for ids in half) for half in halves) + 3
    pixels = max(len(half) for half in halves)
    halves = [half + [np.empty(0, np.int64)] * (pixels - len(half)) for half in halves]
    starts = np.zeros((2, pixels + 1), dtype=np.int64)
    entries = np.full((2, width), UNTOUCHED, dtype=np.int64)
    for row, half in enumerate(halves):
        starts[row, 1:] = np.cumsum([len(ids) for ids in half])
        entries[row, :starts[row, -1]] = np.concatenate(half)
    sorted_entries = cuda.to_device(entries)
    deform_conv_kernels._launch(deform_conv_kernels._sort_contributions_kernel, 2 * pixels,
                                cuda.to_device(starts), sorted_entries)
    sorted_entries = sorted_entries.copy_to_host()
    for row, half in enumerate(halves):
        sizes = np.diff(starts[row])
        assert_each_list_sorted(sizes, sorted_entries[row], half,
                                extra=width - int(starts[row, -1]))


def one_pixel_case(height, width, seed):
    """A case of two images whose every contribution lands on pixel (H - 1, W - 1) (border
    rule, offsets far beyond that corner: bench_deterministic.worst_case), with weight 1, one
    channel in and out and no mask, so col_grad[n, 0, k] = grad_output[n, 0] exactly and every
    term is exact (no rounding a fused multiply-add could skip)."""
    config = DeformConvConfig(batch=2, in_channels=1, out_channels=1, height=height,
                              width=width, with_mask=False, with_bias=False, dtype="float32",
                              seed=seed)
    case = bench_deterministic.worst_case(config)
    return case.with_arrays(weight=np.ones_like(case.arrays["weight"]))


def sum_in_id_order(case) -> np.ndarray:
    """grad_input of :func:`one_pixel_case` summed as the deterministic backward sums: pixel
    (H - 1, W - 1) of image n in increasing id = ((k H_out + i) W_out + j) 4 + corner, corner 0
    of weight 1 (the clamped point sits on the pixel), corners 1-3 of weight 0; so the terms
    are grad_output[n, 0, i, j] for k, then i, then j, added one after the other in float32.
    The case's seed is one whose sums differ when added in the reversed order (checked here),
    so the comparison sees the order."""
    taps = case.arrays["weight"][0, 0].size
    terms = np.tile(case.grad_output[:, 0].reshape(len(case.grad_output), -1), (1, taps))
    grad_input = np.zeros_like(case.arrays["input"])
    grad_input[:, 0, -1, -1] = np.add.accumulate(terms, axis=1, dtype=np.float32)[:, -1]
    reversed_sum = np.add.accumulate(terms[:, ::-1], axis=1, dtype=np.float32)[:, -1]
    assert np.all(reversed_sum != grad_input[:, 0, -1, -1]), "the sum must depend on the order"
    return grad_input


@pytest.mark.backend("host")
@pytest.mark.parametrize("grid", [(2, 3), (4, 7)])
def test_cuda_c_sums_one_pixel_in_increasing_id_order(grid):
    """Through the host build: its atomics place each list's ids in interleaved runs (threads
    one after the other, each striding over the samples), not in id order."""
    from refdyn.gpu import host
    case = one_pixel_case(6, 5, seed=0)
    with host.launch_grid(*grid):
        grads = host.deform_conv2d_backward(case.grad_output, **case.backward_kwargs(),
                                            deterministic=True)
    np.testing.assert_array_equal(grads.grad_input, sum_in_id_order(case))


@pytest.mark.backend("numba")
def test_numba_sums_one_pixel_in_increasing_id_order(nb):
    case = one_pixel_case(4, 4, seed=0)
    grads = nb.deform_conv2d_backward(case.grad_output, **case.backward_kwargs(),
                                      deterministic=True)
    np.testing.assert_array_equal(grads.grad_input, sum_in_id_order(case))


@pytest.mark.backend("host")
def test_bench_section_times_the_sort_on_reversed_and_shuffled_lists():
    report = bench.run(bench.build_parser().parse_args(
        ["--quick", "--repeats", "1", "--case", "deterministic"]))
    section = report["deterministic"]
    assert [(row["order"], row["length"]) for row in section["sort"]] == [
        (order, length) for length in bench_deterministic.QUICK_SORT_LENGTHS
        for order in ("reversed", "shuffled")]
    assert all(len(row["times_s"]) == 1 and row["min_s"] == row["median_s"] == row["times_s"][0]
               > 0 for row in section["sort"])
    assert [row["size"] for row in section["worst"]] == list(bench_deterministic.QUICK_WORST_SIZES)
    for row in section["worst"] + section["standard"]:
        kernels = row["deterministic"]
        assert kernels[bench_deterministic.SORT_KERNEL] > 0 and row["atomic"]["total"] > 0
        assert kernels["total"] == pytest.approx(sum(      # one repeat: that run's kernels
            seconds for name, seconds in kernels.items() if name != "total"))
        assert row["check_error"] <= bench_deterministic.CHECK_TOLERANCE
        assert row["grad_input_s"] == pytest.approx({
            "deterministic": sum(kernels[f"deform_conv_{name}"] for name in (
                "count_contributions_f32", "fill_contributions_f32", "sort_contributions",
                "weigh_contributions_f32", "grad_input_gather_f32")),
            "atomic": row["atomic"]["deform_conv_grad_input_atomic_f32"]})
    assert [row["list_length"] for row in section["worst"]] == [36 * s * s for s in (4, 6)]
    text = bench.format_report(report)
    assert "CPU numbers, not GPU numbers" in text and "ns per id per log2 s" in text


def test_bench_section_says_why_without_a_host_compiler(monkeypatch, capsys):
    monkeypatch.setattr("refdyn.gpu.host_compiler", lambda: None)
    assert cli.main(["bench", "--quick", "--repeats", "1", "--case", "deterministic"]) == 0
    assert "not run: no host C++ compiler" in capsys.readouterr().out
