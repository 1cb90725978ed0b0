"""engine.burst.raw: CFA packing, levels, the noise model, defects, burst checks."""
import dataclasses
import time

import numpy as np
import pytest

from capture.frame import CFA_PATTERNS, Frame, PixelFormat, RawMeta
from engine.burst.raw import (
    NoiseModel,
    check_burst,
    defect_mask,
    denormalise,
    displaced_frames,
    estimate_noise,
    grey,
    normalise,
    pack,
    plane_colours,
    repair_defects,
    rggb_index,
    unpack,
)


def bayer(pixels, pattern="RGGB", black=(64.0,) * 4, white=4095, **meta):
    raw = RawMeta(black_level=black, white_level=white, cfa_pattern=pattern, **meta)
    return Frame(np.asarray(pixels, np.uint16), 0, time.monotonic_ns(), "test", PixelFormat.BAYER16, raw=raw)


@pytest.mark.parametrize("pattern", CFA_PATTERNS)
def test_pack_normalise_and_back_are_exact_for_every_pattern(pattern):
    rng = np.random.default_rng(0)
    mosaic = rng.integers(0, 4096, (24, 32), dtype=np.uint16)
    assert np.array_equal(unpack(pack(mosaic)), mosaic)
    black = (60.0, 64.0, 70.0, 50.0)
    planes = normalise(mosaic, RawMeta(black_level=black, white_level=4095, cfa_pattern=pattern))
    assert planes.shape == (4, 12, 16) and planes.dtype == np.float32
    # plane k is CFA position k (row-major), black-subtracted per position
    assert planes[1, 0, 0] == pytest.approx((int(mosaic[0, 1]) - 64) / (4095 - 64))
    assert np.array_equal(denormalise(planes, black, 4095), mosaic)
    stack = np.full((3, 4, 12, 16), np.nan, np.float32)  # a burst's stack, filled in place
    got = normalise(mosaic, RawMeta(black_level=black, white_level=4095, cfa_pattern=pattern), out=stack[1])
    assert np.shares_memory(got, stack) and np.array_equal(stack[1], planes) and np.isnan(stack[0]).all()
    with pytest.raises(ValueError, match="even sides"):
        normalise(mosaic[:, :31], RawMeta(black_level=black, white_level=4095, cfa_pattern=pattern))


@pytest.mark.parametrize("pattern,want", [("RGGB", (0, 1, 2, 3)), ("BGGR", (3, 2, 1, 0)),
                                          ("GRBG", (1, 0, 3, 2)), ("GBRG", (2, 3, 0, 1))])
def test_rggb_index_finds_red_its_green_the_other_green_and_blue(pattern, want):
    assert rggb_index(pattern) == want
    colours = plane_colours(pattern)
    assert [colours[i] for i in want] == ["R", "G", "G", "B"]


def test_pack_refuses_odd_sides():
    with pytest.raises(ValueError, match="even"):
        pack(np.zeros((5, 8)))


@pytest.mark.parametrize("pattern", CFA_PATTERNS)
def test_noise_profile_per_colour_lands_on_the_right_planes(pattern):
    meta = RawMeta(cfa_pattern=pattern, noise_profile=((1e-4, 1e-6), (2e-4, 2e-6), (3e-4, 3e-6)))
    model = NoiseModel.from_meta(meta)
    want = {"R": 1e-4, "G": 2e-4, "B": 3e-4}
    assert model.scale == tuple(want[c] for c in pattern)
    assert model.as_profile(pattern) == ((1e-4, 1e-6), (2e-4, 2e-6), (3e-4, 3e-6))
    assert NoiseModel.from_meta(RawMeta(noise_profile=((5e-4, 5e-6),))).scale == (5e-4,) * 4
    assert NoiseModel.from_meta(RawMeta()) is None


def test_noise_is_estimated_from_one_frame_when_the_metadata_has_none():
    rng = np.random.default_rng(1)
    s, o = 2e-3, 1e-5
    h, w = 192, 256
    # a smooth scene (ramps and a slow wave) spanning the range, plus Poisson-Gaussian noise
    y, x = np.mgrid[0:h, 0:w] / np.array([h, w])[:, None, None]
    clean = np.stack([0.05 + 0.8 * x * (0.6 + 0.4 * np.sin(3 * y))] * 4).astype(np.float32)
    noisy = clean + np.sqrt(s * clean + o) * rng.standard_normal(clean.shape)
    est = estimate_noise(noisy.astype(np.float32))
    assert est.estimated
    for p in range(4):
        for level in (0.1, 0.5):
            assert est.variance(np.float32(level), p) == pytest.approx(s * level + o, rel=0.25)


