import dataclasses
import pickle

import cv2
import numpy as np
import pytest

from capture.clock import SYSTEM_CLOCK, Clock, FakeClock
from capture.errors import SourceInvalid
from capture.frame import GroundTruth, PixelFormat
from capture.ring_buffer import RingBuffer
from capture.simulated import (
    HandheldShake,
    ShakeConfig,
    RecentMax,
    SimulatedCamera,
    SimulatedConfig,
    shake_matrix,
    to_raw_u16,
)
from capture.sources import SourceOptions, open_source
from engine.metrics import psnr
from capture.worker import CaptureState, CaptureWorker
from tests.conftest import DEADLINE_S, eventually
from capture.degradations import (
    WEBCAM_NOISE_LEVELS,
    NoiseLevel,
    downscale,
    linear_to_u8,
    motion_blur_kernel,
    u8_to_linear,
)

BGR, BAYER = PixelFormat.BGR8, PixelFormat.BAYER16
NO_ROTATION = ShakeConfig(sigma_deg=0.0, max_rotation_deg=0.0)


def camera(clock: Clock = SYSTEM_CLOCK, **kw) -> SimulatedCamera:
    kw.setdefault("realtime", False)
    cam = SimulatedCamera(SimulatedConfig(**kw), clock=clock)
    cam.open()
    return cam


def frames(n: int, **kw) -> list:
    cam = camera(**kw)
    try:
        return [cam.read() for _ in range(n)]
    finally:
        cam.close()


def image_dir(tmp_path, *images: np.ndarray):
    for i, img in enumerate(images):
        assert cv2.imwrite(str(tmp_path / f"img{i}.png"), img)
    return str(tmp_path)


@pytest.mark.parametrize("size", [(640, 480), (320, 240)])
@pytest.mark.parametrize("fmt", [BGR, BAYER])
def test_frames_have_the_layout_of_their_format(fmt, size):
    w, h = size
    fs = frames(3, width=w, height=h, pixel_format=fmt)
    seqs = [f.seq for f in fs]
    assert seqs == sorted(set(seqs))
    assert all(a.t_capture_ns < b.t_capture_ns for a, b in zip(fs, fs[1:]))
    for f in fs:
        assert f.pixel_format is fmt and f.source == f"simulated:{w}x{h}@30" + (":bayer" if fmt is BAYER else "")
        assert not f.pixels.flags.writeable
        if fmt is BGR:
            assert f.pixels.shape == (h, w, 3) and f.pixels.dtype == np.uint8 and f.raw is None
            assert f.truth.clean.shape == (2 * h, 2 * w, 3) and f.truth.clean.dtype == np.uint8
        else:
            assert f.pixels.shape == (h, w) and f.pixels.dtype == np.uint16
            assert f.truth.clean.shape == (h, w) and f.truth.clean.dtype == np.uint16
            assert f.pixels.max() <= f.raw.white_level
        assert len(f.truth.motion) == 3


@pytest.mark.parametrize("fmt", [BGR, BAYER])
def test_same_seed_same_frames_other_seed_other_frames(fmt):
    a = frames(4, width=320, height=240, pixel_format=fmt, seed=3, moving_object=True)
    b = frames(4, width=320, height=240, pixel_format=fmt, seed=3, moving_object=True)
    c = frames(4, width=320, height=240, pixel_format=fmt, seed=4, moving_object=True)
    for fa, fb in zip(a, b):
        np.testing.assert_array_equal(fa.pixels, fb.pixels)
        np.testing.assert_array_equal(fa.truth.clean, fb.truth.clean)
        assert fa.truth.motion == fb.truth.motion
    assert not np.array_equal(a[-1].pixels, c[-1].pixels)
    assert a[-1].truth.motion != c[-1].truth.motion


@pytest.mark.parametrize("noise, floor", [("off", 40.0), ("low", 30.0)])
def test_truth_is_the_clean_2x_frame_registered_with_it(noise, floor):
    # Frame and truth are resampled apart (at 1x and at 2x), which alone leaves them ~43 dB apart;
    # "low" noise is ~32 dB on its own (the darks amplify it in sRGB).
    fs = frames(9, width=640, height=480, noise=noise, exposure_fraction=0.0, seed=1)
    for f in fs[::4]:
        down = linear_to_u8(downscale(u8_to_linear(f.truth.clean), 2))  # the protocol's 2x area downscale
        aligned = psnr(down, f.pixels)
        assert aligned > floor
        for shift in ((3, 0), (0, 3), (-2, -2)):
            assert psnr(np.roll(down, shift, axis=(1, 0)), f.pixels) < aligned - 8.0


