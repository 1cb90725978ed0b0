"""engine.burst.lens: DNG lens opcodes written, read back through a DNG, parsed and corrected."""
import struct
import time

import numpy as np
import pytest

from capture.dng import read_dng, write_dng
from capture.frame import Frame, PixelFormat, RawMeta
from engine.burst.lens import (
    FixVignetteRadial,
    GainMap,
    LensModel,
    OpcodeError,
    RawOpcode,
    WarpRectilinear,
    correct,
    distort,
    estimate_lateral_ca,
    opcode_list_bytes,
    parse_opcode_list,
    without_lens_opcodes,
)
from tests.burst_data import STATIC, burst

WARP = WarpRectilinear(((1.003, -0.004, 0.001, 0.0, 0.0002, -0.0001),
                        (1.0, -0.004, 0.001, 0.0, 0.0002, -0.0001),
                        (0.997, -0.004, 0.001, 0.0, 0.0002, -0.0001)), (0.48, 0.52))
VIGNETTE = FixVignetteRadial((-0.35, 0.08, -0.01, 0.0, 0.0), (0.48, 0.52))


def cfa_gain_maps(h: int, w: int, strength=(0.3, 0.25, 0.25, 0.35)) -> list[GainMap]:
    """Four lens-shading maps, one per CFA position (pitch 2), rising towards the corners."""
    yy, xx = np.mgrid[0:9, 0:11] / np.array([8.0, 10.0])[:, None, None]
    r2 = ((xx - 0.5) ** 2 + (yy - 0.5) ** 2) / 0.5
    return [GainMap(row, col, h, w, (1.0 + s * r2).astype(np.float32), (1 / 8, 1 / 10), (0.0, 0.0),
                    row_pitch=2, col_pitch=2) for (row, col), s in zip(((0, 0), (0, 1), (1, 0), (1, 1)), strength)]


def test_opcode_lists_are_big_endian_and_round_trip():
    unknown = RawOpcode(5, b"\x00\x00\x00\x01" + bytes(8), flags=0)  # FixBadPixelsList, kept as bytes
    ops = [WARP, VIGNETTE, *cfa_gain_maps(96, 128), unknown]
    data = opcode_list_bytes(ops)
    assert data[:4] == struct.pack(">I", 7)
    assert struct.unpack_from(">IIII", data, 4)[:3] == (1, 0x01030000, 1)  # id, DNG 1.3.0.0, optional
    assert struct.unpack_from(">I", data, 20)[0] == 3  # WarpRectilinear: three planes
    assert struct.unpack_from(">d", data, 24)[0] == 1.003
    back = parse_opcode_list(data)
    assert back == ops
    assert opcode_list_bytes(back) == data


def test_lens_opcodes_survive_a_dng_file_and_become_the_same_model(tmp_path):
    model = LensModel.from_opcodes({3: opcode_list_bytes([WARP, VIGNETTE]), 2: opcode_list_bytes(cfa_gain_maps(48, 64))})
    meta = RawMeta(black_level=(64.0,) * 4, white_level=4095, opcodes=model.to_opcodes())
    pixels = np.random.default_rng(0).integers(64, 4096, (48, 64), dtype=np.uint16)
    path = write_dng(tmp_path / "lens.dng", Frame(pixels, 0, time.monotonic_ns(), "t", PixelFormat.BAYER16, raw=meta))
    back = LensModel.from_opcodes(read_dng(path).raw.opcodes)
    assert back.source == "opcodes"
    assert back.warp == WARP.coefficients and back.vignette == VIGNETTE.k and back.centre == (0.48, 0.52)
    assert len(back.gain_maps) == 4 and all(a == b for a, b in zip(back.gain_maps, cfa_gain_maps(48, 64)))
    vec = back.as_vector()
    assert vec.shape == (LensModel.VECTOR_SIZE,) and vec[0] == pytest.approx(-0.35)
    assert np.array_equal(LensModel().as_vector(), np.zeros(LensModel.VECTOR_SIZE, np.float32))


