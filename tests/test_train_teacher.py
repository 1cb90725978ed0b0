"""The teacher trainer on tiny networks and a tiny fake data folder: log, resume, published-layout
weights the teacher pipeline loads, manifest entries, and what happens on bad input."""
import csv
import errno

import cv2
import numpy as np
import pytest

import torch  # the training extra: `make test` installs it, and a missing torch must fail, not skip

from engine.manifest import load_manifest  # noqa: E402
from trainers.checkpoints import load_checkpoint  # noqa: E402
from trainers.models.nafnet import NAFNet  # noqa: E402
from trainers.models.nafssr import NAFSSR  # noqa: E402
from trainers.teacher_tasks import TASKS  # noqa: E402
from trainers.train_teacher import TaskBatches, main  # noqa: E402

TINY = {"sr": {"up_scale": 4, "width": 8, "num_blks": 2},
        "deblur": {"width": 8, "middle_blk_num": 1, "enc_blk_nums": [1], "dec_blk_nums": [1]},
        "denoise": {"width": 8, "middle_blk_num": 1, "enc_blk_nums": [1], "dec_blk_nums": [1]}}


def _img(rng, h, w):
    return cv2.GaussianBlur(rng.integers(0, 256, (h, w, 3), dtype=np.uint8), (0, 0), 1.5)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("data")
    rng = np.random.default_rng(0)
    for split in ("train", "test", "val"):
        d = root / "BSDS500" / split
        d.mkdir(parents=True)
        for i in range(3):
            cv2.imwrite(str(d / f"{i}.jpg"), _img(rng, 72, 96))
    (root / "BSDS500" / "train" / "broken.jpg").write_bytes(b"not a jpeg")
    (root / "Kodak24").mkdir()
    for i in range(2):
        cv2.imwrite(str(root / "Kodak24" / f"kodim{i:02d}.png"), _img(rng, 64, 80))
    (root / "CC15_Nam").mkdir()
    clean = _img(rng, 48, 48)
    cv2.imwrite(str(root / "CC15_Nam" / "cam_1_mean.png"), clean)
    cv2.imwrite(str(root / "CC15_Nam" / "cam_1_real.png"),
                np.clip(clean + rng.normal(0, 10, clean.shape), 0, 255).astype(np.uint8))
    (root / "CC15_Nam" / "cam_2_real.png").write_bytes(b"")  # no clean half: skipped
    return root


def _args(data, tmp_path, task, epochs, *extra):
    import json

    return ["--task", task, "--data", str(data), "--arch", json.dumps(TINY[task]), "--epochs", str(epochs),
            "--steps-per-epoch", "2", "--batch", "2", "--patch", "32", "--val-images", "2", "--val-crop", "48",
            "--log-path", str(tmp_path / f"teacher_{task}.csv"), "--checkpoint", str(tmp_path / f"{task}.ckpt"),
            "--weights-dir", str(tmp_path / "w"), *extra]


def _rows(path):
    with open(path) as f:
        return list(csv.DictReader(f))


@pytest.fixture(scope="module")
def trained(data, tmp_path_factory):
    """Each task trained one epoch, then resumed to two: (folder, captured stdout/stderr per task)."""
    import contextlib
    import io

    root = tmp_path_factory.mktemp("trained")
    outputs = {}
    for task in TINY:
        out, err = io.StringIO(), io.StringIO()
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            assert main(_args(data, root, task, 1)) == 0
            assert main(_args(data, root, task, 2, "--resume")) == 0
        outputs[task] = (out.getvalue(), err.getvalue())
    return root, outputs


@pytest.mark.parametrize("task", ["sr", "deblur", "denoise"])
def test_trains_logs_resumes_and_writes_published_weights(trained, task):
    root, outputs = trained
    out, err = outputs[task]
    assert "resumed" in out and "skipping unreadable training image" in err
    rows = _rows(root / f"teacher_{task}.csv")
    assert [r["epoch"] for r in rows] == ["1", "2"]
    assert list(rows[0]) == ["epoch", "train_l1", "val_l1", "train_psnr", "val_psnr", "lr", "seconds"]
    assert all(np.isfinite(float(v)) for r in rows for v in r.values())

    spec = TASKS[task]
    path = root / "w" / "teachers" / spec.checkpoint
    raw = torch.load(path, weights_only=True)
    assert list(raw) == ["params"], "published BasicSR layout"
    net = load_checkpoint((NAFSSR if task == "sr" else NAFNet)(**TINY[task]), path)
    assert net is not None
    entry = load_manifest(root / "w")[spec.model_name]
    assert entry.kind == f"teacher_{task}" and entry.file == f"teachers/{spec.checkpoint}"
    assert entry.inputs[0].layout == "NCHW" and entry.inputs[0].dtype == "float32"
    assert entry.outputs[0].shape == ([1, 3, "4*H", "4*W"] if task == "sr" else [1, 3, "H", "W"])
    assert entry.training["steps"] == 4 and "--resume" in entry.training["command"]
    assert np.isfinite(entry.quality["kodak24_psnr"])
    if task == "denoise":
        assert np.isfinite(entry.quality["cc15_psnr"]) and "cc15_noisy_psnr" in entry.quality
        assert "skipping CC15 pair cam_2" in err


