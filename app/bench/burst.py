"""Burst: alignment error, merge quality vs baselines, stage times and memory, live BurstFusion.

Bursts are synthesised from Kodak24 by the DESIGN.md protocol (capture/burst_synthesis.py):
unprocess, 8 frames with the SyntheticBurst motion (+-6 px, +-1 degree at our resolution; frame 0
is the reference), RGGB mosaic, Poisson-Gaussian noise at the KPN gains 1/2/4/8. Scored on the
packed planes in [0, 1] against the clean reference, in linear light and after gamma 1/2.2, with
an 8-pixel (mosaic) border ignored.

    alignment   end-point error (mosaic pixels, dense flow vs the true motion) of the tile aligner
                and of OpenCV DIS
    quality     reference frame alone, mean of unaligned frames, robust average of DIS-aligned
                frames (the baselines), and ours: tile alignment + HDR+ Wiener merge
    ghosting    a moving object: error along its path, ours vs the reference and a blind mean
    speed       per-stage wall and CPU time at 640x480 (8 frames) and 4032x3024 (12 MP, a few
                Kodak images magnified), peak resident memory (12 MP in a child process)
    live        BurstFusion on the simulated Bayer camera through the headless LivePipeline
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import cv2
import numpy as np

from app.bench.report import markdown_table, peak_rss_during, peak_rss_mib, run_child, write_results

DEFAULT_DATA = Path(__file__).resolve().parents[3] / "shared" / "data"
GAINS = (1, 2, 4, 8)
BORDER = 8  # mosaic pixels
RAFT_SIZES = ((640, 480), (320, 240))  # a frame pair as the camera gives it, and at our aligner's plane size


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data", default=str(DEFAULT_DATA), help="the shared data folder (with Kodak24/)")
    p.add_argument("--images", type=int, default=24, help="Kodak images at 640x480 (default: all 24)")
    p.add_argument("--images-12mp", type=int, default=2, help="Kodak images magnified to 4032x3024 (default 2)")
    p.add_argument("--gains", default="1,2,4,8", help="KPN gain levels (default 1,2,4,8)")
    p.add_argument("--frames", type=int, default=8, help="frames per burst (default 8)")
    p.add_argument("--timing-runs", type=int, default=5, help="repeats per image for the 640x480 timings")
    p.add_argument("--live-frames", type=int, default=500, help="results to show in the live run (0: skip)")
    p.add_argument("--noise-images", type=int, default=24,
                   help="images per set for the noise rows (Kodak24 and the most textured BSDS500 test photos; 0: skip)")
    p.add_argument("--no-refine", dest="refine", action="store_false",
                   help="leave out the learned refinement rows (they need weights/burst_* models)")
    p.add_argument("--only", choices=("all", "refine", "noise", "speed"), default="all",
                   help="run one part alone (its results go to burst_<part>.md, the full run's file is untouched)")
    p.add_argument("--seed", type=int, default=0)


# -- pieces ---------------------------------------------------------------------------------------------
def kodak(data: Path, n: int) -> list[tuple[str, np.ndarray]]:
    from capture.burst_synthesis import landscape

    paths = sorted((data / "Kodak24").glob("*.png"))[:n]
    if not paths:
        raise SystemExit(f"no Kodak24 images under {data / 'Kodak24'}; pass --data with ../shared/data")
    return [(p.stem, landscape(cv2.imread(str(p), cv2.IMREAD_COLOR))) for p in paths]


def noise_model(level):
    from engine.burst.raw import NoiseModel

    return NoiseModel((level.sigma_shot**2,) * 4, (level.sigma_read**2,) * 4)


def end_point_error(b, alignment, border: int = BORDER // 2) -> float:
    """Mean EPE (mosaic pixels) over the burst's non-reference frames, dense, border ignored."""
    from capture.burst_synthesis import true_flow

    h, w = alignment.shape
    ys, xs = np.mgrid[0:h, 0:w]
    pts = np.stack([2 * xs.ravel() + 0.5, 2 * ys.ravel() + 0.5], axis=1)
    errs = []
    for i in range(1, b.noisy.shape[0]):
        truth = true_flow(b.motion[0], b.motion[i], 2 * h, 2 * w, pts).reshape(h, w, 2)
        e = np.linalg.norm(2 * alignment.flow(i) - truth, axis=-1)
        errs.append(float(e[border:-border, border:-border].mean()))
    return float(np.mean(errs))


