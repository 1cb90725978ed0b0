"""Teacher: our trained teachers against classical baselines, the chain's speed, and distillation.

Tasks, on Kodak24 with the seeded degradations of trainers/teacher_tasks.py (the same the trainer's
manifest figures use), side by side:
  SR 4x     NAFSSR teacher vs bicubic
  deblur    NAFNet teacher vs the blurred input and vs an unsharp mask (best of a small grid)
  denoise   NAFNet teacher vs the noisy input and vs OpenCV NLM (best h of a small grid), at the
            webcam protocol's noise levels, and on the CC15 real noisy/clean pairs
Speed: seconds per 640x480 frame for each teacher stage and for the whole chain (trainers.teacher:
SR 4x -> downscale to 2x -> deblur -> denoise -> unsharp), torch on every core.
Stages on webcam frames: the chain with each combination of its stages switched on, on Kodak24 under
the webcam protocol (mid noise) against the clean 2x image, with its time per image: which
configuration makes the best teacher for real camera frames (the distillation uses it).
Distillation: the StudentSR trained on the teacher's outputs (student_sr_distilled, made by the chain
capture -> teacher -> prepare_dataset -> train_student --targets teacher): its PSNR against the
teacher's output on the held-out validation pairs, and on Kodak24 under the webcam protocol (mid
noise, as `eyefuse bench engine`) beside bicubic, the clean-trained student_sr and the teacher chain
itself, with each one's time per 640x480 frame. PSNR/SSIM on RGB, 8-bit, 4 px border ignored.
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Sequence

import cv2
import numpy as np

from app.bench.report import BenchProgress, markdown_table, write_results
from capture.convert import to_bgr8
from capture.frame import Frame
from engine.manifest import WEIGHTS_DIR, load_manifest
from engine.metrics import psnr
from engine.processor import BicubicProcessor, Processor, StageTimer

from engine.registry import make_processor

DEFAULT_DATA = Path(__file__).resolve().parents[3] / "shared" / "data"
BORDER = 4
STUDENTS = ["student_sr", "student_sr_distilled"]
DISTILLED = "student_sr_distilled"


class TeacherChainProcessor(Processor):
    """The whole teacher chain as a frame processor (2x output), so it is scored and timed like the
    engine's models."""

    name = "teacher chain"

    def __init__(self, cfg):
        from trainers.teacher import Teacher

        self.teacher = Teacher(cfg)
        self.scale = 2

    def enhance(self, frames: Sequence[Frame], timer: StageTimer):
        with timer.stage("convert"):
            bgr = to_bgr8(frames[-1])
        with timer.stage("teacher"):
            out = self.teacher.enhance(bgr)
        return bgr, out


STAGES = ("sr", "deblur", "denoise")
# Stage combinations compared on webcam frames: the seed's whole chain first, then with stages off.
ABLATION = ("sr,deblur,denoise", "sr,denoise", "deblur,denoise", "denoise")


def chain_config(weights: Path, archs: dict, stages: str, workers: int = 1):
    """TeacherConfig with the named stages on (comma list of sr, deblur, denoise) and the rest off."""
    from trainers.teacher import TeacherConfig
    from trainers.teacher_tasks import TASKS

    on = [st for st in stages.split(",") if st]
    unknown = sorted(set(on) - set(STAGES))
    if unknown:
        raise SystemExit(f"unknown teacher stage(s) {unknown}: choose from {', '.join(STAGES)}")
    return TeacherConfig(**{f"{t}_checkpoint": weights / "teachers" / TASKS[t].checkpoint if t in on else None
                            for t in STAGES}, archs=archs, workers=workers)


