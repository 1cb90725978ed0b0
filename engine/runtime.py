"""The one place that makes ONNX Runtime CPU sessions and loads manifest models into them.

`load_model(name)` reads weights/manifest.json, checks the file's size and sha256
(engine.manifest.verified_path), opens a session with tuned options (SessionConfig) and checks that
the graph's inputs and outputs are the ones the manifest promises. Anything that does not match is
refused with a WeightsError naming the file, what differs and what to do.
"""
from __future__ import annotations

import os
import tempfile
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnxruntime as ort

from engine.manifest import WEIGHTS_DIR, ModelEntry, WeightsError, load_manifest, sha256_of, verified_path


def cpu_cores() -> int:
    """Cores this process may run on (honours taskset/cgroup affinity where the OS exposes it)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # macOS, Windows
        return os.cpu_count() or 1


@dataclass(frozen=True)
class SessionConfig:
    """How ONNX Runtime runs a model on the CPU.

    intra_op_threads: threads inside one operator (the GEMMs); default every core we may use.
    inter_op_threads: threads across independent operators; our graphs are chains, so 1.
    sequential: ORT_SEQUENTIAL execution; parallel execution only helps branchy graphs.
    enable_mem_pattern: pre-plan activation memory from the first run's shapes (fixed camera size).
    allow_spinning: worker threads spin between ops: about a millisecond less per frame when the
        model has the machine to itself, but the spinning threads take the cores the capture, GUI
        and recorder threads need. Off by default: the live app on 2 cores measured 22.6 fps with it
        off against 19.2 with it on (`eyefuse bench live`, 25 s each, same commit).
    optimized_cache_dir: if set, the optimised graph is written there once per model file
        (keyed by its sha256 and the ORT version) and later sessions load it, skipping optimisation.
    log_severity: ORT's own log level (0 verbose .. 4 fatal); engine errors are reported by us.
    """

    intra_op_threads: int = field(default_factory=cpu_cores)
    inter_op_threads: int = 1
    graph_optimization: ort.GraphOptimizationLevel = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    sequential: bool = True
    enable_mem_pattern: bool = True
    allow_spinning: bool = False
    optimized_cache_dir: Path | None = None
    log_severity: int = 3

    def session_options(self) -> ort.SessionOptions:
        so = ort.SessionOptions()
        so.intra_op_num_threads = max(1, int(self.intra_op_threads))
        so.inter_op_num_threads = max(1, int(self.inter_op_threads))
        so.graph_optimization_level = self.graph_optimization
        so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL if self.sequential else ort.ExecutionMode.ORT_PARALLEL
        so.enable_mem_pattern = self.enable_mem_pattern
        so.log_severity_level = self.log_severity
        so.add_session_config_entry("session.intra_op.allow_spinning", "1" if self.allow_spinning else "0")
        return so


_PROVIDERS = ["CPUExecutionProvider"]

# ORT's type strings -> the numpy dtype names the manifest uses
_ORT_DTYPES = {
    "tensor(uint8)": "uint8", "tensor(int8)": "int8", "tensor(float)": "float32",
    "tensor(float16)": "float16", "tensor(double)": "float64", "tensor(int32)": "int32",
    "tensor(int64)": "int64", "tensor(bool)": "bool",
}


def create_session(model_path: Path | str, cfg: SessionConfig | None = None) -> ort.InferenceSession:
    """An ORT CPU session for one .onnx file. Raises WeightsError if the file is not a loadable model."""
    cfg = cfg or SessionConfig()
    model_path = Path(model_path)
    if not model_path.is_file():
        raise WeightsError(f"model file {model_path} not found; check the path or restore the file from git")
    if cfg.optimized_cache_dir is not None:
        return _cached_session(model_path, cfg)
    return _open(model_path, cfg.session_options())


def _open(model_path: Path, so: ort.SessionOptions) -> ort.InferenceSession:
    try:
        return ort.InferenceSession(str(model_path), sess_options=so, providers=_PROVIDERS)
    except Exception as exc:  # ORT raises its own pybind classes (InvalidProtobuf, Fail, ...)
        reason = str(exc).strip().splitlines()[0][:300]
        raise WeightsError(
            f"{model_path} is not a loadable ONNX model ({type(exc).__name__}: {reason}). "
            f"Restore it from git or re-export it with the trainers' export command."
        ) from exc


def _cached_session(model_path: Path, cfg: SessionConfig) -> ort.InferenceSession:
    cache_dir = Path(cfg.optimized_cache_dir)
    level = int(cfg.graph_optimization)
    key = f"{model_path.stem}-{sha256_of(model_path)[:16]}-ort{ort.__version__}-O{level}.onnx"
    cached = cache_dir / key
    if cached.is_file():
        # The cached graph is already optimised; doing it again would only cost start-up time.
        so = cfg.session_options()
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
        try:
            return _open(cached, so)
        except WeightsError as exc:  # a damaged cache file: drop it and rebuild from the real model
            warnings.warn(f"ignoring damaged optimised-model cache {cached}: {exc}", stacklevel=2)
            cached.unlink(missing_ok=True)
    so = cfg.session_options()
    try:
        cache_dir.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=cache_dir, prefix=f".{model_path.stem}-", suffix=".onnx")
        os.close(fd)
    except OSError as exc:
        warnings.warn(f"cannot write the optimised-model cache in {cache_dir} ({exc}); running without it",
                      stacklevel=2)
        return _open(model_path, so)
    so.optimized_model_filepath = tmp  # written while the session is created
    try:
        session = _open(model_path, so)
        os.replace(tmp, cached)  # atomic: a concurrent reader never sees half a cache file
    finally:
        Path(tmp).unlink(missing_ok=True)
    return session


def io_mismatches(entry: ModelEntry, session: ort.InferenceSession) -> list[str]:
    """How the session's inputs/outputs differ from the manifest entry (names, dtypes, ranks, fixed
    dims); empty when they agree. Symbolic dims ("H", "2*W") match anything."""
    problems: list[str] = []
    for role, specs, args in (("input", entry.inputs, session.get_inputs()),
                              ("output", entry.outputs, session.get_outputs())):
        if len(specs) != len(args):
            problems.append(f"the graph has {len(args)} {role}s {[a.name for a in args]}, "
                            f"the manifest lists {len(specs)} {[s.name for s in specs]}")
            continue
        for i, (spec, arg) in enumerate(zip(specs, args)):
            what = f"{role} {i}"
            if arg.name != spec.name:
                problems.append(f"{what} is named {arg.name!r} in the graph but {spec.name!r} in the manifest")
            dtype = _ORT_DTYPES.get(arg.type, arg.type)
            if dtype != spec.dtype:
                problems.append(f"{what} {arg.name!r} is {dtype} in the graph but {spec.dtype} in the manifest")
            shape = list(arg.shape or [])
            if len(shape) != len(spec.shape):
                problems.append(f"{what} {arg.name!r} has rank {len(shape)} {shape} in the graph but "
                                f"rank {len(spec.shape)} {spec.shape} in the manifest")
                continue
            for axis, (got, want) in enumerate(zip(shape, spec.shape)):
                if isinstance(got, int) and isinstance(want, int) and got != want:
                    problems.append(f"{what} {arg.name!r} axis {axis} is {got} in the graph but {want} in the manifest")
    return problems


@dataclass(frozen=True, eq=False)
class LoadedModel:
    """A manifest entry, its verified file and an open session. Thread-safe to `run`."""

    entry: ModelEntry
    path: Path
    session: ort.InferenceSession
    config: SessionConfig

    @property
    def name(self) -> str:
        return self.entry.name

    @property
    def input_name(self) -> str:
        return self.entry.inputs[0].name

    @property
    def output_name(self) -> str:
        return self.entry.outputs[0].name

    def run(self, x: np.ndarray, **more: np.ndarray) -> np.ndarray:
        """Feed the first input (and any further inputs by name), return the first output (ORT
        errors propagate unchanged)."""
        return self.session.run([self.output_name], {self.input_name: x, **more})[0]


def load_model(name: str, weights_dir: Path | str = WEIGHTS_DIR, cfg: SessionConfig | None = None) -> LoadedModel:
    """Load manifest model `name` from weights_dir: verify the file, open a session, check its I/O.

    Raises WeightsError when the name is unknown, the file is missing/truncated/has another sha256,
    is not ONNX, or its inputs/outputs differ from the manifest.
    """
    weights_dir = Path(weights_dir)
    cfg = cfg or SessionConfig()
    manifest = load_manifest(weights_dir)
    if name not in manifest:
        known = ", ".join(sorted(manifest)) or "none"
        raise WeightsError(
            f"no model named {name!r} in {weights_dir / 'manifest.json'} (models there: {known}). "
            f"Train and export it, or pick one of those."
        )
    entry = manifest[name]
    path = verified_path(entry, weights_dir)
    session = create_session(path, cfg)
    problems = io_mismatches(entry, session)
    if problems:
        raise WeightsError(
            f"{path} does not match its manifest entry {name!r}: " + "; ".join(problems)
            + ". Re-export the model with the engine's I/O convention or correct the manifest entry."
        )
    return LoadedModel(entry, path, session, cfg)


def available_models(kind: str | None = None, weights_dir: Path | str = WEIGHTS_DIR) -> list[ModelEntry]:
    """Manifest entries (of `kind`, if given) whose weights file is present with the right size,
    sorted by name. The sha256 is checked later, by load_model."""
    weights_dir = Path(weights_dir)
    found = []
    for entry in load_manifest(weights_dir).values():
        path = weights_dir / entry.file
        if (kind is None or entry.kind == kind) and path.is_file() and path.stat().st_size == entry.bytes:
            found.append(entry)
    return sorted(found, key=lambda e: e.name)