def methods(b, nm, dis_alignment, tile_alignment) -> dict[str, np.ndarray]:
    """The merged planes of every method compared, for one burst."""
    from engine.burst.merge import MergeConfig, merge, merge_mean

    return {
        "reference frame": b.noisy[0],
        "mean of unaligned frames": merge_mean(b.noisy),
        "robust average, DIS-aligned": merge(b.noisy, dis_alignment, nm, MergeConfig(method="robust")),
        "robust average, tile-aligned": merge(b.noisy, tile_alignment, nm, MergeConfig(method="robust")),
        "Wiener, DIS-aligned": merge(b.noisy, dis_alignment, nm),
        "ours: Wiener, tile-aligned": merge(b.noisy, tile_alignment, nm),
    }


BASELINES = ("reference frame", "mean of unaligned frames", "robust average, DIS-aligned")
OURS = "ours: Wiener, tile-aligned"


def quality_640(images, gains, frames, seed) -> dict:
    from engine.burst.align import AlignConfig, align
    from engine.burst.raw import grey
    from capture.burst_synthesis import KPN_GAINS, SYNTHETIC_BURST_MOTION, synthesize_burst
    from engine.metrics import burst_score as score

    out: dict = {"epe": {}, "scores": {}}
    for gain in gains:
        epe = {"tiles": [], "dis": []}
        scores: dict[str, list] = {}
        for k, (name, img) in enumerate(images):
            rng = np.random.default_rng([seed, gain, k])
            b = synthesize_burst(img, frames, rng, KPN_GAINS[gain], SYNTHETIC_BURST_MOTION, size=(640, 480), name=name)
            nm = noise_model(b.noise)
            g = grey(b.noisy)
            tiles = align(g, 0, nm)
            dis = align(g, 0, nm, AlignConfig(method="dis"))
            epe["tiles"].append(end_point_error(b, tiles))
            epe["dis"].append(end_point_error(b, dis))
            for method, planes in methods(b, nm, dis, tiles).items():
                s = score(planes, b.clean[0], BORDER)
                scores.setdefault(method, []).append([s.psnr_linear, s.ssim_linear, s.psnr_gamma, s.ssim_gamma])
        out["epe"][gain] = {m: {"mean": float(np.mean(v)), "max": float(np.max(v)), "per_image": v} for m, v in epe.items()}
        out["scores"][gain] = {m: np.mean(v, axis=0).tolist() for m, v in scores.items()}
        best_baseline = max(out["scores"][gain][m][0] for m in BASELINES)
        print(f"gain {gain}: EPE tiles {out['epe'][gain]['tiles']['mean']:.3f} dis {out['epe'][gain]['dis']['mean']:.3f} | "
              f"ours {out['scores'][gain][OURS][0]:.2f} dB vs best baseline {best_baseline:.2f} dB", flush=True)
    return out


