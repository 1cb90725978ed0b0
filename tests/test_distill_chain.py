"""The distillation chain end to end, at a small size, on the real webcam clip:
eyefuse capture -> trainers.teacher -> trainers.prepare_dataset -> trainers.train_student --targets
teacher -> trainers.plot_metrics -> the app runs the new weights (make_processor, eyefuse enhance).
The teachers are tiny random-initialised networks saved in the published {'params': ...} layout."""
import json

import cv2
import numpy as np

import torch  # the training extra: `make test` installs it, and a missing torch must fail, not skip

from app.cli import main as eyefuse  # noqa: E402
from engine.manifest import load_manifest  # noqa: E402
from engine.registry import make_processor  # noqa: E402
from trainers import plot_metrics, prepare_dataset, teacher, train_student  # noqa: E402
from trainers.models.nafnet import NAFNet  # noqa: E402
from trainers.models.nafssr import NAFSSR  # noqa: E402
from trainers.prepare_dataset import validation_dir  # noqa: E402
from tests.media import TINY_TEACHERS  # noqa: E402




def tiny_teachers(folder):
    """Random-initialised teachers in the published layout; returns the teacher CLI's arguments."""
    folder.mkdir(parents=True, exist_ok=True)
    args = []
    torch.manual_seed(0)
    for stage, cls in (("sr", NAFSSR), ("deblur", NAFNet), ("denoise", NAFNet)):
        path = folder / f"{stage}.pth"
        torch.save({"params": cls(**TINY_TEACHERS[stage]).state_dict()}, path)
        args += [f"--{stage}-checkpoint", str(path), f"--{stage}-arch", json.dumps(TINY_TEACHERS[stage])]
    return args


def test_capture_teacher_prepare_train_plot_and_the_app_runs_it(shared_data, tmp_path, capsys):
    raw, out, weights = tmp_path / "raw", tmp_path / "teacher", tmp_path / "weights"
    log = tmp_path / "logs" / "student_sr_distilled" / "log.csv"
    video = shared_data / "videos_real" / "test.webm"

    assert eyefuse(["capture", "--source", str(video), "--frames", "5", "--out", str(raw), "--fast"]) == 0
    frames = sorted(raw.glob("*.png"))
    assert len(frames) == 5 and cv2.imread(str(frames[0])).shape == (480, 640, 3)
    for f in frames:  # a 320x240 camera keeps the test fast (the full-size run is in the README)
        cv2.imwrite(str(f), cv2.resize(cv2.imread(str(f)), (320, 240), interpolation=cv2.INTER_AREA))
    (raw / "frame_broken.png").write_bytes(b"\x89PNG truncated")  # a damaged capture

    code = teacher.main([str(raw), str(out), *tiny_teachers(tmp_path / "teachers"), "--tile", "128",
                         "--overlap", "8", "--workers", "2", "--no-progress"])
    err = capsys.readouterr().err
    assert code == 1 and "failed frame_broken.png: cannot read" in err, "the damaged frame is named and skipped"
    assert len(list(out.glob("*.png"))) == 5
    assert cv2.imread(str(next(out.glob("*.png")))).shape == (480, 640, 3)

    assert prepare_dataset.main([str(raw), str(out), "--val-fraction", "0.2"]) == 0
    cap = capsys.readouterr()
    assert "4 training pairs, 1 validation pairs" in cap.out
    assert "1 raw frames without a teacher image: frame_broken" in cap.err, "unpaired files are listed"

    assert train_student.main(["--targets", "teacher", "--data", str(raw), "--teacher-dir", str(out),
                               "--name", "student_sr_distilled", "--epochs", "2", "--steps-per-epoch", "2",
                               "--batch", "2", "--patch", "32", "--channels", "8", "--blocks", "1",
                               "--log-path", str(log), "--checkpoint", str(tmp_path / "s.ckpt"),
                               "--weights-dir", str(weights)]) == 0
    assert "skipping unreadable pair" not in capsys.readouterr().err
    assert plot_metrics.main(["--log-path", str(log)]) == 0
    assert (log.parent / "loss_plot.png").stat().st_size > 5000
    assert (log.parent / "psnr_plot.png").stat().st_size > 5000

    entry = load_manifest(weights)["student_sr_distilled"]
    assert entry.kind == "sr" and entry.training["targets"] == "teacher"
    val_frame = next(validation_dir(raw).glob("*.png"))
    bgr = cv2.imread(str(val_frame))
    from app.bench.engine import frame_of

    with make_processor("student_sr_distilled", weights) as proc:
        assert proc.process([frame_of(bgr)]).output.shape == (480, 640, 3)
    enhanced = tmp_path / "enhanced.png"
    assert eyefuse(["enhance", str(val_frame), "-o", str(enhanced), "--model", "student_sr_distilled",
                    "--weights", str(weights), "--no-progress"]) == 0
    assert cv2.imread(str(enhanced)).shape == (480, 640, 3)


def test_teacher_refuses_a_checkpoint_of_another_width_before_any_work(tmp_path, capsys):
    raw = tmp_path / "raw"
    raw.mkdir()
    cv2.imwrite(str(raw / "f0.png"), np.zeros((24, 32, 3), np.uint8))
    args = tiny_teachers(tmp_path / "teachers")
    wider = dict(TINY_TEACHERS["denoise"], width=16)
    args[args.index("--denoise-arch") + 1] = json.dumps(wider)
    assert teacher.main([str(raw), str(tmp_path / "out"), *args, "--no-progress"]) == 2
    assert "intro.weight: checkpoint (8, 3, 3, 3) vs model (16, 3, 3, 3)" in capsys.readouterr().err
    assert not list((tmp_path / "out").glob("*.png"))


def test_teacher_on_a_full_disk_keeps_what_it_wrote_and_resumes(tmp_path, monkeypatch, capsys):
    import errno

    from trainers import teacher as teacher_mod

    raw, out = tmp_path / "raw", tmp_path / "out"
    raw.mkdir()
    rng = np.random.default_rng(0)
    for i in range(4):
        cv2.imwrite(str(raw / f"f{i}.png"), rng.integers(0, 256, (24, 32, 3), dtype=np.uint8))
    args = [str(raw), str(out), *tiny_teachers(tmp_path / "teachers"), "--workers", "1", "--no-progress"]
    real_write = teacher_mod.atomic_write_bytes
    written = []

    def filling_disk(path, data):
        if len(written) == 2:
            raise OSError(errno.ENOSPC, "No space left on device", str(path))
        real_write(path, data)
        written.append(path)

    monkeypatch.setattr(teacher_mod, "atomic_write_bytes", filling_disk)
    assert teacher.main(args) == 1
    assert "No space left on device" in capsys.readouterr().err
    assert sorted(p.name for p in out.iterdir()) == sorted(p.name for p in written), "no partial file is left"
    assert all(cv2.imread(str(p)).shape == (48, 64, 3) for p in written)
    monkeypatch.setattr(teacher_mod, "atomic_write_bytes", real_write)
    assert teacher.main(args) == 0
    assert "done 2, skipped 2 (already finished)" in capsys.readouterr().out
    assert len(list(out.glob("*.png"))) == 4
