import os
import struct
import tempfile
import time

import numpy as np
import pytest
import rawpy
import tifffile

from capture.clock import FakeClock
from capture.dng import (
    BurstMismatch,
    DngBurstSource,
    DngError,
    load_burst,
    read_dng,
    write_dng,
)
from capture.errors import FrameDecodeError, SourceInvalid
from capture.frame import CFA_PATTERNS, Frame, PixelFormat, RawMeta
from capture.ring_buffer import RingBuffer
from capture.sources import open_source
from capture.worker import CaptureState, CaptureWorker
from tests.conftest import DEADLINE_S

H, W = 32, 48  # LibRaw refuses images under 22 px a side


def bayer_frame(pattern="RGGB", seed=0, h=H, w=W, black=(64, 256, 64, 256), white=4095, **meta):
    pixels = np.random.default_rng(seed).integers(0, white + 1, (h, w), dtype=np.uint16)
    raw = RawMeta(black_level=tuple(float(b) for b in black), white_level=white, cfa_pattern=pattern, **meta)
    return Frame(pixels, 0, time.monotonic_ns(), "test", PixelFormat.BAYER16, raw=raw)


def cfa_at_positions(r) -> str:
    return "".join(r.color_desc.decode()[i] for i in r.raw_pattern.flat)


def black_at_positions(r) -> list[int]:
    return [r.black_level_per_channel[i] for i in r.raw_pattern.flat]  # LibRaw indexes levels by colour


# -- round trips ---------------------------------------------------------------------------------


@pytest.mark.parametrize("pattern", CFA_PATTERNS)
@pytest.mark.parametrize("black", [(64, 64, 64, 64), (256, 256, 256, 256), (64, 256, 128, 192)])
def test_twelve_bit_round_trip_is_bit_exact_in_rawpy(tmp_path, pattern, black):
    frame = bayer_frame(pattern, black=black, white=4095, bits_per_sample=12)
    path = write_dng(tmp_path / "f.dng", frame, bits=12)
    with rawpy.imread(str(path)) as r:
        assert np.array_equal(r.raw_image_visible, frame.pixels)
        assert r.raw_image_visible.dtype == np.uint16
        assert cfa_at_positions(r) == pattern
        assert black_at_positions(r) == list(black)
        assert r.white_level == 4095
    back = read_dng(path)
    assert back.pixel_format is PixelFormat.BAYER16
    assert np.array_equal(back.pixels, frame.pixels)
    assert (back.raw.cfa_pattern, back.raw.black_level, back.raw.white_level) == (pattern, black, 4095)
    assert back.raw.bits_per_sample == 12


def test_full_sixteen_bit_range_round_trips(tmp_path):
    frame = bayer_frame("GBRG", seed=3, black=(0, 0, 0, 0), white=65535)
    path = write_dng(tmp_path / "f.dng", frame)
    with rawpy.imread(str(path)) as r:
        assert np.array_equal(r.raw_image_visible, frame.pixels)
    with tifffile.TiffFile(path) as tif:
        page = tif.pages.first
        assert page.bitspersample == 16 and int(page.photometric) == 32803 and page.compression == 1
        assert page.tags["DNGVersion"].value == b"\x01\x04\x00\x00"
        assert page.tags["UniqueCameraModel"].value == "EyeFuse"
    assert read_dng(path).raw.bits_per_sample == 16


def test_metadata_round_trips_through_read_dng(tmp_path):
    matrix = np.random.default_rng(1).normal(size=(3, 3))
    opcodes = {1: struct.pack(">I", 0), 2: b"\x00\x00\x00\x01" + bytes(range(60)), 3: bytes(range(200))}
    frame = bayer_frame(
        "GRBG", black=(64, 64.5, 63.25, 64), as_shot_neutral=(0.4533, 1.0, 0.53), color_matrix=matrix,
        noise_profile=((1.2e-4, 3.4e-6), (1.1e-4, 3.3e-6), (1.3e-4, 3.5e-6)), opcodes=opcodes,
        exposure_time_s=1 / 60, iso=800.0, bits_per_sample=12,
    )
    back = read_dng(write_dng(tmp_path / "m.dng", frame)).raw
    want = frame.raw
    assert back.black_level == want.black_level, "fractional black levels survive as rationals"
    assert back.as_shot_neutral == want.as_shot_neutral
    assert np.allclose(back.color_matrix, matrix, rtol=1e-12, atol=0)
    assert back.noise_profile == want.noise_profile
    assert back.opcodes == opcodes
    assert back.exposure_time_s == pytest.approx(1 / 60, rel=1e-15) and back.iso == 800.0
    assert (back.white_level, back.cfa_pattern, back.bits_per_sample) == (4095, "GRBG", 12)


