"""weights/manifest.json: what each bundled model is, how to feed it, how it was made, how good it is.

The engine refuses to load a weights file whose size or sha256 does not match its manifest entry,
so a truncated download, a half-written export or a file swapped by hand is caught at load time.
"""
from __future__ import annotations

import hashlib
import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path

from capture.atomic import atomic_write_bytes
from typing import Any

WEIGHTS_DIR = Path(__file__).resolve().parent.parent / "weights"
MANIFEST_NAME = "manifest.json"
SCHEMA_VERSION = 1


class WeightsError(Exception):
    """A weights file or its manifest entry is missing, damaged or does not match."""


@dataclass(frozen=True)
class TensorSpec:
    """One model input or output. shape entries are ints or symbolic names such as "H" or "2*W"."""

    name: str
    dtype: str  # "uint8" or "float32"
    shape: list[int | str]
    layout: str = "NHWC"  # our images enter and leave the graph as (1, H, W, 3) BGR uint8


@dataclass(frozen=True)
class ModelEntry:
    """One manifest entry. `file` is relative to the weights directory."""

    name: str
    file: str
    sha256: str
    bytes: int
    kind: str  # "sr", "burst_refine", "teacher_denoise", ...
    scale: int
    inputs: list[TensorSpec]
    outputs: list[TensorSpec]
    description: str = ""
    macs_per_input_pixel: float | None = None
    # "bilinear": the graph takes a second input, "base", a bilinear scale-x of the input (OpenCV
    # makes it faster than the graph could), and adds its correction to it; None: one input.
    residual_over: str | None = None
    # With residual_over: a small odd square kernel (rows of floats) the input is filtered with
    # before the bilinear scale-x that makes "base", as in training; None: no filter.
    base_filter: list[list[float]] | None = None
    training: dict[str, Any] = field(default_factory=dict)  # command, data, steps, log, commit
    quality: dict[str, Any] = field(default_factory=dict)  # measured figures, with what they were measured on

    @staticmethod
    def from_dict(name: str, d: dict[str, Any]) -> "ModelEntry":
        try:
            return ModelEntry(
                name=name,
                file=d["file"],
                sha256=d["sha256"],
                bytes=int(d["bytes"]),
                kind=d["kind"],
                scale=int(d["scale"]),
                inputs=[TensorSpec(**t) for t in d["inputs"]],
                outputs=[TensorSpec(**t) for t in d["outputs"]],
                description=d.get("description", ""),
                macs_per_input_pixel=d.get("macs_per_input_pixel"),
                residual_over=d.get("residual_over"),
                base_filter=d.get("base_filter"),
                training=d.get("training", {}),
                quality=d.get("quality", {}),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise WeightsError(f"manifest entry {name!r} is malformed ({exc!r}); re-export the model") from exc

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d.pop("name")
        if d["base_filter"] is None:
            d.pop("base_filter")
        return d


def sha256_of(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def load_manifest(weights_dir: Path = WEIGHTS_DIR) -> dict[str, ModelEntry]:
    """All entries of weights_dir/manifest.json by name. Raises WeightsError with the reason."""
    path = Path(weights_dir) / MANIFEST_NAME
    if not path.exists():
        return {}
    try:
        doc = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise WeightsError(f"cannot read {path}: {exc}. Restore it from git (git checkout -- {path}).") from exc
    if doc.get("schema") != SCHEMA_VERSION:
        raise WeightsError(f"{path} has schema {doc.get('schema')!r}, this EyeFuse reads schema {SCHEMA_VERSION}")
    return {name: ModelEntry.from_dict(name, d) for name, d in doc.get("models", {}).items()}


def verified_path(entry: ModelEntry, weights_dir: Path = WEIGHTS_DIR) -> Path:
    """The model file's path after checking it exists and matches the manifest's size and sha256."""
    path = Path(weights_dir) / entry.file
    if not path.exists():
        raise WeightsError(
            f"weights file for {entry.name!r} not found at {path}. Restore it (git checkout -- {path}) "
            f"or retrain it: {entry.training.get('command', 'see the README')}"
        )
    size = path.stat().st_size
    if size != entry.bytes:
        raise WeightsError(
            f"weights file {path} is {size} bytes but the manifest says {entry.bytes}: it is truncated or "
            f"not the file that was exported. Restore it from git or re-export it."
        )
    digest = sha256_of(path)
    if digest != entry.sha256:
        raise WeightsError(
            f"weights file {path} does not match its manifest sha256 ({digest[:12]}... != {entry.sha256[:12]}...). "
            f"Restore it from git or re-export it so the manifest is updated."
        )
    return path


def upsert_entry(entry: ModelEntry, weights_dir: Path = WEIGHTS_DIR) -> None:
    """Add or replace one entry, keeping the others; written atomically (temp file + rename)."""
    weights_dir = Path(weights_dir)
    path = weights_dir / MANIFEST_NAME
    doc: dict[str, Any] = {"schema": SCHEMA_VERSION, "models": {}}
    if path.exists():
        doc = json.loads(path.read_text())
    doc.setdefault("models", {})[entry.name] = entry.to_dict()
    doc["models"] = dict(sorted(doc["models"].items()))
    atomic_write_bytes(path, (json.dumps(doc, indent=2) + "\n").encode())


def entry_for_file(name: str, path: Path, weights_dir: Path = WEIGHTS_DIR, **fields: Any) -> ModelEntry:
    """A ModelEntry for a freshly written file, with its size and sha256 filled in."""
    path = Path(path)
    return ModelEntry(
        name=name,
        file=os.path.relpath(path, weights_dir),
        sha256=sha256_of(path),
        bytes=path.stat().st_size,
        **fields,
    )
