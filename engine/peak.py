"""The machine's measured fp32 GEMM peak through ONNX Runtime: the yardstick for achieved GMAC/s."""
from __future__ import annotations

import time

import numpy as np
import onnxruntime as ort


def _matmul_model(n: int) -> bytes:
    from onnx import TensorProto, helper  # onnx takes most of a second to import: only when measuring

    a = helper.make_tensor_value_info("a", TensorProto.FLOAT, [n, n])
    b = helper.make_tensor_value_info("b", TensorProto.FLOAT, [n, n])
    c = helper.make_tensor_value_info("c", TensorProto.FLOAT, [n, n])
    graph = helper.make_graph([helper.make_node("MatMul", ["a", "b"], ["c"])], "gemm", [a, b], [c])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model.SerializeToString()


def measure_gemm_peak_gmacs(n: int = 1024, repeats: int = 20, threads: int | None = None) -> float:
    """Best-of-`repeats` GMAC/s of an n x n x n fp32 MatMul in ONNX Runtime with `threads` intra-op threads."""
    opts = ort.SessionOptions()
    if threads:
        opts.intra_op_num_threads = threads
    sess = ort.InferenceSession(_matmul_model(n), opts, providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(0)
    feeds = {"a": rng.random((n, n), dtype=np.float32), "b": rng.random((n, n), dtype=np.float32)}
    sess.run(None, feeds)  # warm-up: thread pool start, packing buffers
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        sess.run(None, feeds)
        best = min(best, time.perf_counter() - t)
    return n**3 / best / 1e9


if __name__ == "__main__":
    print(f"{measure_gemm_peak_gmacs():.1f} GMAC/s")
