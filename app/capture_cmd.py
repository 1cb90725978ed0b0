"""`eyefuse capture`: save frames from any source to a folder (PNG, or DNG for RAW frames) with a
JSON sidecar of timestamps. Step 1 of the teacher pipeline: data acquisition."""
from __future__ import annotations

import argparse
import json
import re
import sys
import time
from pathlib import Path

import cv2

from capture.atomic import atomic_write_bytes
from capture.errors import CaptureError
from capture.frame import Frame, PixelFormat
from capture.ring_buffer import BufferClosed, RingBuffer
from capture.sources import SourceOptions, open_source
from capture.worker import CaptureState, CaptureWorker

SIDECAR = "frames.json"
_RETRY_COUNT = re.compile(r" \(retry \d+\)$")  # the capture worker's attempt number, which changes every retry


def add_parser(sub) -> None:
    p = sub.add_parser("capture", help="save N frames from a source to a folder, with timestamps")
    p.add_argument("--source", default="simulated", help="see `eyefuse sources` (default: simulated)")
    p.add_argument("--frames", type=int, required=True, help="how many frames to save")
    p.add_argument("--out", required=True, help="output folder (created; existing frames are kept)")
    p.add_argument("--format", choices=["auto", "png", "dng"], default="auto",
                   help="auto: DNG for RAW frames, PNG otherwise")
    p.add_argument("--fast", action="store_true", help="do not pace files/simulated camera in real time")
    p.add_argument("--wait", type=float, default=10.0, metavar="SECONDS",
                   help="give up when no frame comes for this long, e.g. no camera plugged in (default 10)")
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(run=run)


def save_frame(frame: Frame, out_dir: Path, fmt: str) -> Path:
    """Write one frame atomically (temp name, then rename); returns the final path."""
    raw = frame.pixel_format in (PixelFormat.BAYER16, PixelFormat.RGB16)
    if fmt == "dng" or (fmt == "auto" and raw):
        from capture.dng import write_dng

        path = out_dir / f"frame_{frame.seq:06d}.dng"
        write_dng(path, frame)  # atomic itself
        return path
    from capture.convert import to_bgr8

    path = out_dir / f"frame_{frame.seq:06d}.png"
    ok, png = cv2.imencode(".png", to_bgr8(frame), [cv2.IMWRITE_PNG_COMPRESSION, 1])
    if not ok:
        raise OSError(f"could not encode frame {frame.seq} as PNG")
    atomic_write_bytes(path, png.tobytes())
    return path


def write_sidecar(out_dir: Path, records: list[dict], source: str, lost: int) -> None:
    doc = {"source": source, "frames_lost": lost, "frames": records}
    atomic_write_bytes(out_dir / SIDECAR, json.dumps(doc, indent=1).encode())


def run(args: argparse.Namespace) -> int:
    if not args.wait > 0:
        print(f"error: --wait must be a positive number of seconds, got {args.wait:g}", file=sys.stderr)
        return 2
    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    try:
        source = open_source(args.source, SourceOptions(realtime=not args.fast, seed=args.seed))
    except CaptureError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    ring = RingBuffer(256)  # generous: the writer may fall behind briefly while PNGs compress
    worker = CaptureWorker(source, ring)
    records: list[dict] = []
    error = None
    t0 = last_frame = time.monotonic()
    said = ""
    worker.start()
    try:
        while len(records) < args.frames:
            try:
                frame = ring.get(timeout=min(0.5, args.wait))
            except (BufferClosed, TimeoutError):
                st = worker.status()
                why = _RETRY_COUNT.sub("", st.message)
                if st.state is CaptureState.RETRYING and why != said:  # say it once, not at every retry
                    print(f"waiting up to {args.wait:g} s for {args.source}: {why}", file=sys.stderr)
                    said = why
                if st.state in (CaptureState.RUNNING, CaptureState.RETRYING) and worker.alive:
                    waited = time.monotonic() - last_frame
                    if waited < args.wait:
                        continue
                    error = (f"no frame from {args.source} for {waited:.1f} s"
                             + (f": {st.message}" if st.message else "") + " (--wait sets how long to wait)")
                    break
                error = st.message or f"source stopped ({st.state.value})"
                break
            last_frame = time.monotonic()
            try:
                path = save_frame(frame, out_dir, args.format)
            except OSError as exc:
                error = f"stopped writing: {exc}. The {len(records)} frames already saved are kept."
                break
            records.append({"file": path.name, "seq": frame.seq, "t_capture_ns": frame.t_capture_ns,
                            "width": frame.width, "height": frame.height, "pixel_format": frame.pixel_format.value})
    finally:
        worker.stop()
        lost = ring.stats().overwritten_unread
        if records:
            write_sidecar(out_dir, records, args.source, lost)
    dt = time.monotonic() - t0
    print(f"saved {len(records)} frames to {out_dir} in {dt:.1f} s ({len(records) / max(dt, 1e-9):.1f} fps); "
          f"{lost} frames lost because writing fell behind")
    if error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    return 0
