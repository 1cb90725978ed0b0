"""StudentSR and the baselines: MAC counts, ONNX export equivalence through the real engine, and
the trainer (log columns, resume, teacher targets, export into a manifest the engine loads)."""
import csv
import time

import cv2
import numpy as np
import pytest

import torch  # the training extra: `make test` installs it, and a missing torch must fail, not skip

from capture.frame import Frame, PixelFormat  # noqa: E402
from engine.manifest import WeightsError, load_manifest  # noqa: E402
from engine.registry import make_processor  # noqa: E402
from trainers.export import base_filter_of, export_onnx, register  # noqa: E402
from trainers.models.macs import macs_per_input_pixel  # noqa: E402
from trainers.models.registry import build  # noqa: E402
from trainers.models.student import StudentConfig, StudentSR  # noqa: E402
from tests.media import fake_bsds


def test_mac_count_matches_the_formula():
    c, b = 16, 2
    for h in (1, 3):
        net = StudentSR(StudentConfig(channels=c, blocks=b, tail_kernel=1, head_kernel=h))
        expected = h * h * 48 * c / 16 + b * 2 * 9 * c * c / 16 + c * 192 / 16
        assert macs_per_input_pixel(net) == pytest.approx(expected)
    assert macs_per_input_pixel(build("espcn")) == pytest.approx(25 * 3 * 64 + 9 * 64 * 32 + 9 * 32 * 12)


def test_reparameterised_student_fuses_into_the_plain_network_it_computes():
    torch.manual_seed(0)
    net = StudentSR(StudentConfig(channels=8, blocks=2, head_kernel=1, reparam=True))
    with torch.no_grad():  # every branch far from its initial value, the biases too
        for p in net.parameters():
            p.normal_(std=0.1)
    fused = net.fused()
    assert not fused.cfg.reparam and fused.fused() is fused
    assert all(isinstance(m, torch.nn.Conv2d) and m.kernel_size == (3, 3) for b in fused.body for m in (b.conv1, b.conv2))
    x = torch.rand(2, 3, 24, 40)  # the borders count: the expansion is padded with its bias
    with torch.no_grad():
        assert torch.allclose(net(x), fused(x), atol=1e-5)
    assert macs_per_input_pixel(fused) == macs_per_input_pixel(StudentSR(StudentConfig(channels=8, blocks=2, head_kernel=1)))
    assert macs_per_input_pixel(net) > macs_per_input_pixel(fused), "the branches cost only while training"


def _random_student(seed=0, **kw):
    torch.manual_seed(seed)
    net = StudentSR(StudentConfig(**kw))
    with torch.no_grad():  # a tail far from zero, so the export is checked on a real correction
        net.tail.weight.normal_(std=0.05)
        net.tail.bias.normal_(std=0.02)
    return net.eval()


def _torch_output(net, bgr):
    x = torch.from_numpy(bgr).permute(2, 0, 1)[None].float() / 255
    with torch.no_grad():
        y = net(x)[0].permute(1, 2, 0).numpy()
    return np.clip(np.round(y * 255), 0, 255)


def _frame(bgr):
    return Frame(np.ascontiguousarray(bgr), 0, time.monotonic_ns(), "test", PixelFormat.BGR8)


@pytest.mark.parametrize("kw", [dict(channels=16, blocks=2, head_kernel=1), dict(channels=16, blocks=2),
                                dict(channels=8, blocks=1, tail_kernel=3),
                                dict(channels=16, blocks=2, head_kernel=1, base_blur_sigma=0.8),
                                dict(channels=8, blocks=2, head_kernel=1, reparam=True)])
def test_exported_student_through_the_engine_matches_torch(tmp_path, kw):
    net = _random_student(**kw)
    path = export_onnx(net, tmp_path / "s.onnx")
    register("s", path, 2, "test", macs_per_input_pixel(net), {"command": "test"}, weights_dir=tmp_path,
             residual_over="bilinear", base_filter=base_filter_of(net))
    rng = np.random.default_rng(0)
    bgr = cv2.GaussianBlur(rng.integers(0, 256, (48, 64, 3), dtype=np.uint8), (0, 0), 1.5)
    out = make_processor("s", tmp_path).process([_frame(bgr)]).output
    ref = _torch_output(net, bgr)
    diff = np.abs(out.astype(float) - ref)
    assert out.shape == (96, 128, 3)
    # bilinear and the correction are each rounded to 8 bits in the engine, once in torch
    assert diff.max() <= 2 and diff.mean() < 0.6, (diff.max(), diff.mean())