def stage_ablation(weights: Path, archs: dict, data: Path, n_images: int, printer=print) -> dict:
    """{stages: {psnr, ssim, seconds per image}} of the chain on the first n Kodak24 images under the
    webcam protocol at mid noise (2x, against the clean image), and bicubic beside them."""
    from app.bench.engine import kodak_set, quality

    images = kodak_set(data, "mid")[:n_images]
    res = {}
    for stages in ABLATION:
        proc = TeacherChainProcessor(chain_config(weights, archs, stages))
        t0 = time.perf_counter()
        p, s = quality(proc, images)
        seconds = (time.perf_counter() - t0) / len(images)
        res[stages] = {"psnr": p, "ssim": s, "seconds_per_image": seconds}
        printer(f"stages {stages:18} PSNR {p:.2f} ({seconds:.1f} s per image)", flush=True)
    res["bicubic"] = {"psnr": quality(BicubicProcessor(2), images)[0], "ssim": None, "seconds_per_image": None}
    return res


def rgb_psnr(out: np.ndarray, ref: np.ndarray) -> float:
    return psnr(out[..., ::-1], ref[..., ::-1], BORDER)


def mean_psnr(outputs: list[np.ndarray], items) -> float:
    return float(np.mean([rgb_psnr(o, clean) for o, (_, _, clean) in zip(outputs, items)]))


def best_of(fn, grid: list, items) -> tuple[float, object]:
    """The best mean PSNR of fn(input, g) over the grid, and the g that gave it."""
    scores = {g: mean_psnr([fn(inp, g) for _, inp, _ in items], items) for g in grid}
    g = max(scores, key=scores.get)
    return scores[g], g


def load_teachers(weights: Path, archs: dict) -> dict:
    """{task: network} from weights/teachers/<name>.pth (strict; CheckpointMismatch names the keys)."""
    from trainers.checkpoints import load_checkpoint
    from trainers.teacher_tasks import TASKS
    from trainers.train_teacher import build_teacher

    nets = {}
    for task, spec in TASKS.items():
        path = weights / "teachers" / spec.checkpoint
        if not path.exists():
            raise SystemExit(f"teacher checkpoint {path} not found: train it with "
                             f"`python -m trainers.train_teacher --task {task}`")
        nets[task] = load_checkpoint(build_teacher(task, archs[task]), path).eval()
    return nets


def task_quality(nets: dict, data: Path, levels: list[str], printer=print) -> dict:
    """Per task and evaluation set: {method: mean PSNR} (and the baseline parameters chosen)."""
    from app.bench.engine import nlm_strength
    from trainers.teacher_tasks import bicubic_up, cc15_pairs, estimate_noise_sigma, kodak_task_set, nlm, unsharp_mask
    from trainers.train_teacher import restore

    res: dict = {}
    items = kodak_task_set(data, "sr")
    res["sr"] = {"teacher": mean_psnr([restore(nets["sr"], "sr", inp) for _, inp, _ in items], items),
                 "bicubic": mean_psnr([bicubic_up(inp, 4) for _, inp, _ in items], items)}
    printer(f"sr 4x: {res['sr']}")
    items = kodak_task_set(data, "deblur")
    sharp, (amount, sigma) = best_of(lambda x, g: unsharp_mask(x, *g), [(a, s) for a in (0.5, 1.0, 2.0) for s in (1.0, 2.0)], items)
    res["deblur"] = {"teacher": mean_psnr([restore(nets["deblur"], "deblur", inp) for _, inp, _ in items], items),
                     "blurred": mean_psnr([inp for _, inp, _ in items], items),
                     "unsharp": sharp, "unsharp_params": {"amount": amount, "sigma": sigma}}
    printer(f"deblur: {res['deblur']}")
    for level in levels:
        items = kodak_task_set(data, "denoise", level)
        h0 = nlm_strength(level)
        best, h = best_of(nlm, [round(h0 * f, 1) for f in (0.7, 1.0, 1.4)], items)
        res[f"denoise_{level}"] = {"teacher": mean_psnr([restore(nets["denoise"], "denoise", inp) for _, inp, _ in items], items),
                                   "noisy": mean_psnr([inp for _, inp, _ in items], items), "nlm": best, "nlm_h": h}
        printer(f"denoise {level}: {res[f'denoise_{level}']}")
    try:
        items = cc15_pairs(data)
    except FileNotFoundError as exc:
        printer(f"warning: no CC15 figures: {exc}")
        return res
    h0 = float(np.median([estimate_noise_sigma(noisy) for _, noisy, _ in items]))
    best, h = best_of(nlm, [round(max(2.0, h0 * f), 1) for f in (0.7, 1.0, 1.4)], items)
    res["denoise_cc15"] = {"teacher": mean_psnr([restore(nets["denoise"], "denoise", inp) for _, inp, _ in items], items),
                           "noisy": mean_psnr([inp for _, inp, _ in items], items), "nlm": best, "nlm_h": h}
    printer(f"denoise cc15: {res['denoise_cc15']}")
    return res