def test_trained_teachers_run_in_the_teacher_pipeline(trained, tmp_path):
    from trainers.teacher import TeacherConfig, run_teacher

    teachers = trained[0] / "w" / "teachers"
    cfg = TeacherConfig(sr_checkpoint=teachers / "nafssr_sr4.pth", deblur_checkpoint=teachers / "nafnet_deblur.pth",
                        denoise_checkpoint=teachers / "nafnet_denoise.pth", archs=TINY, workers=1)
    src = tmp_path / "frames"
    src.mkdir()
    cv2.imwrite(str(src / "f0.png"), _img(np.random.default_rng(1), 24, 32))
    s = run_teacher(src, tmp_path / "out", cfg, progress=False)
    assert s.done == 1 and cv2.imread(str(tmp_path / "out" / "f0.png")).shape == (48, 64, 3)


def test_resume_refuses_another_width_with_the_key_mismatch(data, tmp_path, capsys):
    assert main(_args(data, tmp_path, "deblur", 1, "--no-export")) == 0
    wider = _args(data, tmp_path, "deblur", 2, "--resume", "--no-export")
    wider[wider.index("--arch") + 1] = '{"width": 16, "middle_blk_num": 1, "enc_blk_nums": [1], "dec_blk_nums": [1]}'
    assert main(wider) == 2
    err = capsys.readouterr().err
    assert "shape mismatches (intro.weight: checkpoint (8, 3, 3, 3) vs model (16, 3, 3, 3)" in err
    deeper = _args(data, tmp_path, "deblur", 2, "--resume", "--no-export")
    deeper[deeper.index("--arch") + 1] = '{"width": 8, "middle_blk_num": 2, "enc_blk_nums": [1], "dec_blk_nums": [1]}'
    assert main(deeper) == 2
    assert "missing keys (middle_blks.1." in capsys.readouterr().err
    other_task = _args(data, tmp_path, "denoise", 2, "--resume", "--no-export", "--checkpoint", str(tmp_path / "deblur.ckpt"))
    assert main(other_task) == 2
    assert "is for the 'deblur' task" in capsys.readouterr().err


def test_an_interrupted_run_keeps_its_epochs_and_resumes(data, tmp_path, monkeypatch):
    calls = {"n": 0}
    real = TaskBatches.batch

    def dying(self, n):
        calls["n"] += 1
        if calls["n"] == 4:  # second step of epoch 2
            raise KeyboardInterrupt
        return real(self, n)

    monkeypatch.setattr(TaskBatches, "batch", dying)
    with pytest.raises(KeyboardInterrupt):
        main(_args(data, tmp_path, "denoise", 3, "--no-export"))
    monkeypatch.setattr(TaskBatches, "batch", real)
    assert torch.load(tmp_path / "denoise.ckpt", weights_only=False)["epoch"] == 1
    assert [r["epoch"] for r in _rows(tmp_path / "teacher_denoise.csv")] == ["1"]
    assert main(_args(data, tmp_path, "denoise", 3, "--resume", "--no-export")) == 0
    assert [r["epoch"] for r in _rows(tmp_path / "teacher_denoise.csv")] == ["1", "2", "3"]


def test_disk_full_leaves_the_last_checkpoint_and_the_run_resumes(data, tmp_path, monkeypatch, capsys):
    real_save = torch.save
    calls = {"n": 0}

    def full_disk(obj, f, *a, **kw):
        calls["n"] += 1
        if calls["n"] == 2:  # the checkpoint after epoch 2
            with open(f, "wb") as fh:
                fh.write(b"half a checkpoint")
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_save(obj, f, *a, **kw)

    monkeypatch.setattr(torch, "save", full_disk)
    assert main(_args(data, tmp_path, "sr", 3, "--no-export")) == 1
    assert "No space left on device" in capsys.readouterr().err
    monkeypatch.setattr(torch, "save", real_save)
    assert torch.load(tmp_path / "sr.ckpt", weights_only=False)["epoch"] == 1
    assert not list(tmp_path.glob(".*.tmp")), "no half-written temp file is left behind"
    assert main(_args(data, tmp_path, "sr", 3, "--resume", "--no-export")) == 0
    assert [r["epoch"] for r in _rows(tmp_path / "teacher_sr.csv")] == ["1", "2", "3"]


def test_bad_arguments_are_named(data, tmp_path, capsys):
    assert main(_args(data, tmp_path, "sr", 1, "--patch", "30")) == 2
    assert "--patch 30 must be a multiple of 8" in capsys.readouterr().err
    bad = _args(data, tmp_path, "sr", 1)
    bad[bad.index("--arch") + 1] = '{"widht": 8}'
    assert main(bad) == 2
    assert "does not build a NAFSSR" in capsys.readouterr().err
    assert main(["--task", "denoise", "--data", str(tmp_path / "nowhere"), "--log-path", str(tmp_path / "l.csv"),
                 "--checkpoint", str(tmp_path / "c.ckpt")]) == 2
    assert "BSDS500" in capsys.readouterr().err
