"""`eyefuse enhance` on images, folders and videos; refusals; no half-written outputs."""
from __future__ import annotations

import argparse
import os
from fractions import Fraction
from pathlib import Path

import av
import cv2
import numpy as np
import pytest

from app import enhance_cmd
from app.enhance_cmd import EnhanceError, enhance_path
from engine.processor import BicubicProcessor, ModelError
from tests.onnx_models import make_weights_dir, nearest_2x


def cli(*argv: str) -> int:
    """Run `eyefuse enhance ...` through its own parser (independent of the other subcommands)."""
    parser = argparse.ArgumentParser(prog="eyefuse")
    enhance_cmd.add_parser(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["enhance", *argv, "--no-progress", "--threads", "1"])
    return args.run(args)


@pytest.fixture(scope="module")
def weights(tmp_path_factory) -> Path:
    return make_weights_dir(tmp_path_factory.mktemp("weights"), ["nearest"])


def image(h=9, w=13, seed=0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def write_video(path: Path, n=10, fps=12, w=32, h=24, codec="mpeg4") -> list[np.ndarray]:
    frames = [np.full((h, w, 3), 20 * i, np.uint8) for i in range(n)]
    with av.open(str(path), "w") as c:
        s = c.add_stream(codec, rate=fps)
        s.width, s.height, s.pix_fmt = w, h, "yuv420p"
        for f in frames:
            c.mux(s.encode(av.VideoFrame.from_ndarray(f[..., ::-1].copy(), format="rgb24")))
        c.mux(s.encode(None))
    return frames


def probe(path: Path) -> tuple[int, Fraction, int, int, str]:
    with av.open(str(path)) as c:
        s = c.streams.video[0]
        n = sum(1 for _ in c.decode(s))
        return n, s.guessed_rate or s.average_rate, s.width, s.height, s.codec_context.name


def leftovers(folder: Path) -> list[str]:
    return [p.name for p in folder.iterdir() if ".part" in p.name]


class FailsAt(BicubicProcessor):
    def __init__(self, at: int):
        super().__init__()
        self.at, self.calls = at, 0

    def enhance(self, frames, timer):
        self.calls += 1
        if self.calls > self.at:
            raise ModelError("synthetic failure")
        return super().enhance(frames, timer)


# -- images --------------------------------------------------------------------------------------
def test_image_with_model_odd_size(tmp_path, weights, capsys):
    src, dst = tmp_path / "in.png", tmp_path / "out.png"
    img = image(9, 13)
    cv2.imwrite(str(src), img)
    assert cli(str(src), "-o", str(dst), "--model", "nearest", "--weights", str(weights)) == 0
    np.testing.assert_array_equal(cv2.imread(str(dst)), nearest_2x(img))
    assert "wrote" in capsys.readouterr().out and leftovers(tmp_path) == []


def test_grey_image_into_a_folder(tmp_path):
    src = tmp_path / "grey.png"
    cv2.imwrite(str(src), image(8, 8)[..., 0])
    (tmp_path / "out").mkdir()
    assert cli(str(src), "-o", str(tmp_path / "out"), "--model", "bicubic") == 0
    assert cv2.imread(str(tmp_path / "out" / "grey.png")).shape == (16, 16, 3)


def test_folder_of_images_names_the_bad_one(tmp_path, capsys):
    src = tmp_path / "in"
    src.mkdir()
    for i in range(3):
        cv2.imwrite(str(src / f"img{i}.png"), image(6, 8 + i, seed=i))
    (src / "notes.txt").write_text("not an image, ignored")
    (src / "broken.jpg").write_bytes(b"\xff\xd8\xff garbage")
    assert cli(str(src), "-o", str(tmp_path / "out"), "--model", "bicubic") == 1
    out = sorted(p.name for p in (tmp_path / "out").iterdir())
    assert out == ["img0.png", "img1.png", "img2.png"]
    assert cv2.imread(str(tmp_path / "out" / "img2.png")).shape == (12, 20, 3)
    err = capsys.readouterr().err
    assert f"cannot decode image {src / 'broken.jpg'}" in err


# -- video ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("suffix,backend", [(".mp4", "av"), (".avi", "av"), (".mkv", "opencv")])
def test_video_keeps_frame_count_and_rate(tmp_path, weights, suffix, backend):
    src, dst = tmp_path / "in.mp4", tmp_path / f"out{suffix}"
    write_video(src, n=10, fps=12)
    assert cli(str(src), "-o", str(dst), "--model", "nearest", "--weights", str(weights), "--backend", backend) == 0
    n, rate, w, h, codec = probe(dst)
    assert (n, rate, w, h) == (10, 12, 64, 48)
    if suffix == ".mp4":
        assert codec == "h264"  # the installed PyAV has libx264
    assert leftovers(tmp_path) == []


def test_video_frames_go_through_the_processor_in_order(tmp_path):
    src = tmp_path / "in.mkv"
    write_video(src, n=10, fps=25, codec="libx264")
    summary = enhance_path(src, tmp_path / "out.mkv", BicubicProcessor(), progress=False)
    assert summary.frames == 10 and summary.fps == 25 and summary.size == (64, 48)

    def means(path):
        with av.open(str(path)) as c:
            return [f.to_ndarray(format="bgr24").mean() for f in c.decode(video=0)]

    assert np.allclose(means(tmp_path / "out.mkv"), means(src), atol=2)  # order and content survive


# -- refusals and failures -----------------------------------------------------------------------
def test_never_overwrites_the_input(tmp_path, capsys):
    src = tmp_path / "clip.mp4"
    write_video(src, n=3)
    before = src.read_bytes()
    assert cli(str(src), "-o", str(src), "--model", "bicubic") == 1
    assert "refusing to overwrite the input" in capsys.readouterr().err
    alias = tmp_path / "alias.mp4"
    os.link(src, alias)  # the same file under another name
    assert cli(str(src), "-o", str(alias), "--model", "bicubic") == 1
    assert cli(str(tmp_path), "-o", str(tmp_path / "." ), "--model", "bicubic") == 1
    assert "would overwrite the inputs" in capsys.readouterr().err
    assert src.read_bytes() == before


def test_corrupt_input_is_named(tmp_path, capsys):
    bad = tmp_path / "bad.mp4"
    bad.write_bytes(os.urandom(2000))
    assert cli(str(bad), "-o", str(tmp_path / "out.mp4"), "--model", "bicubic") == 1
    err = capsys.readouterr().err
    assert f"cannot decode {bad}" in err
    assert not (tmp_path / "out.mp4").exists() and leftovers(tmp_path) == []
    assert cli(str(tmp_path / "missing.mp4"), "-o", str(tmp_path / "o.mp4"), "--model", "bicubic") == 1
    assert "missing.mp4 does not exist" in capsys.readouterr().err


def test_failure_part_way_leaves_no_output_under_the_final_name(tmp_path):
    src, dst = tmp_path / "in.mp4", tmp_path / "out.mp4"
    write_video(src, n=10)
    with pytest.raises(EnhanceError, match=r"bicubic failed on .*in\.mp4 frame 5: synthetic failure"):
        enhance_path(src, dst, FailsAt(5), progress=False)
    assert not dst.exists() and leftovers(tmp_path) == []
    dst.write_bytes(b"previous good output")  # an earlier result survives a failed rerun
    with pytest.raises(EnhanceError):
        enhance_path(src, dst, FailsAt(5), progress=False)
    assert dst.read_bytes() == b"previous good output" and leftovers(tmp_path) == []


def test_unknown_model_and_bad_output_type(tmp_path, weights, capsys):
    src = tmp_path / "in.png"
    cv2.imwrite(str(src), image())
    assert cli(str(src), "-o", str(tmp_path / "o.png"), "--model", "nope", "--weights", str(weights)) == 1
    assert "no processor or model named 'nope' (choose from: bicubic, passthrough, burst_fusion, nearest" in capsys.readouterr().err
    assert cli(str(src), "-o", str(tmp_path / "o.xyz"), "--model", "bicubic") == 1
    assert "cannot write images of type '.xyz'" in capsys.readouterr().err


# -- bad input that used to pass without a word ---------------------------------------------------
def test_a_dng_is_pointed_to_enhance_burst(tmp_path, capsys):
    (tmp_path / "frame.dng").write_bytes(b"II*\x00")
    assert cli(str(tmp_path / "frame.dng"), "-o", str(tmp_path / "out.png")) == 1
    err = capsys.readouterr().err
    assert "RAW DNG" in err and "eyefuse enhance-burst" in err


def test_sixteen_bit_images_are_refused_and_alpha_is_carried_through(tmp_path, capsys):
    deep = (np.arange(48 * 64, dtype=np.uint16).reshape(48, 64) * 17)
    cv2.imwrite(str(tmp_path / "deep.png"), np.dstack([deep] * 3))
    assert cli(str(tmp_path / "deep.png"), "-o", str(tmp_path / "deep_out.png"), "--model", "bicubic") == 1
    assert "16-bit samples" in capsys.readouterr().err and not (tmp_path / "deep_out.png").exists()
    rgba = np.zeros((48, 64, 4), np.uint8)
    rgba[..., :3] = 120
    rgba[:, 32:, 3] = 255  # the right half opaque
    cv2.imwrite(str(tmp_path / "rgba.png"), rgba)
    assert cli(str(tmp_path / "rgba.png"), "-o", str(tmp_path / "rgba_out.png"), "--model", "bicubic") == 0
    out = cv2.imread(str(tmp_path / "rgba_out.png"), cv2.IMREAD_UNCHANGED)
    assert out.shape == (96, 128, 4) and out[:, :60, 3].max() == 0 and out[:, 68:, 3].min() == 255
    assert cli(str(tmp_path / "rgba.png"), "-o", str(tmp_path / "rgba_out.jpg"), "--model", "bicubic") == 1
    assert "alpha channel" in capsys.readouterr().err


def test_a_folder_summary_counts_every_outcome(tmp_path, capsys):
    src = tmp_path / "in"
    src.mkdir()
    cv2.imwrite(str(src / "a.png"), np.full((16, 16, 3), 100, np.uint8))
    cv2.imwrite(str(src / "b.png"), np.full((24, 32, 3), 100, np.uint8))
    (src / "c.png").write_bytes(b"broken")
    (src / "notes.txt").write_text("not an image")
    assert cli(str(src), "-o", str(tmp_path / "out"), "--model", "bicubic") == 1
    captured = capsys.readouterr()
    assert "2 images, 1 failed, 1 skipped (not images: notes.txt)" in captured.out
    assert "sizes 32x32 (1), 64x48 (1)" in captured.out


def test_a_truncated_video_is_an_error_unless_a_partial_output_is_asked_for(tmp_path, capsys):
    src = tmp_path / "clip.mp4"
    rng = np.random.default_rng(0)
    frames = [rng.integers(0, 256, (96, 128, 3), dtype=np.uint8) for _ in range(20)]  # noise: the frames fill the file
    with av.open(str(src), "w", options={"movflags": "faststart"}) as c:  # the index first, as cameras write it
        st = c.add_stream("mpeg4", rate=12)
        st.width, st.height, st.pix_fmt = 128, 96, "yuv420p"
        for f in frames:
            c.mux(st.encode(av.VideoFrame.from_ndarray(f, format="rgb24")))
        c.mux(st.encode(None))
    data = src.read_bytes()
    moov = data.find(b"moov")
    assert 0 < moov < data.find(b"mdat"), "the index must come first for the cut to keep it"
    cut = tmp_path / "cut.mp4"
    cut.write_bytes(data[: len(data) // 2])
    assert cli(str(cut), "-o", str(tmp_path / "out.mp4"), "--model", "bicubic") == 1
    err = capsys.readouterr().err
    assert "of the 20 frames its container promises" in err and not (tmp_path / "out.mp4").exists()
    assert cli(str(cut), "-o", str(tmp_path / "out.mp4"), "--model", "bicubic",
               "--allow-partial") == 0
    assert "PARTIAL" in capsys.readouterr().out and (tmp_path / "out.mp4").exists()


@pytest.fixture
def read_only_dir(tmp_path):
    """A folder nothing can be written to: mode 0555 for a user; for root (whom modes do not stop,
    and CI runs as root) a read-only tmpfs mounted there."""
    import subprocess

    ro = tmp_path / "ro"
    ro.mkdir()
    if os.geteuid() != 0:
        ro.chmod(0o555)
        yield ro
        ro.chmod(0o755)
        return
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "ro,size=1m", "tmpfs", str(ro)], capture_output=True).returncode:
        pytest.skip("running as root where a read-only tmpfs cannot be mounted: no folder is read-only to root")
    yield ro
    subprocess.run(["umount", str(ro)], check=True)


def test_a_read_only_output_folder_is_one_clear_line(tmp_path, read_only_dir, capsys):
    img = tmp_path / "a.png"
    cv2.imwrite(str(img), np.full((16, 16, 3), 100, np.uint8))
    assert cli(str(img), "-o", str(read_only_dir / "out.png"), "--model", "bicubic") == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"cannot write to {read_only_dir}" in err and not list(read_only_dir.iterdir())


def test_an_exif_rotated_jpeg_is_enhanced_upright_and_an_opaque_bmp_is_not_taken_for_alpha(tmp_path):
    from PIL import Image

    img = np.zeros((40, 80, 3), np.uint8)
    img[:, :40] = 200  # the left half bright, as stored
    exif = Image.Exif()
    exif[0x0112] = 6  # Orientation: rotate 90 degrees clockwise to display
    Image.fromarray(img).save(tmp_path / "turned.jpg", exif=exif.tobytes(), quality=95)
    assert cli(str(tmp_path / "turned.jpg"), "-o", str(tmp_path / "out.png"), "--model", "bicubic") == 0
    out = cv2.imread(str(tmp_path / "out.png"))
    assert out.shape[:2] == (160, 80), "upright, as a viewer shows it: portrait"
    bgra = np.dstack([np.full((16, 16, 3), 90, np.uint8), np.full((16, 16), 255, np.uint8)])
    assert cv2.imwrite(str(tmp_path / "opaque.bmp"), bgra)
    assert cli(str(tmp_path / "opaque.bmp"), "-o", str(tmp_path / "opaque_out.bmp"), "--model", "bicubic") == 0