def timed(fn, runs: int) -> float:
    """Median seconds of `runs` calls of fn, after one warm-up call."""
    fn()
    ts = []
    for _ in range(runs):
        t0 = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t0)
    return float(np.median(ts))


def chain_speed(cfg, nets: dict, frame: np.ndarray, runs: int) -> dict:
    """Seconds per frame of each stage on its real input size, and of the whole chain (median of runs)."""
    import torch

    from trainers.teacher import Teacher, target_size
    from trainers.train_teacher import restore

    h, w = frame.shape[:2]
    tw, th = target_size(w, h, cfg.target)
    mid = cv2.resize(frame, (tw, th), interpolation=cv2.INTER_CUBIC)
    out = {"threads": torch.get_num_threads(), "size": f"{w}x{h}", "output": f"{tw}x{th}",
           "sr": timed(lambda: restore(nets["sr"], "sr", frame, cfg.tile, cfg.overlap), runs),
           "deblur": timed(lambda: restore(nets["deblur"], "deblur", mid, cfg.tile, cfg.overlap), runs),
           "denoise": timed(lambda: restore(nets["denoise"], "denoise", mid, cfg.tile, cfg.overlap), runs)}
    teacher = Teacher(cfg)
    out["chain"] = timed(lambda: teacher.enhance(frame), runs)
    return out


def webcam_quality(procs: dict[str, Processor], data: Path, n_images: int, printer=print) -> dict:
    from app.bench.engine import kodak_set, quality

    images = kodak_set(data, "mid")[:n_images]
    res = {}
    for name, proc in procs.items():
        p, s = quality(proc, images)
        res[name] = {"psnr": p, "ssim": s}
        printer(f"kodak24 webcam mid {name:22} PSNR {p:.2f} SSIM {s:.4f}")
    return res


def frame_ms(proc: Processor, frame: np.ndarray, runs: int) -> float:
    from app.bench.engine import latency

    return float(np.median(latency(proc, frame, max_runs=runs, max_seconds=8.0)))


def distilled_vs_teacher(proc: Processor, raw_dir: Path) -> dict | None:
    """PSNR of a processor's output against the teacher's on the prepared validation pairs, or None
    when the dataset is not there."""
    from app.bench.engine import frame_of
    from trainers.prepare_dataset import validation_dir
    from trainers.student_data import load_pairs

    manifest_path = raw_dir.parent / "dataset.json"
    if not manifest_path.exists():
        return None
    teacher_dir = Path(json.loads(manifest_path.read_text())["teacher_dir"])
    pairs = load_pairs(validation_dir(raw_dir), validation_dir(teacher_dir), 2, 8)
    ps = [rgb_psnr(proc.process([frame_of(raw)]).output, teacher) for raw, teacher in pairs]
    return {"pairs": len(pairs), "psnr": float(np.mean(ps)), "raw_dir": str(validation_dir(raw_dir)),
            "teacher_dir": str(validation_dir(teacher_dir))}


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data", default=str(DEFAULT_DATA), help="the shared data folder (Kodak24/, CC15_Nam/)")
    p.add_argument("--weights", default=None, help="weights folder with teachers/ and manifest.json "
                   "(default: the bundled weights/)")
    p.add_argument("--archs", default=None, help="JSON {task: constructor arguments} (default: teacher.ARCHS)")
    p.add_argument("--levels", default="low,mid,high", help="denoise noise levels")
    p.add_argument("--distill-data", default=None, help="the prepared RAW folder the distilled student was "
                   "trained on (default: the one its manifest entry names)")
    p.add_argument("--kodak-images", type=int, default=24, help="Kodak24 images for the webcam comparison")
    p.add_argument("--frame-size", default="640x480", help="frame size for the speed figures")
    p.add_argument("--runs", type=int, default=2, help="timed runs of the teacher per figure (after a warm-up)")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's, every core)")
    p.add_argument("--stages", default="denoise", help="the teacher chain beside the students: comma list of "
                   "sr, deblur, denoise (default: denoise, the configuration the distillation uses; see the "
                   "stage comparison)")
    p.add_argument("--ablation-images", type=int, default=8, help="Kodak24 images for the stage comparison "
                   "(0: skip it)")


