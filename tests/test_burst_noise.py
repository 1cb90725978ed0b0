"""engine/burst/noise.py: the noise measured from the burst, the metadata checked against it, and the
merge's guard that keeps it from ever being worse than the reference frame."""
import dataclasses

import numpy as np
import pytest

from engine.burst.align import align
from engine.burst.fusion import BurstConfig, fuse_burst, merged_frame
from engine.burst.merge import MergeConfig, merge, reference_guard
from engine.burst.noise import (
    DISAGREE,
    choose_noise,
    clipped_share,
    estimate_noise_burst,
    mid_grey_ratio,
    unclip,
)
from engine.burst.raw import NoiseModel, estimate_noise, grey
from tests.burst_data import STATIC, burst, noise_model
from capture.burst_synthesis import burst_frames


def _ratios(model: NoiseModel, truth: NoiseModel, levels=(0.1, 0.2, 0.3)) -> np.ndarray:
    return np.array([[model.variance(x, p) / truth.variance(x, p) for x in levels] for p in range(4)])


@pytest.mark.parametrize("gain", [1, 8])
def test_the_burst_measures_its_noise_where_a_single_frame_reads_texture_as_noise(gain):
    # the astronaut's suit, hair and flag are fine texture next to gain 1's noise
    b = burst(8, gain=gain, size=(320, 256), seed=3)
    truth = noise_model(b)
    alignment = align(grey(b.noisy), 0, truth)
    measured = estimate_noise_burst(b.noisy, alignment)
    assert measured is not None and measured.estimated
    assert np.all((_ratios(measured, truth) > 0.77) & (_ratios(measured, truth) < 1.3)), _ratios(measured, truth)
    if gain == 1:  # where texture dominates the noise, one frame cannot tell them apart
        assert _ratios(estimate_noise(b.noisy[0]), truth).mean() > 2.0


def test_too_little_to_go_on_is_none_not_a_guess():
    b = burst(2, gain=4, size=(32, 32), seed=1)
    alignment = align(grey(b.noisy), 0, noise_model(b))
    assert estimate_noise_burst(b.noisy, alignment) is None  # 16 tiles of 8x8: fewer than a plane needs
    assert estimate_noise_burst(b.noisy[:1], alignment) is None


def test_clipped_share_is_the_variance_of_a_clipped_normal_and_unclip_inverts_it():
    rng = np.random.default_rng(0)
    x = rng.standard_normal(2_000_000)
    for a in (-3.0, -2.0, -1.0, 0.0):
        assert clipped_share(a) == pytest.approx(np.maximum(x, a).var(), rel=0.01), a
    sigma2, floor = 0.01, -0.05
    for level in (0.0, 0.05, 0.2):
        seen = sigma2 * clipped_share((floor - level) / np.sqrt(sigma2))
        assert unclip(np.array([level]), np.array([seen]), floor)[0] == pytest.approx(sigma2, rel=1e-3)
    assert unclip(np.array([0.1]), np.array([0.5]), -np.inf)[0] == 0.5


def test_auto_keeps_an_agreeing_profile_and_replaces_one_far_off():
    truth = NoiseModel((1e-3,) * 4, (1e-4,) * 4)
    close, far = truth.scaled(1.5), truth.scaled(DISAGREE * 1.5)
    single = truth.scaled(9.0)
    report = choose_noise(close, truth, single, "auto")
    assert report.source == "metadata" and report.model == close and not report.disagrees
    assert report.ratio == pytest.approx(1 / 1.5)
    report = choose_noise(far, truth, single, "auto")
    assert report.source == "burst" and report.model == truth and report.disagrees
    assert "more than 4x off" in report.describe()
    kept = choose_noise(far, truth, single, "metadata")
    assert kept.source == "metadata" and kept.model == far and kept.disagrees and "kept" in kept.describe()
    assert choose_noise(close, truth, single, "estimate").model == truth
    assert choose_noise(None, None, single, "auto").source == "single frame"
    assert choose_noise(None, truth, None, "metadata").source == "burst"  # nothing else to go on
    with pytest.raises(ValueError, match="no noise model"):
        choose_noise(None, None, None, "auto")
    with pytest.raises(ValueError, match="noise mode"):
        choose_noise(truth, truth, None, "guess")


def _frames(gain=2, profile_factor=None, seed=50):
    b = burst(8, gain=gain, size=(256, 192), seed=seed)
    frames = burst_frames(b)
    if profile_factor is not None:
        profile = tuple((s * profile_factor, o * profile_factor) for s, o in frames[0].raw.noise_profile)
        frames = [dataclasses.replace(f, raw=f.raw.replace(noise_profile=profile)) for f in frames]
    return b, frames


def test_a_profile_far_off_is_reported_and_replaced_unless_the_user_keeps_it():
    b, frames = _frames(profile_factor=10.0)
    truth = noise_model(b)
    fused = fuse_burst(frames, BurstConfig(reference="first"))
    assert fused.noise_report.source == "burst" and fused.noise_report.disagrees
    assert 0.77 < mid_grey_ratio(fused.noise, truth) < 1.3
    assert any("more than 4x off" in w for w in fused.warnings)
    kept = fuse_burst(frames, BurstConfig(reference="first", noise="metadata"))
    assert kept.noise_report.source == "metadata" and mid_grey_ratio(kept.noise, truth) == pytest.approx(10.0, rel=0.01)
    # and the merged DNG's NoiseProfile is the merged frame's: the measured noise, reduced by the merge
    written = NoiseModel.from_meta(merged_frame(fused).raw)
    assert 0.05 < mid_grey_ratio(written, truth) < 0.6