def test_frames_without_optional_metadata_read_back_without_it(tmp_path):
    back = read_dng(write_dng(tmp_path / "plain.dng", bayer_frame())).raw
    assert back.color_matrix is None and back.noise_profile is None and back.opcodes == {}
    assert back.exposure_time_s is None and back.iso is None and back.as_shot_neutral == (1.0, 1.0, 1.0)


def test_linear_raw_rgb16_round_trips(tmp_path):
    pixels = np.random.default_rng(2).integers(0, 16384, (H, W, 3), dtype=np.uint16)
    raw = RawMeta(black_level=(100.0, 100.0, 100.0), white_level=16383, as_shot_neutral=(0.5, 1.0, 0.7))
    path = write_dng(tmp_path / "lin.dng", Frame(pixels, 0, 0, "t", PixelFormat.RGB16, raw=raw))
    with rawpy.imread(str(path)) as r:
        assert np.array_equal(r.raw_image_visible[..., :3], pixels)
    back = read_dng(path)
    assert back.pixel_format is PixelFormat.RGB16 and np.array_equal(back.pixels, pixels)
    assert back.raw.black_level == (100.0, 100.0, 100.0) and back.raw.white_level == 16383


def _dng_with_preview(path, raw_pixels, photometric, raw_tags):
    """Like cameras and iPhone ProRAW write it: IFD0 a small RGB preview, the raw image in a SubIFD."""
    ifd0 = [(50706, 1, 4, (1, 4, 0, 0), True), (50708, 2, None, "Phone", True),
            (50721, 10, 9, (1, 1, 0, 1, 0, 1, 0, 1, 1, 1, 0, 1, 0, 1, 0, 1, 1, 1), True),
            (50728, 5, 3, (1, 2, 1, 1, 2, 3), True)]
    with tifffile.TiffWriter(path) as tif:
        tif.write(np.zeros((16, 24, 3), np.uint8), photometric="rgb", subfiletype=1, subifds=1, extratags=ifd0,
                  metadata=None)
        tif.write(raw_pixels, photometric=photometric, subfiletype=0, extratags=raw_tags, metadata=None)


def test_raw_image_in_a_subifd_is_found(tmp_path):
    mosaic = np.random.default_rng(4).integers(0, 1024, (H, W), dtype=np.uint16)
    cfa = [(33421, 3, 2, (2, 2), True), (33422, 1, 4, (2, 1, 1, 0), True), (50717, 4, 1, 1023, True),
           (50713, 3, 2, (1, 1), True), (50714, 4, 1, 16, True)]
    _dng_with_preview(tmp_path / "bayer.dng", mosaic, 32803, cfa)
    f = read_dng(tmp_path / "bayer.dng")
    assert f.pixel_format is PixelFormat.BAYER16 and np.array_equal(f.pixels, mosaic)
    assert (f.raw.cfa_pattern, f.raw.black_level, f.raw.white_level) == ("BGGR", (16.0,) * 4, 1023)
    assert f.raw.as_shot_neutral == (0.5, 1.0, 2 / 3)

    rgb = np.random.default_rng(5).integers(0, 4096, (H, W, 3), dtype=np.uint16)
    linear = [(50717, 4, 3, (4095,) * 3, True), (50714, 4, 3, (10, 11, 12), True)]
    _dng_with_preview(tmp_path / "proraw.dng", rgb, 34892, linear)
    f = read_dng(tmp_path / "proraw.dng")
    assert f.pixel_format is PixelFormat.RGB16 and np.array_equal(f.pixels, rgb)
    assert f.raw.black_level == (10.0, 11.0, 12.0) and np.array_equal(f.raw.color_matrix, np.eye(3))


def test_write_refuses_what_it_cannot_store(tmp_path):
    too_big = Frame(np.full((H, W), 5000, np.uint16), 0, 0, "t", PixelFormat.BAYER16, raw=RawMeta(white_level=8000))
    with pytest.raises(ValueError, match=r"f\.dng.*5000.*bits=12"):
        write_dng(tmp_path / "f.dng", too_big, bits=12)
    from tests.conftest import make_bgr_frame

    with pytest.raises(ValueError, match="BGR8.*PNG"):
        write_dng(tmp_path / "g.dng", make_bgr_frame(0))
    with pytest.raises(ValueError, match="22 px"):
        write_dng(tmp_path / "h.dng", bayer_frame(h=8, w=8))
    assert not list(tmp_path.iterdir()), "nothing written for refused frames"


# -- atomic writes -------------------------------------------------------------------------------