def test_motion_blur_follows_the_motion_and_keeps_registration():
    # A fast hand: every frame moves far, so every frame is blurred along its motion.
    fast = ShakeConfig(sigma_px=6.0, tau_s=0.2, smooth_s=0.01, max_shift_px=12.0)
    sharp = frames(6, width=320, height=240, noise="off", shake=fast, exposure_fraction=0.0, seed=5)
    blurred = frames(6, width=320, height=240, noise="off", shake=fast, exposure_fraction=1.0, seed=5)
    for prev, s, b in zip(sharp, sharp[1:], blurred[1:]):
        assert s.truth.motion == b.truth.motion
        dx, dy = (s.truth.motion[i] - prev.truth.motion[i] for i in (0, 1))
        assert np.hypot(dx, dy) > 0.5
        # The blurred frame is the sharp one blurred in linear light along this frame's motion, by
        # the centred kernel of the degradation protocol (so the picture does not move).
        lin = u8_to_linear(s.pixels)
        along, across = (linear_to_u8(cv2.filter2D(lin, -1, motion_blur_kernel(*k), borderType=cv2.BORDER_REFLECT101))
                         for k in ((dx, dy), (-dy, dx)))
        assert psnr(along, b.pixels) > 45.0
        assert psnr(along, b.pixels) > psnr(across, b.pixels) + 10.0


def test_true_motion_matches_phase_correlation_between_frames():
    fs = frames(40, width=320, height=240, noise="low", exposure_fraction=0.0, shake=NO_ROTATION, seed=2)
    grey = [cv2.cvtColor(f.pixels, cv2.COLOR_BGR2GRAY).astype(np.float64) for f in fs]
    window = cv2.createHanningWindow((320, 240), cv2.CV_64F)
    moved = 0.0
    for j in range(1, 40, 3):
        (sx, sy), _ = cv2.phaseCorrelate(grey[0], grey[j], window)
        (x0, y0, _), (xj, yj, _) = fs[0].truth.motion, fs[j].truth.motion
        # the picture moves opposite to the camera: frame j is frame 0 shifted by d0 - dj
        assert abs(sx - (x0 - xj)) < 0.3 and abs(sy - (y0 - yj)) < 0.3, (j, (sx, sy), (x0 - xj, y0 - yj))
        moved = max(moved, abs(x0 - xj), abs(y0 - yj))
    assert moved > 1.5  # the test saw real motion, not a still camera


def test_bayer_motion_is_exact_and_measurable():
    w, h = 320, 240
    cam = camera(width=w, height=h, pixel_format=BAYER, noise="off", shake=NO_ROTATION, seed=2)
    fs = [cam.read() for _ in range(40)]
    # Exact: the clean mosaic is the scene warped by the reported motion, sampled at the RGGB sites.
    rgb = np.dstack(cam._scene.planes)
    for f in fs[::13]:
        warped = cv2.warpAffine(rgb, shake_matrix(f.truth.motion, w, h, cam.margin), (w, h),
                                flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP, borderMode=cv2.BORDER_REFLECT101)
        mosaic = np.choose(np.array([[0, 1], [1, 2]])[np.arange(h)[:, None] % 2, np.arange(w) % 2],
                           np.moveaxis(warped, 2, 0))
        expected = to_raw_u16(mosaic.astype(np.float32), 64, f.raw.white_level)
        assert np.abs(expected.astype(int) - f.truth.clean.astype(int)).max() <= 1
    # Measurable: a demosaicked phase correlation agrees, give or take the demosaic's own error (~0.3 px).
    grey = [cv2.cvtColor(cv2.cvtColor(f.truth.clean, cv2.COLOR_BayerRG2BGR_EA), cv2.COLOR_BGR2GRAY).astype(np.float64)
            for f in fs]
    window = cv2.createHanningWindow((w, h), cv2.CV_64F)
    for j in range(1, 40, 3):
        (sx, sy), _ = cv2.phaseCorrelate(grey[0], grey[j], window)
        (x0, y0, _), (xj, yj, _) = fs[0].truth.motion, fs[j].truth.motion
        assert abs(sx - (x0 - xj)) < 0.4 and abs(sy - (y0 - yj)) < 0.4


SHOT_DOMINATED = NoiseLevel(sigma_read=10**-2.6, sigma_shot=10**-1.7)  # the square-root path, not the line


