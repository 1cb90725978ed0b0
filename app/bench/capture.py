"""Capture: the capture thread's sustained frame rate per source, and the ring buffer's put/get cost."""
from __future__ import annotations

import argparse
import threading
import time
from pathlib import Path

import numpy as np

from app.bench.report import markdown_table, write_results
from capture.frame import Frame, PixelFormat
from capture.ring_buffer import BufferClosed, RingBuffer
from capture.sources import SourceOptions, open_source
from capture.worker import CaptureWorker


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--seconds", type=float, default=5.0, help="how long each live source runs")
    p.add_argument("--video", default=None, help="a video file to measure decoding on "
                   "(default: ../shared/data/videos_real/test.webm when present)")


def ring_costs(n: int = 20000) -> dict[str, float]:
    """Median ns per put and per get on a 16-frame ring of 640x480 frames, alone and with a
    consumer thread contending for the lock."""
    frames = [Frame(np.zeros((480, 640, 3), np.uint8), i, 0, "bench", PixelFormat.BGR8) for i in range(64)]
    ring = RingBuffer(16)
    put_ns, get_ns = [], []
    for i in range(n):
        t = time.perf_counter_ns()
        ring.put(frames[i % 64])
        put_ns.append(time.perf_counter_ns() - t)
        if i % 2:
            t = time.perf_counter_ns()
            ring.get(timeout=0)
            get_ns.append(time.perf_counter_ns() - t)
    ring = RingBuffer(16)
    stop = threading.Event()

    def consume():
        while not stop.is_set():
            try:
                ring.get(timeout=0.01)
            except (TimeoutError, BufferClosed):
                pass

    th = threading.Thread(target=consume)
    th.start()
    contended = []
    for i in range(n):
        t = time.perf_counter_ns()
        ring.put(frames[i % 64])
        contended.append(time.perf_counter_ns() - t)
    stop.set()
    th.join()
    return {
        "put_ns_median": float(np.median(put_ns)), "put_ns_p99": float(np.percentile(put_ns, 99)),
        "get_ns_median": float(np.median(get_ns)), "get_ns_p99": float(np.percentile(get_ns, 99)),
        "put_contended_ns_median": float(np.median(contended)),
        "put_contended_ns_p99": float(np.percentile(contended, 99)),
    }


def source_rate(spec: str, seconds: float, options: SourceOptions) -> dict[str, float | str]:
    """Run one source in a CaptureWorker for `seconds` and measure what reached the ring."""
    ring = RingBuffer(8)
    worker = CaptureWorker(open_source(spec, options), ring)
    worker.start()
    stamps: list[int] = []
    last = None
    t_end = time.monotonic() + seconds
    while time.monotonic() < t_end:
        try:
            f = ring.wait_newer(last, timeout=0.5)
        except (TimeoutError, BufferClosed):
            if not worker.alive:
                break
            continue
        last = f.seq
        stamps.append(f.t_capture_ns)
    stopped = worker.stop(2.0)
    st = worker.status()
    gaps_ms = np.diff(stamps) / 1e6 if len(stamps) > 2 else np.array([float("nan")])
    span = (stamps[-1] - stamps[0]) / 1e9 if len(stamps) > 1 else float("nan")
    return {
        "source": spec, "frames": st.frames, "fps": (st.frames - 1) / span if span else float("nan"),
        "interval_ms_median": float(np.median(gaps_ms)), "interval_ms_p99": float(np.percentile(gaps_ms, 99)),
        "state": st.state.value, "stopped_cleanly": stopped,
    }


def run(args: argparse.Namespace) -> int:
    costs = ring_costs()
    live = [
        ("simulated:640x480@30", SourceOptions()),
        ("simulated:640x480@60", SourceOptions()),
        ("simulated:320x240@60", SourceOptions()),
        ("simulated:640x480@60", SourceOptions(realtime=False)),
        ("simulated:bayer:640x480@30", SourceOptions()),
        ("simulated:bayer:640x480@30", SourceOptions(realtime=False)),
    ]
    video = args.video or str(Path(__file__).resolve().parents[3] / "shared/data/videos_real/test.webm")
    if Path(video).exists():
        live.append((video, SourceOptions(realtime=True)))
        live.append((video, SourceOptions(realtime=False, loop=True)))
    rows, results = [], []
    for spec, opt in live:
        r = source_rate(spec, args.seconds, opt)
        r["paced"] = opt.realtime
        results.append(r)
        name = Path(spec).name if Path(spec).exists() else spec
        rows.append([name, "real time" if opt.realtime else "as fast as possible", f"{r['fps']:.1f}",
                     f"{r['interval_ms_median']:.2f}", f"{r['interval_ms_p99']:.2f}", r["stopped_cleanly"]])
    sections = [
        ("Capture thread, sustained", "Frames delivered into the ring by one CaptureWorker thread over "
         f"{args.seconds:g} s per source (the consumer only watches).\n\n" +
         markdown_table(["source", "pacing", "fps", "interval median ms", "interval p99 ms", "stopped in 2 s"], rows)),
        ("Ring buffer cost", "16-slot ring of 640x480 BGR frames, 20,000 operations (ns per call).\n\n" +
         markdown_table(["operation", "median ns", "p99 ns"], [
             ["put (alone)", costs["put_ns_median"], costs["put_ns_p99"]],
             ["get (alone)", costs["get_ns_median"], costs["get_ns_p99"]],
             ["put (consumer thread contending)", costs["put_contended_ns_median"], costs["put_contended_ns_p99"]],
         ])),
    ]
    path = write_results("capture", "Capture benchmark", sections, {"sources": results, "ring": costs},
                         out_dir=args.out_dir)
    print(path.read_text())
    return 0
