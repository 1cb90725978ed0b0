"""`eyefuse enhance-burst`: synthetic and real DNG bursts in, one merged DNG out."""
import re
import time

import cv2
import numpy as np
import rawpy

from app.cli import main
from capture.dng import read_dng, write_dng
from capture.frame import Frame, PixelFormat
from engine.burst.raw import normalise, pack, unpack
from tests.burst_data import burst
from capture.burst_synthesis import burst_frames
from engine.metrics import burst_score as score


def write_burst(folder, frames, name="frame_{}.dng", bits=12):
    folder.mkdir(parents=True, exist_ok=True)
    return [write_dng(folder / name.format(i), f, bits=bits) for i, f in enumerate(frames)]


def test_enhance_burst_round_trip_on_a_synthetic_burst(tmp_path, capsys):
    b = burst(6, gain=4, size=(256, 192), seed=60)
    write_burst(tmp_path / "in", burst_frames(b))
    out = tmp_path / "merged.dng"
    assert main(["enhance-burst", str(tmp_path / "in" / "*.dng"), "-o", str(out), "--preview",
                 str(tmp_path / "merged.png")]) == 0
    assert "6 of 6 frames merged into frame_0.dng" in capsys.readouterr().out
    with rawpy.imread(str(out)) as r:
        assert r.raw_image_visible.shape == (192, 256) and r.white_level == 65535
        rgb = r.postprocess(use_camera_wb=True, no_auto_bright=True, output_bps=8)
        assert rgb.shape[:2] == (192, 256)
    merged = read_dng(out)
    clean = b.clean[0]
    ref = read_dng(tmp_path / "in" / "frame_0.dng")
    assert score(normalise(merged.pixels, merged.raw), clean).psnr_linear > \
        score(normalise(ref.pixels, ref.raw), clean).psnr_linear + 4
    assert cv2.imread(str(tmp_path / "merged.png")).shape == (192, 256, 3)


def test_enhance_burst_refuses_what_it_cannot_do(tmp_path, capsys):
    b = burst(3, gain=1, size=(128, 96), seed=61)
    paths = write_burst(tmp_path / "in", burst_frames(b))
    assert main(["enhance-burst", str(tmp_path / "in"), "-o", str(paths[0])]) == 1
    assert "refusing to overwrite" in capsys.readouterr().err
    assert main(["enhance-burst", str(tmp_path / "nothing" / "*.dng"), "-o", str(tmp_path / "m.dng")]) == 1
    assert "no DNG files match" in capsys.readouterr().err
    assert main(["enhance-burst", str(tmp_path / "in"), "-o", str(tmp_path / "m.png")]) == 1
    assert "must end in .dng" in capsys.readouterr().err
    # a frame of another exposure stops the job, or is left out on request
    odd = burst_frames(b)[1]
    odd = Frame(odd.pixels, 0, 0, "odd", PixelFormat.BAYER16, raw=odd.raw.replace(exposure_time_s=1 / 8))
    write_dng(tmp_path / "in" / "frame_9.dng", odd, bits=12)
    assert main(["enhance-burst", str(tmp_path / "in"), "-o", str(tmp_path / "m.dng")]) == 1
    err = capsys.readouterr().err
    assert "exposure time" in err and "--on-mismatch exclude" in err and "frame_9.dng" in err
    assert main(["enhance-burst", str(tmp_path / "in"), "-o", str(tmp_path / "m.dng"), "--on-mismatch", "exclude",
                 "--bits", "12"]) == 0
    captured = capsys.readouterr()
    assert "left out" in captured.err and "frame_9.dng" in captured.err and "3 of 4 frames" in captured.out
    assert read_dng(tmp_path / "m.dng").raw.white_level == 4095
    # a corrupt file is reported and skipped
    (tmp_path / "in" / "frame_5.dng").write_bytes(b"not a dng")
    assert main(["enhance-burst", str(tmp_path / "in"), "-o", str(tmp_path / "m2.dng"), "--on-mismatch", "exclude",
                 "--aligner", "dis", "--merge", "robust"]) == 0
    assert "skipped" in capsys.readouterr().err


