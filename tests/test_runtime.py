"""Runtime (sessions, manifest checks) and the processors that run on it."""
from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest

from capture.convert import bgr_to_yuyv, to_bgr8
from capture.frame import Frame, PixelFormat, RawMeta
from engine.manifest import WeightsError, load_manifest
from engine.processor import (BicubicProcessor, FrameFormatError, ModelError, Passthrough, ProcessingError,
                              StepsNotSupported)
from engine.registry import make_processor, processor_names
from engine.runtime import SessionConfig, available_models, cpu_cores, create_session, load_model
from engine.student import StudentSRProcessor, pad_to_multiple
from tests import onnx_models
from tests.onnx_models import make_weights_dir, nearest_2x, write_model

CFG = SessionConfig(intra_op_threads=1, log_severity=4)  # one thread: the machine is shared


@pytest.fixture(scope="module")
def weights(tmp_path_factory) -> Path:
    return make_weights_dir(tmp_path_factory.mktemp("weights"))


@pytest.fixture
def own_weights(tmp_path) -> Path:
    """A private copy, for tests that damage files."""
    return make_weights_dir(tmp_path / "weights", ["nearest"])


def bgr_frame(h=6, w=8, seq=1, seed=0) -> Frame:
    pixels = np.random.default_rng(seed).integers(1, 256, (h, w, 3), dtype=np.uint8)
    return Frame(pixels, seq, time.monotonic_ns(), "test", PixelFormat.BGR8)


# -- sessions and the manifest -------------------------------------------------------------------
def test_session_config_defaults_and_options():
    cfg = SessionConfig()
    assert cfg.intra_op_threads == cpu_cores() and cfg.inter_op_threads == 1
    assert cfg.graph_optimization == ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    so = SessionConfig(intra_op_threads=1, allow_spinning=False).session_options()
    assert so.intra_op_num_threads == 1 and so.inter_op_num_threads == 1
    assert so.execution_mode == ort.ExecutionMode.ORT_SEQUENTIAL and so.enable_mem_pattern
    assert so.get_session_config_entry("session.intra_op.allow_spinning") == "0"


def test_load_model_runs_and_matches_reference(weights):
    model = load_model("nearest", weights, CFG)
    assert model.input_name == "input" and model.output_name == "output" and model.entry.scale == 2
    x = bgr_frame(5, 7).pixels
    np.testing.assert_array_equal(model.run(x[None])[0], nearest_2x(x))


def test_missing_file_refused(own_weights):
    (own_weights / "nearest.onnx").unlink()
    with pytest.raises(WeightsError, match=r"not found at .*nearest\.onnx.*(Restore|retrain)"):
        load_model("nearest", own_weights, CFG)


def test_truncated_file_refused(own_weights):
    path = own_weights / "nearest.onnx"
    path.write_bytes(path.read_bytes()[:-10])
    with pytest.raises(WeightsError, match=r"nearest\.onnx is \d+ bytes but the manifest says \d+: it is truncated"):
        load_model("nearest", own_weights, CFG)


def test_wrong_sha_refused(own_weights):
    path = own_weights / "nearest.onnx"
    data = bytearray(path.read_bytes())
    data[-1] ^= 0xFF  # same size, different content
    path.write_bytes(bytes(data))
    with pytest.raises(WeightsError, match=r"nearest\.onnx does not match its manifest sha256.*re-export"):
        load_model("nearest", own_weights, CFG)


def test_non_onnx_file_refused(tmp_path):
    bogus = tmp_path / "bogus.onnx"
    bogus.write_bytes(b"this is not a protobuf" * 10)
    from engine.manifest import TensorSpec, entry_for_file, upsert_entry
    upsert_entry(entry_for_file("bogus", bogus, tmp_path, kind="sr", scale=2,
                                inputs=[TensorSpec("input", "uint8", [1, "H", "W", 3])],
                                outputs=[TensorSpec("output", "uint8", [1, "2*H", "2*W", 3])]), tmp_path)
    with pytest.raises(WeightsError, match=r"bogus\.onnx is not a loadable ONNX model .*re-export"):
        load_model("bogus", tmp_path, CFG)
    with pytest.raises(WeightsError, match="not a loadable ONNX model"):
        create_session(bogus, CFG)


