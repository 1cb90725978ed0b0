import numpy as np
import pytest

from capture.convert import bgr_to_yuyv, to_bgr8, yuyv_to_bgr
from capture.frame import Frame, PixelFormat, RawMeta


def test_pixels_are_read_only_and_never_change_under_a_reader():
    src = np.zeros((4, 6, 3), np.uint8)
    f = Frame(src, 0, 1, "t", PixelFormat.BGR8)
    with pytest.raises(ValueError):
        f.pixels[0, 0, 0] = 1
    with pytest.raises(ValueError):  # an owned buffer is handed over (no copy): reusing it is caught
        src[0, 0, 0] = 9
    big = np.zeros((4, 12, 3), np.uint8)
    g = Frame(big[:, :6], 0, 1, "t", PixelFormat.BGR8)  # a view of someone's buffer is copied
    big[0, 0, 0] = 9
    assert g.pixels[0, 0, 0] == 0


@pytest.mark.parametrize(
    "pixels,fmt,match",
    [
        (np.zeros((4, 6), np.uint8), PixelFormat.BGR8, "BGR8 frame must be 3-D uint8 with 3 channels"),
        (np.zeros((4, 5, 2), np.uint8), PixelFormat.YUYV, "width must be even"),
        (np.zeros((4, 6), np.uint8), PixelFormat.BAYER16, "uint16"),
    ],
)
def test_bad_layouts_are_refused(pixels, fmt, match):
    with pytest.raises(ValueError, match=match):
        Frame(pixels, 0, 0, "t", fmt)


def test_bayer_needs_raw_meta():
    with pytest.raises(ValueError, match="needs RawMeta"):
        Frame(np.zeros((4, 6), np.uint16), 0, 0, "t", PixelFormat.BAYER16)


def test_raw_meta_checks():
    with pytest.raises(ValueError, match="CFA pattern"):
        RawMeta(cfa_pattern="RGBG")
    with pytest.raises(ValueError, match="white level"):
        RawMeta(black_level=(64, 64, 64, 64), white_level=64)


def test_yuyv_round_trip_is_close():
    rng = np.random.default_rng(0)
    # smooth colours: YUYV halves the chroma resolution, so flat-ish images survive it
    bgr = np.repeat(np.repeat(rng.integers(0, 256, (8, 8, 3), dtype=np.uint8), 4, 0), 4, 1)
    back = yuyv_to_bgr(bgr_to_yuyv(bgr))
    assert back.shape == bgr.shape
    assert np.abs(back.astype(int) - bgr.astype(int)).mean() < 1.5


def test_to_bgr8_converts_every_format():
    g = Frame(np.full((4, 6), 7, np.uint8), 0, 0, "t", PixelFormat.GRAY8)
    assert to_bgr8(g).shape == (4, 6, 3) and (to_bgr8(g) == 7).all()
    raw = RawMeta(black_level=(64, 64, 64, 64), white_level=4095)
    b = Frame(np.full((4, 6), 4095, np.uint16), 0, 0, "t", PixelFormat.BAYER16, raw=raw)
    assert (to_bgr8(b) == 255).all()  # saturated white stays white through WB and gamma


@pytest.mark.parametrize("pattern", ["RGGB", "BGGR", "GRBG", "GBRG"])
def test_bayer_preview_puts_red_sites_in_the_red_channel(pattern):
    """A scene that is pure red lights only the R sites of the mosaic; the preview must come out red."""
    mosaic = np.zeros((8, 8), np.uint16)
    r_y, r_x = divmod(pattern.index("R"), 2)
    mosaic[r_y::2, r_x::2] = 60000
    meta = RawMeta(black_level=(0, 0, 0, 0), white_level=65535, cfa_pattern=pattern)
    bgr = to_bgr8(Frame(mosaic, 0, 1, "t", PixelFormat.BAYER16, raw=meta))
    centre = bgr[2:6, 2:6].reshape(-1, 3).mean(axis=0)
    assert centre[2] > 200 and centre[0] < 20 and centre[1] < 20, centre