def ghosting(images, seed) -> dict:
    from engine.burst.align import align
    from engine.burst.merge import merge, merge_mean
    from engine.burst.raw import grey
    from capture.burst_synthesis import HANDHELD_MOTION, KPN_GAINS, MovingObject, synthesize_burst

    rows = {}
    for gain in (1, 4):
        errs: dict[str, list] = {}
        for k, (name, img) in enumerate(images[:6]):
            obj = MovingObject(96, (180, 140), (16, 8))
            b = synthesize_burst(img, 8, np.random.default_rng([seed, 99, gain, k]), KPN_GAINS[gain], HANDHELD_MOTION,
                                 size=(640, 480), moving_object=obj)
            nm = noise_model(b.noise)
            al = align(grey(b.noisy), 0, nm)
            path = np.zeros(b.noisy.shape[2:], bool)
            for x, y, s in b.object_boxes:
                path[max(y, 0) // 2 : (y + s) // 2, max(x, 0) // 2 : (x + s) // 2] = True
            for method, planes in (("reference frame", b.noisy[0]), ("mean of aligned frames", merge_mean(b.noisy, al)),
                                   (OURS, merge(b.noisy, al, nm))):
                errs.setdefault(method, []).append(float(np.sqrt(np.mean((planes - b.clean[0])[:, path] ** 2))))
        rows[gain] = {m: float(np.mean(v)) for m, v in errs.items()}
    return rows


NOISE_ROWS = (
    "reference frame",
    "merge given the true noise",
    "merge with the DNG's NoiseProfile (auto: checked against the burst)",
    "merge with a NoiseProfile 8x too high (auto)",
    "merge, no NoiseProfile: noise measured from the burst",
    "merge, no NoiseProfile: single-frame estimate, no guard (before)",
)
NOISE_LEVELS = (0.1, 0.25, 0.5)


def texture_set(data: Path, n: int) -> list[tuple[str, np.ndarray]]:
    """The n BSDS500 test photos with the most fine detail (mean squared gradient of the grey
    image), landscape, for a noise benchmark where texture is everywhere."""
    paths = sorted((data / "BSDS500" / "test").glob("*.jpg"))
    if not paths:
        raise SystemExit(f"no BSDS500 test images under {data / 'BSDS500' / 'test'}; pass --data with ../shared/data")
    scored = []
    for p in paths:
        img = cv2.imread(str(p), cv2.IMREAD_COLOR)
        if img is None:
            continue
        g = cv2.cvtColor(img, cv2.COLOR_BGR2GRAY).astype(np.float32) / 255.0
        energy = float(np.mean(cv2.Sobel(g, cv2.CV_32F, 1, 0) ** 2 + cv2.Sobel(g, cv2.CV_32F, 0, 1) ** 2))
        scored.append((energy, p.stem, img))
    scored.sort(key=lambda t: -t[0])
    from capture.burst_synthesis import landscape

    return [(name, landscape(img)) for _, name, img in scored[:n]]


def noise_quality(image_sets: dict[str, tuple[list, tuple[int, int]]], gains, frames: int, seed: int) -> dict:
    """Per image set and gain: the merge with the true noise, the DNG's profile (checked), a profile
    8x too high, the noise measured from the burst, and the single-frame estimate the burst path
    used before; linear PSNR, images worse than their reference frame; and the measured noise over
    the true at NOISE_LEVELS, for the burst estimate and the single-frame one."""
    import dataclasses

    from engine.burst.align import align
    from engine.burst.fusion import BurstConfig, fuse_burst
    from engine.burst.merge import MergeConfig, merge
    from engine.burst.raw import estimate_noise, grey
    from capture.burst_synthesis import KPN_GAINS, SYNTHETIC_BURST_MOTION, burst_frames, synthesize_burst
    from engine.metrics import burst_score as score

    out: dict = {}
    for set_name, (images, size) in image_sets.items():
        out[set_name] = {}
        for gain in gains:
            psnr: dict[str, list] = {r: [] for r in NOISE_ROWS}
            ratios: dict[str, list] = {"burst": [], "single frame": []}
            for k, (name, img) in enumerate(images):
                b = synthesize_burst(img, frames, np.random.default_rng([seed, 20, gain, k]), KPN_GAINS[gain],
                                     SYNTHETIC_BURST_MOTION, size=size, name=name)
                truth = noise_model(b.noise)
                with_profile = burst_frames(b)
                high = tuple((8 * s_, 8 * o) for s_, o in with_profile[0].raw.noise_profile)
                too_high = [dataclasses.replace(f, raw=f.raw.replace(noise_profile=high)) for f in with_profile]
                bare = [dataclasses.replace(f, raw=f.raw.replace(noise_profile=())) for f in with_profile]
                cfg = BurstConfig(reference="first", lens="off")
                fused = {
                    NOISE_ROWS[1]: fuse_burst(with_profile, dataclasses.replace(cfg, noise="metadata")),
                    NOISE_ROWS[2]: fuse_burst(with_profile, cfg),
                    NOISE_ROWS[3]: fuse_burst(too_high, cfg),
                    NOISE_ROWS[4]: fuse_burst(bare, cfg),
                }
                ref_planes = fused[NOISE_ROWS[1]].ref_planes
                single = estimate_noise(ref_planes)
                bare_stack = _stack(bare)
                before = merge(bare_stack, align(grey(bare_stack), 0, single), single, MergeConfig(guard=False))
                planes = {NOISE_ROWS[0]: ref_planes, **{k_: f.planes for k_, f in fused.items()}, NOISE_ROWS[5]: before}
                for row, x in planes.items():
                    psnr[row].append(score(x, b.clean[0], BORDER).psnr_linear)
                measured = fused[NOISE_ROWS[4]].noise
                for key, model in (("burst", measured), ("single frame", single)):
                    ratios[key].append([float(np.mean([model.variance(x, p) / truth.variance(x, p) for p in range(4)]))
                                        for x in NOISE_LEVELS])
            ref = np.array(psnr[NOISE_ROWS[0]])
            out[set_name][gain] = {
                "psnr": {r: float(np.mean(v)) for r, v in psnr.items()},
                "worse_than_reference": {r: int(np.sum(np.array(v) < ref)) for r, v in psnr.items() if r != NOISE_ROWS[0]},
                "per_image": {r: v for r, v in psnr.items()},
                "ratio_mean": {k_: np.mean(v, axis=0).tolist() for k_, v in ratios.items()},
                "ratio_worst": {k_: np.take_along_axis(np.array(v), np.argmax(np.abs(np.log(np.array(v))), axis=0)[None],
                                                       0)[0].tolist() for k_, v in ratios.items()},
                "images": len(images),
            }
            r = out[set_name][gain]
            print(f"noise {set_name} gain {gain}: true {r['psnr'][NOISE_ROWS[1]]:.2f} measured "
                  f"{r['psnr'][NOISE_ROWS[4]]:.2f} single {r['psnr'][NOISE_ROWS[5]]:.2f} dB; ratio at "
                  f"{NOISE_LEVELS} mean {np.round(r['ratio_mean']['burst'], 2)}", flush=True)
    return out


def _stack(frames) -> np.ndarray:
    from engine.burst.raw import normalise

    return np.stack([normalise(f.pixels, f.raw) for f in frames])


REFINE_ROWS = ("merge (ours)", "merge + regressor control", "merge + teacher, 50 steps",
               "merge + consistency, 1 step", "merge + consistency, 2 steps", "merge + consistency, 4 steps",
               "consistency, 1 step, no guard", "consistency, 2 steps, no guard", "consistency, 4 steps, no guard",
               "autoencoder ceiling")


def refine_quality(images, gains, frames: int, seed: int, teacher_steps: int = 50, seeds: int = 2) -> dict | None:
    """The learned refinement beside the merge, on the same bursts (each image at `seeds` noise
    draws): the regressor control, the diffusion teacher (teacher_steps sampler steps), the
    consistency student at 1, 2 and 4 steps with and without the hallucination guard, and the
    autoencoder's ceiling D(E(clean), merge). Linear and gamma PSNR, gamma SSIM, hallucination and
    over-smoothing rates (engine/burst/guard.py) per gain, with the spread of the rate over the
    seeds; ms per 640x480 burst; model sizes. None (the reason printed) without the weights."""
    from engine.burst.fusion import BurstConfig, fuse_burst
    from engine.burst.guard import hallucination_rate
    from engine.burst.refine import (
        CONSISTENCY_STEPS,
        BurstRefiner,
        RefineConfig,
        burst_confidence,
        guard_refinement,
        pad_to_latent,
    )
    from engine.manifest import WeightsError, load_manifest
    from engine.runtime import load_model
    from capture.burst_synthesis import KPN_GAINS, SYNTHETIC_BURST_MOTION, burst_frames, synthesize_burst
    from engine.metrics import burst_score as score

    try:
        # the part-1 models as they are (the guard belongs to the live student, measured on and off below)
        regressor = BurstRefiner(RefineConfig("regressor", guard=False))
        teacher = BurstRefiner(RefineConfig("teacher", teacher_steps, guard=False))
        students = {k: BurstRefiner(RefineConfig("consistency", k, guard=False)) for k in CONSISTENCY_STEPS}
        encoder, decoder = load_model("burst_raw_encoder").session, load_model("burst_raw_decoder").session
    except WeightsError as exc:
        print(f"refinement rows skipped: {exc}", flush=True)
        return None
    out: dict = {"scores": {}, "ms": {r: [] for r in REFINE_ROWS}, "sizes_bytes": {}, "seeds": seeds,
                 "images": len(images)}
    for name, entry in load_manifest().items():
        if entry.kind == "burst_refine":
            out["sizes_bytes"][name] = entry.bytes
    for gain in gains:
        rows: dict[str, list] = {r: [] for r in REFINE_ROWS}
        rates: dict[str, list] = {r: [[] for _ in range(seeds)] for r in REFINE_ROWS}
        for s_ in range(seeds):
            for k, (name, img) in enumerate(images):
                b = synthesize_burst(img, frames, np.random.default_rng([seed, 21, gain, k, s_]), KPN_GAINS[gain],
                                     SYNTHETIC_BURST_MOTION, size=(640, 480), name=name)
                fused, ms_fuse, _ = timed(fuse_burst, burst_frames(b), BurstConfig(reference="first", lens="off"))
                planes = {REFINE_ROWS[0]: (fused.planes, ms_fuse)}
                reg, ms = timed(regressor.refine, fused)[:2]
                planes[REFINE_ROWS[1]] = (reg, ms)
                tea, ms = timed(teacher.refine, fused)[:2]
                planes[REFINE_ROWS[2]] = (tea, ms)
                conf = burst_confidence(fused)
                for i, kk in enumerate(CONSISTENCY_STEPS):
                    raw, ms_raw = timed(students[kk].refine, fused)[:2]
                    guarded, ms_guard = timed(guard_refinement, raw, fused.planes, conf, fused.noise, len(fused.used))[:2]
                    planes[REFINE_ROWS[3 + i]] = (guarded, ms_raw + ms_guard)
                    planes[REFINE_ROWS[6 + i]] = (raw, ms_raw)
                merged_pad, (h, w) = pad_to_latent(fused.planes)
                clean_pad, _ = pad_to_latent(b.clean[0])
                t0 = time.perf_counter()
                z = encoder.run(None, {"planes": clean_pad[None]})[0]
                ceiling = decoder.run(None, {"latent": z, "merged": merged_pad[None]})[0][0, :, :h, :w]
                planes[REFINE_ROWS[9]] = (ceiling, (time.perf_counter() - t0) * 1e3)
                for row, (x, ms) in planes.items():
                    sc = score(x, b.clean[0], BORDER)
                    rate, smooth = hallucination_rate(x, fused.planes, b.clean[0])
                    rows[row].append([sc.psnr_linear, sc.psnr_gamma, sc.ssim_gamma, rate, smooth])
                    rates[row][s_].append(rate)
                    if k or s_:  # the first burst of each gain warms the sessions up
                        out["ms"][row].append(ms)
        out["scores"][gain] = {r: np.mean(v, axis=0).tolist() for r, v in rows.items()}
        out.setdefault("rate_spread", {})[gain] = {r: float(np.std([np.mean(x) for x in v])) for r, v in rates.items()}
        sc = out["scores"][gain]
        print(f"refine gain {gain}: merge {sc[REFINE_ROWS[0]][1]:.2f}, regressor {sc[REFINE_ROWS[1]][1]:.2f}, teacher "
              f"{sc[REFINE_ROWS[2]][1]:.2f}, consistency 1/2/4 " + " / ".join(f"{sc[REFINE_ROWS[3 + i]][1]:.2f}"
                                                                              for i in range(3))
              + f", ceiling {sc[REFINE_ROWS[9]][1]:.2f} dB gamma", flush=True)
    out["ms"] = {r: float(np.median(v)) for r, v in out["ms"].items()}
    out["whole_path_ms"] = {r: out["ms"][REFINE_ROWS[0]] + out["ms"][r] for r in REFINE_ROWS[1:9]}
    out["teacher_steps"] = teacher_steps
    return out


def timed(fn, *args, **kw):
    """(result, wall ms, CPU ms of the whole process)."""
    w0, c0 = time.perf_counter(), time.process_time()
    out = fn(*args, **kw)
    return out, (time.perf_counter() - w0) * 1e3, (time.process_time() - c0) * 1e3


def speed(images, frames: int, size: tuple[int, int], runs: int, seed: int) -> dict:
    """Median wall and CPU ms of each stage on bursts of `images` at `size`, after one warm-up."""
    from engine.burst.align import AlignConfig, align
    import dataclasses

    from engine.burst.fusion import BurstConfig, fuse_burst
    from engine.burst.merge import MergeConfig, merge
    from engine.burst.noise import estimate_noise_burst
    from engine.burst.raw import grey
    from capture.burst_synthesis import KPN_GAINS, SYNTHETIC_BURST_MOTION, burst_frames, synthesize_burst

    rec: dict[str, list] = {}
    for k, (name, img) in enumerate(images):
        b = synthesize_burst(img, frames, np.random.default_rng([seed, 7, k]), KPN_GAINS[4], SYNTHETIC_BURST_MOTION,
                             size=size, keep_clean=False)
        nm = noise_model(b.noise)
        fr = burst_frames(b) if size[0] * size[1] <= 640 * 480 else None
        for rep in range(runs + 1):
            g, w1, c1 = timed(grey, b.noisy)
            al, w2, c2 = timed(align, g, 0, nm)
            _, w3, c3 = timed(merge, b.noisy, al, nm)
            _, w4, c4 = timed(align, g, 0, nm, AlignConfig(method="dis"))
            _, w5, c5 = timed(merge, b.noisy, al, nm, MergeConfig(interpolation="linear", spatial=0.0))
            _, w6, c6 = timed(merge, b.noisy, al, nm, MergeConfig(method="robust"))
            if rep == 0 and k == 0:
                continue  # warm-up: caches, OpenCV thread pool
            for key, w, c in (("grey", w1, c1), ("align tiles", w2, c2), ("merge Wiener", w3, c3),
                              ("align DIS", w4, c4), ("merge Wiener, linear sampling, no spatial", w5, c5),
                              ("merge robust", w6, c6)):
                rec.setdefault(key, []).append((w, c))
            _, w10, c10 = timed(merge, b.noisy, al, nm, MergeConfig(guard=False))
            rec.setdefault("merge Wiener without the reference guard (the merge before it)", []).append((w10, c10))
            _, w8, c8 = timed(estimate_noise_burst, b.noisy, al)
            rec.setdefault("noise measured from the burst", []).append((w8, c8))
            if fr is not None:
                from engine.processor import StageTimer

                timer = StageTimer()
                _, w7, c7 = timed(fuse_burst, fr, BurstConfig(reference="first"), timer)
                rec.setdefault("fuse_burst, NoiseProfile checked (raw + align + noise + merge)", []).append((w7, c7))
                bare = [dataclasses.replace(f, raw=f.raw.replace(noise_profile=())) for f in fr]
                _, w9, c9 = timed(fuse_burst, bare, BurstConfig(reference="first"), StageTimer())
                rec.setdefault("fuse_burst, no NoiseProfile (noise measured, burst realigned if needed)",
                               []).append((w9, c9))
    return {k: {"wall_ms": float(np.median([w for w, _ in v])), "cpu_ms": float(np.median([c for _, c in v])),
                "runs": len(v)} for k, v in rec.items()}


# parts of the Wiener merge by the functions that do them, for merge_profile
MERGE_PARTS = (
    ("fused Wiener kernel: frames sampled at each tile's flow, window, FFTs, gains, inverse FFT, overlap-add (numba)",
     ("wiener_merge16",)),
    ("the frames' planes put side by side for the kernel (numba)", ("interleave_frames",)),
    ("each tile's flow from the alignment", ("flows_at", "bilinear_at", "extend_tile_grid", "affine_at_stack")),
)


def merge_profile(images, frames: int, seed: int, runs: int = 3) -> dict:
    """cProfile of the default Wiener merge on 8 x 640x480 bursts: ms per merge spent in each of
    MERGE_PARTS (own time of the functions named), the rest as "other"."""
    import cProfile
    import pstats

    from engine.burst.align import align
    from engine.burst.merge import merge
    from engine.burst.raw import grey
    from capture.burst_synthesis import KPN_GAINS, SYNTHETIC_BURST_MOTION, synthesize_burst

    bursts = []
    for k, (_, img) in enumerate(images):
        b = synthesize_burst(img, frames, np.random.default_rng([seed, 9, k]), KPN_GAINS[4], SYNTHETIC_BURST_MOTION,
                             size=(640, 480), keep_clean=False)
        nm = noise_model(b.noise)
        bursts.append((b.noisy, align(grey(b.noisy), 0, nm), nm))
        merge(*bursts[-1])  # warm-up
    prof = cProfile.Profile()
    prof.enable()
    for _ in range(runs):
        for planes, al, nm in bursts:
            merge(planes, al, nm)
    prof.disable()
    n = runs * len(bursts)
    own: dict[str, float] = {}
    for (filename, _, name), (_, _, tottime, _, _) in pstats.Stats(prof).stats.items():
        if filename == "~":  # a C function: "<resize>" (OpenCV), "<built-in method ...pypocketfft.r2c>"
            name = name.strip("<>").split(".")[-1]
        own[name] = own.get(name, 0.0) + tottime
    total = sum(own.values())
    parts = {label: 1e3 * sum(own.pop(f, 0.0) for f in funcs) / n for label, funcs in MERGE_PARTS}
    parts["other (padding, confidence, noise levels, Python)"] = 1e3 * sum(own.values()) / n
    return {"merge_ms": 1e3 * total / n, "parts_ms": parts, "merges": n}


def child_12mp(data: str, n: int, frames: int, seed: int, out: str) -> None:
    """Runs in a child process: 12 MP bursts, quality and stage times, and this process's peak RSS."""
    from engine.burst.align import AlignConfig, align
    from engine.burst.fusion import BurstConfig, prepare_for_bursts
    from engine.burst.merge import MergeConfig, merge, merge_mean
    from engine.burst.raw import grey
    from capture.burst_synthesis import KPN_GAINS, SYNTHETIC_BURST_MOTION, synthesize_burst
    from engine.metrics import burst_score as score

    size = (4032, 3024)
    images = kodak(Path(data), n)
    rss_before = peak_rss_mib()
    # A fresh process: load the compiled kernels, and align and merge one burst untimed, as the
    # 640x480 timings skip their first run (the first 12 MP align took 1.2 s against 0.7 s after:
    # the process's memory being touched for the first time).
    prepare_for_bursts(BurstConfig())
    b = synthesize_burst(images[0][1], frames, np.random.default_rng([seed, 12, 0]), KPN_GAINS[4],
                         SYNTHETIC_BURST_MOTION, size=size, keep_clean=False)
    nm = noise_model(b.noise)
    merge(b.noisy, align(grey(b.noisy), 0, nm), nm)
    del b
    res: dict = {"images": [name for name, _ in images], "stages": {}, "scores": {}, "epe": []}
    for k, (name, img) in enumerate(images):
        b, _, _ = timed(synthesize_burst, img, frames, np.random.default_rng([seed, 12, k]), KPN_GAINS[4],
                        SYNTHETIC_BURST_MOTION, size=size, keep_clean=False)
        nm = noise_model(b.noise)
        (g, wg, cg), rss_grey = peak_rss_during(timed, grey, b.noisy)
        (al, wa, ca), rss_align = peak_rss_during(timed, align, g, 0, nm)
        (merged, wm, cm), rss_merge = peak_rss_during(timed, merge, b.noisy, al, nm)
        res["ours_peak_rss_mib"] = max(res.get("ours_peak_rss_mib", 0.0), rss_grey, rss_align, rss_merge)
        dis, wd, cd = timed(align, g, 0, nm, AlignConfig(method="dis"))
        robust, wr, cr = timed(merge, b.noisy, dis, nm, MergeConfig(method="robust"))
        res["epe"].append([end_point_error(b, al, 16), end_point_error(b, dis, 16)])
        for key, w, c in (("grey", wg, cg), ("align tiles", wa, ca), ("merge Wiener", wm, cm), ("align DIS", wd, cd),
                          ("merge robust", wr, cr)):
            res["stages"].setdefault(key, []).append((w, c))
        for method, planes in (("reference frame", b.noisy[0]), ("mean of unaligned frames", merge_mean(b.noisy)),
                               ("robust average, DIS-aligned", robust), (OURS, merged)):
            s = score(planes, b.clean[0], BORDER)
            res["scores"].setdefault(method, []).append([s.psnr_linear, s.psnr_gamma])
        print(f"12 MP {name}: align {wa:.0f} ms, merge {wm:.0f} ms, ours {res['scores'][OURS][-1][0]:.2f} dB", flush=True)
        del b, g, al, merged, dis, robust
    res["stages"] = {k: {"wall_ms": float(np.median([w for w, _ in v])), "cpu_ms": float(np.median([c for _, c in v]))}
                     for k, v in res["stages"].items()}
    res["scores"] = {k: np.mean(v, axis=0).tolist() for k, v in res["scores"].items()}
    res["peak_rss_mib"] = peak_rss_mib()
    res["rss_before_mib"] = rss_before
    Path(out).write_text(json.dumps(res))


def live_child(frames: int, out: str) -> None:
    """Runs in a child process: BurstFusion live on the simulated Bayer camera, headless."""
    from app.pipeline import PipelineConfig, run_headless

    res = run_headless(PipelineConfig(source="simulated:bayer", processor="burst_fusion"), frames=frames,
                       printer=lambda line: print(line, flush=True), report_every_s=10.0)
    res["peak_rss_mib"] = peak_rss_mib()
    Path(out).write_text(json.dumps(res, default=str))


def raft_child(frames: int, out: str, runs: int = 3) -> None:
    """CPU time of RAFT-small (trainers/models/raft.py, random weights: the cost depends only on
    the architecture and the size) per frame pair at RAFT_SIZES, 12 updates, torch on every core;
    written to `out` as JSON, or the reason it could not be measured (torch is the train extra)."""
    try:
        import torch

        from trainers.models.raft import RaftSmall
    except ImportError as exc:
        Path(out).write_text(json.dumps({"error": f"torch not installed ({exc}); pip install -e '.[train]'"}))
        return
    torch.manual_seed(0)
    net = RaftSmall().eval()
    result: dict = {"params": sum(p.numel() for p in net.parameters()), "threads": torch.get_num_threads(),
                    "updates": 12, "frames": frames, "sizes": {}}
    with torch.inference_mode():
        for w, h in RAFT_SIZES:
            a, b = torch.rand(1, 3, h, w) * 2 - 1, torch.rand(1, 3, h, w) * 2 - 1
            net(a, b)
            times = []
            for _ in range(runs):
                t = time.perf_counter()
                net(a, b)
                times.append(time.perf_counter() - t)
            result["sizes"][f"{w}x{h}"] = {"pair_s": float(np.median(times)), "burst_s": float(np.median(times)) * (frames - 1)}
    Path(out).write_text(json.dumps(result))


# -- the run ----------------------------------------------------------------------------------------------
def run(args: argparse.Namespace) -> int:
    from app.bench.burst_report import raft_sentence, report_sections
    from engine.burst.fusion import BurstConfig, prepare_for_bursts

    prepare_for_bursts(BurstConfig())  # as BurstFusion and enhance-burst do: kernels loaded
    data = Path(args.data)
    gains = tuple(int(g) for g in args.gains.split(","))
    images = kodak(data, args.images)
    if args.only != "all":
        return run_part(args, data, gains, images)
    load_start = os.getloadavg()
    t0 = time.monotonic()

    quality = quality_640(images, gains, args.frames, args.seed)
    noise = noise_rows(args, data, gains, images)
    refine = refine_quality(images, gains, args.frames, args.seed) if args.refine else None
    ghosts = ghosting(images, args.seed)
    speed_640 = speed(images[:5], args.frames, (640, 480), args.timing_runs, args.seed)
    peak_640 = peak_rss_mib()
    profile = merge_profile(images[:3], args.frames, args.seed)
    print("640x480 timings: " + ", ".join(f"{k} {v['wall_ms']:.0f} ms" for k, v in speed_640.items()), flush=True)
    big = None
    if args.images_12mp > 0:
        out = Path(f"/tmp/eyefuse-burst12-{time.time_ns()}.json")
        big = run_child(f"from app.bench.burst import child_12mp; child_12mp({str(data)!r}, {args.images_12mp}, "
                        f"{args.frames}, {args.seed}, {str(out)!r})", out)
    live = None
    if args.live_frames > 0:
        out = Path(f"/tmp/eyefuse-burstlive-{time.time_ns()}.json")
        live = run_child(f"from app.bench.burst import live_child; live_child({args.live_frames}, {str(out)!r})", out)
    out = Path(f"/tmp/eyefuse-raft-{time.time_ns()}.json")
    raft = run_child(f"from app.bench.burst import raft_child; raft_child({args.frames}, {str(out)!r})", out)
    print(raft_sentence(raft), flush=True)
    load_end = os.getloadavg()

    sections = report_sections(quality, ghosts, speed_640, peak_640, big, live, gains, args, load_start, load_end,
                               raft, profile, noise, refine)
    data_out = {"quality_640": quality, "noise": noise, "refine": refine, "ghosting": ghosts, "speed_640": speed_640,
                "peak_rss_640_mib": peak_640, "twelve_mp": big, "live": live, "gains": gains, "frames": args.frames,
                "images": len(images), "load_average_start": load_start, "load_average_end": load_end,
                "raft_small": raft, "merge_profile": profile, "seconds": time.monotonic() - t0}
    path = write_results("burst", "Burst path benchmark", sections, data_out, out_dir=args.out_dir,
                         command="eyefuse bench burst " + " ".join(sys.argv[3:]) if len(sys.argv) > 3 else "")
    print(path.read_text())
    return 0


def noise_rows(args, data: Path, gains, images) -> dict | None:
    if args.noise_images <= 0:
        return None
    return noise_quality({"Kodak24": (images, (640, 480)),
                          f"BSDS500 test, {args.noise_images} most textured": (texture_set(data, args.noise_images),
                                                                              (480, 320))},
                         gains, args.frames, args.seed)


def run_part(args, data: Path, gains, images) -> int:
    """One part of the benchmark alone (--only), written to burst_<part>.md/.json."""
    from app.bench.burst_report import noise_section, refine_section

    load_start = os.getloadavg()
    t0 = time.monotonic()
    sections, out = [], {}
    if args.only == "refine":
        refine = refine_quality(images, gains, args.frames, args.seed)
        if refine is None:
            return 2
        sections.append(("Learned refinement after the merge", refine_section(refine, gains)))
        out["refine"] = refine
    elif args.only == "noise":
        noise = noise_rows(args, data, gains, images)
        sections.append(("The noise the merge uses", noise_section(noise, gains)))
        out["noise"] = noise
    else:
        speed_640 = speed(images[:5], args.frames, (640, 480), args.timing_runs, args.seed)
        rows = [[k, f"{v['wall_ms']:.1f}", f"{v['cpu_ms']:.1f}", v["runs"]] for k, v in speed_640.items()]
        sections.append(("Speed at 640x480", markdown_table(["stage (8 frames, 640x480)", "wall ms (median)",
                                                              "CPU ms (median)", "runs"], rows)))
        out["speed_640"] = speed_640
    load_end = os.getloadavg()
    sections.insert(0, ("Conditions", f"`--only {args.only}` of `eyefuse bench burst`: Kodak24 ({len(images)} images) "
                                      f"at 640x480, {args.frames}-frame bursts, gains {', '.join(map(str, gains))}, seed "
                                      f"{args.seed}. 1-minute load average {load_start[0]:.1f} at the start and "
                                      f"{load_end[0]:.1f} at the end."))
    out.update({"gains": gains, "seconds": time.monotonic() - t0, "load_average_start": load_start,
                "load_average_end": load_end})
    path = write_results(f"burst_{args.only}", f"Burst path benchmark: {args.only}", sections, out,
                         out_dir=args.out_dir, command="eyefuse bench burst " + " ".join(sys.argv[3:]))
    print(path.read_text())
    return 0