@pytest.mark.parametrize("level", ["low", "mid", "high", SHOT_DOMINATED])
def test_noise_in_a_flat_region_has_the_configured_std(tmp_path, level):
    grey = 128  # mid-grey: far from the clip at black, quantisation small next to the noise
    flat = image_dir(tmp_path, np.full((50, 50, 3), grey, np.uint8))
    f = frames(1, width=320, height=240, noise=level, image_dir=flat)[0]
    x = float(u8_to_linear(np.uint8(grey)))
    n = WEBCAM_NOISE_LEVELS.get(level, level)
    expected = np.sqrt(n.sigma_shot**2 * x + n.sigma_read**2)
    measured = u8_to_linear(f.pixels).reshape(-1, 3)
    np.testing.assert_allclose(measured.std(axis=0), expected, rtol=0.05 if level != "low" else 0.08)
    np.testing.assert_allclose(measured.mean(axis=0), x, rtol=0.02)


def test_bayer_noise_without_the_straight_line_shortcut():
    f = frames(1, width=320, height=240, pixel_format=BAYER, noise=SHOT_DOMINATED)[0]
    x = (f.truth.clean.astype(np.float64) - 64) / (1023 - 64)
    y = (f.pixels.astype(np.float64) - 64) / (1023 - 64)
    m = (x > 0.05) & (x < 0.3) & (f.pixels < 1023)
    s, o = f.raw.noise_profile[0]
    assert ((y - x)[m] ** 2 / (s * x[m] + o)).mean() == pytest.approx(1.0, rel=0.06)


def test_noise_below_black_clips_to_zero(tmp_path):
    f = frames(1, width=320, height=240, noise="high", image_dir=image_dir(tmp_path, np.zeros((8, 8, 3), np.uint8)))[0]
    assert 0.4 < np.mean(f.pixels == 0) < 0.6  # half the noise falls below black
    assert f.pixels.max() < 150  # and nothing wraps round to white


def test_raw_meta_is_valid_and_its_noise_profile_matches_the_noise():
    f = frames(2, width=320, height=240, pixel_format=BAYER, noise="mid", seed=6)[-1]
    raw = f.raw
    assert raw.cfa_pattern == "RGGB" and raw.black_level == (64.0,) * 4
    assert raw.white_level == 1023 and raw.bits_per_sample == 10
    assert raw.as_shot_neutral[1] == 1.0
    assert 1 / 2.4 <= raw.as_shot_neutral[0] <= 1 / 1.9 and 1 / 1.9 <= raw.as_shot_neutral[2] <= 1 / 1.5
    assert raw.color_matrix.shape == (3, 3) and abs(np.linalg.det(raw.color_matrix)) > 1e-3
    assert raw.exposure_time_s == pytest.approx(0.5 / 30)
    assert len(raw.noise_profile) == 3  # R, G, B, as DNG NoiseProfile has it
    s, o = raw.noise_profile[0]
    n = WEBCAM_NOISE_LEVELS["mid"]
    assert (s, o) == pytest.approx((n.sigma_shot**2, n.sigma_read**2))
    scale = raw.white_level - 64.0
    x = (f.truth.clean.astype(np.float64) - 64) / scale
    y = (f.pixels.astype(np.float64) - 64) / scale
    unclipped = (f.pixels > 0) & (f.pixels < raw.white_level)
    checked = 0
    for lo, hi in [(0.03, 0.1), (0.1, 0.2), (0.2, 0.4)]:
        m = unclipped & (x >= lo) & (x < hi)
        if m.sum() < 3000:
            continue
        variance = (y - x)[m].var() - 2 / (12 * scale**2)  # both sides were rounded to integers
        assert variance == pytest.approx(s * x[m].mean() + o, rel=0.06), (lo, hi)
        checked += 1
    assert checked >= 2


def test_bayer_frames_write_and_read_back_as_dng(tmp_path):
    from capture.dng import read_dng, write_dng

    f = frames(1, width=64, height=48, pixel_format=BAYER)[0]
    back = read_dng(write_dng(tmp_path / "sim.dng", f))
    np.testing.assert_array_equal(back.pixels, f.pixels)
    np.testing.assert_allclose(back.raw.noise_profile, f.raw.noise_profile, rtol=1e-9)
    assert back.raw.as_shot_neutral == pytest.approx(f.raw.as_shot_neutral, rel=1e-4)
    np.testing.assert_allclose(back.raw.color_matrix, f.raw.color_matrix, atol=1e-4)
    assert (back.raw.white_level, back.raw.cfa_pattern) == (1023, "RGGB")


