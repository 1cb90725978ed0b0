"""`eyefuse live`: the live pipeline, in the window or headless with figures printed."""
from __future__ import annotations

import argparse
import gc
import json
import sys
from pathlib import Path

from app.pipeline import PipelineConfig, run_headless
from capture.sources import SourceOptions


def add_parser(sub) -> None:
    p = sub.add_parser("live", help="run the live pipeline (the window, or --headless)")
    p.add_argument("--source", default="simulated", help="see `eyefuse sources` (default: simulated)")
    p.add_argument("--model", default="student_sr", help="processor: a model in weights/manifest.json or bicubic")
    p.add_argument("--headless", action="store_true", help="no window and no Qt at all: print live figures")
    p.add_argument("--frames", type=int, default=None, help="stop after N displayed frames")
    p.add_argument("--seconds", type=float, default=None, help="stop after S seconds")
    p.add_argument("--stats", default=None, help="write the final figures to this JSON file")
    p.add_argument("--fast", action="store_true", help="do not pace files/simulated camera in real time")
    w = p.add_argument_group("window")
    w.add_argument("--offscreen", action="store_true",
                   help="run the window without a display (Qt offscreen platform): for tests and benchmarks")
    w.add_argument("--record", default=None, metavar="OUT.mp4",
                   help="record the enhanced video from the start (H.264 MP4; MJPEG MKV where H.264 is missing)")
    w.add_argument("--record-side-by-side", action="store_true", help="record input and output side by side")
    w.add_argument("--screenshot", default=None, metavar="OUT.png",
                   help="save the window when the run ends (after --frames/--seconds)")
    w.add_argument("--burst", type=int, default=None, help="burst length for BurstFusion (default 8)")
    w.add_argument("--steps", type=int, choices=(0, 1, 2, 4), default=None,
                   help="step count for processors that have one (burst_fusion: its learned refinement's "
                        "sampler steps, 0 for the merge alone; default 1)")
    w.add_argument("--weights-dir", default=None, help="weights folder (default: the repository's weights/)")
    p.set_defaults(run=run)


def freeze_startup_objects() -> None:
    """Move everything the imports made into the collector's permanent generation. The frame loop
    allocates steadily, and each full collection otherwise walks every module object of numpy, Qt
    and ONNX Runtime again: a profile of the live app had the collector at 8% of the main thread."""
    gc.collect()
    gc.freeze()


def check_model_args(args: argparse.Namespace) -> str | None:
    """Why --model/--steps cannot run as given (a message naming what exists), or None."""
    from engine.processor import STEP_PROCESSORS, processor_names

    names = processor_names(args.weights_dir)
    if args.model not in names:
        return (f"no processor or model named {args.model!r}; choose one of: {', '.join(names)} "
                f"(`eyefuse models` lists them with their sizes)")
    if args.steps is not None and args.model not in STEP_PROCESSORS:
        having = ", ".join(sorted(STEP_PROCESSORS)) or "none yet"
        return (f"--steps {args.steps}: {args.model!r} has no step count (processors with one: {having}); "
                f"leave --steps out")
    return None


def run(args: argparse.Namespace) -> int:
    problem = check_model_args(args)
    if problem:
        print(f"eyefuse live: {problem}", file=sys.stderr)
        return 2
    config = PipelineConfig(source=args.source, processor=args.model,
                            source_options=SourceOptions(realtime=not args.fast), steps=args.steps)
    if not args.headless:
        try:
            from app.window import run_window
        except ImportError as exc:
            print(f"the window is not available ({exc}); running headless", file=sys.stderr)
        else:
            freeze_startup_objects()
            return run_window(config, args)
    freeze_startup_objects()
    summary = run_headless(config, frames=args.frames, seconds=args.seconds)
    print(json.dumps(summary, indent=1))
    if args.stats:
        Path(args.stats).write_text(json.dumps(summary, indent=1))
    return 0 if summary["frames_shown"] else 1