def test_write_is_atomic_on_a_full_disk(tmp_path, monkeypatch):
    """/dev/full answers every write with ENOSPC, like a disk that filled up mid-write."""
    target = tmp_path / "frame.dng"
    write_dng(tmp_path / "ok.dng", bayer_frame())
    real_mkstemp = tempfile.mkstemp

    def mkstemp_on_full_disk(*a, **kw):  # at the OS boundary: the temp file lands on a full device
        fd, name = real_mkstemp(*a, **kw)
        os.close(fd)
        return os.open("/dev/full", os.O_WRONLY), name

    monkeypatch.setattr(tempfile, "mkstemp", mkstemp_on_full_disk)
    with pytest.raises(OSError):
        write_dng(target, bayer_frame())
    assert not target.exists(), "nothing under the final name"
    old = (tmp_path / "ok.dng").read_bytes()
    with pytest.raises(OSError):
        write_dng(tmp_path / "ok.dng", bayer_frame(seed=9))
    assert (tmp_path / "ok.dng").read_bytes() == old, "an existing file is left untouched"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ok.dng"], "no temp files left behind"


# -- corrupt files and bursts --------------------------------------------------------------------


def _write_burst(folder, n, **kw):
    folder.mkdir(exist_ok=True)
    return [write_dng(folder / f"frame_{i}.dng", bayer_frame(seed=i, **kw)) for i in range(n)]


def test_truncated_and_garbage_files_name_the_file(tmp_path):
    good = write_dng(tmp_path / "good.dng", bayer_frame())
    data = good.read_bytes()
    cases = {
        "truncated.dng": data[: len(data) - 500],
        "header_only.dng": data[:120],
        "garbage.dng": os.urandom(3000),
        "empty.dng": b"",
    }
    for name, content in cases.items():
        (tmp_path / name).write_bytes(content)
        with pytest.raises(DngError, match=name) as info:
            read_dng(tmp_path / name)
        assert isinstance(info.value, FrameDecodeError) and info.value.path.name == name
    with pytest.raises(DngError, match="truncated"):
        read_dng(tmp_path / "truncated.dng")
    with pytest.raises(DngError, match="no such file"):
        read_dng(tmp_path / "missing.dng")


def test_load_burst_skips_corrupt_files_and_loads_the_rest(tmp_path):
    paths = _write_burst(tmp_path, 4)
    paths[1].write_bytes(paths[1].read_bytes()[:2000])
    (tmp_path / "frame_9.dng").write_bytes(b"not a dng at all" * 50)
    load = load_burst(tmp_path)
    assert [p.name for p in load.paths] == ["frame_0.dng", "frame_2.dng", "frame_3.dng"]
    assert [f.seq for f in load.frames] == [0, 1, 2]
    assert np.array_equal(load.frames[1].pixels, bayer_frame(seed=2).pixels)
    assert {e.path.name for e in load.errors} == {"frame_1.dng", "frame_9.dng"}
    assert all(e.reason for e in load.errors)


def test_load_burst_sorts_naturally_and_takes_globs_and_lists(tmp_path):
    for i in (10, 2, 1):
        write_dng(tmp_path / f"f{i}.dng", bayer_frame(seed=i))
    assert [p.name for p in load_burst(str(tmp_path / "f*.dng")).paths] == ["f1.dng", "f2.dng", "f10.dng"]
    given = [tmp_path / "f10.dng", tmp_path / "f1.dng"]
    assert load_burst(given).paths == given, "an explicit list keeps its order"
    with pytest.raises(FileNotFoundError, match="nothing"):
        load_burst(str(tmp_path / "nothing*.dng"))


def test_load_burst_mismatch_raises_or_excludes(tmp_path):
    _write_burst(tmp_path, 3)
    write_dng(tmp_path / "frame_3.dng", bayer_frame(h=40))
    write_dng(tmp_path / "frame_4.dng", bayer_frame("BGGR"))
    with pytest.raises(BurstMismatch) as info:
        load_burst(tmp_path)
    msg = str(info.value)
    assert "frame_0.dng" in msg and "frame_3.dng: size 48x40 vs 48x32" in msg
    assert "frame_4.dng: CFA pattern BGGR vs RGGB" in msg and "on_mismatch='exclude'" in msg
    load = load_burst(tmp_path, on_mismatch="exclude")
    assert [p.name for p in load.paths] == ["frame_0.dng", "frame_1.dng", "frame_2.dng"]
    assert [(e.path.name, "vs" in e.reason) for e in load.errors] == [("frame_3.dng", True), ("frame_4.dng", True)]


# -- streaming -----------------------------------------------------------------------------------


