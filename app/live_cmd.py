"""`eyefuse live`: the live pipeline, in the window or headless with figures printed.

Either way a run ends on its own when --frames or --seconds are reached, when the source ends (a
video shorter than --frames), or when the processor has failed on every frame for a few seconds;
Ctrl-C and SIGTERM end it too. Whatever ends it, the recording (--record) is finalised and the
figures (--stats) are written. The exit status is non-zero when the run failed: no frame shown, the
processor failing, the recording failing, or a signal (130 Ctrl-C, 143 SIGTERM, from app.cli).
"""
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
    p.add_argument("--record", default=None, metavar="OUT.mp4",
                   help="record the enhanced video from the start (H.264 MP4; MJPEG MKV where H.264 is missing)")
    p.add_argument("--record-side-by-side", action="store_true", help="record input and output side by side")
    w = p.add_argument_group("window")
    w.add_argument("--offscreen", action="store_true",
                   help="run the window without a display (Qt offscreen platform): for tests and benchmarks")
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
    from engine.registry import STEP_PROCESSORS, processor_names

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
    from app.recorder import RecorderConfig, RecorderError

    record = None
    if args.record:
        record = RecorderConfig(Path(args.record), side_by_side=args.record_side_by_side,
                                queue_size=config.record_queue_size)
    freeze_startup_objects()
    try:
        summary = run_headless(config, frames=args.frames, seconds=args.seconds, record=record,
                               stats=Path(args.stats) if args.stats else None)
    except RecorderError as exc:
        print(f"eyefuse live: {exc}", file=sys.stderr)
        return 1
    print(json.dumps(summary, indent=1))
    if summary["failed"] or summary["ended"] not in ("frames", "seconds"):
        print(f"eyefuse live: {summary['end_message']}", file=sys.stderr)
    return 1 if summary["failed"] or not summary["frames_shown"] else 0