def test_the_base_filter_travels_in_the_manifest_and_the_engine_applies_it(tmp_path):
    net = _random_student(channels=8, blocks=1, head_kernel=1, base_blur_sigma=0.8)
    kernel = base_filter_of(net)
    assert kernel.shape == (5, 5) and abs(kernel.sum() - 1) < 1e-6
    register("s", export_onnx(net, tmp_path / "s.onnx"), 2, "test", None, {}, weights_dir=tmp_path,
             residual_over="bilinear", base_filter=kernel)
    np.testing.assert_allclose(load_manifest(tmp_path)["s"].base_filter, kernel, atol=1e-7)
    # the same graph without the filter in its manifest makes a different picture: the filter is used
    register("plain", export_onnx(net, tmp_path / "p.onnx"), 2, "test", None, {}, weights_dir=tmp_path,
             residual_over="bilinear")
    bgr = np.random.default_rng(3).integers(0, 256, (32, 48, 3), dtype=np.uint8)
    with_filter = make_processor("s", tmp_path).process([_frame(bgr)]).output
    without = make_processor("plain", tmp_path).process([_frame(bgr)]).output
    assert np.abs(with_filter.astype(int) - without).mean() > 5
    assert base_filter_of(_random_student(channels=8, blocks=1)) is None  # plain bilinear: no key at all
    assert "base_filter" not in load_manifest(tmp_path)["plain"].to_dict()


@pytest.mark.parametrize("bad", [[[1.0, 0.0], [0.0, 0.0]], [[float("nan")]], [1.0, 2.0, 3.0], "blur"])
def test_a_malformed_base_filter_is_refused_at_load(tmp_path, bad):
    net = _random_student(channels=8, blocks=1)
    register("s", export_onnx(net, tmp_path / "s.onnx"), 2, "test", None, {}, weights_dir=tmp_path,
             residual_over="bilinear")
    import json
    doc = json.loads((tmp_path / "manifest.json").read_text())
    doc["models"]["s"]["base_filter"] = bad
    (tmp_path / "manifest.json").write_text(json.dumps(doc))
    with pytest.raises(WeightsError, match="base_filter must be an odd square kernel"):
        make_processor("s", tmp_path)


def test_odd_sized_frames_are_padded_and_cropped(tmp_path):
    net = _random_student(channels=8, blocks=1)
    register("s", export_onnx(net, tmp_path / "s.onnx"), 2, "test", None, {}, weights_dir=tmp_path,
             residual_over="bilinear")
    bgr = np.random.default_rng(1).integers(0, 256, (37, 51, 3), dtype=np.uint8)
    assert make_processor("s", tmp_path).process([_frame(bgr)]).output.shape == (74, 102, 3)


def test_exported_baseline_matches_torch(tmp_path):
    torch.manual_seed(0)
    net = build("espcn").eval()
    register("espcn", export_onnx(net, tmp_path / "e.onnx"), 2, "test", None, {}, weights_dir=tmp_path)
    bgr = np.random.default_rng(2).integers(0, 256, (32, 40, 3), dtype=np.uint8)
    out = make_processor("espcn", tmp_path).process([_frame(bgr)]).output
    assert np.abs(out.astype(float) - _torch_output(net, bgr)).max() <= 1





def _rows(path):
    with open(path) as f:
        return list(csv.DictReader(f))


def test_training_logs_resumes_and_exports_a_model_the_engine_runs(tmp_path, capsys):
    from trainers.train_student import main

    data = fake_bsds(tmp_path / "data")
    log, weights = tmp_path / "logs" / "s.csv", tmp_path / "w"
    args = ["--data", str(data), "--steps-per-epoch", "3", "--batch", "4", "--patch", "16", "--val-images", "3",
            "--channels", "8", "--blocks", "1", "--base-blur", "0.8", "--log-path", str(log), "--weights-dir", str(weights)]
    assert main(args + ["--epochs", "2"]) == 0
    rows = _rows(log)
    assert [r["epoch"] for r in rows] == ["1", "2"]
    assert set(rows[0]) == {"epoch", "train_l1", "val_l1", "train_psnr", "val_psnr", "lr", "seconds"}
    assert all(np.isfinite(float(r[k])) for r in rows for k in rows[0])
    assert main(args + ["--epochs", "3", "--resume"]) == 0
    assert "resumed" in capsys.readouterr().out
    assert [r["epoch"] for r in _rows(log)] == ["1", "2", "3"], "resume appends, never repeats an epoch"
    manifest = load_manifest(weights)
    assert {"student_sr", "student_sr_int8"} <= set(manifest)
    entry = manifest["student_sr"]
    assert entry.residual_over == "bilinear" and "--resume" in entry.training["command"]
    assert np.shape(entry.base_filter) == (5, 5) and manifest["student_sr_int8"].base_filter == entry.base_filter
    assert entry.quality["val_psnr"] == pytest.approx(max(float(r["val_psnr"]) for r in _rows(log)))
    frame = _frame(np.full((32, 48, 3), 128, np.uint8))
    for name in ("student_sr", "student_sr_int8"):
        assert make_processor(name, weights).process([frame]).output.shape == (64, 96, 3)


