"""ONNX export in the engine's I/O convention, int8 static quantisation, and the manifest entry;
export_and_register does all three for a network train_student trained.

Convention (engine/student.py): input "input" uint8 (1, H, W, 3) BGR NHWC, output "output" uint8
(1, sH, sW, 3); the graph casts, normalises and transposes itself, so the engine hands camera
frames over without a copy in Python.
"""
from __future__ import annotations

import csv
import os
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import onnx
import torch
from onnx import TensorProto, helper, numpy_helper
from torch import nn

from engine.manifest import WEIGHTS_DIR, TensorSpec, entry_for_file, upsert_entry
from engine.student import bilinear_base, prefilter_for
from trainers.models.macs import macs_per_input_pixel
from trainers.models.student import StudentSR

if TYPE_CHECKING:
    from trainers.train_student import TrainConfig

REPO = Path(__file__).resolve().parent.parent
OPSET = 17
RESIDUAL_OFFSET = 128  # the correction's zero in its uint8 encoding (engine/student.py subtracts it)


class EngineIO(nn.Module):
    """Wraps a (N, 3, H, W) [0, 1] -> (N, 3, sH, sW) network in the uint8 NHWC convention."""

    def __init__(self, net: nn.Module):
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.permute(0, 3, 1, 2).float() * (1.0 / 255.0)
        y = self.net(x)
        y = torch.clamp(y * 255.0 + 0.5, 0.0, 255.0)
        return y.permute(0, 2, 3, 1).to(torch.uint8)


def strided_head(w: np.ndarray, u: int) -> np.ndarray:
    """(C, u*u*3, k, k) weights of a kxk convolution on SpaceToDepth(u) input (DCR channels: dy,
    dx, c) -> (C, 3, ku, ku) weights of the same convolution on the full-size input, stride u,
    padding (k // 2) u: tap (ky, kx) of unshuffled channel (dy, dx, c) reads pixel
    (u ky + dy, u kx + dx)."""
    n_out, k = w.shape[0], w.shape[-1]
    full = np.zeros((n_out, 3, k * u, k * u), np.float32)
    for dy in range(u):
        for dx in range(u):
            for c in range(3):
                full[:, c, dy::u, dx::u] = w[:, (dy * u + dx) * 3 + c]
    return full