def test_bayer_sites_are_rggb_and_12_bit_works(tmp_path):
    red = np.zeros((16, 16, 3), np.uint8)
    red[..., 2] = 220  # BGR
    f = frames(1, width=64, height=48, pixel_format=BAYER, noise="off", white_level=4095,
               image_dir=image_dir(tmp_path, red))[0]
    assert f.raw.bits_per_sample == 12 and f.raw.white_level == 4095
    c = f.truth.clean.astype(np.float64)
    r, g1, g2, b = c[0::2, 0::2].mean(), c[0::2, 1::2].mean(), c[1::2, 0::2].mean(), c[1::2, 1::2].mean()
    assert r > 4 * max(g1, g2, b) and g1 == pytest.approx(g2, rel=0.01)


def test_moving_object_moves_on_its_own(tmp_path):
    still = ShakeConfig.still()
    for fmt in (BGR, BAYER):
        a, b = frames(2, width=320, height=240, pixel_format=fmt, noise="off", shake=still, moving_object=True, seed=8)
        changed = np.mean(np.any((a.pixels != b.pixels).reshape(240, 320, -1), axis=2))
        assert 0.001 < changed < 0.1  # only around the object
        assert a.truth.motion == b.truth.motion == (0.0, 0.0, 0.0)
        a, b = frames(2, width=320, height=240, pixel_format=fmt, noise="off", shake=still, seed=8)
        np.testing.assert_array_equal(a.pixels, b.pixels)


def test_handheld_shake_is_small_smooth_with_rare_jumps():
    cfg = ShakeConfig()
    shake = HandheldShake(cfg, fps=30.0, rng=np.random.default_rng(0))
    path = np.array([shake.step() for _ in range(3000)])  # 100 s
    assert np.abs(path[:, :2]).max() <= cfg.max_shift_px
    assert np.abs(path[:, 2]).max() <= cfg.max_rotation_deg
    assert 0.5 < path[:, 0].std() < 4.0 and path[:, 2].std() > 0.05
    steps = np.hypot(*np.diff(path[:, :2], axis=0).T)
    assert np.median(steps) < 0.6  # smooth
    assert steps.max() > 2.0 and np.mean(steps > 2.0) < 0.02  # rare jumps


def test_scenes_change_and_image_dir_is_used(tmp_path):
    import skimage.data

    folder = image_dir(tmp_path, skimage.data.coffee()[..., ::-1], skimage.data.chelsea()[..., ::-1])
    cam = camera(width=160, height=120, fps=30, scene_seconds=0.1, noise="off", shake=ShakeConfig.still(),
                 image_dir=folder)
    assert folder in cam.describe().detail
    fs = [cam.read() for _ in range(7)]  # 3 frames per scene
    same = psnr(fs[1].pixels, fs[2].pixels)
    assert same == float("inf") or same > 40
    assert psnr(fs[2].pixels, fs[3].pixels) < 20  # a new photo
    assert psnr(fs[0].pixels, fs[6].pixels) < 40  # third scene: photo 1 again, another crop