def test_burst_source_through_the_capture_worker(tmp_path, no_leaked_threads):
    paths = _write_burst(tmp_path, 5)
    paths[2].write_bytes(paths[2].read_bytes()[:1000])
    source = open_source(str(tmp_path))  # a folder becomes a DngBurstSource
    assert isinstance(source, DngBurstSource)
    source.paced = False
    ring = RingBuffer(16)
    worker = CaptureWorker(source, ring)
    worker.start()
    assert worker.join(DEADLINE_S), "the capture thread did not end"
    st = worker.status()
    assert (st.state, st.frames, st.decode_errors) == (CaptureState.ENDED, 4, 1)
    frames = ring.last(16)
    assert [f.seq for f in frames] == [0, 1, 2, 3]
    assert all(b.t_capture_ns > a.t_capture_ns for a, b in zip(frames, frames[1:]))
    for f, seed in zip(frames, (0, 1, 3, 4)):
        assert f.pixel_format is PixelFormat.BAYER16 and np.array_equal(f.pixels, bayer_frame(seed=seed).pixels)


def test_burst_source_is_paced_and_loops(tmp_path):
    _write_burst(tmp_path, 3)
    clock = FakeClock()
    src = DngBurstSource(str(tmp_path / "*.dng"), fps=50.0, paced=True, loop=True, clock=clock)
    src.open()
    t0 = clock.monotonic_ns()
    frames = [src.read() for _ in range(7)]
    clock.advance(1.0)  # nobody read for a second
    late = clock.monotonic_ns()
    frames += [src.read() for _ in range(2)]
    src.close()
    assert [f.seq for f in frames] == list(range(9))
    assert np.array_equal(frames[3].pixels, frames[0].pixels), "looped back to the first file"
    times = [f.t_capture_ns for f in frames]
    assert times[0] == t0, "the first frame at once, stamped by the source's clock"
    np.testing.assert_allclose(np.diff(times[:7]) / 1e9, 1 / 50, atol=1e-6)  # one frame per slot at 50 fps
    assert times[7] == late and (times[8] - times[7]) / 1e9 == pytest.approx(1 / 50, abs=1e-6), \
        "after falling behind: the next frame at once, then the schedule again, not a burst of missed slots"
    info = src.describe()
    assert (info.kind, info.width, info.height, info.pixel_format) == ("dng", W, H, PixelFormat.BAYER16)


def test_burst_source_with_no_files_is_invalid(tmp_path, no_leaked_threads):
    pattern = str(tmp_path / "none*.dng")
    with pytest.raises(SourceInvalid, match="none"):
        DngBurstSource(pattern).open()
    worker = CaptureWorker(DngBurstSource(pattern), RingBuffer(4))
    worker.start()
    assert worker.join(DEADLINE_S), "the capture thread did not end"
    assert worker.status().state is CaptureState.ERROR and pattern in worker.status().message


def test_burst_source_skips_a_frame_of_another_size(tmp_path):
    _write_burst(tmp_path, 2)
    write_dng(tmp_path / "frame_1.dng", bayer_frame(h=40))
    src = DngBurstSource(tmp_path, paced=False)
    src.open()
    src.read()
    with pytest.raises(FrameDecodeError, match="frame_1.dng: size 48x40 vs 48x32"):
        src.read()


# -- a real camera file --------------------------------------------------------------------------


def test_real_blackmagic_dng_reads_and_a_crop_round_trips(shared_data, tmp_path):
    path = shared_data / "RAW_single" / "Blackmagic.dng"
    if not path.exists():
        pytest.skip(f"{path} not found")
    frame = read_dng(path)
    assert frame.pixel_format is PixelFormat.BAYER16 and frame.pixels.shape == (2176, 4128)
    raw = frame.raw
    assert (raw.cfa_pattern, raw.black_level, raw.white_level) == ("RGGB", (512.0,) * 4, 65535)
    assert raw.as_shot_neutral == (0.4533, 1.0, 0.53)
    assert raw.color_matrix[0, 0] == pytest.approx(0.68795), "the D65 matrix (ColorMatrix2) is chosen"
    with rawpy.imread(str(path)) as r:
        assert np.array_equal(frame.pixels, r.raw_image_visible)

    crop = Frame(frame.pixels[1000:1128, 2000:2192], 0, 0, "crop", PixelFormat.BAYER16, raw=raw)
    out = write_dng(tmp_path / "crop.dng", crop)
    with rawpy.imread(str(out)) as r:
        assert np.array_equal(r.raw_image_visible, crop.pixels)
        assert cfa_at_positions(r) == "RGGB" and r.white_level == 65535 and black_at_positions(r) == [512] * 4
    back = read_dng(out)
    assert np.array_equal(back.pixels, crop.pixels)
    assert back.raw.black_level == raw.black_level and back.raw.as_shot_neutral == raw.as_shot_neutral
    assert np.allclose(back.raw.color_matrix, raw.color_matrix, rtol=1e-12, atol=0)