def student_graph(net: StudentSR) -> onnx.ModelProto:
    """StudentSR as an ONNX graph on uint8 NHWC (the bilinear 2x comes in as a second input), op by op
    so the layout work is what this CPU does fastest (measured: ORT's 6-D transposes, which torch's
    pixel_(un)shuffle export to, cost 30 ms a frame here; SpaceToDepth/DepthToSpace a few):

        (1, H, W, 3) u8 -> float -> NCHW -> head -> ReLU -> res blocks -> tail
        -> QuantizeLinear (+128, rounded, saturated) -> block layout -> + base -> (1, sH, sW, 3) u8

    The head, a kxk convolution on the pixel-unshuffled input, runs as the equivalent ku x ku
    convolution with stride u on the input itself (`strided_head`): the same MACs without the
    SpaceToDepth pass, and with the cast before the transpose (measured faster in that order):
    1.5-2 ms a frame less here, output within one level of the SpaceToDepth graph.

    A 1x1 tail runs as one batched MatMul that writes the output layout directly: the features,
    turned NHWC (C channels: a small transpose) with a constant-1 channel appended for the bias,
    are viewed as (h, 1, w, C+1) and multiplied by the tail weights split by output row,
    (1, us, C+1, 3us); broadcasting gives (h, us, w, 3us), which is (1, sH, sW, 3) in memory. So
    no pass over the full-size output moves anything: the MatMul writes it, QuantizeLinear turns
    it to uint8 straight into the graph's output. Measured against a Gemm + uint8 block transpose
    (itself 2-3 ms faster than Conv -> NCHWc reorder -> DepthToSpace -> Transpose): 18.4 -> 15.5 ms
    for the graph at 640x480, bit-identical. A wider tail kernel keeps the DepthToSpace chain.

    The correction is added to the graph's second input, "base": OpenCV's bilinear 2x of the
    input, which the engine computes (manifest: residual_over "bilinear"). The add is ORT's
    QLinearAdd on the two uint8 tensors (the correction's zero at 128), the saturating uint8 add
    OpenCV's addWeighted did after the run, 1.6 ms a frame faster in the graph, bit-identical.

    The 0..255 scaling is folded into the head and tail weights (ReLU is positively homogeneous),
    and the channel orders of the head and tail are permuted from torch's (c, dy, dx) to ONNX DCR's
    (dy, dx, c). Given the engine's bilinear base it computes StudentSR.forward
    (tests/test_student_export.py)."""
    net = net.fused()  # re-parameterised body convolutions become the plain 3x3s the graph runs
    cfg = net.cfg
    u, s = cfg.unshuffle, cfg.scale
    us = u * s
    sd = {k: v.detach().cpu().numpy().astype(np.float32) for k, v in net.state_dict().items()}
    # torch channel (c, dy, dx) <- DCR channel (dy, dx, c): the DCR order lists torch indices
    dcr_in = [c * u * u + dy * u + dx for dy in range(u) for dx in range(u) for c in range(3)]
    dcr_out = [c * us * us + dy * us + dx for dy in range(us) for dx in range(us) for c in range(3)]

    inits = [
        numpy_helper.from_array(strided_head(sd["head.weight"][:, dcr_in] / 255.0, u), "head.w"),
        numpy_helper.from_array(sd["head.bias"], "head.b"),
        numpy_helper.from_array(np.array(1.0, np.float32), "one"),
        numpy_helper.from_array(np.array(RESIDUAL_OFFSET, np.uint8), "offset"),
    ]
    tail_w = sd["tail.weight"][dcr_out] * 255.0  # (3 (us)^2, C, k, k), DCR output order
    N = helper.make_node
    k, hk = cfg.tail_kernel, cfg.head_kernel
    nodes = [
        N("Cast", ["input"], ["xf"], to=TensorProto.FLOAT),
        N("Transpose", ["xf"], ["x"], perm=[0, 3, 1, 2]),
        N("Conv", ["x", "head.w", "head.b"], ["h0"], kernel_shape=[hk * u, hk * u], strides=[u, u],
          pads=[hk // 2 * u] * 4),
        N("Relu", ["h0"], ["f0"]),
    ]
    feat = "f0"
    for i in range(cfg.blocks):
        p = f"body.{i}"
        for j in (1, 2):
            inits += [numpy_helper.from_array(sd[f"{p}.conv{j}.weight"], f"{p}.w{j}"),
                      numpy_helper.from_array(sd[f"{p}.conv{j}.bias"], f"{p}.b{j}")]
        nodes += [
            N("Conv", [feat, f"{p}.w1", f"{p}.b1"], [f"{p}.c1"], kernel_shape=[3, 3], pads=[1, 1, 1, 1]),
            N("Relu", [f"{p}.c1"], [f"{p}.r1"]),
            N("Conv", [f"{p}.r1", f"{p}.w2", f"{p}.b2"], [f"{p}.c2"], kernel_shape=[3, 3], pads=[1, 1, 1, 1]),
            N("Add", [feat, f"{p}.c2"], [f"{p}.out"]),
        ]
        feat = f"{p}.out"
    if k == 1:
        i64 = lambda values, name: numpy_helper.from_array(np.array(values, np.int64), name)  # noqa: E731
        with_bias = np.concatenate([tail_w[:, :, 0, 0].T, sd["tail.bias"][dcr_out][None] * 255.0])  # (C+1, us us 3)
        by_row = with_bias.reshape(cfg.channels + 1, us, 3 * us).transpose(1, 0, 2)[None]  # (1, us, C+1, 3us)
        inits += [
            numpy_helper.from_array(np.ascontiguousarray(by_row), "tail.w"),
            i64([0], "zero_i"), i64([3], "three_i"), i64([1], "one_i"), i64([0], "axis0"), i64([1], "axis1"),
            i64([1, s, s, 1], "scale4"),
        ]
        nodes += [
            N("Transpose", [feat], ["fh"], perm=[0, 2, 3, 1]),  # (1, h, w, C)
            N("Shape", ["fh"], ["fshape"]),
            N("Slice", ["fshape", "zero_i", "three_i"], ["nhw"]),
            N("Concat", ["nhw", "one_i"], ["ones_shape"], axis=0),
            N("ConstantOfShape", ["ones_shape"], ["ones"], value=numpy_helper.from_array(np.array([1.0], np.float32))),
            N("Concat", ["fh", "ones"], ["fb"], axis=3),  # (1, h, w, C+1): the bias rides on the 1s
            N("Squeeze", ["fb", "axis0"], ["fb3"]),
            N("Unsqueeze", ["fb3", "axis1"], ["fb4"]),  # (h, 1, w, C+1)
            N("MatMul", ["fb4", "tail.w"], ["t"]),  # (h, us, w, 3us): output rows in place
            N("Shape", ["input"], ["in_shape"]),
            N("Mul", ["in_shape", "scale4"], ["out_shape"]),
            N("Reshape", ["t", "out_shape"], ["t_out"]),  # (1, sH, sW, 3), the same memory
            N("QuantizeLinear", ["t_out", "one", "offset"], ["corr"]),  # +128, round, saturate: one pass
        ]
    else:
        inits += [numpy_helper.from_array(tail_w, "tail.w"),
                  numpy_helper.from_array(sd["tail.bias"][dcr_out] * 255.0, "tail.b")]
        nodes += [
            N("Conv", [feat, "tail.w", "tail.b"], ["t"], kernel_shape=[k, k], pads=[k // 2] * 4),
            N("QuantizeLinear", ["t", "one", "offset"], ["y8"]),  # +128, round, saturate: one pass
            N("DepthToSpace", ["y8"], ["d2s"], blocksize=us, mode="DCR"),
            N("Transpose", ["d2s"], ["corr"], perm=[0, 2, 3, 1]),
        ]
    inits.append(numpy_helper.from_array(np.array(0, np.uint8), "zero_u8"))
    # output = saturate((corr - 128) + base): both uint8, unit scales
    nodes.append(N("QLinearAdd", ["corr", "one", "offset", "base", "one", "zero_u8", "one", "zero_u8"], ["output"],
                   domain="com.microsoft"))
    graph = helper.make_graph(
        nodes, "student_sr",
        [helper.make_tensor_value_info("input", TensorProto.UINT8, [1, "H", "W", 3]),
         helper.make_tensor_value_info("base", TensorProto.UINT8, [1, f"{s}*H", f"{s}*W", 3])],
        [helper.make_tensor_value_info("output", TensorProto.UINT8, [1, f"{s}*H", f"{s}*W", 3])],
        initializer=inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET), helper.make_opsetid("com.microsoft", 1)],
                              producer_name="eyefuse")
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


def export_onnx(net: nn.Module, path: Path | str, scale: int = 2, sample_hw: tuple[int, int] = (64, 64)) -> Path:
    """Export `net` (eval mode, CPU) wrapped in EngineIO with dynamic H and W. Written to a temp
    file and renamed, so a failed export never leaves a half-written model under `path`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    wrapped = EngineIO(net.eval().cpu())
    sample = torch.zeros(1, *sample_hw, 3, dtype=torch.uint8)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.stem}-", suffix=".onnx")
    os.close(fd)
    try:
        if isinstance(net, StudentSR):
            onnx.save(student_graph(net), tmp)
            os.replace(tmp, path)
            return path
        with torch.no_grad():
            torch.onnx.export(
                wrapped, (sample,), tmp, input_names=["input"], output_names=["output"], opset_version=OPSET,
                dynamic_axes={"input": {1: "H", 2: "W"}, "output": {1: f"{scale}*H", 2: f"{scale}*W"}},
                dynamo=False,
            )
        os.replace(tmp, path)
    finally:
        Path(tmp).unlink(missing_ok=True)
    return path


def quantize_int8(fp32_path: Path | str, int8_path: Path | str, calibration: list[np.ndarray], scale: int = 2,
                  base_filter: np.ndarray | None = None) -> Path:
    """Static QDQ int8 (per-channel weights, uint8 activations) calibrated on uint8 (1, H, W, 3)
    frames (and, for a graph with a "base" input, their bilinear `scale`x upscale, after
    `base_filter` when the model has one, as a (k, k) kernel). The graph's uint8 inputs and output
    stay as they are."""
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    wants_base = any(i.name == "base" for i in onnx.load(str(fp32_path), load_external_data=False).graph.input)
    prefilter = prefilter_for(base_filter) if base_filter is not None else None

    def feed(x: np.ndarray) -> dict[str, np.ndarray]:
        return {"input": x, "base": bilinear_base(x[0], scale, prefilter)} if wants_base else {"input": x}

    class Reader(CalibrationDataReader):
        def __init__(self):
            self._it = iter([feed(x) for x in calibration])

        def get_next(self):
            return next(self._it, None)

    int8_path = Path(int8_path)
    fd, pre = tempfile.mkstemp(dir=int8_path.parent, prefix=".pre-", suffix=".onnx")
    os.close(fd)
    fd, tmp = tempfile.mkstemp(dir=int8_path.parent, prefix=f".{int8_path.stem}-", suffix=".onnx")
    os.close(fd)
    try:
        quant_pre_process(str(fp32_path), pre, skip_symbolic_shape=True)
        quantize_static(pre, tmp, Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
                        activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                        op_types_to_quantize=["Conv"])
        os.replace(tmp, int8_path)
    finally:
        Path(pre).unlink(missing_ok=True)
        Path(tmp).unlink(missing_ok=True)
    return int8_path


def register(name: str, path: Path, scale: int, description: str, macs: float | None,
             training: dict[str, Any], quality: dict[str, Any] | None = None,
             weights_dir: Path = WEIGHTS_DIR, residual_over: str | None = None,
             base_filter: np.ndarray | None = None) -> None:
    """Add or replace `name` in weights_dir/manifest.json for the file at `path`. base_filter: the
    kernel the engine blurs the input with before making "base" (StudentSR's base_blur_sigma)."""
    entry = entry_for_file(
        name, path, weights_dir, kind="sr", scale=scale,
        inputs=[TensorSpec("input", "uint8", [1, "H", "W", 3])]
        + ([TensorSpec("base", "uint8", [1, f"{scale}*H", f"{scale}*W", 3])] if residual_over == "bilinear" else []),
        outputs=[TensorSpec("output", "uint8", [1, f"{scale}*H", f"{scale}*W", 3])],
        description=description, macs_per_input_pixel=macs, training=training, quality=quality or {},
        residual_over=residual_over,
        base_filter=None if base_filter is None else np.asarray(base_filter, np.float64).round(8).tolist(),
    )
    upsert_entry(entry, weights_dir)


def base_filter_of(net: nn.Module) -> np.ndarray | None:
    """The kernel a StudentSR blurs its input with before the bilinear base, for the manifest (the
    engine makes the base); None for other networks and plain-bilinear StudentSRs."""
    if isinstance(net, StudentSR) and net.cfg.base_blur_sigma > 0:
        return net.base_kernel.cpu().numpy()
    return None


def export_and_register(net: nn.Module, name: str, cfg: TrainConfig, log_path: Path, weights_dir: Path,
                        command: str, val_pairs_for_int8: list | None = None,
                        widths: dict | None = None) -> list[Path]:
    """ONNX export (+ int8 for StudentSR), manifest entries with the training facts. Returns the files."""
    reparam = isinstance(net, StudentSR) and net.cfg.reparam
    net = net.fused() if isinstance(net, StudentSR) else net
    macs = macs_per_input_pixel(net)
    loss = "L1"
    if cfg.distill_from is not None:
        loss = (f"L1, {1 - cfg.distill_weight:g} x to the clean target + {cfg.distill_weight:g} x to the output of "
                f"{cfg.distill_from.name}")
    log = os.path.relpath(log_path, REPO) if log_path.is_relative_to(REPO) else str(log_path)
    training = {"command": command, "targets": cfg.targets, "data": str(cfg.data),
                "epochs": cfg.epochs, "steps": cfg.epochs * cfg.steps_per_epoch, "batch": cfg.batch,
                "patch": cfg.patch, "world_size": int(os.environ.get("WORLD_SIZE", "1")), "loss": loss, "log": log}
    rows = list(csv.DictReader(open(log_path))) if log_path.exists() else []
    best = max(rows, key=lambda r: float(r["val_psnr"])) if rows else None
    quality = {"val_psnr": float(best["val_psnr"]), "val_epoch": int(best["epoch"]),
               "val_set": "BSDS500/val centre crops, webcam protocol" if cfg.targets == "clean" else "prepared _VALIDATION pairs"} if best else {}
    path = export_onnx(net, weights_dir / f"{name}.onnx")
    desc = {"student_sr": "StudentSR: denoise + deblur + 2x upscale, pixel-unshuffled residual network",
            "espcn": "ESPCN baseline (Shi et al. 2016), trained by our trainer on the same data",
            "fsrcnn": "FSRCNN baseline (Dong et al. 2016), trained by our trainer on the same data"}[cfg.arch]
    if isinstance(net, StudentSR):
        desc += f" ({net.cfg.unshuffle}x unshuffle, {net.cfg.channels} channels x {net.cfg.blocks} blocks)"
    if reparam:
        desc += "; trained with re-parameterised body convolutions (RepConv3x3), fused for export"
    if widths:
        desc += " at reduced widths " + ", ".join(f"{k}={v}" for k, v in widths.items())
    residual = "bilinear" if cfg.arch == "student_sr" else None
    base_filter = base_filter_of(net)
    register(name, path, 2, desc, macs, training, quality, weights_dir, residual, base_filter)
    files = [path]
    if cfg.arch == "student_sr" and val_pairs_for_int8:
        calib = [np.ascontiguousarray(lr[None, : lr.shape[0] // 8 * 8, : lr.shape[1] // 8 * 8])
                 for lr, _ in val_pairs_for_int8[:32]]
        q = quantize_int8(path, weights_dir / f"{name}_int8.onnx", calib, base_filter=base_filter)
        register(f"{name}_int8", q, 2, desc + "; int8 static QDQ (per-channel weights), calibrated on 32 "
                 "validation frames", macs, dict(training, quantized_from=path.name), {}, weights_dir, residual,
                 base_filter)
        files.append(q)
    return files
