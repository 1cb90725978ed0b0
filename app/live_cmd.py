"""`eyefuse live`: the live pipeline, in the window or headless with figures printed."""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from app.pipeline import PipelineConfig, run_headless
from capture.sources import SourceOptions


def add_parser(sub) -> None:
    p = sub.add_parser("live", help="run the live pipeline (the window, or --headless)")
    p.add_argument("--source", default="simulated", help="see `eyefuse sources` (default: simulated)")
    p.add_argument("--model", default="student_sr", help="processor: a model in weights/manifest.json or bicubic")
    p.add_argument("--headless", action="store_true", help="no window: print live figures")
    p.add_argument("--frames", type=int, default=None, help="stop after N displayed frames")
    p.add_argument("--seconds", type=float, default=None, help="stop after S seconds")
    p.add_argument("--stats", default=None, help="write the final figures to this JSON file")
    p.add_argument("--fast", action="store_true", help="do not pace files/simulated camera in real time")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    config = PipelineConfig(source=args.source, processor=args.model,
                            source_options=SourceOptions(realtime=not args.fast))
    if not args.headless:
        try:
            from app.window import run_window
        except ImportError as exc:
            print(f"the window is not available ({exc}); running headless", file=sys.stderr)
        else:
            return run_window(config, args)
    summary = run_headless(config, frames=args.frames, seconds=args.seconds)
    print(json.dumps(summary, indent=1))
    if args.stats:
        Path(args.stats).write_text(json.dumps(summary, indent=1))
    return 0 if summary["frames_shown"] else 1