def test_wrong_io_names_refused(tmp_path):
    # the graph says x -> y, the manifest says input -> output
    write_model(tmp_path, "renamed", onnx_models.resize_nearest("x", "y"))
    with pytest.raises(WeightsError) as info:
        load_model("renamed", tmp_path, CFG)
    msg = str(info.value)
    assert "renamed.onnx" in msg and "input 0 is named 'x' in the graph but 'input' in the manifest" in msg
    assert "output 0 is named 'y' in the graph but 'output'" in msg and "Re-export" in msg


def test_wrong_dtype_and_rank_refused(tmp_path):
    write_model(tmp_path, "floaty", onnx_models.nan_where_zero(), out_dtype="uint8")  # graph outputs float32
    with pytest.raises(WeightsError, match=r"output 0 'output' is float32 in the graph but uint8 in the manifest"):
        load_model("floaty", tmp_path, CFG)
    write_model(tmp_path, "nearest", onnx_models.resize_nearest())
    doc = json.loads((tmp_path / "manifest.json").read_text())
    doc["models"]["nearest"]["inputs"][0]["shape"] = ["H", "W", 3]
    (tmp_path / "manifest.json").write_text(json.dumps(doc))
    with pytest.raises(WeightsError, match=r"input 0 'input' has rank 4 .* but rank 3"):
        load_model("nearest", tmp_path, CFG)


def test_unknown_model_lists_the_known_ones(weights):
    with pytest.raises(WeightsError, match=r"no model named 'student_sr' in .*manifest\.json \(models there: linear, nan"):
        load_model("student_sr", weights, CFG)
    with pytest.raises(WeightsError, match=r"no processor or model named 'nope' \(choose from: bicubic, passthrough, burst_fusion, linear"):
        make_processor("nope", weights, CFG)


def test_available_models_only_lists_present_files(tmp_path):
    make_weights_dir(tmp_path, ["nearest", "linear"])
    assert [e.name for e in available_models("sr", tmp_path)] == ["linear", "nearest"]
    (tmp_path / "linear.onnx").unlink()
    assert [e.name for e in available_models(weights_dir=tmp_path)] == ["nearest"]
    assert available_models("burst_refine", tmp_path) == []
    assert processor_names(tmp_path) == ["bicubic", "passthrough", "burst_fusion", "nearest"]
    assert available_models(weights_dir=tmp_path / "nowhere") == []


def test_optimized_model_cache_is_written_once_and_reused(weights, tmp_path):
    cfg = SessionConfig(intra_op_threads=1, optimized_cache_dir=tmp_path / "cache")
    x = bgr_frame(6, 10).pixels[None]
    first = load_model("linear", weights, cfg).run(x)
    cached = list((tmp_path / "cache").iterdir())
    assert len(cached) == 1 and cached[0].name.startswith("linear-") and cached[0].stat().st_size > 0
    second = load_model("linear", weights, cfg).run(x)
    np.testing.assert_array_equal(first, second)
    assert list((tmp_path / "cache").iterdir()) == cached


