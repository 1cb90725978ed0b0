"""The processors by name: what `--model`, the window's model list and `eyefuse models` offer.

Apart from engine/processor.py (the Processor interface the processors implement), so the
interface does not import its implementations: processor.py <- student.py, burst/fusion.py <- this.

    make_processor(name) -> Processor       processor_names() -> [name, ...]
    BUILTIN: the processors that need no weights; STEP_PROCESSORS: those with a step count
"""
from __future__ import annotations

from pathlib import Path
from typing import Callable

from engine.processor import BicubicProcessor, Passthrough, Processor
from engine.runtime import SessionConfig


def _burst_fusion(frames: int = 8) -> Processor:
    """BurstFusion over the newest `frames` frames (the burst length the user chose)."""
    from engine.burst.fusion import BurstFusion  # on use: numba and the burst kernels load only then

    return BurstFusion(frames)


# Processors that need no weights, by the name `--model` and the GUI use.
BUILTIN: dict[str, Callable[[], Processor]] = {
    "bicubic": BicubicProcessor,
    "passthrough": Passthrough,
    "burst_fusion": _burst_fusion,
}


# Processors whose `steps` can be set (the window's step control and `--steps` act on these only).
STEP_PROCESSORS: frozenset[str] = frozenset({"burst_fusion"})


def processor_names(weights_dir: Path | str | None = None) -> list[str]:
    """Names make_processor accepts: the built-ins, then every "sr" model whose file is present."""
    from engine.manifest import WEIGHTS_DIR
    from engine.runtime import available_models

    models = available_models("sr", weights_dir if weights_dir is not None else WEIGHTS_DIR)
    return list(BUILTIN) + [e.name for e in models]


def make_processor(name: str, weights_dir: Path | str | None = None, cfg: SessionConfig | None = None) -> Processor:
    """A built-in processor, or a StudentSRProcessor for an "sr" manifest model.

    Raises WeightsError when the model is unknown or its file does not load.
    """
    if name in BUILTIN:
        return BUILTIN[name]()
    from engine.manifest import WEIGHTS_DIR, WeightsError, load_manifest
    from engine.student import StudentSRProcessor

    weights_dir = Path(weights_dir) if weights_dir is not None else WEIGHTS_DIR
    entry = load_manifest(weights_dir).get(name)
    if entry is not None and entry.kind != "sr":
        raise WeightsError(f"model {name!r} is a {entry.kind!r} model, not a single-frame \"sr\" one; "
                           f"it cannot be used as a frame processor")
    if entry is None:
        choices = ", ".join(processor_names(weights_dir))
        raise WeightsError(f"no processor or model named {name!r} (choose from: {choices}; "
                           f"models are listed in {weights_dir / 'manifest.json'})")
    return StudentSRProcessor.from_name(name, weights_dir, cfg)