@pytest.mark.parametrize("pattern", ["RGGB", "GBRG"])
def test_vignetting_shading_distortion_and_lateral_ca_are_corrected(pattern):
    b = burst(1, gain=1, size=(256, 192), seed=40, motion=STATIC, pattern=pattern)
    clean = b.clean[0]
    model = LensModel(VIGNETTE.k, WARP.coefficients, WARP.centre, tuple(cfa_gain_maps(192, 256)), "opcodes")
    observed = distort(clean, model, pattern)
    fixed = correct(observed, model, pattern)
    inner = (slice(None), slice(8, -8), slice(8, -8))
    before = np.abs(observed - clean)[inner].mean()
    after = np.abs(fixed - clean)[inner].mean()
    assert before > 0.002 and after < before / 5, (before, after)


def test_lens_corrections_apply_through_fuse_burst_and_leave_the_output_clean(tmp_path):
    from engine.burst.fusion import BurstConfig, fuse_burst, merged_frame
    from capture.burst_synthesis import burst_frames

    b = burst(3, gain=1, size=(128, 96), seed=41)
    model = LensModel(VIGNETTE.k, centre=VIGNETTE.centre, source="user")
    b.noisy[:] = np.stack([distort(p, model, "RGGB") for p in b.noisy])
    other = opcode_list_bytes([RawOpcode(5, bytes(8))])
    frames = [f.__class__(f.pixels, f.seq, f.t_capture_ns, f.source, f.pixel_format,
                          raw=f.raw.replace(opcodes={1: other, 3: opcode_list_bytes([VIGNETTE])}))
              for f in burst_frames(b)]
    fused = fuse_burst(frames, BurstConfig(reference="first", lens="raw"))
    assert fused.lens.has_vignette
    assert set(fused.meta.opcodes) == {1}, "applied lens opcodes are removed, others kept"
    corner = (slice(None), slice(0, 12), slice(0, 12))
    assert abs(fused.planes[corner].mean() - b.clean[0][corner].mean()) < 0.02
    out = read_dng(write_dng(tmp_path / "m.dng", merged_frame(fused, 16)))
    assert out.raw.opcodes == {1: other}


def test_truncated_and_inconsistent_opcode_lists_say_where():
    data = opcode_list_bytes([VIGNETTE])
    with pytest.raises(OpcodeError, match="truncated"):
        parse_opcode_list(data[:-8])
    with pytest.raises(OpcodeError, match="header at byte 4"):
        parse_opcode_list(struct.pack(">I", 1) + b"\x00\x00")
    bad = bytearray(data)
    bad[16:20] = struct.pack(">I", 48)  # a vignette opcode must have 56 parameter bytes
    with pytest.raises(OpcodeError, match="FixVignetteRadial"):
        parse_opcode_list(bytes(bad[:-8]))


def test_without_lens_opcodes_keeps_the_rest():
    other = RawOpcode(4, struct.pack(">II", 0, 0))
    lists = {1: opcode_list_bytes([other]), 3: opcode_list_bytes([WARP, other, VIGNETTE])}
    stripped = without_lens_opcodes(lists)
    assert parse_opcode_list(stripped[3]) == [other] and stripped[1] == lists[1]
    assert without_lens_opcodes({3: opcode_list_bytes([WARP])}) == {}


def test_lateral_ca_is_estimated_when_no_opcode_describes_it():
    b = burst(1, gain=1, size=(512, 384), seed=42, motion=STATIC)
    truth = LensModel(warp=((1.002,) + (0.0,) * 5, (1.0,) + (0.0,) * 5, (0.998,) + (0.0,) * 5))
    est = estimate_lateral_ca(distort(b.clean[0], truth, "RGGB"), "RGGB")
    assert est.source == "estimated"
    assert est.warp[0][0] == pytest.approx(1.002, abs=0.001)
    assert est.warp[2][0] == pytest.approx(0.998, abs=0.001)
    assert est.warp[1] == (1.0,) + (0.0,) * 5
