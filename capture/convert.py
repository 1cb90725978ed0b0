"""Pixel-format conversions to the BGR8 the engine and the viewer work in (pure functions)."""
from __future__ import annotations

import cv2
import numpy as np

from capture.frame import Frame, PixelFormat, RawMeta

# OpenCV's demosaicing codes per CFA pattern and method. OpenCV names a Bayer code by the 2x2 block
# starting at (1, 1): our row-major RGGB is its "BG".
DEMOSAIC_CODES = {
    "bilinear": {"RGGB": cv2.COLOR_BayerBG2BGR, "BGGR": cv2.COLOR_BayerRG2BGR,
                 "GRBG": cv2.COLOR_BayerGB2BGR, "GBRG": cv2.COLOR_BayerGR2BGR},
    "ea": {"RGGB": cv2.COLOR_BayerBG2BGR_EA, "BGGR": cv2.COLOR_BayerRG2BGR_EA,
           "GRBG": cv2.COLOR_BayerGB2BGR_EA, "GBRG": cv2.COLOR_BayerGR2BGR_EA},
    "vng": {"RGGB": cv2.COLOR_BayerBG2BGR_VNG, "BGGR": cv2.COLOR_BayerRG2BGR_VNG,
            "GRBG": cv2.COLOR_BayerGB2BGR_VNG, "GBRG": cv2.COLOR_BayerGR2BGR_VNG},
}


def yuyv_to_bgr(yuyv: np.ndarray) -> np.ndarray:
    """YUV 4:2:2 packed (H, W, 2) uint8 -> (H, W, 3) uint8 BGR (BT.601, as the OV7720 sends)."""
    return cv2.cvtColor(yuyv, cv2.COLOR_YUV2BGR_YUYV)


# BT.601 studio-range RGB -> YCbCr (rows Y, Cb, Cr; columns R, G, B on 0..255): the inverse of what
# OpenCV's COLOR_YUV2BGR_YUYV decodes (its full-range COLOR_BGR2YUV is not).
_RGB_TO_YCBCR = np.array([[65.481, 128.553, 24.966], [-37.797, -74.203, 112.0], [112.0, -93.786, -18.214]]) / 255.0


def bgr_to_yuyv(bgr: np.ndarray) -> np.ndarray:
    """(H, W, 3) uint8 BGR with even W -> (H, W, 2) uint8 YUYV; chroma averaged over pixel pairs."""
    if bgr.shape[1] % 2:
        raise ValueError(f"YUYV needs an even width, got {bgr.shape[1]}")
    ycc = bgr[..., ::-1].astype(np.float32) @ _RGB_TO_YCBCR.T.astype(np.float32)
    ycc += np.array([16.0, 128.0, 128.0], np.float32)
    out = np.empty(bgr.shape[:2] + (2,), np.uint8)
    out[..., 0] = np.clip(ycc[..., 0] + 0.5, 0, 255)
    out[:, 0::2, 1] = np.clip((ycc[:, 0::2, 1] + ycc[:, 1::2, 1]) * 0.5 + 0.5, 0, 255)
    out[:, 1::2, 1] = np.clip((ycc[:, 0::2, 2] + ycc[:, 1::2, 2]) * 0.5 + 0.5, 0, 255)
    return out


def bayer_to_bgr_preview(mosaic: np.ndarray, raw: RawMeta) -> np.ndarray:
    """(H, W) uint16 CFA mosaic -> (H, W, 3) uint8 BGR: black/white normalised, bilinear demosaic,
    white balance from as-shot neutral, gamma 1/2.2. For previews; the burst ISP does it properly."""
    black = np.array(raw.black_level, np.float32).reshape(2, 2) if len(raw.black_level) == 4 else None
    x = mosaic.astype(np.float32)
    if black is not None:
        x -= np.tile(black, (mosaic.shape[0] // 2, mosaic.shape[1] // 2))
        scale = raw.white_level - float(black.mean())
    else:
        scale = float(raw.white_level)
    x = np.clip(x / scale, 0.0, 1.0)
    bgr = cv2.cvtColor((x * 65535).astype(np.uint16), DEMOSAIC_CODES["bilinear"][raw.cfa_pattern]).astype(np.float32) / 65535
    gains = 1.0 / np.maximum(np.array(raw.as_shot_neutral, np.float32), 1e-6)
    bgr *= (gains / gains[1])[::-1]
    return (np.clip(bgr, 0, 1) ** (1 / 2.2) * 255 + 0.5).astype(np.uint8)


def to_bgr8(frame: Frame) -> np.ndarray:
    """Any frame -> (H, W, 3) uint8 BGR, the engine's input layout."""
    fmt = frame.pixel_format
    if fmt is PixelFormat.BGR8:
        return frame.pixels
    if fmt is PixelFormat.GRAY8:
        return cv2.cvtColor(frame.pixels, cv2.COLOR_GRAY2BGR)
    if fmt is PixelFormat.YUYV:
        return yuyv_to_bgr(frame.pixels)
    if fmt is PixelFormat.BAYER16:
        return bayer_to_bgr_preview(frame.pixels, frame.raw)
    if fmt is PixelFormat.RGB16:
        raw = frame.raw
        black = np.array(raw.black_level[:3], np.float32)
        x = np.clip((frame.pixels.astype(np.float32) - black) / (raw.white_level - black), 0, 1)
        return (x[..., ::-1] ** (1 / 2.2) * 255 + 0.5).astype(np.uint8)
    raise ValueError(f"cannot convert pixel format {fmt!r} to BGR8")
