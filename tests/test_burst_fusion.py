"""engine.burst.fusion and finish: fuse_burst, bad input, DNG output read by rawpy, the display
ISP, and BurstFusion live in the engine on the simulated Bayer camera."""
import dataclasses
import time
import warnings

import numpy as np
import pytest
import rawpy

from capture.dng import read_dng, write_dng
from capture.frame import CFA_PATTERNS, Frame, PixelFormat, RawMeta
from engine.burst.finish import FinishConfig, finish
from engine.burst.fusion import BurstConfig, BurstFusion, fuse_burst, merged_frame
from engine.burst.raw import BurstError, normalise
from engine.processor import FrameFormatError
from engine.registry import make_processor, processor_names
from tests.burst_data import burst
from capture.burst_synthesis import burst_frames
from engine.metrics import burst_score as score


def frames_of(n=6, gain=4, size=(256, 192), seed=50, pattern="RGGB", **kw):
    b = burst(n, gain=gain, size=size, seed=seed, pattern=pattern, **kw)
    return b, burst_frames(b)


def with_meta(frame: Frame, **changes) -> Frame:
    return dataclasses.replace(frame, raw=frame.raw.replace(**changes))


def test_fuse_burst_merges_into_the_reference_and_beats_it():
    b, frames = frames_of()
    fused = fuse_burst(frames, BurstConfig(reference="first"))
    assert fused.ref == 0 and fused.used == list(range(6)) and not fused.excluded
    assert fused.planes.shape == (4, 96, 128)
    clean = b.clean[0]
    assert score(fused.planes, clean).psnr_linear > score(normalise(frames[0].pixels, frames[0].raw), clean).psnr_linear + 4
    assert fused.noise_out().offset[0] < 0.5 * fused.noise.offset[0]
    newest = fuse_burst(frames, BurstConfig(reference="newest"))
    assert newest.ref == 5 and np.array_equal(newest.ref_planes, normalise(frames[5].pixels, frames[5].raw))


def test_mismatched_frames_stop_the_burst_or_are_left_out():
    _, frames = frames_of(4, size=(128, 96))
    small = Frame(frames[2].pixels[:64, :96].copy(), 2, 0, "odd.dng", PixelFormat.BAYER16, raw=frames[2].raw)
    longer = with_meta(frames[3], exposure_time_s=1 / 15)
    bad = [frames[0], frames[1], small, longer]
    with pytest.raises(BurstError) as err:
        fuse_burst(bad, BurstConfig(reference="first"))
    assert "frame 2 (odd.dng): size 96x64 vs 128x96" in str(err.value)
    assert "frame 3" in str(err.value) and "exposure time" in str(err.value) and "exclude" in str(err.value)
    fused = fuse_burst(bad, BurstConfig(reference="first", on_mismatch="exclude"))
    assert fused.used == [0, 1] and [i for i, _ in fused.excluded] == [2, 3]
    rgb = Frame(np.zeros((96, 128, 3), np.uint8), 0, 0, "cam", PixelFormat.BGR8)
    with pytest.raises(FrameFormatError, match="BAYER16"):
        fuse_burst([frames[0], rgb], BurstConfig(reference="newest"))


def test_a_burst_of_one_frame_comes_back_unchanged_with_a_warning():
    _, frames = frames_of(1, size=(128, 96))
    with pytest.warns(UserWarning, match="one frame"):
        fused = fuse_burst(frames)
    assert np.array_equal(fused.planes, normalise(frames[0].pixels, frames[0].raw))
    out = merged_frame(fused, bits=12)
    assert np.array_equal(out.pixels, frames[0].pixels), "same levels: the very same samples"


def test_a_burst_without_noise_profile_estimates_one():
    b, frames = frames_of(5, gain=2, size=(256, 192))
    frames = [with_meta(f, noise_profile=None) for f in frames]
    fused = fuse_burst(frames, BurstConfig(reference="first"))
    assert fused.noise.estimated and fused.noise_report.source == "burst"
    assert any("no noise profile; noise measured from the burst" in w for w in fused.warnings)
    truth = b.noise.sigma_shot**2 * 0.2 + b.noise.sigma_read**2
    assert fused.noise.variance(np.float32(0.2), 1) == pytest.approx(truth, rel=0.3)
    assert score(fused.planes, b.clean[0]).psnr_linear > score(normalise(frames[0].pixels, frames[0].raw), b.clean[0]).psnr_linear + 3


@pytest.mark.parametrize("pattern,bits", [("RGGB", 16), ("GRBG", 12), ("BGGR", 16)])
def test_merged_dng_keeps_the_layout_and_metadata_and_rawpy_reads_it(tmp_path, pattern, bits):
    b, frames = frames_of(4, size=(128, 96), pattern=pattern)
    fused = fuse_burst(frames, BurstConfig(reference="first"))
    path = write_dng(tmp_path / "merged.dng", merged_frame(fused, bits), bits=bits)
    white = (1 << bits) - 1
    black = round(256 * white / 4095)
    with rawpy.imread(str(path)) as r:
        assert "".join(r.color_desc.decode()[i] for i in r.raw_pattern.flat) == pattern
        assert r.white_level == white and list(r.black_level_per_channel) == [black] * 4
        assert r.raw_image_visible.shape == (96, 128)
        back = normalise(r.raw_image_visible.copy(), RawMeta(black_level=(float(black),) * 4, white_level=white,
                                                             cfa_pattern=pattern))
    assert np.abs(back - np.clip(fused.planes, -black / (white - black), 1)).max() < 1.0 / (white - black)
    meta = read_dng(path).raw
    src = frames[0].raw
    assert meta.cfa_pattern == pattern and meta.bits_per_sample == bits
    assert np.allclose(meta.color_matrix, src.color_matrix) and meta.as_shot_neutral == pytest.approx(src.as_shot_neutral)
    assert len(meta.noise_profile) == 3
    assert meta.noise_profile[1][1] < src.noise_profile[1][1], "the merged frame is less noisy"
    assert meta.exposure_time_s == pytest.approx(src.exposure_time_s)


