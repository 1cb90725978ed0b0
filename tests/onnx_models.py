"""Tiny ONNX models and a throw-away weights directory for engine tests (onnx.helper only, no torch).

Every model follows the engine's I/O convention unless it exists to break it:
input "input" uint8 (1, H, W, 3) BGR NHWC -> output "output" uint8 (1, 2H, 2W, 3).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper

from engine.manifest import TensorSpec, entry_for_file, upsert_entry

OPSET = 17
U8, F32 = TensorProto.UINT8, TensorProto.FLOAT
IN_SHAPE = [1, "H", "W", 3]
OUT_SHAPE = [1, "2*H", "2*W", 3]


def _scales() -> onnx.TensorProto:
    return helper.make_tensor("scales", F32, [4], [1.0, 2.0, 2.0, 1.0])


def _model(nodes, inits, in_name="input", out_name="output", in_type=U8, out_type=U8,
           out_shape=OUT_SHAPE) -> onnx.ModelProto:
    graph = helper.make_graph(
        nodes, "test",
        [helper.make_tensor_value_info(in_name, in_type, IN_SHAPE)],
        [helper.make_tensor_value_info(out_name, out_type, out_shape)],
        initializer=inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)])
    model.ir_version = 8  # readable by every onnxruntime we support
    onnx.checker.check_model(model)
    return model


def resize_nearest(in_name: str = "input", out_name: str = "output") -> onnx.ModelProto:
    """2x nearest-neighbour upscale straight on uint8 NHWC: output pixel (y, x) = input (y//2, x//2)."""
    node = helper.make_node("Resize", [in_name, "", "scales"], [out_name], mode="nearest")
    return _model([node], [_scales()], in_name, out_name)


def resize_linear() -> onnx.ModelProto:
    """2x bilinear upscale that casts and rounds itself, the way an exported network does."""
    nodes = [
        helper.make_node("Cast", ["input"], ["xf"], to=F32),
        helper.make_node("Resize", ["xf", "", "scales"], ["yf"], mode="linear"),
        helper.make_node("Round", ["yf"], ["yr"]),
        helper.make_node("Clip", ["yr", "lo", "hi"], ["yc"]),
        helper.make_node("Cast", ["yc"], ["output"], to=U8),
    ]
    inits = [_scales(), helper.make_tensor("lo", F32, [], [0.0]), helper.make_tensor("hi", F32, [], [255.0])]
    return _model(nodes, inits)


def nan_where_zero() -> onnx.ModelProto:
    """float32 output: 2x nearest of x * (x / x), so NaN wherever an input pixel is 0 (0/0), else x."""
    nodes = [
        helper.make_node("Cast", ["input"], ["xf"], to=F32),
        helper.make_node("Div", ["xf", "xf"], ["ones"]),
        helper.make_node("Mul", ["xf", "ones"], ["y"]),
        helper.make_node("Resize", ["y", "", "scales"], ["output"], mode="nearest"),
    ]
    return _model(nodes, [_scales()], out_type=F32)


def raises_at_run() -> onnx.ModelProto:
    """Loads fine, fails at every run (unless the image has exactly 21 values): reshapes to (1, 7, 1, 3)."""
    nodes = [
        helper.make_node("Reshape", ["input", "shape"], ["flat"]),
        helper.make_node("Resize", ["flat", "", "scales"], ["output"], mode="nearest"),
    ]
    return _model(nodes, [_scales(), helper.make_tensor("shape", TensorProto.INT64, [4], [1, 7, 1, 3])])


def wrong_size() -> onnx.ModelProto:
    """Claims 2x but returns the input unchanged: a garbage-shape output the processor must catch."""
    return _model([helper.make_node("Identity", ["input"], ["output"])], [], out_shape=IN_SHAPE)


# name -> (builder, output dtype in the manifest)
MODELS = {
    "nearest": (resize_nearest, "uint8"),
    "linear": (resize_linear, "uint8"),
    "nan": (nan_where_zero, "float32"),
    "raises": (raises_at_run, "uint8"),
    "wrong_size": (wrong_size, "uint8"),
}


def write_model(weights_dir: Path, name: str, model: onnx.ModelProto, out_dtype: str = "uint8",
                kind: str = "sr", in_name: str = "input", out_name: str = "output") -> Path:
    """Save `model` as weights_dir/name.onnx and add its manifest entry (sha256 and size filled in)."""
    weights_dir = Path(weights_dir)
    weights_dir.mkdir(parents=True, exist_ok=True)
    path = weights_dir / f"{name}.onnx"
    onnx.save(model, path)
    entry = entry_for_file(
        name, path, weights_dir, kind=kind, scale=2,
        inputs=[TensorSpec(in_name, "uint8", IN_SHAPE)],
        outputs=[TensorSpec(out_name, out_dtype, OUT_SHAPE)],
        description=f"test model {name}",
        training={"command": f"python -m tests.onnx_models {name}"},
    )
    upsert_entry(entry, weights_dir)
    return path


def make_weights_dir(weights_dir: Path, names=tuple(MODELS)) -> Path:
    """A weights directory holding the named test models and their manifest."""
    for name in names:
        builder, out_dtype = MODELS[name]
        write_model(weights_dir, name, builder(), out_dtype)
    return Path(weights_dir)


def nearest_2x(bgr: np.ndarray) -> np.ndarray:
    """What the 'nearest' model computes, in numpy: (H, W, 3) -> (2H, 2W, 3)."""
    return bgr.repeat(2, axis=0).repeat(2, axis=1)