def run(args: argparse.Namespace) -> int:
    import torch

    from trainers.teacher import ARCHS

    data = Path(args.data)
    weights = Path(args.weights) if args.weights else WEIGHTS_DIR
    archs = json.loads(args.archs) if args.archs else dict(ARCHS)
    levels = args.levels.split(",")
    fw, fh = (int(v) for v in args.frame_size.lower().split("x"))
    if args.threads:
        torch.set_num_threads(args.threads)
    manifest = load_manifest(weights)

    progress = BenchProgress("teacher", "Teacher benchmark", 5, args.out_dir)
    with progress.guard():
        nets = load_teachers(weights, archs)
        tq = task_quality(nets, data, levels)
        progress.keep("task_quality", tq)
        progress.done("teachers against the classical baselines")

        from app.bench.engine import kodak_set

        lr0 = kodak_set(data, "mid")[0][1]
        frame = cv2.resize(lr0, (fw, fh), interpolation=cv2.INTER_CUBIC) if lr0.shape[:2] != (fh, fw) else lr0
        cfg = chain_config(weights, archs, ",".join(STAGES))
        speed = chain_speed(cfg, nets, frame, args.runs)
        progress.keep("speed_seconds", speed)
        progress.done(f"teacher speed per {args.frame_size} frame: {speed}")

        procs: dict[str, Processor] = {"bicubic": BicubicProcessor(2)}
        for name in STUDENTS:
            if name in manifest:
                procs[name] = make_processor(name, weights)
        ablation = stage_ablation(weights, archs, data, args.ablation_images) if args.ablation_images > 0 else None
        progress.keep("stage_ablation", ablation)
        progress.done("teacher stages on webcam frames")
        chain = TeacherChainProcessor(chain_config(weights, archs, args.stages))
        webcam = webcam_quality({**procs, "teacher chain": chain}, data, args.kodak_images)
        ms = {name: frame_ms(proc, frame, 50) for name, proc in procs.items()}
        ms["teacher chain"] = 1000 * (speed["chain"] if args.stages == ",".join(STAGES)
                                      else timed(lambda: chain.teacher.enhance(frame), args.runs))
        progress.keep("webcam_mid", webcam)
        progress.keep("ms_per_frame", ms)
        progress.done("webcam quality and speed")

        distill = None
        if DISTILLED in manifest:
            raw = Path(args.distill_data) if args.distill_data else Path(manifest[DISTILLED].training.get("data", ""))
            distill = {"vs_teacher": {}}
            for name in procs:
                r = distilled_vs_teacher(procs[name], raw)
                if r is None:
                    print(f"warning: no prepared dataset beside {raw}; pass --distill-data")
                    break
                distill["vs_teacher"][name] = r
        progress.done("distillation")
    for proc in procs.values():
        proc.close()

    sections = []
    rows = [["SR 4x (bicubic downscale)", f"{tq['sr']['teacher']:.2f}", f"bicubic {tq['sr']['bicubic']:.2f}", "-",
             f"{tq['sr']['teacher'] - tq['sr']['bicubic']:+.2f}"]]
    d = tq["deblur"]
    rows.append(["deblur (motion 4-12 px)", f"{d['teacher']:.2f}", f"blurred {d['blurred']:.2f}",
                 f"unsharp {d['unsharp']:.2f} (amount {d['unsharp_params']['amount']}, sigma {d['unsharp_params']['sigma']})",
                 f"{d['teacher'] - max(d['blurred'], d['unsharp']):+.2f}"])
    for key in [f"denoise_{lv}" for lv in levels] + (["denoise_cc15"] if "denoise_cc15" in tq else []):
        d = tq[key]
        label = "denoise CC15 real pairs" if key.endswith("cc15") else f"denoise Kodak24 {key.split('_')[1]} noise"
        rows.append([label, f"{d['teacher']:.2f}", f"noisy {d['noisy']:.2f}", f"NLM {d['nlm']:.2f} (h {d['nlm_h']})",
                     f"{d['teacher'] - max(d['noisy'], d['nlm']):+.2f}"])
    sections.append(("Teachers against the classical baselines (PSNR dB)", markdown_table(
        ["task", "teacher", "no restoration", "classical baseline (best of grid)", "teacher margin over the best"], rows)
        + "\n\nKodak24 unless named; degradations from trainers/teacher_tasks.py (seeded, the same as the "
          "trainer's manifest figures). The unsharp and NLM parameters are the best of a small grid on the same "
          "images, so those baselines are, if anything, favoured."))
    sections.append((f"Teacher speed per {speed['size']} frame ({speed['threads']} torch threads)", markdown_table(
        ["stage", "input", "seconds"],
        [["NAFSSR 4x", speed["size"], f"{speed['sr']:.2f}"], ["NAFNet deblur", speed["output"], f"{speed['deblur']:.2f}"],
         ["NAFNet denoise", speed["output"], f"{speed['denoise']:.2f}"],
         ["whole chain (with resizes and unsharp)", speed["size"], f"{speed['chain']:.2f}"]])))
    if ablation:
        rows = [[stages.replace(",", " -> "), f"{r['psnr']:.2f}", f"{r['ssim']:.4f}" if r["ssim"] is not None else "-",
                 f"{r['seconds_per_image']:.1f}" if r["seconds_per_image"] is not None else "-"]
                for stages, r in ablation.items()]
        sections.append((f"Teacher stages on webcam frames (Kodak24, webcam protocol mid noise, first {args.ablation_images} images)",
                         markdown_table(["stages (then unsharp)", "PSNR vs clean 2x", "SSIM", "seconds per image"], rows)
                         + "\n\nWith the SR stage off, the frame is upscaled 2x by bicubic interpolation before the "
                           "deblur/denoise stages. The teacher networks were trained on one degradation each; the "
                           "webcam protocol combines blur, downscaling, noise and chroma subsampling."))
    rows = [[name, f"{webcam[name]['psnr']:.2f}", f"{webcam[name]['ssim']:.4f}", f"{ms[name]:.1f}",
             f"{1000 / ms[name]:.2f}" if ms[name] > 0 else "-",
             f"{distill['vs_teacher'][name]['psnr']:.2f}" if distill and name in distill.get("vs_teacher", {})
             else "(the reference)" if name == "teacher chain" else "-"]
            for name in webcam]
    body = markdown_table(["method", "Kodak24 webcam mid PSNR", "SSIM", f"ms per {args.frame_size} frame", "fps",
                           "PSNR vs the teacher's output (held-out video frames)"], rows)
    if DISTILLED in manifest:
        t = manifest[DISTILLED].training
        body += (f"\n\n{DISTILLED}: `{t.get('command', '?')}` ({t.get('steps', '?')} steps). The last column "
                 f"compares each method's 2x output with the teacher's on the validation split of the captured "
                 f"video ({next(iter(distill['vs_teacher'].values()))['pairs'] if distill and distill['vs_teacher'] else 0} "
                 f"frames never trained on).")
    else:
        body += f"\n\nNo {DISTILLED} in {weights / 'manifest.json'} yet: run the distillation chain, trainers/distill_chain.sh."
    sections.append((f"Distillation: students beside the teacher chain ({args.stages.replace(',', ' -> ')} -> unsharp; "
                     f"webcam protocol, 2x)", body))
    out = {"task_quality": tq, "speed_seconds": speed, "webcam_mid": webcam, "ms_per_frame": ms, "distillation": distill,
           "archs": archs, "stage_ablation": ablation, "chain_stages": args.stages}
    path = write_results("teacher", "Teacher benchmark", sections, out, out_dir=args.out_dir)
    print(path.read_text())
    return 0
