"""Engine: StudentSR against the baselines on Kodak24 (quality) and on this machine (speed, memory).

Quality: every Kodak24 image (the clean 2x reference) degraded by the webcam protocol of DESIGN.md
at three fixed noise levels (blur and chroma subsampling drawn per image from a fixed seed, the same
for every method), enhanced 2x, scored by PSNR/SSIM on RGB with a 4-pixel border ignored.
Speed: per-frame engine latency (Processor.process, convert + infer + post) at 640x480 and 320x240
input, median and p99; achieved GMAC/s against the fp32 GEMM peak measured in the same run.
Live: the simulated camera at 640x480/30 fps through LivePipeline in a child process, for its
capture-to-display latency, quality against the camera's ground truth, and peak resident memory.
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Sequence

import cv2
import numpy as np

from app.bench.report import BenchProgress, markdown_table, peak_rss_mib, run_child, write_results
from capture.convert import to_bgr8
from capture.frame import Frame, PixelFormat
from engine.manifest import load_manifest
from engine.metrics import psnr, ssim
from engine.peak import measure_gemm_peak_gmacs
from engine.processor import BicubicProcessor, Processor, StageTimer
from engine.registry import make_processor
from capture.degradations import WEBCAM_NOISE_LEVELS, WebcamParams, degrade_webcam, sample_webcam_params

DEFAULT_DATA = Path(__file__).resolve().parents[3] / "shared" / "data"
# student_sr_medium and student_sr_large are no live models: StudentSRs 7x and 180x larger, trained
# the same way, show what capacity buys on this protocol beside what it costs here.
MODELS = ["student_sr", "student_sr_int8", "espcn", "fsrcnn", "espcn_tiny", "fsrcnn_tiny", "student_sr_medium",
          "student_sr_large"]
BORDER = 4


class UnsharpBicubic(BicubicProcessor):
    """Bicubic 2x, then an unsharp mask (amount 0.6, Gaussian sigma 1.2 output pixels)."""

    def __init__(self, amount: float = 0.6, sigma: float = 1.2):
        super().__init__(2)
        self.name, self.amount, self.sigma = "bicubic+unsharp", amount, sigma

    def enhance(self, frames: Sequence[Frame], timer: StageTimer):
        bgr, up = super().enhance(frames, timer)
        with timer.stage("sharpen"):
            blur = cv2.GaussianBlur(up, (0, 0), self.sigma)
            out = cv2.addWeighted(up, 1 + self.amount, blur, -self.amount, 0)
        return bgr, out


class NlmBicubic(BicubicProcessor):
    """OpenCV fastNlMeansDenoisingColored (filter strength h), then bicubic 2x."""

    def __init__(self, h: float):
        super().__init__(2)
        self.name, self.h = "nlm+bicubic", h

    def enhance(self, frames: Sequence[Frame], timer: StageTimer):
        with timer.stage("convert"):
            bgr = to_bgr8(frames[-1])
        with timer.stage("denoise"):
            den = cv2.fastNlMeansDenoisingColored(bgr, None, self.h, self.h, 7, 21)
        with timer.stage("resize"):
            out = cv2.resize(den, (bgr.shape[1] * 2, bgr.shape[0] * 2), interpolation=cv2.INTER_CUBIC)
        return bgr, out


def nlm_strength(level: str) -> float:
    """NLM's h set from the level's noise std at mid-grey in 8-bit sRGB (h ~ sigma is OpenCV's guidance)."""
    noise = WEBCAM_NOISE_LEVELS[level]
    lin = 0.214  # sRGB 0.5
    sigma_lin = float(np.sqrt(noise.variance(np.float32(lin))))
    slope = 1.055 / 2.4 * lin ** (1 / 2.4 - 1)  # d sRGB / d linear at mid-grey
    return max(3.0, 1.2 * 255 * slope * sigma_lin)


def frame_of(bgr: np.ndarray, seq: int = 0) -> Frame:
    return Frame(np.ascontiguousarray(bgr), seq, time.monotonic_ns(), "bench", PixelFormat.BGR8)


def kodak_set(data: Path, level: str) -> list[tuple[str, np.ndarray, np.ndarray]]:
    """[(name, degraded LR (H, W, 3), clean HR (2H, 2W, 3))] for Kodak24 at a noise level."""
    paths = sorted((data / "Kodak24").glob("*.png"))
    if not paths:
        raise SystemExit(f"no Kodak24 images under {data / 'Kodak24'}; pass --data with ../shared/data")
    out = []
    for i, p in enumerate(paths):
        hr = cv2.imread(str(p), cv2.IMREAD_COLOR)
        hr = hr[: hr.shape[0] // 16 * 16, : hr.shape[1] // 16 * 16]
        draw = sample_webcam_params(np.random.default_rng(1000 + i))
        params = WebcamParams(blur=draw.blur, noise=WEBCAM_NOISE_LEVELS[level], yuyv=draw.yuyv)
        lr = degrade_webcam(hr, params, np.random.default_rng(2000 + i))
        out.append((p.stem, lr, hr))
    return out


def quality(proc: Processor, images) -> tuple[float, float]:
    ps, ss = [], []
    for _, lr, hr in images:
        out = proc.process([frame_of(lr)]).output
        rgb_out, rgb_hr = out[..., ::-1], hr[..., ::-1]
        ps.append(psnr(rgb_out, rgb_hr, BORDER))
        ss.append(ssim(rgb_out, rgb_hr, BORDER))
    return float(np.mean(ps)), float(np.mean(ss))


def latency(proc: Processor, bgr: np.ndarray, max_runs: int = 100, max_seconds: float = 8.0) -> np.ndarray:
    """Per-call milliseconds of proc.process on one frame, after two warm-up calls."""
    frame = frame_of(bgr)
    for _ in range(2):
        proc.process([frame])
    times = []
    t_end = time.monotonic() + max_seconds
    while len(times) < max_runs and (len(times) < 5 or time.monotonic() < t_end):
        r = proc.process([frame])
        times.append(r.process_ms)
    return np.array(times)


def make_methods(level: str, weights_dir: Path | None) -> dict[str, Processor]:
    methods: dict[str, Processor] = {
        "bicubic": BicubicProcessor(2),
        "bicubic+unsharp": UnsharpBicubic(),
        "nlm+bicubic": NlmBicubic(nlm_strength(level)),
    }
    manifest = load_manifest(weights_dir) if weights_dir else load_manifest()
    for name in MODELS:
        if name in manifest:
            methods[name] = make_processor(name, weights_dir)
    return methods


def live_child(seconds: float, model: str, out: str) -> None:
    """Runs in a child process: the live pipeline on the simulated camera; writes figures as JSON."""
    from app.pipeline import LivePipeline, PipelineConfig

    pipe = LivePipeline(PipelineConfig(source="simulated:640x480@30", processor=model))
    pipe.start()
    lat, proc_ms, ps = [], [], []
    t0 = time.monotonic()
    n = 0
    try:
        while time.monotonic() - t0 < seconds:
            r = pipe.next_result(0.5)
            if r is None or not r.ok:
                continue
            now = time.monotonic_ns()
            n += 1
            lat.append((now - r.t_capture_ns) / 1e6)
            proc_ms.append(r.process_ms)
            truth = r.frames[-1].truth
            if n % 10 == 0 and truth is not None and truth.clean.shape == r.output.shape:
                ps.append(psnr(r.output, truth.clean, BORDER))
        eng = pipe.engine_stats()
        cap = pipe.capture_status()
    finally:
        pipe.stop()
    elapsed = time.monotonic() - t0
    Path(out).write_text(json.dumps({
        "model": model, "seconds": elapsed, "results": n, "display_fps": n / elapsed,
        "capture_fps": cap.fps, "engine_skipped": eng.skipped,
        "engine_ms_median": float(np.median(proc_ms)), "engine_ms_p99": float(np.percentile(proc_ms, 99)),
        "latency_ms_median": float(np.median(lat)), "latency_ms_p99": float(np.percentile(lat, 99)),
        "psnr_vs_truth": float(np.mean(ps)) if ps else None, "peak_rss_mib": peak_rss_mib(),
    }))


def run_live(seconds: float, model: str) -> dict:
    out = Path(f"/tmp/eyefuse-live-{time.time_ns()}.json")
    return run_child(f"from app.bench.engine import live_child; live_child({seconds!r}, {model!r}, {str(out)!r})", out)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data", default=str(DEFAULT_DATA), help="the shared data folder (with Kodak24/)")
    p.add_argument("--weights", default=None, help="weights folder (default: the bundled weights/)")
    p.add_argument("--live-seconds", type=float, default=20.0)
    p.add_argument("--levels", default="low,mid,high")


def run(args: argparse.Namespace) -> int:
    data = Path(args.data)
    weights = Path(args.weights) if args.weights else None
    levels = args.levels.split(",")
    peak = measure_gemm_peak_gmacs()
    manifest = load_manifest(weights) if weights else load_manifest()

    qual: dict[str, dict[str, tuple[float, float]]] = {}
    speed: dict[str, dict[str, dict[str, float]]] = {}
    methods = list(make_methods("mid", weights))
    progress = BenchProgress("engine", "Engine benchmark", len(levels) * len(methods) + 2 * len(methods) + 1,
                             args.out_dir)
    progress.keep("gemm_peak_gmacs", peak)
    progress.keep("quality", qual)
    progress.keep("speed", speed)
    with progress.guard():
        for level in levels:
            images = kodak_set(data, level)
            for name, proc in make_methods(level, weights).items():
                qual.setdefault(name, {})[level] = quality(proc, images)
                proc.close()
                progress.done(f"{level:4} {name:16} PSNR {qual[name][level][0]:.2f} SSIM {qual[name][level][1]:.4f}")

        sample = cv2.imread(str(sorted((data / "Kodak24").glob("*.png"))[0]), cv2.IMREAD_COLOR)
        noisy = degrade_webcam(sample, WebcamParams(noise=WEBCAM_NOISE_LEVELS["mid"], scale=1), np.random.default_rng(0))
        inputs = {"640x480": noisy[:480, :640],
                  "320x240": cv2.resize(noisy[:480, :640], (320, 240), interpolation=cv2.INTER_AREA)}
        for name, proc in make_methods("mid", weights).items():
            for size, img in inputs.items():
                t = latency(proc, img, max_runs=200 if name in MODELS else 60)
                entry = {"median_ms": float(np.median(t)), "p99_ms": float(np.percentile(t, 99)), "runs": len(t)}
                macs = manifest[name].macs_per_input_pixel if name in manifest else None
                if macs:
                    gmac = macs * img.shape[0] * img.shape[1] / 1e9
                    entry.update(gmac_per_frame=gmac, achieved_gmacs=gmac / (entry["median_ms"] / 1e3))
                speed.setdefault(name, {})[size] = entry
                progress.done(f"{name:16} {size} median {entry['median_ms']:.2f} ms p99 {entry['p99_ms']:.2f} ms")
            proc.close()

        live = run_live(args.live_seconds, "student_sr") if "student_sr" in manifest else None
        progress.keep("live", live)
        progress.done("live StudentSR")

    rows = []
    for name in qual:
        s640, s320 = speed[name]["640x480"], speed[name]["320x240"]
        size_mb = manifest[name].bytes / 1e6 if name in manifest else 0.0
        gm = s640.get("gmac_per_frame")
        rows.append([name] + [f"{qual[name][lv][0]:.2f} / {qual[name][lv][1]:.3f}" for lv in levels] + [
            f"{s640['median_ms']:.1f} / {s640['p99_ms']:.1f}", f"{s320['median_ms']:.1f} / {s320['p99_ms']:.1f}",
            f"{1000 / s640['median_ms']:.0f}",
            f"{gm:.2f}" if gm else "-",
            f"{s640['achieved_gmacs']:.0f} ({100 * s640['achieved_gmacs'] / peak:.0f}%)" if gm else "-",
            f"{size_mb:.2f}" if size_mb else "-",
        ])
    headers = (["method"] + [f"Kodak24 {lv} PSNR / SSIM" for lv in levels] +
               ["640x480 ms median / p99", "320x240 ms median / p99", "fps @640x480", "GMAC/frame @640x480",
                "achieved GMAC/s (% of peak)", "model MB"])
    noise_desc = "; ".join(f"{lv}: sigma_read {WEBCAM_NOISE_LEVELS[lv].sigma_read:.4f}, sigma_shot "
                           f"{WEBCAM_NOISE_LEVELS[lv].sigma_shot:.4f}" for lv in levels)
    sections = [
        ("Quality and speed", f"fp32 GEMM peak measured in this run (ONNX Runtime MatMul 1024^3): **{peak:.1f} GMAC/s**.\n\n"
         + markdown_table(headers, rows) + f"\n\nNoise levels (linear light, variance = sigma_shot^2 x + sigma_read^2): "
         f"{noise_desc}. NLM strength h per level: " + ", ".join(f"{lv} {nlm_strength(lv):.1f}" for lv in levels) + ".\n\n"
         + "\n".join(f"- {n}: {manifest[n].description} ({manifest[n].training.get('steps')} steps)"
                     for n in qual if n in manifest)),
    ]
    if live:
        sections.append(("Live: simulated camera 640x480 @ 30 fps, StudentSR", markdown_table(
            ["display fps", "engine ms median / p99", "capture-to-display ms median / p99", "frames skipped",
             "PSNR vs ground truth (dB)", "peak RSS (MiB)"],
            [[f"{live['display_fps']:.1f}", f"{live['engine_ms_median']:.1f} / {live['engine_ms_p99']:.1f}",
              f"{live['latency_ms_median']:.1f} / {live['latency_ms_p99']:.1f}", live["engine_skipped"],
              f"{live['psnr_vs_truth']:.2f}" if live["psnr_vs_truth"] else "-", f"{live['peak_rss_mib']:.0f}"]])))
    data_out = {"gemm_peak_gmacs": peak, "quality": qual, "speed": speed, "live": live,
                "noise_levels": {lv: vars(WEBCAM_NOISE_LEVELS[lv]) for lv in levels}}
    path = write_results("engine", "Engine benchmark", sections, data_out, out_dir=args.out_dir)
    print(path.read_text())
    return 0
