import json

import cv2
import numpy as np

from trainers.prepare_dataset import main, prepare, validation_dir


def _make(raw_dir, teacher_dir, stems, scale=2):
    raw_dir.mkdir(exist_ok=True)
    teacher_dir.mkdir(exist_ok=True)
    for s in stems:
        cv2.imwrite(str(raw_dir / f"{s}.png"), np.zeros((8, 12, 3), np.uint8))
        cv2.imwrite(str(teacher_dir / f"{s}.png"), np.zeros((8 * scale, 12 * scale, 3), np.uint8))


def test_split_is_90_10_and_validation_is_moved(tmp_path):
    raw, teacher = tmp_path / "raw", tmp_path / "teacher"
    _make(raw, teacher, [f"f{i:03d}" for i in range(50)])
    r = prepare(raw, teacher)
    assert (len(r.train), len(r.val)) == (45, 5)
    assert sorted(p.stem for p in validation_dir(raw).iterdir()) == sorted(r.val)
    assert sorted(p.stem for p in validation_dir(teacher).iterdir()) == sorted(r.val)
    assert not set(p.stem for p in raw.iterdir()) & set(r.val), "validation frames are out of the training folder"


def test_rerun_keeps_the_split_and_assigns_new_pairs(tmp_path):
    raw, teacher = tmp_path / "raw", tmp_path / "teacher"
    _make(raw, teacher, [f"f{i:03d}" for i in range(30)])
    first = prepare(raw, teacher)
    _make(raw, teacher, [f"g{i:03d}" for i in range(10)])
    second = prepare(raw, teacher)
    assert set(first.val) <= set(second.val) and set(first.train) <= set(second.train)
    assert len(second.train) + len(second.val) == 40
    third = prepare(raw, teacher)
    assert (sorted(third.train), sorted(third.val)) == (sorted(second.train), sorted(second.val))


def test_unpaired_unreadable_and_wrong_size_are_listed(tmp_path, capsys):
    raw, teacher = tmp_path / "raw", tmp_path / "teacher"
    _make(raw, teacher, [f"f{i}" for i in range(10)])
    cv2.imwrite(str(raw / "lonely.png"), np.zeros((8, 12, 3), np.uint8))
    cv2.imwrite(str(teacher / "orphan.png"), np.zeros((16, 24, 3), np.uint8))
    (raw / "f1.png").write_bytes(b"garbage")
    cv2.imwrite(str(teacher / "f2.png"), np.zeros((10, 10, 3), np.uint8))
    assert main([str(raw), str(teacher), "--strict"]) == 1
    err = capsys.readouterr().err
    assert "1 raw frames without a teacher image: lonely" in err
    assert "1 teacher images without a raw frame: orphan" in err
    assert "rejected f1: raw frame f1.png is unreadable" in err
    assert "rejected f2: teacher is 10x10, expected 24x16" in err
    doc = json.loads((tmp_path / "dataset.json").read_text())
    assert len(doc["train"]) + len(doc["val"]) == 8