def test_a_reparameterised_student_trains_and_exports_fused(tmp_path):
    from trainers.train_student import main

    data = fake_bsds(tmp_path / "data")
    weights = tmp_path / "w"
    assert main(["--data", str(data), "--steps-per-epoch", "2", "--batch", "2", "--patch", "16", "--val-images", "2",
                 "--channels", "8", "--blocks", "1", "--reparam", "--epochs", "1", "--name", "rep",
                 "--log-path", str(tmp_path / "rep.csv"), "--weights-dir", str(weights)]) == 0
    entry = load_manifest(weights)["rep"]
    plain = 48 * 8 / 16 + 2 * 9 * 8 * 8 / 16 + 8 * 192 / 16  # the fused network's MACs
    assert entry.macs_per_input_pixel == pytest.approx(plain) and "re-parameterised" in entry.description
    assert make_processor("rep", weights).process([_frame(np.full((32, 48, 3), 90, np.uint8))]).output.shape == (64, 96, 3)


def test_a_student_distils_from_a_trained_network_and_refuses_a_file_that_is_not_one(tmp_path, capsys):
    from trainers.train_student import main

    data = fake_bsds(tmp_path / "data")
    common = ["--data", str(data), "--steps-per-epoch", "2", "--batch", "2", "--patch", "16", "--val-images", "2",
              "--epochs", "1", "--weights-dir", str(tmp_path / "w")]
    big = tmp_path / "big.ckpt"
    assert main(common + ["--unshuffle", "2", "--channels", "8", "--blocks", "1", "--name", "big", "--no-export",
                          "--log-path", str(tmp_path / "big.csv"), "--checkpoint", str(big)]) == 0
    assert main(common + ["--channels", "8", "--blocks", "1", "--name", "small", "--distill-from", str(big),
                          "--distill-weight", "0.75", "--log-path", str(tmp_path / "small.csv")]) == 0
    entry = load_manifest(tmp_path / "w")["small"]
    assert entry.training["loss"] == "L1, 0.25 x to the clean target + 0.75 x to the output of big.ckpt"
    assert np.isfinite(float(_rows(tmp_path / "small.csv")[0]["train_l1"]))
    junk = tmp_path / "junk.ckpt"
    junk.write_bytes(b"not a checkpoint")
    assert main(common + ["--name", "x", "--distill-from", str(junk), "--log-path", str(tmp_path / "x.csv")]) == 2
    assert "junk.ckpt: not a train_student checkpoint" in capsys.readouterr().err
    assert main(common + ["--patch", "18", "--name", "z", "--log-path", str(tmp_path / "z.csv")]) == 2  # the last --patch wins
    assert "--patch 18 is not a multiple of 4" in capsys.readouterr().err
    with pytest.raises(SystemExit, match="distill-weight"):
        main(common + ["--distill-from", str(big), "--distill-weight", "0", "--log-path", str(tmp_path / "y.csv")])


def test_resume_refuses_a_checkpoint_for_another_architecture(tmp_path):
    from trainers.train_student import main

    data = fake_bsds(tmp_path / "data")
    log = tmp_path / "s.csv"
    base = ["--data", str(data), "--steps-per-epoch", "2", "--batch", "2", "--patch", "16", "--val-images", "2",
            "--log-path", str(log), "--no-export", "--epochs", "1"]
    assert main(base + ["--channels", "8", "--blocks", "1"]) == 0
    with pytest.raises(SystemExit, match="checkpoint .* is for student_sr"):
        main(base + ["--channels", "12", "--blocks", "1", "--resume"])


