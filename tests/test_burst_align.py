"""engine.burst.align: known motion recovered, both aligners, confidence, odd sizes."""
import numpy as np
import pytest

from engine.burst.align import AlignConfig, align, upsample_flow
from engine.burst.raw import grey
from tests.burst_data import STATIC, SYNTHETIC_BURST_MOTION, MotionConfig, MovingObject, burst, noise_model
from capture.burst_synthesis import true_flow


def epe(b, alignment, border=8) -> np.ndarray:
    """Mean end-point error per frame (mosaic pixels) of the dense flow against the true motion,
    `border` plane pixels ignored."""
    h, w = alignment.shape
    ys, xs = np.mgrid[0:h, 0:w]
    pts = np.stack([2 * xs.ravel() + 0.5, 2 * ys.ravel() + 0.5], axis=1)  # plane pixel -> mosaic centre
    out = []
    for i in range(1, b.noisy.shape[0]):
        truth = true_flow(b.motion[0], b.motion[i], 2 * h, 2 * w, pts).reshape(h, w, 2)
        err = np.linalg.norm(2 * alignment.flow(i) - truth, axis=-1)
        out.append(err[border:-border, border:-border].mean())
    return np.array(out)


@pytest.mark.parametrize("name", ["astronaut", "chelsea"])
def test_known_translations_are_recovered_to_a_tenth_of_a_pixel(name):
    b = burst(6, gain=1, size=(512, 384), seed=4, name=name, motion=MotionConfig(6.0, 0.0))
    al = align(grey(b.noisy), 0, noise_model(b))
    errors = epe(b, al)
    assert errors.mean() <= 0.1, errors
    # the affine model carries the translation: compare with the truth directly
    for i in range(1, 6):
        assert np.allclose(2 * al.affine[i][:, 2], -b.motion[i][:2], atol=0.12)


def test_handheld_rotation_and_translation_are_recovered():
    b = burst(8, gain=1, size=(512, 384), seed=5, motion=SYNTHETIC_BURST_MOTION)
    errors = epe(b, align(grey(b.noisy), 0, noise_model(b)))
    assert errors.mean() <= 0.12 and errors.max() <= 0.25, errors


def test_large_jumps_are_found_by_the_coarse_search():
    b = burst(3, gain=2, size=(512, 384), seed=6, motion=MotionConfig(20.0, 0.0))
    assert np.abs(b.motion[1:, :2]).max() > 10
    assert epe(b, align(grey(b.noisy), 0, noise_model(b))).max() <= 0.2


def test_dis_alignment_is_close_and_reports_a_dense_field():
    b = burst(4, gain=1, size=(256, 192), seed=7)
    al = align(grey(b.noisy), 0, noise_model(b), AlignConfig(method="dis"))
    assert al.dense is not None and al.dense.shape == (4, 96, 128, 2)
    assert al.method == "dis" and epe(b, al).mean() <= 0.6


def test_static_burst_gets_zero_flow_and_full_confidence():
    b = burst(4, gain=1, size=(256, 192), seed=8, motion=STATIC)
    al = align(grey(b.noisy), 0, noise_model(b))
    assert np.abs(al.tile_flow).mean() < 0.02 and np.abs(al.tile_flow).max() < 0.25
    assert al.confidence.mean() > 0.9