@pytest.mark.parametrize("pattern", CFA_PATTERNS)
def test_finish_puts_red_where_red_is_for_every_pattern(pattern):
    planes = np.zeros((4, 16, 16), np.float32)
    planes[pattern.index("R")] = 0.5
    bgr = finish(planes, RawMeta(cfa_pattern=pattern), FinishConfig(demosaic="bilinear"))
    assert bgr.shape == (32, 32, 3) and bgr.dtype == np.uint8
    b, g, r = bgr[8:24, 8:24].reshape(-1, 3).mean(axis=0)
    assert r > 100 and b < 10 and g < 10


def test_burst_fusion_is_registered_and_needs_raw_frames():
    assert "burst_fusion" in processor_names()
    proc = make_processor("burst_fusion")
    assert isinstance(proc, BurstFusion) and proc.frames_needed == 8 and proc.steps in BurstFusion.STEP_CHOICES
    rgb = Frame(np.zeros((32, 32, 3), np.uint8), 0, time.monotonic_ns(), "cam", PixelFormat.BGR8)
    with pytest.raises(FrameFormatError, match="simulated:bayer"):
        proc.process([rgb])
    with pytest.raises(ValueError, match="positive integer"):
        BurstFusion(frames=0)


def test_burst_fusion_process_returns_before_and_after_pictures():
    _, frames = frames_of(4, size=(128, 96))
    proc = BurstFusion(frames=3)
    result = proc.process(frames)
    assert result.seq == frames[-1].seq and result.output.shape == (96, 128, 3)
    assert list(result.stages)[:3] == ["raw", "align", "raw"] or "align" in result.stages
    assert {"align", "merge", "finish"} <= set(result.stages)
    assert proc.last.used == [0, 1, 2], "only the newest N frames"
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with pytest.warns(UserWarning):
            proc.process(frames[:1])
        proc.process(frames[:1])  # warned once is enough for a live stream


def test_burst_fusion_runs_in_the_engine_on_the_simulated_bayer_camera(no_leaked_threads):
    from capture.ring_buffer import RingBuffer
    from capture.sources import SourceOptions, open_source
    from capture.worker import CaptureWorker
    from engine.worker import EngineWorker

    ring = RingBuffer(16)
    capture = CaptureWorker(open_source("simulated:bayer:320x240@60", SourceOptions(realtime=True)), ring)
    engine = EngineWorker(ring, BurstFusion(frames=4))
    engine.start()
    capture.start()
    results = []
    try:
        deadline = time.monotonic() + 30
        while len(results) < 3 and time.monotonic() < deadline:
            try:
                results.append(engine.slot.get(timeout=1.0))
            except TimeoutError:
                pass
        stats = engine.stats()
    finally:
        capture.stop()
        engine.stop(timeout=5.0)
    assert len(results) >= 3, f"engine state {engine.state}: {engine.error}"
    for r in results:
        assert r.ok and r.output.shape == (240, 320, 3) and len(r.frames) == 4
        assert [f.seq for f in r.frames] == sorted(f.seq for f in r.frames)
    assert stats.processor == "burst_fusion" and stats.steps in BurstFusion.STEP_CHOICES
    assert {"align", "merge", "finish"} <= set(stats.stage_median_ms)


def test_burst_fusion_runs_on_a_dng_folder_played_as_a_stream(tmp_path, no_leaked_threads):
    from capture.dng import DngBurstSource
    from capture.ring_buffer import RingBuffer
    from capture.worker import CaptureWorker
    from engine.worker import EngineWorker

    _, frames = frames_of(5, size=(128, 96), seed=51)
    for i, f in enumerate(frames):
        write_dng(tmp_path / f"f{i}.dng", f, bits=12)
    ring = RingBuffer(8)
    capture = CaptureWorker(DngBurstSource(str(tmp_path / "*.dng"), fps=60, paced=True, loop=True), ring)
    engine = EngineWorker(ring, BurstFusion(frames=4))
    engine.start()
    capture.start()
    try:
        result = engine.slot.get(timeout=20)
    finally:
        capture.stop()
        engine.stop(timeout=5.0)
    assert result.ok and result.output.shape == (96, 128, 3) and len(result.frames) == 4


@pytest.mark.slow
def test_burst_fusion_runs_live_headless_for_500_frames():
    from app.pipeline import PipelineConfig, run_headless

    out = run_headless(PipelineConfig(source="simulated:bayer", processor="burst_fusion"), frames=500,
                       printer=lambda line: None)
    assert out["frames_shown"] >= 500 and out["errors"] == 0 and out["last_error"] is None
