"""`eyefuse bench teacher` on tiny teachers, a tiny distilled student and a tiny fake data folder:
every table is filled and the JSON twin holds the figures."""
import json

import cv2
import numpy as np
import pytest

import torch  # the training extra: `make test` installs it, and a missing torch must fail, not skip

from app.cli import main as eyefuse  # noqa: E402
from tests.media import TINY_TEACHERS as TINY  # noqa: E402
from trainers.models.nafnet import NAFNet  # noqa: E402
from trainers.models.nafssr import NAFSSR  # noqa: E402


def _img(rng, h, w):
    return cv2.GaussianBlur(rng.integers(0, 256, (h, w, 3), dtype=np.uint8), (0, 0), 2.0)


def test_bench_teacher_writes_every_table(tmp_path):
    from trainers.prepare_dataset import prepare
    from trainers.train_student import main as train_student

    rng = np.random.default_rng(0)
    data, weights = tmp_path / "data", tmp_path / "weights"
    (data / "Kodak24").mkdir(parents=True)
    for i in range(2):
        cv2.imwrite(str(data / "Kodak24" / f"kodim{i:02d}.png"), _img(rng, 64, 96))
    (data / "CC15_Nam").mkdir()
    clean = _img(rng, 48, 48)
    cv2.imwrite(str(data / "CC15_Nam" / "c_1_mean.png"), clean)
    cv2.imwrite(str(data / "CC15_Nam" / "c_1_real.png"), np.clip(clean + rng.normal(0, 12, clean.shape), 0, 255).astype(np.uint8))
    (weights / "teachers").mkdir(parents=True)
    for name, cls, task in (("nafssr_sr4", NAFSSR, "sr"), ("nafnet_deblur", NAFNet, "deblur"), ("nafnet_denoise", NAFNet, "denoise")):
        torch.save({"params": cls(**TINY[task]).state_dict()}, weights / "teachers" / f"{name}.pth")
    raw, teacher = tmp_path / "distill" / "raw", tmp_path / "distill" / "teacher"
    raw.mkdir(parents=True)
    teacher.mkdir()
    for i in range(5):
        hr = _img(rng, 64, 64)
        cv2.imwrite(str(teacher / f"f{i}.png"), hr)
        cv2.imwrite(str(raw / f"f{i}.png"), cv2.resize(hr, (32, 32), interpolation=cv2.INTER_AREA))
    prepare(raw, teacher, val_fraction=0.2)
    assert train_student(["--targets", "teacher", "--data", str(raw), "--teacher-dir", str(teacher), "--epochs", "1",
                          "--steps-per-epoch", "1", "--batch", "2", "--patch", "16", "--channels", "8", "--blocks", "1",
                          "--log-path", str(tmp_path / "d.csv"), "--weights-dir", str(weights),
                          "--name", "student_sr_distilled"]) == 0

    out = tmp_path / "results"
    assert eyefuse(["bench", "teacher", "--out-dir", str(out), "--data", str(data), "--weights", str(weights),
                    "--archs", json.dumps(TINY), "--levels", "mid", "--kodak-images", "2", "--frame-size", "64x48",
                    "--runs", "1", "--ablation-images", "1"]) == 0
    md = (out / "teacher.md").read_text()
    for text in ("SR 4x", "deblur", "denoise Kodak24 mid noise", "denoise CC15 real pairs", "whole chain",
                 "student_sr_distilled", "teacher chain", "bicubic", "sr -> deblur -> denoise", "Teacher stages"):
        assert text in md, text
    doc = json.loads((out / "teacher.json").read_text())
    assert set(doc["task_quality"]) == {"sr", "deblur", "denoise_mid", "denoise_cc15"}
    assert doc["distillation"]["vs_teacher"]["student_sr_distilled"]["pairs"] == 1
    assert np.isfinite(doc["distillation"]["vs_teacher"]["student_sr_distilled"]["psnr"])
    assert doc["speed_seconds"]["chain"] > 0 and doc["ms_per_frame"]["teacher chain"] > 0
    assert set(doc["stage_ablation"]) == {"sr,deblur,denoise", "sr,denoise", "deblur,denoise", "denoise", "bicubic"}
    assert all(np.isfinite(r["psnr"]) for r in doc["stage_ablation"].values())
    assert doc["chain_stages"] == "denoise"


def test_bench_teacher_refuses_an_unknown_stage(tmp_path):
    with pytest.raises(SystemExit, match="unknown teacher stage"):
        from app.bench.teacher import chain_config

        chain_config(tmp_path, {}, "denoise,sharpen")