def test_an_agreeing_profile_is_used_as_it_is():
    b, frames = _frames(profile_factor=1.0)
    fused = fuse_burst(frames, BurstConfig(reference="first"))
    assert fused.noise_report.source == "metadata" and not fused.noise_report.disagrees
    assert fused.noise == NoiseModel.from_meta(frames[0].raw)
    assert not fused.warnings


@pytest.mark.parametrize("gain", [1, 4])
def test_frames_carrying_structure_the_reference_lacks_merge_no_worse_than_the_reference(gain):
    # the odd frames see a patch of texture (2 noise sigmas) the reference and the even frames do not:
    # a reflection, a flicker, a misregistered detail
    b = burst(8, gain=gain, size=(256, 192), seed=5, motion=STATIC)
    nm = noise_model(b)
    box = (slice(None), slice(24, 56), slice(40, 72))
    noisy = b.noisy.copy()
    sigma = np.sqrt(nm.variance(b.clean[0][box]))
    noisy[1::2][(slice(None),) + box] += np.random.default_rng(5).standard_normal((4, 32, 32)) * 2 * sigma
    merged = merge(noisy, align(grey(noisy), 0, nm), nm)

    def err(x):
        return float(np.sqrt(np.mean((x[box] - b.clean[0][box]) ** 2)))

    assert err(merged) <= err(noisy[0])


def test_the_guard_keeps_a_merge_on_a_profile_too_high_no_worse_than_the_reference():
    # a NoiseProfile 3x too high (within what auto accepts) makes the Wiener merge average the
    # astronaut's fine texture away at gain 1; the guard holds it to the burst's measured noise
    b = burst(8, gain=1, size=(256, 192), seed=3)
    frames = burst_frames(b)
    profile = tuple((s * 3, o * 3) for s, o in frames[0].raw.noise_profile)
    frames = [dataclasses.replace(f, raw=f.raw.replace(noise_profile=profile)) for f in frames]
    guarded = fuse_burst(frames, BurstConfig(reference="first"))
    unguarded = fuse_burst(frames, BurstConfig(reference="first", merge=MergeConfig(guard=False)))
    assert guarded.noise_report.source == "metadata"

    def tile_errors(x, t=16):
        return ((x - b.clean[0]) ** 2).reshape(4, 96 // t, t, 128 // t, t).mean(axis=(0, 2, 4))

    ref, with_guard, without = (tile_errors(x) for x in (guarded.ref_planes, guarded.planes, unguarded.planes))
    hurt = without > ref
    assert hurt.sum() >= 5 and without[hurt].mean() > 1.3 * ref[hurt].mean(), "the case must hurt without the guard"
    assert with_guard[hurt].mean() <= ref[hurt].mean()
    assert (with_guard > 1.3 * ref).sum() <= 1


def test_the_guard_leaves_a_merge_that_only_removed_noise_alone():
    b = burst(8, gain=4, size=(256, 192), seed=9)
    nm = noise_model(b)
    merged = merge(b.noisy, align(grey(b.noisy), 0, nm), nm, MergeConfig(guard=False))
    guarded = reference_guard(merged.copy(), b.noisy[0], nm)
    changed = np.abs(guarded - merged) > 1e-6
    assert changed.mean() < 0.02, changed.mean()


def test_burst_fusion_measures_once_and_again_when_the_exposure_changes():
    from engine.burst.fusion import BurstFusion
    from engine.processor import StageTimer

    _, frames = _frames(profile_factor=None)
    bare = [dataclasses.replace(f, raw=f.raw.replace(noise_profile=())) for f in frames]
    proc = BurstFusion(8)
    timer = StageTimer()
    proc.enhance(bare, timer)
    assert "noise" in timer.stages
    first = proc.last.noise_report
    timer = StageTimer()
    proc.enhance(bare, timer)
    assert "noise" not in timer.stages and proc.last.noise_report is first  # the same sensor settings
    brighter = [dataclasses.replace(f, raw=f.raw.replace(iso=200.0)) for f in bare]
    timer = StageTimer()
    proc.enhance(brighter, timer)
    assert "noise" in timer.stages


def test_a_burst_with_no_noise_to_see_merges_to_finite_planes():
    # a lens cap on a camera that clips at black: every sample the same code, nothing to measure
    from capture.frame import Frame, PixelFormat

    b = burst(8, gain=2, size=(128, 96), seed=1)
    frames = burst_frames(b)
    flat = [Frame(np.full_like(f.pixels, 256), f.seq, f.t_capture_ns, f.source, PixelFormat.BAYER16,
                  raw=f.raw.replace(noise_profile=())) for f in frames]
    for mode in ("auto", "estimate"):
        fused = fuse_burst(flat, BurstConfig(reference="first", noise=mode))
        assert np.isfinite(fused.planes).all(), mode


def test_burst_fusion_keeps_what_it_finds_only_from_a_whole_burst():
    from engine.burst.fusion import BurstFusion
    from engine.processor import StageTimer

    _, frames = _frames()
    proc = BurstFusion(8, steps=0)
    proc.enhance(frames[:2], StageTimer())  # the start of a stream: too few frames to tell anything
    timer = StageTimer()
    proc.enhance(frames, timer)
    assert "noise" in timer.stages, "the first whole burst measures afresh"