def test_a_moving_object_gets_low_confidence_where_it_moved_from_the_model():
    obj = MovingObject(size=48, start=(60, 60), velocity=(20, 10))
    b = burst(4, gain=1, size=(256, 192), seed=9, motion=STATIC, moving_object=obj)
    al = align(grey(b.noisy), 0, noise_model(b))
    tiles_hit = np.zeros(al.confidence.shape[1:], bool)
    for x, y, s in b.object_boxes[1:]:
        tiles_hit[y // 32 : (y + s) // 32 + 1, x // 32 : (x + s) // 32 + 1] = True
    conf = al.confidence[1:]
    assert conf[:, tiles_hit].mean() < 0.6 < conf[:, ~tiles_hit].mean()


def test_reference_can_be_any_frame_and_its_own_flow_is_zero():
    b = burst(4, gain=1, size=(256, 192), seed=10)
    al = align(grey(b.noisy), 2, noise_model(b))
    assert al.ref == 2 and not al.tile_flow[2].any() and (al.confidence[2] == 1).all()


@pytest.mark.parametrize("size", [(40, 24), (40, 26), (64, 48), (250, 130)])  # (40, 26): an odd 13-pixel tile
def test_small_and_odd_sizes_align_without_error(size):
    b = burst(3, gain=1, size=size, seed=11, motion=MotionConfig(2.0, 0.0))
    for method in ("tiles", "dis"):
        al = align(grey(b.noisy), 0, noise_model(b), AlignConfig(method=method))
        assert al.flow(1).shape == (size[1] // 2, size[0] // 2, 2)
        assert np.isfinite(al.flow(1)).all()


@pytest.mark.parametrize("tile", [16, 13])
def test_confidence_lowpass_expects_the_noise_it_leaves(tile):
    # the difference of two frames of white noise, each smoothed as Lucas-Kanade smooths them: the
    # confidence's low-pass (pyrDown for even tiles, a Gaussian for odd ones) must leave the
    # fraction of its variance that the confidence expects, or static tiles would read as motion
    import cv2

    from engine.burst.align import _LK_KSIZE, _LK_SIGMA, _mismatch_energy

    rng = np.random.default_rng(12)
    sigma = 0.05
    frames = [cv2.GaussianBlur(rng.normal(0, sigma, (20 * tile, 24 * tile)).astype(np.float32),
                               (_LK_KSIZE, _LK_KSIZE), _LK_SIGMA) for _ in range(2)]
    energy, kept = _mismatch_energy(frames[0] - frames[1], tile)
    assert energy.shape == (20, 24)
    assert abs(energy.mean() / (2 * sigma**2 * kept) - 1) < 0.05


def test_one_frame_aligns_to_itself():
    b = burst(1, size=(64, 48))
    al = align(grey(b.noisy), 0, noise_model(b))
    assert al.tile_flow.shape[0] == 1 and not al.tile_flow.any()


def test_upsampled_flow_reproduces_an_affine_field_exactly():
    tile = 16
    ny, nx = 6, 8
    cy, cx = np.mgrid[0:ny, 0:nx] * tile + (tile - 1) / 2
    field = np.stack([0.01 * cx - 0.02 * cy + 1.5, 0.03 * cx + 0.5], axis=-1).astype(np.float32)
    dense = upsample_flow(field, tile, ny * tile, nx * tile)
    ys, xs = np.mgrid[0 : ny * tile, 0 : nx * tile]
    want = np.stack([0.01 * xs - 0.02 * ys + 1.5, 0.03 * xs + 0.5], axis=-1)
    assert np.abs(dense - want).max() < 1e-3


def _opencv_warp(frame, model, resid, tile):
    """The frame warped by affine model + per-tile flow with OpenCV (what the kernels fuse)."""
    import cv2

    h, w = frame.shape
    ys, xs = np.mgrid[0:h, 0:w].astype(np.float32)
    per_pixel = np.repeat(np.repeat(resid, tile, axis=0), tile, axis=1)
    mx = xs + model[0, 0] * xs + model[0, 1] * ys + model[0, 2] + per_pixel[..., 0]
    my = ys + model[1, 0] * xs + model[1, 1] * ys + model[1, 2] + per_pixel[..., 1]
    return cv2.remap(frame, mx, my, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT101)


@pytest.mark.parametrize("tile,linear", [(8, [[0.01, -0.02], [0.02, 0.01]]), (16, [[0.0, -0.017], [0.017, 0.0]])])
def test_warped_tile_sums_match_an_opencv_remap_including_reflected_borders(tile, linear):
    # the first model reaches past every edge; the second is a 1-degree rotation, whose rows cross a
    # pixel boundary part-way along a tile (the kernel splits them there)
    import cv2

    from engine.burst import align_kernels

    rng = np.random.default_rng(7)
    f, ny, nx = 3, 5, 6
    h, w = ny * tile, nx * tile
    alt = cv2.GaussianBlur(rng.random((f * h, w), dtype=np.float32), (0, 0), 1.5).reshape(f, h, w)
    ref, gx, gy = (rng.random((h, w), dtype=np.float32) for _ in range(3))
    model = np.array([np.column_stack([linear, [3.5, -2.25]])] * f, np.float32)
    resid = rng.uniform(-1.5, 1.5, (f, ny, nx, 2)).astype(np.float32)
    out = np.empty((f, ny, nx, 3), np.float32)
    diff = np.empty((f, h, w), np.float32)
    align_kernels.warped_tile_sums(alt, ref, gx, gy, model, resid, tile, out, diff, 1)
    every_other = np.empty_like(out)
    align_kernels.warped_tile_sums(alt, ref, gx, gy, model, resid, tile, every_other, np.empty((0, 1, 1), np.float32), 2)
    for k in range(f):
        d = _opencv_warp(alt[k], model[k], resid[k], tile) - ref
        assert np.allclose(diff[k], d, atol=2e-4)
        for c, g in enumerate((gx * d, gy * d, d * d)):
            want = g.reshape(ny, tile, nx, tile).sum(axis=(1, 3))
            assert np.allclose(out[k, ..., c], want, rtol=1e-3, atol=2e-3)
            want = g.reshape(ny, tile, nx, tile)[:, ::2].sum(axis=(1, 3))  # rows 0, 2, 4... of each tile
            assert np.allclose(every_other[k, ..., c], want, rtol=1e-3, atol=2e-3)


def test_shifted_tile_ssd_finds_the_whole_pixel_step_that_matches():
    from engine.burst import align_kernels

    rng = np.random.default_rng(8)
    tile, ny, nx = 8, 4, 5
    scene = rng.random((ny * tile + 10, nx * tile + 10), dtype=np.float32)
    ref = np.ascontiguousarray(scene[5:-5, 5:-5])
    alt = np.ascontiguousarray(scene[4:-6, 6:-4])[None]  # alt(x - 1, y + 1) = ref(x, y)
    model = np.zeros((1, 2, 3), np.float32)
    resid = np.zeros((1, ny, nx, 2), np.float32)
    ssd = np.empty((1, ny, nx, 9), np.float32)
    align_kernels.shifted_tile_ssd(alt, ref, model, resid, tile, ssd)
    inner = ssd[0, 1:-1, 1:-1]  # away from the reflected borders
    assert (inner.argmin(axis=-1) == 3 * 2 + 0).all()  # the step dy = +1, dx = -1
    assert np.allclose(inner.min(axis=-1), 0.0, atol=1e-6)
    sums = np.empty((1, ny, nx, 3), np.float32)
    align_kernels.warped_tile_sums(alt, ref, ref, ref, model, resid, tile, sums, np.empty((0, 1, 1), np.float32), 1)
    assert np.allclose(ssd[0, ..., 4], sums[0, ..., 2], rtol=1e-5)  # no step: the plain warp's sum


def test_warp_kernels_stay_inside_the_image_for_any_flow():
    # numba does not check bounds: NaN or huge flows must be folded into the image, not read past it
    from engine.burst import align_kernels

    f, h, w, tile = 2, 32, 32, 8
    alt = np.random.default_rng(9).random((f, h, w), dtype=np.float32)
    resid = np.zeros((f, 4, 4, 2), np.float32)
    for bad in (np.nan, np.inf, -1e30, 1e9):
        model = np.full((f, 2, 3), bad, np.float32)
        out = np.empty((f, 4, 4, 3), np.float32)
        align_kernels.warped_tile_sums(alt, alt[0], alt[0], alt[0], model, resid, tile, out, np.empty((0, 1, 1), np.float32), 1)
        ssd = np.empty((f, 4, 4, 9), np.float32)
        align_kernels.shifted_tile_ssd(alt, alt[0], model, resid, tile, ssd)
        # every sample came from inside the image, whose values lie in [0, 1]: a tile's sums of
        # products of differences are at most tile * tile in size (a read past the image would
        # bring arbitrary floats), or NaN where the model's own NaN (or inf - inf) reached the
        # interpolation weights
        for sums in (out, ssd):
            assert np.all(np.isnan(sums) | (np.abs(sums) <= tile * tile)), bad
        if np.isfinite(bad):
            assert np.isfinite(out).all() and np.isfinite(ssd).all(), bad


def test_affine_fit_ignores_outlier_tiles_and_falls_back_to_a_translation_then_to_zero():
    from engine.burst.align import _fit_affine, tile_centres

    rng = np.random.default_rng(4)
    centres = tile_centres(15, 20, 16)
    truth = np.array([[0.01, -0.02, 3.5], [0.02, 0.01, -2.0]])
    pts = np.concatenate([centres, np.ones((15, 20, 1))], axis=-1)
    flow = (pts @ truth.T + rng.normal(0, 0.03, (15, 20, 2)))[None].astype(np.float32)
    flow[0, 3:8, 4:9] += (12.0, -7.0)  # a moving object covering 25 of 300 tiles
    weight = np.ones((15, 20), np.float32)
    model = _fit_affine(centres, flow, weight)[0]
    grid = pts.reshape(-1, 3)
    assert np.abs(grid @ model.T - grid @ truth.T).max() < 0.05  # the object did not pull the model
    few = np.zeros((15, 20), np.float32)
    few[0, :5] = 1.0  # five usable tiles in one row: a translation only, about their mean
    model = _fit_affine(centres, flow, few)[0]
    assert np.allclose(model[:, :2], 0.0) and np.allclose(model[:, 2], flow[0, 0, :5].mean(axis=0), atol=0.1)
    few[0, 2:] = 0.1  # two usable tiles: no model at all
    assert np.array_equal(_fit_affine(centres, flow, few), np.zeros((1, 2, 3), np.float32))


def test_offset_search_table_matches_numpy_with_reflected_borders():
    from engine.burst import align_kernels
    from engine.burst.align import tile_means

    rng = np.random.default_rng(6)
    ref = rng.random((24, 40), dtype=np.float32)
    alt = rng.random((3, 24, 40), dtype=np.float32)
    r = 4
    out = np.empty((2 * r + 1, 2 * r + 1, 3, 3, 5), np.float32)
    align_kernels.offset_tile_ssd(alt, ref, 8, r, out)
    padded = np.pad(alt, ((0, 0), (r, r), (r, r)), mode="reflect")  # REFLECT_101
    for dy in range(2 * r + 1):
        for dx in range(2 * r + 1):
            d = padded[:, dy : dy + 24, dx : dx + 40] - ref
            assert np.allclose(out[dy, dx], tile_means(d * d, 8), rtol=1e-5), (dy, dx)


@pytest.mark.parametrize("cfg", [AlignConfig(), AlignConfig(global_model=False), AlignConfig(method="dis")])
def test_flows_at_points_are_the_dense_flow_there_replicated_past_the_edges(cfg):
    b = burst(4, gain=2, size=(256, 192), seed=11)
    al = align(grey(b.noisy), 0, noise_model(b), cfg)
    h, w = al.shape
    rng = np.random.default_rng(11)
    whole = np.stack(np.meshgrid(np.arange(w, dtype=np.float32), np.arange(h, dtype=np.float32)), axis=-1)
    outside = np.array([[-9.5, -3.0], [w + 7.25, 5.0], [10.0, h + 20.0], [w + 1.0, -1.0]], np.float32)
    for i in range(1, 4):
        flow = al.flow(i)
        assert np.abs(al.flows_at([i], whole)[0] - flow).max() < 1e-4  # at the pixels, the field itself
        # between pixels: bilinear, to within the field's kinks: the tile residuals are bilinear between
        # tile centres, which fall halfway between pixels (so a pixel's interpolation cuts a corner)
        pts = rng.uniform(0, 1, (50, 2)).astype(np.float32) * np.array([w - 1, h - 1], np.float32)
        x0, y0 = np.floor(pts[:, 0]).astype(int), np.floor(pts[:, 1]).astype(int)
        fx, fy = (pts[:, 0] - x0)[:, None], (pts[:, 1] - y0)[:, None]
        x1, y1 = np.minimum(x0 + 1, w - 1), np.minimum(y0 + 1, h - 1)
        want = ((1 - fy) * ((1 - fx) * flow[y0, x0] + fx * flow[y0, x1]) + fy * ((1 - fx) * flow[y1, x0] + fx * flow[y1, x1]))
        assert np.abs(al.flows_at([3, i], pts)[1] - want).max() < 0.02
        clamped = np.clip(outside, 0, [w - 1, h - 1]).astype(int)
        assert np.abs(al.flows_at([i], outside)[0] - flow[clamped[:, 1], clamped[:, 0]]).max() < 1e-4


def test_the_affine_fits_median_is_numpys_with_ties_and_even_lengths():
    from engine.burst.align_kernels import _median

    rng = np.random.default_rng(12)
    for n in [*range(1, 30), 299, 300]:
        for values in (rng.random(n), rng.integers(0, 4, n).astype(np.float64)):  # distinct, and many ties
            assert _median(values.copy()) == np.median(values)