def test_baselines_train_at_reduced_widths_and_refuse_bad_ones(tmp_path):
    from trainers.train_student import main

    data = fake_bsds(tmp_path / "data")
    weights = tmp_path / "w"
    base = ["--data", str(data), "--steps-per-epoch", "2", "--batch", "2", "--patch", "16", "--val-images", "2",
            "--epochs", "1", "--lr", "1e-3", "--weights-dir", str(weights)]
    assert main(base + ["--arch", "espcn", "--widths", "8,4", "--name", "espcn_tiny",
                        "--log-path", str(tmp_path / "e.csv")]) == 0
    entry = load_manifest(weights)["espcn_tiny"]
    assert entry.macs_per_input_pixel == pytest.approx(25 * 3 * 8 + 9 * 8 * 4 + 9 * 4 * 12)
    assert "c1=8, c2=4" in entry.description
    assert make_processor("espcn_tiny", weights).process([_frame(np.zeros((16, 24, 3), np.uint8))]).output.shape \
        == (32, 48, 3)
    with pytest.raises(SystemExit, match="--widths for fsrcnn is d,s,m"):
        main(base + ["--arch", "fsrcnn", "--widths", "8,4", "--log-path", str(tmp_path / "f.csv")])


def test_training_on_teacher_pairs(tmp_path):
    from trainers.prepare_dataset import prepare
    from trainers.train_student import main

    raw, teacher = tmp_path / "raw", tmp_path / "teacher"
    raw.mkdir()
    teacher.mkdir()
    rng = np.random.default_rng(3)
    for i in range(10):
        hr = cv2.GaussianBlur(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8), (0, 0), 2.0)
        cv2.imwrite(str(teacher / f"f{i}.png"), hr)
        cv2.imwrite(str(raw / f"f{i}.png"), cv2.resize(hr, (32, 32), interpolation=cv2.INTER_AREA))
    prepare(raw, teacher)
    log = tmp_path / "t.csv"
    assert main(["--targets", "teacher", "--data", str(raw), "--teacher-dir", str(teacher), "--epochs", "1",
                 "--steps-per-epoch", "2", "--batch", "2", "--patch", "16", "--channels", "8", "--blocks", "1",
                 "--log-path", str(log), "--weights-dir", str(tmp_path / "w"), "--name", "distilled"]) == 0
    assert len(_rows(log)) == 1
    assert load_manifest(tmp_path / "w")["distilled"].training["targets"] == "teacher"


def test_missing_training_data_is_a_clear_error(tmp_path, capsys):
    from trainers.train_student import main

    assert main(["--data", str(tmp_path), "--epochs", "1", "--log-path", str(tmp_path / "l.csv")]) == 2
    assert "BSDS500" in capsys.readouterr().err


def test_a_residual_model_without_the_base_input_is_refused_at_load(tmp_path):
    """A graph exported before the "base" input (one input, a bare correction) must not be run as if
    it added the bilinear base itself: loading it says what is wrong and what to do."""
    from engine.manifest import WeightsError

    torch.manual_seed(0)
    net = build("espcn").eval()  # one input: stands for a graph from the older exporter
    register("old", export_onnx(net, tmp_path / "old.onnx"), 2, "test", None, {}, weights_dir=tmp_path,
             residual_over="bilinear")
    with pytest.raises(WeightsError, match="base.*[Rr]e-export"):
        make_processor("old", tmp_path)


@pytest.mark.parametrize("kernel, opencv", [
    ("gaussian", "GaussianBlur"),
    (np.outer([1.0, 2.0, 1.0], [1.0, 0.0, -1.0]), "sepFilter2D"),  # separable, not a Gaussian
    (np.array([[0.0, -1.0, 0.0], [-1.0, 5.0, -1.0], [0.0, -1.0, 0.0]]), "filter2D"),  # not separable
])
def test_the_base_prefilter_takes_opencvs_fastest_pass_with_the_same_result(kernel, opencv):
    from engine.student import bilinear_base, prefilter_for
    from trainers.models.gaussian import gaussian_kernel

    kernel = gaussian_kernel(0.8) if isinstance(kernel, str) else kernel
    fast = prefilter_for(kernel)
    assert fast.func.__name__ == opencv
    bgr = np.random.default_rng(4).integers(0, 256, (40, 56, 3), dtype=np.uint8)
    exact = cv2.filter2D(bgr.astype(np.float32), -1, kernel.astype(np.float32), borderType=cv2.BORDER_REFLECT_101)
    exact = np.clip(np.round(exact), 0, 255)
    assert np.abs(fast(bgr).astype(float) - exact).max() <= 1  # fixed point or 8-bit rounding, nothing more
    assert bilinear_base(bgr, 2, fast).shape == (1, 80, 112, 3)