def test_enhance_burst_on_shifted_noisy_copies_of_a_real_dng_crop(tmp_path, shared_data, capsys):
    """The real Blackmagic frame (12-bit data in 16 bits, RGGB, no noise profile): a crop of it,
    shifted by sub-pixel amounts plane by plane and given strong extra noise, six times."""
    src = read_dng(shared_data / "RAW_single" / "Blackmagic.dng")
    y0, x0 = 800, 1600  # even: keeps the CFA phase
    crop = src.pixels[y0 : y0 + 384, x0 : x0 + 512]
    meta = src.raw
    planes = normalise(crop, meta)
    rng = np.random.default_rng(62)
    frames = []
    for i in range(6):
        dx, dy = (0.0, 0.0) if i == 0 else rng.uniform(-3, 3, 2)
        m = np.float32([[1, 0, dx], [0, 1, dy]])
        moved = np.stack([cv2.warpAffine(p, m, (256, 192), flags=cv2.INTER_CUBIC | cv2.WARP_INVERSE_MAP,
                                         borderMode=cv2.BORDER_REFLECT101) for p in planes])
        noisy = moved + np.sqrt(2e-4 * np.clip(moved, 0, 1) + 2e-5) * rng.standard_normal(moved.shape)
        mosaic = np.clip(np.rint(unpack(noisy) * (meta.white_level - 512) + 512), 0, 65535).astype(np.uint16)
        frames.append(Frame(mosaic, i, time.monotonic_ns(), "crop", PixelFormat.BAYER16, raw=meta))
    write_burst(tmp_path / "in", frames, bits=16)
    out = tmp_path / "merged.dng"
    assert main(["enhance-burst", str(tmp_path / "in"), "-o", str(out), "--bits", "16"]) == 0
    said = capsys.readouterr().out
    assert "no noise profile; noise measured from the burst" in said, "no NoiseProfile in this DNG: it is measured"
    # the noise added (2e-4 x + 2e-5) is most of it (the camera's own adds a little): measured
    # within the estimator's tolerance across the levels
    s, o = (float(v) for v in re.search(r"variance = ([0-9.e-]+) x \+ ([0-9.e-]+)", said).groups())
    for x in (0.05, 0.25, 0.5):
        assert 0.85 <= (s * x + o) / (2e-4 * x + 2e-5) <= 1.4, (x, s, o)
    merged = read_dng(out)
    assert merged.raw.cfa_pattern == "RGGB" and merged.pixels.shape == (384, 512)
    got = normalise(merged.pixels, merged.raw)
    ref = normalise(frames[0].pixels, meta)
    err_merged = np.sqrt(np.mean((got - planes)[:, 8:-8, 8:-8] ** 2))
    err_ref = np.sqrt(np.mean((ref - planes)[:, 8:-8, 8:-8] ** 2))
    assert err_merged < 0.6 * err_ref, (err_merged, err_ref)
    with rawpy.imread(str(out)) as r:
        assert np.array_equal(r.raw_image_visible, merged.pixels)
    assert pack(merged.pixels).shape == (4, 192, 256)


def test_every_bad_file_is_named_in_one_message_with_the_cli_flag(tmp_path, capsys):
    b = burst(4, gain=2, size=(64, 48), seed=3)
    folder = tmp_path / "in"
    write_burst(folder, burst_frames(b))
    (folder / "frame_9.dng").write_bytes((folder / "frame_0.dng").read_bytes()[:500])  # truncated
    (folder / "photo.dng").write_bytes(cv2.imencode(".png", np.zeros((8, 8, 3), np.uint8))[1].tobytes())  # a PNG
    write_dng(folder / "other_size.dng", burst_frames(burst(1, size=(32, 32)))[0])
    assert main(["enhance-burst", str(folder), "-o", str(tmp_path / "m.dng")]) == 1
    err = capsys.readouterr().err
    assert err.count("eyefuse enhance-burst:") == 1
    for name in ("frame_9.dng", "photo.dng", "other_size.dng"):
        assert name in err
    assert "--on-mismatch exclude" in err and "on_mismatch=" not in err


def test_a_burst_of_one_frame_is_said_once(tmp_path, capsys):
    write_burst(tmp_path / "in", burst_frames(burst(1, size=(64, 48))))
    assert main(["enhance-burst", str(tmp_path / "in"), "-o", str(tmp_path / "m.dng")]) == 0
    captured = capsys.readouterr()
    assert (captured.out + captured.err).count("a burst of one frame") == 1 and "UserWarning" not in captured.err


def test_enhance_burst_refines_with_the_bundled_teacher_and_regressor(tmp_path, capsys):
    b = burst(6, gain=4, size=(136, 100), seed=11)  # planes of 68x50: not multiples of the latent's 8
    write_burst(tmp_path / "in", burst_frames(b))
    merged_only = tmp_path / "m.dng"
    assert main(["enhance-burst", str(tmp_path / "in"), "-o", str(merged_only)]) == 0
    for refine, steps in (("regressor", "1"), ("teacher", "3")):
        out = tmp_path / f"{refine}.dng"
        assert main(["enhance-burst", str(tmp_path / "in"), "-o", str(out), "--refine", refine, "--steps", steps]) == 0
        assert "refine" in capsys.readouterr().out  # its stage time is in the summary
        got = read_dng(out)
        assert got.pixels.shape == (100, 136)
        err = lambda path: np.sqrt(np.mean((normalise(read_dng(path).pixels, read_dng(path).raw) - b.clean[0]) ** 2))
        assert err(out) < 1.1 * err(merged_only), refine  # the refinement keeps the merge's quality (gain 4)


def test_frames_are_matched_against_the_reference_chosen_not_the_first_file(tmp_path, capsys):
    folder = tmp_path / "in"
    folder.mkdir()
    write_dng(folder / "a_odd.dng", burst_frames(burst(1, size=(32, 32)))[0])  # the first file, of another size
    write_burst(folder, burst_frames(burst(5, gain=2, size=(64, 48), seed=3)), name="b_{}.dng")
    out = tmp_path / "m.dng"
    assert main(["enhance-burst", str(folder), "-o", str(out), "--reference", "newest", "--on-mismatch", "exclude"]) == 0
    said = capsys.readouterr()
    assert "5 of 5 frames merged into b_4.dng" in said.out  # not a burst of the odd first file alone
    assert "a_odd.dng: size 32x32 vs 64x48 (reference frame: b_4.dng)" in said.err
    assert read_dng(out).pixels.shape == (48, 64)
    assert main(["enhance-burst", str(folder), "-o", str(out), "--reference", "9"]) == 1
    assert "outside the 6 files" in capsys.readouterr().err