def test_hot_and_dead_pixels_are_found_only_when_the_camera_moved():
    from tests.burst_data import burst, noise_model

    b = burst(6, gain=1, size=(128, 96), seed=3)
    stack = b.noisy.copy()
    stack[:, 0, 10, 20] = 1.0  # hot (stuck high)
    # a dead pixel where the scene stays bright enough to tell in every frame
    dy, dx = np.unravel_index(np.argmax(b.clean[:, 3, 8:-8, 8:-8].min(axis=0)), (32, 48))
    dy, dx = dy + 8, dx + 8
    stack[:, 3, dy, dx] = 0.0
    nm = noise_model(b)
    moved = displaced_frames(np.c_[b.motion[:, 0], b.motion[:, 1]] / 2, 0)
    assert len(moved) >= 3
    mask = defect_mask(stack, nm, moved)
    assert mask[0, 10, 20] and mask[3, dy, dx]
    assert mask.sum() <= 4, "scene detail must not be taken for defects"
    fixed = repair_defects(stack[0], mask)
    assert abs(fixed[0, 10, 20] - b.clean[0, 0, 10, 20]) < 0.1
    # a tripod burst cannot tell a defect from a bright scene point: nothing is flagged
    assert displaced_frames(np.zeros((6, 2)), 0) == [0]
    assert not defect_mask(stack, nm, [0]).any()


def test_defect_repair_is_the_3x3_median_in_every_frame_at_edges_and_between_neighbouring_defects():
    from engine.burst.raw import median3

    rng = np.random.default_rng(5)
    stack = rng.random((5, 4, 30, 40), dtype=np.float32)
    mask = rng.random((4, 30, 40)) < 0.05
    mask[:, 0, :4] = True  # a corner and a run of neighbours along the top edge
    mask[2, :, -1] = True  # a dead column at the right edge
    want = np.stack([np.where(mask, median3(p), p) for p in stack])  # every pixel's median of the untouched frame
    assert np.array_equal(repair_defects(stack, mask), want)
    assert np.array_equal(repair_defects(stack[1], mask), want[1])
    burst_copy = stack.copy()
    assert repair_defects(burst_copy, mask, inplace=True) is burst_copy and np.array_equal(burst_copy, want)
    assert repair_defects(stack, np.zeros_like(mask)) is stack


def test_burst_check_names_size_pattern_level_and_exposure_differences():
    ok = bayer(np.zeros((24, 32)), exposure_time_s=1 / 60, iso=100)
    frames = [
        ok,
        bayer(np.zeros((24, 34)), exposure_time_s=1 / 60),
        bayer(np.zeros((24, 32)), pattern="BGGR"),
        bayer(np.zeros((24, 32)), white=1023),
        bayer(np.zeros((24, 32)), exposure_time_s=1 / 30, iso=100),
        bayer(np.zeros((24, 32)), exposure_time_s=1 / 60, iso=800),
        dataclasses.replace(ok),
    ]
    problems = dict(check_burst(frames, 0))
    assert set(problems) == {1, 2, 3, 4, 5}
    assert "size 34x24 vs 32x24" in problems[1]
    assert "CFA pattern BGGR vs RGGB" in problems[2]
    assert "white 1023" in problems[3]
    assert "exposure time" in problems[4] and "ISO 800 vs 100" in problems[5]
    rgb = Frame(np.zeros((24, 32, 3), np.uint8), 0, 0, "cam", PixelFormat.BGR8)
    assert "needs BAYER16" in check_burst([rgb, ok], 0)[0][1]


def test_grey_is_the_mean_of_the_four_planes_for_a_frame_or_a_burst():
    rng = np.random.default_rng(6)
    for planes in (rng.random((4, 6, 8), dtype=np.float32), rng.random((3, 4, 6, 8), dtype=np.float32) - 0.2):
        assert np.array_equal(grey(planes), planes.mean(axis=-3, dtype=np.float32))
