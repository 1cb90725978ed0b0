"""The teacher pipeline end to end on tiny networks saved in the published checkpoint layout."""
import cv2
import numpy as np
import pytest

import torch  # the training extra: `make test` installs it, and a missing torch must fail, not skip

from trainers.models.nafnet import NAFNet  # noqa: E402
from trainers.models.nafssr import NAFSSR  # noqa: E402
from trainers.teacher import TeacherConfig, main, run_teacher, target_size, temporal_merge  # noqa: E402

ARCHS = {"sr": dict(up_scale=4, width=8, num_blks=2),
         "deblur": dict(width=8, middle_blk_num=1, enc_blk_nums=[1], dec_blk_nums=[1]),
         "denoise": dict(width=8, middle_blk_num=1, enc_blk_nums=[1], dec_blk_nums=[1])}


@pytest.fixture
def teacher_cfg(tmp_path):
    ckpts = {}
    for stage, (cls, arch) in {"sr": (NAFSSR, ARCHS["sr"]), "deblur": (NAFNet, ARCHS["deblur"]),
                               "denoise": (NAFNet, ARCHS["denoise"])}.items():
        ckpts[stage] = tmp_path / f"{stage}.pth"
        torch.save({"params": cls(**arch).state_dict()}, ckpts[stage])
    return TeacherConfig(sr_checkpoint=ckpts["sr"], deblur_checkpoint=ckpts["deblur"], denoise_checkpoint=ckpts["denoise"],
                         archs=ARCHS, tile=32, overlap=8, workers=2)


def _images(d, n=3, size=(40, 30)):
    d.mkdir()
    rng = np.random.default_rng(0)
    for i in range(n):
        cv2.imwrite(str(d / f"f{i:02d}.png"), rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8))


def test_processes_a_folder_resumes_and_skips_unreadable(tmp_path, teacher_cfg):
    src, out = tmp_path / "in", tmp_path / "out"
    _images(src)
    (src / "broken.png").write_bytes(b"not a png")
    s = run_teacher(src, out, teacher_cfg, progress=False)
    assert (s.done, s.skipped, list(s.failed)) == (3, 0, ["broken.png"])
    img = cv2.imread(str(out / "f00.png"))
    assert img.shape == (60, 80, 3), "default target is 2x the input"
    again = run_teacher(src, out, teacher_cfg, progress=False)
    assert (again.done, again.skipped) == (0, 3), "finished outputs are skipped on a re-run"


def test_stages_can_be_switched_off_and_target_keeps_aspect(tmp_path, teacher_cfg):
    src, out = tmp_path / "in", tmp_path / "out"
    _images(src, n=1, size=(64, 48))
    code = main([str(src), str(out), "--no-sr", "--no-deblur", "--no-denoise", "--sharpen-amount", "0",
                 "--target", "1280x1024", "--no-progress"])
    assert code == 0
    assert cv2.imread(str(out / "f00.png")).shape == (960, 1280, 3)
    assert target_size(640, 480, (1280, 1024)) == (1280, 960)


def test_wrong_checkpoint_is_refused_before_any_work(tmp_path, teacher_cfg, capsys):
    src, out = tmp_path / "in", tmp_path / "out"
    _images(src, n=1)
    wrong = tmp_path / "wrong.pth"
    torch.save({"params": NAFNet(width=16, enc_blk_nums=[1], dec_blk_nums=[1]).state_dict()}, wrong)
    code = main([str(src), str(out), "--denoise-checkpoint", str(wrong), "--denoise-arch",
                 '{"width": 8, "middle_blk_num": 1, "enc_blk_nums": [1], "dec_blk_nums": [1]}',
                 "--sr-checkpoint", str(teacher_cfg.sr_checkpoint), "--sr-arch", '{"up_scale": 4, "width": 8, "num_blks": 2}',
                 "--no-deblur", "--no-progress"])
    assert code == 2
    assert "shape mismatches" in capsys.readouterr().err
    assert not list(out.glob("*.png"))


def test_temporal_merge_gathers_light_without_ghosting():
    rng = np.random.default_rng(1)
    scene = cv2.GaussianBlur(rng.integers(0, 256, (96, 128, 3), dtype=np.uint8), (0, 0), 2)
    frames = []
    for dx in (-2, -1, 0, 1, 2):
        m = np.float32([[1, 0, dx], [0, 1, 0]])
        shifted = cv2.warpAffine(scene, m, (128, 96), borderMode=cv2.BORDER_REFLECT)
        frames.append(np.clip(shifted + rng.normal(0, 8, shifted.shape), 0, 255).astype(np.uint8))
    ref = frames[2]
    merged = temporal_merge(ref, frames[:2] + frames[3:])
    inner = (slice(8, -8), slice(8, -8))
    err = lambda a: np.abs(a[inner].astype(float) - scene[inner]).mean()  # noqa: E731
    assert err(merged) < 0.75 * err(ref)