def test_engine_never_imports_torch():
    code = ("import sys, engine.runtime, engine.processor, engine.student, engine.worker, app.enhance_cmd; "
            "print('torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         cwd=Path(__file__).resolve().parent.parent)
    assert out.stdout.strip() == "False"


# -- processors ----------------------------------------------------------------------------------
def test_bicubic_and_passthrough():
    f = bgr_frame(6, 8)
    r = BicubicProcessor().process([f])
    assert r.output.shape == (12, 16, 3) and r.output.dtype == np.uint8
    assert list(r.stages) == ["convert", "resize"] and r.processor == "bicubic" and r.seq == f.seq
    assert r.t_capture_ns <= r.t_start_ns <= r.t_done_ns and r.error is None and r.steps is None
    p = Passthrough().process([f])
    np.testing.assert_array_equal(p.output, f.pixels)
    with pytest.raises(StepsNotSupported, match="'bicubic' has no step count"):
        BicubicProcessor().steps = 2
    with pytest.raises(FrameFormatError, match="at least one frame"):
        BicubicProcessor().process([])


def test_student_runs_sr_model_with_stage_timings(weights):
    proc = StudentSRProcessor.from_name("nearest", weights, CFG)
    f = bgr_frame(8, 16)
    r = proc.process([f])
    assert list(r.stages) == ["convert", "infer", "post"] and all(ms >= 0 for ms in r.stages.values())
    np.testing.assert_array_equal(r.output, nearest_2x(f.pixels))
    assert r.processor == "nearest" and proc.steps is None
    with pytest.raises(StepsNotSupported):
        proc.steps = 4
    proc.close()
    with pytest.raises(ProcessingError, match="closed"):
        proc.process([f])


def test_student_converts_yuyv_gray_and_bayer(weights):
    proc = make_processor("nearest", weights, CFG)
    bgr = bgr_frame(8, 8).pixels
    frames = [
        Frame(bgr_to_yuyv(bgr), 1, 0, "t", PixelFormat.YUYV),
        Frame(bgr[..., 1].copy(), 2, 0, "t", PixelFormat.GRAY8),
        Frame((bgr[..., 0].astype(np.uint16) * 256), 3, 0, "t", PixelFormat.BAYER16, raw=RawMeta()),
    ]
    for f in frames:
        r = proc.process([f])
        assert r.output.shape == (16, 16, 3)
        np.testing.assert_array_equal(r.output, nearest_2x(to_bgr8(f)))


@pytest.mark.parametrize("h,w", [(7, 9), (1, 3), (13, 8)])
def test_odd_sizes_are_padded_and_cropped(weights, h, w):
    proc = StudentSRProcessor.from_name("nearest", weights, CFG, multiple=8)
    f = bgr_frame(h, w)
    r = proc.process([f])
    assert r.output.shape == (2 * h, 2 * w, 3)
    np.testing.assert_array_equal(r.output, nearest_2x(f.pixels))  # nearest: padding cannot leak in
    assert pad_to_multiple(f.pixels, 8).shape[:2] == (-(-h // 8) * 8, -(-w // 8) * 8)


def test_odd_sizes_can_be_refused(weights):
    proc = StudentSRProcessor.from_name("nearest", weights, CFG, multiple=4, odd_sizes="refuse")
    proc.process([bgr_frame(8, 12)])
    with pytest.raises(FrameFormatError, match=r"frame 1 is 9x7; this model needs width and height that are multiples of 4"):
        proc.process([bgr_frame(7, 9)])


def test_bad_model_outputs_are_model_errors(weights):
    zeros = Frame(np.zeros((8, 8, 3), np.uint8), 5, 0, "t", PixelFormat.BGR8)
    nan = make_processor("nan", weights, CFG)
    with pytest.raises(ModelError, match=r"nan \(nan\.onnx\) on frame 5: output has 768 NaN/Inf values"):
        nan.process([zeros])
    ok = nan.process([bgr_frame(8, 8)])  # float output without NaN is accepted and converted
    assert ok.output.dtype == np.uint8
    with pytest.raises(ModelError, match=r"raises \(raises\.onnx\) failed on a 8x8 frame \(seq 5\): .*Reshape"):
        make_processor("raises", weights, CFG).process([zeros])
    with pytest.raises(ModelError, match=r"output shape \(1, 8, 8, 3\), expected \(1, 16, 16, 3\)"):
        make_processor("wrong_size", weights, CFG).process([zeros])


def test_student_refuses_models_off_the_io_convention(tmp_path):
    from engine.manifest import TensorSpec, entry_for_file, upsert_entry
    import onnx
    from onnx import TensorProto, helper
    g = helper.make_graph([helper.make_node("Identity", ["input"], ["output"])], "f32",
                          [helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, 3, "H", "W"])],
                          [helper.make_tensor_value_info("output", TensorProto.FLOAT, [1, 3, "H", "W"])])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 8
    onnx.save(m, tmp_path / "nchw.onnx")
    upsert_entry(entry_for_file("nchw", tmp_path / "nchw.onnx", tmp_path, kind="sr", scale=2,
                                inputs=[TensorSpec("input", "float32", [1, 3, "H", "W"], "NCHW")],
                                outputs=[TensorSpec("output", "float32", [1, 3, "H", "W"], "NCHW")]), tmp_path)
    assert "nchw" in load_manifest(tmp_path)
    with pytest.raises(WeightsError, match=r"does not follow the engine's I/O convention"):
        StudentSRProcessor.from_name("nchw", tmp_path, CFG)