def test_bad_image_dirs_fail_naming_the_folder(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    junk = tmp_path / "junk"
    junk.mkdir()
    (junk / "notes.txt").write_text("not an image")
    (junk / "broken.png").write_bytes(b"not a png")
    for folder in (empty, junk, tmp_path / "missing"):
        cam = SimulatedCamera(SimulatedConfig(width=64, height=48, image_dir=str(folder)))
        with pytest.raises(SourceInvalid, match=str(folder)):
            cam.open()


def test_bad_configs_and_misuse_fail_clearly():
    with pytest.raises(SourceInvalid, match="even"):
        SimulatedCamera(SimulatedConfig(width=641))
    with pytest.raises(SourceInvalid, match="noise"):
        SimulatedCamera(SimulatedConfig(noise="loud"))
    with pytest.raises(SourceInvalid, match="BGR8 or BAYER16"):
        SimulatedCamera(SimulatedConfig(pixel_format=PixelFormat.YUYV))
    with pytest.raises(SourceInvalid, match="open"):
        SimulatedCamera(SimulatedConfig(width=64, height=48)).read()


def test_paced_at_60_fps():
    clock = FakeClock()
    cam = camera(width=320, height=240, fps=60, realtime=True, clock=clock)
    t0 = clock.monotonic_ns()
    fs = [cam.read() for _ in range(20)]
    assert fs[0].t_capture_ns == t0, "the first frame comes at once, stamped by the camera's clock"
    gaps = np.diff([f.t_capture_ns for f in fs]) / 1e9
    np.testing.assert_allclose(gaps, 1 / 60, atol=1e-6)  # every frame in its slot, none early or late
    assert clock.monotonic_ns() == fs[-1].t_capture_ns, "it waits for each slot, and no longer"


def test_a_paced_camera_that_falls_behind_drops_frames_instead_of_bursting():
    clock = FakeClock()
    cam = camera(width=96, height=64, fps=30, realtime=True, clock=clock)
    a, b = cam.read(), cam.read()
    clock.advance(5 / 30)  # nobody read for five frame periods
    late = clock.monotonic_ns()
    c, d, e = cam.read(), cam.read(), cam.read()
    assert c.t_capture_ns == late, "the late frame is taken at once"
    # then the schedule starts again from it, instead of delivering the missed slots back to back
    np.testing.assert_allclose(np.diff([f.t_capture_ns for f in (c, d, e)]) / 1e9, 1 / 30, atol=1e-6)
    assert [f.seq for f in (a, b, c, d, e)] == [0, 1, 2, 3, 4]


class _RenderClock(SimulatedCamera):
    """Notes when each frame's rendering starts and ends on the camera's clock, and makes rendering
    take `render_s` of it (a test-side subclass; the camera is unchanged)."""

    def __init__(self, config, clock: FakeClock, render_s: float):
        super().__init__(config, clock=clock)
        self.render_s = render_s
        self.render_starts: list[float] = []
        self.render_ends: list[float] = []

    def _render_bgr(self, *args):
        self.render_starts.append(self.clock.monotonic())
        out = super()._render_bgr(*args)
        self.clock.advance(self.render_s)
        self.render_ends.append(self.clock.monotonic())
        return out


def test_paced_frames_are_rendered_just_before_they_are_due():
    # Rendered right after the previous frame left, a frame would compete with the model working on
    # that one; the camera waits and renders it at the end of its period instead.
    period, render_s = 1 / 30, 0.008
    cam = _RenderClock(SimulatedConfig(width=320, height=240, fps=30, realtime=True, moving_object=False),
                       FakeClock(), render_s)
    cam.open()
    returned, captured = [], []
    for _ in range(12):
        captured.append(cam.read().t_capture_ns / 1e9)
        returned.append(cam.clock.monotonic())
    idle_before_render = np.array(cam.render_starts[1:]) - np.array(returned[:-1])
    assert idle_before_render.min() > period / 2, "most of the period passes before rendering starts"
    assert all(end <= t + 1e-9 for end, t in zip(cam.render_ends, captured)), "each frame is ready when due"
    np.testing.assert_allclose(np.diff(returned), period, atol=1e-6)  # and the frames still come at 30 fps


def test_pacing_does_not_change_the_pictures():
    paced = camera(width=96, height=64, fps=120, realtime=True)
    fast = camera(width=96, height=64, fps=120, realtime=False)
    for _ in range(3):
        np.testing.assert_array_equal(paced.read().pixels, fast.read().pixels)


def test_recent_max_jumps_up_at_once_and_decays_slowly():
    d = RecentMax(0.010, margin=1.25, decay=0.9)
    d.observe(0.020)
    assert d.seconds == pytest.approx(0.025)
    d.observe(0.001)
    assert d.seconds == pytest.approx(0.0225)  # one fast run lowers it by 10%, not to 1.25 ms
    for _ in range(100):
        d.observe(0.001)
    assert d.seconds == pytest.approx(0.00125)


def test_truth_survives_copy_and_pickle():
    f = frames(1, width=64, height=48)[0]
    g = dataclasses.replace(f, seq=10)
    assert g.truth is f.truth
    t = pickle.loads(pickle.dumps(f.truth))
    assert type(t) is GroundTruth and t.motion == f.truth.motion
    np.testing.assert_array_equal(t.clean, f.truth.clean)


def test_runs_in_a_capture_worker_and_stops_cleanly(no_leaked_threads):
    ring = RingBuffer(4)
    worker = CaptureWorker(SimulatedCamera(SimulatedConfig(width=320, height=240, fps=60)), ring)
    worker.start()
    eventually(lambda: worker.status().frames >= 10, "the capture worker delivering 10 frames")
    assert worker.stop(DEADLINE_S), "the capture thread did not stop"

    assert worker.status().state is CaptureState.STOPPED
    assert ring.latest().pixels.shape == (240, 320, 3)


def test_open_source_builds_the_bayer_camera():
    src = open_source("simulated:bayer:320x240@60", SourceOptions(realtime=False))
    assert isinstance(src, SimulatedCamera)
    info = src.describe()
    assert (info.name, info.kind) == ("simulated:320x240@60:bayer", "simulated")
    assert (info.width, info.height, info.fps, info.pixel_format) == (320, 240, 60, BAYER)
    with src:
        f = src.read()
    assert f.pixel_format is BAYER and f.pixels.shape == (240, 320)
