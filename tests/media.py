"""Media files the tests make for themselves: short videos, a tiny stand-in for BSDS500, tiny teachers."""
from __future__ import annotations

from pathlib import Path

import av
import cv2
import numpy as np


def write_clip(path: Path, n: int = 12, fps: int = 30, size: tuple[int, int] = (160, 120)) -> Path:
    """A short MPEG-4 video: n grey frames, each lighter than the last, of `size` (width, height) at `fps`."""
    with av.open(str(path), "w") as c:
        st = c.add_stream("mpeg4", rate=fps)
        st.width, st.height, st.pix_fmt = size[0], size[1], "yuv420p"
        for i in range(n):
            img = np.full((size[1], size[0], 3), (20 * i) % 256, np.uint8)
            c.mux(st.encode(av.VideoFrame.from_ndarray(img, format="rgb24")))
        c.mux(st.encode(None))
    return path


def fake_bsds(root: Path, n: int = 6, seed: int = 0) -> Path:
    """A BSDS500-shaped folder of n blurred-noise JPEGs per split, and one broken file."""
    rng = np.random.default_rng(seed)
    for split in ("train", "test", "val"):
        d = root / "BSDS500" / split
        d.mkdir(parents=True)
        for i in range(n):
            img = cv2.GaussianBlur(rng.integers(0, 256, (120, 160, 3), dtype=np.uint8), (0, 0), 2.0)
            cv2.imwrite(str(d / f"{i}.jpg"), img)
    (root / "BSDS500" / "train" / "broken.jpg").write_bytes(b"not a jpeg")  # skipped with a warning
    return root


# teacher networks small enough to train in a test
TINY_TEACHERS = {"sr": {"up_scale": 4, "width": 8, "num_blks": 1},
                 "deblur": {"width": 8, "middle_blk_num": 1, "enc_blk_nums": [1], "dec_blk_nums": [1]},
                 "denoise": {"width": 8, "middle_blk_num": 1, "enc_blk_nums": [1], "dec_blk_nums": [1]}}


def decode_all(path: Path) -> int:
    """Decode every frame of the file; any error (a half-written fragment) fails the test."""
    n = 0
    with av.open(str(path)) as c:
        for _ in c.decode(video=0):
            n += 1
    return n
