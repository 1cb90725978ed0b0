"""engine.burst.merge: the tile DFT, the Wiener merge against the baselines, no ghosts, clipping."""
import numpy as np
import pytest

from engine.burst import merge_kernels
from engine.burst.align import align
from engine.burst.merge import MergeConfig, merge, merge_mean, raised_cosine, tile_inverse, tile_spectra
from engine.burst.raw import grey
from tests.burst_data import STATIC, MotionConfig, MovingObject, burst, noise_model
from engine.metrics import burst_score as score


def rmse(a, b, mask=None):
    d = (a - b) ** 2
    return float(np.sqrt(d[:, mask].mean() if mask is not None else d.mean()))


def tiles_of(img, t):
    """(..., H, W) -> (..., H/s - 1, W/s - 1, t, t) copies of the tiles at stride s = t/2 (numpy)."""
    s = t // 2
    *lead, h, w = img.shape
    st = img.strides
    view = np.lib.stride_tricks.as_strided(img, (*lead, h // s - 1, w // s - 1, t, t),
                                           (*st[:-2], st[-2] * s, st[-1] * s, st[-2], st[-1]))
    return view.copy()


@pytest.mark.parametrize("t", [8, 16])
def test_tile_spectra_match_numpy_keep_float32_and_invert(t):
    x = np.random.default_rng(0).random((3, 7, t, t), dtype=np.float32)
    spec = tile_spectra(x)
    assert spec.dtype == np.complex64 and spec.shape == (3, 7, t, t // 2 + 1)
    assert np.allclose(spec, np.fft.rfft2(x), atol=1e-4)
    assert np.allclose(tile_inverse(spec, t), x, atol=1e-5)


def test_raised_cosine_tiles_add_back_to_the_image():
    img = np.random.default_rng(1).random((4, 64, 96), dtype=np.float32)
    tiles = np.empty((4, 7, 11, 16, 16), np.float32)
    merge_kernels.windowed_tiles(img, raised_cosine(16), tiles)
    assert np.array_equal(tiles, tiles_of(img, 16) * raised_cosine(16))
    back = np.zeros_like(img)
    merge_kernels.overlap_add(tiles, back, 0)
    assert np.abs(back[:, 8:-8, 8:-8] - img[:, 8:-8, 8:-8]).max() < 1e-5


def tile_at_shift(frame, top, left, t, fx, fy, flag):
    """OpenCV's remap of a (h, w, 4) frame onto a t x t tile at plane (left, top), shifted by (fx, fy)."""
    import cv2

    xs, ys = np.meshgrid(np.arange(t, dtype=np.float32) + left + fx, np.arange(t, dtype=np.float32) + top + fy)
    return cv2.remap(frame, xs, ys, flag, borderMode=cv2.BORDER_REFLECT101)


@pytest.mark.parametrize("cubic", [True, False])
def test_shifted_differences_take_each_tile_at_its_shift_past_every_edge_and_ignore_other_frames_clipping(cubic):
    import cv2

    rng = np.random.default_rng(2)
    t, s, ny, nx, f_n = 8, 4, 5, 9, 3
    h, w = s * (ny + 1) - t, s * (nx + 1) - t  # the padded reference is half a tile bigger on every side
    ref = rng.random((4, h + t, w + t), dtype=np.float32) * 1.1  # some reference samples clip too
    frames = rng.random((f_n, h, w, 4), dtype=np.float32) * 1.1
    # shifts in 32nds of a pixel, where OpenCV's interpolation tables hold the exact weights; some
    # whole, some reaching 9 px past the frame
    shifts = (rng.integers(-9 * 32, 9 * 32, (f_n, ny, nx, 2)) / 32).astype(np.float32)
    shifts[0, 0, 0] = (2.0, -3.0)
    out = np.empty((f_n, 4, ny - 1, nx, t, t), np.float32)
    merge_kernels.shifted_differences(ref, frames, shifts, cubic, raised_cosine(t), 1.0, 1, out)  # tile rows 1..ny-1
    flag = cv2.INTER_CUBIC if cubic else cv2.INTER_LINEAR
    clipped_only_there = 0
    for f in range(f_n):
        for j in range(1, ny):
            for i in range(nx):
                a = tile_at_shift(frames[f], s * (j - 1), s * (i - 1), t, *shifts[f, j, i], flag).transpose(2, 0, 1)
                r = ref[:, s * j : s * j + t, s * i : s * i + t]
                d = np.where((a >= 1.0) & (r < 1.0), 0.0, r - a) * raised_cosine(t)
                clipped_only_there += int(((a >= 1.0) & (r < 1.0)).sum())
                assert np.abs(out[f, :, j - 1, i] - d).max() < 2e-5, (f, j, i)
    assert clipped_only_there > 0


def test_wiener_kernels_match_their_numpy_formulas():
    rng = np.random.default_rng(3)
    shape = (5, 4, 3, 6, 16, 9)
    spec = (rng.normal(size=shape) + 1j * rng.normal(size=shape)).astype(np.complex64)
    c = rng.uniform(0.1, 4, (4, 3, 6)).astype(np.float32)
    conf = rng.uniform(0, 1, (5, 3, 6)).astype(np.float32)
    acc = np.empty(shape[1:], np.complex64)
    merge_kernels.wiener_sum(spec, c, conf, 1 / 6, acc)
    cc, conf_ = c[None, ..., None, None], conf[:, None, ..., None, None]
    want = (spec * (conf_ * cc / (np.abs(spec) ** 2 + cc))).sum(axis=0) / 6
    assert np.allclose(acc, want, rtol=1e-4, atol=1e-5)
    ref = (rng.normal(size=shape[1:]) + 1j * rng.normal(size=shape[1:])).astype(np.complex64)
    c2 = rng.uniform(0.1, 4, (4, 3, 6)).astype(np.float32)
    m = ref - acc
    want = m * (np.abs(m) ** 2 / (np.abs(m) ** 2 + c2[..., None, None]))
    merge_kernels.spatial_shrink(ref, acc, c2)
    assert np.allclose(ref, want, rtol=1e-4, atol=1e-5)


def general_merge16(ref, frames, shifts, c, conf, inv_n, c2, spatial):
    """What wiener_merge16 fuses, step by step through the general path's kernels and scipy's FFTs."""
    f, (p, ny, nx) = frames.shape[0], c.shape
    window = raised_cosine(16)
    tiles = np.empty((f, p, ny, nx, 16, 16), np.float32)
    merge_kernels.shifted_differences(ref, frames, shifts, True, window, 1.0, 0, tiles)
    acc = np.empty((p, ny, nx, 16, 9), np.complex64)
    merge_kernels.wiener_sum(tile_spectra(tiles), c, conf, inv_n, acc)
    own = np.empty((p, ny, nx, 16, 16), np.float32)
    merge_kernels.windowed_tiles(ref, window, own)
    m = tile_spectra(own)
    if spatial:
        merge_kernels.spatial_shrink(m, acc, c2)
    else:
        m -= acc
    out = np.zeros_like(ref)
    merge_kernels.overlap_add(tile_inverse(m, 16), out, 0)
    return out


@pytest.mark.parametrize("frames,nx,spatial", [(7, 6, True), (7, 5, False), (3, 5, True), (9, 6, True), (16, 3, False)])
def test_fused_merge_kernel_equals_the_general_path(frames, nx, spatial):
    # 7 frames fill the 8 lanes once; 3 leave lanes empty; 9 and 16 take two and three groups;
    # an odd number of tile columns leaves the inverse's second tile empty
    rng = np.random.default_rng(frames + nx)
    ny = 4
    ref = rng.random((4, 8 * (ny + 1), 8 * (nx + 1)), dtype=np.float32) * 1.1  # some samples clip
    inner = ref[:, 8:-8, 8:-8].transpose(1, 2, 0)
    others = (inner[None] + rng.normal(0, 0.05, (frames,) + inner.shape)).astype(np.float32)
    others[0, :8] += 0.5  # a patch the merge must reject
    shifts = rng.uniform(-1.5, 1.5, (frames, ny, nx, 2)).astype(np.float32)
    c = rng.uniform(0.05, 2.0, (4, ny, nx)).astype(np.float32)
    c2 = rng.uniform(0.0, 0.5, (4, ny, nx)).astype(np.float32)
    conf = rng.uniform(0, 1, (frames, ny, nx)).astype(np.float32)
    out = np.zeros_like(ref)
    merge_kernels.wiener_merge16(ref, others, shifts, True, raised_cosine(16), 1.0, c, conf, 1 / (frames + 1), c2, spatial, out)
    want = general_merge16(ref, others, shifts, c, conf, 1 / (frames + 1), c2, spatial)
    assert np.abs(out - want).max() < 2e-5


def test_a_nan_or_absurd_flow_samples_the_tile_unshifted_instead_of_reading_outside_the_frame():
    rng = np.random.default_rng(9)
    ref = rng.random((4, 48, 64), dtype=np.float32)
    frames = np.ascontiguousarray(ref[None, :, 8:-8, 8:-8].transpose(0, 2, 3, 1).repeat(2, axis=0))
    c = np.full((4, 5, 7), 0.1, np.float32)
    conf = np.ones((2, 5, 7), np.float32)
    shifts = rng.uniform(-1, 1, (2, 5, 7, 2)).astype(np.float32)
    bad = shifts.copy()
    bad[0, 1, 2] = (np.nan, 0.5)
    bad[1, 3, 4] = (0.25, -np.inf)
    bad[1, 2, 2] = (1e30, 3.0)
    sane = shifts.copy()
    sane[0, 1, 2] = sane[1, 3, 4] = sane[1, 2, 2] = 0.0
    out, want = np.zeros_like(ref), np.zeros_like(ref)
    merge_kernels.wiener_merge16(ref, frames, bad, True, raised_cosine(16), 2.0, c, conf, 1 / 3, c, True, out)
    merge_kernels.wiener_merge16(ref, frames, sane, True, raised_cosine(16), 2.0, c, conf, 1 / 3, c, True, want)
    assert np.isfinite(out).all() and np.array_equal(out, want)


def test_fft_codelets_are_generated_from_the_current_generator_and_transform_correctly():
    from engine.burst import fft_codelets
    from engine.burst.fft16 import fft16_cols, fft16_rows

    assert fft_codelets.TARGET.read_text() == fft_codelets.module_source(), "run python -m engine.burst.fft_codelets"
    rng = np.random.default_rng(5)
    x = (rng.normal(size=(16, 16, 8)) + 1j * rng.normal(size=(16, 16, 8))).astype(np.complex64)
    buf = np.stack([x.real, x.imag], axis=2).astype(np.float32).ravel()  # point p lane l: (2p + part) * 8 + l
    for y in range(16):
        fft16_rows.py_func(buf, 16 * y, np.float32(-1.0))
    for col in range(16):
        fft16_cols.py_func(buf, col, np.float32(-1.0))
    b = buf.reshape(16, 16, 2, 8)
    assert np.allclose(b[:, :, 0] + 1j * b[:, :, 1], np.fft.fft2(x, axes=(0, 1)), atol=1e-3)
    for col in range(16):
        fft16_cols.py_func(buf, col, np.float32(1.0))
    for y in range(16):
        fft16_rows.py_func(buf, 16 * y, np.float32(1.0))
    assert np.allclose(b[:, :, 0] + 1j * b[:, :, 1], 256 * x, atol=1e-3)


@pytest.mark.parametrize("gain", [1, 4])
def test_wiener_merge_beats_the_reference_the_mean_and_the_robust_average(gain):
    b = burst(8, gain=gain, size=(256, 192), seed=20 + gain)
    nm = noise_model(b)
    al = align(grey(b.noisy), 0, nm)
    clean = b.clean[0]
    psnr = {
        "reference": score(b.noisy[0], clean).psnr_linear,
        "mean of unaligned": score(merge_mean(b.noisy), clean).psnr_linear,
        "mean of aligned": score(merge_mean(b.noisy, al), clean).psnr_linear,
        "robust": score(merge(b.noisy, al, nm, MergeConfig(method="robust")), clean).psnr_linear,
    }
    wiener = score(merge(b.noisy, al, nm), clean).psnr_linear
    for name, value in psnr.items():
        assert wiener > value + 0.5, f"Wiener {wiener:.2f} dB vs {name} {value:.2f} dB"
    assert wiener > psnr["reference"] + {1: 1.5, 4: 5.0}[gain]


def test_a_moving_object_is_not_ghosted():
    obj = MovingObject(size=48, start=(50, 40), velocity=(16, 8))
    b = burst(6, gain=2, size=(256, 192), seed=30, motion=MotionConfig(3.0, 0.2), moving_object=obj)
    nm = noise_model(b)
    al = align(grey(b.noisy), 0, nm)
    path = np.zeros(b.noisy.shape[2:], bool)  # everywhere the object went, in plane pixels
    for x, y, s in b.object_boxes:
        path[max(y, 0) // 2 : (y + s) // 2, max(x, 0) // 2 : (x + s) // 2] = True
    clean = b.clean[0]
    ref_err = rmse(b.noisy[0], clean, path)
    wiener_err = rmse(merge(b.noisy, al, nm), clean, path)
    mean_err = rmse(merge_mean(b.noisy, al), clean, path)
    assert mean_err > 2 * ref_err, "the test needs an object that ghosts when merged blindly"
    assert wiener_err < ref_err, f"ghost: {wiener_err:.4f} vs reference {ref_err:.4f}"
    assert rmse(merge(b.noisy, al, nm, MergeConfig(method="robust")), clean, path) < 1.2 * ref_err


def test_clipped_samples_in_other_frames_do_not_leak_into_the_reference():
    b = burst(6, gain=1, size=(256, 192), seed=31, motion=STATIC)
    nm = noise_model(b)
    stack = b.noisy.copy()
    stack[1:, :, 40:60, 50:80] = 1.0  # a flash of saturation in every other frame
    al = align(grey(stack), 0, nm)
    out = merge(stack, al, nm)
    region = (slice(None), slice(40, 60), slice(50, 80))
    assert np.abs(out[region] - b.clean[0][region]).mean() < 0.02
    ring = np.zeros(stack.shape[2:], bool)
    ring[32:68, 42:88] = True
    ring[40:60, 50:80] = False
    assert rmse(out, b.clean[0], ring) <= rmse(b.noisy[0], b.clean[0], ring)


def test_identical_noise_free_frames_merge_to_themselves():
    b = burst(4, gain=1, size=(128, 96), seed=32, motion=STATIC)
    stack = np.repeat(b.clean[:1], 4, axis=0)
    al = align(grey(stack), 0, noise_model(b))
    out = merge(stack, al, noise_model(b), MergeConfig(spatial=0.0))
    assert np.abs(out - stack[0]).max() < 1e-4


def test_merge_config_refuses_nonsense():
    with pytest.raises(ValueError, match="merge method"):
        MergeConfig(method="median")
    with pytest.raises(ValueError, match="even"):
        MergeConfig(tile=15)


def test_merges_from_two_threads_at_once_match_the_one_at_a_time_result():
    # numba's workqueue threads (the fallback threading layer) abort the process if two threads
    # launch kernels together; the merge's lock must make concurrent merges (the engine and a
    # loader's warm-up) safe and exact under any layer.
    import threading

    bursts = [burst(4, gain=2, size=(128, 96), seed=s) for s in (40, 41)]
    inputs = [(b.noisy, align(grey(b.noisy), 0, noise_model(b)), noise_model(b)) for b in bursts]
    alone = [merge(*x) for x in inputs]
    together: dict[int, np.ndarray] = {}
    threads = [threading.Thread(target=lambda k=k: together.__setitem__(k, [merge(*inputs[k]) for _ in range(3)]))
               for k in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    for k in range(2):
        for out in together[k]:
            assert np.array_equal(out, alone[k])


@pytest.mark.slow  # a fresh interpreter loads (or, on a new machine, compiles) every kernel: `make test-all`
def test_burst_fusion_compiles_its_kernels_when_it_is_made():
    # in a fresh interpreter: in this one earlier tests have compiled them already
    import subprocess
    import sys

    # the default path's kernels, and the general merge path's (other tile sizes), which it does not need
    code = ("from engine.burst.sampling_kernels import cached_kernels\n"
            "from engine.burst.fusion import BurstFusion\n"
            "used = ['wiener_merge16', 'interleave_frames', 'warped_tile_sums',\n"
            "        'shifted_tile_ssd', 'offset_tile_ssd', 'fit_affine_irls']\n"
            "general = ['shifted_differences', 'windowed_tiles', 'wiener_sum', 'spatial_shrink', 'overlap_add']\n"
            "kernels = {k.__name__: k for k in cached_kernels()}\n"
            "compiled = lambda names: sum(bool(kernels[n].signatures) for n in names)\n"
            "before = compiled(used)\n"
            "BurstFusion(4)\n"
            "print(before, compiled(used), compiled(general))\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, check=True)
    assert out.stdout.split() == ["0", "6", "0"], out.stdout + out.stderr


def test_the_general_path_merges_the_same_picture_in_strips_as_in_one_piece():
    b = burst(4, gain=2, size=(256, 192), seed=42)
    nm = noise_model(b)
    al = align(grey(b.noisy), 0, nm)
    whole = merge(b.noisy, al, nm, MergeConfig(tile=8))  # 256x192 mosaic: one strip
    for mb in (1e-6, 0.2, 0.5):  # one tile row per strip, and strips of several rows that end mid-image
        d = np.abs(merge(b.noisy, al, nm, MergeConfig(tile=8, strip_mb=mb)) - whole)
        assert d.max() < 1e-5, (mb, d.max())  # float32 rounding: pocketfft batches transforms differently


def test_planes_warp_together_as_each_would_alone_past_every_edge():
    import cv2

    from engine.burst.merge import warp_planes

    rng = np.random.default_rng(8)
    planes = rng.random((4, 60, 80), dtype=np.float32)
    flow = rng.normal(0, 4, (60, 80, 2)).astype(np.float32)  # samples up to ~15 px outside on every side
    ys, xs = np.mgrid[0:60, 0:80].astype(np.float32)
    m1, m2 = cv2.convertMaps(xs + flow[..., 0], ys + flow[..., 1], cv2.CV_16SC2)
    for interpolation, flag in (("cubic", cv2.INTER_CUBIC), ("linear", cv2.INTER_LINEAR)):
        want = np.stack([cv2.remap(p, m1, m2, flag, borderMode=cv2.BORDER_REFLECT101) for p in planes])
        assert np.abs(warp_planes(planes, flow, interpolation) - want).max() < 1e-6
